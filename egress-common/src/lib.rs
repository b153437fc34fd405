//! The contract between the kernel programs (`egress-ebpf`) and user space (`egress-agent`).
//!
//! Everything that crosses the boundary lives here: program and map names, map keys and
//! values, and the small newtypes their fields use. Rules for these types:
//! - `#[repr(C)]`, `Copy`, explicit `reserved` fields instead of implicit padding, no `bool`,
//!   no Rust enums and no `Option` (the kernel sees raw bytes);
//! - addresses are byte arrays in network order, exactly as the kernel stores them;
//! - every key and value has a compile-time size assertion, so a layout change is a
//!   deliberate act that also bumps [`LAYOUT_VERSION`].
#![no_std]

use core::mem::size_of;

/// Bumped whenever a key or value layout below changes. The agent pins maps under a
/// directory named after it, so a new layout gets new maps instead of misreading old ones.
pub const LAYOUT_VERSION: u32 = 6;

/// Program names (the Rust function names of the kernel entry points).
pub mod programs {
    pub const CONNECT4: &str = "egress_connect4";
    pub const CONNECT6: &str = "egress_connect6";
    pub const SENDMSG4: &str = "egress_sendmsg4";
    pub const SENDMSG6: &str = "egress_sendmsg6";
    /// `cgroup_skb/egress`: the second line, judging the packets that actually leave.
    pub const WIRE: &str = "egress_wire";
    /// `cgroup/sock_create`: refuses raw and ICMP sockets, which no address hook sees.
    pub const SOCK_CREATE: &str = "egress_sock_create";
    /// `lsm_cgroup/socket_create`: refuses packet sockets. Only where the BPF LSM is active
    /// (not part of [`ALL`]).
    pub const PACKET_SOCKET: &str = "egress_packet_socket";
    /// The LSM hook it attaches to.
    pub const PACKET_SOCKET_HOOK: &str = "socket_create";
    /// The `cgroup/sock_addr` programs.
    pub const SOCK_ADDR: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
    /// Every program, in attach order: socket creation first, so that no raw socket can be
    /// made in the moment between the address hooks and it.
    pub const ALL: [&str; 6] = [SOCK_CREATE, CONNECT4, CONNECT6, SENDMSG4, SENDMSG6, WIRE];
}

/// Map names (the symbol names of the map statics in `egress-ebpf`).
pub mod maps {
    /// Exact IPv4 destinations: [`crate::V4Key`] → [`crate::AllowEntry`].
    pub const ALLOW_V4: &str = "EGRESS_ALLOW_V4";
    /// Exact IPv6 destinations: [`crate::V6Key`] → [`crate::AllowEntry`].
    pub const ALLOW_V6: &str = "EGRESS_ALLOW_V6";
    /// IPv4 prefixes (LPM trie): `Key<[u8; 4]>` → [`crate::AllowEntry`].
    pub const CIDR_V4: &str = "EGRESS_CIDR_V4";
    /// IPv6 prefixes (LPM trie): `Key<[u8; 16]>` → [`crate::AllowEntry`].
    pub const CIDR_V6: &str = "EGRESS_CIDR_V6";
    /// Port sets the entries refer to: [`crate::PortSetId`] → [`crate::PortRanges`].
    pub const PORTS: &str = "EGRESS_PORTS";
    /// One [`crate::Config`] at index 0.
    pub const CONFIG: &str = "EGRESS_CONFIG";
    /// Per-CPU verdict counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "EGRESS_COUNTERS";
    /// Where entries come from (hostnames, rules): [`crate::SourceId`] → [`crate::SourceRecord`].
    /// Only user space reads it; it lives in bpffs so it is pinned with the entries it explains.
    pub const SOURCES: &str = "EGRESS_SOURCES";
    /// Which policy class a pod's cgroup is in: cgroup id (`u64`) → [`crate::ClassId`]. The
    /// hooks look up the caller's cgroup ancestry in it (see [`crate::Config`]).
    pub const CLASSES: &str = "EGRESS_CLASSES";
    /// Ring buffer of [`crate::Event`]s: the first denial of a flow, then at most one a second.
    pub const EVENTS: &str = "EGRESS_EVENTS";
    /// Per-CPU LRU hash [`crate::FlowKey`] → [`crate::FlowStat`]: every denial counted, so
    /// counts stay exact however few events are sent and however many are lost.
    pub const FLOWS: &str = "EGRESS_FLOWS";
    /// The socket kinds a class may create: [`crate::ClassId`] → [`crate::SocketKinds`]. A
    /// class without an entry gets the node-wide one ([`crate::ClassId::BASE`]).
    pub const SOCKETS: &str = "EGRESS_SOCKETS";
    /// Every map, for pinning and for the ELF symbol test.
    pub const ALL: [&str; 12] = [
        ALLOW_V4, ALLOW_V6, CIDR_V4, CIDR_V6, PORTS, CONFIG, COUNTERS, SOURCES, CLASSES, EVENTS,
        FLOWS, SOCKETS,
    ];
    /// Maps pinned in a generation directory (the ring buffer is each agent's own).
    pub const PINNED: [&str; 11] = [
        ALLOW_V4, ALLOW_V6, CIDR_V4, CIDR_V6, PORTS, CONFIG, COUNTERS, SOURCES, CLASSES, FLOWS,
        SOCKETS,
    ];
    /// Maps whose capacity follows the agent's `--max-entries`.
    pub const SIZED: [&str; 6] = [ALLOW_V4, ALLOW_V6, CIDR_V4, CIDR_V6, PORTS, SOURCES];
}

