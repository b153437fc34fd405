//! The Prometheus endpoint (`--metrics ADDR`): `/metrics`, `/healthz`, `/readyz`.
//!
//! Kernel figures (verdict counters, lost events, addresses per hostname) are read from the
//! pinned maps at each scrape, in the kernel's own words; entry counts come from the agent's
//! status, which mirrors the maps; DNS and reload figures are counted as they happen.
//!
//! Metrics (every name below is exported with the `egress_` prefix):
//! - `verdicts_total{verdict="allow",reason="entry|loopback|default"}` and
//!   `{verdict="deny",reason="no_entry|wrong_port|wrong_protocol|internal"}`: syscall
//!   judgements; in audit mode the denied ones are let through and also counted by
//!   `audit_would_deny_total`;
//! - `wire_drops_total{reason="destination|loopback"}`: packets the wire check refused;
//! - `events_lost_total`: events a full ring buffer could not take (their counts are kept);
//! - `flows_tracked`: denied flows the agent holds (see `egress-agent events`);
//! - `map_entries{map}`, `map_capacity{map}`, `map_fill_ratio{map}`;
//! - `hostnames`, `hostname_addresses{hostname}`;
//! - `dns_queries_total{result="ok|nxdomain|no_address|error"}`, `dns_query_duration_seconds`;
//! - `policy_reloads_total{result="ok|failed"}`,
//!   `policy_last_reload_timestamp_seconds{result}`;
//! - `agent_info{version,kernel}` (always 1), `ready` (1 once programs are attached and the
//!   policy applied).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use egress_common::{Counter as KernelCounter, SourceKind, maps};
use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::watch;

use super::{now, status::Status};
use crate::{
    bpf::PinnedMaps,
    enforce::{MapStore as _, source::label},
    events::EventHub,
};

/// What the agent counts as it goes.
#[derive(Debug)]
pub struct AgentMetrics {
    dns_queries: Family<Vec<(&'static str, &'static str)>, Counter>,
    dns_duration: Histogram,
    reloads: Family<Vec<(&'static str, &'static str)>, Counter>,
    last_reload: Family<Vec<(&'static str, &'static str)>, Gauge>,
    /// Unix seconds of the agent loop's last turn, for /healthz.
    heartbeat: AtomicU64,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            dns_queries: Family::default(),
            // 1 ms … about 16 s.
            dns_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            reloads: Family::default(),
            last_reload: Family::default(),
            heartbeat: AtomicU64::new(now()),
        }
    }
}

impl AgentMetrics {
    /// One DNS resolution of a name (A and AAAA): `ok`, `nxdomain`, `no_address` or `error`.
    pub fn dns(&self, result: &'static str, seconds: f64) {
        self.dns_queries
            .get_or_create(&vec![("result", result)])
            .inc();
        self.dns_duration.observe(seconds);
    }

    pub fn reload(&self, ok: bool, at: u64) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&vec![("result", result)]).inc();
        self.last_reload
            .get_or_create(&vec![("result", result)])
            .set(at as i64);
    }

    pub fn beat(&self) {
        self.heartbeat.store(now(), Ordering::Relaxed);
    }
}

/// Figures read at each scrape.
struct KernelCollector {
    maps: Mutex<PinnedMaps>,
    status: watch::Receiver<Status>,
    hub: EventHub,
}

/// Collectors must be `Debug`; the maps and the hub have nothing to show.
impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

