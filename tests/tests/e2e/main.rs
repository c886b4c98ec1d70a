//! End-to-end tests: real eBPF programs in the real kernel, pods made of network namespaces,
//! real processes. They need root (CI runs as root) and fail, never skip, without it.

mod capture_dns;
mod capture_inbound;
mod capture_outbound;
mod lifecycle;
mod privileges_and_logs;
mod support;
