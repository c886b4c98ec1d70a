//! The Kubernetes source: kube-rs reflectors on Namespaces, Pods, Services, EndpointSlices
//! (for services without a selector) and Istio's
//! `AuthorizationPolicy` / `PeerAuthentication` (security.istio.io/v1). Every change
//! re-translates the cached objects and publishes the catalog if it changed; the first catalog
//! is published only once every watch has listed, so subscribers never see half a cluster.
//! Watches that fail (API server away, 410 Gone after compaction) re-list with backoff while
//! the last catalog keeps being served.

use crate::{
    catalog::Catalog,
    translate::{self, Mesh, Rejected},
};
use amesh_kube::{driver::spawn_driver, source::Snapshot};
use k8s_openapi::api::{
    core::v1::{Event, Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

/// Coalesces bursts of changes (a rollout touches many pods at once) into one translation.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("waiting for the first list of {kind}: {reason}")]
    InitialList { kind: &'static str, reason: String },
    #[error("translating the cluster's first list failed (see the log)")]
    Translate,
}

/// How long the first list of the Gateway API's kinds may take before the control plane
/// serves without them.
const GATEWAY_API_WAIT: Duration = Duration::from_secs(10);

/// The reflector caches translation reads.
#[derive(Clone)]
struct Caches {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    authorization_policies: Store<DynamicObject>,
    request_authentications: Store<DynamicObject>,
    peer_authentications: Store<DynamicObject>,
    gateways: Store<DynamicObject>,
    gateway_classes: Store<DynamicObject>,
    http_routes: Store<DynamicObject>,
    grpc_routes: Store<DynamicObject>,
    tcp_routes: Store<DynamicObject>,
    virtual_services: Store<DynamicObject>,
    destination_rules: Store<DynamicObject>,
    service_entries: Store<DynamicObject>,
}

fn istio_security(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("security.istio.io", "v1", kind),
        plural,
    )
}

fn istio_networking(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", kind),
        plural,
    )
}

fn gateway_api(kind: &str, plural: &str) -> ApiResource {
    gateway_api_version("v1", kind, plural)
}

fn gateway_api_version(version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", version, kind),
        plural,
    )
}

/// Starts a reflector; every event pokes `changed`.
fn typed<K>(client: &Client, changed: &Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    spawn_driver(stream, changed.clone(), K::kind(&()).to_string());
    reader
}

fn dynamic(client: &Client, resource: ApiResource, changed: &Arc<Notify>) -> Store<DynamicObject> {
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let writer = reflector::store::Writer::new(resource.clone());
    let reader = writer.as_reader();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    spawn_driver(stream, changed.clone(), resource.kind.clone());
    reader
}

/// Converts cached Istio objects to their typed form; one that does not fit is reported and
/// skipped.
fn convert<T: DeserializeOwned>(
    objects: Vec<Arc<DynamicObject>>,
    kind: &'static str,
    rejected: &mut Vec<Rejected>,
) -> Vec<T> {
    let mut out = Vec::new();
    for o in objects {
        let parsed = serde_json::to_value(&*o).and_then(serde_json::from_value);
        match parsed {
            Ok(t) => out.push(t),
            Err(e) => rejected.push(Rejected {
                kind,
                namespace: o.metadata.namespace.clone().unwrap_or_default(),
                name: o.metadata.name.clone().unwrap_or_default(),
                reason: format!("does not parse: {e}"),
                partial: false,
            }),
        }
    }
    out
}

/// The cached objects, cloned out of their `Arc`s.
fn owned<K: Clone>(objects: Vec<Arc<K>>) -> Vec<K> {
    objects.into_iter().map(|o| (*o).clone()).collect()
}

impl Caches {
    /// The cached objects, and the Istio objects that do not parse.
    fn snapshot(&self) -> (Snapshot, Vec<Rejected>) {
        let mut rejected = Vec::new();
        let snapshot = Snapshot {
            namespaces: owned(self.namespaces.state()),
            pods: owned(self.pods.state()),
            services: owned(self.services.state()),
            endpoint_slices: owned(self.endpoint_slices.state()),
            authorization_policies: convert(
                self.authorization_policies.state(),
                "AuthorizationPolicy",
                &mut rejected,
            ),
            request_authentications: convert(
                self.request_authentications.state(),
                "RequestAuthentication",
                &mut rejected,
            ),
            peer_authentications: convert(
                self.peer_authentications.state(),
                "PeerAuthentication",
                &mut rejected,
            ),
            gateways: convert(self.gateways.state(), "Gateway", &mut rejected),
            gateway_classes: convert(self.gateway_classes.state(), "GatewayClass", &mut rejected),
            http_routes: convert(self.http_routes.state(), "HTTPRoute", &mut rejected),
            grpc_routes: convert(self.grpc_routes.state(), "GRPCRoute", &mut rejected),
            tcp_routes: convert(self.tcp_routes.state(), "TCPRoute", &mut rejected),
            virtual_services: convert(
                self.virtual_services.state(),
                "VirtualService",
                &mut rejected,
            ),
            destination_rules: convert(
                self.destination_rules.state(),
                "DestinationRule",
                &mut rejected,
            ),
            service_entries: convert(self.service_entries.state(), "ServiceEntry", &mut rejected),
        };
        (snapshot, rejected)
    }