fn family<M: prometheus_client::encoding::EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.status.borrow().clone();
        let (counters, hosts) = {
            let maps = self.maps.lock().expect("metrics maps");
            let counters = maps.counters().unwrap_or_default();
            let hosts: Vec<(String, u32)> = maps
                .read_sources()
                .unwrap_or_default()
                .into_values()
                .filter(|r| r.kind == SourceKind::HOST)
                .map(|r| (label(&r), r.addr_count))
                .collect();
            (counters, hosts)
        };
        let c = |k: KernelCounter| counters.get(k.0 as usize).copied().unwrap_or(0);
        let verdicts = [
            ("allow", "entry", KernelCounter::ALLOW_ENTRY),
            ("allow", "loopback", KernelCounter::ALLOW_LOOPBACK),
            ("allow", "default", KernelCounter::ALLOW_DEFAULT),
            ("allow", "exempt", KernelCounter::ALLOW_EXEMPT),
            ("deny", "no_entry", KernelCounter::DENY_NO_ENTRY),
            ("deny", "wrong_port", KernelCounter::DENY_PORT),
            ("deny", "wrong_protocol", KernelCounter::DENY_PROTOCOL),
            ("deny", "internal", KernelCounter::DENY_INTERNAL),
            ("deny", "socket", KernelCounter::DENY_SOCKET),
        ];
        family(
            &mut encoder,
            "egress_verdicts",
            "Connections, datagrams and address-less sockets (raw, ICMP, packet) judged at the syscall hooks, by verdict and reason",
            MetricType::Counter,
            verdicts.iter().map(|&(v, r, k)| {
                (
                    vec![("verdict", v.to_owned()), ("reason", r.to_owned())],
                    ConstCounter::new(c(k)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "egress_audit_would_deny",
            "Denials let through because the policy is in audit mode",
            MetricType::Counter,
            [(
                vec![],
                ConstCounter::new(c(KernelCounter::AUDIT_WOULD_DENY)),
            )],
        )?;
        family(
            &mut encoder,
            "egress_wire_drops",
            "Packets the wire check refused: another destination than their socket's, or loopback off the loopback device",
            MetricType::Counter,
            [
                ("destination", KernelCounter::WIRE_DROP),
                ("loopback", KernelCounter::WIRE_LOOPBACK),
            ]
            .map(|(r, k)| (vec![("reason", r.to_owned())], ConstCounter::new(c(k)))),
        )?;
        family(
            &mut encoder,
            "egress_events_lost",
            "Denial events the ring buffer had no room for (their counts are kept)",
            MetricType::Counter,
            [(vec![], ConstCounter::new(c(KernelCounter::EVENTS_LOST)))],
        )?;
        family(
            &mut encoder,
            "egress_flows_tracked",
            "Denied flows the agent holds",
            MetricType::Gauge,
            [(vec![], ConstGauge::new(self.hub.len() as i64))],
        )?;
        let e = status.entries;
        let sized = [
            (maps::ALLOW_V4, e.v4),
            (maps::ALLOW_V6, e.v6),
            (maps::CIDR_V4, e.cidr_v4),
            (maps::CIDR_V6, e.cidr_v6),
            (maps::PORTS, e.port_sets),
            (maps::SOURCES, e.sources),
        ];
        let capacity = f64::from(status.max_entries.max(1));
        family(
            &mut encoder,
            "egress_map_entries",
            "Entries in each kernel map",
            MetricType::Gauge,
            sized.map(|(m, n)| (vec![("map", m.to_owned())], ConstGauge::new(n as i64))),
        )?;
        family(
            &mut encoder,
            "egress_map_capacity",
            "Capacity of each kernel map (--max-entries)",
            MetricType::Gauge,
            sized.map(|(m, _)| {
                (
                    vec![("map", m.to_owned())],
                    ConstGauge::new(i64::from(status.max_entries)),
                )
            }),
        )?;
        family(
            &mut encoder,
            "egress_map_fill_ratio",
            "Entries over capacity for each kernel map",
            MetricType::Gauge,
            sized.map(|(m, n)| {
                (
                    vec![("map", m.to_owned())],
                    ConstGauge::new(n as f64 / capacity),
                )
            }),
        )?;
        family(
            &mut encoder,
            "egress_hostnames",
            "Hostnames the policy names",
            MetricType::Gauge,
            [(vec![], ConstGauge::new(hosts.len() as i64))],
        )?;
        family(
            &mut encoder,
            "egress_hostname_addresses",
            "Addresses each hostname contributes to the maps now",
            MetricType::Gauge,
            hosts
                .into_iter()
                .map(|(h, n)| (vec![("hostname", h)], ConstGauge::new(i64::from(n)))),
        )?;
        if let Some(pods) = &status.pods {
            family(
                &mut encoder,
                "egress_pods",
                "Pod cgroups below the pods' root: placed in their class, or not yet known \
                 (unknown class)",
                MetricType::Gauge,
                [
                    (
                        vec![("state", "placed".to_owned())],
                        ConstGauge::new(pods.placed as i64),
                    ),
                    (
                        vec![("state", "unplaced".to_owned())],
                        ConstGauge::new(pods.unplaced.len() as i64),
                    ),
                ],
            )?;
            family(
                &mut encoder,
                "egress_pod_classes",
                "Distinct policy classes in the maps, the node-wide one included",
                MetricType::Gauge,
                [(vec![], ConstGauge::new(pods.classes as i64))],
            )?;
            family(
                &mut encoder,
                "egress_pod_metadata_synced",
                "1 when the pod metadata comes from a complete listing of the API by this run",
                MetricType::Gauge,
                [(vec![], ConstGauge::new(i64::from(pods.synced)))],
            )?;
        }
        family(
            &mut encoder,
            "egress_agent_info",
            "The agent's version and the kernel it runs on",
            MetricType::Gauge,
            [(
                vec![
                    ("version", status.version.clone()),
                    ("kernel", status.kernel.clone()),
                ],
                ConstGauge::new(1),
            )],
        )?;
        family(
            &mut encoder,
            "egress_ready",
            "1 once the programs are attached and the policy applied",
            MetricType::Gauge,
            [(
                vec![],
                ConstGauge::new(i64::from(status.ready && status.running)),
            )],
        )?;
        Ok(())
    }
}

struct Served {
    registry: Registry,
    status: watch::Receiver<Status>,
    metrics: Arc<AgentMetrics>,
}

/// Binds `addr` and serves the endpoint on a task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<AgentMetrics>,
    maps: PinnedMaps,
    status: watch::Receiver<Status>,
    hub: EventHub,
) -> std::io::Result<SocketAddr> {
    let mut registry = Registry::default();
    registry.register(
        "egress_dns_queries",
        "Resolutions of policy hostnames (A and AAAA), by result",
        metrics.dns_queries.clone(),
    );
    registry.register(
        "egress_dns_query_duration_seconds",
        "Time to resolve one policy hostname (A and AAAA)",
        metrics.dns_duration.clone(),
    );
    registry.register(
        "egress_policy_reloads",
        "Policy reloads, by result",
        metrics.reloads.clone(),
    );
    registry.register(
        "egress_policy_last_reload_timestamp_seconds",
        "Unix time of the last reload, by result",
        metrics.last_reload.clone(),
    );
    registry.register_collector(Box::new(KernelCollector {
        maps: Mutex::new(maps),
        status: status.clone(),
        hub,
    }));
    let state = Arc::new(Served {
        registry,
        status,
        metrics,
    });
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let listener = super::limits::LimitedListener::new(
        listener,
        super::limits::MAX_HTTP_CONNECTIONS,
        super::limits::MAX_HTTP_CONNECTIONS_PER_PEER,
        super::limits::HTTP_CONNECTION_LIFETIME,
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

async fn metrics_page(State(s): State<Arc<Served>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            "encoding failed\n".to_owned(),
        ),
    }
}

/// Alive: the agent loop turned within the last 10 seconds (it wakes twice a second).
async fn healthz(State(s): State<Arc<Served>>) -> impl IntoResponse {
    let last = s.metrics.heartbeat.load(Ordering::Relaxed);
    if now().saturating_sub(last) <= 10 {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the agent loop is stuck\n")
    }
}

/// Ready: programs attached and the policy applied.
async fn readyz(State(s): State<Arc<Served>>) -> impl IntoResponse {
    let status = s.status.borrow();
    if status.ready && status.running {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
