//! An image's root file system: the binaries (debug info stripped), exactly the shared
//! libraries the dynamic loader maps for them (the loader included), and the CA bundle.
//! Nothing else: no shell, no package manager.

use super::meta::{BIN_DIR, ImageSpec};
use crate::run::cmd;
use anyhow::{Context, Result, bail};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

/// Debian's bundle of the system's trusted roots (package `ca-certificates`).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What went into a root file system.
#[derive(Debug)]
pub struct Staged {
    /// Absolute paths inside the image.
    pub files: Vec<PathBuf>,
    /// Their total size in bytes (uncompressed).
    pub bytes: u64,
}

/// Fills `rootfs` (an empty directory) for `spec` from the binaries in `bin_dir`, with every
/// file and directory dated `epoch`.
pub fn stage(spec: &ImageSpec, bin_dir: &Path, rootfs: &Path, epoch: i64) -> Result<Staged> {
    let mut files = Vec::new();
    let mut libraries = BTreeSet::new();
    for name in spec.binaries {
        let built = bin_dir.join(name);
        if !built.is_file() {
            bail!(
                "{} is missing: build it first (`cargo build --workspace --bins` for --dev)",
                built.display()
            );
        }
        libraries.extend(needed_libraries(&built)?);
        let inside = Path::new(BIN_DIR).join(name);
        let dest = place(rootfs, &inside)?;
        // The symbol table stays (names in backtraces); the DWARF goes.
        cmd(Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&dest)
            .arg(&built))
        .context("stripping debug info (`strip` is in Debian's binutils)")?;
        set_mode(&dest, 0o755)?;
        files.push(inside);
    }
    for lib in &libraries {
        let dest = place(rootfs, lib)?;
        // A copy of what the path resolves to: the loader opens these paths, whatever
        // symlinks lead to them on the build host.
        std::fs::copy(lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
        set_mode(&dest, 0o755)?;
        files.push(lib.clone());
    }
    let ca = Path::new(CA_BUNDLE);
    let dest = place(rootfs, ca)?;
    std::fs::copy(ca, &dest).with_context(|| {
        format!("copying {CA_BUNDLE} (install Debian's ca-certificates: `cargo xtask setup`)")
    })?;
    set_mode(&dest, 0o644)?;
    files.push(ca.to_path_buf());
    let mut bytes = 0;
    for f in &files {
        bytes += std::fs::metadata(rootfs.join(strip_root(f)))?.len();
    }
    date_tree(rootfs, epoch)?;
    Ok(Staged { files, bytes })
}

/// The shared objects `binary` loads, as the dynamic loader resolves them (`ldd`):
/// transitively, with the loader itself; none for a static binary.
pub fn needed_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian's libc-bin)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), stderr.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("libraries of {}", binary.display()))
}

/// The paths in `ldd` output. A library the loader cannot find fails the build: the image
/// would not start.
fn parse_ldd(out: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((soname, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("the loader cannot find {}", soname.trim());
                }
                target
            }
            // The loader (`/lib64/ld-linux-x86-64.so.2 (0x...)`) or the vDSO (no path).
            None => line,
        };
        let path = target.split(" (0x").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if !path.starts_with("linux-vdso") && !path.starts_with("linux-gate") {
            bail!("unexpected ldd line: {line:?}");
        }
    }
    Ok(libs)
}

fn strip_root(inside: &Path) -> &Path {
    inside.strip_prefix("/").unwrap_or(inside)
}

/// Where `inside` lives under `rootfs`, its parent directories made.
fn place(rootfs: &Path, inside: &Path) -> Result<PathBuf> {
    let dest = rootfs.join(strip_root(inside));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        for dir in parent.ancestors().take_while(|d| d.starts_with(rootfs)) {
            set_mode(dir, 0o755)?;
        }
    }
    Ok(dest)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Dates every entry under `root` (and `root`) at `epoch`: the layer's tar records mtimes.
fn date_tree(root: &Path, epoch: i64) -> Result<()> {
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch.max(0).unsigned_abs());
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
        let f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        f.set_modified(when)
            .with_context(|| format!("dating {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd1d5f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f157301e000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f157161e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1573051000)
";
        let libs = parse_ldd(out).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_library_the_loader_cannot_find_fails() {
        let out = "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n";
        let err = parse_ldd(out).unwrap_err().to_string();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn static_binaries_need_nothing() {
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn this_binary_loads_libc_through_the_loader() {
        let exe = std::env::current_exe().unwrap();
        let libs = needed_libraries(&exe).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter().all(|l| l.is_absolute() && l.exists()),
            "{libs:?}"
        );
    }
}
