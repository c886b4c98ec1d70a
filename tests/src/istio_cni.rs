//! istio-cni's in-pod setup, as far as a ztunnel under it needs: what Istio's CNI agent
//! writes into an ambient pod's network namespace (istio/istio `cni/pkg/iptables`), so that
//! amesh's ztunnel in `--capture iptables` mode and Istio's own ztunnel can be tested the way
//! istio-cni runs them.
//!
//! - Outbound TCP is REDIRECTed to 15001, except ztunnel's own sockets (mark 0x539) and
//!   loopback; DNS (UDP and TCP port 53) to 15053.
//! - Inbound TCP is REDIRECTed to 15006, except HBONE (15008) and ztunnel's own.
//! - Packets of ztunnel's sockets get the connection mark 0x111, replies carry it back, and a
//!   policy route (table 133) delivers them locally: Istio's ztunnel connects to the app from
//!   the caller's address (transparent), and the reply must reach ztunnel, not the wire.

use crate::{BedError, mesh::failed, pod::Pod};
use std::process::Command;

const IPTABLES: &[&str] = &[
    "-t nat -N ISTIO_OUTPUT",
    "-t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT",
    "-t nat -A OUTPUT -p udp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053",
    "-t nat -A ISTIO_OUTPUT -m mark --mark 0x539/0xfff -j RETURN",
    "-t nat -A ISTIO_OUTPUT -d 127.0.0.0/8 -j RETURN",
    // DNS capture (istio-cni's default in ambient): to ztunnel's DNS port.
    "-t nat -A ISTIO_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053",
    "-t nat -A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
    "-t nat -N ISTIO_PRERT",
    "-t nat -A PREROUTING -j ISTIO_PRERT",
    "-t nat -A ISTIO_PRERT -m mark --mark 0x539/0xfff -j RETURN",
    "-t nat -A ISTIO_PRERT -p tcp --dport 15008 -j RETURN",
    "-t nat -A ISTIO_PRERT ! -d 127.0.0.0/8 -p tcp -j REDIRECT --to-ports 15006",
    "-t mangle -N ISTIO_PRERT",
    "-t mangle -A PREROUTING -j ISTIO_PRERT",
    "-t mangle -A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
    "-t mangle -N ISTIO_OUTPUT",
    "-t mangle -A OUTPUT -j ISTIO_OUTPUT",
    "-t mangle -A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
];

const ROUTES: &[&str] = &[
    "rule add fwmark 0x111/0xfff pref 32764 lookup 133",
    "route add local 0.0.0.0/0 dev lo table 133",
];

fn in_pod(pod: &Pod, tool: &str, args: &str) -> Result<(), BedError> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", pod.netns_path().display()))
        .arg(tool)
        .args(args.split_whitespace())
        .output()
        .map_err(|e| failed(format!("running {tool} in a pod (is it installed?)"), e))?;
    if !out.status.success() {
        return Err(failed(
            format!("{tool} {args}"),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Writes istio-cni's rules and routes into `pod`'s network namespace (they go with it).
pub fn set_up(pod: &Pod) -> Result<(), BedError> {
    for rule in IPTABLES {
        in_pod(pod, "iptables", rule)?;
    }
    for route in ROUTES {
        in_pod(pod, "ip", route)?;
    }
    Ok(())
}
