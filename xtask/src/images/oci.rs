//! The OCI side, without a container engine: Debian's `umoci` writes the image layout,
//! `skopeo` copies it into an archive or a registry.

use super::meta::{BIN_DIR, ImageSpec, Meta};
use crate::run::cmd;
use anyhow::{Context, Result};
use std::{path::Path, process::Command};

/// umoci's `--rootless` for a build that is not root: the layer then records the files as
/// root's all the same.
fn rootless() -> bool {
    crate::run::output(Command::new("id").arg("-u")).is_none_or(|u| u.trim() != "0")
}

fn umoci() -> Command {
    Command::new("umoci")
}

/// `layout:tag`, the form umoci and skopeo's `oci:` transport take.
pub fn image_ref(layout: &Path, tag: &str) -> String {
    format!("{}:{tag}", layout.display())
}

/// A one-layer image at `layout:tag` whose root file system is what `fill` puts into the
/// directory it is given; configured from `spec` and labelled from `meta`.
pub fn build<T>(
    layout: &Path,
    bundle: &Path,
    spec: &ImageSpec,
    meta: &Meta,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let image = image_ref(layout, &meta.version);
    cmd(umoci().args(["init", "--layout"]).arg(layout))
        .context("umoci init (Debian's umoci, which `cargo xtask setup` installs)")?;
    cmd(umoci().args(["new", "--image", &image]))?;
    // An empty image unpacked gives a bundle whose rootfs `repack` turns into the layer
    // (`umoci insert` of Debian's 0.4.7 writes a tar without its end-of-archive blocks).
    let mut unpack = umoci();
    unpack.args(["unpack", "--image", &image]);
    if rootless() {
        unpack.arg("--rootless");
    }
    cmd(unpack.arg(bundle))?;
    let filled = fill(&bundle.join("rootfs"))?;
    cmd(umoci()
        .args(["repack", "--image", &image])
        .args(["--history.created", &meta.created])
        .args(["--history.created_by", "cargo xtask images"])
        .arg(bundle))?;
    let entrypoint = format!("{BIN_DIR}/{}", spec.binaries[0]);
    let mut config = umoci();
    config
        .args(["config", "--image", &image, "--no-history"])
        .args(["--created", &meta.created])
        .args(["--os", "linux", "--architecture", goarch()])
        .args(["--config.entrypoint", &entrypoint])
        .args(["--config.env", &format!("PATH={BIN_DIR}")])
        .args(["--config.workingdir", "/"]);
    for (key, value) in meta.labels(spec) {
        config.args(["--config.label", &format!("{key}={value}")]);
    }
    cmd(&mut config)?;
    cmd(umoci().args(["gc", "--layout"]).arg(layout))?;
    Ok(filled)
}

/// The OCI name of this machine's architecture (the images hold its binaries).
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The image's size as pulled: every blob of its layout (manifest, config, the gzipped
/// layer; the layout holds one image, garbage collected).
pub fn blob_bytes(layout: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(layout.join("blobs/sha256"))? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// Copies `layout:tag` to a skopeo destination (`oci-archive:`, `docker://`, `oci:`).
pub fn copy(layout: &Path, tag: &str, dest: &str, insecure: bool) -> Result<()> {
    let mut c = Command::new("skopeo");
    c.args(["copy", "--quiet"]);
    if insecure && dest.starts_with("docker://") {
        // Plain HTTP or an unverified certificate (kind's and k3d's localhost registries).
        c.arg("--dest-tls-verify=false");
    }
    c.arg(format!("oci:{}", image_ref(layout, tag))).arg(dest);
    cmd(&mut c).with_context(|| {
        format!("skopeo copy to {dest} (Debian's skopeo, which `cargo xtask setup` installs)")
    })
}

/// Where `--push DEST` puts image `name:tag`: a registry and path (`registry.example/amesh`,
/// `docker://` optional) gets `docker://DEST/name:tag`, the reference the chart pulls with
/// `image.hub=DEST`; `oci:DIR` gets the OCI layout `DIR/name` with reference `tag`.
pub fn push_destination(dest: &str, name: &str, tag: &str) -> String {
    if let Some(dir) = dest.strip_prefix("oci:") {
        return format!("oci:{}/{name}:{tag}", dir.trim_end_matches('/'));
    }
    let hub = dest.strip_prefix("docker://").unwrap_or(dest);
    format!("docker://{}/{name}:{tag}", hub.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_destinations_follow_the_charts_hub_name_tag() {
        assert_eq!(
            push_destination("localhost:5000", "ztunnel", "0.1.0"),
            "docker://localhost:5000/ztunnel:0.1.0"
        );
        assert_eq!(
            push_destination("docker://registry.example/amesh/", "amesh-node", "1.0"),
            "docker://registry.example/amesh/amesh-node:1.0"
        );
        assert_eq!(
            push_destination("oci:/tmp/out/", "amesh-controlplane", "0.1.0"),
            "oci:/tmp/out/amesh-controlplane:0.1.0"
        );
    }
}
