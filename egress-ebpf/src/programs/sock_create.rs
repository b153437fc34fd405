//! `cgroup/sock_create`: the sockets no address hook sees, refused when they are made.
//!
//! A raw socket (`SOCK_RAW`, any protocol) writes its own IP header, and an ICMP "ping"
//! socket (`SOCK_DGRAM` with `IPPROTO_ICMP`/`IPPROTO_ICMPV6`, open to unprivileged users
//! through `net.ipv4.ping_group_range`) sends without going through `udp_sendmsg()`: neither
//! reaches the connect/sendmsg hooks, so the only place to refuse them with EPERM is their
//! creation (`inet_create()`/`inet6_create()` run this hook for every user socket). The wire
//! check still drops what such a socket sends to an unlisted address, should one exist (made
//! before the process joined the cgroup, or passed in from outside).
//!
//! Ordinary TCP/UDP sockets are let through without a map lookup or a count: the address
//! hooks judge them.

use core::ptr::addr_of;

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::bpf_get_current_ancestor_cgroup_id,
    macros::{cgroup_sock, lsm_cgroup},
    programs::{LsmContext, SockContext},
};
use egress_common::{ClassId, Counter, Hook, Mode, Proto, SocketKinds, Verdict};

use super::{
    field,
    maps::{EGRESS_CONFIG, EGRESS_SOCKETS},
    report::{self, Origin},
    verdict::{self, Dest},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;

#[cgroup_sock(sock_create)]
pub fn egress_sock_create(ctx: SockContext) -> i32 {
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY: the kernel hands sock programs a valid context; loads go through `field`.
    let (family, ty, protocol) = unsafe {
        (
            field(addr_of!((*sk).family)),
            field(addr_of!((*sk).type_)),
            field(addr_of!((*sk).protocol)),
        )
    };
    let Some(kind) = kind_of(family, ty, protocol) else {
        return ALLOW;
    };
    let fam = if family == AF_INET6 { 6 } else { 4 };
    judge(kind, fam, ty as u16, protocol as u8)
}

/// Families a workload may always create: local IPC, the IP families (whose sockets the
/// other hooks judge) and netlink (configuration of its own namespace).
const AF_UNIX: i32 = 1;
const AF_NETLINK: i32 = 16;

/// `lsm_cgroup/socket_create` (Linux ≥ 6.0 with the BPF LSM active): every socket family
/// `inet_create()` does not see. Packet sockets (`AF_PACKET`), AF_XDP, and every other family
/// that can put bytes on a device or reach a peer without IP (vsock, TIPC, RDS, CAN,
/// Bluetooth, SMC, …) are refused unless a socket rule allows them (`packet` for AF_PACKET,
/// `other` for the rest): a list of what is allowed, not of what is known to be dangerous.
/// Loaded only where the agent finds the BPF LSM in the kernel's active list; elsewhere the
/// agent says that these families are not enforced.
#[lsm_cgroup(hook = "socket_create")]
pub fn egress_packet_socket(ctx: LsmContext) -> i32 {
    // socket_create(int family, int type, int protocol, int kern)
    let family: i32 = ctx.arg(0);
    let ty: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    if kern != 0
        || family == AF_UNIX
        || family == AF_INET as i32
        || family == AF_INET6 as i32
        || family == AF_NETLINK
    {
        return ALLOW;
    }
    if family != i32::from(egress_common::AF_PACKET) {
        // The flow names the family as its protocol.
        return judge(
            SocketKinds::OTHER,
            egress_common::AF_OTHER,
            (ty & 0xf) as u16,
            family as u8,
        );
    }
    // The flow names the EtherType (the protocol, in network order) where an inet socket's
    // names its type, and the type (SOCK_RAW, SOCK_DGRAM, without flags) as the protocol.
    judge(
        SocketKinds::PACKET,
        egress_common::AF_PACKET,
        u16::from_be(protocol as u16),
        (ty & 0xf) as u8,
    )
}

/// The verdict on a socket of `kind` from the calling task: its class's socket rules decide.
#[inline(always)]
fn judge(kind: SocketKinds, fam: u8, port: u16, proto: u8) -> i32 {
    let (reason, outcome, answer) = match EGRESS_CONFIG.get(0) {
        None => (Counter::DENY_INTERNAL, Verdict::DENY, DENY),
        Some(cfg) => {
            let class = verdict::class_of(cfg, |level| {
                // SAFETY: a helper without preconditions.
                unsafe { bpf_get_current_ancestor_cgroup_id(level) }
            });
            if class == ClassId::EXEMPT {
                report::count(Counter::ALLOW_EXEMPT);
                return ALLOW;
            }
            if allowed(class).contains(kind) {
                report::count(Counter::ALLOW_ENTRY);
                return ALLOW;
            }
            if cfg.mode == Mode::AUDIT {
                report::count(Counter::AUDIT_WOULD_DENY);
                (Counter::DENY_SOCKET, Verdict::WOULD_DENY, ALLOW)
            } else {
                (Counter::DENY_SOCKET, Verdict::DENY, DENY)
            }
        }
    };
    report::count(reason);
    report::denial(
        Hook::SOCKET,
        &Dest::socket(fam, port, Proto(proto)),
        reason,
        outcome,
        Origin::Task,
    );
    answer
}

/// The kind of an address-less socket, or `None` for the sockets the address hooks judge.
#[inline(always)]
pub fn kind_of(family: u32, ty: u32, protocol: u32) -> Option<SocketKinds> {
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    if ty == SOCK_RAW {
        return Some(SocketKinds::RAW);
    }
    let icmp = if family == AF_INET {
        IPPROTO_ICMP
    } else {
        IPPROTO_ICMPV6
    };
    if ty == SOCK_DGRAM && protocol == icmp {
        return Some(SocketKinds::ICMP);
    }
    None
}

/// The kinds the class may create: its own entry, else the node-wide one, else none.
#[inline(always)]
pub fn allowed(class: ClassId) -> SocketKinds {
    // SAFETY (both): pointers from successful lookups, valid for this run.
    if let Some(k) = EGRESS_SOCKETS.get_ptr(class) {
        return unsafe { *k };
    }
    // A key on the stack: a reference to the constant would put it in a read-only data
    // section, which the loader would have to turn into a map.
    let base = core::hint::black_box(ClassId::BASE);
    match EGRESS_SOCKETS.get_ptr(base) {
        Some(k) => unsafe { *k },
        None => SocketKinds::NONE,
    }
}
