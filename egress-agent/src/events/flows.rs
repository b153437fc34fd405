//! One record per denied flow, built from events and from the kernel's per-flow counts.
//!
//! Counting: the kernel keeps, per flow and per CPU, a total that only grows; events carry
//! that total. The table remembers, per (flow, CPU), the total it has accounted for, and adds
//! the difference whenever an event or a sweep shows a larger one. A smaller one means the
//! kernel evicted the flow and started again: it is all new. Nothing is counted twice, and a
//! denial whose event was never sent (or was lost) is still counted at the next sweep.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use egress_common::{Counter, Event, FlowKey, FlowStat, Hook, Proto, Verdict};
use serde::{Deserialize, Serialize};

/// A denied flow, as the CLI and the API show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Unix milliseconds of the first and the latest denial seen.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Denials of this flow.
    pub count: u64,
    /// `deny`, or `would-deny` (audit mode).
    pub verdict: String,
    /// `no_entry`, `wrong_port`, `wrong_protocol`, `internal` or `loopback_off_device`.
    pub reason: String,
    /// Which program judged: `connect4`, `connect6`, `sendmsg4`, `sendmsg6` or `wire`.
    pub hook: String,
    /// The socket's address family, `inet` or `inet6` (for the wire check: the packet's).
    pub family: String,
    pub destination: IpAddr,
    pub port: u16,
    /// `TCP`, `UDP`, `ICMP`, `ICMPv6`, `IP options`, `IPv6 routing header`, or the IP
    /// protocol number.
    pub protocol: String,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// `namespace/name` of the pod, when the agent tracks pods and knows this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The process of the latest event (0 and empty for the wire check, which has none).
    pub pid: u32,
    pub comm: String,
    /// Hostnames the kernel maps name for the destination (empty: unknown).
    pub hostnames: Vec<String>,
}

/// What the table cannot work out from a key alone.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub cgroup: Option<String>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub hostnames: Vec<String>,
}

pub struct FlowTable {
    flows: HashMap<FlowKey, FlowRecord>,
    /// Per (flow, CPU): the kernel total accounted for.
    accounted: HashMap<(FlowKey, u32), u64>,
    capacity: usize,
}

impl FlowTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            flows: HashMap::new(),
            accounted: HashMap::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.flows.contains_key(key)
    }

    /// Every record, oldest first (by first denial, then destination).
    pub fn records(&self) -> Vec<FlowRecord> {
        let mut out: Vec<FlowRecord> = self.flows.values().cloned().collect();
        out.sort_by(|a, b| {
            (a.first_seen_ms, a.destination, a.port).cmp(&(b.first_seen_ms, b.destination, b.port))
        });
        out
    }

    /// Folds in an event; `at_ms` is its time, `context` describes a new flow. Returns the
    /// record as it now stands.
    pub fn on_event(
        &mut self,
        event: &Event,
        at_ms: u64,
        context: impl FnOnce() -> Context,
    ) -> FlowRecord {
        let delta = self.account(event.key, event.cpu, event.total);
        let record = self.entry(event.key, at_ms, context);
        record.count += delta;
        record.first_seen_ms = record.first_seen_ms.min(at_ms);
        record.last_seen_ms = record.last_seen_ms.max(at_ms);
        record.pid = event.pid;
        record.comm = comm(&event.comm);
        let record = record.clone();
        self.evict();
        record
    }

    /// Folds in one CPU's count of a flow from a sweep of the kernel map; `first_ms` and
    /// `last_ms` are its first and latest denial. Returns the record if its count grew.
    pub fn on_sweep(
        &mut self,
        key: FlowKey,
        cpu: u32,
        stat: &FlowStat,
        first_ms: u64,
        last_ms: u64,
        context: impl FnOnce() -> Context,
    ) -> Option<FlowRecord> {
        let delta = self.account(key, cpu, stat.total);
        if delta == 0 {
            return None;
        }
        let record = self.entry(key, first_ms, context);
        record.count += delta;
        record.first_seen_ms = record.first_seen_ms.min(first_ms);
        record.last_seen_ms = record.last_seen_ms.max(last_ms);
        let record = record.clone();
        self.evict();
        Some(record)
    }

    /// How much of `total` is new for (flow, CPU), remembering it.
    fn account(&mut self, key: FlowKey, cpu: u32, total: u64) -> u64 {
        let seen = self.accounted.entry((key, cpu)).or_insert(0);
        let delta = if total >= *seen { total - *seen } else { total };
        *seen = total;
        delta
    }

    fn entry(
        &mut self,
        key: FlowKey,
        at_ms: u64,
        context: impl FnOnce() -> Context,
    ) -> &mut FlowRecord {
        self.flows.entry(key).or_insert_with(|| {
            let Context {
                cgroup,
                pod_uid,
                container_id,
                pod,
                hostnames,
            } = context();
            FlowRecord {
                first_seen_ms: at_ms,
                last_seen_ms: at_ms,
                count: 0,
                verdict: verdict_name(key.verdict).to_owned(),
                reason: if key.hook == Hook::SOCKET {
                    socket_kind_name(&key).to_owned()
                } else {
                    reason_name(key.reason).to_owned()
                },
                hook: hook_name(key.hook).to_owned(),
                family: family_name(&key).to_owned(),
                destination: destination(&key),
                port: key.port,
                protocol: protocol_name(key.proto),
                cgroup_id: key.cgroup_id,
                cgroup,
                pod_uid,
                container_id,
                pod,
                pid: 0,
                comm: String::new(),
                hostnames,
            }
        })
    }

    /// Keeps the table within its capacity: the least recently seen flows go, a tenth of the
    /// table at a time, so that a flood of new flows costs a sort per thousand flows, not
    /// one per flow.
    fn evict(&mut self) {
        if self.flows.len() <= self.capacity {
            return;
        }
        let keep = self.capacity - self.capacity / 10;
        let mut by_age: Vec<(u64, FlowKey)> = self
            .flows
            .iter()
            .map(|(k, r)| (r.last_seen_ms, *k))
            .collect();
        by_age.sort_unstable_by_key(|(t, _)| *t);
        let excess = self.flows.len() - keep;
        for (_, key) in by_age.into_iter().take(excess) {
            self.flows.remove(&key);
        }
        let flows = &self.flows;
        self.accounted.retain(|(k, _), _| flows.contains_key(k));
    }
}

