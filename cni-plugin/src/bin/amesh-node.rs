//! The `amesh-node` agent (one per node, in the DaemonSet beside ztunnel).
//!
//! `amesh-node --node-name N --kubernetes ...` runs the agent; `amesh-node uninstall ...`
//! takes the plugin out of the node's CNI chain.
#![forbid(unsafe_code)]

use amesh_cni::agent::{self, AgentConfig, cluster::Source, install::CniInstall, mark::Marker};
use amesh_ebpf_loader::CaptureConfig;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::{net::SocketAddr, path::PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "amesh-node",
    about = "amesh's node agent: CNI plugin, capture, ZDS"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// This node's name (the pods it serves are those scheduled here); default: $NODE_NAME.
    #[arg(long, default_value = "")]
    node_name: String,
    /// Read Namespaces and Pods from the cluster (in-cluster config or KUBECONFIG).
    #[arg(long)]
    kubernetes: bool,
    /// Read them from this API server URL (plain HTTP, e.g. a local proxy).
    #[arg(long, conflicts_with = "kubernetes")]
    kube_url: Option<String>,
    /// Read them from a directory of Kubernetes YAML (the mesh in a box).
    #[arg(long, conflicts_with_all = ["kubernetes", "kube_url"])]
    source_dir: Option<PathBuf>,
    #[command(flatten)]
    cni: CniArgs,
    /// Where the plugin reaches the agent.
    #[arg(long, default_value = amesh_cni::cni::conf::DEFAULT_AGENT_SOCKET)]
    cni_socket: PathBuf,
    /// Where ztunnel connects for ZDS.
    #[arg(long, default_value = "/var/run/ztunnel/ztunnel.sock")]
    zds_socket: PathBuf,
    /// bpffs directory of the capture programs' pins.
    #[arg(long, default_value = amesh_ebpf_loader::DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// cgroup v2 directory every pod lives below (the outbound hooks attach here).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup: PathBuf,
    /// The agent's state (enrolled pods, the plugin's fallback file, the plugin's log).
    #[arg(long, global = true, default_value = "/var/run/amesh")]
    state_dir: PathBuf,
    /// What must survive a reboot: the plugin's fallback file (ambient namespaces, read
    /// while the agent is down) and the CNI configuration as it was before amesh.
    #[arg(long, global = true, default_value = "/var/lib/amesh")]
    persistent_dir: PathBuf,
    /// Namespaces never enrolled (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "kube-system")]
    excluded_namespaces: Vec<String>,
    /// `GET /readyz`.
    #[arg(long)]
    readiness: Option<SocketAddr>,
    /// Where processes are listed (to find running pods' namespaces).
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// Forward the eBPF programs' debug logs.
    #[arg(long)]
    ebpf_debug_logs: bool,
    /// Send enrolled pods' DNS to ztunnel's in-pod proxy (Istio's `cni.ambient.dnsCapture`,
    /// on by default); a pod's `ambient.istio.io/dns-capture` annotation overrides it.
    #[arg(long, env = "AMBIENT_DNS_CAPTURE", default_value_t = true, action = clap::ArgAction::Set)]
    dns_capture: bool,
}

