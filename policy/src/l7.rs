//! The HTTP attributes of Istio's AuthorizationPolicy, which only a waypoint can judge:
//! hosts, methods, paths (with Istio's `{*}` / `{**}` templates), request principals, remote
//! IPs, request headers, JWT audiences, presenter and claims (nested too), and SNI; and the
//! request they are matched against. Positive lists need one match; `not_` lists need none;
//! an attribute the request lacks (no token, no header) fails a positive list and passes a
//! negative one, as Envoy's RBAC filter does.

use crate::model::{IpNet, StringMatch};
use std::net::IpAddr;

/// The end user a validated JWT names (RequestAuthentication).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestAuth {
    /// `iss/sub`, Istio's request principal.
    pub principal: String,
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: String,
    /// Every claim of the token.
    pub claims: serde_json::Value,
}

/// A request as the waypoint received it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The authority (Host), possibly with a port.
    pub host: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The original client, as the nearest proxy reports it (`x-forwarded-for`), else the
    /// source.
    pub remote_ip: IpAddr,
    pub auth: Option<&'a RequestAuth>,
    pub sni: Option<&'a str>,
}

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one segment.
    One,
    /// `{**}`: any number of segments (only last).
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PathMatch {
    /// Istio's string syntax: exact, `x*` prefix, `*x` suffix, `*` any.
    Plain(StringMatch),
    /// A path template (`/api/{*}/items/{**}`), matched segment by segment.
    Template(Vec<Segment>),
}

impl PathMatch {
    /// Istio's path syntax; a template with `{*}`/`{**}` anywhere but a whole segment, or
    /// `{**}` before the end, is refused with the reason.
    pub fn parse(s: &str) -> Result<Self, String> {
        if !s.contains("{*}") && !s.contains("{**}") {
            return Ok(Self::Plain(StringMatch::parse(s)));
        }
        if !s.starts_with('/') {
            return Err(format!("{s:?}: a path template must start with /"));
        }
        let parts: Vec<&str> = s[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::Any,
                "{**}" => return Err(format!("{s:?}: {{**}} must be the last segment")),
                p if p.contains('{') || p.contains('}') => {
                    return Err(format!(
                        "{s:?}: {{*}} and {{**}} must be whole path segments"
                    ));
                }
                p => Segment::Literal(p.to_string()),
            };
            segments.push(seg);
        }
        Ok(Self::Template(segments))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Plain(m) => m.matches(path),
            Self::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let parts: Vec<&str> = rest.split('/').collect();
                let mut i = 0;
                for seg in segments {
                    match seg {
                        Segment::Any => return true,
                        Segment::One => {
                            if parts.get(i).is_none_or(|p| p.is_empty()) {
                                return false;
                            }
                        }
                        Segment::Literal(l) => {
                            if parts.get(i) != Some(&l.as_str()) {
                                return false;
                            }
                        }
                    }
                    i += 1;
                }
                i == parts.len()
            }
        }
    }
}

/// A keyed attribute (a header, a claim) with the values it must and must not have.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keyed<K> {
    pub key: K,
    pub values: Vec<StringMatch>,
    pub not_values: Vec<StringMatch>,
}

/// The HTTP part of a match: every field that is set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HttpMatch {
    pub hosts: Vec<StringMatch>,
    pub not_hosts: Vec<StringMatch>,
    pub methods: Vec<StringMatch>,
    pub not_methods: Vec<StringMatch>,
    pub paths: Vec<PathMatch>,
    pub not_paths: Vec<PathMatch>,
    pub request_principals: Vec<StringMatch>,
    pub not_request_principals: Vec<StringMatch>,
    pub remote_ips: Vec<IpNet>,
    pub not_remote_ips: Vec<IpNet>,
    /// `request.headers[name]` (name lower-cased).
    pub headers: Vec<Keyed<String>>,
    /// `request.auth.claims[a][b]...`: the path into the claims.
    pub claims: Vec<Keyed<Vec<String>>>,
    pub audiences: Keyed<()>,
    pub presenters: Keyed<()>,
    pub snis: Keyed<()>,
}

