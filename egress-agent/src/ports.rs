//! Port sets: which (protocol, port) pairs a rule or a destination allows.
//!
//! Policies speak of ports per protocol; the kernel keeps port sets of at most
//! [`egress_common::MAX_RANGES`] `(protocol, first, last)` triples, which destinations refer
//! to by a content-derived id ([`port_set_id`]). A
//! [`PortSet`] keeps sorted, disjoint, non-adjacent ranges per protocol so that unions and
//! differences stay canonical and two equal sets always encode to the same kernel value.

use std::fmt;

use egress_common::{MAX_RANGES, PortRange, PortRanges, PortSetId, Proto};

/// Sorted, disjoint, non-adjacent inclusive port ranges of one protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ranges(Vec<(u16, u16)>);

impl Ranges {
    pub fn all() -> Self {
        Self(vec![(0, u16::MAX)])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.0.iter().copied()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(a, b)| a <= port && port <= b)
    }

    /// Adds `first..=last`, merging with overlapping or adjacent ranges. Binary search and
    /// one splice: a rule listing thousands of ports parses in linear-ish time.
    pub fn insert(&mut self, first: u16, last: u16) {
        debug_assert!(first <= last);
        let (lo, hi) = (u32::from(first), u32::from(last));
        // Ranges that end before `lo - 1` stay left; those that start after `hi + 1` stay
        // right; everything between touches the new range and merges into it.
        let left = self.0.partition_point(|&(_, b)| u32::from(b) + 1 < lo);
        let right = self.0.partition_point(|&(a, _)| u32::from(a) <= hi + 1);
        let (mut merged_lo, mut merged_hi) = (first, last);
        if left < right {
            merged_lo = merged_lo.min(self.0[left].0);
            merged_hi = merged_hi.max(self.0[right - 1].1);
        }
        self.0.splice(left..right, [(merged_lo, merged_hi)]);
    }

    pub fn union(&mut self, other: &Self) {
        for &(a, b) in &other.0 {
            self.insert(a, b);
        }
    }

    /// Removes every port of `other`, in one sweep over both sorted lists.
    pub fn subtract(&mut self, other: &Self) {
        let mut out = Vec::with_capacity(self.0.len());
        let mut j = 0;
        for &(a, b) in &self.0 {
            let (mut x, y) = (u32::from(a), u32::from(b));
            // Skip removals that end before this range.
            while j < other.0.len() && u32::from(other.0[j].1) < x {
                j += 1;
            }
            let mut k = j;
            while x <= y {
                match other.0.get(k) {
                    Some(&(c, d)) if u32::from(c) <= y => {
                        let (c, d) = (u32::from(c), u32::from(d));
                        if c > x {
                            out.push((x as u16, (c - 1) as u16));
                        }
                        x = d + 1;
                        k += 1;
                    }
                    _ => {
                        out.push((x as u16, y as u16));
                        break;
                    }
                }
            }
        }
        self.0 = out;
    }
}

