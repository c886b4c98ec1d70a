//! The plugin's logic: validate the call, ask the node agent, and turn the answer into a
//! result or a CNI error object. Pure over its inputs (environment, stdin), so tests drive it.
//!
//! Fail closed: a pod in a namespace that must be in the mesh does not start when the agent
//! cannot enroll it or cannot be reached. Pods that need no mesh never wait on the agent.

use crate::{
    cni::{CniError, PluginConf, SUPPORTED_VERSIONS, conf::parse_args, error::code, kube},
    enrollment_file::EnrollmentFile,
    wire::{Command, PodRequest, Reply},
};
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

/// The plugin's environment (`CNI_*`), read once.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }
}

/// What to print on stdout and whether the call succeeded, plus a line for the log file.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub ok: bool,
    pub log: String,
}

impl Outcome {
    fn ok(stdout: String, log: impl Into<String>) -> Self {
        Self {
            stdout,
            ok: true,
            log: log.into(),
        }
    }

    fn err(e: CniError) -> Self {
        Self {
            stdout: e.to_json(),
            ok: false,
            log: e.to_string(),
        }
    }
}

/// Runs one plugin invocation.
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    match env.command.as_str() {
        "VERSION" => Outcome::ok(version_json(stdin), "VERSION"),
        "" => Outcome::err(CniError::new(
            "1.0.0",
            code::INVALID_ENVIRONMENT,
            "CNI_COMMAND is not set",
            "amesh-cni is a CNI plugin; a container runtime calls it",
        )),
        command => {
            let conf = match PluginConf::parse(stdin) {
                Ok(c) => c,
                // DEL never fails a teardown, not even on a configuration it cannot read.
                Err(e) if command == "DEL" => {
                    return Outcome::ok(String::new(), format!("DEL ignored: {e}"));
                }
                Err(e) => return Outcome::err(e),
            };
            match command {
                "ADD" | "DEL" | "CHECK" => pod_command(env, &conf),
                // STATUS (1.1): the plugin itself is always usable; an agent outage only
                // blocks pods that must be in the mesh, at their ADD.
                "STATUS" => Outcome::ok(String::new(), "STATUS"),
                // GC (1.1): the agent reconciles its own state from the cluster.
                "GC" => Outcome::ok(String::new(), "GC"),
                other => Outcome::err(CniError::new(
                    &conf.cni_version,
                    code::INVALID_ENVIRONMENT,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "expected ADD, DEL, CHECK, STATUS, GC or VERSION",
                )),
            }
        }
    }
}

fn version_json(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".into());
    serde_json::json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

fn pod_command(env: &Env, conf: &PluginConf) -> Outcome {
    let command = match env.command.as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        _ => Command::Check,
    };
    let request = match build_request(env, conf, command) {
        Ok(r) => r,
        // DEL never fails a teardown, even on a malformed call.
        Err(e) if command == Command::Del => {
            return Outcome::ok(String::new(), format!("DEL ignored: {e}"));
        }
        Err(e) => return Outcome::err(e),
    };
    let who = format!(
        "{:?} {}/{} container={}",
        command, request.pod_namespace, request.pod_name, request.container_id
    );
    // ADD returns prevResult unchanged; CHECK returns nothing on success.
    let result = match command {
        Command::Add => prev_result_json(conf),
        _ => String::new(),
    };
    if conf.excluded_namespaces.contains(&request.pod_namespace) {
        return Outcome::ok(result, format!("{who}: namespace excluded from the mesh"));
    }
    let reply = ask_agent(conf, &request);
    match (command, reply) {
        (Command::Del, Ok(_)) => Outcome::ok(String::new(), format!("{who}: released")),
        (Command::Del, Err(e)) => Outcome::ok(
            String::new(),
            format!("{who}: agent unreachable ({e}); it releases the pod when it reconciles"),
        ),
        (_, Ok(Reply::Enrolled)) => Outcome::ok(result, format!("{who}: enrolled")),
        (_, Ok(Reply::NotInMesh { reason })) => {
            Outcome::ok(result, format!("{who}: not in the mesh ({reason})"))
        }
        (_, Ok(Reply::Released)) => Outcome::ok(result, format!("{who}: released")),
        (Command::Add, Ok(Reply::Failed { message })) => Outcome::err(CniError::new(
            &conf.cni_version,
            code::ENROLLMENT_FAILED,
            "the pod must be in the mesh but could not be enrolled",
            message,
        )),
        (_, Ok(Reply::Failed { message })) => Outcome::err(CniError::new(
            &conf.cni_version,
            code::NOT_ENROLLED,
            "the pod must be in the mesh but is not enrolled",
            message,
        )),
        (_, Err(AgentError::Unreachable(e))) => agent_down(conf, &request, &who, result, e),
        // The agent took the call but did not answer in time: it may still be enrolling,
        // so the pod must not start around the mesh; the runtime retries.
        (_, Err(AgentError::NoAnswer(e))) => Outcome::err(CniError::new(
            &conf.cni_version,
            code::TRY_AGAIN_LATER,
            "the amesh node agent did not answer in time",
            e,
        )),
    }
}

