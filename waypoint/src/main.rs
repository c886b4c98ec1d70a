//! The `waypoint` binary. Not implemented yet: it says so and fails.
fn main() -> std::process::ExitCode {
    eprintln!("waypoint: the L7 proxy is not implemented yet");
    std::process::ExitCode::from(2)
}
