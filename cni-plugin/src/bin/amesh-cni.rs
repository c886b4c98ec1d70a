//! The `amesh-cni` plugin. Not implemented yet: it answers every call with a CNI error object
//! so that a runtime never mistakes it for a working plugin.
#![forbid(unsafe_code)]
fn main() -> std::process::ExitCode {
    println!(
        "{{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"amesh-cni is not implemented yet\"}}"
    );
    std::process::ExitCode::from(1)
}
