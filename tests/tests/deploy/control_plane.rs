//! The control plane's Deployment and Service, and what values change.

use super::*;

#[test]
fn control_plane_runs_unprivileged_behind_its_service() {
    let objects = manifests();
    let deployment = deployments(&objects)["istiod"];
    let spec = deployment.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("istiod"));
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true));
    let host_paths = pod
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.is_some())
        .count();
    assert_eq!(host_paths, 0, "no host paths");
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(1337));
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(caps.add.is_none(), "adds no capability");
    assert!(c.args.iter().flatten().any(|a| a == "--kubernetes"));
    assert_eq!(flag(c, "--ca-secret"), "istio-system/istio-ca-secret");
    assert_eq!(flag(c, "--listen"), "[::]:15012");
    assert_eq!(
        flag(c, "--dns-name"),
        "istiod.istio-system.svc",
        "the name ztunnel checks"
    );
    let probe = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.tcp_socket.as_ref());
    assert_eq!(probe.map(|t| t.port.clone()), Some(IntOrString::Int(15012)));

    let service = services(&objects)["istiod"];
    let svc = service.spec.as_ref().expect("spec");
    let ports = svc.ports.as_deref().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (ports[0].port, ports[0].name.as_deref()),
        (15012, Some("https-dns"))
    );
    assert_eq!(ports[0].target_port, Some(IntOrString::Int(15012)));
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = svc.selector.clone().unwrap_or_default();
    assert!(!selector.is_empty());
    for (k, v) in &selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "the Service selects istiod's pods ({k})"
        );
    }
}

// ---------------------------------------------------------------- values

fn image(pod: &PodSpec, name: &str) -> String {
    container(pod, name).image.clone().unwrap_or_default()
}

#[test]
fn values_change_the_rendering() {
    let text = render_py(&[
        "--namespace",
        "mesh",
        "--set",
        "controlPlane.enabled=false",
        "--set",
        "image.hub=registry.test/mesh,image.tag=v9.9.9",
        "--set",
        "ztunnel.xdsAddress=istiod.istio-system.svc:15012",
    ]);
    let objects = parse(&text);
    assert!(deployments(&objects).is_empty(), "no istiod Deployment");
    assert!(services(&objects).is_empty(), "no istiod Service");
    assert_eq!(
        service_accounts(&objects).keys().collect::<Vec<_>>(),
        ["ztunnel"]
    );
    assert_eq!(
        roles(&objects).keys().collect::<Vec<_>>(),
        ["ClusterRole/amesh-node"]
    );
    let pod = node_pod(&objects);
    assert_eq!(image(&pod, AGENT), "registry.test/mesh/amesh-node:v9.9.9");
    assert_eq!(image(&pod, ZTUNNEL), "registry.test/mesh/ztunnel:v9.9.9");
    let ztunnel = container(&pod, ZTUNNEL);
    assert_eq!(
        flag(ztunnel, "--xds-address"),
        "istiod.istio-system.svc:15012"
    );
    assert_eq!(
        flag(ztunnel, "--ca-address"),
        "istiod.istio-system.svc:15012"
    );
    let ds = daemonsets(&objects)["amesh-node"];
    assert_eq!(ds.metadata.namespace.as_deref(), Some("mesh"));
    let (_, subjects) = bindings(&objects)["ClusterRoleBinding/amesh-node"];
    assert_eq!(subjects[0].namespace.as_deref(), Some("mesh"));

    // The defaults, for contrast: amesh's control plane in the release namespace.
    let defaults = manifests();
    let pod = node_pod(&defaults);
    assert!(
        image(&pod, ZTUNNEL).ends_with("/ztunnel:0.1.0"),
        "{}",
        image(&pod, ZTUNNEL)
    );
    assert_eq!(
        deployments(&defaults).keys().collect::<Vec<_>>(),
        ["istiod"]
    );
}

#[test]
fn the_control_plane_follows_the_release_namespace() {
    let objects = parse(&render_py(&["--namespace", "mesh"]));
    let pod = node_pod(&objects);
    let ztunnel = container(&pod, ZTUNNEL);
    assert_eq!(flag(ztunnel, "--xds-address"), "istiod.mesh.svc:15012");
    assert_eq!(flag(ztunnel, "--control-plane-dns-name"), "istiod.mesh.svc");
    let deployment = deployments(&objects)["istiod"];
    let cp = &deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod")
        .containers[0];
    assert_eq!(flag(cp, "--dns-name"), "istiod.mesh.svc");
    assert_eq!(flag(cp, "--ca-secret"), "mesh/istio-ca-secret");
}

#[test]
fn mesh_config_becomes_istios_configmap_where_istiod_reads_it() {
    // One --set: the list element is built whole.
    let provider = "controlPlane.meshConfig.extensionProviders[0]";
    let text = render_py(&[
        "--set",
        &format!(
            "{provider}.name=ext-authz,{provider}.envoyExtAuthzHttp.service=ext-authz.foo.svc.cluster.local,{provider}.envoyExtAuthzHttp.port=8000"
        ),
    ]);
    let docs: Vec<serde_yaml::Value> = text
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str(d).ok())
        .collect();
    let configmap = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "istio")
        .expect("the istio ConfigMap");
    let mesh: serde_yaml::Value =
        serde_yaml::from_str(configmap["data"]["mesh"].as_str().expect("its mesh key")).unwrap();
    let provider = &mesh["extensionProviders"][0];
    assert_eq!(provider["name"], "ext-authz");
    assert_eq!(provider["envoyExtAuthzHttp"]["port"], 8000);
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "istiod")
        .expect("istiod");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(spec["volumes"][0]["configMap"]["name"], "istio");
    assert_eq!(
        spec["containers"][0]["volumeMounts"][0]["mountPath"],
        "/etc/istio/config"
    );
    // Without it: no ConfigMap, no mount.
    assert!(!committed().contains("name: mesh-config"));
}