/// An IP protocol a rule can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const BOTH: [Self; 2] = [Self::Tcp, Self::Udp];

    pub fn kernel(self) -> Proto {
        match self {
            Self::Tcp => Proto::TCP,
            Self::Udp => Proto::UDP,
        }
    }

    pub fn from_kernel(proto: Proto) -> Option<Self> {
        match proto {
            Proto::TCP => Some(Self::Tcp),
            Proto::UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// Ports per protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    pub tcp: Ranges,
    pub udp: Ranges,
}

/// A destination needs more kernel port ranges than an entry holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("needs {needed} port ranges, more than the {MAX_RANGES} one destination can hold")]
pub struct TooManyRanges {
    pub needed: usize,
}

impl PortSet {
    pub fn all() -> Self {
        Self {
            tcp: Ranges::all(),
            udp: Ranges::all(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty()
    }

    pub fn ranges(&self, protocol: Protocol) -> &Ranges {
        match protocol {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        }
    }

    pub fn ranges_mut(&mut self, protocol: Protocol) -> &mut Ranges {
        match protocol {
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
        }
    }

    pub fn insert(&mut self, protocol: Protocol, first: u16, last: u16) {
        self.ranges_mut(protocol).insert(first, last);
    }

    pub fn union(&mut self, other: &Self) {
        self.tcp.union(&other.tcp);
        self.udp.union(&other.udp);
    }

    pub fn subtract(&mut self, other: &Self) {
        self.tcp.subtract(&other.tcp);
        self.udp.subtract(&other.udp);
    }

    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        self.ranges(protocol).contains(port)
    }

    /// The kernel encoding: TCP ranges first, then UDP, each sorted; equal sets encode alike.
    pub fn to_kernel(&self) -> Result<PortRanges, TooManyRanges> {
        let needed = self.tcp.0.len() + self.udp.0.len();
        if needed > MAX_RANGES {
            return Err(TooManyRanges { needed });
        }
        let mut out = PortRanges::EMPTY;
        let all = Protocol::BOTH
            .into_iter()
            .flat_map(|p| self.ranges(p).iter().map(move |r| (p, r)));
        for (slot, (protocol, (first, last))) in out.ranges.iter_mut().zip(all) {
            *slot = PortRange {
                first,
                last,
                proto: protocol.kernel(),
                reserved: 0,
            };
        }
        out.range_count = needed as u32;
        out.tcp_count = self.tcp.0.len() as u32;
        Ok(out)
    }

    /// Decodes a kernel port set (unknown protocols are ignored).
    pub fn from_kernel(set: &PortRanges) -> Self {
        let used = (set.range_count as usize).min(MAX_RANGES);
        let mut out = Self::default();
        for r in &set.ranges[..used] {
            if let Some(p) = Protocol::from_kernel(r.proto) {
                out.insert(p, r.first.min(r.last), r.last.max(r.first));
            }
        }
        out
    }
}

/// The id of a kernel port set: FNV-1a of its used ranges, never [`PortSetId::NONE`].
pub fn port_set_id(set: &PortRanges) -> PortSetId {
    let used = (set.range_count as usize).min(MAX_RANGES);
    let bytes = set.ranges[..used].iter().flat_map(|r| {
        let [f0, f1] = r.first.to_le_bytes();
        let [l0, l1] = r.last.to_le_bytes();
        [f0, f1, l0, l1, r.proto.0]
    });
    match crate::hash::fnv1a(bytes) {
        0 => PortSetId(1),
        h => PortSetId(h),
    }
}

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == [(0, u16::MAX)] {
            return f.write_str("any");
        }
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for PortSet {
    /// `443/TCP, 53/UDP`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Protocol::BOTH
            .into_iter()
            .filter(|p| !self.ranges(*p).is_empty())
            .map(|p| format!("{}/{p}", self.ranges(p)))
            .collect();
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(v: &[(u16, u16)]) -> Ranges {
        let mut r = Ranges::default();
        for &(a, b) in v {
            r.insert(a, b);
        }
        r
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent() {
        let r = ranges(&[(10, 20), (30, 40), (21, 29)]);
        assert_eq!(r.0, vec![(10, 40)]);
        let r = ranges(&[(443, 443), (80, 80), (8000, 8010), (8005, 8020)]);
        assert_eq!(r.0, vec![(80, 80), (443, 443), (8000, 8020)]);
        let r = ranges(&[(0, 0), (65535, 65535), (1, 65534)]);
        assert_eq!(r.0, vec![(0, 65535)]);
    }

    #[test]
    fn subtract_splits_ranges() {
        let mut r = Ranges::all();
        r.subtract(&ranges(&[(22, 22), (100, 200)]));
        assert_eq!(r.0, vec![(0, 21), (23, 99), (201, 65535)]);
        let mut r = ranges(&[(8000, 8010)]);
        r.subtract(&ranges(&[(8000, 8010)]));
        assert!(r.is_empty());
    }

    #[test]
    fn subtract_handles_many_removals_and_edges() {
        let mut r = ranges(&[(0, 10), (20, 30)]);
        r.subtract(&ranges(&[(0, 0), (5, 5), (10, 21), (30, 30)]));
        assert_eq!(r.0, vec![(1, 4), (6, 9), (22, 29)]);
        let mut r = Ranges::all();
        r.subtract(&ranges(&[(0, 0), (65535, 65535)]));
        assert_eq!(r.0, vec![(1, 65534)]);
        let mut r = Ranges::all();
        r.subtract(&Ranges::all());
        assert!(r.is_empty());
    }

    #[test]
    fn thousands_of_ports_build_quickly() {
        let mut r = Ranges::default();
        for p in (0..65535u16).step_by(2).rev() {
            r.insert(p, p);
        }
        assert_eq!(r.0.len(), 32768);
        let mut all = Ranges::all();
        all.subtract(&r);
        assert_eq!(all.0.len(), 32768);
        assert!(all.0.iter().all(|&(a, b)| a == b && a % 2 == 1));
    }

    /// The kernel's binary search gives the same answers as the set itself.
    #[test]
    fn the_kernel_verdict_matches_the_set() {
        use egress_common::Counter;
        let mut set = PortSet::default();
        for (a, b) in [
            (22, 22),
            (80, 90),
            (443, 443),
            (1000, 2000),
            (8080, 8080),
            (65535, 65535),
        ] {
            set.insert(Protocol::Tcp, a, b);
        }
        set.insert(Protocol::Udp, 53, 53);
        let mut many = set.clone();
        for p in 0..50u16 {
            many.insert(Protocol::Tcp, 3000 + p * 10, 3000 + p * 10 + 2);
        }
        for s in [&set, &many] {
            let k = s.to_kernel().unwrap();
            for port in (0..=u16::MAX).step_by(1) {
                for (p, proto) in [(Protocol::Tcp, Proto::TCP), (Protocol::Udp, Proto::UDP)] {
                    let expected = if s.allows(p, port) {
                        Counter::ALLOW_ENTRY
                    } else {
                        Counter::DENY_PORT
                    };
                    assert_eq!(k.verdict(proto, port), expected, "{p} {port}");
                }
            }
            assert_eq!(k.verdict(Proto(1), 0), Counter::DENY_PROTOCOL);
        }
        let mut tcp_only = PortSet::default();
        tcp_only.insert(Protocol::Tcp, 443, 443);
        let k = tcp_only.to_kernel().unwrap();
        assert_eq!(k.verdict(Proto::UDP, 443), Counter::DENY_PROTOCOL);
    }

    #[test]
    fn kernel_round_trip_ids_and_limit() {
        let mut set = PortSet::default();
        set.insert(Protocol::Tcp, 443, 443);
        set.insert(Protocol::Udp, 53, 53);
        set.insert(Protocol::Tcp, 8000, 8010);
        let k = set.to_kernel().unwrap();
        assert_eq!(k.range_count, 3);
        assert_eq!(PortSet::from_kernel(&k), set);
        assert_eq!(set.to_string(), "443,8000-8010/TCP, 53/UDP");
        let mut same = PortSet::default();
        same.insert(Protocol::Tcp, 8000, 8010);
        same.insert(Protocol::Udp, 53, 53);
        same.insert(Protocol::Tcp, 443, 443);
        assert_eq!(port_set_id(&same.to_kernel().unwrap()), port_set_id(&k));
        let mut other = set.clone();
        other.insert(Protocol::Udp, 54, 54);
        assert_ne!(port_set_id(&other.to_kernel().unwrap()), port_set_id(&k));

        let mut big = PortSet::default();
        for p in 0..=MAX_RANGES as u16 {
            big.insert(Protocol::Tcp, p * 10, p * 10);
        }
        assert_eq!(
            big.to_kernel().unwrap_err(),
            TooManyRanges {
                needed: MAX_RANGES + 1
            }
        );
    }
}
