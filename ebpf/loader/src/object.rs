//! The kernel programs, built by `cargo xtask build-ebpf` and embedded at compile time.

/// The ELF object holding amesh's programs and maps.
#[cfg(not(amesh_no_ebpf_object))]
pub static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(env!("AMESH_EBPF_OBJECT")));

/// Built with `AMESH_EBPF_OBJECT=none`: no programs to load.
#[cfg(amesh_no_ebpf_object)]
pub static OBJECT: Option<&[u8]> = None;
