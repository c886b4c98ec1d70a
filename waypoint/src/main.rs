//! The `amesh-waypoint` binary.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = amesh_waypoint::config::Args::parse();
    amesh_waypoint::init_logging();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(amesh_waypoint::run(args))
}
