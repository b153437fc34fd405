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
    helpers::generated::{bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id},
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
/// A request socket: a SYN received by a listener, answered with a SYN-ACK.
const TCP_NEW_SYN_RECV: u32 = 12;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// IPv6 extension headers walked past to find the transport: hop-by-hop and destination
/// options. A routing header or a fragment header stops the walk (and is what gets judged).
const IPV6_HOPOPTS: u8 = 0;
const IPV6_DSTOPTS: u8 = 60;
const MAX_EXT_HEADERS: usize = 4;
/// The protocol an IPv4 packet with options is judged as (0, IPv6's hop-by-hop options
/// number, is never a transport that follows an IPv4 header).
const IP_OPTIONS: u8 = 0;

/// What the header says of a packet: the socket's own traffic, a destination to judge, or
/// an unreadable header.
enum Packet {
    Own,
    Judge(Dest),
    Unreadable,
}

#[cgroup_skb(egress)]
pub fn egress_wire(ctx: SkBuffContext) -> i32 {
    let skb: *const __sk_buff = ctx.skb.skb;
    // SAFETY: the kernel hands cgroup_skb programs a valid context.
    let protocol = u16::from_be(field(unsafe { addr_of!((*skb).protocol) }) as u16);
    // One judgement for both families: the verifier walks it once.
    let packet = match protocol {
        ETH_P_IP => wire_v4(&ctx, skb),
        ETH_P_IPV6 => wire_v6(&ctx, skb),
        _ => Packet::Own,
    };
    match packet {
        Packet::Own => PASS,
        Packet::Judge(d) => finish(skb, &d),
        Packet::Unreadable => unreadable(),
    }
}

#[inline(always)]
fn wire_v4(ctx: &SkBuffContext, skb: *const __sk_buff) -> Packet {
    let Ok(hdr) = ctx.load::<[u8; 20]>(0) else {
        return Packet::Unreadable;
    };
    let dst = [hdr[16], hdr[17], hdr[18], hdr[19]];
    let proto = hdr[9];
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    let first_fragment = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff == 0;
    // IP options (a source route among them) are judged as their own protocol, which no
    // entry allows, like an IPv6 routing header.
    let judged_proto = if ihl > 20 { IP_OPTIONS } else { proto };
    if judged_proto != IP_OPTIONS
        && dst[0] != 127
        && own_traffic(skb, proto, |sk| sk.dst_ip4 == u32::from_ne_bytes(dst))
    {
        return Packet::Own;
    }
    let port = if first_fragment && judged_proto != IP_OPTIONS {
        l4_port(ctx, ihl, proto)
    } else {
        0
    };
    Packet::Judge(Dest::v4(dst, port, Proto(judged_proto)))
}

#[inline(always)]
fn wire_v6(ctx: &SkBuffContext, skb: *const __sk_buff) -> Packet {
    let Ok(hdr) = ctx.load::<[u8; 40]>(0) else {
        return Packet::Unreadable;
    };
    let word = |i: usize| u32::from_ne_bytes([hdr[24 + i], hdr[25 + i], hdr[26 + i], hdr[27 + i]]);
    let w = [word(0), word(4), word(8), word(12)];
    // Hop-by-hop and destination options are walked past; a routing header stops the walk,
    // and the packet is judged with it as its protocol, which no entry allows.
    let mut proto = hdr[6];
    let mut offset = 40usize;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        if proto != IPV6_HOPOPTS && proto != IPV6_DSTOPTS {
            break;
        }
        let Ok(ext) = ctx.load::<[u8; 2]>(offset) else {
            return Packet::Unreadable;
        };
        proto = ext[0];
        offset += (usize::from(ext[1]) + 1) * 8;
        i += 1;
    }
    let loopback = w[0] == 0 && w[1] == 0 && w[2] == 0;
    if !loopback && own_traffic(skb, proto, |sk| sk.dst_ip6 == w) {
        return Packet::Own;
    }
    let port = l4_port(ctx, offset, proto);
    Packet::Judge(Dest::v6(w, port, Proto(proto)))
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

