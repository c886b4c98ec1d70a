//! Istio's `AuthorizationPolicy` and `PeerAuthentication` (security.istio.io/v1) turned into
//! what ztunnel enforces, the way istiod translates them for ambient:
//! - scope: the root namespace without a selector is mesh-wide, a namespace without a
//!   selector is namespace-wide, a selector targets workloads (the caller resolves which);
//!   policies with `targetRef(s)` are for waypoints and are not ztunnel's;
//! - a rule's `from` sources, `to` operations and each `when` condition become clauses (all
//!   must hold), each of them a list of alternatives;
//! - attributes ztunnel cannot see (hosts, methods, paths, request principals, remote IP
//!   blocks, and `when` keys other than `source.ip`, `source.namespace`, `source.principal`,
//!   `destination.ip`, `destination.port`) are handled as istiod does: an ALLOW rule that
//!   uses any is dropped whole (it allows nothing), a DENY rule keeps its L4 part (it denies
//!   more, never less). Both fail safe on any ztunnel, Istio's included, without a marker
//!   ztunnel would have to understand; the attributes found are reported
//!   ([`Translated::http_attributes`]);
//! - `AUDIT` and `CUSTOM` are refused: not supported at L4.

use crate::{
    Action, Authorization, Clause, IpNet, Match, MtlsMode, PeerAuthentication, PeerScope, Rule,
    Scope, ServiceAccountMatch, StringMatch,
    l7::{HttpMatch, Keyed, PathMatch},
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Why a resource cannot be enforced at L4 (reported as the object's status or in the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdError {
    #[error(
        "{namespace}/{name}: action {action} is not supported at L4 (ztunnel enforces ALLOW and DENY)"
    )]
    UnsupportedAction {
        namespace: String,
        name: String,
        action: String,
    },
    #[error("{namespace}/{name}: {field}: {reason}")]
    Invalid {
        namespace: String,
        name: String,
        field: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `kind: AuthorizationPolicy`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub target_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_json::Value>,
    #[serde(default)]
    pub action: Option<String>,
    /// CUSTOM's extension provider.
    #[serde(default)]
    pub provider: Option<ProviderRef>,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProviderRef {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyRule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct From {
    #[serde(default)]
    pub source: Source,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct To {
    #[serde(default)]
    pub operation: Operation,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// A translated policy and, for workload-scoped ones, the labels selecting its workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    pub policy: Authorization,
    pub selector: Option<BTreeMap<String, String>>,
    /// The HTTP attributes its rules use, which ztunnel cannot enforce (sorted): non-empty
    /// means the policy was accepted with a warning (see the module doc).
    pub http_attributes: Vec<String>,
}

impl Translated {
    /// The warning to report when [`Self::http_attributes`] is not empty.
    pub fn http_warning(&self) -> Option<String> {
        if self.http_attributes.is_empty() {
            return None;
        }
        let effect = match self.policy.action {
            Action::Allow | Action::Audit | Action::Custom => {
                "the ALLOW rules that use them are left out, so they allow nothing"
            }
            Action::Deny => {
                "the DENY rules are enforced without them, so they deny more than written"
            }
        };
        Some(format!(
            "ztunnel cannot enforce HTTP attributes ({}); a waypoint is needed for them. \
             Meanwhile {effect}",
            self.http_attributes.join(", ")
        ))
    }
}

struct Ctx<'a> {
    namespace: &'a str,
    name: &'a str,
    /// For a waypoint: HTTP attributes are kept (else noted and left out).
    l7: bool,
}

impl Ctx<'_> {
    fn invalid(&self, field: String, reason: String) -> CrdError {
        CrdError::Invalid {
            namespace: self.namespace.into(),
            name: self.name.into(),
            field,
            reason,
        }
    }

    fn nets(&self, v: &[String], field: &str) -> Result<Vec<IpNet>, CrdError> {
        v.iter()
            .enumerate()
            .map(|(i, s)| {
                IpNet::parse(s).ok_or_else(|| {
                    self.invalid(
                        format!("{field}[{i}]"),
                        format!("{s:?} is not an address or CIDR block"),
                    )
                })
            })
            .collect()
    }

    fn ports(&self, v: &[String], field: &str) -> Result<Vec<u16>, CrdError> {
        v.iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse().map_err(|_| {
                    self.invalid(format!("{field}[{i}]"), format!("{s:?} is not a port"))
                })
            })
            .collect()
    }

    fn accounts(&self, v: &[String], field: &str) -> Result<Vec<ServiceAccountMatch>, CrdError> {
        v.iter()
            .enumerate()
            .map(|(i, s)| match s.split_once('/') {
                Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() => Ok(ServiceAccountMatch {
                    namespace: ns.into(),
                    service_account: sa.into(),
                }),
                // A bare name is a service account of the policy's own namespace (Istio).
                None if !s.is_empty() => Ok(ServiceAccountMatch {
                    namespace: self.namespace.into(),
                    service_account: s.clone(),
                }),
                _ => Err(self.invalid(
                    format!("{field}[{i}]"),
                    format!("{s:?} is not <namespace>/<service account> or <service account>"),
                )),
            })
            .collect()
    }
}