/// Default capacity of each sized map.
pub const DEFAULT_MAX_ENTRIES: u32 = 65_536;
/// Capacity of [`maps::CLASSES`]: pod cgroups one node can hold (kubelet's default is 110
/// pods; the largest supported settings stay far below this).
pub const CLASS_SLOTS: u32 = 16_384;
/// Cgroup levels the hooks search for a pod's class, starting at
/// [`Config::class_first_level`]: a pod's cgroup is one (Guaranteed QoS) or two (Burstable,
/// BestEffort) levels below the pods' root; the bound leaves room for nesting.
pub const MAX_CLASS_LEVELS: u32 = 4;

/// A policy class: the set of rules that apply to a group of pods. Entries of the allow maps
/// belong to one class; [`ClassId::BASE`] holds the node-wide rules, which every class falls
/// back to. Ids are content hashes of the class's rules, so a restarted agent finds the same
/// ones.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub u64);

impl ClassId {
    /// The node-wide rules: the only class when no rule is scoped.
    pub const BASE: Self = Self(0);
    /// Not enforced: the agent's own pod (a DaemonSet's pod is below the pods' root too).
    pub const EXEMPT: Self = Self(u64::MAX);
}

/// An IP protocol number as the kernel reports it in `bpf_sock_addr.protocol`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Proto(pub u8);

impl Proto {
    pub const TCP: Self = Self(6);
    pub const UDP: Self = Self(17);
}

/// Allowed destination ports `first..=last` for one protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    pub proto: Proto,
    pub reserved: u8,
}

/// How many port ranges one port set holds. The kernel scans them linearly (stopping at
/// `range_count`), so the bound also bounds the per-connect cost.
pub const MAX_RANGES: usize = 64;
/// How many sources one entry remembers (the true count is kept in `source_count`).
pub const MAX_SOURCES: usize = 8;

/// Identifies a [`PortRanges`] value in [`maps::PORTS`]: a 64-bit FNV-1a hash of its ranges,
/// so equal sets share one value and a restarted agent finds the same ids.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSetId(pub u64);

impl PortSetId {
    /// The empty set, never stored: an entry that refers to it allows no port at all (what an
    /// entry whose ports cannot be represented gets, so that it fails closed).
    pub const NONE: Self = Self(0);
}

