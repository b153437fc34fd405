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
use egress_common::ClassId;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use reconcile::{Capacity, MapStore, Reconciler, StoreError};

/// What an entry is for: an exact address or a prefix, of either family. Each variant has
/// its own map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Net4(Ipv4Net),
    Net6(Ipv6Net),
}

/// A key of one of the four allow maps: a target among the entries of one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKey {
    pub class: ClassId,
    pub target: Target,
}

impl Target {
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

impl EntryKey {
    pub fn new(class: ClassId, target: Target) -> Self {
        Self { class, target }
    }

    /// A node-wide entry for `net` (see [`Target::from_net`]).
    pub fn from_net(net: IpNet) -> Self {
        Self::new(ClassId::BASE, Target::from_net(net))
    }

    /// A node-wide entry for one address.
    pub fn from_addr(addr: IpAddr) -> Self {
        Self::new(ClassId::BASE, Target::from_addr(addr))
    }

    pub fn as_net(&self) -> IpNet {
        self.target.as_net()
    }

    pub fn is_v6(&self) -> bool {
        self.target.is_v6()
    }

    pub fn is_prefix(&self) -> bool {
        self.target.is_prefix()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(a) => a.fmt(f),
            Self::V6(a) => a.fmt(f),
            Self::Net4(n) => n.fmt(f),
            Self::Net6(n) => n.fmt(f),
        }
    }
}

/// The target, and the class when it is not the node-wide one.
impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.class == ClassId::BASE {
            self.target.fmt(f)
        } else {
            write!(f, "{} (class {})", self.target, class_name(self.class))
        }
    }
}

/// How a class is shown: its id in hex (`node` for the node-wide class).
pub fn class_name(class: ClassId) -> String {
    if class == ClassId::BASE {
        "node".to_owned()
    } else if class == ClassId::EXEMPT {
        "exempt".to_owned()
    } else {
        format!("{:016x}", class.0)
    }
}