/// What the wire check knows of the packet's socket.
struct Peer {
    dst_ip4: u32,
    dst_ip6: [u32; 4],
}

/// Whether the packet is its socket's own traffic, which the syscall hooks have judged: a
/// TCP or UDP packet of a TCP or UDP socket (stream or datagram, not raw) going to the
/// socket's peer (`is_peer`), or a TCP listener's answer to a SYN. Any other protocol —
/// UDP-Lite, SCTP, DCCP, whose sockets no syscall hook judges — and raw sockets never are.
#[inline(always)]
fn own_traffic(skb: *const __sk_buff, proto: u8, is_peer: impl Fn(&Peer) -> bool) -> bool {
    if proto != Proto::TCP.0 && proto != Proto::UDP.0 {
        return false;
    }
    // SAFETY: `sk` is the context's socket pointer; it is dereferenced only after the null
    // checks the verifier demands, and `bpf_sk_fullsock` takes a socket pointer.
    unsafe {
        let sk: *mut bpf_sock = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return false;
        }
        let state = field(addr_of!((*sk).state));
        let peer = |sk: *const bpf_sock| Peer {
            dst_ip4: field(addr_of!((*sk).dst_ip4)),
            dst_ip6: [
                field(addr_of!((*sk).dst_ip6[0])),
                field(addr_of!((*sk).dst_ip6[1])),
                field(addr_of!((*sk).dst_ip6[2])),
                field(addr_of!((*sk).dst_ip6[3])),
            ],
        };
        // A SYN-ACK is sent on the request socket, which only a TCP listener makes.
        if state == TCP_NEW_SYN_RECV {
            return proto == Proto::TCP.0 && is_peer(&peer(sk));
        }
        let full = bpf_sk_fullsock(sk);
        if full.is_null() {
            return false;
        }
        let (ty, protocol) = (
            field(addr_of!((*full).type_)),
            field(addr_of!((*full).protocol)),
        );
        let plain = (ty == SOCK_STREAM && protocol == u32::from(Proto::TCP.0))
            || (ty == SOCK_DGRAM && protocol == u32::from(Proto::UDP.0));
        if !plain || protocol != u32::from(proto) {
            return false;
        }
        if state == TCP_LISTEN {
            return proto == Proto::TCP.0;
        }
        is_peer(&peer(full))
    }
}

/// The address-less kind (raw, ICMP) of the packet's socket, if it is one.
#[inline(always)]
fn socket_kind(skb: *const __sk_buff) -> Option<egress_common::SocketKinds> {
    // SAFETY: as in `own_traffic`: null-checked socket pointers only.
    unsafe {
        let sk: *mut bpf_sock = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        let full = bpf_sk_fullsock(sk);
        if full.is_null() {
            return None;
        }
        super::sock_create::kind_of(
            field(addr_of!((*full).family)),
            field(addr_of!((*full).type_)),
            field(addr_of!((*full).protocol)),
        )
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
    let mut class = egress_common::ClassId::BASE;
    let verdict = if d.is_loopback() {
        // Loopback is allowed only on the loopback device.
        // SAFETY: as in `egress_wire`.
        if field(unsafe { addr_of!((*skb).ifindex) }) == LOOPBACK_IFINDEX {
            return PASS;
        }
        Counter::WIRE_LOOPBACK
    } else {
        class = verdict::class_of(cfg, |level| {
            // SAFETY: the skb is the program's context.
            unsafe { bpf_skb_ancestor_cgroup_id(skb.cast_mut(), level) }
        });
        verdict::judge(d, cfg, class)
    };
    if verdict.is_allow() {
        return PASS;
    }
    // An ICMP packet of a raw or ping socket a socket rule allows may go to the addresses
    // some rule allows (some port of): ICMP has no port an entry could name. Everything else
    // such a socket sends — TCP or UDP built by hand, IP options — is judged as above.
    if (d.proto == Proto(1) || d.proto == Proto(58))
        && verdict.0 != Counter::WIRE_LOOPBACK.0
        && let Some(kind) = socket_kind(skb)
        && super::sock_create::allowed(class).contains(kind)
        && verdict::allows_address(d, cfg, class)
    {
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
