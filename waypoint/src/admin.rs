//! The waypoint's own endpoints: readiness on 15021 (`/healthz/ready`: configuration and
//! certificate in), Prometheus on 15020 (`/metrics`, `/stats/prometheus`), and the admin
//! port's `/config_dump` (who the waypoint is, what is bound to it).

use crate::{Me, bound, config::Args, metrics::Registered};
use amesh_identity::CertManager;
use amesh_serve::{Acceptor, http1::serve_http1};
use amesh_state::StateReader;
use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// Binds the three ports (failing now if one cannot be bound) and serves them.
pub async fn serve(
    args: &Args,
    state: StateReader,
    certs: Arc<CertManager>,
    me: Me,
    registered: Registered,
) -> anyhow::Result<()> {
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let readiness = bind(args.readiness).await?;
    let metrics = bind(args.metrics).await?;
    let admin = bind(args.admin).await?;
    for (endpoint, l) in [
        ("readiness", &readiness),
        ("metrics", &metrics),
        ("admin", &admin),
    ] {
        if let Ok(address) = l.local_addr() {
            tracing::info!(endpoint, %address, "listening");
        }
    }

    let ready = {
        let (state, certs, me) = (state.clone(), certs.clone(), me.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let ok = req.uri().path() == "/healthz/ready" && crate::ready(&state, &certs, &me);
            let resp = match (req.uri().path(), ok) {
                (_, true) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
                ("/healthz/ready", false) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: waiting for configuration or certificate\n".into(),
                ),
                _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
            };
            std::future::ready(Ok::<_, std::convert::Infallible>(resp))
        })
    };
    tokio::spawn(serve_http1(readiness, Acceptor::new("readiness"), ready));

    let registry = Arc::new(registered.registry);
    let prometheus = hyper::service::service_fn(move |req: Request<Incoming>| {
        let resp = match req.uri().path() {
            "/metrics" | "/stats/prometheus" => {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => reply(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    ),
                    Err(e) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        e.to_string(),
                    ),
                }
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        };
        std::future::ready(Ok::<_, std::convert::Infallible>(resp))
    });
    tokio::spawn(serve_http1(metrics, Acceptor::new("metrics"), prometheus));

    let dump = hyper::service::service_fn(move |req: Request<Incoming>| {
        let resp = match req.uri().path() {
            "/config_dump" => reply(
                StatusCode::OK,
                "application/json",
                config_dump(&state, &certs, &me).to_string(),
            ),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        };
        std::future::ready(Ok::<_, std::convert::Infallible>(resp))
    });
    tokio::spawn(serve_http1(admin, Acceptor::new("admin"), dump));
    Ok(())
}

/// Who the waypoint is and what is bound to it.
fn config_dump(state: &StateReader, certs: &CertManager, me: &Me) -> serde_json::Value {
    let s = state.snapshot();
    let services: Vec<String> = s
        .services()
        .filter(|svc| {
            svc.waypoint
                .as_ref()
                .is_some_and(|w| bound::is_me(&s, me, w))
        })
        .map(|svc| svc.key())
        .collect();
    let workloads: Vec<String> = s
        .workloads()
        .filter(|w| {
            w.waypoint
                .as_ref()
                .is_some_and(|wp| bound::is_me(&s, me, wp))
        })
        .map(|w| w.uid.clone())
        .collect();
    serde_json::json!({
        "identity": me.identity.to_string(),
        "gateway": format!("{}/{}", me.namespace, me.name),
        "hostname": me.hostname,
        "configured": state.is_loaded(),
        "certificate": certs.get(&me.identity).is_some(),
        "boundServices": services,
        "boundWorkloads": workloads,
    })
}
