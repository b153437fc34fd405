//! One judgement for every hook: a destination is looked up in the exact-address map, then
//! in the prefix trie, first among the entries of the caller's class, then among the
//! node-wide ones; the first entry found decides through its port set; without one, the
//! default action does.

use aya_ebpf::maps::lpm_trie::Key;
use egress_common::{
    AllowEntry, CLASS_BITS, ClassId, Config, Counter, DefaultAction, MAX_CLASS_LEVELS, PortSetId,
    Proto, V4Key, V6Key, cidr_v4_key, cidr_v6_key,
};

use super::maps::{
    EGRESS_ALLOW_V4, EGRESS_ALLOW_V6, EGRESS_CIDR_V4, EGRESS_CIDR_V6, EGRESS_CLASSES, EGRESS_PORTS,
};

/// The class of the caller: the first of its cgroup's ancestors (from
/// `cfg.class_first_level` down) that the agent placed in a class; the unknown class when
/// none is; the node-wide class when no rule is scoped. `ancestor(level)` is the id of the
/// ancestor at `level`, 0 when the cgroup is not that deep.
#[inline(always)]
pub fn class_of(cfg: &Config, ancestor: impl Fn(i32) -> u64) -> ClassId {
    let levels = cfg.class_levels.min(MAX_CLASS_LEVELS);
    let mut i = 0;
    while i < levels {
        let id = ancestor((cfg.class_first_level + i) as i32);
        if id == 0 {
            break;
        }
        if let Some(class) = EGRESS_CLASSES.get_ptr(id) {
            // SAFETY: the pointer comes from a successful lookup and is valid for this run.
            return unsafe { *class };
        }
        i += 1;
    }
    if levels == 0 {
        ClassId::BASE
    } else {
        cfg.unknown_class
    }
}

/// A destination as judged: an IPv4 host reached through an AF_INET6 socket is IPv4 here.
#[derive(Clone, Copy)]
pub struct Dest {
    /// The address as four words holding the bytes in network order (as the kernel's
    /// contexts do); IPv4 is the first word when `family` is 4, the rest zero.
    pub words: [u32; 4],
    pub family: u8,
    pub port: u16,
    pub proto: Proto,
    /// Reached through the NAT64 prefix: an IPv4 host behind a translator, never this host.
    pub nat64: bool,
}

impl Dest {
    #[inline(always)]
    pub fn v4(a: [u8; 4], port: u16, proto: Proto) -> Self {
        Self {
            words: [u32::from_ne_bytes(a), 0, 0, 0],
            family: 4,
            port,
            proto,
            nat64: false,
        }
    }

    /// An IPv6 destination. Two forms carry an IPv4 host and become that IPv4 address, so
    /// IPv4 rules (allow and deny) cannot be sidestepped through an AF_INET6 socket:
    /// - `::ffff:a.b.c.d` (IPv4-mapped, RFC 4291 §2.5.5.2): Linux sends it as IPv4;
    /// - `64:ff9b::a.b.c.d` (the NAT64 well-known prefix, RFC 6052): a NAT64 gateway forwards
    ///   it to the IPv4 host.
    #[inline(always)]
    pub fn v6(w: [u32; 4], port: u16, proto: Proto) -> Self {
        let mapped = w[0] == 0 && w[1] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        let nat64 = w[0] == u32::from_ne_bytes([0, 0x64, 0xff, 0x9b]) && w[1] == 0 && w[2] == 0;
        if mapped || nat64 {
            return Self {
                words: [w[3], 0, 0, 0],
                family: 4,
                port,
                proto,
                nat64,
            };
        }
        Self {
            words: w,
            family: 6,
            port,
            proto,
            nat64: false,
        }
    }

    /// An address-less socket as a flow: `family` 4, 6 or 17 (AF_PACKET), the socket type in
    /// `port`, its protocol in `proto`.
    #[inline(always)]
    pub fn socket(family: u8, ty: u16, proto: Proto) -> Self {
        Self {
            words: [0; 4],
            family,
            port: ty,
            proto,
            nat64: false,
        }
    }

