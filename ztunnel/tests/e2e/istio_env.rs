//! ztunnel configured the way Istio's ztunnel DaemonSet configures Istio's: the control plane
//! as an `https://` URL in `XDS_ADDRESS` (verified by `ALT_XDS_HOSTNAME`, the name in its
//! serving certificate), the root in `CA_ROOT_CA`, the token in `AUTH_TOKEN`, and the CA
//! left to default to the xDS address. It joins the mesh fed by amesh's control plane.

use crate::{
    support::*,
    xds::{wait_dump, workload_names, xds_mesh_of},
};
use amesh_testbed::mesh::{Mesh, ZtunnelProcess};
use std::{process::Command, time::Duration};

/// A ztunnel for a third node, configured through Istio's variables, checking the control
/// plane's certificate for `host_name`.
fn istio_configured(mesh: &Mesh, host_name: &str, log: &str) -> ZtunnelProcess {
    let xds = mesh.xds.expect("a control plane");
    let mut command = Command::new(&mesh.ztunnel);
    command
        .env("XDS_ADDRESS", format!("https://{xds}"))
        .env("ALT_XDS_HOSTNAME", host_name)
        .env("CA_ROOT_CA", mesh.ca_root_path())
        .env("AUTH_TOKEN", mesh.node_token_path())
        .env("CLUSTER_ID", "Kubernetes")
        .env("NODE_NAME", "node3")
        .env("INPOD_UDS", mesh.dir.join("no-agent.sock"))
        .env("ISTIO_META_ENABLE_HBONE", "true")
        .env("RUST_LOG", "info")
        .env("AMESH_DNS_RESOLV_CONF", mesh.resolv_conf_path())
        // What Istio has no variable for: where amesh's capture maps are, and ports free
        // beside the mesh's own ztunnels.
        .args([
            "--capture-pins",
            &mesh.bed.pin_root().join("node1").display().to_string(),
            "--log-format",
            "json",
            "--admin",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--readiness",
            "127.0.0.1:0",
        ]);
    ZtunnelProcess::spawn(command, mesh.dir.join(log), "ztunnel").expect("ztunnel starts")
}

fn workloads(z: &ZtunnelProcess) -> Result<Vec<String>, String> {
    let (_, dump) = z
        .try_http("Admin", "GET", "/config_dump")
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&dump).map_err(|e| e.to_string())?;
    Ok(workload_names(&v))
}

#[test]
fn istios_environment_variables_configure_ztunnel() {
    let mesh = xds_mesh_of(&[pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")]);
    let z = istio_configured(&mesh, "istiod.istio-system.svc", "ztunnel-istio-env.log");
    amesh_testbed::eventually(
        "the catalog over xDS",
        Duration::from_secs(20),
        || match workloads(&z)? {
            names if names == ["a", "c"] => Ok(()),
            names => Err(format!("workloads {names:?}; log:\n{}", z.log())),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let log = z.log();
    assert!(
        log.contains("host name istiod.istio-system.svc"),
        "the control plane verified by ALT_XDS_HOSTNAME: {log}"
    );
    drop(z);

    // A name the control plane's certificate does not hold is refused; nothing arrives.
    let wrong = istio_configured(&mesh, "istiod.elsewhere.svc", "ztunnel-istio-wrong.log");
    amesh_testbed::eventually("a refused handshake", Duration::from_secs(20), || {
        let log = wrong.log();
        if log.contains("NotValidForName") || log.contains("not valid for name") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(workloads(&wrong), Ok(vec![]), "{}", wrong.log());
    drop(wrong);

    // The mesh's own ztunnels are unaffected.
    wait_dump(&mesh, "node1", "its workloads", |v| {
        workload_names(v).len() == 2
    });
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}
