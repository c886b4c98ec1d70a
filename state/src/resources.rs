//! The last good version of every resource, by resource name: what the xDS handlers fill one
//! response at a time, what the local file fills whole, and what is published as a [`State`].

use super::{Service, State, Workload};
use amesh_policy::Authorization;
use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

#[derive(Debug, Default)]
pub struct Resources {
    workloads: HashMap<String, Workload>,
    services: HashMap<String, Service>,
    policies: HashMap<String, Authorization>,
}

impl Resources {
    /// The state these resources describe.
    pub fn state(&self) -> State {
        State::new(
            self.workloads.values().cloned().collect(),
            self.services.values().cloned().collect(),
        )
        .with_policies(self.policies.values().cloned().collect())
    }

    /// A name is one resource: one that turns from workload into service (or back) leaves
    /// nothing of its old kind behind.
    pub fn insert_workload(&mut self, name: String, w: Workload) {
        self.services.remove(&name);
        self.workloads.insert(name, w);
    }

    pub fn insert_service(&mut self, name: String, s: Service) {
        self.workloads.remove(&name);
        self.services.insert(name, s);
    }

    /// Removes the workload or service of that name.
    pub fn remove_address(&mut self, name: &str) {
        self.workloads.remove(name);
        self.services.remove(name);
    }

    pub fn insert_policy(&mut self, name: String, p: Authorization) {
        self.policies.insert(name, p);
    }

    pub fn remove_policy(&mut self, name: &str) {
        self.policies.remove(name);
    }
}

/// The resources, shared by the two handlers and the publisher. A panic elsewhere while
/// holding the lock leaves whole maps behind (every change is one insert or remove), so a
/// poisoned lock is still good to use.
pub fn lock(resources: &Mutex<Resources>) -> MutexGuard<'_, Resources> {
    resources.lock().unwrap_or_else(PoisonError::into_inner)
}
