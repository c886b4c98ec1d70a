//! What the images are called and what their labels say: the chart's `appVersion` (the tag
//! the chart pulls by default), the checkout's revision and commit time, the source URL.

use anyhow::{Context, Result, bail};
use std::{path::Path, process::Command};

/// What one image holds and how it starts.
#[derive(Debug)]
pub struct ImageSpec {
    /// The name the chart's `image.hub/<name>:<tag>` uses.
    pub name: &'static str,
    /// Binaries copied into `/usr/local/bin`; the first is the entrypoint.
    pub binaries: &'static [&'static str],
    pub description: &'static str,
}

/// Every image the chart runs (the waypoint's through the control plane's Deployments).
pub const IMAGES: &[ImageSpec] = &[
    ImageSpec {
        name: "amesh-node",
        // The agent installs the plugin from beside its own binary (`current_exe`).
        binaries: &["amesh-node", "amesh-cni"],
        description: "amesh node agent (capture programs, ZDS) with the amesh-cni plugin it installs on the host",
    },
    ImageSpec {
        name: "ztunnel",
        // `amesh ztunnel-config` beside it: `kubectl exec` into the pod reads its views.
        binaries: &["ztunnel", "amesh"],
        description: "amesh's per-node L4 proxy (HBONE)",
    },
    ImageSpec {
        name: "amesh-controlplane",
        binaries: &["amesh-controlplane"],
        description: "amesh control plane: delta ADS and Istio's CA protocol",
    },
    ImageSpec {
        name: "amesh-waypoint",
        binaries: &["amesh-waypoint"],
        description: "amesh's waypoint: the L7 proxy of the services bound to it",
    },
];

/// Where binaries go inside an image: on the image's `PATH`, which is how the chart's
/// `command: ["<binary>"]` finds them.
pub const BIN_DIR: &str = "/usr/local/bin";

/// What the labels say, the same for every image of one run.
#[derive(Debug)]
pub struct Meta {
    /// The chart's appVersion: tag and `org.opencontainers.image.version`.
    pub version: String,
    /// `git rev-parse HEAD`.
    pub revision: String,
    /// The commit's time, in seconds since the epoch and as RFC 3339 (UTC): file times and
    /// `created`, so that the same binaries give the same image digest.
    pub epoch: i64,
    pub created: String,
    /// `org.opencontainers.image.source`, when known.
    pub source: Option<String>,
}

impl Meta {
    /// Reads the chart and asks git; `source` overrides the `origin` remote.
    pub fn discover(root: &Path, source: Option<String>) -> Result<Self> {
        let chart = root.join("deploy/chart/amesh/Chart.yaml");
        let text = std::fs::read_to_string(&chart)
            .with_context(|| format!("reading {}", chart.display()))?;
        let version =
            app_version(&text).with_context(|| format!("{} has no appVersion", chart.display()))?;
        let revision = git(root, &["rev-parse", "HEAD"])?;
        let epoch = git(root, &["log", "-1", "--format=%ct"])?
            .parse()
            .context("git's commit time is not a number")?;
        let created = git(
            root,
            &[
                "log",
                "-1",
                "--format=%cd",
                "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
            ],
        )?;
        let source = source.or_else(|| {
            git(root, &["remote", "get-url", "origin"])
                .ok()
                .and_then(|url| public_url(&url))
        });
        Ok(Self {
            version,
            revision,
            epoch,
            created,
            source,
        })
    }

    /// The `org.opencontainers.image.*` labels of one image.
    pub fn labels(&self, spec: &ImageSpec) -> Vec<(&'static str, String)> {
        let mut labels = vec![
            ("org.opencontainers.image.title", spec.name.to_string()),
            (
                "org.opencontainers.image.description",
                spec.description.to_string(),
            ),
            ("org.opencontainers.image.version", self.version.clone()),
            ("org.opencontainers.image.revision", self.revision.clone()),
            ("org.opencontainers.image.created", self.created.clone()),
            (
                "org.opencontainers.image.licenses",
                env!("CARGO_PKG_LICENSE").to_string(),
            ),
        ];
        if let Some(source) = &self.source {
            labels.push(("org.opencontainers.image.source", source.clone()));
        }
        labels
    }
}

/// `appVersion` of a Chart.yaml (a top-level scalar, quoted or not).
fn app_version(chart: &str) -> Option<String> {
    let value = chart.lines().find_map(|l| l.strip_prefix("appVersion:"))?;
    let value = value.split(" #").next().unwrap_or_default().trim();
    let value = value.trim_matches(|c| c == '"' || c == '\'');
    (!value.is_empty()).then(|| value.to_string())
}

/// A remote URL worth putting in a label: one others can reach (not a local path), without
/// any credentials it carries.
fn public_url(url: &str) -> Option<String> {
    let url = url.trim();
    if let Some((scheme, rest)) = url.split_once("://") {
        if scheme == "file" {
            return None;
        }
        let rest = match rest.split_once('/') {
            Some((authority, path)) => {
                let host = authority.rsplit('@').next().unwrap_or(authority);
                format!("{host}/{path}")
            }
            None => rest.rsplit('@').next().unwrap_or(rest).to_string(),
        };
        return Some(format!("{scheme}://{rest}"));
    }
    // scp-like `git@host:owner/repo.git`.
    let (user_host, path) = url.split_once(':')?;
    let host = user_host.rsplit('@').next()?;
    (user_host.contains('@') && !path.starts_with('/')).then(|| format!("https://{host}/{path}"))
}

fn git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .context("running git (the labels name the checkout's revision)")?;
    if !out.status.success() {
        bail!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_version_reads_quoted_and_bare_values() {
        let chart = "name: amesh\n# The release.\nappVersion: \"0.1.0\"\nversion: 0.2.0\n";
        assert_eq!(app_version(chart).as_deref(), Some("0.1.0"));
        assert_eq!(
            app_version("appVersion: 1.2.3 # note\n").as_deref(),
            Some("1.2.3")
        );
        assert_eq!(app_version("appVersion: ''\n"), None);
        assert_eq!(
            app_version("  appVersion: 1\nversion: 1\n"),
            None,
            "not top level"
        );
    }

    #[test]
    fn public_url_drops_credentials_and_local_paths() {
        assert_eq!(
            public_url("https://user:token@git.example/amesh/amesh.git").as_deref(),
            Some("https://git.example/amesh/amesh.git")
        );
        assert_eq!(
            public_url("git@git.example:amesh/amesh.git").as_deref(),
            Some("https://git.example/amesh/amesh.git")
        );
        assert_eq!(public_url("/work/main"), None);
        assert_eq!(public_url("file:///work/main"), None);
        assert_eq!(public_url("../main"), None);
    }

    #[test]
    fn every_image_has_an_entrypoint_and_a_unique_name() {
        let mut names: Vec<_> = IMAGES.iter().map(|i| i.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), IMAGES.len());
        assert!(IMAGES.iter().all(|i| !i.binaries.is_empty()));
    }
}