    async fn wait_until_ready(&self) -> Result<(), KubeSourceError> {
        let fail = |kind| {
            move |e: reflector::store::WriterDropped| KubeSourceError::InitialList {
                kind,
                reason: e.to_string(),
            }
        };
        self.namespaces
            .wait_until_ready()
            .await
            .map_err(fail("Namespace"))?;
        self.pods.wait_until_ready().await.map_err(fail("Pod"))?;
        self.services
            .wait_until_ready()
            .await
            .map_err(fail("Service"))?;
        self.endpoint_slices
            .wait_until_ready()
            .await
            .map_err(fail("EndpointSlice"))?;
        self.authorization_policies
            .wait_until_ready()
            .await
            .map_err(fail("AuthorizationPolicy"))?;
        self.peer_authentications
            .wait_until_ready()
            .await
            .map_err(fail("PeerAuthentication"))?;
        self.request_authentications
            .wait_until_ready()
            .await
            .map_err(fail("RequestAuthentication"))?;
        // The Gateway API is optional for an L4-only mesh: a cluster without its CRDs never
        // lists Gateways, and must not keep the control plane from serving. Where it is
        // installed, the lists come in long before this bound, so no first push goes out
        // without the waypoints.
        let deadline = tokio::time::Instant::now() + GATEWAY_API_WAIT;
        for (store, kind) in [
            (&self.gateways, "Gateway"),
            (&self.gateway_classes, "GatewayClass"),
            (&self.http_routes, "HTTPRoute"),
            (&self.grpc_routes, "GRPCRoute"),
            (&self.tcp_routes, "TCPRoute"),
            (&self.virtual_services, "VirtualService"),
            (&self.destination_rules, "DestinationRule"),
            (&self.service_entries, "ServiceEntry"),
        ] {
            // One bound for all of them: a cluster without the CRDs waits it out once.
            match tokio::time::timeout_at(deadline, store.wait_until_ready()).await {
                Ok(r) => r.map_err(fail(kind))?,
                Err(_) => warn!(
                    kind,
                    "the Gateway API is not served (CRDs not installed?): no waypoints until it is"
                ),
            }
        }
        Ok(())
    }
}

/// A translation's outcome: the catalog, what was rejected, and the routes' status.
type Translated = (Catalog, Vec<Rejected>, Vec<crate::routes::RouteStatus>);

fn catalog_of(caches: &Caches, mesh: &Mesh) -> Translated {
    let (snapshot, mut rejected) = caches.snapshot();
    let mut resources = translate::translate(&snapshot, mesh);
    rejected.extend(resources.errors.iter().cloned());
    let statuses = std::mem::take(&mut resources.route_status);
    (Catalog::from_resources(&resources), rejected, statuses)
}

/// [`catalog_of`] on the blocking pool: a cluster's worth of objects is converted, translated
/// and encoded there, not on a worker the ADS streams and CA requests need. `None` if the
/// translation panicked (logged; the previous catalog stays published).
async fn catalog_blocking(caches: &Caches, mesh: &Mesh) -> Option<Translated> {
    let (caches, mesh) = (caches.clone(), mesh.clone());
    match tokio::task::spawn_blocking(move || catalog_of(&caches, &mesh)).await {
        Ok(done) => Some(done),
        Err(error) => {
            error!(%error, "translating the cluster failed; keeping the last catalog");
            None
        }
    }
}

/// Reports objects that cannot be translated: logged, and a Warning event on the object (as
/// `kubectl describe` shows it), once per object and reason while it stays rejected.
struct Reporter {
    client: Client,
    reported: HashSet<Rejected>,
}

impl Reporter {
    async fn report(&mut self, rejected: Vec<Rejected>) {
        let current: HashSet<Rejected> = rejected.into_iter().collect();
        for r in current.difference(&self.reported) {
            let (what, _) = r.what();
            warn!(kind = r.kind, namespace = %r.namespace, name = %r.name, reason = %r.reason, "{what}");
            let events: Api<Event> = Api::namespaced(self.client.clone(), &r.namespace);
            if let Err(e) = events.create(&PostParams::default(), &event(r)).await {
                warn!(error = %e, "could not record the event");
            }
        }
        self.reported = current;
    }
}

