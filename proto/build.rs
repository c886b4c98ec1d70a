//! Compiles the project's .proto files with protox (pure Rust: no `protoc` needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/zds.proto",
        "proto/workload.proto",
        "proto/authorization.proto",
        "proto/discovery.proto",
        "proto/citadel.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
