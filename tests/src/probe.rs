//! The `amesh-probe` helper's protocol: what a test runs inside a pod to connect or serve,
//! and how its output reads.
//!
//! - `amesh-probe connect [--mark N] [--bind IP] [--timeout-ms MS] TARGET...` connects to every
//!   target at once, sends the target text and a newline, reads one reply line, and prints one
//!   line per target: `target=T local=L peer=P reply=R` or `target=T error=E`. Exit 0 only if
//!   every connection got a reply.
//! - `amesh-probe serve --name NAME ADDR...` listens on each address, prints `ready`, and answers
//!   every line it reads with `served-by=NAME local=L line=LINE`.

use crate::{BedError, Pod, PodProcess};
use std::{net::SocketAddr, path::Path, time::Duration};

/// Finds a binary built next to the running one (`target/<profile>/NAME`): tests of one
/// package use the helpers of another this way.
pub fn sibling_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dirs = exe.ancestors().skip(1).take(2);
    let found = dirs.map(|d| d.join(name)).find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} is not built next to {}: run `cargo xtask test` (or build the workspace's binaries first)", exe.display())
    })
}

/// Starts `amesh-probe serve --echo` in `pod`: every connection gets its bytes back.
pub fn serve_echo(probe: &Path, pod: &Pod, addrs: &[SocketAddr]) -> Result<PodProcess, BedError> {
    let mut cmd = pod.command(probe);
    cmd.args(["serve", "--echo"])
        .args(addrs.iter().map(|a| a.to_string()));
    let p = pod.spawn(cmd)?;
    match p.next_line(Duration::from_secs(10)).as_deref() {
        Some("ready") => Ok(p),
        _ => Err(BedError::Command {
            command: format!("amesh-probe serve --echo in pod {}", pod.name()),
            stderr: p.stderr(),
        }),
    }
}

/// Sends `bytes` through `target` to an echo server and checks they come back intact.
pub fn bulk(probe: &Path, pod: &Pod, target: SocketAddr, bytes: usize) -> Result<(), String> {
    let mut cmd = pod.command(probe);
    cmd.args(["bulk", "--bytes", &bytes.to_string(), &target.to_string()]);
    let p = pod.spawn(cmd).map_err(|e| e.to_string())?;
    let (_, lines) = p.finish(Duration::from_secs(300))?;
    match lines.first() {
        Some(l) if l.ends_with(" ok") => Ok(()),
        other => Err(format!("bulk transfer to {target}: {other:?}")),
    }
}

/// Starts `amesh-probe pipe` in `pod` to `target` and waits until it is connected; lines
/// sent with [`PodProcess::send_line`] travel over the connection, what comes back arrives
/// as lines, and `closed` when the connection ends.
pub fn pipe(probe: &Path, pod: &Pod, target: SocketAddr) -> Result<PodProcess, BedError> {
    let mut cmd = pod.command(probe);
    cmd.args(["pipe", &target.to_string()]);
    let p = pod.spawn_interactive(cmd)?;
    match p.next_line(Duration::from_secs(10)).as_deref() {
        Some("connected") => Ok(p),
        other => Err(BedError::Command {
            command: format!("amesh-probe pipe {target} in pod {}", pod.name()),
            stderr: format!("{other:?} {}", p.stderr()),
        }),
    }
}

/// Starts `amesh-probe serve` in `pod` on `addrs` and waits until it listens.
pub fn serve(
    probe: &Path,
    pod: &Pod,
    name: &str,
    addrs: &[SocketAddr],
) -> Result<PodProcess, BedError> {
    serve_with(probe, pod, name, &[], addrs)
}

/// The same with more of `serve`'s options (`--status N`, `--delay-ms MS`).
pub fn serve_with(
    probe: &Path,
    pod: &Pod,
    name: &str,
    extra: &[&str],
    addrs: &[SocketAddr],
) -> Result<PodProcess, BedError> {
    let mut cmd = pod.command(probe);
    cmd.args(["serve", "--name", name])
        .args(extra)
        .args(addrs.iter().map(|a| a.to_string()));
    let p = pod.spawn(cmd)?;
    match p.next_line(Duration::from_secs(10)).as_deref() {
        Some("ready") => Ok(p),
        _ => Err(BedError::Command {
            command: format!("amesh-probe serve in pod {}", pod.name()),
            stderr: p.stderr(),
        }),
    }
}