    /// The 16 address bytes (IPv4 in the first four).
    #[inline(always)]
    pub fn bytes(&self) -> [u8; 16] {
        // SAFETY: four u32s and sixteen bytes have the same size; any bit pattern is valid.
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(self.words) }
    }

    /// `127.0.0.0/8`, `::1`, and `0.0.0.0` / `::` (which Linux connects to the local host) —
    /// but not their NAT64 forms, which leave through the default route for a translator.
    #[inline(always)]
    pub fn is_loopback(&self) -> bool {
        let w = &self.words;
        if self.nat64 {
            return false;
        }
        if self.family == 4 {
            let first = w[0].to_ne_bytes()[0];
            return first == 127 || w[0] == 0;
        }
        w[0] == 0
            && w[1] == 0
            && w[2] == 0
            && (w[3] == 0 || w[3] == u32::from_ne_bytes([0, 0, 0, 1]))
    }
}

/// The verdict for `d` from a caller in `class`: an allow counter, or the reason for a
/// denial. A class holds entries only where its rules differ from the node-wide ones (the
/// agent keeps every entry a lookup could otherwise wrongly skip), so a miss falls back to
/// the node-wide class. One port-set judgement at the end keeps the verifier's work small.
#[inline(always)]
pub fn judge(d: &Dest, cfg: &Config, class: ClassId) -> Counter {
    if class == ClassId::EXEMPT {
        return Counter::ALLOW_EXEMPT;
    }
    if d.is_loopback() {
        return Counter::ALLOW_LOOPBACK;
    }
    let entry = entry_for(d, class);
    match entry {
        // SAFETY: the pointer comes from a successful lookup and is valid for this run.
        Some(entry) => entry_verdict(unsafe { &*entry }, d),
        None if cfg.default_action == DefaultAction::ALLOW => Counter::ALLOW_DEFAULT,
        None => Counter::DENY_NO_ENTRY,
    }
}

/// Whether any protocol and port of `d`'s address is allowed to `class` (for raw and ping
/// sockets, whose packets carry no port an entry could name).
#[inline(always)]
pub fn allows_address(d: &Dest, cfg: &Config, class: ClassId) -> bool {
    let entry = entry_for(d, class);
    match entry {
        // SAFETY: as in `judge`.
        Some(entry) => unsafe { &*entry }.ports != PortSetId::NONE,
        None => cfg.default_action == DefaultAction::ALLOW,
    }
}

/// The entry that decides for `d`: the class's own, else the node-wide one.
#[inline(always)]
fn entry_for(d: &Dest, class: ClassId) -> Option<*const AllowEntry> {
    lookup(d, class).or_else(|| {
        if class == ClassId::BASE {
            None
        } else {
            lookup(d, ClassId::BASE)
        }
    })
}

/// The entry for `d` among `class`'s: its exact address, else its longest prefix.
#[inline(always)]
fn lookup(d: &Dest, class: ClassId) -> Option<*const AllowEntry> {
    if d.family == 4 {
        let addr = d.words[0].to_ne_bytes();
        let exact = V4Key {
            class,
            addr,
            reserved: [0; 4],
        };
        EGRESS_ALLOW_V4.get_ptr(exact).or_else(|| {
            EGRESS_CIDR_V4
                .get(Key::new(CLASS_BITS + 32, cidr_v4_key(class, addr)))
                .map(|e| e as *const _)
        })
    } else {
        let addr = d.bytes();
        EGRESS_ALLOW_V6.get_ptr(V6Key { class, addr }).or_else(|| {
            EGRESS_CIDR_V6
                .get(Key::new(CLASS_BITS + 128, cidr_v6_key(class, addr)))
                .map(|e| e as *const _)
        })
    }
}

/// The verdict of an entry: the port set it refers to decides. A set that is missing (it is
/// always written before the entries that refer to it) denies: fail closed.
#[inline(always)]
fn entry_verdict(entry: &AllowEntry, d: &Dest) -> Counter {
    if entry.ports == PortSetId::NONE {
        return Counter::DENY_PROTOCOL;
    }
    match EGRESS_PORTS.get_ptr(entry.ports) {
        // SAFETY: as in `judge`.
        Some(set) => unsafe { &*set }.verdict(d.proto, d.port),
        None => Counter::DENY_INTERNAL,
    }
}