/// The socket family: an AF_INET6 socket can reach IPv4 hosts (judged as IPv4), so the
/// hook says it, not the address.
fn family_name(key: &FlowKey) -> &'static str {
    match key.hook {
        Hook::CONNECT6 | Hook::SENDMSG6 => "inet6",
        Hook::WIRE | Hook::SOCKET if key.family == 6 => "inet6",
        Hook::SOCKET if key.family == egress_common::AF_PACKET => "packet",
        Hook::SOCKET if key.family == egress_common::AF_OTHER => "other",
        _ => "inet",
    }
}

/// Why a socket was refused at creation: its kind (the flow's `port` is the socket type).
pub fn socket_kind_name(key: &FlowKey) -> &'static str {
    const SOCK_RAW: u16 = 3;
    if key.family == egress_common::AF_PACKET {
        "packet_socket"
    } else if key.family == egress_common::AF_OTHER {
        "other_socket"
    } else if key.port == SOCK_RAW {
        "raw_socket"
    } else {
        "icmp_socket"
    }
}

pub fn destination(key: &FlowKey) -> IpAddr {
    if key.family == 4 {
        IpAddr::V4(Ipv4Addr::new(
            key.addr[0],
            key.addr[1],
            key.addr[2],
            key.addr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(key.addr))
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    printable(&String::from_utf8_lossy(&raw[..end]))
}

/// A name a workload chose (its command name), made safe for a terminal and a log line:
/// control characters (escape sequences, newlines that would forge a line) are escaped.
pub fn printable(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

pub fn verdict_name(v: Verdict) -> &'static str {
    if v == Verdict::WOULD_DENY {
        "would-deny"
    } else {
        "deny"
    }
}

pub fn reason_name(reason: u8) -> &'static str {
    match Counter(u32::from(reason)) {
        Counter::DENY_NO_ENTRY => "no_entry",
        Counter::DENY_PORT => "wrong_port",
        Counter::DENY_PROTOCOL => "wrong_protocol",
        Counter::DENY_INTERNAL => "internal",
        Counter::WIRE_LOOPBACK => "loopback_off_device",
        Counter::DENY_SOCKET => "socket",
        _ => "unknown",
    }
}

pub fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::CONNECT4 => "connect4",
        Hook::CONNECT6 => "connect6",
        Hook::SENDMSG4 => "sendmsg4",
        Hook::SENDMSG6 => "sendmsg6",
        Hook::WIRE => "wire",
        Hook::SOCKET => "socket",
        _ => "unknown",
    }
}

