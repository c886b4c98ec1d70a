//! Whether a CONNECT's destination is bound to this waypoint: a service (by VIP) or a workload
//! (by address) whose `waypoint` names this waypoint. Anything else is refused: a waypoint
//! is not an open relay.

use crate::Me;
use amesh_state::{Service, State, Waypoint, WaypointDestination, Workload};
use std::{net::SocketAddr, sync::Arc};

/// What the client addressed.
#[derive(Debug, Clone)]
pub enum Destination {
    Service(Arc<Service>),
    Workload(Arc<Workload>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotBound {
    #[error("{0} is not a service or workload this mesh knows")]
    Unknown(SocketAddr),
    #[error("{target} ({what}) is not bound to this waypoint")]
    OtherWaypoint { target: SocketAddr, what: String },
}

/// Whether `waypoint` (as a binding names it) is this one.
pub fn is_me(state: &State, me: &Me, waypoint: &Waypoint) -> bool {
    match &waypoint.destination {
        WaypointDestination::Hostname {
            namespace,
            hostname,
        } => *namespace == me.namespace && *hostname == me.hostname,
        WaypointDestination::Address(ip) => {
            let my_service = state
                .service_by_vip(*ip)
                .is_some_and(|s| s.namespace == me.namespace && s.hostname == me.hostname);
            let my_pod = state
                .workload_by_ip(*ip)
                .is_some_and(|w| w.identity() == me.identity);
            my_service || my_pod
        }
    }
}

/// The destination of a CONNECT to `target`, if it is bound to this waypoint.
pub fn destination(state: &State, me: &Me, target: SocketAddr) -> Result<Destination, NotBound> {
    if let Some(s) = state.service_by_vip(target.ip()) {
        return match &s.waypoint {
            Some(w) if is_me(state, me, w) => Ok(Destination::Service(s.clone())),
            _ => Err(NotBound::OtherWaypoint {
                target,
                what: format!("service {}", s.hostname),
            }),
        };
    }
    if let Some(w) = state.workload_by_ip(target.ip()) {
        return match &w.waypoint {
            Some(wp) if is_me(state, me, wp) => Ok(Destination::Workload(w.clone())),
            _ => Err(NotBound::OtherWaypoint {
                target,
                what: format!("workload {}/{}", w.namespace, w.name),
            }),
        };
    }
    Err(NotBound::Unknown(target))
}
