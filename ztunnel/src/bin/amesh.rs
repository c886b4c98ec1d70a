//! `amesh`: the operator's command line. `amesh ztunnel-config <view>` shows what a ztunnel
//! holds (workloads, services, policies, certificates, or all), as `istioctl ztunnel-config`
//! shows Istio's, from the ztunnel's admin endpoint.
#![forbid(unsafe_code)]

use amesh_ztunnel::cli::{self, Output, View};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(name = "amesh", version, about = "amesh's command line")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// What a ztunnel holds, in istioctl's `ztunnel-config` views.
    ZtunnelConfig {
        view: View,
        /// The ztunnel's admin endpoint (on its node; `kubectl port-forward` elsewhere).
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

fn main() -> std::process::ExitCode {
    let Command::ZtunnelConfig {
        view,
        admin,
        output,
    } = Args::parse().command;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("amesh: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::fetch(admin)) {
        Ok(dump) => {
            print!("{}", cli::render(&dump, view, output));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("amesh: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
