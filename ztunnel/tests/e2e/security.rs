//! Identities are checked on both ends, and the HBONE port refuses what is not a valid,
//! authenticated CONNECT for the pod it reached, without harming other connections.

use crate::support::*;
use amesh_identity::{Identity, LocalCa, tls};
use std::time::Duration;

#[test]
fn a_server_with_the_wrong_identity_is_refused() {
    let impostor = PodSpec {
        zds_service_account: Some("impostor"),
        ..pod("c", "ns-c", "node2")
    };
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1"), impostor]);
    let _apps = mesh.apps(&["c"]);
    let r = mesh
        .connect("a", &["--timeout-ms", "5000"], &[mesh.v4("c", APP_PORT)])
        .remove(0);
    assert!(
        r.outcome.is_err(),
        "c presents spiffe://.../sa/impostor, a expects sa/c: {r:?}"
    );
}

#[test]
fn a_service_may_name_more_identities_for_its_endpoints() {
    let impostor = PodSpec {
        zds_service_account: Some("impostor"),
        in_service: true,
        ..pod("c", "ns-c", "node2")
    };
    let mesh = Mesh::new(&[pod("a", "ns-a", "node1"), impostor]);
    let _apps = mesh.apps(&["c"]);
    let vip = || format!("{VIP}:80").parse().unwrap();
    let attempt = |to| {
        mesh.connect("a", &["--timeout-ms", "5000"], &[to])
            .remove(0)
            .outcome
    };
    let n1 = &mesh.node("node1").ztunnel;
    let tls_failures = || {
        metric(
            n1,
            "istio_tcp_connections_failed_total",
            &["reporter=\"source\"", "response_flags=\"TLS_FAILURE\""],
        )
    };
    assert!(
        attempt(vip()).is_err(),
        "c presents sa/impostor and the service names no other identity"
    );
    assert_eq!(tls_failures(), 1, "refused for its certificate");
    // Istio's subject_alt_names on the service: its endpoints may present that identity.
    let san = "spiffe://cluster.local/ns/ns-c/sa/impostor";
    mesh.try_update_config(&[], |t| {
        t.replace(
            "ports: {80: 8080}}",
            &format!("ports: {{80: 8080}}, subjectAltNames: [\"{san}\"]}}"),
        )
    })
    .unwrap();
    wait_for(
        "node1 holding the service's SAN",
        Duration::from_secs(10),
        || {
            let (_, dump) = n1.http("Admin", "GET", "/config_dump");
            if dump.contains(san) {
                Ok(())
            } else {
                Err(dump)
            }
        },
    );
    let served = attempt(vip()).map(|c| c.served_by().to_string());
    assert_eq!(
        served.as_deref(),
        Ok("c-app"),
        "through the service, sa/impostor is accepted"
    );
    assert!(
        attempt(mesh.v4("c", APP_PORT)).is_err(),
        "straight to c's address no service applies: its own identity is still required"
    );
    assert_eq!(tls_failures(), 2, "refused for its certificate again");
}

#[test]
fn another_trust_domain_is_refused_both_ways() {
    let mesh = Mesh::with_args(
        &[pod("a", "ns-a", "node1"), pod("c", "ns-c", "node2")],
        &[("node2", &["--trust-domain", "other.domain"])],
    );
    let _apps = mesh.apps(&["a", "c"]);
    for (from, to) in [("a", "c"), ("c", "a")] {
        let r = mesh
            .connect(from, &["--timeout-ms", "5000"], &[mesh.v4(to, APP_PORT)])
            .remove(0);
        assert!(
            r.outcome.is_err(),
            "{from} -> {to} across trust domains: {r:?}"
        );
    }
}