/// The value of [`maps::PORTS`]: (protocol, port range) pairs, TCP first, each protocol's
/// ranges sorted and disjoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRanges {
    /// Ranges in use: the TCP ones are `ranges[..tcp_count]`, the UDP ones
    /// `ranges[tcp_count..range_count]`.
    pub range_count: u32,
    pub tcp_count: u32,
    pub ranges: [PortRange; MAX_RANGES],
}

/// Steps of the binary search over one protocol's ranges (2^7 > [`MAX_RANGES`]).
const SEARCH_STEPS: usize = 7;
const _: () = assert!(1 << SEARCH_STEPS > MAX_RANGES);

impl PortRanges {
    pub const EMPTY: Self = Self {
        range_count: 0,
        tcp_count: 0,
        ranges: [PortRange {
            first: 0,
            last: 0,
            proto: Proto(0),
            reserved: 0,
        }; MAX_RANGES],
    };

    /// The verdict for one destination: [`Counter::ALLOW_ENTRY`] when a range allows the
    /// protocol and port, else why not ([`Counter::DENY_PORT`] or [`Counter::DENY_PROTOCOL`]).
    /// A binary search over the protocol's sorted ranges: the cost grows with the logarithm
    /// of the ranges, and so does the verifier's work.
    #[inline(always)]
    pub fn verdict(&self, proto: Proto, port: u16) -> Counter {
        let total = (self.range_count as usize).min(MAX_RANGES);
        let tcp = (self.tcp_count as usize).min(total);
        let (mut lo, mut hi) = if proto.0 == Proto::TCP.0 {
            (0, tcp)
        } else if proto.0 == Proto::UDP.0 {
            (tcp, total)
        } else {
            return Counter::DENY_PROTOCOL;
        };
        if lo >= hi {
            return Counter::DENY_PROTOCOL;
        }
        // Invariant: the last range whose `first` is at most `port`, if any, is in [lo, hi).
        let mut step = 0;
        while step < SEARCH_STEPS {
            if hi - lo <= 1 {
                break;
            }
            // The compiler can prove `mid` in bounds and drop the check; older verifiers
            // cannot, and refuse the access. `opaque` keeps the check in the program.
            let mid = opaque((lo + hi) / 2);
            let Some(r) = self.ranges.get(mid) else {
                break;
            };
            if r.first <= port {
                lo = mid;
            } else {
                hi = mid;
            }
            step += 1;
        }
        match self.ranges.get(opaque(lo)) {
            Some(r) if r.first <= port && port <= r.last => Counter::ALLOW_ENTRY,
            _ => Counter::DENY_PORT,
        }
    }
}

/// `x`, through memory: what the compiler knows of its range is forgotten, so that bounds
/// checks it could otherwise prove redundant stay for the BPF verifier to see.
#[inline(always)]
fn opaque(x: usize) -> usize {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&x) }
}

/// The value of every allow map: which port set a destination may be reached on, and why.
///
/// The kernel reads only `ports`: a destination that has an entry is allowed exactly on that
/// set's (protocol, port range) pairs and denied on everything else. `expires_at` and
/// `sources` are bookkeeping for the agent and the CLI, kept next to the verdict data so that
/// one map update changes both at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    /// Unix seconds after which the agent removes the entry; 0 for entries that never expire.
    pub expires_at: u64,
    pub ports: PortSetId,
    pub source_count: u32,
    pub reserved: u32,
    pub sources: [SourceId; MAX_SOURCES],
}

impl AllowEntry {
    pub const EMPTY: Self = Self {
        expires_at: 0,
        ports: PortSetId::NONE,
        source_count: 0,
        reserved: 0,
        sources: [SourceId(0); MAX_SOURCES],
    };
}

/// Key of [`maps::ALLOW_V4`]: a class and an IPv4 address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V4Key {
    pub class: ClassId,
    pub addr: [u8; 4],
    pub reserved: [u8; 4],
}

/// Key of [`maps::ALLOW_V6`]: a class and an IPv6 address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V6Key {
    pub class: ClassId,
    pub addr: [u8; 16],
}

