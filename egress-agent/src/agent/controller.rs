//! The agent loop's state and its reactions: one task owns the policy, the host cache and
//! the maps; resolutions run as separate tasks and report back over a channel.

use std::{future::Future, net::IpAddr, os::unix::fs::MetadataExt as _, sync::Arc, time::Duration};

use egress_common::ResolveStatus;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Semaphore, mpsc},
};

use super::{
    AgentConfig, AgentError, metrics::AgentMetrics, now, startup::PinLock, status,
    watch::PolicyWatcher,
};
use crate::{
    bpf::{Cgroup, Loaded, PinnedMaps, Pins},
    enforce::{
        Reconciler, Target,
        desired::{check_representable, compute_for},
    },
    pods::Tracked,
    policy::{self, Hostname, Policy},
    resolve::{HostCache, Outcome, Upstream},
};

/// Resolutions in flight at once.
const MAX_CONCURRENT_QUERIES: usize = 64;
/// How soon a failed (or unfinished) reconciliation is tried again.
const RECONCILE_RETRY: Duration = Duration::from_secs(2);
/// How often the enforced cgroup is checked for having been deleted and created again.
const CGROUP_CHECK: Duration = Duration::from_millis(500);

pub struct Controller {
    config: AgentConfig,
    policy: Policy,
    digest: String,
    cache: HostCache,
    reconciler: Reconciler<PinnedMaps>,
    upstream: Arc<Upstream>,
    upstream_ips: Vec<IpAddr>,
    results_tx: mpsc::UnboundedSender<(Hostname, Outcome)>,
    results: mpsc::UnboundedReceiver<(Hostname, Outcome)>,
    queries: Arc<Semaphore>,
    status: status::Status,
    /// Digest of the last file content tried, applied or not, so that an unchanged bad file
    /// is not reported again on every directory event.
    last_tried: String,
    /// The pin directory's lock, held while the agent runs.
    lock: Option<PinLock>,
    /// When the maps need another reconciliation: the last one failed, or port sets wait for
    /// removal.
    retry_at: Option<tokio::time::Instant>,
    /// The attached programs and where, kept to attach again if the cgroup is recreated.
    attachment: Option<Attachment>,
    /// What keeps the maps from holding exactly the policy (from the last reconciliation).
    map_problems: Vec<String>,
    /// Set while the enforced cgroup is missing.
    cgroup_problem: Option<String>,
    observers: Observers,
    /// The node's pods, when they are tracked (`--node-name`), and the latest of them.
    pods: Option<tokio::sync::watch::Receiver<Tracked>>,
    tracked: Tracked,
}

/// The next change of the tracked pods; never, when pods are not tracked. Cancellation
/// safe, as the loop's `select!` needs.
async fn pods_changed(rx: &mut Option<tokio::sync::watch::Receiver<Tracked>>) -> Option<Tracked> {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            Some(rx.borrow_and_update().clone())
        }
        None => std::future::pending().await,
    }
}

/// Where the agent's figures go besides the status file.
pub struct Observers {
    pub metrics: Arc<AgentMetrics>,
    pub status: tokio::sync::watch::Sender<status::Status>,
}

impl Default for Observers {
    fn default() -> Self {
        Self {
            metrics: Arc::default(),
            status: tokio::sync::watch::channel(status::Status::default()).0,
        }
    }
}

/// The loaded programs, the cgroup they are attached to, and the pins of their links.
pub(super) struct Attachment {
    pub loaded: Loaded,
    pub cgroup: Cgroup,
    pub pins: Pins,
}

impl Controller {
    #[expect(clippy::too_many_arguments, reason = "built once, by startup::start")]
    pub(super) fn new(
        config: AgentConfig,
        policy: Policy,
        digest: String,
        cache: HostCache,
        reconciler: Reconciler<PinnedMaps>,
        upstream: Upstream,
        upstream_ips: Vec<IpAddr>,
        status: status::Status,
        observers: Observers,
        mut pods: Option<tokio::sync::watch::Receiver<Tracked>>,
    ) -> Self {
        let (results_tx, results) = mpsc::unbounded_channel();
        let tracked = pods
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .unwrap_or_default();
        let mut c = Self {
            config,
            policy,
            last_tried: digest.clone(),
            digest,
            cache,
            reconciler,
            upstream: Arc::new(upstream),
            upstream_ips,
            results_tx,
            results,
            queries: Arc::new(Semaphore::new(MAX_CONCURRENT_QUERIES)),
            status,
            lock: None,
            retry_at: None,
            attachment: None,
            map_problems: Vec::new(),
            cgroup_problem: None,
            observers,
            pods,
            tracked,
        };
        c.record_applied_policy();
        c
    }

