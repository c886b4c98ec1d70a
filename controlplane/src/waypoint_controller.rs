//! In Kubernetes mode the control plane is the controller of waypoint Gateways, as istiod's
//! gateway deployment controller is for Istio's: for each Gateway of a waypoint class it
//! keeps the waypoint's ServiceAccount, Service (HBONE on 15008) and Deployment (the
//! `amesh-waypoint` image, its pods labelled `istio.io/dataplane-mode: none` so that they
//! are never captured themselves) in place, all owned by the Gateway so that they go with
//! it, and writes the Gateway's status: `Accepted`, and `Programmed` with
//! `status.addresses` = the Service's host name only once a waypoint pod is ready.
//!
//! Each object is merge-patched into place (created when missing) on every change of the
//! cluster; an API error is logged and retried on the next change, never fatal.

use crate::waypoints::{GATEWAY_NAME, HBONE_PORT, MANAGED, MANAGED_BY_MESH, WAYPOINT_CLASSES};
use gateway_api::gateways::Gateway;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tracing::{info, warn};

/// What the waypoints it deploys are given.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `amesh-waypoint` image.
    pub image: String,
    /// Where waypoints reach the control plane (`host:port`).
    pub xds_address: String,
    /// The host name its serving certificate carries (`istiod.istio-system.svc`).
    pub control_plane_dns_name: String,
    pub cluster_id: String,
    pub trust_domain: String,
    pub domain_suffix: String,
}

/// The objects a waypoint Gateway owns, as JSON (kind → object).
pub fn owned_objects(gw: &Gateway, s: &Settings) -> Option<Vec<Value>> {
    let name = gw.metadata.name.as_deref()?;
    let namespace = gw.metadata.namespace.as_deref().unwrap_or("default");
    let uid = gw.metadata.uid.as_deref()?;
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": name,
        "uid": uid,
        "controller": true,
    }]);
    let labels = json!({
        GATEWAY_NAME: name,
        MANAGED: MANAGED_BY_MESH,
    });
    let mut pod_labels = labels.clone();
    pod_labels["istio.io/dataplane-mode"] = json!("none");
    pod_labels["sidecar.istio.io/inject"] = json!("false");
    let meta = |kind_labels: &Value| {
        json!({
            "name": name,
            "namespace": namespace,
            "labels": kind_labels,
            "ownerReferences": owner,
        })
    };
    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(&labels),
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&labels),
        "spec": {
            "selector": { GATEWAY_NAME: name },
            "ports": [{ "name": "mesh", "port": HBONE_PORT, "protocol": "TCP", "appProtocol": "hbone" }],
        },
    });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(&labels),
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { GATEWAY_NAME: name } },
            "template": {
                "metadata": { "labels": pod_labels },
                "spec": {
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "amesh-waypoint",
                        "image": s.image,
                        "args": [
                            "--name", name,
                            "--namespace", namespace,
                            "--xds-address", s.xds_address,
                            "--control-plane-dns-name", s.control_plane_dns_name,
                            "--trust-domain", s.trust_domain,
                            "--domain-suffix", s.domain_suffix,
                            "--cluster-id", s.cluster_id,
                        ],
                        "env": [
                            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                            { "name": "INSTANCE_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                        ],
                        "ports": [
                            { "name": "hbone", "containerPort": HBONE_PORT },
                            { "name": "metrics", "containerPort": 15020 },
                            { "name": "readiness", "containerPort": 15021 },
                        ],
                        "readinessProbe": { "httpGet": { "path": "/healthz/ready", "port": 15021 } },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "volumeMounts": [
                            { "name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true },
                            { "name": "istio-ca-root-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true },
                        ],
                    }],
                    "volumes": [
                        { "name": "istio-token", "projected": { "sources": [{ "serviceAccountToken": {
                            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token",
                        } }] } },
                        { "name": "istio-ca-root-cert", "configMap": { "name": "istio-ca-root-cert" } },
                    ],
                },
            },
        },
    });
    Some(vec![service_account, service, deployment])
}

fn resource_of(object: &Value) -> Option<ApiResource> {
    let (group, version) = match object["apiVersion"].as_str()?.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), object["apiVersion"].as_str()?.to_string()),
    };
    let kind = object["kind"].as_str()?;
    let plural = format!("{}s", kind.to_ascii_lowercase());
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, &version, kind),
        &plural,
    ))
}

