//! The `ztunnel` binary. The L4 data path is not implemented yet: it says so and fails rather
//! than pretending to proxy.
#![forbid(unsafe_code)]
fn main() -> std::process::ExitCode {
    eprintln!("ztunnel: the L4 data path is not implemented yet (see the ztunnel issue)");
    std::process::ExitCode::from(2)
}
