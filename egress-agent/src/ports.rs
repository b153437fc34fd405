//! Port sets: which (protocol, port) pairs a rule or a destination allows.
//!
//! Policies speak of ports per protocol; the kernel wants at most
//! [`egress_common::MAX_RANGES`] `(protocol, first, last)` triples per destination. A
//! [`PortSet`] keeps sorted, disjoint, non-adjacent ranges per protocol so that unions and
//! differences stay canonical and two equal sets always encode to the same kernel value.

use std::fmt;

use egress_common::{MAX_RANGES, PortRange, Proto};

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

    /// Adds `first..=last`, merging with overlapping or adjacent ranges.
    pub fn insert(&mut self, first: u16, last: u16) {
        debug_assert!(first <= last);
        let (mut lo, mut hi) = (u32::from(first), u32::from(last));
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.0 {
            let (a, b) = (u32::from(a), u32::from(b));
            if b + 1 < lo {
                out.push((a, b));
            } else if hi + 1 < a {
                if !placed {
                    out.push((lo, hi));
                    placed = true;
                }
                out.push((a, b));
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if !placed {
            out.push((lo, hi));
        }
        out.sort_unstable();
        // Values came from u16 and were only combined with min/max.
        self.0 = out.into_iter().map(|(a, b)| (a as u16, b as u16)).collect();
    }

    pub fn union(&mut self, other: &Self) {
        for &(a, b) in &other.0 {
            self.insert(a, b);
        }
    }

    /// Removes every port of `other`.
    pub fn subtract(&mut self, other: &Self) {
        let mut out = Vec::new();
        for &(a, b) in &self.0 {
            let mut pieces = vec![(u32::from(a), u32::from(b))];
            for &(c, d) in &other.0 {
                let (c, d) = (u32::from(c), u32::from(d));
                pieces = pieces
                    .into_iter()
                    .flat_map(|(x, y)| {
                        let mut keep = Vec::with_capacity(2);
                        if d < x || c > y {
                            keep.push((x, y));
                        } else {
                            if c > x {
                                keep.push((x, c - 1));
                            }
                            if d < y {
                                keep.push((d + 1, y));
                            }
                        }
                        keep
                    })
                    .collect();
            }
            out.extend(pieces.into_iter().map(|(x, y)| (x as u16, y as u16)));
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

    /// The kernel encoding: TCP ranges first, then UDP, each sorted.
    pub fn to_kernel(&self) -> Result<([PortRange; MAX_RANGES], u32), TooManyRanges> {
        let needed = self.tcp.0.len() + self.udp.0.len();
        if needed > MAX_RANGES {
            return Err(TooManyRanges { needed });
        }
        let mut out = egress_common::AllowEntry::EMPTY.ranges;
        let all = Protocol::BOTH
            .into_iter()
            .flat_map(|p| self.ranges(p).iter().map(move |r| (p, r)));
        for (slot, (protocol, (first, last))) in out.iter_mut().zip(all) {
            *slot = PortRange {
                first,
                last,
                proto: protocol.kernel(),
                reserved: 0,
            };
        }
        Ok((out, needed as u32))
    }

    /// Decodes the ranges of a kernel entry (unknown protocols are ignored).
    pub fn from_kernel(ranges: &[PortRange]) -> Self {
        let mut set = Self::default();
        for r in ranges {
            if let Some(p) = Protocol::from_kernel(r.proto) {
                set.insert(p, r.first.min(r.last), r.last.max(r.first));
            }
        }
        set
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
    fn kernel_round_trip_and_limit() {
        let mut set = PortSet::default();
        set.insert(Protocol::Tcp, 443, 443);
        set.insert(Protocol::Udp, 53, 53);
        set.insert(Protocol::Tcp, 8000, 8010);
        let (ranges, n) = set.to_kernel().unwrap();
        assert_eq!(n, 3);
        assert_eq!(PortSet::from_kernel(&ranges[..n as usize]), set);
        assert_eq!(set.to_string(), "443,8000-8010/TCP, 53/UDP");

        let mut big = PortSet::default();
        for p in 0..17u16 {
            big.insert(Protocol::Tcp, p * 10, p * 10);
        }
        assert_eq!(big.to_kernel().unwrap_err(), TooManyRanges { needed: 17 });
    }
}