#[derive(clap::Args, Debug)]
struct CniArgs {
    /// The CNI bin dir to install the plugin into.
    #[arg(long, global = true, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The CNI conf dir whose primary configuration gets the plugin appended.
    #[arg(long, global = true, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The plugin binary to install (default: `amesh-cni` next to this binary).
    #[arg(long, global = true)]
    cni_plugin: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Remove the plugin from the CNI configuration and the bin dir.
    Uninstall,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match real_main(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amesh-node: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn cni_install(args: &Args) -> Result<CniInstall> {
    let plugin = match &args.cni.cni_plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding this binary")?
            .with_file_name("amesh-cni"),
    };
    let mut settings = serde_json::Map::new();
    settings.insert(
        "agent_socket".into(),
        args.cni_socket.display().to_string().into(),
    );
    settings.insert(
        "log_file".into(),
        args.state_dir.join("cni.log").display().to_string().into(),
    );
    settings.insert(
        "enrollment_file".into(),
        args.persistent_dir
            .join("enrollment.json")
            .display()
            .to_string()
            .into(),
    );
    settings.insert(
        "excluded_namespaces".into(),
        serde_json::to_value(&args.excluded_namespaces)?,
    );
    Ok(CniInstall {
        bin_dir: args.cni.cni_bin_dir.clone(),
        conf_dir: args.cni.cni_conf_dir.clone(),
        plugin_binary: plugin,
        settings,
        backup_dir: args.persistent_dir.join("cni-original"),
    })
}

/// Where the service account's credentials are mounted in the agent's container.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How often the token copy for the plugin is refreshed (projected tokens rotate hourly).
const TOKEN_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// Lets the plugin read pods and namespaces itself while the agent is down (it runs on the
/// host, where the container's credentials are not): the API server's address, and copies
/// of the in-cluster token (kept fresh) and CA next to the agent's socket. None outside a
/// pod (a kubeconfig on a workstation).
fn plugin_api_access(
    config: &kube::Config,
    state_dir: &std::path::Path,
) -> Result<Option<serde_json::Value>> {
    let dir = std::path::Path::new(SERVICE_ACCOUNT_DIR);
    let (token, ca) = (dir.join("token"), dir.join("ca.crt"));
    if !token.exists() || !ca.exists() {
        return Ok(None);
    }
    std::fs::create_dir_all(state_dir)?;
    let (token_copy, ca_copy) = (
        state_dir.join("plugin-token"),
        state_dir.join("plugin-ca.crt"),
    );
    copy_private(&ca, &ca_copy)?;
    copy_private(&token, &token_copy)?;
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(TOKEN_REFRESH);
            if let Err(e) = copy_private(&token, &token_copy) {
                tracing::warn!(error = %e, "refreshing the plugin's token");
            }
        }
    });
    Ok(Some(serde_json::json!({
        "server": config.cluster_url.to_string().trim_end_matches('/'),
        "token_file": state_dir.join("plugin-token"),
        "ca_file": state_dir.join("plugin-ca.crt"),
    })))
}

/// Copies a credential readable by root only, atomically.
fn copy_private(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).with_context(|| format!("copying {}", from.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

fn real_main(mut args: Args) -> Result<()> {
    if args.node_name.is_empty() {
        args.node_name = std::env::var("NODE_NAME").unwrap_or_default();
    }
    let mut cni = cni_install(&args)?;
    if let Some(Cmd::Uninstall) = args.command {
        let changed = cni.uninstall()?;
        for p in changed {
            println!("removed amesh-cni from {}", p.display());
        }
        return Ok(());
    }
    if args.node_name.is_empty() {
        bail!("--node-name (or NODE_NAME) is required");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (source, marker) = match (&args.source_dir, &args.kube_url, args.kubernetes) {
            (Some(dir), _, _) => (Source::Dir(dir.clone()), Marker::Local),
            (None, Some(url), _) => {
                let config = kube::Config::new(url.parse().context("--kube-url")?);
                cni.settings.insert(
                    "kubernetes".into(),
                    serde_json::json!({ "server": url.trim_end_matches('/') }),
                );
                let client = kube::Client::try_from(config).context("Kubernetes client")?;
                (Source::Kube(client.clone()), Marker::Kube(client))
            }
            (None, None, true) => {
                let config = kube::Config::infer()
                    .await
                    .context("finding the cluster (in-cluster or KUBECONFIG)")?;
                if let Some(access) = plugin_api_access(&config, &args.state_dir)? {
                    cni.settings.insert("kubernetes".into(), access);
                }
                let client = kube::Client::try_from(config).context("Kubernetes client")?;
                (Source::Kube(client.clone()), Marker::Kube(client))
            }
            (None, None, false) => {
                bail!("one of --kubernetes, --kube-url or --source-dir is required")
            }
        };
        let config = AgentConfig {
            node: args.node_name.clone(),
            source,
            capture: CaptureConfig {
                pin_root: args.pin_root.clone(),
                cgroup: args.cgroup.clone(),
                debug_logs: args.ebpf_debug_logs,
            },
            cni,
            cni_socket: args.cni_socket.clone(),
            zds_socket: args.zds_socket.clone(),
            state_dir: args.state_dir.clone(),
            persistent_dir: args.persistent_dir.clone(),
            excluded_namespaces: args.excluded_namespaces.clone(),
            readiness: args.readiness,
            proc_root: args.proc_root.clone(),
            dns_capture: args.dns_capture,
        };
        agent::run(config, marker, shutdown()).await?;
        Ok(())
    })
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