/// Whom a resource applies to, Istio's rule for both kinds: a selector picks workloads;
/// without one, the root namespace means the mesh, any other its own namespace.
enum Reach {
    Selected,
    Mesh,
    Namespace,
}

fn labels(selector: &Option<Selector>) -> Option<BTreeMap<String, String>> {
    selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .filter(|l| !l.is_empty())
}

fn reach(
    selector: &Option<BTreeMap<String, String>>,
    namespace: &str,
    root_namespace: &str,
) -> Reach {
    match (selector, namespace == root_namespace) {
        (Some(_), _) => Reach::Selected,
        (None, true) => Reach::Mesh,
        (None, false) => Reach::Namespace,
    }
}

fn strings(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|s| StringMatch::parse(s)).collect()
}

/// Translates an `AuthorizationPolicy`. `Ok(None)`: it targets waypoints, not ztunnel.
pub fn authorization_policy(
    p: &AuthorizationPolicy,
    root_namespace: &str,
) -> Result<Option<Translated>, CrdError> {
    let (name, namespace) = (p.metadata.name.as_str(), p.metadata.namespace.as_str());
    let ctx = Ctx {
        namespace,
        name,
        l7: false,
    };
    if p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
        return Ok(None);
    }
    let action = match p.spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        other => {
            return Err(CrdError::UnsupportedAction {
                namespace: namespace.into(),
                name: name.into(),
                action: other.into(),
            });
        }
    };
    let selector = labels(&p.spec.selector);
    let scope = match reach(&selector, namespace, root_namespace) {
        Reach::Selected => Scope::WorkloadSelector,
        Reach::Mesh => Scope::Global,
        Reach::Namespace => Scope::Namespace,
    };
    let mut rules = Vec::new();
    let mut http = std::collections::BTreeSet::new();
    for (i, r) in p.spec.rules.iter().enumerate() {
        let (rule, found) = rule(&ctx, r, &format!("spec.rules[{i}]"))?;
        // As istiod: an ALLOW rule that needs L7 never matches, so it is left out (the
        // policy may allow nothing); a DENY rule keeps its L4 part.
        if found.is_empty() || action == Action::Deny {
            rules.push(rule);
        }
        http.extend(found);
    }
    let policy = Authorization {
        name: name.into(),
        namespace: namespace.into(),
        scope,
        action,
        rules,
        dry_run: false,
    };
    Ok(Some(Translated {
        policy,
        selector,
        http_attributes: http.into_iter().collect(),
    }))
}

/// HTTP attributes a rule uses, by the name of Istio's field or `when` key.
type Found = Vec<String>;

/// A rule's L4 part, and the HTTP attributes it also uses (left out of the rule).
fn rule(ctx: &Ctx<'_>, r: &PolicyRule, at: &str) -> Result<(Rule, Found), CrdError> {
    let mut clauses = Vec::new();
    let mut found = Found::new();
    if !r.from.is_empty() {
        let matches = r
            .from
            .iter()
            .enumerate()
            .map(|(i, f)| {
                source(
                    ctx,
                    &f.source,
                    &format!("{at}.from[{i}].source"),
                    &mut found,
                )
            })
            .collect::<Result<_, _>>()?;
        clauses.push(Clause { matches });
    }
    if !r.to.is_empty() {
        let matches =
            r.to.iter()
                .enumerate()
                .map(|(i, t)| {
                    operation(
                        ctx,
                        &t.operation,
                        &format!("{at}.to[{i}].operation"),
                        &mut found,
                    )
                })
                .collect::<Result<_, _>>()?;
        clauses.push(Clause { matches });
    }
    for (i, c) in r.when.iter().enumerate() {
        clauses.push(Clause {
            matches: vec![condition(ctx, c, &format!("{at}.when[{i}]"), &mut found)?],
        });
    }
    Ok((Rule { clauses }, found))
}

