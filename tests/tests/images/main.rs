//! `cargo xtask images`: the OCI images of the chart's binaries. Each test builds them from
//! the debug binaries (`--dev`, seconds, no release build), unpacks them with umoci as a
//! runtime would, and runs their entrypoints chrooted in the unpacked root: they start, hold
//! exactly what their binaries load, fail with the loader's error when a library is missing,
//! are the images the chart's default values name, and arrive unchanged in a registry.

mod support;

use std::{collections::BTreeSet, path::Path};
use support::*;

/// What each image's `--help` must say (clap's `about`), one row per image the chart runs.
const HELP: &[(&str, &str)] = &[
    ("amesh-node", "amesh's node agent"),
    ("ztunnel", "amesh's per-node L4 proxy"),
    ("amesh-controlplane", "amesh's control plane"),
    ("amesh-waypoint", "amesh's waypoint"),
];

const LOADER_ERROR: &str = "error while loading shared libraries";

#[test]
fn every_entrypoint_answers_help_from_its_unpacked_root() {
    require_root();
    let built = build(&[]);
    let images = built.images();
    let names: BTreeSet<&str> = images.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = HELP.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, expected,
        "the images built, against this test's table"
    );
    for (name, about) in HELP {
        let bundle = built.unpack(&images[*name]);
        assert_eq!(
            bundle.args,
            [format!("/usr/local/bin/{name}")],
            "{name}'s entrypoint"
        );
        let out = bundle.help();
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{name} --help in its image: {}\n{stdout}{}",
            out.status,
            text(&out.stderr)
        );
        assert!(
            stdout.contains(about) && stdout.contains("Usage:"),
            "{name} --help says: {stdout}"
        );
    }
    // The plugin the agent installs onto the host runs from the agent's image too.
    let node = built.unpack(&images["amesh-node"]);
    let out = node.run(
        &["/usr/local/bin/amesh-cni".into()],
        &[("CNI_COMMAND", "VERSION")],
        br#"{"cniVersion":"1.0.0"}"#,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"supportedVersions\""),
        "amesh-cni VERSION in the amesh-node image: {} {stdout} {}",
        out.status,
        text(&out.stderr)
    );
}

/// The paths the image's own loader maps for `binary` (`ld.so --list`, run in the image).
fn loaded_in_image(bundle: &support::Bundle, loader: &str, binary: &str) -> BTreeSet<String> {
    let out = bundle.run(&[loader.into(), "--list".into(), binary.into()], &[], b"");
    let listing = text(&out.stdout);
    assert!(
        out.status.success(),
        "{loader} --list {binary}: {} {}",
        out.status,
        text(&out.stderr)
    );
    assert!(!listing.contains("not found"), "{binary}: {listing}");
    listing
        .lines()
        .filter_map(|l| {
            let target = l.split("=>").last()?.trim();
            let path = target.split(" (0x").next()?.trim();
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

#[test]
fn images_hold_their_binaries_what_those_load_and_the_ca_bundle_only() {
    require_root();
    let built = build(&[]);
    for (name, image) in built.images() {
        let bundle = built.unpack(&image);
        let files = bundle.files();
        let loader = files
            .iter()
            .find(|f| {
                Path::new(f)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
            })
            .unwrap_or_else(|| panic!("{name} has no dynamic loader: {files:?}"))
            .clone();
        let binaries: Vec<&String> = files
            .iter()
            .filter(|f| f.starts_with("/usr/local/bin/"))
            .collect();
        let mut expected: BTreeSet<String> = binaries.iter().map(|b| b.to_string()).collect();
        for binary in &binaries {
            expected.extend(loaded_in_image(&bundle, &loader, binary));
        }
        expected.insert("/etc/ssl/certs/ca-certificates.crt".into());
        let actual: BTreeSet<String> = files.iter().cloned().collect();
        assert_eq!(
            actual, expected,
            "{name}: binaries, loaded libraries, CA bundle"
        );
        let ca = std::fs::read(bundle.rootfs.join("etc/ssl/certs/ca-certificates.crt"))
            .expect("the CA bundle");
        assert!(
            text(&ca).contains("BEGIN CERTIFICATE"),
            "{name}'s CA bundle has no certificate"
        );

        let config = inspect(&format!("oci:{}", image.oci_ref()), true);
        let labels = &config["config"]["Labels"];
        let label = |k: &str| labels[format!("org.opencontainers.image.{k}")].as_str();
        assert_eq!(label("title"), Some(name.as_str()), "{name}: {labels}");
        assert_eq!(label("source"), Some(SOURCE), "{name}: {labels}");
        assert_eq!(
            label("revision"),
            Some(built.head.as_str()),
            "{name}: {labels}"
        );
        assert_eq!(label("version"), Some(app_version().as_str()), "{name}");
        assert_eq!(
            image.tag,
            app_version(),
            "{name}'s tag is the chart's appVersion"
        );
        assert_eq!(config["os"], "linux", "{name}");
        assert!(
            bundle
                .env
                .iter()
                .any(|(k, v)| k == "PATH" && v == "/usr/local/bin"),
            "{name}'s PATH: {:?}",
            bundle.env
        );
    }
    assert!(
        built.stdout.contains("compressed MiB"),
        "xtask reports the sizes: {}",
        built.stdout
    );
}

#[test]
fn a_missing_library_stops_the_entrypoint_with_the_loaders_error() {
    require_root();
    let built = build(&[]);
    for (name, image) in built.images() {
        let bundle = built.unpack(&image);
        let libraries: Vec<String> = bundle
            .files()
            .into_iter()
            .filter(|f| f.contains(".so"))
            .collect();
        assert!(libraries.len() >= 2, "{name}: {libraries:?}");
        for lib in &libraries {
            let path = bundle.rootfs.join(lib.trim_start_matches('/'));
            let hidden = path.with_extension("hidden");
            std::fs::rename(&path, &hidden).expect("hiding a library");
            let out = bundle.help();
            std::fs::rename(&hidden, &path).expect("restoring the library");
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "{name} ran without {lib}");
            let file = Path::new(lib)
                .file_name()
                .expect("a file")
                .to_string_lossy();
            if file.starts_with("ld-linux") {
                // Without its interpreter the kernel cannot even start the binary.
                assert!(
                    stderr.contains("No such file or directory"),
                    "{name} without {lib}: {stderr}"
                );
            } else {
                assert!(
                    stderr.contains(&format!("{LOADER_ERROR}: {file}")),
                    "{name} without {lib}: {stderr}"
                );
            }
        }
        assert!(bundle.help().status.success(), "{name} after restoring");
    }
}

/// Every container of the chart's default rendering: (image, command[0]).
fn chart_containers() -> Vec<(String, String)> {
    let python = cache().join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (helm-python-sdk renders the chart)",
        python.display()
    );
    let out = std::process::Command::new(&python)
        .arg(format!("{ROOT}/deploy/render.py"))
        .output()
        .expect("running deploy/render.py");
    assert!(out.status.success(), "render.py: {}", text(&out.stderr));
    let rendering = text(&out.stdout);
    let mut containers = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rendering) {
        let doc: serde_json::Value =
            serde::Deserialize::deserialize(doc).expect("the rendering is YAML");
        let pod = &doc["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for c in pod[list].as_array().into_iter().flatten() {
                let image = c["image"].as_str().expect("a container has an image");
                let command = c["command"][0].as_str().expect("the chart sets command");
                containers.push((image.to_string(), command.to_string()));
                // The control plane deploys waypoints with the image its flag names; their
                // command is the image's entrypoint.
                let args: Vec<&str> = c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str())
                    .collect();
                if let Some(w) = args.windows(2).find(|w| w[0] == "--waypoint-image") {
                    containers.push((w[1].to_string(), "amesh-waypoint".to_string()));
                }
            }
        }
    }
    assert!(!containers.is_empty(), "the rendering has no pods");
    containers
}

