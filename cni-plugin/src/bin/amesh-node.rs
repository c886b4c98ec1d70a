//! The `amesh-node` agent. Not implemented yet: it says so and fails.
#![forbid(unsafe_code)]
fn main() -> std::process::ExitCode {
    eprintln!("amesh-node: the node agent is not implemented yet");
    std::process::ExitCode::from(2)
}
