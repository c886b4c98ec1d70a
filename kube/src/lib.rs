//! What both of amesh's Kubernetes-facing programs (the control plane and the node agent) need
//! of Kubernetes, so that they decide alike and neither compiles the other:
//! - [`enrollment`]: Istio's ambient enrolment rule, its labels, and the node's decision;
//! - [`source`]: Kubernetes YAML parsed into the objects the mesh reads;
//! - [`dir_source`]: a watched directory of such YAML, file by file, keeping last good state;
//! - [`yaml_guard`]: the linear pre-check that keeps pathological YAML from the parser;
//! - [`driver`]: drives a kube-rs reflector stream, poking a `Notify` on every change;
//! - [`workload_name`]: the owning workload and canonical names istiod gives a pod.
#![forbid(unsafe_code)]

pub mod dir_source;
pub mod driver;
pub mod enrollment;
pub mod networking;
pub mod source;
pub mod workload_name;
pub mod yaml_guard;
