//! Compiles the project's .proto files with protox (pure Rust: no `protoc` needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/zds.proto",
        "proto/workload.proto",
        "proto/authorization.proto",
        "proto/discovery.proto",
        "proto/citadel.proto",
        "proto/route.proto",
        "proto/ext_authz.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // Messages through prost; the ADS and CA services get tonic client and server stubs
    // (transport-neutral: the callers bring their own TLS streams).
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
