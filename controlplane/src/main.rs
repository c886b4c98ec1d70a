//! The `amesh-controlplane` binary. The xDS server and CA are not built yet: it says so and
//! fails rather than pretending to serve.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!(
        "amesh-controlplane: the xDS server and CA are not implemented yet (see the control-plane issue)"
    );
    std::process::ExitCode::from(2)
}
