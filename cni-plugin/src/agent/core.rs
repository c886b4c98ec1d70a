//! The agent's decisions and their effects: enrolling and releasing pods (capture programs,
//! ztunnel over ZDS, the saved state) for CNI calls and for changes in the cluster.

use crate::{
    agent::{
        cluster::ClusterView,
        mark::{Mark, Marker, REDIRECTION_ANNOTATION},
        netns_scan,
        state::{self, Record, State},
        zds::{ZdsError, ZdsPod, ZdsServer},
    },
    enrollment_file::EnrollmentFile,
    wire::{Command, PodRequest, Reply},
};
use amesh_ebpf_loader::{Capture, EnrollRequest};
use amesh_kube::enrollment::{DATAPLANE_MODE, Decision, decide};
use amesh_proto::zds::WorkloadInfo;
use amesh_sys::netns::Netns;
use k8s_openapi::api::core::v1::Pod;
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub excluded_namespaces: Vec<String>,
    pub state_file: PathBuf,
    pub enrollment_file: PathBuf,
    pub proc_root: PathBuf,
    /// Where pods' processes live, as `/proc/<pid>/cgroup` names it (`/` on a node).
    pub pod_cgroup: String,
    /// How long a CNI ADD waits for its pod to show up in the agent's view.
    pub pod_wait: Duration,
    /// The mesh-wide DNS capture setting.
    pub dns_capture: bool,
}

/// Istio's per-pod DNS capture switch: the annotation, when it says `true` or `false`,
/// else the mesh-wide setting.
pub const DNS_CAPTURE_ANNOTATION: &str = "ambient.istio.io/dns-capture";

fn dns_capture(pod: &Pod, default: bool) -> bool {
    match pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DNS_CAPTURE_ANNOTATION))
        .map(String::as_str)
    {
        Some("true") => true,
        Some("false") => false,
        _ => default,
    }
}

#[derive(Debug)]
struct Inner {
    capture: Capture,
    state: State,
}

/// The enrolment logic; clones share one state, and every change takes one lock so that
/// CNI calls and reconciliation never interleave.
#[derive(Debug, Clone)]
pub struct Core {
    config: Arc<CoreConfig>,
    inner: Arc<Mutex<Inner>>,
    zds: ZdsServer,
    view: watch::Receiver<ClusterView>,
    /// Whether marks go to the cluster (then reconciliation repairs what it shows).
    marks_in_cluster: bool,
    marks: mpsc::UnboundedSender<Mark>,
}

