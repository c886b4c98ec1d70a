//! Per-run names, and the sweep of objects left by runs that were killed outright.

use std::sync::atomic::{AtomicU32, Ordering};

/// Every object a bed makes starts with this.
pub const PREFIX_ROOT: &str = "amesh-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A new per-run prefix: `amesh-<pid>-<n>`.
pub fn new_prefix() -> String {
    format!(
        "{PREFIX_ROOT}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid a prefixed name was made by, if it has our form.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX_ROOT)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// True when `name` was made by a process that no longer exists.
pub fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_name_their_process() {
        let p = new_prefix();
        assert_eq!(owner_pid(&p), Some(std::process::id()));
        assert!(!is_stale(&p));
        assert_ne!(new_prefix(), p);
        assert_eq!(owner_pid("amesh"), None);
        assert_eq!(owner_pid("amesh-demo"), None);
        assert!(is_stale("amesh-4294967295-0-a"));
    }
}
