//! The owner of the capture programs on a node: loads (or adopts) and attaches them, and
//! enrolls and releases pods.

use crate::{
    CaptureError, CaptureMaps, PinLayout,
    config::CaptureConfig,
    logs::LogPump,
    maps,
    setup::{self, CGROUP_HOOKS, PROGRAMS, SK_LOOKUP},
};
use amesh_ebpf_common::{
    MAX_EXCLUDED_PORTS, MAX_PODS, POD_FLAG_BYPASS_INBOUND, POD_FLAG_NO_DNS_CAPTURE, PodConfig,
    PodCounters,
};
use amesh_sys::{bpf::AttachType, netns::Netns};
use aya::programs::{SkLookup, links::FdLink};
use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};
use tracing::{info, warn};

/// What to enroll: a pod's network namespace and how its traffic is captured.
#[derive(Debug)]
pub struct EnrollRequest<'a> {
    /// `/proc/<pid>/ns/net`, `/run/netns/<name>` or another bind mount of the namespace.
    pub netns: &'a Path,
    /// The pod's addresses: inbound connections to them are captured; outbound ones to them
    /// are not.
    pub addresses: &'a [IpAddr],
    /// Destination ports whose outbound connections keep going direct.
    pub excluded_outbound_ports: &'a [u16],
    /// Local ports whose inbound connections reach the app directly.
    pub excluded_inbound_ports: &'a [u16],
    /// Capture outbound only (Istio's `ambient.istio.io/bypass-inbound-capture`).
    pub bypass_inbound: bool,
    /// Send the pod's DNS (port 53) to ztunnel's in-pod proxy (Istio's
    /// `ambient.istio.io/dns-capture`, on by default as in Istio).
    pub dns_capture: bool,
    /// ztunnel's HBONE and plaintext listeners for this pod, if already open.
    pub listeners: Option<(BorrowedFd<'a>, BorrowedFd<'a>)>,
}

/// An enrolled pod as the maps record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolledPod {
    pub pod_id: u32,
    pub netns_cookie: u64,
    pub addresses: Vec<IpAddr>,
    pub config: PodConfig,
}

/// Programs attached to the cgroup (counted with the kernel's own query).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupAttachments {
    pub connect4: u32,
    pub connect6: u32,
    pub sock_ops: u32,
}

/// Loaded capture programs; dropping this leaves them running (they are pinned), so a
/// restarted owner adopts them. [`Capture::teardown`] removes everything.
#[derive(Debug)]
pub struct Capture {
    layout: PinLayout,
    cgroup: PathBuf,
    maps: CaptureMaps,
    sk_lookup: SkLookup,
    adopted: bool,
    _logs: Option<LogPump>,
}

/// Steps of an enrollment already done, undone in reverse if a later one fails.
enum Undo {
    /// Put back the pod's previous settings (the default, empty ones for a new pod).
    Config(u32, PodConfig),
    Address(IpAddr),
    Link(u32),
    Listeners(u32),
}

impl Capture {
    /// Loads and attaches the programs, or adopts the ones a previous owner pinned under
    /// `config.pin_root`. Nothing already attached is attached again.
    pub fn load_or_adopt(config: &CaptureConfig) -> Result<Self, CaptureError> {
        setup::preflight(config)?;
        let layout = PinLayout::new(&config.pin_root);
        let (mut ebpf, programs_pinned) = setup::load_programs(&layout, config.debug_logs)?;
        let log_pump = if config.debug_logs {
            LogPump::start(&mut ebpf)
        } else {
            None
        };
        let links_adopted = setup::ensure_cgroup_links(&layout, &config.cgroup)?;
        let sk_lookup =
            SkLookup::from_pin(layout.prog(SK_LOOKUP)).map_err(CaptureError::program(SK_LOOKUP))?;
        let maps = CaptureMaps::take_from(&mut ebpf)?;
        let mut capture = Self {
            layout,
            cgroup: config.cgroup.clone(),
            maps,
            sk_lookup,
            adopted: programs_pinned && links_adopted,
            _logs: log_pump,
        };
        capture.drop_orphan_links()?;
        info!(
            pin_root = %config.pin_root.display(),
            cgroup = %config.cgroup.display(),
            adopted = capture.adopted,
            pods = capture.maps.enrolled()?.len(),
            "capture programs ready"
        );
        Ok(capture)
    }

