//! Typed access to the capture programs' maps. The owner (node agent) gets them from the
//! loaded object; ztunnel opens the same maps from their pins to register its listeners and
//! to recover original destinations.

use crate::{CaptureError, PinLayout};
use amesh_ebpf_common::{
    ConnKey, Ip6, IpKey, LISTENER_HBONE, LISTENER_PLAINTEXT, ListenerKey, OriginalDst, PodConfig,
    PodCounters,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, SockHash},
};
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::BorrowedFd,
};

pub(crate) const POD_CONFIG: &str = "POD_CONFIG";
pub(crate) const NETNS_TO_POD: &str = "NETNS_TO_POD";
pub(crate) const ADDR_TO_POD: &str = "ADDR_TO_POD";
pub(crate) const LISTENERS: &str = "LISTENERS";
pub(crate) const CONNECT_ORIG: &str = "CONNECT_ORIG";
pub(crate) const ORIGINAL_DST: &str = "ORIGINAL_DST";
pub(crate) const COUNTERS: &str = "COUNTERS";
pub(crate) const DNS_ORIG: &str = "DNS_ORIG";
/// Every pinned map, for teardown.
pub(crate) const ALL: [&str; 8] = [
    POD_CONFIG,
    NETNS_TO_POD,
    ADDR_TO_POD,
    LISTENERS,
    CONNECT_ORIG,
    ORIGINAL_DST,
    COUNTERS,
    DNS_ORIG,
];

/// An address in the programs' form: IPv6, IPv4 mapped, network-order words.
pub fn to_ip6(addr: IpAddr) -> Ip6 {
    let v6 = match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    let o = v6.octets();
    [0, 4, 8, 12].map(|i| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
}

/// The inverse of [`to_ip6`]: mapped addresses come back as IPv4.
pub fn from_ip6(ip: Ip6) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in ip.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o).to_canonical()
}

fn absent_is_none<T>(r: Result<T, MapError>) -> Result<Option<T>, MapError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        // Some map types (sockhash) report a missing key as a plain ENOENT.
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc_enoent()) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

const fn libc_enoent() -> i32 {
    2
}

fn absent_is_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    absent_is_none(r).map(drop)
}

pub struct CaptureMaps {
    pod_config: Array<MapData, PodConfig>,
    netns_to_pod: HashMap<MapData, u64, u32>,
    addr_to_pod: HashMap<MapData, IpKey, u32>,
    listeners: SockHash<MapData, ListenerKey>,
    original_dst: HashMap<MapData, ConnKey, OriginalDst>,
    counters: PerCpuArray<MapData, PodCounters>,
}

impl std::fmt::Debug for CaptureMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureMaps").finish_non_exhaustive()
    }
}

impl CaptureMaps {
    pub(crate) fn take_from(ebpf: &mut Ebpf) -> Result<Self, CaptureError> {
        Self::build(|name| {
            ebpf.take_map(name).ok_or(CaptureError::Map {
                map: name,
                source: MapError::InvalidName { name: name.into() },
            })
        })
    }

    /// Opens the maps a running owner pinned under `layout` (ztunnel's way in).
    pub fn open_pinned(layout: &PinLayout) -> Result<Self, CaptureError> {
        if !amesh_sys::fs::is_bpffs(layout.root()) {
            return Err(CaptureError::BpffsNotMounted {
                path: layout.root().to_path_buf(),
            });
        }
        Self::build(|name| {
            let data = MapData::from_pin(layout.map(name)).map_err(CaptureError::map(name))?;
            Map::from_map_data(data).map_err(CaptureError::map(name))
        })
    }

