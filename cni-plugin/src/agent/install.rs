//! Putting the plugin into the node's CNI chain and keeping it there: the binary into the CNI
//! bin dir, an entry at the end of the primary conflist in the CNI conf dir. Another component
//! (the cluster's CNI restarting, an operator) may rewrite that file and drop the entry, which
//! would let new pods start outside the mesh; [`CniInstall::ensure`] puts it back, and the
//! agent calls it whenever the directory changes.

use serde_json::{Value, json};
use std::{
    io,
    path::{Path, PathBuf},
};

/// The plugin's `type` (and binary name).
pub const PLUGIN_TYPE: &str = "amesh-cni";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid CNI configuration: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Unreadable(#[from] amesh_sys::file::ReadFileError),
}

/// Largest CNI configuration file read (real ones are a few KiB).
const MAX_CONF_BYTES: u64 = 1 << 20;

/// Reads a configuration file: only a regular file, never waiting on a FIFO, bounded.
fn read_conf(path: &Path) -> Result<String, InstallError> {
    let bytes = amesh_sys::file::read_regular(path, MAX_CONF_BYTES)?;
    String::from_utf8(bytes).map_err(|_| InstallError::Invalid {
        path: path.to_path_buf(),
        reason: "not UTF-8".into(),
    })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`CniInstall::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// The entry was already in place.
    Unchanged(PathBuf),
    /// The entry was (re-)inserted into this file.
    Inserted(PathBuf),
    /// No primary configuration exists yet (the cluster's CNI has not written it).
    NoPrimary,
}

#[derive(Debug, Clone)]
pub struct CniInstall {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The plugin binary to copy into `bin_dir`.
    pub plugin_binary: PathBuf,
    /// Our entry's settings (everything but `type`).
    pub settings: serde_json::Map<String, Value>,
    /// Where the primary configuration is kept as it was before amesh first changed it.
    pub backup_dir: PathBuf,
}

impl CniInstall {
    /// Copies the plugin binary into the bin dir (atomically: a runtime never runs half a
    /// binary); a no-op when the same bytes are there.
    pub fn install_binary(&self) -> Result<(), InstallError> {
        let target = self.bin_dir.join(PLUGIN_TYPE);
        let new = std::fs::read(&self.plugin_binary).map_err(io_err(&self.plugin_binary))?;
        if std::fs::read(&target).is_ok_and(|old| old == new) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.bin_dir).map_err(io_err(&self.bin_dir))?;
        let tmp = self.bin_dir.join(format!(".{PLUGIN_TYPE}.tmp"));
        std::fs::write(&tmp, &new).map_err(io_err(&tmp))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io_err(&target))
    }

    /// The entry amesh puts at the end of the chain.
    pub fn entry(&self) -> Value {
        let mut e = self.settings.clone();
        e.insert("type".into(), PLUGIN_TYPE.into());
        Value::Object(e)
    }

    /// Makes sure the primary configuration ends with amesh's entry (exactly once, with the
    /// current settings). A single-plugin `.conf` becomes a `.conflist`.
    pub fn ensure(&self) -> Result<Ensured, InstallError> {
        let Some(primary) = primary_config(&self.conf_dir)? else {
            return Ok(Ensured::NoPrimary);
        };
        let text = read_conf(&primary)?;
        let invalid = |reason: String| InstallError::Invalid {
            path: primary.clone(),
            reason,
        };
        let mut conf: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if !conf.is_object() {
            return Err(invalid("not a JSON object".into()));
        }
        let is_list = primary.extension().is_some_and(|e| e == "conflist");
        if !is_list {
            // A single plugin: wrap it into a list, as libcni does when it loads a .conf.
            let version = conf["cniVersion"].clone();
            let name = conf["name"].clone();
            conf = json!({"cniVersion": version, "name": name, "plugins": [conf]});
        }
        let plugins = conf["plugins"]
            .as_array_mut()
            .ok_or_else(|| invalid("no \"plugins\" list".into()))?;
        let desired = self.entry();
        let ours = |p: &Value| p["type"] == PLUGIN_TYPE;
        if is_list
            && plugins.last() == Some(&desired)
            && plugins.iter().filter(|p| ours(p)).count() == 1
        {
            return Ok(Ensured::Unchanged(primary));
        }
        self.back_up(&primary, plugins.iter().any(ours))?;
        plugins.retain(|p| !ours(p));
        plugins.push(desired);
        let target = primary.with_extension("conflist");
        write_atomic(
            &target,
            &serde_json::to_vec_pretty(&conf).unwrap_or_default(),
        )?;
        if target != primary {
            std::fs::remove_file(&primary).map_err(io_err(&primary))?;
        }
        Ok(Ensured::Inserted(target))
    }

    /// Keeps the file as the cluster's CNI wrote it (before amesh's entry went in).
    fn back_up(&self, primary: &Path, has_entry: bool) -> Result<(), InstallError> {
        if has_entry {
            return Ok(());
        }
        std::fs::create_dir_all(&self.backup_dir).map_err(io_err(&self.backup_dir))?;
        let name = primary.file_name().unwrap_or_default();
        let backup = self.backup_dir.join(name);
        std::fs::copy(primary, &backup).map_err(io_err(&backup))?;
        Ok(())
    }

    /// Removes amesh's entry from every configuration and the binary from the bin dir.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>, InstallError> {
        let mut changed = Vec::new();
        for path in config_files(&self.conf_dir)? {
            let Ok(text) = read_conf(&path) else {
                continue;
            };
            let Ok(mut conf) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let Some(plugins) = conf["plugins"].as_array_mut() else {
                continue;
            };
            let before = plugins.len();
            plugins.retain(|p| p["type"] != PLUGIN_TYPE);
            if plugins.len() != before {
                write_atomic(&path, &serde_json::to_vec_pretty(&conf).unwrap_or_default())?;
                changed.push(path);
            }
        }
        let binary = self.bin_dir.join(PLUGIN_TYPE);
        match std::fs::remove_file(&binary) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(InstallError::Io {
                    path: binary,
                    source: e,
                });
            }
            _ => {}
        }
        Ok(changed)
    }
}

/// CNI configuration files, in the order runtimes consider them (by name).
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conf" || e == "conflist" || e == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The configuration the runtime uses: the first by name.
fn primary_config(dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    Ok(config_files(dir)?.into_iter().next())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), InstallError> {
    let tmp = path.with_extension("amesh-tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(name: &str, primary: Option<(&str, &str)>) -> (CniInstall, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("amesh-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let conf_dir = root.join("net.d");
        std::fs::create_dir_all(&conf_dir).expect("mkdir");
        if let Some((file, text)) = primary {
            std::fs::write(conf_dir.join(file), text).expect("write");
        }
        let binary = root.join("plugin-src");
        std::fs::write(&binary, b"#!/bin/sh\n").expect("write");
        let mut settings = serde_json::Map::new();
        settings.insert("agent_socket".into(), "/run/amesh.sock".into());
        (
            CniInstall {
                bin_dir: root.join("bin"),
                conf_dir,
                plugin_binary: binary,
                settings,
                backup_dir: root.join("backup"),
            },
            root,
        )
    }

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap"}]}"#;

    fn types(path: &Path) -> Vec<String> {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
        v["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .map(|p| p["type"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn chains_once_repairs_and_uninstalls() {
        let (install, root) = setup("chain", Some(("10-k8s.conflist", BRIDGE)));
        let primary = install.conf_dir.join("10-k8s.conflist");
        assert_eq!(
            install.ensure().expect("ensure"),
            Ensured::Inserted(primary.clone())
        );
        assert_eq!(types(&primary), ["bridge", "portmap", "amesh-cni"]);
        assert_eq!(
            install.ensure().expect("ensure"),
            Ensured::Unchanged(primary.clone())
        );
        // The original is kept as it was.
        assert_eq!(
            std::fs::read_to_string(root.join("backup/10-k8s.conflist")).expect("backup"),
            BRIDGE
        );
        // Another component rewrites the file: the entry goes back in, once.
        std::fs::write(&primary, BRIDGE).expect("rewrite");
        assert_eq!(
            install.ensure().expect("ensure"),
            Ensured::Inserted(primary.clone())
        );
        assert_eq!(types(&primary), ["bridge", "portmap", "amesh-cni"]);
        install.install_binary().expect("binary");
        assert!(install.bin_dir.join(PLUGIN_TYPE).exists());
        assert_eq!(
            install.uninstall().expect("uninstall"),
            vec![primary.clone()]
        );
        assert_eq!(types(&primary), ["bridge", "portmap"]);
        assert!(!install.bin_dir.join(PLUGIN_TYPE).exists());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list() {
        let (install, root) = setup(
            "single",
            Some((
                "05-bridge.conf",
                r#"{"cniVersion":"0.4.0","name":"k8s","type":"bridge"}"#,
            )),
        );
        let list = install.conf_dir.join("05-bridge.conflist");
        assert_eq!(
            install.ensure().expect("ensure"),
            Ensured::Inserted(list.clone())
        );
        assert_eq!(types(&list), ["bridge", "amesh-cni"]);
        assert!(!install.conf_dir.join("05-bridge.conf").exists());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn no_primary_and_invalid_primary() {
        let (install, root) = setup("none", None);
        assert_eq!(install.ensure().expect("ensure"), Ensured::NoPrimary);
        std::fs::write(install.conf_dir.join("10-x.conflist"), "{garbage").expect("write");
        let e = install.ensure().expect_err("invalid");
        assert!(e.to_string().contains("10-x.conflist"), "{e}");
        let _ = std::fs::remove_dir_all(root);
    }
}
