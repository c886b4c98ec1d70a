//! A "pod": a network namespace with `lo` and an `eth0` veth to the underlay bridge, one IPv4
//! and one IPv6 address, and processes that run in it and in the bed's cgroup.

use crate::{BedError, PodProcess, ip};
use amesh_sys::netns::{Netns, NetnsError};
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
};

#[derive(Debug)]
pub struct Pod {
    name: String,
    netns_name: String,
    netns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    cgroup_procs: Arc<File>,
    /// The sandbox process holding the namespace, for pods a runtime made (Kubernetes'
    /// pause container); killed with the pod.
    sandbox: Option<PodProcess>,
}

impl Pod {
    pub(crate) fn create(
        underlay: &str,
        bridge: &str,
        name: &str,
        netns_name: String,
        index: u32,
        cgroup_procs: Arc<File>,
    ) -> Result<Self, BedError> {
        let host_end = format!("v{index}");
        let ipv4 = Ipv4Addr::new(10, 200, (index / 250) as u8, (index % 250 + 2) as u8);
        let ipv6 = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, index as u16 + 2);
        ip::ip(&["netns", "add", &netns_name])?;
        let v4 = format!("{ipv4}/16");
        let v6 = format!("{ipv6}/64");
        let steps: [(&str, Vec<&str>); 6] = [
            (
                underlay,
                vec![
                    "link",
                    "add",
                    &host_end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &netns_name,
                ],
            ),
            (
                underlay,
                vec!["link", "set", &host_end, "master", bridge, "up"],
            ),
            (&netns_name, vec!["link", "set", "lo", "up"]),
            (&netns_name, vec!["link", "set", "eth0", "up"]),
            (&netns_name, vec!["addr", "add", &v4, "dev", "eth0"]),
            (
                &netns_name,
                vec!["-6", "addr", "add", &v6, "dev", "eth0", "nodad"],
            ),
        ];
        for (ns, args) in &steps {
            ip::ip_in(ns, args)?;
        }
        Self::open(name, &netns_name, ipv4, ipv6, cgroup_procs)
    }

    /// The pod whose namespace `/run/netns/<netns_name>` is already set up.
    fn open(
        name: &str,
        netns_name: &str,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
        cgroup_procs: Arc<File>,
    ) -> Result<Self, BedError> {
        Ok(Self {
            name: name.to_string(),
            netns: Netns::open(format!("/run/netns/{netns_name}"))?,
            netns_name: netns_name.to_string(),
            ipv4,
            ipv6,
            cgroup_procs,
            sandbox: None,
        })
    }

    /// A pod whose namespace something else (a CNI chain) set up.
    pub(crate) fn from_netns(
        name: &str,
        netns_name: String,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
        cgroup_procs: Arc<File>,
    ) -> Result<Self, BedError> {
        let mut pod = Self::open(name, &netns_name, ipv4, ipv6, cgroup_procs)?;
        let mut pause = pod.command("sleep");
        pause.arg("infinity");
        pod.sandbox = Some(pod.spawn(pause)?);
        Ok(pod)
    }

    /// The pod's short name within the bed.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name `ip netns exec` knows it by.
    pub fn netns_name(&self) -> &str {
        &self.netns_name
    }

    /// `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns_name))
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// Both addresses.
    pub fn addresses(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)]
    }

    /// Runs `f` on a thread inside the pod's network namespace (sockets it makes live there).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
        self.netns.run(f)
    }

    /// A command that will run inside the pod: in its network namespace and in the bed's
    /// cgroup (where the outbound capture programs are attached).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        amesh_sys::spawn::into_pod(
            &mut cmd,
            self.netns.as_fd(),
            Some(self.cgroup_procs.as_fd()),
        );
        cmd
    }

    /// Starts `cmd` (made by [`Pod::command`]) with piped output; it is killed on drop.
    pub fn spawn(&self, mut cmd: Command) -> Result<PodProcess, BedError> {
        let label = format!("{:?} in pod {}", cmd.get_program(), self.name);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(BedError::io(format!("starting {label}")))?;
        Ok(PodProcess::new(child, label))
    }

    /// Like [`Pod::spawn`], with stdin piped for [`PodProcess::send_line`].
    pub fn spawn_interactive(&self, mut cmd: Command) -> Result<PodProcess, BedError> {
        let label = format!("{:?} in pod {}", cmd.get_program(), self.name);
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(BedError::io(format!("starting {label}")))?;
        Ok(PodProcess::new(child, label))
    }

    /// Adds an address to `eth0` (e.g. to send from the kubelet probe source).
    pub fn add_address(&self, cidr: &str) -> Result<(), BedError> {
        if cidr.contains(':') {
            ip::ip_in(
                &self.netns_name,
                &["-6", "addr", "add", cidr, "dev", "eth0", "nodad"],
            )
        } else {
            ip::ip_in(&self.netns_name, &["addr", "add", cidr, "dev", "eth0"])
        }
    }

    /// Deletes the pod's namespace (as when a pod is deleted without anyone unenrolling it).
    pub fn delete(self) -> Result<(), BedError> {
        ip::ip(&["netns", "del", &self.netns_name])
    }

    /// Adds an on-link route over `eth0` (e.g. back to the probe source).
    pub fn add_route(&self, dst: &str) -> Result<(), BedError> {
        ip::ip_in(&self.netns_name, &["route", "add", dst, "dev", "eth0"])
    }
}
