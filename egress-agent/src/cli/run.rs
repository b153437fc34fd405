//! `egress-agent run`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use egress_agent::{
    agent::{self, AgentConfig},
    resolve::ResolverSettings,
};
use egress_common::{DEFAULT_EVENT_BUFFER, DEFAULT_MAX_ENTRIES};

use super::{BpffsArg, DEFAULT_STATE_DIR};

#[derive(clap::Args)]
pub struct Args {
    /// Policy file (YAML: ServiceEntry documents, mesh config, or an EgressPolicy). Watched:
    /// changes apply without a restart; an invalid change is logged and ignored.
    #[arg(long)]
    policy: PathBuf,
    /// cgroup v2 directory to enforce (absolute, or relative to the cgroup2 mount). Every
    /// process below it is enforced. `auto`: the kubelet's pods' root (kubepods.slice or
    /// kubepods, found within three levels of the cgroup2 mount), so that every pod is
    /// enforced from its first syscall and host processes are not.
    #[arg(long)]
    cgroup: PathBuf,
    /// This node's name: watch its Pods (`spec.nodeName`) through the Kubernetes API, so
    /// that rules scoped to namespaces and labels apply to the right pods.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Kubeconfig for the API (default: the in-cluster service account).
    #[arg(long, env = "EGRESS_KUBECONFIG", requires = "node_name")]
    kubeconfig: Option<PathBuf>,
    /// UID of the agent's own pod (the downward API's `metadata.uid`): a DaemonSet's pod is
    /// below the pods' root too, and the agent must reach the API server and DNS.
    #[arg(long, env = "POD_UID", requires = "node_name")]
    exempt_pod_uid: Option<String>,
    #[command(flatten)]
    bpffs: BpffsArg,
    /// Upstream DNS server (IP or IP:PORT), repeatable. Default: the nameservers of
    /// /etc/resolv.conf.
    #[arg(long = "dns-server", value_parser = parse_server)]
    dns_servers: Vec<SocketAddr>,
    /// Capacity of each map (exact v4, exact v6, prefixes v4, prefixes v6, port sets, sources).
    #[arg(long, default_value_t = DEFAULT_MAX_ENTRIES)]
    max_entries: u32,
    /// The agent's own directory (made 0700): status file, local API socket (agent.sock),
    /// and the pod metadata kept for the next run.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Lowest TTL honoured (shorter TTLs are raised to it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    min_ttl: Duration,
    /// Highest TTL honoured (longer TTLs are lowered to it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    max_ttl: Duration,
    /// How long an address stays allowed after its TTL ran out.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    grace: Duration,
    /// How long the last known addresses are kept while the upstream fails.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    stale_for: Duration,
    /// Timeout of one DNS query.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    dns_timeout: Duration,
    /// How long start-up and reloads wait for names before applying without them.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    resolve_wait: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics, with /healthz and /readyz.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Size in bytes of the ring buffer that carries denial events (a power of two, 4096 or
    /// more). Events that do not fit are counted as lost; their counts are kept.
    #[arg(long, default_value_t = DEFAULT_EVENT_BUFFER, value_parser = parse_event_buffer)]
    event_buffer: u32,
}

fn parse_event_buffer(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two of at least 4096"));
    }
    Ok(n)
}

fn parse_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("`{s}` is not an IP address or IP:PORT"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        policy,
        cgroup,
        bpffs,
        dns_servers,
        max_entries,
        state_dir,
        min_ttl,
        max_ttl,
        grace,
        stale_for,
        dns_timeout,
        resolve_wait,
        metrics,
        event_buffer,
        node_name,
        kubeconfig,
        exempt_pod_uid,
    } = args;
    anyhow::ensure!(max_entries > 0, "--max-entries must be at least 1");
    let config = AgentConfig {
        policy,
        cgroup,
        bpffs: bpffs.bpffs,
        dns_servers,
        dns_timeout,
        resolve_wait,
        max_entries,
        resolver: ResolverSettings {
            min_ttl,
            max_ttl,
            grace,
            stale_for,
            ..ResolverSettings::default()
        },
        state_dir,
        event_buffer,
        metrics,
        kubernetes: node_name.map(|node| egress_agent::pods::kube::ApiSettings {
            node,
            kubeconfig,
            exempt_pod: exempt_pod_uid,
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("failed to install the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
            }
        };
        agent::run(config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(ExitCode::SUCCESS)
}
