//! What the control-plane tests share: the real ADS service on loopback behind real mutual
//! TLS.
#![allow(dead_code, reason = "each test binary uses part of it")]

use amesh_controlplane::{ads::Ads, auth::Authenticator, catalog::Catalog, serve};
use amesh_identity::{Identity, LocalCa, tls};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::watch;
use tokio_rustls::rustls::ClientConfig;

/// The control plane's ADS service on loopback with a certificate from a fresh mesh CA, and
/// a client TLS config from the same CA. The catalog's sender is returned: the service
/// ends its streams when it is dropped.
pub async fn control_plane(
    catalog: Arc<Catalog>,
) -> (SocketAddr, Arc<ClientConfig>, watch::Sender<Arc<Catalog>>) {
    let ca = LocalCa::generate("cluster.local").expect("CA");
    let hour = Duration::from_secs(3600);
    let istiod = Identity::new("cluster.local", "istio-system", "istiod");
    let server_cert = ca.issue(&istiod, hour).expect("server certificate");
    let ztunnel = Identity::new("cluster.local", "istio-system", "ztunnel");
    let client_cert = ca.issue(&ztunnel, hour).expect("client certificate");
    let bundle = tls::TrustBundle::from_pems(&[ca.root_pem().to_string()]).expect("bundle");
    let server_tls = tls::server_config(&server_cert, &bundle, tls::provider()).expect("tls");
    let client_tls =
        tls::client_config(&client_cert, &bundle, vec![istiod], tls::provider()).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let address = listener.local_addr().expect("address");
    let (catalog_tx, catalog_rx) = watch::channel(catalog);
    let ads = Ads::new(catalog_rx, Authenticator::new(None, "cluster.local")).into_server();
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
        ads,
        serve::incoming(listener, server_tls, serve::DEFAULT_MAX_HANDSHAKES),
    ));
    (address, client_tls, catalog_tx)
}
