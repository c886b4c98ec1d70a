//! Which names ztunnel answers itself, from the mesh's state, with Istio ztunnel's rules: the
//! name as asked, its Kubernetes short forms (`web`, `web.shop`, `web.shop.svc`), the same
//! after removing one of the pod's search domains (`<ns>.svc.<domain>`, `svc.<domain>`,
//! `<domain>`), and wildcard hosts (`*.example.com`). Anything else is the upstream's.

use amesh_state::{Service, State};
use std::{net::IpAddr, sync::Arc};

/// A name ztunnel answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The service host the name resolved to.
    pub host: String,
    /// A search domain was removed to find it (and not through a wildcard): the answer is a
    /// CNAME from the name asked to `host`, then the addresses under `host`.
    pub cname: bool,
    /// Every address of the service (both families, the caller picks).
    pub addresses: Vec<IpAddr>,
}

/// The querying pod: its namespace, and the cluster's domain (`cluster.local`).
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub namespace: &'a str,
    pub domain: &'a str,
}

impl Client<'_> {
    /// The search domains a pod's resolv.conf lists, in order.
    fn search_domains(&self) -> [String; 3] {
        [
            format!("{}.svc.{}", self.namespace, self.domain),
            format!("svc.{}", self.domain),
            self.domain.to_string(),
        ]
    }

    /// The name and the Kubernetes forms it is short for, in Istio's order.
    fn expansions(&self, name: &str) -> Vec<String> {
        let labels: Vec<&str> = name.split('.').collect();
        let (ns, d) = (self.namespace, self.domain);
        let mut out = vec![name.to_string()];
        match labels.len() {
            1 => out.push(format!("{name}.{ns}.svc.{d}")),
            2 => {
                out.push(format!("{name}.svc.{d}"));
                out.push(format!("{name}.{ns}.svc.{d}"));
            }
            3 => {
                if labels[2] == "svc" {
                    out.push(format!("{name}.{d}"));
                }
                out.push(format!("{name}.svc.{d}"));
            }
            4 if labels[3] == "svc" => out.push(format!("{name}.{d}")),
            _ => {}
        }
        out
    }
}

/// Normalizes a query name: lower case, without the root's trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Resolves `name` (normalized) for `client`, or `None` when it is not the mesh's.
pub fn lookup(state: &State, client: Client<'_>, name: &str) -> Option<Answer> {
    if name.is_empty() {
        return None;
    }
    // The name as asked and its short forms, then each with a search domain removed.
    let mut candidates: Vec<(String, bool)> = client
        .expansions(name)
        .into_iter()
        .map(|n| (n, false))
        .collect();
    for domain in client.search_domains() {
        if let Some(stripped) = name.strip_suffix(&format!(".{domain}"))
            && !stripped.is_empty()
        {
            candidates.extend(client.expansions(stripped).into_iter().map(|n| (n, true)));
        }
    }
    for (candidate, stripped) in &candidates {
        if let Some(svc) = best(state, client, candidate) {
            return Some(answer(state, client, &svc, *stripped));
        }
    }
    // Wildcard hosts: `*.b.c` and `*.c` for `a.b.c`, for every candidate.
    for (candidate, _) in &candidates {
        let mut rest = candidate.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(svc) = best(state, client, &format!("*.{parent}")) {
                // A wildcard answers under the name asked, never with a CNAME.
                return Some(answer(state, client, &svc, false));
            }
            rest = parent;
        }
    }
    None
}

/// The service with host `host` this client should get: one in its own namespace first,
/// else the first by key (Istio's `find_best_match`, without the canonical preference).
/// A service without addresses outside the cluster's domain (a ServiceEntry with
/// `resolution: NONE`) is not answered: its name is the upstream's, as in Istio.
fn best(state: &State, client: Client<'_>, host: &str) -> Option<Arc<Service>> {
    let mut found: Option<Arc<Service>> = None;
    let in_cluster = |s: &Service| s.hostname.ends_with(&format!(".svc.{}", client.domain));
    for s in state
        .services()
        .filter(|s| s.hostname.eq_ignore_ascii_case(host))
        .filter(|s| !s.vips.is_empty() || in_cluster(s))
    {
        if s.namespace == client.namespace {
            return Some(s.clone());
        }
        found.get_or_insert_with(|| s.clone());
    }
    found
}

