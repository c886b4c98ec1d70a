//! The `ztunnel` binary: wires the pieces together (see the library for what each does).
#![forbid(unsafe_code)]

use amesh_ztunnel::config::Args;
use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = Args::parse().resolve();
    let log = amesh_ztunnel::config::init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ztunnel: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(amesh_ztunnel::run(args, log)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ztunnel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
