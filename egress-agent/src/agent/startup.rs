//! Getting from nothing (or from a previous agent's pins) to attached programs enforcing the
//! policy, without an instant in which the cgroup is unenforced or an allowed destination is
//! refused.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use egress_common::{AllowEntry, SourceKind, SourceRecord};

use super::{
    AgentConfig, AgentError, Controller,
    controller::{Attachment, Observers},
    now, status,
};
use crate::{
    bpf::{
        self, Cgroup, PinnedMaps, Pins,
        fs::ensure_bpffs_dir,
        kernel,
        loader::{EventMaps, LoadError},
    },
    enforce::{EntryKey, MapStore as _, Reconciler, Target, source},
    policy::{self, Hostname, Policy},
    resolve::{HostCache, Upstream, servers_from_resolv_conf},
};

/// Holds an exclusive flock on the pin directory for the agent's lifetime.
pub struct PinLock(#[allow(dead_code, reason = "held for its Drop")] File);

/// Takes the pin directory's lock, or fails if an agent holds it.
pub fn lock(dir: &Path) -> Result<PinLock, AgentError> {
    let file = File::open(dir).map_err(|source| AgentError::Io {
        what: "open",
        path: dir.to_owned(),
        source,
    })?;
    // SAFETY: a valid open fd; flock has no memory effects.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(AgentError::Locked {
            path: dir.to_owned(),
        });
    }
    Ok(PinLock(file))
}

/// A started agent: the controller, and what the event reader needs.
pub struct Started {
    pub controller: Controller,
    pub events: EventMaps,
    pub generation: bpf::Generation,
    /// The enforced cgroup's directory.
    pub cgroup: PathBuf,
}

