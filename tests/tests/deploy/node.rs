//! The DaemonSet: capabilities, host paths and who mounts them, tokens, probes, scheduling.

use super::*;

#[test]
fn every_namespaced_object_is_in_the_release_namespace() {
    for (what, namespace) in manifests().iter().filter_map(|o| {
        let (what, meta) = match o {
            Object::ServiceAccount(x) => ("ServiceAccount", &x.metadata),
            Object::Role(x) => ("Role", &x.metadata),
            Object::RoleBinding(x) => ("RoleBinding", &x.metadata),
            Object::Service(x) => ("Service", &x.metadata),
            Object::DaemonSet(x) => ("DaemonSet", &x.metadata),
            Object::Deployment(x) => ("Deployment", &x.metadata),
            Object::ClusterRole(_) | Object::ClusterRoleBinding(_) => return None,
        };
        Some((format!("{what}/{}", name(meta)), meta.namespace.clone()))
    }) {
        assert_eq!(namespace.as_deref(), Some(NAMESPACE), "{what}");
    }
}

#[test]
fn node_containers_have_exactly_their_capabilities() {
    let pod = node_pod(&manifests());
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [AGENT, ZTUNNEL]);
    assert!(pod.init_containers.is_none(), "no init containers");
    let expected = [
        (AGENT, set(&["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"])),
        (ZTUNNEL, set(&["NET_ADMIN", "SYS_ADMIN", "NET_RAW", "BPF"])),
    ];
    for (name, add) in expected {
        let c = container(&pod, name);
        let sc = c.security_context.as_ref().expect("securityContext");
        let caps = sc.capabilities.as_ref().expect("capabilities");
        let drop: BTreeSet<String> = caps.drop.clone().unwrap_or_default().into_iter().collect();
        let added: BTreeSet<String> = caps.add.clone().unwrap_or_default().into_iter().collect();
        assert_eq!(drop, set(&["ALL"]), "{name} drops ALL");
        assert_eq!(added, add, "{name}'s added capabilities");
        assert_ne!(sc.privileged, Some(true), "{name} is not privileged");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(
            sc.run_as_user,
            Some(0),
            "{name} runs as root (with only those capabilities)"
        );
        assert!(
            sc.se_linux_options.is_none() && sc.proc_mount.is_none(),
            "{name}"
        );
    }
}

#[test]
fn node_pod_shares_the_host_pid_namespace_only() {
    let pod = node_pod(&manifests());
    assert_eq!(
        pod.host_pid,
        Some(true),
        "the agent scans /proc for running pods"
    );
    assert_ne!(
        pod.host_network,
        Some(true),
        "the data plane stays off the host network"
    );
    assert_ne!(pod.host_ipc, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("ztunnel"));
    let sysctls = pod
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.as_ref());
    assert!(sysctls.is_none(), "no sysctls");
}

/// (container, mount path).
type Mount = (&'static str, &'static str);

/// (host path, hostPath type, [(container, mount path)]): every host path the DaemonSet
/// uses, and exactly the containers that mount it.
const HOST_PATHS: &[(&str, &str, &[Mount])] = &[
    (
        "/sys/fs/bpf",
        "DirectoryOrCreate",
        &[(AGENT, "/sys/fs/bpf"), (ZTUNNEL, "/sys/fs/bpf")],
    ),
    (
        "/sys/fs/cgroup",
        "Directory",
        &[(AGENT, "/host/sys/fs/cgroup")],
    ),
    (
        "/var/run/netns",
        "DirectoryOrCreate",
        &[(AGENT, "/var/run/netns")],
    ),
    (
        "/opt/cni/bin",
        "DirectoryOrCreate",
        &[(AGENT, "/host/opt/cni/bin")],
    ),
    (
        "/etc/cni/net.d",
        "DirectoryOrCreate",
        &[(AGENT, "/host/etc/cni/net.d")],
    ),
    // Same path inside: the CNI configuration the agent writes names its socket and files
    // for the plugin, which runs on the host.
    (
        "/var/run/amesh",
        "DirectoryOrCreate",
        &[(AGENT, "/var/run/amesh")],
    ),
    // What outlives a reboot: the plugin's fallback file while the agent is down.
    (
        "/var/lib/amesh",
        "DirectoryOrCreate",
        &[(AGENT, "/var/lib/amesh")],
    ),
];

