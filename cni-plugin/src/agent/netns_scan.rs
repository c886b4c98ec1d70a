//! Finding a running pod's network namespace from its processes (after an agent restart, or
//! for pods that started before their namespace was enrolled): the namespace of some process
//! in `/proc` whose addresses include the pod's IP. `/proc/<pid>/net/*` shows the files of the
//! process's own namespace, so no namespace has to be entered to read its addresses.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

/// `/proc/<pid>/ns/net` of a process whose namespace has one of `ips`, or None. A process
/// whose cgroup names another pod (the kubelet puts each pod's processes under
/// `pod<uid>`) does not count: after a pod is gone its address may belong to another.
///
/// Only processes below `cgroup` count (the cgroup the capture programs attach to, relative
/// to the cgroup v2 root, `/` on a node): a pod's processes always are, and elsewhere on the
/// host the same private address may well exist in namespaces that are not pods at all.
pub fn find_by_ip(
    proc_root: &Path,
    ips: &[IpAddr],
    pod_uid: &str,
    cgroup: &str,
) -> Option<PathBuf> {
    if ips.is_empty() {
        return None;
    }
    let own = std::fs::read_link(proc_root.join("self/ns/net")).ok();
    let mut seen = HashSet::new();
    let entries = std::fs::read_dir(proc_root).ok()?;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let pid_dir = entry.path();
        let cgroups = std::fs::read_to_string(pid_dir.join("cgroup")).unwrap_or_default();
        if !in_cgroup(&cgroups, cgroup) {
            continue;
        }
        let ns_path = pid_dir.join("ns/net");
        let Ok(ns) = std::fs::read_link(&ns_path) else {
            continue;
        };
        if Some(&ns) == own.as_ref() || !seen.insert(ns) {
            continue;
        }
        if !local_addresses(&pid_dir).iter().any(|a| ips.contains(a)) {
            continue;
        }
        match kubelet_pod_uid(&cgroups) {
            Some(uid) if !pod_uid.is_empty() && uid != pod_uid => continue,
            _ => return Some(ns_path),
        }
    }
    None
}

/// Whether a process's `/proc/<pid>/cgroup` puts it at or below `cgroup` (v2 path).
fn in_cgroup(cgroups: &str, cgroup: &str) -> bool {
    let cgroup = cgroup.trim_end_matches('/');
    if cgroup.is_empty() {
        return true;
    }
    cgroups.lines().any(|l| {
        l.strip_prefix("0::")
            .is_some_and(|p| p == cgroup || p.starts_with(&format!("{cgroup}/")))
    })
}

/// The pod UID in a kubelet cgroup path (`.../pod<uid>/...` with the cgroupfs driver,
/// `...-pod<uid with _>.slice` with systemd's), if the process belongs to a pod.
fn kubelet_pod_uid(cgroup: &str) -> Option<String> {
    cgroup.match_indices("pod").find_map(|(i, _)| {
        let candidate: String = cgroup[i + 3..].chars().take(36).collect();
        let uid = candidate.replace('_', "-");
        let shaped = uid.len() == 36
            && uid.char_indices().all(|(j, c)| {
                if matches!(j, 8 | 13 | 18 | 23) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
        shaped.then_some(uid)
    })
}

/// The addresses configured in the namespace of the process at `pid_dir`.
fn local_addresses(pid_dir: &Path) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = std::fs::read_to_string(pid_dir.join("net/fib_trie"))
        .map(|t| parse_fib_trie_local(&t))
        .unwrap_or_default()
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    out.extend(
        std::fs::read_to_string(pid_dir.join("net/if_inet6"))
            .map(|t| parse_if_inet6(&t))
            .unwrap_or_default()
            .into_iter()
            .map(IpAddr::V6),
    );
    out
}

/// Local IPv4 addresses in `fib_trie`: a `|-- <addr>` leaf followed by `/32 host LOCAL`.
fn parse_fib_trie_local(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL")
            && let Some(a) = last
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    out
}

/// Addresses in `if_inet6`: 32 hex digits first on each line.
fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_files() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.201.1.2\n        /32 host LOCAL\n     |-- 10.201.255.255\n        /32 link BROADCAST\nLocal:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.201.1.2\n        /32 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\n";
        assert_eq!(
            parse_fib_trie_local(trie),
            vec![Ipv4Addr::new(10, 201, 1, 2), Ipv4Addr::LOCALHOST]
        );
        let inet6 = "fd000201000000000000000000010002 02 40 00 80     eth0\n00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(
            parse_if_inet6(inet6),
            vec![
                "fd00:201::1:2".parse::<Ipv6Addr>().expect("ip"),
                Ipv6Addr::LOCALHOST
            ]
        );
    }

    #[test]
    fn cgroup_membership() {
        let line = "0::/amesh-1-0/pods\n";
        assert!(in_cgroup(line, "/"));
        assert!(in_cgroup(line, "/amesh-1-0"));
        assert!(!in_cgroup(line, "/amesh-1-01"));
        assert!(!in_cgroup("0::/amesh-2-0\n", "/amesh-1-0"));
    }

    #[test]
    fn reads_pod_uids_from_kubelet_cgroups() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let cgroupfs = format!("0::/kubepods/besteffort/pod{uid}/abcdef\n");
        assert_eq!(kubelet_pod_uid(&cgroupfs).as_deref(), Some(uid));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-1.scope\n",
            uid.replace('-', "_")
        );
        assert_eq!(kubelet_pod_uid(&systemd).as_deref(), Some(uid));
        assert_eq!(kubelet_pod_uid("0::/user.slice/podman.scope\n"), None);
    }

    #[test]
    fn finds_nothing_for_an_unused_address() {
        // 192.0.2.0/24 is reserved for documentation: no namespace here has it.
        let ip: IpAddr = "192.0.2.77".parse().expect("ip");
        assert_eq!(find_by_ip(Path::new("/proc"), &[ip], "", "/"), None);
    }
}