/// Runs `amesh-probe connect` in `pod`; one result per target, in order.
pub fn connect(
    probe: &Path,
    pod: &Pod,
    extra: &[&str],
    targets: &[SocketAddr],
) -> Result<Vec<ConnectResult>, BedError> {
    let mut cmd = pod.command(probe);
    cmd.arg("connect")
        .args(extra)
        .args(targets.iter().map(|t| t.to_string()));
    let p = pod.spawn(cmd)?;
    let label = p.label().to_string();
    let (_, lines) = p
        .finish(Duration::from_secs(60))
        .map_err(|stderr| BedError::Command {
            command: label.clone(),
            stderr,
        })?;
    let results: Vec<ConnectResult> = lines
        .iter()
        .filter_map(|l| ConnectResult::parse(l))
        .collect();
    if results.len() != targets.len() {
        return Err(BedError::Command {
            command: label,
            stderr: format!("unexpected output: {lines:?}"),
        });
    }
    Ok(results)
}

impl Connected {
    /// Who answered (`served-by=` of the reply).
    pub fn served_by(&self) -> &str {
        reply_field(&self.reply, "served-by").unwrap_or("")
    }

    /// The address the answering server saw as the connection's local end.
    pub fn served_local(&self) -> Option<SocketAddr> {
        reply_field(&self.reply, "local").and_then(|l| l.parse().ok())
    }

    /// The original destination the outbound stand-in recovered (`orig=`).
    pub fn orig(&self) -> Option<&str> {
        reply_field(&self.reply, "orig")
    }
}

/// One connection's outcome as `amesh-probe connect` printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectResult {
    pub target: String,
    pub outcome: Result<Connected, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub reply: String,
}

/// `key=value` fields of one output line; the last field (`reply`, `error`, `line`) takes
/// the rest of the line.
pub fn fields(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim();
        if matches!(key, "reply" | "error" | "line") {
            out.push((key, after));
            break;
        }
        let (value, next) = after.split_once(' ').unwrap_or((after, ""));
        out.push((key, value));
        rest = next;
    }
    out
}

impl ConnectResult {
    pub fn parse(line: &str) -> Option<Self> {
        let f = fields(line);
        let get = |k: &str| f.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let target = get("target")?.to_string();
        if let Some(error) = get("error") {
            return Some(Self {
                target,
                outcome: Err(error.to_string()),
            });
        }
        Some(Self {
            target,
            outcome: Ok(Connected {
                local: get("local")?.parse().ok()?,
                peer: get("peer")?.parse().ok()?,
                reply: get("reply")?.to_string(),
            }),
        })
    }
}

/// The value of `key` in a `served-by=... local=... line=...` reply.
pub fn reply_field<'a>(reply: &'a str, key: &str) -> Option<&'a str> {
    fields(reply)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_success_and_error_lines() {
        let ok = ConnectResult::parse(
            "target=10.0.0.2:80 local=10.0.0.1:5000 peer=127.0.0.1:15001 reply=served-by=b local=10.0.0.2:80 line=x y",
        )
        .expect("line");
        let c = ok.outcome.expect("connected");
        assert_eq!(c.peer, "127.0.0.1:15001".parse().expect("addr"));
        assert_eq!(reply_field(&c.reply, "served-by"), Some("b"));
        assert_eq!(reply_field(&c.reply, "line"), Some("x y"));
        let err =
            ConnectResult::parse("target=[fd00::2]:80 error=connection refused (os error 111)")
                .expect("line");
        assert_eq!(err.target, "[fd00::2]:80");
        assert_eq!(
            err.outcome,
            Err("connection refused (os error 111)".to_string())
        );
        assert_eq!(ConnectResult::parse("garbage"), None);
    }
}
