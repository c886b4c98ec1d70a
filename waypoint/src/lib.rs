//! amesh's waypoint: the L7 proxy. Not built yet; it will terminate HBONE streams sent to it,
//! apply routes and L7 policy, and re-originate HBONE to the chosen endpoint.
#![forbid(unsafe_code)]