pub fn protocol_name(proto: Proto) -> String {
    match proto.0 {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        0 => "IP options".into(),
        43 => "IPv6 routing header".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_cannot_drive_a_terminal_or_forge_lines() {
        let mut raw = [0u8; 16];
        raw[..15].copy_from_slice(b"\x1b[2J\nFAKE ok\x07..");
        let shown = comm(&raw);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.starts_with("\\u{1b}[2J\\nFAKE ok"), "{shown:?}");
    }

    fn key(port: u16) -> FlowKey {
        FlowKey {
            cgroup_id: 7,
            addr: [203, 0, 113, 66, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port,
            proto: Proto::TCP,
            family: 4,
            reason: Counter::DENY_NO_ENTRY.0 as u8,
            hook: Hook::CONNECT4,
            verdict: Verdict::DENY,
            reserved: 0,
        }
    }

    fn event(key: FlowKey, cpu: u32, total: u64) -> Event {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Event {
            key,
            ts_ns: 0,
            total,
            pid: 42,
            cpu,
            comm,
        }
    }

    fn stat(total: u64) -> FlowStat {
        FlowStat {
            total,
            ..FlowStat::default()
        }
    }

    #[test]
    fn events_and_sweeps_count_every_denial_once() {
        let mut t = FlowTable::new(100);
        let k = key(443);
        let r = t.on_event(&event(k, 0, 1), 1_000, Context::default);
        assert_eq!((r.count, r.pid, r.comm.as_str()), (1, 42, "curl"));
        assert_eq!(r.destination.to_string(), "203.0.113.66");
        assert_eq!(
            (r.reason.as_str(), r.hook.as_str()),
            ("no_entry", "connect4")
        );
        // 9 more denials on CPU 0 sent no event; a sweep finds them.
        let r = t
            .on_sweep(k, 0, &stat(10), 1_000, 1_500, Context::default)
            .unwrap();
        assert_eq!((r.count, r.last_seen_ms), (10, 1_500));
        // The same sweep again adds nothing.
        assert!(
            t.on_sweep(k, 0, &stat(10), 1_000, 1_500, Context::default)
                .is_none()
        );
        // Another CPU: its own totals.
        let r = t.on_event(&event(k, 1, 3), 2_000, Context::default);
        assert_eq!(r.count, 13);
        // An event carrying a total already swept adds only the rest.
        let r = t.on_event(&event(k, 0, 12), 2_500, Context::default);
        assert_eq!(r.count, 15);
        // The kernel evicted and restarted the flow: its new total is all new.
        let r = t.on_event(&event(k, 0, 2), 3_000, Context::default);
        assert_eq!(r.count, 17);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_flow_known_only_from_a_sweep_is_recorded() {
        let mut t = FlowTable::new(100);
        let r = t
            .on_sweep(key(80), 3, &stat(5), 100, 200, || Context {
                hostnames: vec!["api.test".into()],
                ..Context::default()
            })
            .unwrap();
        assert_eq!((r.count, r.first_seen_ms, r.last_seen_ms), (5, 100, 200));
        assert_eq!(r.hostnames, ["api.test"]);
        assert_eq!(r.pid, 0);
    }

    #[test]
    fn the_least_recently_seen_flows_are_evicted() {
        let mut t = FlowTable::new(2);
        t.on_event(&event(key(1), 0, 1), 10, Context::default);
        t.on_event(&event(key(2), 0, 1), 20, Context::default);
        t.on_event(&event(key(1), 0, 2), 30, Context::default);
        t.on_event(&event(key(3), 0, 1), 40, Context::default);
        let ports: Vec<u16> = t.records().iter().map(|r| r.port).collect();
        assert_eq!(ports, [1, 3]);
    }

    #[test]
    fn a_flood_of_new_flows_stays_within_capacity_cheaply() {
        let mut t = FlowTable::new(1000);
        for port in 0..50_000u16 {
            t.on_event(&event(key(port), 0, 1), u64::from(port), Context::default);
        }
        assert!(t.len() <= 1000);
        assert!(t.accounted.len() <= 1000);
        // The newest flows stay.
        assert!(t.contains(&key(49_999)));
    }
}
