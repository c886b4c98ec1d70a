//! The plugin's own Kubernetes API path (used while the agent is away), over real TLS: the
//! emulator behind a TLS front with a CA made for the run, the token read at each call.

use amesh_cni::cni::kube::{ApiError, KubeAccess, must_enroll};
use amesh_testbed::{kube_api::KubeApi, tls_front::TlsFront};
use std::{net::SocketAddr, time::Duration};

const OBJECTS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cart, namespace: shop, uid: u1}\nspec: {nodeName: node1, containers: [{name: app, image: app}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: legacy, namespace: plain, uid: u2}\nspec: {nodeName: node1, containers: [{name: app, image: app}]}\n";

/// Files of this test, removed however it ends.
struct Scratch(std::path::PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_plugin_reads_the_api_over_https_with_the_current_token() {
    let api = KubeApi::start().expect("emulator");
    api.apply_yaml(OBJECTS).expect("objects");
    let dir =
        Scratch(std::env::temp_dir().join(format!("amesh-api-client-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("dir");
    let backend: SocketAddr = api
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let front = TlsFront::start(backend, &dir.0.join("ca.pem")).expect("TLS front");
    let token = dir.0.join("token");
    std::fs::write(&token, "token-1\n").expect("token");
    let access = KubeAccess {
        server: front.url(),
        token_file: Some(token.clone()),
        ca_file: Some(dir.0.join("ca.pem")),
    };
    let t = Duration::from_secs(5);
    assert!(must_enroll(&access, "shop", "cart", &[], t).expect("over https"));
    assert!(!must_enroll(&access, "plain", "legacy", &[], t).expect("over https"));
    assert_eq!(
        front.authorizations().last().map(String::as_str),
        Some("Bearer token-1")
    );

    // The agent rotates the token: the next call presents the new one.
    std::fs::write(&token, "token-2\n").expect("token");
    assert!(must_enroll(&access, "shop", "cart", &[], t).expect("over https"));
    assert_eq!(
        front.authorizations().last().map(String::as_str),
        Some("Bearer token-2")
    );

    // Excluded namespaces stay out whatever the labels say.
    assert!(!must_enroll(&access, "shop", "cart", &["shop".into()], t).expect("over https"));

    // A server whose certificate the configured CA did not sign is refused, and says why.
    let other = TlsFront::start(backend, &dir.0.join("other-ca.pem")).expect("TLS front");
    let wrong = KubeAccess {
        server: other.url(),
        ..access.clone()
    };
    let e = must_enroll(&wrong, "shop", "cart", &[], t).expect_err("untrusted server");
    assert!(matches!(e, ApiError::Get { .. }), "{e}");
    let text = format!("{e:?}");
    assert!(
        text.contains("InvalidCertificate"),
        "the reason names the certificate: {text}"
    );
    assert!(other.authorizations().is_empty(), "no token was sent to it");

    // A pod the API does not know: the API cannot say (an error, never a guess).
    let e = must_enroll(&access, "shop", "ghost", &[], t).expect_err("no such pod");
    assert!(e.to_string().contains("Pod ghost"), "{e}");
}
