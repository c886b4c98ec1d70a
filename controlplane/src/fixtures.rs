//! Test and benchmark support, not part of the control plane's interface: a cluster-scale
//! set of Kubernetes objects (10,000 pods, 2,000 services, 100 namespaces), shared by the
//! scale benchmark and the xDS client's message-size test so that both measure the same
//! catalog.

use crate::{
    catalog::Catalog,
    translate::{Mesh, translate},
};
use amesh_kube::source::{ObjectError, Snapshot, read_documents};
use std::{fmt::Write, path::Path};

pub const NAMESPACES: usize = 100;
pub const PODS: usize = 10_000;
pub const SERVICES: usize = 2_000;

/// The objects as one YAML stream; `changed_pod`, if any, is `Pending` instead of `Running`
/// (the benchmark's one-pod change). Names are shaped as in a real cluster (team
/// namespaces, Deployment pods `<app>-<template hash>-<suffix>`): the encoded size, which
/// the xDS message-size test depends on, grows with them.
pub fn scale_objects(changed_pod: Option<usize>) -> String {
    let mut y = String::new();
    for n in 0..NAMESPACES {
        let _ = writeln!(
            y,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: team-{n:03}-production, labels: {{istio.io/dataplane-mode: ambient}}}}\n---"
        );
    }
    for p in 0..PODS {
        let (ns, svc) = (p % NAMESPACES, p % SERVICES);
        let phase = if changed_pod == Some(p) {
            "Pending"
        } else {
            "Running"
        };
        let _ = writeln!(
            y,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: svc{svc}-{hash:010x}-{p:05}, namespace: team-{ns:03}-production, labels: {{app: svc{svc}}}}}\n\
             spec: {{nodeName: node{node}, serviceAccountName: sa{svc}, containers: [{{name: c, image: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {{phase: {phase}, conditions: [{{type: Ready, status: \"True\"}}], podIPs: [{{ip: 10.{a}.{b}.{c}}}]}}\n---",
            node = p % 50,
            hash = 0x5f6d_0000_u64 + svc as u64,
            a = p / 65536,
            b = (p / 256) % 256,
            c = p % 256,
        );
    }
    for s in 0..SERVICES {
        let _ = writeln!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: team-{ns:03}-production}}\n\
             spec: {{clusterIP: 10.96.{a}.{b}, selector: {{app: svc{s}}}, ports: [{{port: 80, targetPort: http}}]}}\n---",
            ns = s % NAMESPACES,
            a = s / 256,
            b = s % 256,
        );
    }
    y
}

/// `text` read as the control plane reads a source directory.
pub fn read(text: &str) -> Result<Snapshot, Vec<ObjectError>> {
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    read_documents(Path::new("scale.yaml"), text, &mut snapshot, &mut errors);
    if errors.is_empty() {
        Ok(snapshot)
    } else {
        Err(errors)
    }
}

/// The catalog the control plane serves for [`scale_objects`]`(None)`.
pub fn scale_catalog() -> Result<Catalog, Vec<ObjectError>> {
    let snapshot = read(&scale_objects(None))?;
    Ok(Catalog::from_resources(&translate(
        &snapshot,
        &Mesh::default(),
    )))
}
