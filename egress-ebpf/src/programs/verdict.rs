//! One judgement for every hook: a destination is looked up in the exact-address map, then
//! in the prefix trie; the first entry found decides through its port set; without one, the
//! default action does.

use aya_ebpf::maps::lpm_trie::Key;
use egress_common::{AllowEntry, Config, Counter, DefaultAction, PortSetId, Proto, V4Key, V6Key};

use super::maps::{EGRESS_ALLOW_V4, EGRESS_ALLOW_V6, EGRESS_CIDR_V4, EGRESS_CIDR_V6, EGRESS_PORTS};

/// A destination as judged: an IPv4 host reached through an AF_INET6 socket is IPv4 here.
#[derive(Clone, Copy)]
pub struct Dest {
    /// IPv4 in the first four bytes when `family` is 4.
    pub addr: [u8; 16],
    pub family: u8,
    pub port: u16,
    pub proto: Proto,
}

impl Dest {
    #[inline(always)]
    pub fn v4(a: [u8; 4], port: u16, proto: Proto) -> Self {
        Self {
            addr: [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            family: 4,
            port,
            proto,
        }
    }

    /// An IPv6 destination, given as four words in network byte order. Two forms carry an
    /// IPv4 host and become that IPv4 address, so IPv4 rules (allow and deny) cannot be
    /// sidestepped through an AF_INET6 socket:
    /// - `::ffff:a.b.c.d` (IPv4-mapped, RFC 4291 §2.5.5.2): Linux sends it as IPv4;
    /// - `64:ff9b::a.b.c.d` (the NAT64 well-known prefix, RFC 6052): a NAT64 gateway forwards
    ///   it to the IPv4 host.
    #[inline(always)]
    pub fn v6(w: [u32; 4], port: u16, proto: Proto) -> Self {
        let embeds_v4 = w[1] == 0
            && ((w[0] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]))
                || (w[0] == u32::from_ne_bytes([0, 0x64, 0xff, 0x9b]) && w[2] == 0));
        if embeds_v4 {
            return Self::v4(w[3].to_ne_bytes(), port, proto);
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
        Self {
            addr,
            family: 6,
            port,
            proto,
        }
    }

    /// `127.0.0.0/8`, `::1`, and `0.0.0.0` / `::` (which Linux connects to the local host).
    #[inline(always)]
    pub fn is_loopback(&self) -> bool {
        let a = &self.addr;
        if self.family == 4 {
            return a[0] == 127 || (a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0);
        }
        let mut i = 0;
        while i < 15 {
            if a[i] != 0 {
                return false;
            }
            i += 1;
        }
        a[15] == 0 || a[15] == 1
    }
}

/// The verdict for `d`: an allow counter, or the reason for a denial.
#[inline(always)]
pub fn judge(d: &Dest, cfg: &Config) -> Counter {
    if d.is_loopback() {
        return Counter::ALLOW_LOOPBACK;
    }
    if d.family == 4 {
        let addr = [d.addr[0], d.addr[1], d.addr[2], d.addr[3]];
        if let Some(entry) = EGRESS_ALLOW_V4.get_ptr(V4Key { addr }) {
            // SAFETY: the pointer comes from a successful lookup and is valid for this run.
            return entry_verdict(unsafe { &*entry }, d);
        }
        if let Some(entry) = EGRESS_CIDR_V4.get(Key::new(32, addr)) {
            return entry_verdict(entry, d);
        }
    } else {
        if let Some(entry) = EGRESS_ALLOW_V6.get_ptr(V6Key { addr: d.addr }) {
            // SAFETY: as above.
            return entry_verdict(unsafe { &*entry }, d);
        }
        if let Some(entry) = EGRESS_CIDR_V6.get(Key::new(128, d.addr)) {
            return entry_verdict(entry, d);
        }
    }
    if cfg.default_action == DefaultAction::ALLOW {
        Counter::ALLOW_DEFAULT
    } else {
        Counter::DENY_NO_ENTRY
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
