//! The programs and maps (BPF target only; see main.rs).

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_NO_PREALLOC, bpf_sock, bpf_sock_addr},
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{SkBuffContext, SockAddrContext},
};
use egress_common::{
    AllowEntry, Config, Counter, DEFAULT_MAX_ENTRIES, DefaultAction, Mode, PortRanges, PortSetId,
    Proto, SourceId, SourceRecord, V4Key, V6Key,
};

/// The syscall proceeds.
const ALLOW: i32 = 1;
/// The syscall fails with EPERM. Also the answer whenever the program cannot decide (its
/// configuration is unreadable): an enforcer that cannot read its policy fails closed.
const DENY: i32 = 0;

// Hash maps are created without preallocation so that an update replaces an element through
// RCU: a concurrent lookup sees the old value or the new one, never a recycled element.
#[map(name = "EGRESS_ALLOW_V4")]
static EGRESS_ALLOW_V4: HashMap<V4Key, AllowEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_ALLOW_V6")]
static EGRESS_ALLOW_V6: HashMap<V6Key, AllowEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_CIDR_V4")]
static EGRESS_CIDR_V4: LpmTrie<[u8; 4], AllowEntry> =
    LpmTrie::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_CIDR_V6")]
static EGRESS_CIDR_V6: LpmTrie<[u8; 16], AllowEntry> =
    LpmTrie::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_PORTS")]
static EGRESS_PORTS: HashMap<PortSetId, PortRanges> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_CONFIG")]
static EGRESS_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "EGRESS_COUNTERS")]
static EGRESS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Read only by user space; declared here so that it is created and pinned with the rest.
#[map(name = "EGRESS_SOURCES")]
static EGRESS_SOURCES: HashMap<SourceId, SourceRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[cgroup_sock_addr(connect4)]
pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
    on_v4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_v4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
    on_v6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_v6(&ctx)
}

/// Reads one `u32` field of the context with a full-width load. The verifier rejects narrow
/// loads of some `bpf_sock_addr` fields (`protocol`, `type`), and the compiler may otherwise
/// split a load it only needs part of.
#[inline(always)]
fn field(ptr: *const u32) -> u32 {
    // SAFETY: `ptr` points into the context the kernel passed to the program.
    unsafe { read_volatile(ptr) }
}

#[inline(always)]
fn on_v4(ctx: &SockAddrContext) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands sock_addr programs a valid context; only addresses of its
    // fields are taken here, the loads go through `field`.
    let (ip, port, proto) = unsafe {
        (
            field(addr_of!((*sa).user_ip4)),
            field(addr_of!((*sa).user_port)),
            field(addr_of!((*sa).protocol)),
        )
    };
    finish(|cfg| judge_v4(ip.to_ne_bytes(), port_of(port), Proto(proto as u8), cfg))
}

#[inline(always)]
fn on_v6(ctx: &SockAddrContext) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as in `on_v4`.
    let (w, port, proto) = unsafe {
        (
            [
                field(addr_of!((*sa).user_ip6[0])),
                field(addr_of!((*sa).user_ip6[1])),
                field(addr_of!((*sa).user_ip6[2])),
                field(addr_of!((*sa).user_ip6[3])),
            ],
            field(addr_of!((*sa).user_port)),
            field(addr_of!((*sa).protocol)),
        )
    };
    let (port, proto) = (port_of(port), Proto(proto as u8));
    finish(|cfg| judge_ip6(w, port, proto, cfg))
}

/// An IPv6 destination, given as four words in network byte order. Two forms carry an IPv4
/// host and are judged as that IPv4 address, so IPv4 rules (allow and deny) cannot be
/// sidestepped through an AF_INET6 socket:
/// - `::ffff:a.b.c.d` (IPv4-mapped, RFC 4291 §2.5.5.2): Linux sends it as IPv4;
/// - `64:ff9b::a.b.c.d` (the NAT64 well-known prefix, RFC 6052): a NAT64 gateway forwards it
///   to the IPv4 host.
#[inline(always)]
fn judge_ip6(w: [u32; 4], port: u16, proto: Proto, cfg: &Config) -> Counter {
    let embeds_v4 = w[1] == 0
        && ((w[0] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]))
            || (w[0] == u32::from_ne_bytes([0, 0x64, 0xff, 0x9b]) && w[2] == 0));
    if embeds_v4 {
        judge_v4(w[3].to_ne_bytes(), port, proto, cfg)
    } else {
        judge_v6(w, port, proto, cfg)
    }
}