/// Records the names of the non-empty ones among `fields`.
fn note(found: &mut Found, fields: &[(&str, &[String])]) {
    found.extend(
        fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(name, _)| name.to_string()),
    );
}

fn source(ctx: &Ctx<'_>, s: &Source, at: &str, found: &mut Found) -> Result<Match, CrdError> {
    // The remote address is the client's as a proxy in front reports it (X-Forwarded-For):
    // HTTP, as Istio's ambient translation treats it.
    let http = if ctx.l7 {
        HttpMatch {
            request_principals: strings(&s.request_principals),
            not_request_principals: strings(&s.not_request_principals),
            remote_ips: ctx.nets(&s.remote_ip_blocks, &format!("{at}.remoteIpBlocks"))?,
            not_remote_ips: ctx
                .nets(&s.not_remote_ip_blocks, &format!("{at}.notRemoteIpBlocks"))?,
            ..HttpMatch::default()
        }
    } else {
        note(
            found,
            &[
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
            ],
        );
        HttpMatch::default()
    };
    Ok(Match {
        http,
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        source_ips: ctx.nets(&s.ip_blocks, &format!("{at}.ipBlocks"))?,
        not_source_ips: ctx.nets(&s.not_ip_blocks, &format!("{at}.notIpBlocks"))?,
        service_accounts: ctx.accounts(&s.service_accounts, &format!("{at}.serviceAccounts"))?,
        not_service_accounts: ctx
            .accounts(&s.not_service_accounts, &format!("{at}.notServiceAccounts"))?,
        ..Match::default()
    })
}

fn paths(ctx: &Ctx<'_>, v: &[String], field: &str) -> Result<Vec<PathMatch>, CrdError> {
    v.iter()
        .enumerate()
        .map(|(i, p)| PathMatch::parse(p).map_err(|e| ctx.invalid(format!("{field}[{i}]"), e)))
        .collect()
}

fn operation(ctx: &Ctx<'_>, o: &Operation, at: &str, found: &mut Found) -> Result<Match, CrdError> {
    let http = if ctx.l7 {
        HttpMatch {
            hosts: strings(&o.hosts),
            not_hosts: strings(&o.not_hosts),
            methods: strings(&o.methods),
            not_methods: strings(&o.not_methods),
            paths: paths(ctx, &o.paths, &format!("{at}.paths"))?,
            not_paths: paths(ctx, &o.not_paths, &format!("{at}.notPaths"))?,
            ..HttpMatch::default()
        }
    } else {
        note(
            found,
            &[
                ("hosts", &o.hosts),
                ("notHosts", &o.not_hosts),
                ("methods", &o.methods),
                ("notMethods", &o.not_methods),
                ("paths", &o.paths),
                ("notPaths", &o.not_paths),
            ],
        );
        HttpMatch::default()
    };
    Ok(Match {
        http,
        destination_ports: ctx.ports(&o.ports, &format!("{at}.ports"))?,
        not_destination_ports: ctx.ports(&o.not_ports, &format!("{at}.notPorts"))?,
        ..Match::default()
    })
}

fn condition(ctx: &Ctx<'_>, c: &Condition, at: &str, found: &mut Found) -> Result<Match, CrdError> {
    let (v, nv) = (&c.values, &c.not_values);
    let m = match c.key.as_str() {
        "source.ip" => Match {
            source_ips: ctx.nets(v, &format!("{at}.values"))?,
            not_source_ips: ctx.nets(nv, &format!("{at}.notValues"))?,
            ..Match::default()
        },
        "source.namespace" => Match {
            namespaces: strings(v),
            not_namespaces: strings(nv),
            ..Match::default()
        },
        "source.principal" => Match {
            principals: strings(v),
            not_principals: strings(nv),
            ..Match::default()
        },
        "destination.ip" => Match {
            destination_ips: ctx.nets(v, &format!("{at}.values"))?,
            not_destination_ips: ctx.nets(nv, &format!("{at}.notValues"))?,
            ..Match::default()
        },
        "destination.port" => Match {
            destination_ports: ctx.ports(v, &format!("{at}.values"))?,
            not_destination_ports: ctx.ports(nv, &format!("{at}.notValues"))?,
            ..Match::default()
        },
        key if ctx.l7 => Match {
            http: http_condition(ctx, key, v, nv, at)?,
            ..Match::default()
        },
        // remote.ip, request.*, connection.sni, experimental.*...: not visible at L4. In a
        // DENY rule the condition is left out (an empty match holds for every connection).
        _ => {
            found.push(c.key.clone());
            Match::default()
        }
    };
    Ok(m)
}