/// The agent cannot be asked: refuse pods its last word puts in the mesh (or when there is
/// no last word), let the others through.
fn agent_down(
    conf: &PluginConf,
    request: &PodRequest,
    who: &str,
    result: String,
    error: String,
) -> Outcome {
    let fail = |details: String| {
        Outcome::err(CniError::new(
            &conf.cni_version,
            code::AGENT_UNREACHABLE,
            "the amesh node agent is unreachable and the pod may have to be in the mesh",
            details,
        ))
    };
    // The pod and its namespace as the API shows them now (labels set during the outage,
    // a pod opting in on its own); the agent's last word only when the API cannot say.
    let mut error = error;
    if let Some(access) = &conf.kubernetes {
        let timeout = Duration::from_millis(conf.timeout_ms.min(5_000));
        match kube::must_enroll(
            access,
            &request.pod_namespace,
            &request.pod_name,
            &conf.excluded_namespaces,
            timeout,
        ) {
            Ok(true) => {
                return fail(format!(
                    "{error}; the Kubernetes API puts {}/{} in the mesh",
                    request.pod_namespace, request.pod_name
                ));
            }
            Ok(false) => {
                return Outcome::ok(
                    result,
                    format!(
                        "{who}: agent unreachable ({error}); not in the mesh per the Kubernetes API"
                    ),
                );
            }
            Err(e) => error = format!("{error}; the Kubernetes API cannot say ({e})"),
        }
    }
    let Some(path) = &conf.enrollment_file else {
        return fail(format!(
            "{error}; no enrollment_file configured to decide without it"
        ));
    };
    match EnrollmentFile::read(path) {
        Ok(file) if file.may_enroll(&request.pod_namespace) => fail(format!(
            "{error}; namespace {} is ambient (per {})",
            request.pod_namespace,
            path.display()
        )),
        Ok(_) => Outcome::ok(
            result,
            format!("{who}: agent unreachable ({error}); namespace not ambient, not enrolled"),
        ),
        Err(e) => fail(format!("{error}; {e}")),
    }
}

fn build_request(env: &Env, conf: &PluginConf, command: Command) -> Result<PodRequest, CniError> {
    let invalid = |msg: &str, details: String| {
        CniError::new(&conf.cni_version, code::INVALID_ENVIRONMENT, msg, details)
    };
    let args: BTreeMap<String, String> =
        parse_args(&env.args).map_err(|e| invalid("CNI_ARGS is malformed", e))?;
    let need = |k: &str| {
        args.get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                invalid(
                    "CNI_ARGS lacks the pod's identity",
                    format!("{k} is missing (a Kubernetes runtime passes it)"),
                )
            })
    };
    if env.container_id.is_empty() {
        return Err(invalid(
            "CNI_CONTAINERID is not set",
            "required for ADD, DEL and CHECK".into(),
        ));
    }
    if command != Command::Del && env.netns.is_empty() {
        return Err(invalid(
            "CNI_NETNS is not set",
            "required for ADD and CHECK".into(),
        ));
    }
    let ips = if command == Command::Del {
        conf.prev_ips().unwrap_or_default()
    } else {
        conf.prev_ips()?
    };
    Ok(PodRequest {
        command,
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        pod_namespace: need("K8S_POD_NAMESPACE")?,
        pod_name: need("K8S_POD_NAME")?,
        pod_uid: args.get("K8S_POD_UID").cloned().unwrap_or_default(),
        ips,
    })
}

/// `prevResult`, unchanged, in the configuration's version (what a chained plugin returns).
fn prev_result_json(conf: &PluginConf) -> String {
    let mut prev = conf
        .prev_result
        .clone()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(o) = prev.as_object_mut() {
        o.insert("cniVersion".into(), conf.cni_version.clone().into());
    }
    prev.to_string()
}

