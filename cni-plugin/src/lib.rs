//! amesh's node integration: the chained CNI plugin (`amesh-cni`) and the node agent
//! (`amesh-node`). Not built yet (see the node-integration issue); the agent will own the
//! capture programs through `amesh-ebpf-loader` and enroll pods by namespace label.
#![forbid(unsafe_code)]
