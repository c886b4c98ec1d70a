//! amesh's ztunnel: the per-node L4 proxy.
//!
//! Not built yet (issue "ztunnel: the L4 data path"). It will accept the connections the
//! capture programs steer to its in-pod listeners (see `amesh-ebpf-loader`), carry them over
//! HBONE (HTTP/2 CONNECT inside mutual TLS, port 15008) and apply L4 policy.
#![forbid(unsafe_code)]