/// `request.auth.claims[a][b]` → `["a", "b"]`.
fn claim_path(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        if end == 0 {
            return None;
        }
        path.push(inner[..end].to_string());
        rest = &inner[end + 1..];
    }
    (!path.is_empty()).then_some(path)
}

/// A `when` condition on an HTTP attribute, at a waypoint.
fn http_condition(
    ctx: &Ctx<'_>,
    key: &str,
    v: &[String],
    nv: &[String],
    at: &str,
) -> Result<HttpMatch, CrdError> {
    let keyed = || Keyed {
        key: (),
        values: strings(v),
        not_values: strings(nv),
    };
    let m = match key {
        "remote.ip" => HttpMatch {
            remote_ips: ctx.nets(v, &format!("{at}.values"))?,
            not_remote_ips: ctx.nets(nv, &format!("{at}.notValues"))?,
            ..HttpMatch::default()
        },
        "request.auth.principal" => HttpMatch {
            request_principals: strings(v),
            not_request_principals: strings(nv),
            ..HttpMatch::default()
        },
        "request.auth.audiences" => HttpMatch {
            audiences: keyed(),
            ..HttpMatch::default()
        },
        "request.auth.presenter" => HttpMatch {
            presenters: keyed(),
            ..HttpMatch::default()
        },
        "connection.sni" => HttpMatch {
            snis: keyed(),
            ..HttpMatch::default()
        },
        k if k.starts_with("request.headers[") => {
            let name = k
                .strip_prefix("request.headers[")
                .and_then(|r| r.strip_suffix(']'))
                .filter(|n| !n.is_empty() && http::HeaderName::from_bytes(n.as_bytes()).is_ok())
                .ok_or_else(|| {
                    ctx.invalid(
                        format!("{at}.key"),
                        format!("{k:?} is not request.headers[<header name>]"),
                    )
                })?;
            HttpMatch {
                headers: vec![Keyed {
                    key: name.to_ascii_lowercase(),
                    values: strings(v),
                    not_values: strings(nv),
                }],
                ..HttpMatch::default()
            }
        }
        k if k.starts_with("request.auth.claims") => {
            let path = claim_path(k).ok_or_else(|| {
                ctx.invalid(
                    format!("{at}.key"),
                    format!("{k:?} is not request.auth.claims[<name>] (nested: [<a>][<b>])"),
                )
            })?;
            HttpMatch {
                claims: vec![Keyed {
                    key: path,
                    values: strings(v),
                    not_values: strings(nv),
                }],
                ..HttpMatch::default()
            }
        }
        k if k.starts_with("experimental.envoy.filters.") => {
            return Err(ctx.invalid(
                format!("{at}.key"),
                format!("{k:?}: Envoy filter metadata does not exist in amesh's waypoint"),
            ));
        }
        k => {
            return Err(ctx.invalid(
                format!("{at}.key"),
                format!("{k:?} is not a condition key Istio defines"),
            ));
        }
    };
    Ok(m)
}

/// A policy's `targetRef(s)` entry: what it is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    pub group: String,
    pub kind: String,
    pub name: String,
    /// The policy's own (Istio allows no other).
    pub namespace: String,
}

/// A policy's `targetRef(s)`: Gateways, the waypoint GatewayClass or Services of its own
/// namespace; else the field and the reason.
pub fn target_refs(
    refs: &[&serde_json::Value],
    namespace: &str,
) -> Result<Vec<TargetRef>, (String, String)> {
    let mut targets = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let field = |f: &str| format!("spec.targetRefs[{i}].{f}");
        let text = |f: &str| {
            r.get(f)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (group, kind, target_name) = (text("group"), text("kind"), text("name"));
        if target_name.is_empty() {
            return Err((field("name"), "missing".into()));
        }
        match (group.as_str(), kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
            | ("" | "core", "Service") => {}
            _ => {
                return Err((
                    field("kind"),
                    format!(
                        "{group}/{kind}: a waypoint policy targets a Gateway, a GatewayClass or a Service"
                    ),
                ));
            }
        }
        if let Some(ns) = r.get("namespace").and_then(|v| v.as_str())
            && ns != namespace
        {
            return Err((
                field("namespace"),
                "a policy targets objects in its own namespace only".into(),
            ));
        }
        targets.push(TargetRef {
            group,
            kind,
            name: target_name,
            namespace: namespace.into(),
        });
    }
    Ok(targets)
}