/// Bytes of an LPM key of [`maps::CIDR_V4`]: the class's 8 bytes (native order), then the
/// address; the prefix length counts the class's 64 bits, so a prefix never crosses classes.
pub const CIDR_V4_KEY: usize = 12;
/// Bytes of an LPM key of [`maps::CIDR_V6`] (as [`CIDR_V4_KEY`]).
pub const CIDR_V6_KEY: usize = 24;
/// Bits of the class in an LPM key's prefix length.
pub const CLASS_BITS: u32 = 64;

/// The data of a [`maps::CIDR_V4`] key.
#[inline(always)]
pub fn cidr_v4_key(class: ClassId, addr: [u8; 4]) -> [u8; CIDR_V4_KEY] {
    let c = class.0.to_ne_bytes();
    [
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], addr[0], addr[1], addr[2], addr[3],
    ]
}

/// The data of a [`maps::CIDR_V6`] key.
#[inline(always)]
pub fn cidr_v6_key(class: ClassId, addr: [u8; 16]) -> [u8; CIDR_V6_KEY] {
    let mut k = [0; CIDR_V6_KEY];
    let c = class.0.to_ne_bytes();
    let mut i = 0;
    while i < 8 {
        k[i] = c[i];
        i += 1;
    }
    while i < CIDR_V6_KEY {
        k[i] = addr[i - 8];
        i += 1;
    }
    k
}

/// Enforce or only observe.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Mode {
    /// Zero, so that an unset configuration enforces.
    pub const ENFORCE: Self = Self(0);
    /// Nothing is refused; would-be denials are counted.
    pub const AUDIT: Self = Self(1);
}

/// What happens to a destination that no entry mentions.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultAction(pub u32);

impl DefaultAction {
    /// Zero, so that an unset configuration denies.
    pub const DENY: Self = Self(0);
    pub const ALLOW: Self = Self(1);
}

/// The value of [`maps::CONFIG`] (index 0). All zeroes (the default) means enforce and deny,
/// with one class for every cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    pub default_action: DefaultAction,
    /// The class of a cgroup that [`maps::CLASSES`] does not place (a pod whose metadata the
    /// agent does not know yet): the node-wide allows with every deny rule of the policy.
    pub unknown_class: ClassId,
    /// The cgroup level (the root is 0) of the first ancestor looked up in
    /// [`maps::CLASSES`]: one below the pods' root.
    pub class_first_level: u32,
    /// How many levels to look up, at most [`MAX_CLASS_LEVELS`]; 0 when no rule is scoped:
    /// every cgroup is then in [`ClassId::BASE`] and no lookup is made.
    pub class_levels: u32,
}

/// Index into [`maps::COUNTERS`].
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter(pub u32);

impl Counter {
    /// Allowed because an entry allows the protocol and port.
    pub const ALLOW_ENTRY: Self = Self(0);
    /// Allowed because the destination is the local host (loopback or unspecified).
    pub const ALLOW_LOOPBACK: Self = Self(1);
    /// Allowed because nothing matched and the default action is allow.
    pub const ALLOW_DEFAULT: Self = Self(2);
    /// Denied: no entry for the destination.
    pub const DENY_NO_ENTRY: Self = Self(3);
    /// Denied: the destination has an entry for this protocol, but not for this port.
    pub const DENY_PORT: Self = Self(4);
    /// Denied: the destination has an entry, but none for this protocol.
    pub const DENY_PROTOCOL: Self = Self(5);
    /// Denied: the program could not read its configuration (fail closed).
    pub const DENY_INTERNAL: Self = Self(6);
    /// Audit mode: would have been denied, allowed instead.
    pub const AUDIT_WOULD_DENY: Self = Self(7);
    /// Wire check: a packet left for a destination other than the one its socket was judged
    /// for (IPv6 routing header, IPv4 source route, raw or ICMP sockets, …), and no entry
    /// allows that destination; dropped.
    pub const WIRE_DROP: Self = Self(8);
    /// Wire check: a packet for a loopback address was routed to a device other than
    /// loopback (`SO_BINDTODEVICE`, `IP_UNICAST_IF`, `IP_PKTINFO`); dropped.
    pub const WIRE_LOOPBACK: Self = Self(9);
    /// An event could not be written: the ring buffer was full (the flow's count is still
    /// exact in [`maps::FLOWS`]).
    pub const EVENTS_LOST: Self = Self(10);
    /// Allowed because the caller is the agent's own pod, which is not enforced.
    pub const ALLOW_EXEMPT: Self = Self(11);
    /// Denied: a raw, ICMP or packet socket, which no rule of the caller allows, was refused
    /// at creation.
    pub const DENY_SOCKET: Self = Self(12);
    pub const COUNT: u32 = 13;