    fn build(
        mut get: impl FnMut(&'static str) -> Result<Map, CaptureError>,
    ) -> Result<Self, CaptureError> {
        Ok(Self {
            pod_config: Array::try_from(get(POD_CONFIG)?).map_err(CaptureError::map(POD_CONFIG))?,
            netns_to_pod: HashMap::try_from(get(NETNS_TO_POD)?)
                .map_err(CaptureError::map(NETNS_TO_POD))?,
            addr_to_pod: HashMap::try_from(get(ADDR_TO_POD)?)
                .map_err(CaptureError::map(ADDR_TO_POD))?,
            listeners: SockHash::try_from(get(LISTENERS)?).map_err(CaptureError::map(LISTENERS))?,
            original_dst: HashMap::try_from(get(ORIGINAL_DST)?)
                .map_err(CaptureError::map(ORIGINAL_DST))?,
            counters: PerCpuArray::try_from(get(COUNTERS)?).map_err(CaptureError::map(COUNTERS))?,
        })
    }

    /// The pod id enrolled for a network-namespace cookie.
    pub fn pod_of_netns(&self, netns_cookie: u64) -> Result<Option<u32>, CaptureError> {
        absent_is_none(self.netns_to_pod.get(&netns_cookie, 0))
            .map_err(CaptureError::map(NETNS_TO_POD))
    }

    /// Every enrolled pod as (netns cookie, pod id).
    pub fn enrolled(&self) -> Result<Vec<(u64, u32)>, CaptureError> {
        self.netns_to_pod
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(CaptureError::map(NETNS_TO_POD))
    }

    pub(crate) fn enable_outbound(
        &mut self,
        netns_cookie: u64,
        pod_id: u32,
    ) -> Result<(), CaptureError> {
        self.netns_to_pod
            .insert(netns_cookie, pod_id, 0)
            .map_err(CaptureError::map(NETNS_TO_POD))
    }

    pub(crate) fn disable_outbound(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        absent_is_ok(self.netns_to_pod.remove(&netns_cookie))
            .map_err(CaptureError::map(NETNS_TO_POD))
    }

    pub fn config(&self, pod_id: u32) -> Result<PodConfig, CaptureError> {
        self.pod_config
            .get(&pod_id, 0)
            .map_err(CaptureError::map(POD_CONFIG))
    }

    pub(crate) fn set_config(&mut self, pod_id: u32, cfg: &PodConfig) -> Result<(), CaptureError> {
        self.pod_config
            .set(pod_id, cfg, 0)
            .map_err(CaptureError::map(POD_CONFIG))
    }

    /// The pod an address is enrolled for, if any.
    pub fn owner_of(&self, addr: IpAddr) -> Result<Option<u32>, CaptureError> {
        absent_is_none(self.addr_to_pod.get(&IpKey { addr: to_ip6(addr) }, 0))
            .map_err(CaptureError::map(ADDR_TO_POD))
    }

    /// The addresses enrolled for a pod.
    pub fn addresses_of(&self, pod_id: u32) -> Result<Vec<IpAddr>, CaptureError> {
        let mut out = Vec::new();
        for entry in self.addr_to_pod.iter() {
            let (key, owner) = entry.map_err(CaptureError::map(ADDR_TO_POD))?;
            if owner == pod_id {
                out.push(from_ip6(key.addr));
            }
        }
        out.sort();
        Ok(out)
    }

    pub(crate) fn add_address(&mut self, addr: IpAddr, pod_id: u32) -> Result<(), CaptureError> {
        self.addr_to_pod
            .insert(IpKey { addr: to_ip6(addr) }, pod_id, 0)
            .map_err(CaptureError::map(ADDR_TO_POD))
    }

    pub(crate) fn remove_address(&mut self, addr: IpAddr) -> Result<(), CaptureError> {
        absent_is_ok(self.addr_to_pod.remove(&IpKey { addr: to_ip6(addr) }))
            .map_err(CaptureError::map(ADDR_TO_POD))
    }

    /// Registers ztunnel's inbound listeners for a pod: connections arriving at the pod go to
    /// `hbone` (port 15008) or `plaintext` (every other captured port). Both must be listening
    /// TCP sockets inside the pod's network namespace.
    pub fn register_listeners(
        &mut self,
        pod_id: u32,
        hbone: BorrowedFd<'_>,
        plaintext: BorrowedFd<'_>,
    ) -> Result<(), CaptureError> {
        for (kind, fd) in [(LISTENER_HBONE, hbone), (LISTENER_PLAINTEXT, plaintext)] {
            self.listeners
                .insert(ListenerKey { pod_id, kind }, fd, 0)
                .map_err(CaptureError::map(LISTENERS))?;
        }
        Ok(())
    }

    /// Forgets a pod's listeners; its inbound connections are refused until new ones register.
    pub fn remove_listeners(&mut self, pod_id: u32) -> Result<(), CaptureError> {
        for kind in [LISTENER_HBONE, LISTENER_PLAINTEXT] {
            absent_is_ok(self.listeners.remove(&ListenerKey { pod_id, kind }))
                .map_err(CaptureError::map(LISTENERS))?;
        }
        Ok(())
    }

    /// Number of listener entries registered for a pod (0, 1 or 2).
    pub fn listener_count(&self, pod_id: u32) -> Result<usize, CaptureError> {
        let mut n = 0;
        for kind in [LISTENER_HBONE, LISTENER_PLAINTEXT] {
            if absent_is_none(self.listeners.get(&ListenerKey { pod_id, kind }, 0))
                .map_err(CaptureError::map(LISTENERS))?
                .is_some()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The destination a redirected connection asked for, looked up by the peer address the
    /// outbound listener saw when it accepted it. The entry is consumed.
    pub fn take_original_dst(
        &mut self,
        pod_id: u32,
        peer: SocketAddr,
    ) -> Result<Option<SocketAddr>, CaptureError> {
        let key = ConnKey {
            addr: to_ip6(peer.ip()),
            pod_id,
            port: peer.port(),
            _pad: 0,
        };
        let found = absent_is_none(self.original_dst.get(&key, 0))
            .map_err(CaptureError::map(ORIGINAL_DST))?;
        let Some(orig) = found else { return Ok(None) };
        absent_is_ok(self.original_dst.remove(&key)).map_err(CaptureError::map(ORIGINAL_DST))?;
        Ok(Some(SocketAddr::new(from_ip6(orig.addr), orig.port)))
    }

    /// A pod's counters, summed over CPUs.
    pub fn counters(&self, pod_id: u32) -> Result<PodCounters, CaptureError> {
        let per_cpu = self
            .counters
            .get(&pod_id, 0)
            .map_err(CaptureError::map(COUNTERS))?;
        let mut sum = PodCounters::default();
        per_cpu.iter().for_each(|c| sum.add(c));
        Ok(sum)
    }

    pub(crate) fn reset_counters(&mut self, pod_id: u32) -> Result<(), CaptureError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| CaptureError::io("/sys/devices/system/cpu/possible")(e))?;
        let zeros = PerCpuValues::try_from(vec![PodCounters::default(); cpus])
            .map_err(CaptureError::io("/sys/devices/system/cpu/possible"))?;
        self.counters
            .set(pod_id, zeros, 0)
            .map_err(CaptureError::map(COUNTERS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for a in ["10.1.2.3", "127.0.0.1", "fd00::9", "::1", "169.254.7.127"] {
            let ip: IpAddr = a.parse().expect("address");
            assert_eq!(from_ip6(to_ip6(ip)), ip, "{a}");
        }
        assert_eq!(
            to_ip6("169.254.7.127".parse().expect("v4")),
            amesh_ebpf_common::PROBE_SOURCE_V4
        );
        assert_eq!(
            to_ip6(
                "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
                    .parse()
                    .expect("v6")
            ),
            amesh_ebpf_common::PROBE_SOURCE_V6
        );
    }
}
