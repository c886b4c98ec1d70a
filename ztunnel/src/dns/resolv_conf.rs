//! The upstream resolvers ztunnel forwards to: the `nameserver` lines and the `timeout` and
//! `attempts` options of a resolv.conf (ztunnel's own, as Istio's ztunnel reads it).

use std::{net::SocketAddr, path::Path, time::Duration};

/// glibc's defaults and limits.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ATTEMPTS: u32 = 2;
const MAX_ATTEMPTS: u32 = 5;
const MAX_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    pub servers: Vec<SocketAddr>,
    /// Per attempt, per server.
    pub timeout: Duration,
    /// Rounds over the servers.
    pub attempts: u32,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self {
            servers: vec![],
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("reading the resolv.conf {path}: {source}")]
pub struct ReadError {
    path: String,
    source: std::io::Error,
}

/// Reads `path` (call it off the async runtime: it is a file read).
pub fn read(path: &Path) -> Result<(Upstreams, Vec<String>), ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

/// Parses a resolv.conf; the second value lists the lines that were skipped, with why.
pub fn parse(text: &str) -> (Upstreams, Vec<String>) {
    let mut up = Upstreams::default();
    let mut skipped = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => match words.next().map(|w| w.parse::<std::net::IpAddr>()) {
                Some(Ok(ip)) => up.servers.push(SocketAddr::new(ip, 53)),
                _ => skipped.push(format!(
                    "line {}: {line:?} is not a nameserver address",
                    n + 1
                )),
            },
            Some("options") => {
                for opt in words {
                    if let Some(v) = opt.strip_prefix("timeout:") {
                        match v.parse::<u64>() {
                            Ok(s) if s > 0 => {
                                up.timeout = Duration::from_secs(s.min(MAX_TIMEOUT_SECS));
                            }
                            _ => skipped.push(format!("line {}: option {opt:?}", n + 1)),
                        }
                    } else if let Some(v) = opt.strip_prefix("attempts:") {
                        match v.parse::<u32>() {
                            Ok(a) if a > 0 => up.attempts = a.min(MAX_ATTEMPTS),
                            _ => skipped.push(format!("line {}: option {opt:?}", n + 1)),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (up, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_and_options_are_read_and_bad_lines_named() {
        let (up, skipped) = parse(
            "# comment\nsearch shop.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::10 # v6\nnameserver not-an-ip\noptions ndots:5 timeout:2 attempts:9\noptions timeout:x\n",
        );
        assert_eq!(
            up.servers,
            vec![
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "[fd00::10]:53".parse().unwrap()
            ]
        );
        assert_eq!(up.timeout, Duration::from_secs(2));
        assert_eq!(up.attempts, MAX_ATTEMPTS);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("line 5"), "{skipped:?}");
        let (empty, _) = parse("\0\u{fffd}garbage");
        assert_eq!(empty, Upstreams::default());
    }
}
