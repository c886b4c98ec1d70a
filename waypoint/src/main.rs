//! The `waypoint` binary. Not implemented yet: it says so and fails.
#![forbid(unsafe_code)]
fn main() -> std::process::ExitCode {
    eprintln!("waypoint: the L7 proxy is not implemented yet");
    std::process::ExitCode::from(2)
}
