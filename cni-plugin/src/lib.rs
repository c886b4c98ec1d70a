//! amesh's node integration: the chained CNI plugin (`amesh-cni`) and the node agent
//! (`amesh-node`) that decides which pods enter the mesh, captures their traffic with the
//! eBPF programs and hands them to ztunnel over ZDS.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cni;
pub mod enrollment_file;
pub mod wire;