fn answer(state: &State, client: Client<'_>, svc: &Service, stripped: bool) -> Answer {
    let mut addresses = svc.vips.clone();
    // A headless Service of the cluster answers with its endpoints' addresses.
    if addresses.is_empty() && svc.hostname.ends_with(&format!(".svc.{}", client.domain)) {
        addresses = state
            .endpoints(&svc.key())
            .iter()
            .flat_map(|w| w.addresses.iter().copied())
            .collect();
    }
    Answer {
        host: svc.hostname.clone(),
        cname: stripped,
        addresses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ns: &str, host: &str, vips: &[&str]) -> Service {
        Service {
            name: name.into(),
            namespace: ns.into(),
            hostname: host.into(),
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    fn state() -> State {
        State::new(
            vec![],
            vec![
                service(
                    "web",
                    "shop",
                    "web.shop.svc.cluster.local",
                    &["10.96.0.30", "fd00::30"],
                ),
                service(
                    "web",
                    "other",
                    "web.other.svc.cluster.local",
                    &["10.96.0.31"],
                ),
                service("ext", "shop", "api.example.com", &["240.240.0.1"]),
                service("wild", "shop", "*.wild.example.com", &["240.240.0.2"]),
                service("dup-a", "a", "dup.example.com", &["240.240.0.3"]),
                service("dup-b", "b", "dup.example.com", &["240.240.0.4"]),
                service("none", "shop", "passthrough.example.com", &[]),
            ],
        )
    }

    const SHOP: Client<'static> = Client {
        namespace: "shop",
        domain: "cluster.local",
    };

    fn host_of(name: &str, client: Client<'_>) -> Option<(String, bool)> {
        lookup(&state(), client, &normalize(name)).map(|a| (a.host, a.cname))
    }

    #[test]
    fn names_resolve_as_istios_ztunnel_resolves_them() {
        let full = |cname| Some(("web.shop.svc.cluster.local".to_string(), cname));
        let other = |cname| Some(("web.other.svc.cluster.local".to_string(), cname));
        // As asked, and the short forms a pod's search path does not even need.
        assert_eq!(host_of("web.shop.svc.cluster.local.", SHOP), full(false));
        assert_eq!(host_of("WEB.Shop.svc.cluster.local", SHOP), full(false));
        assert_eq!(host_of("web", SHOP), full(false));
        assert_eq!(host_of("web.shop", SHOP), full(false));
        assert_eq!(host_of("web.other", SHOP), other(false));
        assert_eq!(host_of("web.shop.svc", SHOP), full(false));
        // The forms a resolver makes by appending a search domain: a CNAME to the host.
        assert_eq!(host_of("web.shop.svc.cluster.local", SHOP), full(false));
        assert_eq!(
            host_of("web.shop.svc.cluster.local.shop.svc.cluster.local", SHOP),
            full(true)
        );
        assert_eq!(host_of("web.other.svc.cluster.local", SHOP), other(false));
        assert_eq!(
            host_of("web.other.shop.svc.cluster.local", SHOP),
            other(true)
        );
        // Only the client's own search domains are removed.
        let other_client = Client {
            namespace: "other",
            ..SHOP
        };
        assert_eq!(host_of("web", other_client), other(false));
        assert_eq!(
            host_of(
                "web.shop.svc.cluster.local.shop.svc.cluster.local",
                other_client
            ),
            None
        );
        // External hosts, exact and wildcard (a wildcard answers without a CNAME).
        assert_eq!(
            host_of("api.example.com", SHOP),
            Some(("api.example.com".into(), false))
        );
        assert_eq!(
            host_of("api.example.com.shop.svc.cluster.local", SHOP),
            Some(("api.example.com".into(), true))
        );
        assert_eq!(
            host_of("a.b.wild.example.com", SHOP),
            Some(("*.wild.example.com".into(), false))
        );
        assert_eq!(host_of("wild.example.com", SHOP), None);
        // Not the mesh's: the upstream's.
        assert_eq!(host_of("nothing.shop.svc.cluster.local", SHOP), None);
        assert_eq!(host_of("debian.org", SHOP), None);
        // A ServiceEntry host without addresses (resolution NONE) is the upstream's.
        assert_eq!(host_of("passthrough.example.com", SHOP), None);
        assert_eq!(host_of("", SHOP), None);
        // Two namespaces with one host: the client's own first, else the first.
        let a = Client {
            namespace: "b",
            ..SHOP
        };
        assert_eq!(
            lookup(&state(), a, "dup.example.com").unwrap().addresses,
            vec!["240.240.0.4".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            lookup(&state(), SHOP, "dup.example.com").unwrap().addresses,
            vec!["240.240.0.3".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn every_address_of_the_service_is_given() {
        let a = lookup(&state(), SHOP, "web").unwrap();
        assert_eq!(
            a.addresses,
            vec![
                "10.96.0.30".parse::<IpAddr>().unwrap(),
                "fd00::30".parse().unwrap()
            ]
        );
    }
}