/// Why the agent gave no verdict.
#[derive(Debug)]
enum AgentError {
    /// Nobody listens: the agent is down.
    Unreachable(String),
    /// It took the call but gave no (usable) answer.
    NoAnswer(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Unreachable(e) | AgentError::NoAnswer(e) => f.write_str(e),
        }
    }
}

fn ask_agent(conf: &PluginConf, request: &PodRequest) -> Result<Reply, AgentError> {
    use AgentError::{NoAnswer, Unreachable};
    let timeout = Duration::from_millis(conf.timeout_ms);
    let stream = UnixStream::connect(&conf.agent_socket).map_err(|e| {
        Unreachable(format!(
            "connecting to {}: {e}",
            conf.agent_socket.display()
        ))
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| NoAnswer(e.to_string()))?;
    let mut line = serde_json::to_string(request).map_err(|e| NoAnswer(e.to_string()))?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| NoAnswer(format!("sending to the agent: {e}")))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| {
            NoAnswer(format!(
                "waiting for the agent ({} ms): {e}",
                conf.timeout_ms
            ))
        })?;
    serde_json::from_str(&answer)
        .map_err(|e| NoAnswer(format!("the agent's answer {answer:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        Env {
            command: command.into(),
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart".into(),
        }
    }

    fn conf(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s","type":"amesh-cni","agent_socket":"/nonexistent/amesh.sock","timeout_ms":200,
                "prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"10.1.0.5/24"}}]}}{extra}}}"#
        )
        .into_bytes()
    }

    fn error_code(o: &Outcome) -> u32 {
        assert!(!o.ok, "expected an error, got {}", o.stdout);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("error object JSON");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
        v["code"].as_u64().expect("code") as u32
    }

    #[test]
    fn version_lists_the_supported_versions() {
        let o = run(&env("VERSION"), br#"{"cniVersion":"0.4.0"}"#);
        assert!(o.ok);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(
            v["supportedVersions"]
                .as_array()
                .is_some_and(|a| a.len() == 5)
        );
    }

    #[test]
    fn agent_down_without_a_last_word_refuses_the_pod() {
        let o = run(&env("ADD"), &conf(""));
        assert_eq!(error_code(&o), code::AGENT_UNREACHABLE);
    }

    #[test]
    fn excluded_namespaces_never_wait_for_the_agent() {
        let o = run(&env("ADD"), &conf(r#","excluded_namespaces":["shop"]"#));
        assert!(o.ok, "{}", o.stdout);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
        assert_eq!(v["ips"][0]["address"], "10.1.0.5/24");
    }

    #[test]
    fn check_prints_nothing_on_success_and_del_survives_a_bad_config() {
        let o = run(&env("CHECK"), &conf(r#","excluded_namespaces":["shop"]"#));
        assert!(o.ok);
        assert_eq!(o.stdout, "", "CHECK returns nothing on success");
        for bad in [
            &b"{oops"[..],
            br#"{"cniVersion":"9.0.0","type":"amesh-cni"}"#,
        ] {
            let o = run(&env("DEL"), bad);
            assert!(o.ok, "DEL failed: {}", o.stdout);
            assert_eq!(o.stdout, "");
        }
    }

    #[test]
    fn del_never_fails() {
        let o = run(&env("DEL"), &conf(""));
        assert!(o.ok);
        let mut bad = env("DEL");
        bad.args = "garbage".into();
        assert!(run(&bad, &conf("")).ok);
    }

    #[test]
    fn missing_environment_is_an_error_object() {
        let mut e = env("ADD");
        e.args = "K8S_POD_NAME=cart".into();
        assert_eq!(error_code(&run(&e, &conf(""))), code::INVALID_ENVIRONMENT);
        let mut e = env("ADD");
        e.netns.clear();
        assert_eq!(error_code(&run(&e, &conf(""))), code::INVALID_ENVIRONMENT);
        assert_eq!(
            error_code(&run(&env(""), &conf(""))),
            code::INVALID_ENVIRONMENT
        );
        assert_eq!(
            error_code(&run(&env("BOGUS"), &conf(""))),
            code::INVALID_ENVIRONMENT
        );
        assert_eq!(error_code(&run(&env("ADD"), b"[1,")), code::DECODE_FAILURE);
    }
}
