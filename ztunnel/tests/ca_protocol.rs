//! Istio's CA protocol between ztunnel's client and the amesh control plane, over loopback:
//! what the CA signs and what it refuses (unknown identities, bad tokens, a CSR naming
//! another identity than the one asked for).

use amesh_identity::{CaClient, CaError, Identity, WorkloadCert, tls};
use amesh_ztunnel::{
    ca_client::IstioCaClient,
    control::{Connector, Credentials, Token},
};
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

const SOURCE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cart-0, namespace: shop}\nspec: {nodeName: node-1, serviceAccountName: cart, containers: [{name: c, image: c}]}\nstatus: {phase: Running, podIPs: [{ip: 10.200.0.2}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop}\nspec: {nodeName: node-1, serviceAccountName: web, containers: [{name: c, image: c}]}\nstatus: {phase: Running, podIPs: [{ip: 10.200.0.3}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: other-0, namespace: shop}\nspec: {nodeName: node-2, serviceAccountName: other, containers: [{name: c, image: c}]}\nstatus: {phase: Running, podIPs: [{ip: 10.200.0.4}]}\n";

/// A control plane on loopback with a node token, removed (process and files) on drop.
/// A file or directory removed when dropped, also when a test panics.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

impl std::ops::Deref for TempPath {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

struct ControlPlane {
    child: Child,
    dir: TempPath,
    address: std::net::SocketAddr,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlPlane {
    /// From a directory holding [`SOURCE`].
    fn start(name: &str) -> Self {
        Self::start_with(name, None, &[])
    }

    /// From the directory, or from the API at `kube_url`; `extra` arguments.
    fn start_with(name: &str, kube_url: Option<&str>, extra: &[String]) -> Self {
        let dir =
            TempPath(std::env::temp_dir().join(format!("amesh-ca-{}-{name}", std::process::id())));
        let _ = std::fs::remove_dir_all(&*dir);
        std::fs::create_dir_all(dir.join("source")).expect("temp dir");
        std::fs::write(dir.join("source/mesh.yaml"), SOURCE).expect("source");
        std::fs::write(dir.join("token"), "node-secret\n").expect("token");
        let log = dir.join("log");
        let child = Command::new(amesh_testbed::probe::sibling_binary("amesh-controlplane"))
            .args(match kube_url {
                Some(url) => ["--kube-url".to_string(), url.to_string()],
                None => [
                    "--source-dir".to_string(),
                    dir.join("source").display().to_string(),
                ],
            })
            .args(if extra.iter().any(|a| a == "--ca-secret") {
                Vec::new()
            } else {
                vec!["--ca-dir".to_string(), dir.join("ca").display().to_string()]
            })
            .args([
                "--node-token-file",
                &dir.join("token").display().to_string(),
            ])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start amesh-controlplane");
        let mut cp = Self {
            child,
            dir,
            address: "0.0.0.0:0".parse().expect("addr"),
        };
        cp.address =
            amesh_testbed::eventually("the control plane serving", Duration::from_secs(10), || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                amesh_testbed::mesh::serving_address(&text).ok_or(text)
            })
            .unwrap_or_else(|e| panic!("control plane did not start: {e}"));
        cp
    }

    /// A client trusting the control plane's directory root, with `token` if given.
    fn client(&self, token: Option<&str>) -> IstioCaClient {
        let root = std::fs::read_to_string(self.dir.join("ca/root-cert.pem")).expect("root");
        self.client_trusting(&root, token)
    }

    /// A client without a certificate of its own, trusting `root`.
    fn client_trusting(&self, root: &str, token: Option<&str>) -> IstioCaClient {
        let bundle = tls::TrustBundle::from_pems(&[root.to_string()]).expect("bundle");
        let expected = vec![Identity::new("cluster.local", "istio-system", "istiod")];
        let tls = tls::anonymous_client_config(&bundle, expected, tls::provider()).expect("tls");
        let connector = Connector {
            address: self.address.to_string(),
            tls,
            server_name: None,
        };
        ca_client(connector, token, root)
    }
}

fn ca_client(connector: Connector, token: Option<&str>, root: &str) -> IstioCaClient {
    let credentials = Credentials {
        token: token.map_or(Token::None, |t| Token::Value(t.to_string())),
        cluster_id: "Kubernetes".into(),
    };
    IstioCaClient::new(connector, credentials, vec![root.to_string()])
}

async fn ask(
    client: &IstioCaClient,
    asked: &Identity,
    csr_for: &Identity,
) -> Result<Vec<String>, CaError> {
    let (_key, csr) = WorkloadCert::request(csr_for).expect("csr");
    client.sign(asked, &csr, Duration::from_secs(3600)).await
}

fn refused_with(result: Result<Vec<String>, CaError>, code: &str) {
    match result {
        Err(CaError::Refused(reason)) => assert!(reason.starts_with(code), "{reason}"),
        other => panic!("expected a {code} refusal, got {other:?}"),
    }
}

// The client's channel lives on a runtime, so the test is async.
#[tokio::test]
async fn the_ca_signs_mesh_identities_for_node_agents_and_refuses_the_rest() {
    let cp = ControlPlane::start("signs");
    let cart = Identity::new("cluster.local", "shop", "cart");
    let web = Identity::new("cluster.local", "shop", "web");
    let node = cp.client(Some("node-secret"));

    let (key, csr) = WorkloadCert::request(&cart).expect("csr");
    let chain = node
        .sign(&cart, &csr, Duration::from_secs(3600))
        .await
        .expect("a pod's identity is signed for the node agent");
    let cert = WorkloadCert::from_signed(&cart, &key, &chain).expect("a chain for cart");
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .expect("ordered");
    assert!(
        lifetime <= Duration::from_secs(3600 + 120),
        "validity as asked: {lifetime:?}"
    );

    let stranger = Identity::new("cluster.local", "shop", "admin");
    refused_with(ask(&node, &stranger, &stranger).await, "PermissionDenied");
    let other_domain = Identity::new("evil.example", "shop", "cart");
    refused_with(
        ask(&node, &other_domain, &other_domain).await,
        "PermissionDenied",
    );
    refused_with(ask(&node, &web, &cart).await, "InvalidArgument");
    refused_with(
        ask(&cp.client(Some("wrong")), &cart, &cart).await,
        "Unauthenticated",
    );
    refused_with(ask(&cp.client(None), &cart, &cart).await, "Unauthenticated");
}

/// Kubernetes mode: tokens are reviewed by the API server (audience `istio-ca`, expiry), and
/// a node agent gets only identities of pods on its own node.
#[tokio::test]
async fn with_kubernetes_tokens_node_agents_get_only_their_nodes_identities() {
    use amesh_testbed::kube_api::{KubeApi, TokenInfo};
    let api = KubeApi::start().expect("API emulator");
    api.apply_yaml(SOURCE).expect("objects");
    let ztunnel = |node: &str, audiences: &[&str], expired: bool| TokenInfo {
        username: "system:serviceaccount:istio-system:ztunnel".into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        pod_name: Some(format!("ztunnel-{node}")),
        node_name: Some(node.into()),
        expired,
    };
    api.add_token("zt-node1", ztunnel("node-1", &["istio-ca"], false));
    api.add_token("zt-expired", ztunnel("node-1", &["istio-ca"], true));
    api.add_token(
        "zt-other-audience",
        ztunnel("node-1", &["kubernetes"], false),
    );
    api.add_token(
        "cart-token",
        TokenInfo {
            username: "system:serviceaccount:shop:cart".into(),
            audiences: vec!["istio-ca".into()],
            pod_name: Some("cart-0".into()),
            node_name: Some("node-1".into()),
            expired: false,
        },
    );
    let cp = ControlPlane::start_with("kube", Some(&api.url()), &[]);
    let cart = Identity::new("cluster.local", "shop", "cart");
    let web = Identity::new("cluster.local", "shop", "web");
    let other = Identity::new("cluster.local", "shop", "other");

    let node1 = cp.client(Some("zt-node1"));
    ask(&node1, &cart, &cart)
        .await
        .expect("a pod on the caller's node");
    refused_with(ask(&node1, &other, &other).await, "PermissionDenied");
    refused_with(
        ask(&cp.client(Some("zt-expired")), &cart, &cart).await,
        "Unauthenticated",
    );
    refused_with(
        ask(&cp.client(Some("zt-other-audience")), &cart, &cart).await,
        "Unauthenticated",
    );
    let workload = cp.client(Some("cart-token"));
    ask(&workload, &cart, &cart)
        .await
        .expect("its own identity");
    refused_with(ask(&workload, &web, &web).await, "PermissionDenied");
}

/// The node account the CA trusts is configurable (Istio's `CA_TRUSTED_NODE_ACCOUNTS`): with
/// another one, ztunnel's default service account may ask only for itself, and the
/// configured one gets its node's pods.
#[tokio::test]
async fn the_trusted_node_account_is_configurable() {
    use amesh_testbed::kube_api::{KubeApi, TokenInfo};
    let api = KubeApi::start().expect("API emulator");
    api.apply_yaml(SOURCE).expect("objects");
    let agent = |account: &str| TokenInfo {
        username: format!("system:serviceaccount:{account}"),
        audiences: vec!["istio-ca".into()],
        pod_name: Some("agent-node1".into()),
        node_name: Some("node-1".into()),
        expired: false,
    };
    api.add_token("default-account", agent("istio-system:ztunnel"));
    api.add_token("custom-account", agent("amesh-system:node-agent"));
    let extra = [
        "--trusted-node-account".to_string(),
        "amesh-system/node-agent".into(),
    ];
    let cp = ControlPlane::start_with("node-accounts", Some(&api.url()), &extra);
    let cart = Identity::new("cluster.local", "shop", "cart");
    ask(&cp.client(Some("custom-account")), &cart, &cart)
        .await
        .expect("the configured node account gets a pod of its node");
    refused_with(
        ask(&cp.client(Some("default-account")), &cart, &cart).await,
        "PermissionDenied",
    );
}

/// Root rotation: a workload whose certificate the previous root signed is still accepted
/// when the control plane is given that root as an extra one, and refused without it.
#[tokio::test]
async fn a_previous_root_is_trusted_only_when_configured() {
    let old_ca = amesh_identity::LocalCa::generate("cluster.local").expect("old CA");
    let old_root_file =
        TempPath(std::env::temp_dir().join(format!("amesh-old-root-{}.pem", std::process::id())));
    std::fs::write(&*old_root_file, old_ca.root_pem()).expect("old root");
    let cart = Identity::new("cluster.local", "shop", "cart");
    let old_cert = old_ca
        .issue(&cart, Duration::from_secs(3600))
        .expect("old cert");
    let renew_with_old_cert = |cp: &ControlPlane| {
        let root = std::fs::read_to_string(cp.dir.join("ca/root-cert.pem")).expect("root");
        let bundle = tls::TrustBundle::from_pems(std::slice::from_ref(&root)).expect("bundle");
        let expected = vec![Identity::new("cluster.local", "istio-system", "istiod")];
        let config =
            tls::client_config(&old_cert, &bundle, expected, tls::provider()).expect("tls");
        let connector = Connector {
            address: cp.address.to_string(),
            tls: config,
            server_name: None,
        };
        ca_client(connector, None, &root)
    };
    let extra = [
        "--extra-root-file".to_string(),
        old_root_file.display().to_string(),
    ];
    let rotating = ControlPlane::start_with("rotating", None, &extra);
    ask(&renew_with_old_cert(&rotating), &cart, &cart)
        .await
        .expect("a certificate from the previous root renews its identity");
    let strict = ControlPlane::start_with("strict", None, &[]);
    let refused = ask(&renew_with_old_cert(&strict), &cart, &cart).await;
    assert!(refused.is_err(), "an unknown root is refused: {refused:?}");
}

/// Istio's ztunnel checks istiod by host name (`istiod.istio-system.svc`), not by SPIFFE id:
/// the control plane's certificate carries that name, the client resolves a host name, and a
/// different expected name is refused.
#[tokio::test]
async fn the_control_plane_can_be_verified_by_host_name_as_istiod() {
    let cp = ControlPlane::start("dns");
    let root = std::fs::read_to_string(cp.dir.join("ca/root-cert.pem")).expect("root");
    let bundle = tls::TrustBundle::from_pems(std::slice::from_ref(&root)).expect("bundle");
    let config = tls::dns_client_config(&bundle, None, tls::provider()).expect("tls");
    let by_name = |name: &str| {
        let connector = Connector {
            address: format!("localhost:{}", cp.address.port()),
            tls: config.clone(),
            server_name: Some(
                tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_string())
                    .expect("name"),
            ),
        };
        ca_client(connector, Some("node-secret"), &root)
    };
    let cart = Identity::new("cluster.local", "shop", "cart");
    ask(&by_name("istiod.istio-system.svc"), &cart, &cart)
        .await
        .expect("istiod's host name is in the certificate");
    let wrong = ask(&by_name("istiod.other.svc"), &cart, &cart).await;
    assert!(wrong.is_err(), "another host name is refused: {wrong:?}");
}

/// In Kubernetes mode the root lives in a Secret (as istiod's `istio-ca-secret`): the first
/// control plane generates and stores it, the next one signs with the same root.
#[tokio::test]
async fn the_ca_root_is_kept_in_a_secret() {
    use amesh_testbed::kube_api::{KubeApi, TokenInfo};
    let api = KubeApi::start().expect("API emulator");
    api.apply_yaml(SOURCE).expect("objects");
    api.add_token(
        "cart-token",
        TokenInfo {
            username: "system:serviceaccount:shop:cart".into(),
            audiences: vec!["istio-ca".into()],
            pod_name: Some("cart-0".into()),
            node_name: Some("node-1".into()),
            expired: false,
        },
    );
    let extra = [
        "--ca-secret".to_string(),
        "istio-system/istio-ca-secret".to_string(),
    ];
    let secret_root = || {
        let secrets = api.objects("/api/v1/secrets");
        let data = secrets
            .iter()
            .find(|s| s["metadata"]["name"] == "istio-ca-secret")
            .map(|s| s["data"]["ca-cert.pem"].clone())
            .expect("the Secret was created");
        let b64 = data.as_str().expect("base64 string");
        String::from_utf8(decode_base64(b64)).expect("PEM")
    };
    let cart = Identity::new("cluster.local", "shop", "cart");
    let mut roots_seen = Vec::new();
    for run in ["first", "second"] {
        let cp = ControlPlane::start_with(run, Some(&api.url()), &extra);
        let root = secret_root();
        let client = cp.client_trusting(&root, Some("cart-token"));
        let chain = ask(&client, &cart, &cart)
            .await
            .expect("signed with the Secret's root");
        assert_eq!(
            chain.last(),
            Some(&root),
            "{run}: the chain ends in the Secret's root"
        );
        roots_seen.push(root);
    }
    assert_eq!(
        roots_seen[0], roots_seen[1],
        "the second control plane reused the root"
    );
}

/// Standard base64 (the API server's encoding of Secret data).
fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