    /// The tracked pods, for the event reader (none when pods are not tracked).
    pub(super) fn pods_watch(&self) -> Option<tokio::sync::watch::Receiver<Tracked>> {
        self.pods.clone()
    }

    pub(super) fn hold(&mut self, lock: PinLock) {
        self.lock = Some(lock);
    }

    pub(super) fn keep(&mut self, attachment: Attachment) {
        self.attachment = Some(attachment);
    }

    fn publish_problems(&mut self) {
        self.status.problems = self
            .cgroup_problem
            .iter()
            .chain(&self.map_problems)
            .cloned()
            .collect();
    }

    /// The enforced cgroup, deleted and created again, is a new cgroup (a new id) without
    /// the programs: attach them to it. While it is missing, say so.
    fn check_cgroup(&mut self) {
        let Some(a) = &mut self.attachment else {
            return;
        };
        let problem = match std::fs::metadata(&a.cgroup.path).map(|m| m.ino()) {
            Ok(id) if id == a.cgroup.id => None,
            Ok(id) => {
                let recreated = Cgroup {
                    path: a.cgroup.path.clone(),
                    id,
                };
                match a.loaded.attach(&a.pins, &recreated) {
                    Ok(_) => {
                        tracing::warn!(
                            cgroup = %recreated.path.display(),
                            old_id = a.cgroup.id,
                            new_id = id,
                            "the enforced cgroup was created anew; the programs are attached to it"
                        );
                        a.cgroup = recreated;
                        self.status.cgroup_id = id;
                        None
                    }
                    Err(e) => Some(format!(
                        "the enforced cgroup {} was created anew and the programs could not be \
                         attached to it: {e}",
                        a.cgroup.path.display()
                    )),
                }
            }
            Err(e) => Some(format!(
                "the enforced cgroup {} is gone ({e}); the programs attach again when it reappears",
                a.cgroup.path.display()
            )),
        };
        if problem != self.cgroup_problem {
            if let Some(p) = &problem {
                tracing::error!("{p}");
            }
            self.cgroup_problem = problem;
            self.publish_problems();
            self.write_status();
        } else if self.status.cgroup_id != a.cgroup.id {
            self.write_status();
        }
    }

    /// Plans the next reconciliation when the last one failed or left port sets retiring.
    fn schedule_retry(&mut self, failed: bool) {
        self.retry_at = (failed || self.reconciler.retiring())
            .then(|| tokio::time::Instant::now() + RECONCILE_RETRY);
    }

    pub(super) fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn max_entries(&self) -> u32 {
        self.config.max_entries
    }

    /// Records where the metrics endpoint listens.
    pub(super) fn set_metrics_address(&mut self, addr: std::net::SocketAddr) {
        self.status.metrics = Some(addr.to_string());
        self.write_status();
    }

    /// Drops the capabilities the loop does not need (see [`super::privileges`]). A failure
    /// is reported, not fatal: enforcement does not depend on it.
    pub(super) fn drop_privileges(&mut self) {
        let effective = super::privileges::threads()
            .first()
            .map_or(0, |(_, c)| c.effective);
        let keep = super::privileges::needed(effective);
        match super::privileges::drop_all_but(keep) {
            Ok(kept) => {
                self.status.capabilities = format!("{kept:016x}");
                tracing::info!(
                    kept = format!("{kept:016x}"),
                    "capabilities dropped to what the loop needs"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "could not drop capabilities");
                self.status.capabilities = format!("not dropped: {e}");
            }
        }
        self.write_status();
    }

    pub(super) fn mark_ready(&mut self) {
        self.status.ready = true;
        self.write_status();
        tracing::info!(
            cgroup = %self.status.cgroup,
            mode = %self.policy.mode,
            rules = self.policy.rules.len(),
            hosts = self.cache.iter().count(),
            "enforcing"
        );
    }

