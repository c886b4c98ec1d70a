//! A real gRPC client and server in the test bed's pods: gRPC's own Python implementation
//! (`python3-grpcio`, installed by `cargo xtask setup`) running `tests/grpc/grpc_peer.py`.

use crate::{BedError, pod::Pod, process::PodProcess};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The peer script, in the checkout.
pub fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/grpc/grpc_peer.py"))
}

fn command(pod: &Pod) -> std::process::Command {
    // Debian's Python, where python3-grpcio is installed (not whatever python3 is on PATH).
    let mut cmd = pod.command("/usr/bin/python3");
    cmd.arg(script());
    cmd
}

/// A gRPC server in `pod` on `addr`, answering every method with `served-by=<name>`.
pub fn serve(pod: &Pod, name: &str, addr: SocketAddr) -> Result<PodProcess, BedError> {
    let mut cmd = command(pod);
    cmd.args(["serve", "--name", name, &addr.to_string()]);
    let p = pod.spawn(cmd)?;
    match p.next_line(Duration::from_secs(20)).as_deref() {
        Some("ready") => Ok(p),
        _ => Err(BedError::Command {
            command: format!("the gRPC server in pod {}", pod.name()),
            stderr: p.stderr(),
        }),
    }
}

/// `count` unary calls of `method` (`/pkg.Service/Method`) from `pod` to `target` on one
/// channel, with `metadata`: one line per call (`code=OK reply=...` or `code=<STATUS> ...`).
pub fn call(
    pod: &Pod,
    target: SocketAddr,
    method: &str,
    metadata: &[(&str, &str)],
    count: u32,
) -> Result<Vec<String>, BedError> {
    let mut cmd = command(pod);
    cmd.args([
        "call",
        &target.to_string(),
        method,
        "--count",
        &count.to_string(),
    ]);
    for (k, v) in metadata {
        cmd.args(["--metadata", &format!("{k}={v}")]);
    }
    let p = pod.spawn(cmd)?;
    let label = p.label().to_string();
    let (status, lines) =
        p.finish(Duration::from_secs(60))
            .map_err(|stderr| BedError::Command {
                command: label.clone(),
                stderr,
            })?;
    if !status.success() || lines.len() != count as usize {
        return Err(BedError::Command {
            command: label,
            stderr: format!("exit {status}; output: {lines:?}"),
        });
    }
    Ok(lines)
}
