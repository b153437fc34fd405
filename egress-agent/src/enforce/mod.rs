//! From policy and resolved names to kernel map contents, and the reconciliation that writes
//! them.
//!
//! [`desired`] is a pure function of the policy, the host cache and the clock; [`reconcile`]
//! diffs its output against what the maps hold and writes the difference through the
//! [`MapStore`] trait, additions before removals. The kernel-backed store lives in
//! `crate::bpf`; tests use [`reconcile::MemoryStore`].

pub mod desired;
pub mod reconcile;
pub mod source;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use desired::{Desired, compute};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use reconcile::{Capacity, MapStore, Reconciler, StoreError};

/// A key of one of the four allow maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKey {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Net4(Ipv4Net),
    Net6(Ipv6Net),
}

impl EntryKey {
    /// An exact address for a /32 or /128, a prefix otherwise.
    pub fn from_net(net: IpNet) -> Self {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => Self::V4(n.addr()),
            IpNet::V6(n) if n.prefix_len() == 128 => Self::V6(n.addr()),
            IpNet::V4(n) => Self::Net4(n.trunc()),
            IpNet::V6(n) => Self::Net6(n.trunc()),
        }
    }

    pub fn from_addr(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => Self::V4(a),
            IpAddr::V6(a) => Self::V6(a),
        }
    }

    pub fn as_net(&self) -> IpNet {
        match *self {
            Self::V4(a) => IpNet::V4(Ipv4Net::from(a)),
            Self::V6(a) => IpNet::V6(Ipv6Net::from(a)),
            Self::Net4(n) => IpNet::V4(n),
            Self::Net6(n) => IpNet::V6(n),
        }
    }

    pub fn is_v6(&self) -> bool {
        matches!(self, Self::V6(_) | Self::Net6(_))
    }

    pub fn is_prefix(&self) -> bool {
        matches!(self, Self::Net4(_) | Self::Net6(_))
    }
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(a) => a.fmt(f),
            Self::V6(a) => a.fmt(f),
            Self::Net4(n) => n.fmt(f),
            Self::Net6(n) => n.fmt(f),
        }
    }
}