/// Merge-patches `object` into place, creating it when it does not exist.
async fn put(client: &Client, object: &Value) -> Result<(), kube::Error> {
    let (Some(resource), Some(ns), Some(name)) = (
        resource_of(object),
        object["metadata"]["namespace"].as_str(),
        object["metadata"]["name"].as_str(),
    ) else {
        return Ok(());
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(object))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let obj: DynamicObject =
                serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {
                    info!(kind = %resource.kind, namespace = ns, name, "created for the waypoint");
                    Ok(())
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The status the Gateway should have: (Programmed, addresses).
pub fn wanted_status(gw: &Gateway, pods: &[Pod], s: &Settings) -> Value {
    let name = gw.metadata.name.clone().unwrap_or_default();
    let namespace = gw
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let ready = crate::waypoints::has_ready_instance(pods, &namespace, &name);
    let generation = gw.metadata.generation.unwrap_or(0);
    let condition = |type_: &str, ok: bool, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": if ok { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
        })
    };
    let addresses = if ready {
        json!([{ "type": "Hostname", "value": format!("{name}.{namespace}.svc.{}", s.domain_suffix) }])
    } else {
        json!([])
    };
    json!({
        "conditions": [
            condition("Accepted", true, "Accepted", "Resource accepted"),
            if ready {
                condition("Programmed", true, "Programmed", "Resource programmed, assigned to service(s)")
            } else {
                condition("Programmed", false, "Pending", "waiting for a ready waypoint pod")
            },
        ],
        "addresses": addresses,
    })
}

/// Whether `have` already says what `want` says (transition times aside).
fn same_status(have: &Value, want: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v["conditions"].as_array_mut() {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    strip(have) == strip(want)
}

/// The controller: its settings, and what it last put for each owned object, so that a pass
/// after an unrelated change (a pod elsewhere) sends nothing.
#[derive(Debug)]
pub struct Controller {
    pub settings: Settings,
    applied: std::collections::HashMap<String, Value>,
}

impl Controller {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            applied: Default::default(),
        }
    }

    /// One pass over the cluster's waypoint Gateways.
    pub async fn reconcile(&mut self, client: &Client, gateways: &[Gateway], pods: &[Pod]) {
        reconcile(client, &self.settings, &mut self.applied, gateways, pods).await;
    }
}

/// One pass: each owned object put unless it is what was last put (a deleted one comes back
/// when its Gateway changes or the control plane restarts), then the status when it differs.
async fn reconcile(
    client: &Client,
    settings: &Settings,
    applied: &mut std::collections::HashMap<String, Value>,
    gateways: &[Gateway],
    pods: &[Pod],
) {
    let gateway_api = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
        "gateways",
    );
    tracing::debug!(
        gateways = gateways.len(),
        pods = pods.len(),
        "waypoint controller pass"
    );
    for gw in gateways
        .iter()
        .filter(|g| WAYPOINT_CLASSES.contains(&g.spec.gateway_class_name.as_str()))
    {
        let (Some(name), ns) = (
            gw.metadata.name.as_deref(),
            gw.metadata.namespace.as_deref().unwrap_or("default"),
        ) else {
            continue;
        };
        let Some(objects) = owned_objects(gw, settings) else {
            warn!(gateway = %format!("{ns}/{name}"), "the Gateway has no uid yet: its objects wait for one");
            continue;
        };
        for object in objects {
            let key = format!("{}/{ns}/{name}", object["kind"]);
            if applied.get(&key) == Some(&object) {
                continue;
            }
            match put(client, &object).await {
                Ok(()) => {
                    applied.insert(key, object);
                }
                Err(e) => {
                    warn!(gateway = %format!("{ns}/{name}"), kind = %object["kind"], error = %e, "could not put the waypoint's object (retried on the next change)");
                }
            }
        }
        let mut want = wanted_status(gw, pods, settings);
        let have = serde_json::to_value(&gw.status).unwrap_or(Value::Null);
        if same_status(&have, &want) {
            continue;
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        if let Some(cs) = want["conditions"].as_array_mut() {
            for c in cs {
                c["lastTransitionTime"] = json!(now);
            }
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &gateway_api);
        let patch = json!({ "status": want });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(gateway = %format!("{ns}/{name}"), programmed = %want["conditions"][1]["status"], "Gateway status written")
            }
            Err(e) => {
                warn!(gateway = %format!("{ns}/{name}"), error = %e, "could not write the Gateway's status (retried on the next change)")
            }
        }
    }
}
