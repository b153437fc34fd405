//! The programs and maps (BPF target only; see main.rs).

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, bpf_sock_addr},
    macros::{cgroup_sock_addr, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::SockAddrContext,
};
use egress_common::{
    AllowEntry, Config, Counter, DEFAULT_MAX_ENTRIES, DefaultAction, Mode, Proto, SourceId,
    SourceRecord, V4Key, V6Key,
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
    // ::ffff:a.b.c.d is the IPv4 host a.b.c.d reached through an AF_INET6 socket.
    if w[0] == 0 && w[1] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        return finish(|cfg| judge_v4(w[3].to_ne_bytes(), port, proto, cfg));
    }
    finish(|cfg| judge_v6(w, port, proto, cfg))
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
        return unsafe { &*entry }.verdict(proto, port);
    }
    if let Some(entry) = EGRESS_CIDR_V4.get(Key::new(32, addr)) {
        return entry.verdict(proto, port);
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
        return unsafe { &*entry }.verdict(proto, port);
    }
    if let Some(entry) = EGRESS_CIDR_V6.get(Key::new(128, addr)) {
        return entry.verdict(proto, port);
    }
    no_entry(cfg)
}

#[inline(always)]
fn no_entry(cfg: &Config) -> Counter {
    if cfg.default_action == DefaultAction::ALLOW {
        Counter::ALLOW_DEFAULT
    } else {
        Counter::DENY_NO_ENTRY
    }
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