/// A policy for waypoints: its rules with their HTTP attributes, and what it targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointTranslated {
    pub policy: Authorization,
    pub targets: Vec<TargetRef>,
    /// CUSTOM: the extension provider's name.
    pub provider: Option<String>,
}

/// Translates an `AuthorizationPolicy` that targets waypoints (`targetRef(s)` to a Gateway,
/// a Service or the waypoint GatewayClass), keeping every HTTP attribute. `Ok(None)`: it has
/// no target (ztunnel's, see [`authorization_policy`]).
pub fn waypoint_policy(p: &AuthorizationPolicy) -> Result<Option<WaypointTranslated>, CrdError> {
    let (name, namespace) = (p.metadata.name.as_str(), p.metadata.namespace.as_str());
    let ctx = Ctx {
        namespace,
        name,
        l7: true,
    };
    let refs: Vec<&serde_json::Value> = p
        .spec
        .target_ref
        .iter()
        .chain(&p.spec.target_refs)
        .collect();
    if refs.is_empty() {
        return Ok(None);
    }
    let action = match p.spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => Action::Custom,
        other => {
            return Err(ctx.invalid(
                "spec.action".into(),
                format!("{other} is not an action (ALLOW, DENY, AUDIT, CUSTOM)"),
            ));
        }
    };
    let provider = match (action, p.spec.provider.as_ref()) {
        (Action::Custom, Some(pr)) if !pr.name.is_empty() => Some(pr.name.clone()),
        (Action::Custom, _) => {
            return Err(ctx.invalid(
                "spec.provider.name".into(),
                "CUSTOM needs the name of an extension provider".into(),
            ));
        }
        _ => None,
    };
    let targets = target_refs(&refs, namespace).map_err(|(f, r)| ctx.invalid(f, r))?;
    let mut rules = Vec::new();
    for (i, r) in p.spec.rules.iter().enumerate() {
        let (rule, _) = rule(&ctx, r, &format!("spec.rules[{i}]"))?;
        rules.push(rule);
    }
    Ok(Some(WaypointTranslated {
        policy: Authorization {
            name: name.into(),
            namespace: namespace.into(),
            scope: Scope::Namespace,
            action,
            rules,
            dry_run: false,
        },
        targets,
        provider,
    }))
}

/// `kind: PeerAuthentication`.
#[derive(Debug, Clone, Deserialize)]
pub struct PeerAuthenticationResource {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<Selector>,
    #[serde(default)]
    pub mtls: Option<MtlsSpec>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<String, MtlsSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MtlsSpec {
    #[serde(default)]
    pub mode: Option<String>,
}

fn mtls_mode(m: Option<&MtlsSpec>) -> MtlsMode {
    match m.and_then(|m| m.mode.as_deref()) {
        Some("STRICT") => MtlsMode::Strict,
        Some("PERMISSIVE") => MtlsMode::Permissive,
        // UNSET, DISABLE (meaningless with HBONE, ignored as Istio does), absent.
        _ => MtlsMode::Unset,
    }
}

/// Translates a `PeerAuthentication`; for a workload-scoped one the caller fills
/// `workloads` from the selector it also gets back.
pub fn peer_authentication(
    p: &PeerAuthenticationResource,
    root_namespace: &str,
) -> Result<(PeerAuthentication, Option<BTreeMap<String, String>>), CrdError> {
    let (name, namespace) = (p.metadata.name.as_str(), p.metadata.namespace.as_str());
    let ctx = Ctx {
        namespace,
        name,
        l7: false,
    };
    let selector = labels(&p.spec.selector);
    let scope = match reach(&selector, namespace, root_namespace) {
        Reach::Selected => PeerScope::Workload,
        Reach::Mesh => PeerScope::Mesh,
        Reach::Namespace => PeerScope::Namespace,
    };
    let mut port_modes = BTreeMap::new();
    for (port, m) in &p.spec.port_level_mtls {
        let port = port.parse::<u16>().map_err(|_| {
            ctx.invalid(
                format!("spec.portLevelMtls.{port}"),
                format!("{port:?} is not a port"),
            )
        })?;
        port_modes.insert(port, mtls_mode(Some(m)));
    }
    let pa = PeerAuthentication {
        name: name.into(),
        namespace: namespace.into(),
        scope,
        workloads: Vec::new(),
        mode: mtls_mode(p.spec.mtls.as_ref()),
        port_modes,
    };
    Ok((pa, selector))
}