#[test]
fn host_paths_are_mounted_only_where_needed() {
    let pod = node_pod(&manifests());
    let host_volumes: BTreeMap<&str, (&str, &str)> = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            let hp = v.host_path.as_ref()?;
            Some((
                hp.path.as_str(),
                (v.name.as_str(), hp.type_.as_deref().unwrap_or("")),
            ))
        })
        .collect();
    let expected: BTreeSet<&str> = HOST_PATHS.iter().map(|h| h.0).collect();
    assert_eq!(
        host_volumes.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "host paths"
    );
    for (path, kind, users) in HOST_PATHS {
        let (volume, actual_kind) = host_volumes[path];
        assert_eq!(actual_kind, *kind, "hostPath {path} type");
        let mounted: BTreeSet<(&str, &str)> = pod
            .containers
            .iter()
            .flat_map(|c| mounts(c).iter().map(move |m| (c, m)))
            .filter(|(_, m)| m.name == volume)
            .map(|(c, m)| (c.name.as_str(), m.mount_path.as_str()))
            .collect();
        let users: BTreeSet<(&str, &str)> = users.iter().copied().collect();
        assert_eq!(mounted, users, "who mounts {path}, and where");
    }
    for c in &pod.containers {
        for m in mounts(c) {
            assert_ne!(
                m.mount_propagation.as_deref(),
                Some("Bidirectional"),
                "{}: Bidirectional propagation needs a privileged container",
                c.name
            );
        }
    }
    let agent = container(&pod, AGENT);
    let netns = mount_of(agent, "/var/run/netns").expect("netns mount");
    assert_eq!(netns.mount_propagation.as_deref(), Some("HostToContainer"));
    assert_eq!(
        mount_of(agent, "/host/sys/fs/cgroup").and_then(|m| m.read_only),
        Some(true)
    );
    // The ZDS socket is shared between the two containers of the pod, not with the host.
    let zds = volume(&pod, "ztunnel-run");
    assert!(
        zds.empty_dir.is_some() && zds.host_path.is_none(),
        "{zds:?}"
    );
}

#[test]
fn every_path_in_the_args_is_on_the_right_mount() {
    let pod = node_pod(&manifests());
    let (agent, ztunnel) = (container(&pod, AGENT), container(&pod, ZTUNNEL));
    let host = |c: &Container, path: &str| {
        let v = volume_at(&pod, c, path);
        v.host_path
            .as_ref()
            .map(|h| h.path.clone())
            .unwrap_or_default()
    };
    assert_eq!(host(agent, flag(agent, "--cni-bin-dir")), "/opt/cni/bin");
    assert_eq!(host(agent, flag(agent, "--cni-conf-dir")), "/etc/cni/net.d");
    assert_eq!(host(agent, flag(agent, "--cni-socket")), "/var/run/amesh");
    assert_eq!(host(agent, flag(agent, "--state-dir")), "/var/run/amesh");
    assert_eq!(
        host(agent, flag(agent, "--persistent-dir")),
        "/var/lib/amesh"
    );
    // The agent's own namespace is never enrolled: its pod must start without it.
    let excluded: Vec<&str> = flag(agent, "--excluded-namespaces").split(',').collect();
    assert!(excluded.contains(&NAMESPACE), "{excluded:?}");
    assert_eq!(host(agent, flag(agent, "--pin-root")), "/sys/fs/bpf");
    assert_eq!(host(agent, flag(agent, "--cgroup")), "/sys/fs/cgroup");
    assert_eq!(
        host(ztunnel, flag(ztunnel, "--capture-pins")),
        "/sys/fs/bpf"
    );
    assert_eq!(flag(agent, "--pin-root"), flag(ztunnel, "--capture-pins"));
    // Both ends of ZDS name one socket on the volume both mount.
    assert_eq!(flag(agent, "--zds-socket"), "/var/run/ztunnel/ztunnel.sock");
    assert_eq!(flag(ztunnel, "--zds-socket"), flag(agent, "--zds-socket"));
    let zds = flag(agent, "--zds-socket");
    assert_eq!(volume_at(&pod, agent, zds).name, "ztunnel-run");
    assert_eq!(volume_at(&pod, ztunnel, zds).name, "ztunnel-run");
}

