//! The agent: loads the programs, applies the policy, keeps the maps in line with DNS and
//! with the policy file, until its shutdown future completes.
//!
//! Lifecycle (`run`):
//! 1. lock the bpffs directory (one agent per set of pins), find the cgroup;
//! 2. read the policy — if it is invalid, leave pinned enforcement as it is, or, when there is
//!    none, deny all egress of the cgroup (fail closed), and return the error;
//! 3. load the programs against the pinned maps (created on first run), adopt the addresses
//!    they hold, resolve every hostname (bounded wait), reconcile the maps;
//! 4. attach: swap the programs behind pinned links in place, or create and pin links;
//! 5. loop: resolve names as TTLs run out, expire addresses, reload the policy on change or
//!    SIGHUP (a bad file is logged and ignored), until shutdown. Shutdown leaves the pins, so
//!    enforcement continues without an agent; `egress-agent detach` removes it.

pub mod api;
mod controller;
mod limits;
pub mod metrics;
pub mod privileges;
mod startup;
pub mod status;
mod watch;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub use controller::Controller;
pub use startup::{PinLock, lock};

use crate::{bpf::PinnedMaps, events::EventHub};
use crate::{
    bpf::{
        fs::FsError,
        kernel::KernelError,
        loader::{AttachError, LoadError},
    },
    enforce::{StoreError, reconcile::ReconcileError},
    policy::PolicyError,
    resolve::{ResolverSettings, UpstreamError},
};

/// Everything `egress-agent run` is told.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub policy: PathBuf,
    pub cgroup: PathBuf,
    /// Directory on bpffs for the agent's pins.
    pub bpffs: PathBuf,
    /// Upstream DNS servers; empty means those of /etc/resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    pub dns_timeout: Duration,
    /// How long start-up and reloads wait for names to resolve before applying.
    pub resolve_wait: Duration,
    pub max_entries: u32,
    pub resolver: ResolverSettings,
    pub state_dir: PathBuf,
    /// Size of the denial event ring buffer, in bytes (a power of two, at least a page).
    pub event_buffer: u32,
    /// Address of the Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// Where pod metadata comes from, for scoped rules (`--node-name`).
    pub kubernetes: Option<crate::pods::kube::ApiSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Unenforceable(String),
    #[error("another egress-agent holds {}; one agent per bpffs directory", path.display())]
    Locked { path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs the agent until `shutdown` completes: the controller loop, and beside it the event
/// reader, the local API and (with `--metrics`) the Prometheus endpoint.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let observers = controller::Observers::default();
    let metrics = observers.metrics.clone();
    let status = observers.status.subscribe();
    let started = startup::start(config.clone(), observers).await?;
    let mut controller = started.controller;
    let hub = EventHub::default();
    let open = |what| {
        PinnedMaps::open(&started.generation).map_err(|e| AgentError::Io {
            what,
            path: started.generation.dir.clone(),
            source: std::io::Error::other(e),
        })
    };
    let lookup = open("open the maps for the event reader in")?;
    let cgroup = started.cgroup.clone();
    let reader_hub = hub.clone();
    let pods = controller.pods_watch();
    tokio::spawn(async move {
        crate::events::reader::run(started.events, lookup, &cgroup, reader_hub, pods).await;
    });
    api::serve(&config.state_dir, hub.clone()).map_err(|source| AgentError::Io {
        what: "serve the local API in",
        path: config.state_dir.clone(),
        source,
    })?;
    if let Some(addr) = config.metrics {
        let maps = open("open the maps for the metrics in")?;
        let bound = metrics::serve(addr, metrics, maps, status, hub)
            .await
            .map_err(|source| AgentError::Io {
                what: "serve metrics on",
                path: PathBuf::from(addr.to_string()),
                source,
            })?;
        tracing::info!(address = %bound, "metrics at /metrics, health at /healthz and /readyz");
        controller.set_metrics_address(bound);
    }
    // Everything that needs more than map access and re-attaching is done.
    controller.drop_privileges();
    controller.run(shutdown).await
}
