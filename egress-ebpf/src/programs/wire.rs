//! The wire check (cgroup_skb/egress).
//!
//! The sock_addr hooks judge the address a program hands to connect() or sendmsg(). A few
//! socket features make the packet leave for another address than that one: an IPv6 routing
//! header (IPV6_RTHDR, by setsockopt or per message), IPv4 source routing (IP_OPTIONS),
//! IP_HDRINCL on raw sockets; and a loopback destination can be pushed out of a real device
//! (SO_BINDTODEVICE, IP_UNICAST_IF, IP_PKTINFO). ICMP "ping" sockets send without connect().
//! This program sees every IP packet the cgroup's sockets send, after routing, and lets it go
//! when its destination is the peer its socket was judged (or accepted) for. Anything else is
//! judged by the same maps as the syscall hooks, by its real destination; denied, it is
//! dropped (the sending syscall gets EPERM where the stack reports it).
//!
//! Return value: 1 sends the packet, 0 drops it.

use core::ptr::addr_of;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use egress_common::{Counter, Hook, Mode, Proto, Verdict};

use super::{
    field,
    maps::EGRESS_CONFIG,
    report::{self, Origin},
    verdict::{self, Dest},
};

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
        return unreadable();
    };
    let dst = [hdr[16], hdr[17], hdr[18], hdr[19]];
    let proto = hdr[9];
    let first_fragment = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff == 0;
    if let Some((peer4, _, state)) = socket_peer(skb) {
        if peer4 == u32::from_ne_bytes(dst) && dst[0] != 127 {
            return PASS;
        }
        if state == TCP_LISTEN {
            return PASS;
        }
    }
    let port = if first_fragment {
        l4_port(ctx, usize::from(hdr[0] & 0x0f) * 4, proto)
    } else {
        0
    };
    finish(skb, &Dest::v4(dst, port, Proto(proto)))
}

#[inline(always)]
fn wire_v6(ctx: &SkBuffContext, skb: *const __sk_buff) -> i32 {
    let Ok(hdr) = ctx.load::<[u8; 40]>(0) else {
        return unreadable();
    };
    let word = |i: usize| u32::from_ne_bytes([hdr[24 + i], hdr[25 + i], hdr[26 + i], hdr[27 + i]]);
    let w = [word(0), word(4), word(8), word(12)];
    // Extension headers (a routing header among them) come before the transport header;
    // such packets are judged with the extension header as their protocol, which no entry
    // allows.
    let proto = hdr[6];
    if let Some((_, peer6, state)) = socket_peer(skb) {
        let loopback = w[0] == 0 && w[1] == 0 && w[2] == 0;
        if peer6 == w && !loopback {
            return PASS;
        }
        if state == TCP_LISTEN {
            return PASS;
        }
    }
    let port = l4_port(ctx, 40, proto);
    finish(skb, &Dest::v6(w, port, Proto(proto)))
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

/// The peer (IPv4 and IPv6, network byte order) and TCP state of the packet's socket.
#[inline(always)]
fn socket_peer(skb: *const __sk_buff) -> Option<(u32, [u32; 4], u32)> {
    // SAFETY: `sk` is the context's socket pointer; it is read only after the null check the
    // verifier demands.
    unsafe {
        let sk: *const bpf_sock = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        Some((
            field(addr_of!((*sk).dst_ip4)),
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

/// An IP packet whose header cannot be read is not let through.
#[inline(always)]
fn unreadable() -> i32 {
    report::count(Counter::DENY_INTERNAL);
    DROP
}

/// Judges a packet that is not its socket's own traffic. Only refusals are counted (the
/// syscall hooks count allowed connections), as [`Counter::WIRE_DROP`] or
/// [`Counter::WIRE_LOOPBACK`], and reported with the judgement's reason. In audit mode the
/// packet goes out and the count and event are all that remain; it is not counted as a
/// would-deny too, since an unconnected datagram the sendmsg hook has already counted is
/// judged here again.
#[inline(always)]
fn finish(skb: *const __sk_buff, d: &Dest) -> i32 {
    let Some(cfg) = EGRESS_CONFIG.get(0) else {
        report::count(Counter::DENY_INTERNAL);
        return DROP;
    };
    let verdict = if d.is_loopback() {
        // Loopback is allowed only on the loopback device.
        // SAFETY: as in `egress_wire`.
        if field(unsafe { addr_of!((*skb).ifindex) }) == LOOPBACK_IFINDEX {
            return PASS;
        }
        Counter::WIRE_LOOPBACK
    } else {
        verdict::judge(d, cfg)
    };
    if verdict.is_allow() {
        return PASS;
    }
    report::count(if verdict.0 == Counter::WIRE_LOOPBACK.0 {
        Counter::WIRE_LOOPBACK
    } else {
        Counter::WIRE_DROP
    });
    let audit = cfg.mode == Mode::AUDIT;
    let outcome = if audit {
        Verdict::WOULD_DENY
    } else {
        Verdict::DENY
    };
    report::denial(Hook::WIRE, d, verdict, outcome, Origin::Packet(skb));
    if audit { PASS } else { DROP }
}