#[test]
fn tokens_reach_only_the_containers_that_use_them() {
    let objects = manifests();
    let pod = node_pod(&objects);
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "no pod-wide API token"
    );
    let sas = service_accounts(&objects);
    assert_eq!(sas["ztunnel"].automount_service_account_token, Some(false));
    let (agent, ztunnel) = (container(&pod, AGENT), container(&pod, ZTUNNEL));

    // ztunnel: a token for the CA only (audience istio-ca), and the mesh root.
    let token_file = flag(ztunnel, "--token-file");
    assert_eq!(token_file, "/var/run/secrets/tokens/istio-token");
    let projected = volume_at(&pod, ztunnel, token_file)
        .projected
        .as_ref()
        .expect("projected");
    let sources = projected.sources.as_deref().unwrap_or_default();
    assert_eq!(sources.len(), 1, "{sources:?}");
    let token = sources[0]
        .service_account_token
        .as_ref()
        .expect("serviceAccountToken");
    assert_eq!(token.audience.as_deref(), Some("istio-ca"));
    assert_eq!(token.path, "istio-token");
    let root = flag(ztunnel, "--ca-root-file");
    assert_eq!(root, "/var/run/secrets/istio/root-cert.pem");
    let cm = volume_at(&pod, ztunnel, root)
        .config_map
        .as_ref()
        .expect("configMap");
    assert_eq!(cm.name, "istio-ca-root-cert");
    assert!(
        mount_of(
            ztunnel,
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        )
        .is_none(),
        "ztunnel gets no API token"
    );

    // The agent: an API token (default audience) and nothing for the CA.
    let api = volume_at(
        &pod,
        agent,
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    );
    let api_sources = api
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_deref())
        .expect("projected");
    let api_token = api_sources
        .iter()
        .find_map(|s| s.service_account_token.as_ref())
        .expect("an API token");
    assert_eq!(api_token.audience, None, "the API server's own audience");
    assert!(
        mount_of(agent, token_file).is_none(),
        "the agent gets no CA token"
    );
}

#[test]
fn probes_ports_and_metrics() {
    let pod = node_pod(&manifests());
    let (agent, ztunnel) = (container(&pod, AGENT), container(&pod, ZTUNNEL));
    let http = |c: &Container| {
        let probe = c.readiness_probe.as_ref().expect("readinessProbe");
        let get = probe.http_get.as_ref().expect("httpGet");
        (get.path.clone().unwrap_or_default(), get.port.clone())
    };
    assert_eq!(http(agent), ("/readyz".into(), IntOrString::Int(8000)));
    assert_eq!(flag(agent, "--readiness"), "[::]:8000");
    assert_eq!(
        http(ztunnel),
        ("/healthz/ready".into(), IntOrString::Int(15021))
    );
    assert_eq!(flag(ztunnel, "--readiness"), "[::]:15021");
    let ports: BTreeSet<i32> = ztunnel
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [15008, 15020, 15021].into());
    assert_eq!(flag(ztunnel, "--metrics"), "[::]:15020");
    assert!(
        agent.lifecycle.is_none() && ztunnel.lifecycle.is_none(),
        "no preStop hooks"
    );
}

#[test]
fn ztunnel_is_pointed_at_istiod() {
    let pod = node_pod(&manifests());
    let ztunnel = container(&pod, ZTUNNEL);
    assert_eq!(
        flag(ztunnel, "--xds-address"),
        "istiod.istio-system.svc:15012"
    );
    assert_eq!(
        flag(ztunnel, "--ca-address"),
        "istiod.istio-system.svc:15012"
    );
    assert_eq!(
        flag(ztunnel, "--control-plane-dns-name"),
        "istiod.istio-system.svc"
    );
    assert_eq!(flag(ztunnel, "--cluster-id"), "Kubernetes");
    assert_eq!(flag(ztunnel, "--node"), "$(NODE_NAME)");
    assert_eq!(env_field(ztunnel, "INSTANCE_IP"), "status.podIP");
    assert_eq!(env_field(ztunnel, "POD_NAME"), "metadata.name");
    assert_eq!(env_field(ztunnel, "POD_NAMESPACE"), "metadata.namespace");
    assert_eq!(env_field(ztunnel, "NODE_NAME"), "spec.nodeName");
    let agent = container(&pod, AGENT);
    assert_eq!(flag(agent, "--node-name"), "$(NODE_NAME)");
    assert_eq!(env_field(agent, "NODE_NAME"), "spec.nodeName");
    assert!(agent.args.iter().flatten().any(|a| a == "--kubernetes"));
}

#[test]
fn node_pods_schedule_everywhere_and_roll_one_at_a_time() {
    let objects = manifests();
    let ds = daemonsets(&objects)["amesh-node"];
    let spec = ds.spec.as_ref().expect("spec");
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    let tolerates_all =
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        });
    assert!(
        tolerates_all,
        "tolerates every taint: {:?}",
        pod.tolerations
    );

    let meta = spec.template.metadata.as_ref().expect("pod metadata");
    let labels = meta.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("sidecar.istio.io/inject").map(String::as_str),
        Some("false")
    );
    assert_eq!(
        labels.get("istio.io/dataplane-mode").map(String::as_str),
        Some("none")
    );
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the selector matches the pods ({k})"
        );
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let annotation = |k: &str| annotations.get(k).map(String::as_str);
    assert_eq!(annotation("prometheus.io/scrape"), Some("true"));
    assert_eq!(annotation("prometheus.io/port"), Some("15020"));
    // ztunnel (amesh's) serves its metrics at /metrics; Istio's serves both paths.
    assert_eq!(annotation("prometheus.io/path"), Some("/metrics"));
}
