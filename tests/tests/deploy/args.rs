//! Every container runs one of amesh's binaries with arguments that binary accepts: each
//! is started with the manifest's arguments followed by `--help`, which clap only reaches
//! (and exits 0 on) when every argument before it is known. A renamed flag fails here, not
//! in a cluster.

use super::*;
use amesh_testbed::probe::sibling_binary;

fn containers(objects: &[Object]) -> Vec<Container> {
    let mut out = Vec::new();
    for d in daemonsets(objects).values() {
        let spec = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        out.extend(spec.map(|s| s.containers.clone()).unwrap_or_default());
    }
    for d in deployments(objects).values() {
        let spec = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        out.extend(spec.map(|s| s.containers.clone()).unwrap_or_default());
    }
    out
}

#[test]
fn containers_pass_arguments_their_binaries_accept() {
    let all = containers(&manifests());
    assert_eq!(all.len(), 3, "agent, ztunnel, control plane");
    for c in all {
        let command = c.command.clone().unwrap_or_default();
        let [binary] = command.as_slice() else {
            panic!(
                "{}: command should be the binary alone: {command:?}",
                c.name
            );
        };
        // Kubernetes expands $(VAR) from the container's env; any value will do here.
        let args: Vec<String> = c
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.replace("$(NODE_NAME)", "node-1"))
            .collect();
        let out = Command::new(sibling_binary(binary))
            .args(&args)
            .arg("--help")
            .output()
            .expect("start the binary");
        assert!(
            out.status.success(),
            "{}: `{binary} {}` is refused: {}",
            c.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
