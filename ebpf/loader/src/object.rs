//! The kernel programs, built by `cargo xtask build-ebpf` and embedded at compile time.

/// The ELF object holding amesh's programs and maps.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AMESH_EBPF_OBJECT"));