#[test]
fn garbage_on_15008_is_refused_and_other_connections_are_unharmed() {
    let mesh = Mesh::new(&[
        pod("a", "ns-a", "node1"),
        pod("b", "ns-b", "node1"),
        pod("c", "ns-c", "node2"),
        outside("d"),
    ]);
    let _apps = mesh.apps(&["b", "c"]);
    // A healthy long-lived connection a -> c across the whole test.
    let _echo = amesh_testbed::probe::serve_echo(
        &mesh.probe,
        mesh.pod("c"),
        &["[::]:9090".parse().unwrap()],
    )
    .unwrap();
    let mut pipe =
        amesh_testbed::probe::pipe(&mesh.probe, mesh.pod("a"), mesh.v4("c", 9090)).unwrap();

    let hbone = mesh.v4("c", 15008);
    let ca = LocalCa::load(&mesh.dir.join("ca")).unwrap();
    let client = ca
        .issue(
            &Identity::new("cluster.local", "outside", "d"),
            Duration::from_secs(600),
        )
        .unwrap();
    let bundle = tls::TrustBundle::from_pems(&[ca.root_pem().to_string()]).unwrap();
    let server_id = Identity::new("cluster.local", "ns-c", "c");
    let (c_app, b_app) = (mesh.v4("c", APP_PORT), mesh.v4("b", APP_PORT));
    let c_loop = mesh.v4("c", 15006);
    let statuses = in_pod(&mesh, "d", async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Not TLS at all: the connection is closed.
        let mut tcp = tokio::net::TcpStream::connect(hbone).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // The server answers with a TLS alert at most, then closes.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "plain text on 15008 must be dropped");
        assert!(
            !rest.starts_with(b"HTTP"),
            "no HTTP answer to plain text: {rest:?}"
        );

        // TLS without a client certificate: the handshake fails.
        let no_cert = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(hbone).await.unwrap();
        let mut tls_stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(no_cert))
            .connect(tls::server_name(hbone.ip()), tcp)
            .await
            .unwrap();
        // TLS 1.3 reports a missing client certificate after the client's handshake ends.
        let _ = tls_stream.write_all(b"x").await;
        let mut buf = Vec::new();
        let refused =
            tokio::time::timeout(Duration::from_secs(5), tls_stream.read_to_end(&mut buf)).await;
        assert!(
            matches!(refused, Ok(Err(_))),
            "TLS without a client certificate must be refused (an alert), got {refused:?} {buf:?}"
        );

        // A valid client: requests that are not CONNECT, or not for this pod, get 400.
        let config =
            tls::client_config(&client, &bundle, vec![server_id], tls::provider()).unwrap();
        let tcp = tokio::net::TcpStream::connect(hbone).await.unwrap();
        let tls_stream = tokio_rustls::TlsConnector::from(config)
            .connect(tls::server_name(hbone.ip()), tcp)
            .await
            .unwrap();
        let (send, conn) = h2::client::handshake(tls_stream).await.unwrap();
        tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let mut statuses = Vec::new();
        for req in [
            http::Request::get(format!("https://{c_app}/"))
                .body(())
                .unwrap(),
            http::Request::builder()
                .method("CONNECT")
                .uri("not-an-authority")
                .body(())
                .unwrap(),
            http::Request::builder()
                .method("CONNECT")
                .uri(b_app.to_string())
                .body(())
                .unwrap(),
            http::Request::builder()
                .method("CONNECT")
                .uri(c_loop.to_string())
                .body(())
                .unwrap(),
            http::Request::builder()
                .method("CONNECT")
                .uri(c_app.to_string())
                .body(())
                .unwrap(),
        ] {
            let (resp, _) = send.send_request(req, false).unwrap();
            statuses.push(resp.await.unwrap().status().as_u16());
        }
        statuses
    });
    assert_eq!(
        statuses,
        [400, 400, 400, 503, 200],
        "not CONNECT, bad authority, another pod's address, ztunnel's own port (503 as Istio), this pod"
    );
    // Plaintext aimed at ztunnel's own port is dropped instead of looping through ztunnel.
    let r = mesh
        .connect("d", &["--timeout-ms", "3000"], &[c_loop])
        .remove(0);
    assert!(r.outcome.is_err(), "{r:?}");
    // Nothing else was harmed.
    pipe.send_line("fine").unwrap();
    assert_eq!(
        pipe.next_line(Duration::from_secs(10)).as_deref(),
        Some("fine")
    );
    assert_eq!(
        mesh.connect_one("a", mesh.v4("c", APP_PORT)).served_by(),
        "c-app"
    );
}

/// Accepts any server certificate (the test targets the client-certificate check).
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Only ztunnel's in-pod ports loop; an app may listen on any other 150xx port (Istio's
/// sidecar-era 15020, say) and is reached through the mesh and from outside like any other.
#[test]
fn an_app_on_another_150xx_port_is_served() {
    let mesh = Mesh::new(&[
        pod("a", "ns-a", "node1"),
        pod("c", "ns-c", "node2"),
        outside("d"),
    ]);
    let _app = amesh_testbed::probe::serve(
        &mesh.probe,
        mesh.pod("c"),
        "c-15020",
        &["[::]:15020".parse().unwrap()],
    )
    .unwrap();
    let target = mesh.v4("c", 15020);
    assert_eq!(
        mesh.connect_one("a", target).served_by(),
        "c-15020",
        "over HBONE"
    );
    assert_eq!(
        mesh.connect_one("d", target).served_by(),
        "c-15020",
        "plaintext"
    );
    let left = mesh.close();
    assert!(left.is_empty(), "left behind: {left:?}");
}