/// `user_port` holds the port in network byte order in its low 16 bits.
#[inline(always)]
fn port_of(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

#[inline(always)]
fn judge_v4(addr: [u8; 4], port: u16, proto: Proto, cfg: &Config) -> Counter {
    // 127.0.0.0/8 and 0.0.0.0 (which Linux connects to the local host) stay reachable.
    if addr[0] == 127 || u32::from_ne_bytes(addr) == 0 {
        return Counter::ALLOW_LOOPBACK;
    }
    if let Some(entry) = EGRESS_ALLOW_V4.get_ptr(V4Key { addr }) {
        // SAFETY: the pointer comes from a successful lookup and is valid for this program run.
        return entry_verdict(unsafe { &*entry }, proto, port);
    }
    if let Some(entry) = EGRESS_CIDR_V4.get(Key::new(32, addr)) {
        return entry_verdict(entry, proto, port);
    }
    no_entry(cfg)
}

#[inline(always)]
fn judge_v6(w: [u32; 4], port: u16, proto: Proto, cfg: &Config) -> Counter {
    // ::1 and :: (which Linux connects to the local host) stay reachable.
    if w[0] == 0
        && w[1] == 0
        && w[2] == 0
        && (w[3] == 0 || w[3] == u32::from_ne_bytes([0, 0, 0, 1]))
    {
        return Counter::ALLOW_LOOPBACK;
    }
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    if let Some(entry) = EGRESS_ALLOW_V6.get_ptr(V6Key { addr }) {
        // SAFETY: as in `judge_v4`.
        return entry_verdict(unsafe { &*entry }, proto, port);
    }
    if let Some(entry) = EGRESS_CIDR_V6.get(Key::new(128, addr)) {
        return entry_verdict(entry, proto, port);
    }
    no_entry(cfg)
}

/// The verdict of an entry: the port set it refers to decides. A set that is missing (it is
/// always written before the entries that refer to it) denies: fail closed.
#[inline(always)]
fn entry_verdict(entry: &AllowEntry, proto: Proto, port: u16) -> Counter {
    if entry.ports == PortSetId::NONE {
        return Counter::DENY_PROTOCOL;
    }
    match EGRESS_PORTS.get_ptr(entry.ports) {
        // SAFETY: as in `judge_v4`.
        Some(set) => unsafe { &*set }.verdict(proto, port),
        None => Counter::DENY_INTERNAL,
    }
}

#[inline(always)]
fn no_entry(cfg: &Config) -> Counter {
    if cfg.default_action == DefaultAction::ALLOW {
        Counter::ALLOW_DEFAULT
    } else {
        Counter::DENY_NO_ENTRY
    }
}

// ---- The wire check (cgroup_skb/egress) ------------------------------------------------
//
// The sock_addr hooks judge the address a program hands to connect() or sendmsg(). A few
// socket features make the packet leave for another address than that one: an IPv6 routing
// header (IPV6_RTHDR, by setsockopt or per message), IPv4 source routing (IP_OPTIONS),
// IP_HDRINCL on raw sockets; and a loopback destination can be pushed out of a real device
// (SO_BINDTODEVICE, IP_UNICAST_IF, IP_PKTINFO). ICMP "ping" sockets send without connect().
// This program sees every IP packet the cgroup's sockets send, after routing, and lets it go
// when its destination is the peer its socket was judged (or accepted) for. Anything else is
// judged by the same maps as the syscall hooks, by its real destination; denied, it is
// dropped (the sending syscall gets EPERM where the stack reports it).

/// The packet goes out.
const PASS: i32 = 1;
/// The packet is dropped.
const DROP: i32 = 0;
/// Linux gives the loopback device this index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP_LISTEN: u32 = 10;

#[cgroup_skb(egress)]
pub fn egress_wire(ctx: SkBuffContext) -> i32 {
    let skb: *const __sk_buff = ctx.skb.skb;
    // SAFETY: the kernel hands cgroup_skb programs a valid context.
    let protocol = u16::from_be(field(unsafe { addr_of!((*skb).protocol) }) as u16);
    match protocol {
        ETH_P_IP => wire_v4(&ctx, skb),
        ETH_P_IPV6 => wire_v6(&ctx, skb),
        _ => PASS,
    }
}

#[inline(always)]
fn wire_v4(ctx: &SkBuffContext, skb: *const __sk_buff) -> i32 {
    let Ok(hdr) = ctx.load::<[u8; 20]>(0) else {
        return wire_unreadable();
    };
    let dst = [hdr[16], hdr[17], hdr[18], hdr[19]];
    if dst[0] == 127 || u32::from_ne_bytes(dst) == 0 {
        return wire_loopback(skb);
    }
    let peer = socket_peer(skb);
    if let Some((peer4, _)) = peer
        && peer4 == u32::from_ne_bytes(dst)
    {
        return PASS;
    }
    if peer.is_some_and(|(_, state)| state == TCP_LISTEN) {
        return PASS;
    }
    let proto = hdr[9];
    let first_fragment = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff == 0;
    let port = if first_fragment {
        l4_port(ctx, usize::from(hdr[0] & 0x0f) * 4, proto)
    } else {
        0
    };
    wire_finish(|cfg| judge_v4(dst, port, Proto(proto), cfg))
}

#[inline(always)]
fn wire_v6(ctx: &SkBuffContext, skb: *const __sk_buff) -> i32 {
    let Ok(hdr) = ctx.load::<[u8; 40]>(0) else {
        return wire_unreadable();
    };
    let word = |i: usize| u32::from_ne_bytes([hdr[24 + i], hdr[25 + i], hdr[26 + i], hdr[27 + i]]);
    let w = [word(0), word(4), word(8), word(12)];
    if w[0] == 0
        && w[1] == 0
        && w[2] == 0
        && (w[3] == 0 || w[3] == u32::from_ne_bytes([0, 0, 0, 1]))
    {
        return wire_loopback(skb);
    }
    if let Some(peer6) = socket_peer6(skb) {
        if peer6.0 == w {
            return PASS;
        }
        if peer6.1 == TCP_LISTEN {
            return PASS;
        }
    }
    // Extension headers (a routing header among them) come before the transport header;
    // such packets are judged with the extension header as their protocol, which no entry
    // allows.
    let proto = hdr[6];
    let port = l4_port(ctx, 40, proto);
    wire_finish(|cfg| judge_ip6(w, port, Proto(proto), cfg))
}

/// The destination port of a TCP or UDP header at `offset`; 0 for other protocols.
#[inline(always)]
fn l4_port(ctx: &SkBuffContext, offset: usize, proto: u8) -> u16 {
    if proto != Proto::TCP.0 && proto != Proto::UDP.0 {
        return 0;
    }
    ctx.load::<[u8; 4]>(offset)
        .map_or(0, |p| u16::from_be_bytes([p[2], p[3]]))
}

/// The IPv4 peer (network byte order) and TCP state of the socket that sent the packet.
#[inline(always)]
fn socket_peer(skb: *const __sk_buff) -> Option<(u32, u32)> {
    // SAFETY: `sk` is the context's socket pointer; it is read only after the null check the
    // verifier demands.
    unsafe {
        let sk: *const bpf_sock = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        Some((field(addr_of!((*sk).dst_ip4)), field(addr_of!((*sk).state))))
    }
}

/// The IPv6 peer and TCP state of the socket that sent the packet.
#[inline(always)]
fn socket_peer6(skb: *const __sk_buff) -> Option<([u32; 4], u32)> {
    // SAFETY: as in `socket_peer`.
    unsafe {
        let sk: *const bpf_sock = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        Some((
            [
                field(addr_of!((*sk).dst_ip6[0])),
                field(addr_of!((*sk).dst_ip6[1])),
                field(addr_of!((*sk).dst_ip6[2])),
                field(addr_of!((*sk).dst_ip6[3])),
            ],
            field(addr_of!((*sk).state)),
        ))
    }
}

/// A loopback destination stays on the loopback device, or is dropped.
#[inline(always)]
fn wire_loopback(skb: *const __sk_buff) -> i32 {
    // SAFETY: as in `egress_wire`.
    if field(unsafe { addr_of!((*skb).ifindex) }) == LOOPBACK_IFINDEX {
        return PASS;
    }
    wire_finish(|_| Counter::WIRE_LOOPBACK)
}

/// An IP packet whose header cannot be read is not let through.
#[inline(always)]
fn wire_unreadable() -> i32 {
    count(Counter::DENY_INTERNAL);
    DROP
}

/// As [`finish`], for packets: only refusals are counted (the syscall hooks count allowed
/// connections), as [`Counter::WIRE_DROP`] or [`Counter::WIRE_LOOPBACK`]. In audit mode the
/// packet goes out and the count is all that remains; it is not counted as a would-deny too,
/// since an unconnected datagram the sendmsg hook has already counted is judged here again.
#[inline(always)]
fn wire_finish(judge: impl FnOnce(&Config) -> Counter) -> i32 {
    let Some(cfg) = EGRESS_CONFIG.get(0) else {
        count(Counter::DENY_INTERNAL);
        return DROP;
    };
    let verdict = judge(cfg);
    if verdict.is_allow() {
        return PASS;
    }
    count(if verdict.0 == Counter::WIRE_LOOPBACK.0 {
        Counter::WIRE_LOOPBACK
    } else {
        Counter::WIRE_DROP
    });
    if cfg.mode == Mode::AUDIT { PASS } else { DROP }
}

/// Reads the configuration, runs `judge`, counts the outcome and turns it into the return
/// value. In audit mode a denial is counted as such and as a would-deny, and allowed.
#[inline(always)]
fn finish(judge: impl FnOnce(&Config) -> Counter) -> i32 {
    let Some(cfg) = EGRESS_CONFIG.get(0) else {
        count(Counter::DENY_INTERNAL);
        return DENY;
    };
    let verdict = judge(cfg);
    count(verdict);
    if verdict.is_allow() {
        ALLOW
    } else if cfg.mode == Mode::AUDIT {
        count(Counter::AUDIT_WOULD_DENY);
        ALLOW
    } else {
        DENY
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = EGRESS_COUNTERS.get_ptr_mut(counter.0) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