    /// True when this instance found everything attached by a previous owner.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The pin layout (ztunnel opens the maps from `layout().root()`).
    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The maps, for listener registration and original-destination lookups.
    pub fn maps(&mut self) -> &mut CaptureMaps {
        &mut self.maps
    }

    /// Enrolls a pod: from now on its outbound TCP connects go to 127.0.0.1:15001 / [::1]:15001
    /// in its netns, and connections arriving at its addresses go to ztunnel's listeners (or
    /// are refused while none are registered). Enrolling again updates the settings. If any
    /// step fails, the steps already taken are undone.
    pub fn enroll(&mut self, req: &EnrollRequest<'_>) -> Result<EnrolledPod, CaptureError> {
        match self.try_enroll(req) {
            // The address may belong to a pod that died without being unenrolled (its IP is
            // being reused): release such pods and try once more.
            Err(CaptureError::AddressInUse { .. }) if self.prune_vanished()? > 0 => {
                self.try_enroll(req)
            }
            other => other,
        }
    }

    fn try_enroll(&mut self, req: &EnrollRequest<'_>) -> Result<EnrolledPod, CaptureError> {
        let config = pod_config(req)?;
        let netns = Netns::open(req.netns)?;
        let netns_cookie = netns.cookie()?;
        let existing = self.maps.pod_of_netns(netns_cookie)?;
        let pod_id = match existing {
            Some(id) => id,
            None => self.free_pod_id()?,
        };
        let config = PodConfig {
            netns_cookie,
            pod_id,
            ..config
        };
        let mut done = Vec::new();
        match self.apply_enrollment(&netns, &config, req, existing.is_some(), &mut done) {
            Ok(()) => {
                info!(pod_id, netns = %req.netns.display(), addresses = ?req.addresses, update = existing.is_some(), "pod enrolled");
                self.pod(pod_id)?.ok_or(CaptureError::UnknownPod { pod_id })
            }
            Err(e) => {
                warn!(pod_id, netns = %req.netns.display(), error = %e, "enrollment failed, rolling back");
                for step in done.into_iter().rev() {
                    self.undo(step);
                }
                Err(e)
            }
        }
    }

    fn apply_enrollment(
        &mut self,
        netns: &Netns,
        config: &PodConfig,
        req: &EnrollRequest<'_>,
        update: bool,
        done: &mut Vec<Undo>,
    ) -> Result<(), CaptureError> {
        let pod_id = config.pod_id;
        for &addr in req.addresses {
            if let Some(owner) = self.maps.owner_of(addr)?
                && owner != pod_id
            {
                return Err(CaptureError::AddressInUse {
                    addr,
                    pod_id: owner,
                });
            }
        }
        let previous_config = if update {
            self.maps.config(pod_id)?
        } else {
            PodConfig::default()
        };
        if !update {
            self.maps.reset_counters(pod_id)?;
        }
        done.push(Undo::Config(pod_id, previous_config));
        self.maps.set_config(pod_id, config)?;
        let previous = self.maps.addresses_of(pod_id)?;
        for &addr in req.addresses {
            if !previous.contains(&addr) {
                done.push(Undo::Address(addr));
                self.maps.add_address(addr, pod_id)?;
            }
        }
        if !self.layout.sk_lookup_link(pod_id).exists() {
            self.attach_sk_lookup(pod_id, netns)?;
            done.push(Undo::Link(pod_id));
        }
        if let Some((hbone, plaintext)) = req.listeners {
            if !update {
                done.push(Undo::Listeners(pod_id));
            }
            self.maps.register_listeners(pod_id, hbone, plaintext)?;
        }
        // Last: this is what turns outbound capture on.
        self.maps.enable_outbound(config.netns_cookie, pod_id)?;
        // Addresses the pod no longer has are released only once the rest succeeded.
        for addr in previous {
            if !req.addresses.contains(&addr) {
                self.maps.remove_address(addr)?;
            }
        }
        Ok(())
    }

    fn undo(&mut self, step: Undo) {
        let result = match step {
            Undo::Config(id, previous) => self.maps.set_config(id, &previous),
            Undo::Address(addr) => self.maps.remove_address(addr),
            Undo::Link(id) => self.detach_sk_lookup(id),
            Undo::Listeners(id) => self.maps.remove_listeners(id),
        };
        if let Err(error) = result {
            warn!(%error, "rollback step failed");
        }
    }