    /// Whether the counter records an allowed connection.
    pub const fn is_allow(self) -> bool {
        self.0 <= Self::ALLOW_DEFAULT.0 || self.0 == Self::ALLOW_EXEMPT.0
    }
    pub const NAMES: [&'static str; Self::COUNT as usize] = [
        "allow_entry",
        "allow_loopback",
        "allow_default",
        "deny_no_entry",
        "deny_port",
        "deny_protocol",
        "deny_internal",
        "audit_would_deny",
        "wire_drop",
        "wire_loopback",
        "events_lost",
        "allow_exempt",
        "deny_socket",
    ];
}

/// Identifies a source (a hostname or a rule): a 64-bit FNV-1a hash of its kind and label.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u64);

/// What kind of thing a [`SourceRecord`] describes.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKind(pub u8);

impl SourceKind {
    /// A hostname the agent resolves; the label is the normalised name.
    pub const HOST: Self = Self(1);
    /// Addresses and prefixes written in a rule; the label names the rule.
    pub const RULE: Self = Self(2);
    /// A DNS resolver the workloads may query; the label is "dns-resolver".
    pub const DNS_RESOLVER: Self = Self(3);
}

/// Outcome of the latest resolution of a hostname.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResolveStatus(pub u8);

impl ResolveStatus {
    pub const PENDING: Self = Self(0);
    pub const OK: Self = Self(1);
    /// The name does not exist.
    pub const NXDOMAIN: Self = Self(2);
    /// The name exists but has no A or AAAA records.
    pub const NODATA: Self = Self(3);
    /// The upstream failed (timeout, SERVFAIL…); the last known addresses are kept.
    pub const FAILING: Self = Self(4);
    /// Nothing to resolve (addresses written in the policy).
    pub const STATIC: Self = Self(5);
}

/// Longest label a [`SourceRecord`] stores (a DNS name is at most 253 characters).
pub const MAX_LABEL: usize = 256;

/// The value of [`maps::SOURCES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    pub kind: SourceKind,
    pub status: ResolveStatus,
    pub label_len: u16,
    /// Addresses or prefixes this source contributes right now.
    pub addr_count: u32,
    /// Unix seconds of the last successful resolution (0: never).
    pub resolved_at: u64,
    /// Unix seconds of the next planned resolution (0: none).
    pub refresh_at: u64,
    pub label: [u8; MAX_LABEL],
}

/// Default size of [`maps::EVENTS`] in bytes (a power of two, as the kernel requires).
pub const DEFAULT_EVENT_BUFFER: u32 = 1 << 20;
/// Flows [`maps::FLOWS`] tracks at once (least recently denied ones are evicted).
pub const FLOW_SLOTS: u32 = 16_384;
/// A flow sends at most one event per CPU in this interval; denials in between are counted.
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000;

/// Which program judged.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hook(pub u8);

impl Hook {
    pub const CONNECT4: Self = Self(1);
    pub const CONNECT6: Self = Self(2);
    pub const SENDMSG4: Self = Self(3);
    pub const SENDMSG6: Self = Self(4);
    pub const WIRE: Self = Self(5);
    /// Socket creation (`cgroup/sock_create`, `lsm_cgroup/socket_create`). The flow's
    /// `family` is 4 or 6 (AF_INET, AF_INET6), `port` the socket type and `proto` its
    /// protocol; or `family` 17 (AF_PACKET), `port` the EtherType and `proto` the socket
    /// type; or `family` 255 ([`AF_OTHER`]), `port` the socket type and `proto` the family.
    /// The address is zero.
    pub const SOCKET: Self = Self(6);
}