pub async fn start(config: AgentConfig, observers: Observers) -> Result<Started, AgentError> {
    let missing = crate::preflight::failures(&crate::preflight::checks(&config.bpffs));
    if !missing.is_empty() {
        return Err(AgentError::Unenforceable(format!(
            "this node cannot enforce egress (see `egress-agent preflight`):\n  {}",
            missing.join("\n  ")
        )));
    }
    let release = kernel::running_release()?;
    if let Some(warning) = kernel::check(&release)? {
        tracing::warn!("{warning}");
    }
    status::ensure_state_dir(&config.state_dir).map_err(|source| AgentError::Io {
        what: "create state directory",
        path: config.state_dir.clone(),
        source,
    })?;
    let cgroup = resolve_cgroup(&config.cgroup)?;
    ensure_bpffs_dir(&config.bpffs)?;
    let pin_lock = lock(&config.bpffs)?;
    let pins = Pins::new(&config.bpffs);

    let dns_servers: Vec<SocketAddr> = if config.dns_servers.is_empty() {
        servers_from_resolv_conf(Path::new("/etc/resolv.conf"))?
    } else {
        config.dns_servers.clone()
    };
    let mut status = status::Status {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: release,
        started_at: now(),
        running: true,
        cgroup: cgroup.path.display().to_string(),
        cgroup_id: cgroup.id,
        bpffs: config.bpffs.display().to_string(),
        dns_servers: dns_servers.iter().map(ToString::to_string).collect(),
        max_entries: config.max_entries,
        ..status::Status::default()
    };

    let loaded = policy::load(&config.policy).map_err(AgentError::from);
    let started = match loaded {
        Ok((policy, text)) => {
            enforce(
                &config,
                &pins,
                &cgroup,
                dns_servers,
                (policy, &text),
                status.clone(),
                observers,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match started {
        Ok((mut controller, events, generation)) => {
            controller.hold(pin_lock);
            controller.mark_ready();
            Ok(Started {
                controller,
                events,
                generation,
                cgroup: cgroup.path.clone(),
            })
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot enforce the policy");
            let what = fail_closed(&config, &pins, &cgroup)
                .unwrap_or_else(|e2| format!("could not install deny-all either: {e2}"));
            status.problems = vec![e.to_string(), what];
            status.last_reload = Some(status::Reload {
                at: now(),
                ok: false,
                digest: String::new(),
                error: Some(e.to_string()),
            });
            status.reloads_failed = 1;
            status.running = false;
            let _ = status::write(&config.state_dir, &status);
            Err(e)
        }
    }
}

/// The cgroup to enforce: as given, or for `auto` the kubelet's pods' root.
fn resolve_cgroup(given: &Path) -> Result<Cgroup, AgentError> {
    if given != Path::new(AUTO_CGROUP) {
        return Ok(Cgroup::resolve(given)?);
    }
    let mount = bpf::cgroup2_root()?;
    let root = crate::pods::kubelet::find_pods_root(&mount).ok_or_else(|| {
        AgentError::Unenforceable(format!(
            "--cgroup auto: no kubelet pods' root (kubepods.slice, kubepods, \
             *-kubepods.slice) within three levels of the cgroup2 mount {}",
            mount.display()
        ))
    })?;
    tracing::info!(root = %root.display(), "found the kubelet's pods' root");
    Ok(Cgroup::resolve(&root)?)
}

/// `--cgroup auto`.
pub const AUTO_CGROUP: &str = "auto";

/// Starts tracking the node's pods (with `--node-name`): the metadata index (seeded with
/// the previous run's copy), the API watch, and the join with the pod cgroups below
/// `cgroup`. With scoped rules, waits (up to `resolve_wait`) for a first complete listing,
/// so that a restart places pods as before rather than as unknown.
async fn track_pods(
    config: &AgentConfig,
    cgroup: &Cgroup,
    policy: &Policy,
) -> Result<Option<tokio::sync::watch::Receiver<crate::pods::Tracked>>, AgentError> {
    use crate::pods::{self, kube};
    let Some(api) = &config.kubernetes else {
        if policy.scoped() {
            tracing::warn!(
                "the policy has rules for some pods only, but without --node-name no pod is \
                 known: every pod gets the node-wide allows minus every deny"
            );
        }
        return Ok(None);
    };
    let mount = bpf::cgroup2_root()?;
    let level = pods::kubelet::level(&mount, &cgroup.path).ok_or_else(|| {
        AgentError::Unenforceable(format!(
            "{} is not below the cgroup2 mount {}",
            cgroup.path.display(),
            mount.display()
        ))
    })?;
    let cached = kube::load_cached(&config.state_dir);
    if !cached.pods.is_empty() {
        tracing::info!(
            pods = cached.pods.len(),
            "pod metadata from the previous run"
        );
    }
    let (index_tx, mut index_rx) = tokio::sync::watch::channel(cached);
    let client = kube::client(api)
        .await
        .map_err(|e| AgentError::Unenforceable(format!("Kubernetes API client: {e:#}")))?;
    tokio::spawn(kube::watch_pods(client, api.node.clone(), index_tx));
    if policy.scoped() {
        let synced =
            tokio::time::timeout(config.resolve_wait, index_rx.wait_for(|i| i.synced)).await;
        if !matches!(synced, Ok(Ok(_))) {
            tracing::warn!("pods not listed yet; starting with the pod metadata known so far");
        }
    }
    Ok(Some(pods::track(
        cgroup.path.clone(),
        level,
        index_rx,
        config.state_dir.clone(),
        api.exempt_pod.clone(),
    )))
}

/// Loads the programs (the packet-socket one where the node can run it) against the pins.
fn load_programs(
    config: &AgentConfig,
    pins: &Pins,
) -> Result<(bpf::Loaded, PinnedMaps), AgentError> {
    let coverage = packet_socket_coverage();
    Ok(bpf::load(
        pins,
        config.max_entries,
        config.event_buffer,
        coverage.as_ref().map(|_| ()).map_err(String::as_str),
    )?)
}

/// Whether packet sockets can be refused on this node (the BPF LSM is active); if not, why.
/// Raw and ICMP sockets are refused on every supported kernel (`cgroup/sock_create`).
fn packet_socket_coverage() -> Result<(), String> {
    let gap = match kernel::bpf_lsm_active() {
        Ok(true) => return Ok(()),
        Ok(false) => "packet sockets (AF_PACKET), AF_XDP and other non-IP families are not refused: the BPF LSM is not active on \
             this kernel (boot with `bpf` in lsm=); a workload holding CAP_NET_RAW can send \
             frames no hook judges — drop CAP_NET_RAW from pods"
            .to_owned(),
        Err(e) => format!(
            "packet sockets (AF_PACKET), AF_XDP and other non-IP families are not refused: cannot tell whether the BPF LSM is \
             active ({e}); drop CAP_NET_RAW from pods"
        ),
    };
    Err(gap)
}

/// Loads the programs, fills the maps for `policy` and attaches.
async fn enforce(
    config: &AgentConfig,
    pins: &Pins,
    cgroup: &Cgroup,
    dns_servers: Vec<SocketAddr>,
    (policy, text): (Policy, &str),
    mut status: status::Status,
    observers: Observers,
) -> Result<(Controller, EventMaps, bpf::Generation), AgentError> {
    for note in &policy.notes {
        tracing::info!(note = %note, "policy note");
    }
    let (mut loaded, maps) = load_programs(config, pins)?;
    match &loaded.packet_sockets {
        Ok(()) => tracing::info!(
            "packet sockets (AF_PACKET), AF_XDP and other non-IP families are refused at creation"
        ),
        Err(gap) => {
            tracing::warn!("{gap}");
            status.gaps.push(gap.clone());
        }
    }
    let events = loaded.take_event_maps().map_err(LoadError::from)?;
    let previous = previous_generation(pins, &loaded.generation);
    let upstream = Upstream::new(dns_servers.clone(), config.dns_timeout)?;
    let mut cache = HostCache::new(config.resolver.clone());
    let at = now();
    cache.sync(policy.hosts().into_keys(), at);

    let held = maps.read_entries()?;
    let reconciler = Reconciler::new(maps)?;
    // Adopt from this generation, or from the one this agent replaces.
    let adopted = match &previous {
        Some(old) if held.is_empty() => match PinnedMaps::open(old) {
            Ok(old_maps) => adopt(
                &mut cache,
                &old_maps.read_entries()?,
                &old_maps.read_sources()?,
                at,
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the previous generation of maps");
                0
            }
        },
        _ => adopt(&mut cache, &held, reconciler.sources(), at),
    };
    drop(held);
    if adopted > 0 {
        tracing::info!(addresses = adopted, "adopted addresses from pinned maps");
    }

    let upstream_ips: Vec<IpAddr> = dns_servers.iter().map(SocketAddr::ip).collect();
    let pods = track_pods(config, cgroup, &policy).await?;
    let mut controller = Controller::new(
        config.clone(),
        policy,
        policy::digest(text),
        cache,
        reconciler,
        upstream,
        upstream_ips,
        status,
        observers,
        pods,
    );
    controller
        .fits(controller.policy(), at)
        .map_err(AgentError::Unenforceable)?;
    controller.resolve_due_and_wait().await;
    controller.reconcile_or_fail()?;

    let report = loaded.attach(pins, cgroup)?;
    for (program, how) in report {
        tracing::info!(program, cgroup = %cgroup.path.display(), how = ?how, "attached");
    }
    let current = pins.generation(controller.max_entries()).dir;
    for old in pins.generations().into_iter().filter(|g| g.dir != current) {
        match bpf::pins::remove_generation(&old) {
            Ok(()) => {
                tracing::info!(dir = %old.dir.display(), "removed the previous generation of maps")
            }
            Err(e) => {
                tracing::warn!(dir = %old.dir.display(), error = %e, "cannot remove an old generation of maps")
            }
        }
    }
    let generation = loaded.generation.clone();
    controller.keep(Attachment {
        loaded,
        cgroup: cgroup.clone(),
        pins: pins.clone(),
    });
    Ok((controller, events, generation))
}

/// Another readable generation of maps this agent is replacing (other capacity).
fn previous_generation(pins: &Pins, current: &bpf::Generation) -> Option<bpf::Generation> {
    pins.generations()
        .into_iter()
        .rfind(|g| g.dir != current.dir && g.readable())
}

/// Seeds the cache with the addresses pinned entries hold for hostnames. Returns how many.
fn adopt(
    cache: &mut HostCache,
    entries: &std::collections::BTreeMap<EntryKey, AllowEntry>,
    sources: &std::collections::BTreeMap<egress_common::SourceId, SourceRecord>,
    now: u64,
) -> usize {
    let mut n = 0;
    for (key, entry) in entries {
        let addr = match key.target {
            Target::V4(a) => IpAddr::V4(a),
            Target::V6(a) => IpAddr::V6(a),
            _ => continue,
        };
        let held = (entry.source_count as usize).min(entry.sources.len());
        for id in &entry.sources[..held] {
            let Some(record) = sources.get(id).filter(|r| r.kind == SourceKind::HOST) else {
                continue;
            };
            if let Ok(host) = Hostname::parse(&source::label(record)) {
                cache.adopt(&host, addr, entry.expires_at, record.resolved_at, now);
                n += 1;
            }
        }
    }
    n
}

/// Makes sure the cgroup is enforced when the policy cannot be: a previous agent's pinned
/// enforcement stays as it is (its maps untouched: every failure before attaching leaves them
/// as they were); without one, every destination but loopback is denied.
fn fail_closed(config: &AgentConfig, pins: &Pins, cgroup: &Cgroup) -> Result<String, AgentError> {
    if pins.link_dirs().iter().any(|(id, _)| *id == cgroup.id) {
        let msg = "the enforcement pinned by the previous agent stays in force".to_owned();
        tracing::warn!("{msg}");
        return Ok(msg);
    }
    let (mut loaded, maps) = load_programs(config, pins)?;
    let mut reconciler = Reconciler::new(maps)?;
    let deny_all = crate::enforce::compute(&Policy::default(), &HostCache::default(), &[], now());
    reconciler.apply(&deny_all)?;
    loaded.attach(pins, cgroup)?;
    let msg = format!(
        "all egress of {} is denied (loopback excepted) until an agent enforces a policy",
        cgroup.path.display()
    );
    tracing::warn!("{msg}");
    Ok(msg)
}