/// The uid ztunnel knows a pod by: Kubernetes' own, or a stable name when there is none.
fn pod_uid(pod: &Pod, fallback: &str) -> String {
    pod.metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| Some(fallback.to_string()).filter(|u| !u.is_empty()))
        .unwrap_or_else(|| {
            format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into())
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|i| i.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// Done, or being deleted: its IP may already belong to another pod, so it is never looked
/// up by address again.
fn finished(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// Namespaces that may hold pods of the mesh: labelled ambient, or holding a pod labelled
/// ambient itself (excluded ones never).
fn ambient_namespaces(view: &ClusterView, excluded: &[String]) -> Vec<String> {
    let labelled = |labels: Option<&std::collections::BTreeMap<String, String>>| {
        labels
            .and_then(|l| l.get(DATAPLANE_MODE))
            .is_some_and(|m| m == "ambient")
    };
    let mut ambient: Vec<String> = view
        .namespaces
        .iter()
        .filter(|(_, n)| labelled(n.metadata.labels.as_ref()))
        .map(|(name, _)| name.clone())
        .chain(
            view.pods
                .iter()
                .filter(|(_, p)| labelled(p.metadata.labels.as_ref()))
                .map(|((ns, _), _)| ns.clone()),
        )
        .filter(|n| !excluded.contains(n))
        .collect();
    ambient.sort();
    ambient.dedup();
    ambient
}

/// Where a pod is enrolled through.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    netns: &'a Path,
    ips: &'a [IpAddr],
    /// The sandbox's container id, when a CNI call enrolled it.
    container_id: Option<&'a str>,
    /// Its DNS goes to ztunnel's proxy.
    dns_capture: bool,
}

impl Core {
    /// Takes over the capture programs and the saved state: pods whose namespace is still
    /// there and still enrolled are registered for ztunnel's snapshot, the rest forgotten.
    pub fn new(
        config: CoreConfig,
        mut capture: Capture,
        zds: ZdsServer,
        view: watch::Receiver<ClusterView>,
        marker: Marker,
    ) -> Self {
        let mut saved = State::load(&config.state_file).unwrap_or_else(|e| {
            warn!(error = %e, "starting without the saved state");
            State::default()
        });
        if let Err(e) = capture.prune_vanished() {
            warn!(error = %e, "pruning pods whose namespace is gone");
        }
        saved.pods.retain(|key, r| {
            let still = Netns::open(&r.netns).ok().and_then(|ns| {
                let cookie = ns.cookie().ok()?;
                let enrolled = capture.maps().pod_of_netns(cookie).ok()??;
                (cookie == r.netns_cookie).then_some((ns, enrolled))
            });
            match still {
                Some((ns, _)) => {
                    let fd = ns.try_clone_fd().ok().map(Arc::new);
                    zds.register(&r.uid, zds_pod(key, r, fd));
                    true
                }
                None => {
                    info!(pod = %key, "forgetting a pod whose namespace is gone");
                    false
                }
            }
        });
        info!(pods = saved.pods.len(), "adopted the saved state");
        Self {
            config: Arc::new(config),
            inner: Arc::new(Mutex::new(Inner {
                capture,
                state: saved,
            })),
            zds,
            view,
            marks_in_cluster: marker.is_kube(),
            marks: marker.start(),
        }
    }

    /// Answers one CNI call.
    pub async fn handle(&self, req: PodRequest) -> Reply {
        let key = state::key(&req.pod_namespace, &req.pod_name);
        match req.command {
            Command::Del => {
                self.release_sandbox(&key, &req).await;
                Reply::Released
            }
            Command::Add => match self.decide_for_cni(&req).await {
                Err(message) => Reply::Failed { message },
                Ok((Decision::Skip(reason), _)) => Reply::NotInMesh {
                    reason: reason.into(),
                },
                Ok((Decision::Enroll, pod)) => {
                    let info = WorkloadInfo {
                        name: req.pod_name.clone(),
                        namespace: req.pod_namespace.clone(),
                        service_account: service_account(&pod),
                    };
                    let uid = pod_uid(&pod, &req.pod_uid);
                    if req.ips.is_empty() {
                        // Captured without addresses, nothing could reach the pod; and the
                        // kubelet has not published them yet at this point.
                        return Reply::Failed {
                            message: "the chain's prevResult names no IP address for the pod"
                                .into(),
                        };
                    }
                    let target = Target {
                        netns: Path::new(&req.netns),
                        ips: &req.ips,
                        container_id: Some(&req.container_id),
                        dns_capture: dns_capture(&pod, self.config.dns_capture),
                    };
                    match self.enroll(&key, &uid, info, target, true).await {
                        Ok(()) => Reply::Enrolled,
                        Err(message) => Reply::Failed { message },
                    }
                }
            },
            Command::Check => match self.decide_for_cni(&req).await {
                Err(message) => Reply::Failed { message },
                Ok((Decision::Skip(reason), _)) => Reply::NotInMesh {
                    reason: reason.into(),
                },
                Ok((Decision::Enroll, _)) => self.check(&key).await,
            },
        }
    }

    /// The decision for a pod the runtime is setting up; waits a little for the pod to reach
    /// the agent's view (the watch may lag the kubelet by a moment).
    async fn decide_for_cni(&self, req: &PodRequest) -> Result<(Decision, Pod), String> {
        let deadline = Instant::now() + self.config.pod_wait;
        let mut view = self.view.clone();
        loop {
            let found = {
                let v = view.borrow_and_update();
                // The object the runtime is setting up: a pod recreated under the same name
                // has a new UID, and the view may still hold the old one.
                let pod = v.pod(&req.pod_namespace, &req.pod_name).filter(|p| {
                    let uid = p.metadata.uid.as_deref().unwrap_or_default();
                    req.pod_uid.is_empty() || uid.is_empty() || uid == req.pod_uid
                });
                pod.cloned()
                    .zip(v.namespaces.get(&req.pod_namespace).cloned())
            };
            if let Some((pod, ns)) = found {
                return Ok((
                    decide(&pod, Some(&ns), &self.config.excluded_namespaces),
                    pod,
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, view.changed()).await.is_err() {
                break;
            }
        }
        // Without the pod, decide as the plugin does without the agent: only a namespace
        // known to hold no mesh pods lets it through.
        let v = view.borrow();
        let excluded = &self.config.excluded_namespaces;
        if v.namespaces.contains_key(&req.pod_namespace)
            && !ambient_namespaces(&v, excluded).contains(&req.pod_namespace)
        {
            return Ok((
                Decision::Skip("not in the agent's view; its namespace is not ambient"),
                Pod::default(),
            ));
        }
        Err(format!(
            "pod {}/{} (uid {}) is not in the node agent's view yet and its namespace may be ambient",
            req.pod_namespace, req.pod_name, req.pod_uid
        ))
    }

    /// Captures the pod's traffic and hands it to ztunnel. With `need_ack` (a CNI ADD) the
    /// pod is only enrolled once ztunnel acknowledged it, and everything is undone otherwise;
    /// without (reconciliation), an absent ztunnel gets it with its next snapshot (until then
    /// the pod's captured traffic is refused, never sent around the mesh).
    async fn enroll(
        &self,
        key: &str,
        uid: &str,
        info: WorkloadInfo,
        target: Target<'_>,
        need_ack: bool,
    ) -> Result<(), String> {
        let Target {
            netns,
            ips,
            container_id,
            dns_capture,
        } = target;
        // Opened and checked before the lock every CNI call needs, off the runtime: a path
        // that is not a namespace (a FIFO, say) must fail this call alone.
        let (ns, cookie) = open_netns(netns).await?;
        let fd = ns.try_clone_fd().map_err(|e| e.to_string())?;
        let mut inner = self.inner.lock().await;
        if let Some(old) = inner.state.pods.get(key).cloned() {
            if old.netns_cookie == cookie && old.uid == uid && old.redirection_enabled {
                // Already enrolled (a CNI ADD and a cluster change can both get here):
                // adding it again would make ztunnel restart the pod's proxies.
                return Ok(());
            }
            if old.netns_cookie != cookie || old.uid != uid {
                // A new sandbox for the same pod: the old namespace is gone or going.
                info!(pod = %key, "replacing the enrolment of an earlier sandbox or pod");
                if old.netns_cookie != cookie
                    && let Ok(Some(id)) = inner.capture.maps().pod_of_netns(old.netns_cookie)
                    && let Err(e) = inner.capture.unenroll(id)
                {
                    warn!(pod = %key, error = %e, "releasing the earlier sandbox");
                }
                if old.uid != uid {
                    let _ = self.zds.del(&old.uid).await;
                }
                inner.state.pods.remove(key);
            }
        }
        let enrolled = inner
            .capture
            .enroll(&EnrollRequest {
                netns,
                addresses: ips,
                excluded_outbound_ports: &[],
                excluded_inbound_ports: &[],
                bypass_inbound: false,
                dns_capture,
                listeners: None,
            })
            .map_err(|e| format!("capturing the pod's traffic: {e}"))?;
        let mut record = Record {
            uid: uid.to_string(),
            service_account: info.service_account.clone(),
            netns: netns.to_path_buf(),
            netns_cookie: cookie,
            ips: ips.to_vec(),
            container_id: container_id.map(str::to_string),
            redirection_enabled: false,
        };
        let pod = ZdsPod {
            info,
            netns: Some(Arc::new(fd)),
        };
        match self.zds.add(uid, pod).await {
            Ok(()) => record.redirection_enabled = true,
            // A running pod stays captured whatever ztunnel says: its traffic is refused
            // until ztunnel serves it (the next snapshot, or the periodic resync), never
            // sent around the mesh.
            Err(e) if !need_ack => {
                warn!(pod = %key, error = %e, "captured; ztunnel does not serve it yet")
            }
            Err(e) => {
                self.zds.forget(uid);
                if let Err(u) = inner.capture.unenroll(enrolled.pod_id) {
                    warn!(pod = %key, error = %u, "undoing the capture");
                }
                return Err(e.to_string());
            }
        }
        let acked = record.redirection_enabled;
        inner.state.pods.insert(key.to_string(), record);
        self.save(&inner.state);
        info!(pod = %key, %uid, pod_id = enrolled.pod_id, netns = %netns.display(), acked, "pod enrolled");
        if acked {
            self.send_mark(key, uid, true);
        }
        Ok(())
    }

    /// A CNI DEL: releases the pod only if the call is about the sandbox it was enrolled
    /// through. Runtimes repeat DELs for sandboxes long gone; such a DEL must not take a
    /// newer sandbox of the same pod out of the mesh.
    async fn release_sandbox(&self, key: &str, req: &PodRequest) {
        let del_cookie = match Path::new(&req.netns) {
            p if p.as_os_str().is_empty() => None,
            p => open_netns(p).await.ok().map(|(_, c)| c),
        };
        let record = self.inner.lock().await.state.pods.get(key).cloned();
        let ours = match &record {
            None => true,
            Some(r) if r.container_id.as_deref() == Some(req.container_id.as_str()) => true,
            Some(r) => match del_cookie {
                Some(c) => c == r.netns_cookie,
                // The DEL's namespace is gone: it is ours only if the enrolled one is too.
                None => open_netns(&r.netns)
                    .await
                    .ok()
                    .is_none_or(|(_, c)| c != r.netns_cookie),
            },
        };
        if ours {
            self.release(key, del_cookie).await;
        } else {
            info!(pod = %key, container = %req.container_id, "DEL for an earlier sandbox; the current one stays enrolled");
            let mut inner = self.inner.lock().await;
            if let Some(c) = del_cookie
                && let Ok(Some(id)) = inner.capture.maps().pod_of_netns(c)
                && let Err(e) = inner.capture.unenroll(id)
            {
                warn!(pod = %key, error = %e, "releasing the earlier sandbox");
            }
        }
    }

    /// Takes a pod out of the mesh (idempotent): capture, ztunnel, state.
    async fn release(&self, key: &str, fallback_cookie: Option<u64>) {
        let mut inner = self.inner.lock().await;
        let record = inner.state.pods.remove(key);
        let cookie = match &record {
            Some(r) => Some(r.netns_cookie),
            None => fallback_cookie,
        };
        if let Some(cookie) = cookie
            && let Ok(Some(pod_id)) = inner.capture.maps().pod_of_netns(cookie)
            && let Err(e) = inner.capture.unenroll(pod_id)
        {
            warn!(pod = %key, error = %e, "releasing the capture");
        }
        if let Some(r) = &record {
            match self.zds.del(&r.uid).await {
                Ok(()) | Err(ZdsError::NotConnected) => {}
                Err(e) => warn!(pod = %key, error = %e, "telling ztunnel"),
            }
            self.save(&inner.state);
            info!(pod = %key, "pod released");
            if r.redirection_enabled {
                self.send_mark(key, &r.uid, false);
            }
        }
    }

    async fn check(&self, key: &str) -> Reply {
        let mut inner = self.inner.lock().await;
        let Some(r) = inner.state.pods.get(key).cloned() else {
            return Reply::Failed {
                message: format!("pod {key} is not enrolled"),
            };
        };
        match inner.capture.maps().pod_of_netns(r.netns_cookie) {
            Ok(Some(_)) if r.redirection_enabled => Reply::Enrolled,
            Ok(Some(_)) => Reply::Failed {
                message: format!("pod {key} is captured but ztunnel has not acknowledged it"),
            },
            _ => Reply::Failed {
                message: format!("pod {key} is not in the capture maps"),
            },
        }
    }

    /// Records that ztunnel acknowledged a pod and marks it enrolled.
    pub async fn acknowledged(&self, key: &str, uid: &str) {
        let mut inner = self.inner.lock().await;
        let news = match inner.state.pods.get_mut(key) {
            Some(r) if r.uid == uid && !r.redirection_enabled => {
                r.redirection_enabled = true;
                true
            }
            _ => false,
        };
        if news {
            self.save(&inner.state);
            self.send_mark(key, uid, true);
        }
    }

    /// Sets or clears the pod's redirection mark without holding up enrollment.
    fn send_mark(&self, key: &str, uid: &str, enabled: bool) {
        let (namespace, name) = key.split_once('/').unwrap_or_default();
        let _ = self.marks.send(Mark {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            enabled,
        });
    }

    /// Puts the cluster's mark back in line with the state when they differ (a patch that
    /// failed, a restart, someone editing the annotation).
    async fn repair_mark(&self, key: &str, pod: &Pod) {
        if !self.marks_in_cluster {
            return;
        }
        let shown = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REDIRECTION_ANNOTATION))
            .is_some_and(|v| v == "enabled");
        let enrolled = self
            .inner
            .lock()
            .await
            .state
            .pods
            .get(key)
            .is_some_and(|r| r.redirection_enabled);
        if shown != enrolled {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            self.send_mark(key, &uid, enrolled);
        }
    }

    /// Brings the enrolled set in line with the view: enrolls running pods that should be in
    /// the mesh (finding their namespace from their processes), releases the others.
    pub async fn reconcile(&self) {
        let view = self.view.borrow().clone();
        self.write_enrollment_file(&view);
        let enrolled: Vec<String> = self.inner.lock().await.state.pods.keys().cloned().collect();
        for ((ns, name), pod) in &view.pods {
            let wanted = !finished(pod)
                && decide(
                    pod,
                    view.namespaces.get(ns),
                    &self.config.excluded_namespaces,
                ) == Decision::Enroll;
            let key = state::key(ns, name);
            self.reconcile_pod(&key, pod, wanted).await;
            self.repair_mark(&key, pod).await;
        }
        for key in enrolled {
            let (ns, name) = key.split_once('/').unwrap_or_default();
            // The latest view: a pod may have arrived (and been enrolled by its CNI ADD)
            // since this pass began.
            let gone = self.view.borrow().pod(ns, name).is_none();
            if gone {
                self.release(&key, None).await;
            }
        }
    }

    /// One pod of the view: enrolled, served again, released, or left as it is.
    async fn reconcile_pod(&self, key: &str, pod: &Pod, wanted: bool) {
        let record = self.inner.lock().await.state.pods.get(key).cloned();
        let (namespace, name) = key.split_once('/').unwrap_or_default();
        let info = WorkloadInfo {
            name: name.into(),
            namespace: namespace.into(),
            service_account: service_account(pod),
        };
        let view_uid = pod.metadata.uid.clone().unwrap_or_default();
        match record {
            Some(r)
                if wanted
                    && (!r.redirection_enabled || (!view_uid.is_empty() && r.uid != view_uid)) =>
            {
                // Not served by ztunnel yet (it refused or was away), or the record is about
                // an earlier pod of that name: again, through the same namespace.
                let target = Target {
                    netns: &r.netns,
                    ips: &r.ips,
                    container_id: r.container_id.as_deref(),
                    dns_capture: dns_capture(pod, self.config.dns_capture),
                };
                let uid = pod_uid(pod, &r.uid);
                if let Err(e) = self.enroll(key, &uid, info, target, false).await {
                    warn!(pod = %key, error = %e, "serving an enrolled pod again");
                }
            }
            Some(_) if !wanted => self.release(key, None).await,
            Some(_) => {}
            None if wanted => {
                let ips = pod_ips(pod);
                let Some(netns) = self.find_running(&ips, &view_uid).await else {
                    debug!(pod = %key, ?ips, "should be enrolled, but no process of it runs here yet");
                    return;
                };
                let target = Target {
                    netns: &netns,
                    ips: &ips,
                    container_id: None,
                    dns_capture: dns_capture(pod, self.config.dns_capture),
                };
                if let Err(e) = self
                    .enroll(key, &pod_uid(pod, ""), info, target, false)
                    .await
                {
                    warn!(pod = %key, error = %e, "enrolling a running pod");
                }
            }
            None => {}
        }
    }

    /// The network namespace of a running pod, from its processes.
    async fn find_running(&self, ips: &[IpAddr], pod_uid: &str) -> Option<PathBuf> {
        let proc_root = self.config.proc_root.clone();
        let cgroup = self.config.pod_cgroup.clone();
        let (ips, uid) = (ips.to_vec(), pod_uid.to_string());
        tokio::task::spawn_blocking(move || netns_scan::find_by_ip(&proc_root, &ips, &uid, &cgroup))
            .await
            .ok()
            .flatten()
    }

    /// Enrolled pods whose namespace the agent no longer knows: after an adopt, capture may
    /// hold pods that no saved record names.
    pub async fn release_unknown_captures(&self) {
        let mut inner = self.inner.lock().await;
        let known: Vec<u64> = inner.state.pods.values().map(|r| r.netns_cookie).collect();
        let stale: Vec<u32> = match inner.capture.maps().enrolled() {
            Ok(all) => all
                .into_iter()
                .filter(|(cookie, _)| !known.contains(cookie))
                .map(|(_, id)| id)
                .collect(),
            Err(e) => return warn!(error = %e, "listing captured pods"),
        };
        for id in stale {
            info!(pod_id = id, "releasing a captured pod no record names");
            if let Err(e) = inner.capture.unenroll(id) {
                warn!(pod_id = id, error = %e, "releasing");
            }
        }
    }

    fn write_enrollment_file(&self, view: &ClusterView) {
        let ambient = ambient_namespaces(view, &self.config.excluded_namespaces);
        let file = EnrollmentFile {
            ambient_namespaces: ambient,
        };
        if EnrollmentFile::read(&self.config.enrollment_file)
            .ok()
            .as_ref()
            != Some(&file)
            && let Err(e) = file.write(&self.config.enrollment_file)
        {
            warn!(error = %e, path = %self.config.enrollment_file.display(), "writing the enrollment file");
        }
    }

    fn save(&self, state: &State) {
        if let Err(e) = state.save(&self.config.state_file) {
            warn!(error = %e, "saving the agent's state");
        }
    }

    /// Enrolled pods (for readiness and tests).
    pub async fn enrolled(&self) -> Vec<String> {
        self.inner.lock().await.state.pods.keys().cloned().collect()
    }
}

fn zds_pod(key: &str, r: &Record, netns: Option<Arc<std::os::fd::OwnedFd>>) -> ZdsPod {
    let (namespace, name) = key.split_once('/').unwrap_or_default();
    ZdsPod {
        info: WorkloadInfo {
            name: name.into(),
            namespace: namespace.into(),
            service_account: r.service_account.clone(),
        },
        netns,
    }
}

/// Opens a network namespace by path and reads its cookie on the blocking pool (the cookie
/// needs a thread inside the namespace), so no runtime worker waits on a path.
async fn open_netns(path: &Path) -> Result<(Netns, u64), String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let ns = Netns::open(&path).map_err(|e| e.to_string())?;
        let cookie = ns.cookie().map_err(|e| e.to_string())?;
        Ok((ns, cookie))
    })
    .await
    .map_err(|e| format!("opening the network namespace: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_capture_annotation_overrides_the_mesh_wide_setting() {
        let pod = |value: Option<&str>| {
            let mut p = Pod::default();
            if let Some(v) = value {
                p.metadata.annotations = Some(
                    [(DNS_CAPTURE_ANNOTATION.to_string(), v.to_string())]
                        .into_iter()
                        .collect(),
                );
            }
            p
        };
        assert!(dns_capture(&pod(None), true));
        assert!(!dns_capture(&pod(None), false));
        assert!(!dns_capture(&pod(Some("false")), true));
        assert!(dns_capture(&pod(Some("true")), false));
        // Anything else is not a decision: the mesh-wide setting holds.
        assert!(dns_capture(&pod(Some("False")), true));
        assert!(!dns_capture(&pod(Some("yes")), false));
    }
}
