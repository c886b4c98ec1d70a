//! One certificate per identity in use on the node: requested when the first workload of an
//! identity arrives, renewed at half life, kept while the CA is unreachable (retried with
//! backoff), and forgotten when the last workload of that identity leaves.

use crate::{CaClient, Identity, WorkloadCert};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};
use tokio::{sync::watch, task::AbortHandle};
use tracing::{info, warn};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Default)]
struct Slot {
    cert: Option<Arc<WorkloadCert>>,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Entry {
    users: usize,
    slot: watch::Receiver<Slot>,
    task: AbortHandle,
}

/// Where an identity's certificate stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertState {
    /// Requested, nothing valid yet.
    Pending,
    /// A valid certificate is held.
    Ready,
    /// The held certificate has expired and renewal keeps failing.
    Expired,
}

/// What the admin config dump shows for one identity.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub identity: Identity,
    pub state: CertState,
    pub not_after: Option<SystemTime>,
    pub renew_at: Option<SystemTime>,
    pub last_error: Option<String>,
    /// The certificate held, if any (valid or not).
    pub cert: Option<Arc<WorkloadCert>>,
}

pub struct CertManager {
    ca: Arc<dyn CaClient>,
    validity: Duration,
    /// Where the fetch-and-renew tasks run (`None`: the runtime `acquire` is called on). A
    /// proxy keeps them on its control runtime, apart from the data path.
    runtime: Option<tokio::runtime::Handle>,
    entries: Mutex<HashMap<Identity, Entry>>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    pub fn new(ca: Arc<dyn CaClient>, validity: Duration) -> Arc<Self> {
        Arc::new(Self {
            ca,
            validity,
            runtime: None,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The same, with every fetch and renewal running on `runtime`.
    pub fn on_runtime(
        ca: Arc<dyn CaClient>,
        validity: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(Self {
            ca,
            validity,
            runtime: Some(runtime),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The CA's roots (PEM), the trust bundle peers are checked against.
    pub fn roots(&self) -> Vec<String> {
        self.ca.roots()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares one more user of `identity`; the first starts fetching its certificate.
    /// Without a runtime of its own, must be called inside a tokio runtime.
    pub fn acquire(&self, identity: &Identity) {
        let mut entries = self.entries();
        if let Some(e) = entries.get_mut(identity) {
            e.users += 1;
            return;
        }
        let (tx, rx) = watch::channel(Slot::default());
        let work = maintain(self.ca.clone(), identity.clone(), self.validity, tx);
        let task = match &self.runtime {
            Some(runtime) => runtime.spawn(work),
            None => tokio::spawn(work),
        }
        .abort_handle();
        entries.insert(
            identity.clone(),
            Entry {
                users: 1,
                slot: rx,
                task,
            },
        );
    }

    /// Declares one user fewer; the last one stops renewal and forgets the certificate.
    pub fn release(&self, identity: &Identity) {
        let mut entries = self.entries();
        let Some(e) = entries.get_mut(identity) else {
            return;
        };
        e.users -= 1;
        if e.users == 0 {
            e.task.abort();
            entries.remove(identity);
            info!(%identity, "certificate forgotten: no workload of this identity left");
        }
    }

    /// The identity's certificate if one is held and valid now.
    pub fn get(&self, identity: &Identity) -> Option<Arc<WorkloadCert>> {
        let entries = self.entries();
        let cert = entries.get(identity)?.slot.borrow().cert.clone()?;
        cert.is_valid_at(SystemTime::now()).then_some(cert)
    }

    /// Waits up to `timeout` for a valid certificate of an acquired identity.
    pub async fn wait_ready(
        &self,
        identity: &Identity,
        timeout: Duration,
    ) -> Option<Arc<WorkloadCert>> {
        let mut rx = self.entries().get(identity)?.slot.clone();
        let ready = rx.wait_for(|s| {
            s.cert
                .as_ref()
                .is_some_and(|c| c.is_valid_at(SystemTime::now()))
        });
        let slot = tokio::time::timeout(timeout, ready)
            .await
            .ok()?
            .ok()?
            .clone();
        slot.cert
    }

    /// Every identity held, for the config dump.
    pub fn dump(&self) -> Vec<CertInfo> {
        let now = SystemTime::now();
        let mut out: Vec<CertInfo> = self
            .entries()
            .iter()
            .map(|(id, e)| {
                let slot = e.slot.borrow();
                let state = match &slot.cert {
                    None => CertState::Pending,
                    Some(c) if c.is_valid_at(now) => CertState::Ready,
                    Some(_) => CertState::Expired,
                };
                CertInfo {
                    identity: id.clone(),
                    state,
                    not_after: slot.cert.as_ref().map(|c| c.not_after),
                    renew_at: slot.cert.as_ref().map(|c| c.renew_at()),
                    last_error: slot.last_error.clone(),
                    cert: slot.cert.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

async fn fetch(
    ca: &dyn CaClient,
    identity: &Identity,
    validity: Duration,
) -> Result<WorkloadCert, String> {
    let (key, csr) = WorkloadCert::request(identity).map_err(|e| e.to_string())?;
    let chain = ca
        .sign(identity, &csr, validity)
        .await
        .map_err(|e| e.to_string())?;
    WorkloadCert::from_signed(identity, &key, &chain).map_err(|e| e.to_string())
}

/// Fetches, then renews at half life; on failure keeps what it has and retries with backoff.
async fn maintain(
    ca: Arc<dyn CaClient>,
    identity: Identity,
    validity: Duration,
    tx: watch::Sender<Slot>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        match fetch(&*ca, &identity, validity).await {
            Ok(cert) => {
                let renew_at = cert.renew_at();
                info!(%identity, not_after = ?cert.not_after, "certificate ready");
                tx.send_modify(|s| {
                    s.cert = Some(Arc::new(cert));
                    s.last_error = None;
                });
                retry = FIRST_RETRY;
                let wait = renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                warn!(%identity, %error, retry_in = ?retry, "certificate request failed; keeping the current one");
                tx.send_modify(|s| s.last_error = Some(error));
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CaError, LocalCa, ca::BoxFuture};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A CA that refuses its first `failures` requests.
    struct Flaky {
        inner: LocalCa,
        failures: usize,
        calls: AtomicUsize,
    }

    impl CaClient for Flaky {
        fn sign<'a>(
            &'a self,
            id: &'a Identity,
            csr: &'a str,
            v: Duration,
        ) -> BoxFuture<'a, Result<Vec<String>, CaError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n < self.failures {
                    return Err(CaError::Unavailable("down".into()));
                }
                self.inner.sign_csr(id, csr, v)
            })
        }

        fn roots(&self) -> Vec<String> {
            self.inner.roots()
        }
    }

    fn flaky(failures: usize) -> Arc<Flaky> {
        let inner = LocalCa::generate("cluster.local")
            .unwrap()
            .with_backdate(Duration::ZERO);
        Arc::new(Flaky {
            inner,
            failures,
            calls: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn retries_until_the_ca_answers_then_renews_at_half_life() {
        let ca = flaky(2);
        let m = CertManager::new(ca.clone(), Duration::from_secs(2));
        let id = Identity::new("cluster.local", "ns", "sa");
        assert!(m.get(&id).is_none());
        m.acquire(&id);
        let first = m
            .wait_ready(&id, Duration::from_secs(5))
            .await
            .expect("certificate after retries");
        assert_eq!(ca.calls.load(Ordering::SeqCst), 3);
        assert_eq!(m.dump()[0].state, CertState::Ready);
        // Half of a 2 s life: a new certificate arrives about a second later.
        let mut rx = m.entries().get(&id).unwrap().slot.clone();
        let renewed = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| {
                s.cert
                    .as_ref()
                    .is_some_and(|c| c.not_after > first.not_after)
            }),
        )
        .await
        .expect("renewed in time")
        .expect("channel open")
        .clone();
        assert!(renewed.cert.is_some());
    }

    #[tokio::test]
    async fn the_last_user_leaving_forgets_the_identity() {
        let m = CertManager::new(flaky(0), Duration::from_secs(3600));
        let id = Identity::new("cluster.local", "ns", "sa");
        m.acquire(&id);
        m.acquire(&id);
        assert!(m.wait_ready(&id, Duration::from_secs(5)).await.is_some());
        m.release(&id);
        assert!(m.get(&id).is_some(), "one user left");
        m.release(&id);
        assert!(m.get(&id).is_none());
        assert!(m.dump().is_empty());
    }

    #[tokio::test]
    async fn a_failing_ca_keeps_the_identity_pending_and_says_why() {
        let m = CertManager::new(flaky(usize::MAX), Duration::from_secs(3600));
        let id = Identity::new("cluster.local", "ns", "sa");
        m.acquire(&id);
        assert!(
            m.wait_ready(&id, Duration::from_millis(300))
                .await
                .is_none()
        );
        let info = &m.dump()[0];
        assert_eq!(info.state, CertState::Pending);
        assert!(
            info.last_error
                .as_deref()
                .is_some_and(|e| e.contains("down")),
            "{info:?}"
        );
    }
}