/// Socket kinds that bypass the address hooks (a bit set): the value of [`maps::SOCKETS`].
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketKinds(pub u32);

impl SocketKinds {
    pub const NONE: Self = Self(0);
    /// `SOCK_RAW` of AF_INET or AF_INET6, any protocol: hand-built headers to anywhere.
    pub const RAW: Self = Self(1);
    /// ICMP "ping" sockets (`SOCK_DGRAM`, `IPPROTO_ICMP` / `IPPROTO_ICMPV6`).
    pub const ICMP: Self = Self(2);
    /// AF_PACKET sockets: whole frames handed to a device, below IP.
    pub const PACKET: Self = Self(4);
    /// Every other family but AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK: AF_XDP, vsock,
    /// TIPC, RDS, CAN, Bluetooth, SMC, …
    pub const OTHER: Self = Self(8);

    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// `AF_PACKET` (the family of packet sockets, in [`FlowKey::family`] for [`Hook::SOCKET`]).
pub const AF_PACKET: u8 = 17;
/// [`FlowKey::family`] of a refused socket of another family (whose number is then the
/// flow's `proto`, its type the `port`).
pub const AF_OTHER: u8 = 255;

/// What happened to a flow.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Verdict(pub u8);

impl Verdict {
    pub const DENY: Self = Self(0);
    /// Audit mode: it would have been denied.
    pub const WOULD_DENY: Self = Self(1);
}

/// A denied flow: who (cgroup), where to (the address as judged: an IPv4 host reached
/// through an AF_INET6 socket is IPv4 here), how, and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub cgroup_id: u64,
    /// IPv4 in the first four bytes when `family` is 4.
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: Proto,
    /// 4 or 6: the family of `addr`.
    pub family: u8,
    /// A [`Counter`] index: why it was denied.
    pub reason: u8,
    pub hook: Hook,
    pub verdict: Verdict,
    pub reserved: u8,
}

/// Per-CPU value of [`maps::FLOWS`]. `total` only grows (while the flow stays in the map);
/// user space reads it and never writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStat {
    pub total: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// When this CPU last sent an event for the flow (0: never).
    pub emitted_ns: u64,
}

/// A record of [`maps::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub key: FlowKey,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// The flow's `total` on `cpu` when the event was sent.
    pub total: u64,
    /// Thread group id of the caller; 0 when the wire check judged (it runs without one).
    pub pid: u32,
    pub cpu: u32,
    /// The caller's command name, NUL padded; empty from the wire check.
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<FlowKey>() == 32);
const _: () = assert!(size_of::<FlowStat>() == 32);
const _: () = assert!(size_of::<Event>() == 72);
const _: () = assert!(size_of::<PortRange>() == 6);
const _: () = assert!(size_of::<PortRanges>() == 392);
const _: () = assert!(size_of::<PortSetId>() == 8);
const _: () = assert!(size_of::<AllowEntry>() == 88);
const _: () = assert!(size_of::<V4Key>() == 16);
const _: () = assert!(size_of::<V6Key>() == 24);
const _: () = assert!(size_of::<Config>() == 24);
const _: () = assert!(size_of::<ClassId>() == 8);
const _: () = assert!(size_of::<SourceId>() == 8);
const _: () = assert!(size_of::<SourceRecord>() == 280);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`/`#[repr(transparent)]`, `Copy`, made only of integers
    // and arrays of integers, and has no implicit padding (see the size assertions above).
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::PortRanges {}
    unsafe impl aya::Pod for super::PortSetId {}
    unsafe impl aya::Pod for super::V4Key {}
    unsafe impl aya::Pod for super::V6Key {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SourceId {}
    unsafe impl aya::Pod for super::ClassId {}
    unsafe impl aya::Pod for super::SourceRecord {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStat {}
    unsafe impl aya::Pod for super::SocketKinds {}
}
