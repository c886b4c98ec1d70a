//! The test mesh (`amesh_testbed::mesh`) with test-friendly forms: construction starts every
//! node, and failures panic with the reason.

pub use amesh_testbed::mesh::{APP_PORT, Mesh, PodSpec, VIP, ZtunnelProcess, outside, pod, uid};
use amesh_testbed::{
    PodProcess,
    probe::{ConnectResult, Connected},
};
use std::net::SocketAddr;

pub trait MeshExt: Sized {
    /// A started mesh of `specs`.
    fn new(specs: &[PodSpec]) -> Self {
        Self::with_args(specs, &[])
    }
    /// A started mesh whose ztunnels get extra arguments, per node (`(node, args)`).
    fn with_args(specs: &[PodSpec], extra: &[(&str, &[&str])]) -> Self;
    fn apps(&self, names: &[&str]) -> Vec<PodProcess>;
    fn connect(&self, from: &str, extra: &[&str], targets: &[SocketAddr]) -> Vec<ConnectResult>;
    fn connect_one(&self, from: &str, target: SocketAddr) -> Connected;
    fn update_config(&self, policies: &[&str], edit: impl FnOnce(String) -> String);
}

impl MeshExt for Mesh {
    fn with_args(specs: &[PodSpec], extra: &[(&str, &[&str])]) -> Self {
        amesh_testbed::require_root();
        let mut mesh = Mesh::try_build(specs).expect("build the mesh");
        mesh.try_start(extra).expect("start the nodes");
        mesh
    }

    fn apps(&self, names: &[&str]) -> Vec<PodProcess> {
        self.try_apps(names).expect("apps")
    }

    fn connect(&self, from: &str, extra: &[&str], targets: &[SocketAddr]) -> Vec<ConnectResult> {
        self.try_connect(from, extra, targets).expect("client ran")
    }

    fn connect_one(&self, from: &str, target: SocketAddr) -> Connected {
        self.try_connect_one(from, target)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn update_config(&self, policies: &[&str], edit: impl FnOnce(String) -> String) {
        self.try_update_config(policies, edit)
            .expect("configuration reloaded");
    }
}

pub trait ZtunnelExt {
    fn endpoint(&self, role: &str) -> SocketAddr;
    fn http(&self, role: &str, method: &str, path: &str) -> (u16, String);
}

impl ZtunnelExt for ZtunnelProcess {
    fn endpoint(&self, role: &str) -> SocketAddr {
        self.try_endpoint(role).expect("endpoint")
    }

    fn http(&self, role: &str, method: &str, path: &str) -> (u16, String) {
        self.try_http(role, method, path).expect("http")
    }
}

pub fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    amesh_testbed::mesh::http_raw(addr, request).expect("http")
}

/// Whether `from`'s connection to `to` fails (within 3 s).
pub fn refused(mesh: &Mesh, from: &str, to: SocketAddr) -> bool {
    mesh.connect(from, &["--timeout-ms", "3000"], &[to])
        .remove(0)
        .outcome
        .is_err()
}