    /// The agent loop.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let mut watcher = PolicyWatcher::new(&self.config.policy);
        let mut hangup = signal(SignalKind::hangup()).map_err(|source| AgentError::Io {
            what: "install SIGHUP handler for",
            path: self.config.policy.clone(),
            source,
        })?;
        tokio::pin!(shutdown);
        let mut cgroup_check = tokio::time::interval(CGROUP_CHECK);
        // Every branch below is cancellation safe, and timers are absolute deadlines: the
        // twice-a-second cgroup check wins the select often, and must not starve the others.
        loop {
            let cache_due = self.cache.next_deadline().map_or(
                tokio::time::Instant::now() + Duration::from_secs(3600),
                |t| tokio::time::Instant::now() + Duration::from_secs(t.saturating_sub(now())),
            );
            let deadline = self.retry_at.map_or(cache_due, |r| r.min(cache_due));
            tokio::select! {
                () = &mut shutdown => break,
                _ = cgroup_check.tick() => {
                    self.observers.metrics.beat();
                    self.check_cgroup();
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the policy and refreshing every name");
                    self.reload(true).await;
                }
                () = watcher.changed() => self.reload(false).await,
                Some(tracked) = pods_changed(&mut self.pods) => {
                    tracing::debug!(
                        placed = tracked.pods.by_cgroup.len(),
                        unplaced = tracked.unplaced.len(),
                        "pods changed"
                    );
                    self.tracked = tracked;
                    let _ = self.reconcile();
                }
                Some((host, outcome)) = self.results.recv() => {
                    self.on_resolved(host, outcome);
                    while let Ok((host, outcome)) = self.results.try_recv() {
                        self.on_resolved(host, outcome);
                    }
                    let _ = self.reconcile();
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.spawn_due();
                    let retry_due = self
                        .retry_at
                        .is_some_and(|r| r <= tokio::time::Instant::now());
                    if self.cache.prune(now()) || retry_due {
                        let _ = self.reconcile();
                    }
                }
            }
        }
        self.status.running = false;
        self.write_status();
        tracing::info!("stopping; the programs stay attached and the maps pinned");
        Ok(())
    }

    /// Starts a resolution for every name that is due.
    fn spawn_due(&mut self) {
        for host in self.cache.take_due(now()) {
            self.spawn_resolution(host);
        }
    }

    /// Resolves `host` on its own task; the answer comes back through `results`.
    fn spawn_resolution(&self, host: Hostname) {
        let (upstream, tx, queries) = (
            self.upstream.clone(),
            self.results_tx.clone(),
            self.queries.clone(),
        );
        let metrics = self.observers.metrics.clone();
        tokio::spawn(async move {
            let _permit = queries.acquire_owned().await;
            let started = std::time::Instant::now();
            let outcome = upstream.resolve(&host).await;
            let result = match &outcome {
                Outcome::Addresses(_) => "ok",
                Outcome::NoAddress { nxdomain: true, .. } => "nxdomain",
                Outcome::NoAddress { .. } => "no_address",
                Outcome::Failed(_) => "error",
            };
            metrics.dns(result, started.elapsed().as_secs_f64());
            let _ = tx.send((host, outcome));
        });
    }

    /// Resolves every due name and waits (up to `resolve_wait`) for the answers, so that a
    /// start or a reload applies addresses rather than an empty set that fills in later.
    pub(super) async fn resolve_due_and_wait(&mut self) {
        let pending: std::collections::BTreeSet<Hostname> =
            self.cache.take_due(now()).into_iter().collect();
        if pending.is_empty() {
            return;
        }
        for host in &pending {
            self.spawn_resolution(host.clone());
        }
        let total = pending.len();
        let mut waiting = total;
        let deadline = tokio::time::Instant::now() + self.config.resolve_wait;
        while waiting > 0 {
            match tokio::time::timeout_at(deadline, self.results.recv()).await {
                Ok(Some((host, outcome))) => {
                    if pending.contains(&host) {
                        waiting -= 1;
                    }
                    self.on_resolved(host, outcome);
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        unanswered = waiting,
                        "names still resolving; applying without them for now"
                    );
                    break;
                }
            }
        }
    }

    fn on_resolved(&mut self, host: Hostname, outcome: Outcome) {
        let before = self.cache.get(&host).map(|s| s.status);
        let summary = match &outcome {
            Outcome::Addresses(a) => format!("{} addresses", a.len()),
            Outcome::NoAddress { nxdomain: true, .. } => "NXDOMAIN".into(),
            Outcome::NoAddress { .. } => "no A/AAAA records".into(),
            Outcome::Failed(e) => e.clone(),
        };
        self.cache.apply(&host, outcome, now());
        let after = self.cache.get(&host).map(|s| s.status);
        // Log changes of state, not every refresh: a name that stays missing warns once.
        if before != after {
            match after {
                Some(ResolveStatus::OK) if before == Some(ResolveStatus::PENDING) => {
                    tracing::debug!(%host, %summary, "resolved");
                }
                Some(ResolveStatus::OK) => tracing::info!(%host, %summary, "resolved again"),
                Some(ResolveStatus::FAILING) => {
                    tracing::warn!(%host, error = %summary, "resolution failing; keeping the last known addresses")
                }
                _ => {
                    tracing::warn!(%host, answer = %summary, "name has no address; it allows nothing")
                }
            }
        } else {
            tracing::debug!(%host, %summary, "refreshed");
        }
    }

    /// Computes the desired maps and writes the difference. An error is logged and kept in
    /// the status (what could be written was, removals included) and returned; the loop
    /// tries again shortly.
    fn reconcile(&mut self) -> Result<(), String> {
        let result = self.try_reconcile().map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "failed to update the maps fully; retrying shortly");
            self.map_problems = vec![e.clone()];
            self.publish_problems();
            self.write_status();
        }
        self.schedule_retry(result.is_err());
        result
    }

    /// As [`Self::reconcile`], but the error is returned (start-up).
    pub(super) fn reconcile_or_fail(&mut self) -> Result<(), AgentError> {
        self.try_reconcile()?;
        self.schedule_retry(false);
        Ok(())
    }

    fn try_reconcile(&mut self) -> Result<(), AgentError> {
        let at = now();
        let mut desired = compute_for(
            &self.policy,
            &self.cache,
            &self.upstream_ips,
            at,
            &self.tracked.pods,
        );
        let mut problems = Vec::new();
        // Pods' classes that do not fit the maps must not freeze the placements (a pod
        // relabelled into a scoped deny would keep its old allowance): every pod then gets
        // the unknown class — node-wide allows minus every deny — which needs no entries
        // per pod, and the agent says so.
        if !desired.classes.is_empty() && self.reconciler.preflight(&desired).is_err() {
            let unplaced = crate::enforce::desired::Pods {
                first_level: self.tracked.pods.first_level,
                exempt: self.tracked.pods.exempt.clone(),
                ..Default::default()
            };
            let fallback =
                compute_for(&self.policy, &self.cache, &self.upstream_ips, at, &unplaced);
            if self.reconciler.preflight(&fallback).is_ok() {
                let msg = format!(
                    "the classes of {} pods do not fit the maps (--max-entries {}); every \
                     pod gets the unknown class (node-wide allows minus every deny) until \
                     they do",
                    self.tracked.pods.by_cgroup.len(),
                    self.config.max_entries
                );
                tracing::error!("{msg}");
                problems.push(msg);
                desired = fallback;
            }
        }
        for (key, err, sources) in &desired.closed {
            let msg = format!(
                "{key} ({}) {err}; it is denied on every port until the policy fits",
                sources.join(", ")
            );
            tracing::error!("{msg}");
            problems.push(msg);
        }
        let applied = match self.reconciler.apply(&desired) {
            Ok(applied) => applied,
            Err(e) => {
                self.count_entries();
                return Err(e.into());
            }
        };
        if applied != Default::default() {
            tracing::debug!(
                added = applied.added,
                changed = applied.changed,
                removed = applied.removed,
                "maps updated"
            );
        }
        if applied.added + applied.changed + applied.removed >= TRIM_AFTER {
            drop(desired);
            release_freed_memory();
        }
        self.map_problems = problems;
        self.publish_problems();
        self.count_entries();
        self.write_status();
        Ok(())
    }

    /// Re-reads the policy file; applies it when its content changed (or when `force`).
    async fn reload(&mut self, force: bool) {
        let text = policy::read(&self.config.policy).map_err(|e| e.to_string());
        // An unreadable file is identified by its error, so it is reported once too.
        let digest = policy::digest(text.as_deref().unwrap_or_else(|e| e));
        if !force && digest == self.last_tried {
            return;
        }
        self.last_tried = digest.clone();
        let at = now();
        let file = self.config.policy.display().to_string();
        let loaded = text.and_then(|text| {
            let p = policy::parse(&text, &file).map_err(|e| e.to_string())?;
            self.fits(&p, at)?;
            Ok((p, policy::digest(&text)))
        });
        let (new_policy, new_digest) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::error!(%error, "policy rejected; the last good policy stays in force");
                self.status.reloads_failed += 1;
                self.observers.metrics.reload(false, at);
                self.status.last_reload = Some(status::Reload {
                    at,
                    ok: false,
                    digest,
                    error: Some(error),
                });
                self.write_status();
                return;
            }
        };
        if force {
            self.cache.refresh_all(at);
        }
        for note in &new_policy.notes {
            tracing::info!(note = %note, "policy note");
        }
        self.cache.sync(new_policy.hosts().into_keys(), at);
        self.policy = new_policy;
        self.digest = new_digest;
        self.resolve_due_and_wait().await;
        let applied = self.reconcile();
        match &applied {
            Ok(()) => self.status.reloads_ok += 1,
            Err(_) => self.status.reloads_failed += 1,
        }
        self.observers.metrics.reload(applied.is_ok(), at);
        self.status.last_reload = Some(status::Reload {
            at,
            ok: applied.is_ok(),
            digest: self.digest.clone(),
            error: applied.err().map(|e| {
                format!("the policy is in force, but the maps could not be fully updated: {e}")
            }),
        });
        self.record_applied_policy();
        self.write_status();
        tracing::info!(mode = %self.policy.mode, rules = self.policy.rules.len(), "policy applied");
    }

    /// Refuses a policy whose literal addresses and prefixes cannot be enforced (too many port
    /// ranges for one destination, or more entries than the maps hold), before anything is
    /// touched. What names will resolve to is checked when it is known.
    pub(super) fn fits(&self, policy: &Policy, at: u64) -> Result<(), String> {
        let file = self.config.policy.display().to_string();
        let probe = check_representable(policy, &self.upstream_ips, at, &file)?;
        self.reconciler
            .preflight(&probe)
            .map_err(|e| format!("{file}: {e}"))
    }

    fn record_applied_policy(&mut self) {
        self.status.policy = Some(status::AppliedPolicy {
            path: std::path::absolute(&self.config.policy)
                .unwrap_or_else(|_| self.config.policy.clone())
                .display()
                .to_string(),
            digest: self.digest.clone(),
            applied_at: now(),
            mode: self.policy.mode.to_string(),
            default_action: self.policy.default_action.to_string(),
            rules: self.policy.rules.len(),
        });
        self.status.hosts = self.cache.iter().count();
    }

    fn count_entries(&mut self) {
        let mut counts = status::EntryCounts::default();
        for key in self.reconciler.entries().keys() {
            match key.target {
                Target::V4(_) => counts.v4 += 1,
                Target::V6(_) => counts.v6 += 1,
                Target::Net4(_) => counts.cidr_v4 += 1,
                Target::Net6(_) => counts.cidr_v6 += 1,
            }
        }
        counts.port_sets = self.reconciler.ports().len();
        if self.pods.is_some() {
            let mut classes: std::collections::BTreeSet<_> =
                self.reconciler.entries().keys().map(|k| k.class).collect();
            classes.insert(egress_common::ClassId::BASE);
            // What the kernel holds, not what was wanted (they differ when classes do not
            // fit).
            let exempt = &self.tracked.pods.exempt;
            let placed = if self.policy.scoped() {
                self.reconciler
                    .classes()
                    .keys()
                    .filter(|c| !exempt.contains(c))
                    .count()
            } else {
                // Nothing to place: every known pod has the node-wide rules.
                self.tracked.pods.by_cgroup.len()
            };
            self.status.pods = Some(status::PodsStatus {
                placed,
                unplaced: self.tracked.unplaced.clone(),
                synced: self.tracked.synced,
                classes: classes.len(),
            });
        }
        counts.sources = self.reconciler.sources().len();
        self.status.entries = counts;
        self.status.hosts = self.cache.iter().count();
    }

    /// Writes the status file and hands the status to the metrics endpoint.
    fn write_status(&self) {
        if let Err(e) = status::write(&self.config.state_dir, &self.status) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
        self.observers.status.send_replace(self.status.clone());
    }
}

/// Map writes after which the memory freed by the computation is handed back.
const TRIM_AFTER: usize = 1000;

/// Gives the pages that freed allocations leave behind back to the kernel. Computing the maps'
/// content for a large policy allocates transiently several times what the agent keeps; glibc
/// keeps those pages (they are not at the top of the heap), so the resident size would stay
/// at the peak for the agent's whole life. `malloc_trim` also returns free pages inside the
/// heap (glibc ≥ 2.8). Other allocators (musl, in the static image) are left alone.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