#[test]
fn the_charts_default_image_references_are_the_built_images() {
    require_root();
    let built = build(&[]);
    let images = built.images();
    let mut referenced = BTreeSet::new();
    let mut hubs = BTreeSet::new();
    for (reference, command) in chart_containers() {
        let (hub, name_tag) = reference.rsplit_once('/').expect("hub/name:tag");
        let (name, tag) = name_tag.split_once(':').expect("name:tag");
        let image = images
            .get(name)
            .unwrap_or_else(|| panic!("the chart runs {reference}; no image {name} was built"));
        assert_eq!(
            tag, image.tag,
            "{reference}: the chart's tag against the built one"
        );
        hubs.insert(hub.to_string());
        referenced.insert(name.to_string());
        // The runtime finds the chart's command on the image's PATH.
        let bundle = built.unpack(image);
        let bin = bundle.rootfs.join("usr/local/bin").join(&command);
        assert!(
            bin.is_file(),
            "{reference}: command {command} is not in /usr/local/bin"
        );
        if command == "amesh-node" {
            // The agent installs the plugin from beside its own binary.
            assert!(
                bin.with_file_name("amesh-cni").is_file(),
                "amesh-cni is not beside amesh-node in {reference}"
            );
        }
    }
    let built_names: BTreeSet<String> = images.keys().cloned().collect();
    assert_eq!(
        referenced, built_names,
        "images the chart runs against those built"
    );
    assert_eq!(hubs.len(), 1, "one image.hub: {hubs:?}");
}

#[test]
fn push_copies_every_image_unchanged_to_a_registry() {
    require_root();
    require_tool("skopeo", "Debian's skopeo; run `cargo xtask setup`");
    let registry_scratch = Scratch::new();
    let registry = Registry::start(&registry_scratch);
    let hub = format!("{}/amesh", registry.addr);
    let built = build(&["--push", &hub, "--insecure"]);
    for (name, image) in built.images() {
        let local = inspect(&format!("oci:{}", image.oci_ref()), false);
        let pushed = inspect(&format!("docker://{hub}/{name}:{}", image.tag), false);
        assert_eq!(
            pushed["Digest"], local["Digest"],
            "{name}: the registry holds the manifest that was built"
        );
        assert_eq!(
            pushed["Labels"]["org.opencontainers.image.revision"],
            built.head.as_str(),
            "{name}"
        );
    }
}