    /// Unenrolls pods whose network namespace no longer exists (the pod went away without
    /// an unenroll: its sk_lookup link was detached by the kernel). Returns how many.
    pub fn prune_vanished(&mut self) -> Result<usize, CaptureError> {
        let mut pruned = 0;
        for pod in self.pods()? {
            let pin = self.layout.sk_lookup_link(pod.pod_id);
            let Ok(link) = amesh_sys::bpf::obj_get(&pin) else {
                continue;
            };
            let info = amesh_sys::bpf::link_info(link.as_fd()).map_err(CaptureError::io(&pin))?;
            if info.netns_ino == 0 {
                warn!(
                    pod_id = pod.pod_id,
                    "pod's network namespace is gone; unenrolling it"
                );
                self.unenroll(pod.pod_id)?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    fn attach_sk_lookup(&mut self, pod_id: u32, netns: &Netns) -> Result<(), CaptureError> {
        let link_id = self
            .sk_lookup
            .attach(netns.as_fd())
            .map_err(CaptureError::program(SK_LOOKUP))?;
        let link: FdLink = self
            .sk_lookup
            .take_link(link_id)
            .map_err(CaptureError::program(SK_LOOKUP))?
            .into();
        let path = self.layout.sk_lookup_link(pod_id);
        link.pin(&path)
            .map_err(|source| CaptureError::Pin { path, source })?;
        Ok(())
    }

    fn detach_sk_lookup(&mut self, pod_id: u32) -> Result<(), CaptureError> {
        setup::unpin_link(&self.layout.sk_lookup_link(pod_id))
    }

    /// Releases a pod: its traffic goes direct again. Returns false if it was not enrolled.
    pub fn unenroll(&mut self, pod_id: u32) -> Result<bool, CaptureError> {
        if pod_id >= MAX_PODS {
            return Ok(false);
        }
        let config = self.maps.config(pod_id)?;
        if config.netns_cookie == 0 {
            return Ok(false);
        }
        // Outbound first, so no new connection is redirected to listeners about to go.
        self.maps.disable_outbound(config.netns_cookie)?;
        self.detach_sk_lookup(pod_id)?;
        self.maps.remove_listeners(pod_id)?;
        for addr in self.maps.addresses_of(pod_id)? {
            self.maps.remove_address(addr)?;
        }
        self.maps.set_config(pod_id, &PodConfig::default())?;
        self.maps.reset_counters(pod_id)?;
        info!(pod_id, "pod unenrolled");
        Ok(true)
    }

    /// The enrolled pod living in the network namespace at `netns`, if any.
    pub fn find(&self, netns: &Path) -> Result<Option<EnrolledPod>, CaptureError> {
        let cookie = Netns::open(netns)?.cookie()?;
        match self.maps.pod_of_netns(cookie)? {
            Some(id) => self.pod(id),
            None => Ok(None),
        }
    }

    /// One enrolled pod by id.
    pub fn pod(&self, pod_id: u32) -> Result<Option<EnrolledPod>, CaptureError> {
        if pod_id >= MAX_PODS {
            return Ok(None);
        }
        let config = self.maps.config(pod_id)?;
        if config.netns_cookie == 0 {
            return Ok(None);
        }
        Ok(Some(EnrolledPod {
            pod_id,
            netns_cookie: config.netns_cookie,
            addresses: self.maps.addresses_of(pod_id)?,
            config,
        }))
    }

    /// Every enrolled pod, by pod id.
    pub fn pods(&self) -> Result<Vec<EnrolledPod>, CaptureError> {
        let mut ids: Vec<u32> = self
            .maps
            .enrolled()?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        ids.sort_unstable();
        let mut pods = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(p) = self.pod(id)? {
                pods.push(p);
            }
        }
        Ok(pods)
    }

    /// A pod's capture counters.
    pub fn counters(&self, pod_id: u32) -> Result<PodCounters, CaptureError> {
        self.maps.counters(pod_id)
    }

    /// The original destination of a connection the pod's outbound listener accepted from
    /// `peer` (consumed: each connection is looked up once).
    pub fn take_original_dst(
        &mut self,
        pod_id: u32,
        peer: SocketAddr,
    ) -> Result<Option<SocketAddr>, CaptureError> {
        self.maps.take_original_dst(pod_id, peer)
    }

    /// How many programs are attached to this instance's cgroup, per hook (all owners).
    pub fn cgroup_attachments(&self) -> Result<CgroupAttachments, CaptureError> {
        let dir = File::open(&self.cgroup).map_err(CaptureError::io(&self.cgroup))?;
        let count = |t| {
            amesh_sys::bpf::attached_count(dir.as_fd(), t).map_err(CaptureError::io(&self.cgroup))
        };
        Ok(CgroupAttachments {
            connect4: count(AttachType::CgroupInet4Connect)?,
            connect6: count(AttachType::CgroupInet6Connect)?,
            sock_ops: count(AttachType::CgroupSockOps)?,
        })
    }

    /// The loaded sk_lookup program, for `BPF_PROG_TEST_RUN`.
    pub fn sk_lookup_program(&self) -> Result<BorrowedFd<'_>, CaptureError> {
        Ok(self
            .sk_lookup
            .fd()
            .map_err(CaptureError::program(SK_LOOKUP))?
            .as_fd())
    }

    /// Detaches everything and removes every pin this instance owns.
    pub fn teardown(mut self) -> Result<(), CaptureError> {
        for pod in self.pods()? {
            self.unenroll(pod.pod_id)?;
        }
        // Links left by half-done enrollments.
        for id in self.layout.pinned_sk_lookup_pods() {
            self.detach_sk_lookup(id)?;
        }
        for (name, _, _) in CGROUP_HOOKS {
            setup::unpin_link(&self.layout.link(name))?;
        }
        for name in PROGRAMS {
            setup::remove_pin(&self.layout.prog(name))?;
        }
        for name in maps::ALL {
            setup::remove_pin(&self.layout.map(name))?;
        }
        for dir in [
            self.layout.links(),
            self.layout.progs(),
            self.layout.maps(),
            self.layout.root().to_path_buf(),
        ] {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CaptureError::io(dir)(e)),
            }
        }
        info!(pin_root = %self.layout.root().display(), "capture torn down");
        Ok(())
    }

    fn free_pod_id(&self) -> Result<u32, CaptureError> {
        let used: Vec<u32> = self
            .maps
            .enrolled()?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let pinned = self.layout.pinned_sk_lookup_pods();
        (0..MAX_PODS)
            .find(|id| !used.contains(id) && !pinned.contains(id))
            .ok_or(CaptureError::NoPodSlot { max: MAX_PODS })
    }

    /// sk_lookup links whose pod is not enrolled (a crash mid-enrollment) are removed.
    fn drop_orphan_links(&mut self) -> Result<(), CaptureError> {
        let enrolled: Vec<u32> = self
            .maps
            .enrolled()?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        for id in self.layout.pinned_sk_lookup_pods() {
            if !enrolled.contains(&id) {
                warn!(
                    pod_id = id,
                    "removing sk_lookup link of a pod that is not enrolled"
                );
                self.detach_sk_lookup(id)?;
                self.maps.set_config(id, &PodConfig::default())?;
            }
        }
        Ok(())
    }
}

fn pod_config(req: &EnrollRequest<'_>) -> Result<PodConfig, CaptureError> {
    // Inbound capture finds a pod by destination address; without one it could only refuse.
    if req.addresses.is_empty() && !req.bypass_inbound {
        return Err(CaptureError::NoAddresses);
    }
    let mut flags = 0;
    if req.bypass_inbound {
        flags |= POD_FLAG_BYPASS_INBOUND;
    }
    if !req.dns_capture {
        flags |= POD_FLAG_NO_DNS_CAPTURE;
    }
    let mut config = PodConfig {
        flags,
        ..PodConfig::default()
    };
    for (direction, ports, slots) in [
        (
            "outbound",
            req.excluded_outbound_ports,
            &mut config.excluded_outbound_ports,
        ),
        (
            "inbound",
            req.excluded_inbound_ports,
            &mut config.excluded_inbound_ports,
        ),
    ] {
        if ports.len() > MAX_EXCLUDED_PORTS {
            return Err(CaptureError::TooManyExcludedPorts {
                direction,
                count: ports.len(),
                max: MAX_EXCLUDED_PORTS,
            });
        }
        slots[..ports.len()].copy_from_slice(ports);
    }
    Ok(config)
}
