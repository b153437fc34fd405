//! Kernel side of the syscalls: cgroup v2 sock_addr programs.
//!
//! Which hook sees which traffic (all run in the caller's context, before any packet leaves):
//! - `cgroup/connect4`, `cgroup/connect6`: TCP `connect()` (including TCP Fast Open through
//!   `sendto(MSG_FASTOPEN)` and `TCP_FASTOPEN_CONNECT`, which go through the same pre-connect
//!   path), UDP and ICMP `connect()`. Linux ≥ 4.17.
//! - `cgroup/sendmsg4`, `cgroup/sendmsg6`: UDP `sendto()`/`sendmsg()` that carry a destination
//!   address, whether or not the socket is connected. Linux ≥ 4.18. See `udp_sendmsg()` and
//!   `udpv6_sendmsg()` in net/ipv4/udp.c and net/ipv6/udp.c: a v4-mapped destination on an
//!   AF_INET6 UDP socket is handed to `udp_sendmsg()` and therefore reaches `sendmsg4` with the
//!   plain IPv4 address.
//!
//! Return value: 1 lets the syscall proceed, 0 makes it fail with EPERM.

use core::ptr::addr_of;

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::generated::bpf_get_current_ancestor_cgroup_id,
    macros::cgroup_sock_addr, programs::SockAddrContext,
};
use egress_common::{Counter, Hook, Mode, Proto, Verdict};

use super::{
    field,
    maps::EGRESS_CONFIG,
    report::{self, Origin},
    verdict::{self, Dest},
};

/// The syscall proceeds.
const ALLOW: i32 = 1;
/// The syscall fails with EPERM. Also the answer whenever the program cannot decide (its
/// configuration is unreadable): an enforcer that cannot read its policy fails closed.
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
    finish(Hook::CONNECT4, &dest_v4(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    finish(Hook::SENDMSG4, &dest_v4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
    finish(Hook::CONNECT6, &dest_v6(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    finish(Hook::SENDMSG6, &dest_v6(&ctx))
}

#[inline(always)]
fn dest_v4(ctx: &SockAddrContext) -> Dest {
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
    Dest::v4(ip.to_ne_bytes(), port_of(port), Proto(proto as u8))
}

#[inline(always)]
fn dest_v6(ctx: &SockAddrContext) -> Dest {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as in `dest_v4`.
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
    Dest::v6(w, port_of(port), Proto(proto as u8))
}

/// `user_port` holds the port in network byte order in its low 16 bits.
#[inline(always)]
fn port_of(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

/// Reads the configuration, judges, counts and reports the outcome, and turns it into the
/// return value. In audit mode a denial is counted as such and as a would-deny, reported as a
/// would-deny, and allowed.
#[inline(always)]
fn finish(hook: Hook, d: &Dest) -> i32 {
    // One report site for every denial: the verifier walks it once.
    let (reason, outcome, answer) = match EGRESS_CONFIG.get(0) {
        None => (Counter::DENY_INTERNAL, Verdict::DENY, DENY),
        Some(cfg) => {
            let class = verdict::class_of(cfg, |level| {
                // SAFETY: a helper without preconditions.
                unsafe { bpf_get_current_ancestor_cgroup_id(level) }
            });
            let verdict = verdict::judge(d, cfg, class);
            if verdict.is_allow() {
                report::count(verdict);
                return ALLOW;
            }
            if cfg.mode == Mode::AUDIT {
                report::count(Counter::AUDIT_WOULD_DENY);
                (verdict, Verdict::WOULD_DENY, ALLOW)
            } else {
                (verdict, Verdict::DENY, DENY)
            }
        }
    };
    report::count(reason);
    report::denial(hook, d, reason, outcome, Origin::Task);
    answer
}