fn event(r: &Rejected) -> Event {
    use k8s_openapi::{
        api::core::v1::{EventSource, ObjectReference},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{nanos:x}", r.name)),
            namespace: Some(r.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("security.istio.io/v1".into()),
            kind: Some(r.kind.into()),
            name: Some(r.name.clone()),
            namespace: Some(r.namespace.clone()),
            ..Default::default()
        },
        type_: Some("Warning".into()),
        reason: Some(r.what().1.into()),
        message: Some(r.reason.clone()),
        source: Some(EventSource {
            component: Some("amesh-controlplane".into()),
            ..Default::default()
        }),
        count: Some(1),
        ..Default::default()
    }
}

/// The waypoint controller's pass, when it is on (`--waypoint-image`): it reads only the
/// Gateways and pods.
async fn control_waypoints(
    client: &Client,
    controller: Option<&mut crate::waypoint_controller::Controller>,
    caches: &Caches,
) {
    let Some(controller) = controller else { return };
    // Gateways that do not parse were reported by the catalog's pass already.
    let gateways = convert(caches.gateways.state(), "Gateway", &mut Vec::new());
    let pods = owned(caches.pods.state());
    controller.reconcile(client, &gateways, &pods).await;
}

/// Watches the cluster and publishes its catalog: returns once every watch has listed.
pub async fn publish_kube(
    client: Client,
    mesh: Mesh,
    waypoints: Option<crate::waypoint_controller::Settings>,
) -> Result<watch::Receiver<Arc<Catalog>>, KubeSourceError> {
    let changed = Arc::new(Notify::new());
    let caches = Caches {
        namespaces: typed(&client, &changed),
        pods: typed(&client, &changed),
        services: typed(&client, &changed),
        endpoint_slices: typed(&client, &changed),
        authorization_policies: dynamic(
            &client,
            istio_security("AuthorizationPolicy", "authorizationpolicies"),
            &changed,
        ),
        peer_authentications: dynamic(
            &client,
            istio_security("PeerAuthentication", "peerauthentications"),
            &changed,
        ),
        request_authentications: dynamic(
            &client,
            istio_security("RequestAuthentication", "requestauthentications"),
            &changed,
        ),
        gateways: dynamic(&client, gateway_api("Gateway", "gateways"), &changed),
        gateway_classes: dynamic(
            &client,
            gateway_api("GatewayClass", "gatewayclasses"),
            &changed,
        ),
        http_routes: dynamic(&client, gateway_api("HTTPRoute", "httproutes"), &changed),
        grpc_routes: dynamic(&client, gateway_api("GRPCRoute", "grpcroutes"), &changed),
        // TCPRoute is still served only at v1alpha2.
        tcp_routes: dynamic(
            &client,
            gateway_api_version("v1alpha2", "TCPRoute", "tcproutes"),
            &changed,
        ),
        virtual_services: dynamic(
            &client,
            istio_networking("VirtualService", "virtualservices"),
            &changed,
        ),
        destination_rules: dynamic(
            &client,
            istio_networking("DestinationRule", "destinationrules"),
            &changed,
        ),
        service_entries: dynamic(
            &client,
            istio_networking("ServiceEntry", "serviceentries"),
            &changed,
        ),
    };
    caches.wait_until_ready().await?;
    let mut reporter = Reporter {
        client: client.clone(),
        reported: HashSet::new(),
    };
    let (first, rejected, statuses) = catalog_blocking(&caches, &mesh)
        .await
        .ok_or(KubeSourceError::Translate)?;
    reporter.report(rejected).await;
    info!(pods = caches.pods.state().len(), "Kubernetes source synced");
    // As the waypoints' controller it also owns their routes' status.
    let mut route_status = waypoints
        .is_some()
        .then(|| crate::route_status::Writer::new(client.clone()));
    let mut waypoints = waypoints.map(crate::waypoint_controller::Controller::new);
    control_waypoints(&client, waypoints.as_mut(), &caches).await;
    if let Some(w) = route_status.as_mut() {
        w.write(&statuses).await;
    }
    let (tx, rx) = watch::channel(Arc::new(first));
    // JWKS are refreshed by translating again now and then (an unchanged result pushes
    // nothing).
    let tick = changed.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(crate::jwks::RETRY).await;
            tick.notify_one();
        }
    });
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            let Some((catalog, rejected, statuses)) = catalog_blocking(&caches, &mesh).await else {
                continue;
            };
            reporter.report(rejected).await;
            if crate::catalog::publish(&tx, catalog) {
                info!("cluster changed; pushing");
            }
            control_waypoints(&client, waypoints.as_mut(), &caches).await;
            if let Some(w) = route_status.as_mut() {
                w.write(&statuses).await;
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}
