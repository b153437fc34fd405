//! The task that owns the event maps: it drains the ring buffer as it fills, and sweeps the
//! per-flow counts every second.

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use egress_common::{ClassId, Event, FlowKey, SourceKind};
use tokio::io::unix::AsyncFd;

use super::{
    EventHub,
    cgroups::{CgroupNames, kubelet_ids},
    flows::{Context, FlowRecord, destination},
};
use crate::{
    bpf::{PinnedMaps, loader::EventMaps},
    enforce::source::label,
};

/// How often the per-flow counts are read back.
const SWEEP: Duration = Duration::from_secs(1);

/// Reads events and counts until the task is dropped.
pub async fn run(
    maps: EventMaps,
    lookup: PinnedMaps,
    cgroup_root: &Path,
    hub: EventHub,
    pods: Option<tokio::sync::watch::Receiver<crate::pods::Tracked>>,
) {
    let EventMaps { events, flows } = maps;
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, for as long as the
    // AsyncFd that takes it exists.
    let mut ring = match unsafe { AsyncFd::register(events) } {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the event ring buffer; denials are counted but not reported");
            return;
        }
    };
    let mut describe = Describer {
        cgroups: CgroupNames::new(cgroup_root),
        lookup,
        pods,
    };
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { return };
                let mut batch = Vec::new();
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if item.len() >= size_of::<Event>() {
                        // SAFETY: the programs write whole `Event`s; the length was checked.
                        batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
                    }
                }
                guard.clear_ready();
                let clock = Clock::now();
                hub.update(|table| {
                    batch
                        .iter()
                        .map(|e| {
                            let new = !table.contains(&e.key);
                            let record = table.on_event(e, clock.wall_ms(e.ts_ns), || describe.context(&e.key));
                            if new {
                                log_new(&record);
                            }
                            record
                        })
                        .collect()
                });
            }
            _ = sweep.tick() => {
                let clock = Clock::now();
                let mut counts = Vec::new();
                for item in flows.iter() {
                    let Ok((key, per_cpu)) = item else { break };
                    for (cpu, stat) in per_cpu.iter().enumerate() {
                        if stat.total > 0 {
                            counts.push((key, cpu as u32, *stat));
                        }
                    }
                }
                hub.update(|table| {
                    counts
                        .iter()
                        .filter_map(|(key, cpu, stat)| {
                            table.on_sweep(
                                *key,
                                *cpu,
                                stat,
                                clock.wall_ms(stat.first_ns),
                                clock.wall_ms(stat.last_ns),
                                || describe.context(key),
                            )
                        })
                        .collect()
                });
            }
        }
    }
}

/// The first denial of a flow, in the log (later ones only change its count).
fn log_new(r: &FlowRecord) {
    tracing::info!(
        verdict = %r.verdict,
        reason = %r.reason,
        hook = %r.hook,
        destination = %r.destination,
        port = r.port,
        protocol = %r.protocol,
        cgroup = r.cgroup.as_deref().unwrap_or("?"),
        pod_uid = r.pod_uid.as_deref().unwrap_or(""),
        pod = r.pod.as_deref().unwrap_or(""),
        pid = r.pid,
        comm = %r.comm,
        hostnames = %r.hostnames.join(","),
        "egress denied"
    );
}

struct Describer {
    cgroups: CgroupNames,
    lookup: PinnedMaps,
    /// The tracked pods, for the namespace and name of a pod UID.
    pods: Option<tokio::sync::watch::Receiver<crate::pods::Tracked>>,
}

impl Describer {
    fn context(&mut self, key: &FlowKey) -> Context {
        let cgroup = self.cgroups.path_of(key.cgroup_id);
        let (pod_uid, container_id) = cgroup
            .as_deref()
            .map(|p| kubelet_ids(&p.display().to_string()))
            .unwrap_or_default();
        let pod = pod_uid.as_ref().and_then(|uid| {
            let tracked = self.pods.as_ref()?.borrow();
            tracked.names.get(uid).cloned()
        });
        Context {
            cgroup: cgroup.map(|p| super::flows::printable(&p.display().to_string())),
            pod_uid,
            container_id,
            pod,
            hostnames: hostnames(&self.lookup, destination(key)),
        }
    }
}

/// The hostnames the kernel maps name for an address (through its entry's sources): the
/// node-wide entry's, else those of the first class that has one.
pub fn hostnames(maps: &PinnedMaps, addr: IpAddr) -> Vec<String> {
    let mut classes: Vec<ClassId> = maps.classes().into_values().collect();
    classes.sort_unstable();
    classes.dedup();
    let found = std::iter::once(ClassId::BASE)
        .chain(classes)
        .find_map(|class| maps.lookup(class, addr));
    let Some((_, entry)) = found else {
        return Vec::new();
    };
    let held = (entry.source_count as usize).min(entry.sources.len());
    entry.sources[..held]
        .iter()
        .filter_map(|id| maps.source(*id))
        .filter(|r| r.kind == SourceKind::HOST)
        .map(|r| label(&r))
        .collect()
}

/// Turns the kernel's CLOCK_MONOTONIC nanoseconds into Unix milliseconds.
struct Clock {
    wall_ms: u64,
    mono_ns: u64,
}

impl Clock {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write into.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Self {
            wall_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    fn wall_ms(&self, mono_ns: u64) -> u64 {
        self.wall_ms
            .saturating_sub(self.mono_ns.saturating_sub(mono_ns) / 1_000_000)
    }
}
