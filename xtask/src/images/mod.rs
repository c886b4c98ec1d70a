//! `cargo xtask images`: an OCI image for every binary the Helm chart runs, built without a
//! container engine, and optionally pushed.
//!
//! Output, under `--out` (default `$CARGO_TARGET_DIR/images`):
//! - `oci/<name>`: an OCI image layout holding `<name>` with reference `<tag>`;
//! - `<name>-<tag>.tar`: the same image as an OCI archive (`skopeo`'s `oci-archive:`).
//!
//! The tag is the chart's `appVersion`, so the chart's default `image.hub/<name>:<tag>`
//! references are what `--push HUB` writes.

mod meta;
mod oci;
mod rootfs;

use crate::{bootstrap, ebpf, paths::Paths, run::cmd};
use anyhow::{Context, Result, bail};
use meta::{IMAGES, ImageSpec, Meta};
use std::path::{Path, PathBuf};

pub const USAGE: &str =
    "usage: cargo xtask images [--dev] [--out DIR] [--push DEST [--insecure]] [--source URL]

  --dev         package the debug binaries as built (`cargo build --workspace --bins`), no
                release build: quick, for tests
  --out DIR     where the layouts and archives go (default: $CARGO_TARGET_DIR/images)
  --push DEST   copy every image to DEST/<name>:<tag>: a registry (`registry.example/amesh`,
                what the chart's image.hub then says) or `oci:DIR` (a layout per image)
  --insecure    the registry speaks plain HTTP or has an unverified certificate
  --source URL  org.opencontainers.image.source (default: the `origin` remote's URL)";

#[derive(Debug, Default)]
struct Options {
    dev: bool,
    out: Option<PathBuf>,
    push: Option<String>,
    insecure: bool,
    source: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &str| {
                it.next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))
            };
            match arg.as_str() {
                "--dev" => o.dev = true,
                "--out" => o.out = Some(PathBuf::from(value("--out")?)),
                "--push" => o.push = Some(value("--push")?),
                "--insecure" => o.insecure = true,
                "--source" => o.source = Some(value("--source")?),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown option `{other}`\n\n{USAGE}"),
            }
        }
        if o.insecure && o.push.is_none() {
            bail!("--insecure only applies to --push\n\n{USAGE}");
        }
        Ok(o)
    }
}

/// One built image, for the summary.
#[derive(Debug)]
struct Built {
    name: &'static str,
    files: usize,
    rootfs_bytes: u64,
    blob_bytes: u64,
}

pub fn images(paths: &Paths, args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    bootstrap::apt_packages()?;
    let bin_dir = if opts.dev {
        paths.target.join("debug")
    } else {
        release_build(paths)?
    };
    let meta = Meta::discover(&paths.root, opts.source.clone())?;
    if meta.source.is_none() {
        println!(
            "xtask: no --source and no public `origin` remote: the images carry no \
             org.opencontainers.image.source label"
        );
    }
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| paths.target.join("images"));
    let mut built = Vec::new();
    for spec in IMAGES {
        built.push(build_one(spec, &bin_dir, &out, &meta)?);
    }
    let _ = std::fs::remove_dir(out.join("bundles"));
    if let Some(dest) = &opts.push {
        if let Some(dir) = dest.strip_prefix("oci:") {
            // skopeo makes the layout, not the directories above it.
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        }
        for spec in IMAGES {
            let to = oci::push_destination(dest, spec.name, &meta.version);
            println!("xtask: pushing {}:{} to {to}", spec.name, meta.version);
            oci::copy(&layout_dir(&out, spec), &meta.version, &to, opts.insecure)?;
        }
    }
    summary(&built, &meta, &out, opts.dev);
    Ok(())
}

/// The release binaries of every image (the kernel programs first: the loader embeds them).
fn release_build(paths: &Paths) -> Result<PathBuf> {
    let object = ebpf::build(paths)?;
    println!("xtask: building the images' binaries (release)");
    let mut c = crate::run::cargo(paths, &object);
    c.args(["build", "--release", "--bins"]);
    for package in ["amesh-cni", "amesh-ztunnel", "amesh-controlplane"] {
        c.args(["-p", package]);
    }
    cmd(&mut c)?;
    Ok(paths.target.join("release"))
}

fn layout_dir(out: &Path, spec: &ImageSpec) -> PathBuf {
    out.join("oci").join(spec.name)
}

/// Builds `spec` into a fresh layout under `out` and writes its archive beside it.
fn build_one(spec: &'static ImageSpec, bin_dir: &Path, out: &Path, meta: &Meta) -> Result<Built> {
    let layout = layout_dir(out, spec);
    let bundle = out.join("bundles").join(spec.name);
    for old in [&layout, &bundle] {
        if old.exists() {
            std::fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    std::fs::create_dir_all(out.join("oci"))?;
    std::fs::create_dir_all(out.join("bundles"))?;
    println!("xtask: building image {}:{}", spec.name, meta.version);
    let staged = oci::build(&layout, &bundle, spec, meta, |rootfs| {
        rootfs::stage(spec, bin_dir, rootfs, meta.epoch)
    })?;
    std::fs::remove_dir_all(&bundle).with_context(|| format!("removing {}", bundle.display()))?;
    let archive = out.join(format!("{}-{}.tar", spec.name, meta.version));
    let _ = std::fs::remove_file(&archive);
    let dest = format!("oci-archive:{}:{}", archive.display(), meta.version);
    oci::copy(&layout, &meta.version, &dest, false)?;
    Ok(Built {
        name: spec.name,
        files: staged.files.len(),
        rootfs_bytes: staged.bytes,
        blob_bytes: oci::blob_bytes(&layout)?,
    })
}

fn summary(built: &[Built], meta: &Meta, out: &Path, dev: bool) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let profile = if dev { "debug binaries" } else { "release" };
    println!(
        "xtask: images ({profile}, revision {}) in {}:",
        meta.revision,
        out.display()
    );
    println!(
        "  {:<28} {:>5} {:>12} {:>16}",
        "image", "files", "rootfs MiB", "compressed MiB"
    );
    for b in built {
        println!(
            "  {:<28} {:>5} {:>12.1} {:>16.1}",
            format!("{}:{}", b.name, meta.version),
            b.files,
            mib(b.rootfs_bytes),
            mib(b.blob_bytes)
        );
    }
}