fn any_or_empty<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

/// Positive values need one of `values` to match one of `have`; negative ones none. A
/// missing attribute (`have` empty) fails positive values and passes negative ones.
fn values_hold(values: &[StringMatch], not_values: &[StringMatch], have: &[&str]) -> bool {
    any_or_empty(values, |m| have.iter().any(|h| m.matches(h)))
        && !not_values.iter().any(|m| have.iter().any(|h| m.matches(h)))
}

/// The claim at `path` as strings: a string, each string of a list, a number or bool as
/// text.
fn claim_values<'a>(
    claims: &'a serde_json::Value,
    path: &[String],
) -> Vec<std::borrow::Cow<'a, str>> {
    let mut v = claims;
    for key in path {
        match v.get(key) {
            Some(next) => v = next,
            None => return Vec::new(),
        }
    }
    let scalar = |v: &'a serde_json::Value| match v {
        serde_json::Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        serde_json::Value::Number(n) => Some(n.to_string().into()),
        serde_json::Value::Bool(b) => Some(b.to_string().into()),
        _ => None,
    };
    match v {
        serde_json::Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

impl HttpMatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn matches(&self, r: &Request<'_>) -> bool {
        let host = r.host.to_ascii_lowercase();
        // A host matches with or without its port (`[v6]:port` too).
        let bare = match host.rfind(':') {
            Some(i)
                if !host[i + 1..].is_empty()
                    && host[i + 1..].bytes().all(|b| b.is_ascii_digit())
                    && (host[..i].ends_with(']') || !host[..i].contains(':')) =>
            {
                host[..i].to_string()
            }
            _ => host.clone(),
        };
        let hosts: [&str; 2] = [&host, &bare];
        let principal: Vec<&str> = r.auth.map(|a| a.principal.as_str()).into_iter().collect();
        let audiences: Vec<&str> = r
            .auth
            .map(|a| a.audiences.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let presenter: Vec<&str> = r
            .auth
            .map(|a| a.presenter.as_str())
            .filter(|p| !p.is_empty())
            .into_iter()
            .collect();
        let sni: Vec<&str> = r.sni.into_iter().collect();
        let lower = |ms: &[StringMatch]| -> Vec<StringMatch> {
            ms.iter()
                .map(|m| match m {
                    StringMatch::Exact(s) => StringMatch::Exact(s.to_ascii_lowercase()),
                    StringMatch::Prefix(s) => StringMatch::Prefix(s.to_ascii_lowercase()),
                    StringMatch::Suffix(s) => StringMatch::Suffix(s.to_ascii_lowercase()),
                    StringMatch::Presence => StringMatch::Presence,
                })
                .collect()
        };
        values_hold(&lower(&self.hosts), &lower(&self.not_hosts), &hosts)
            && values_hold(&self.methods, &self.not_methods, &[r.method])
            && any_or_empty(&self.paths, |p| p.matches(r.path))
            && !self.not_paths.iter().any(|p| p.matches(r.path))
            && values_hold(
                &self.request_principals,
                &self.not_request_principals,
                &principal,
            )
            && any_or_empty(&self.remote_ips, |n| n.contains(r.remote_ip))
            && !self.not_remote_ips.iter().any(|n| n.contains(r.remote_ip))
            && self.headers.iter().all(|h| {
                let have: Vec<&str> = r
                    .headers
                    .get_all(h.key.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                values_hold(&h.values, &h.not_values, &have)
            })
            && self.claims.iter().all(|c| {
                let have = r
                    .auth
                    .map(|a| claim_values(&a.claims, &c.key))
                    .unwrap_or_default();
                let have: Vec<&str> = have.iter().map(|s| s.as_ref()).collect();
                values_hold(&c.values, &c.not_values, &have)
            })
            && values_hold(
                &self.audiences.values,
                &self.audiences.not_values,
                &audiences,
            )
            && values_hold(
                &self.presenters.values,
                &self.presenters.not_values,
                &presenter,
            )
            && values_hold(&self.snis.values, &self.snis.not_values, &sni)
    }
}
