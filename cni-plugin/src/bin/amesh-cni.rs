//! The `amesh-cni` plugin: chained last in the node's CNI configuration, it asks the node
//! agent to enroll each new pod before its containers start. Only the result (or a CNI error
//! object) goes to stdout; everything else goes to the log file the configuration names.
#![forbid(unsafe_code)]

use amesh_cni::cni::{
    PluginConf,
    plugin::{Env, run},
};
use std::io::{Read, Write};

fn main() -> std::process::ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => run(&env, &stdin),
        Err(e) => {
            let err = amesh_cni::cni::CniError::new(
                "1.0.0",
                amesh_cni::cni::error::code::IO_FAILURE,
                "reading the network configuration from stdin",
                e.to_string(),
            );
            println!("{}", err.to_json());
            return std::process::ExitCode::FAILURE;
        }
    };
    // A configuration that cannot be read names no log file: stderr then (the runtime keeps
    // it), rather than a file nobody configured.
    match PluginConf::parse(&stdin) {
        Ok(c) => log(&c.log_file, &env, &outcome.log, outcome.ok),
        Err(_) => eprintln!("amesh-cni: {} ok={}", outcome.log, outcome.ok),
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    if outcome.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Appends one line; a log that cannot be written never fails the call.
fn log(path: &std::path::Path, env: &Env, message: &str, ok: bool) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let line = format!(
        "{now:.3} pid={} command={} container={} ok={ok} {message}\n",
        std::process::id(),
        env.command,
        env.container_id
    );
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}
