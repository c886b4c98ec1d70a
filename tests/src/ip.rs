//! Runs iproute2's `ip`, the real tool, turning failures into errors that quote it.

use crate::BedError;
use std::process::Command;

/// Runs `ip <args>`.
pub fn ip(args: &[&str]) -> Result<(), BedError> {
    run("ip", args).map(drop)
}

/// Runs `ip -n <netns> <args>`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<(), BedError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Runs a program to completion; its stdout on success.
pub fn run(program: &str, args: &[&str]) -> Result<String, BedError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(BedError::io(format!("running {command}")))?;
    if !out.status.success() {
        return Err(BedError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the network namespaces `ip netns` knows.
pub fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
