//! Why a destination is allowed or denied, worked out from the pinned maps the way the
//! kernel programs do (`egress-ebpf/src/programs/verdict.rs`): loopback is allowed; an IPv6
//! form of an IPv4 host is judged as that host; the exact address, else the longest matching
//! prefix, among the entries of the caller's class and then among the node-wide ones,
//! decides through its port set; without an entry, the default action does. The end-to-end
//! tests hold the two to the same answers.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use egress_common::{
    AllowEntry, ClassId, Config, DefaultAction, MAX_CLASS_LEVELS, Mode, PortRanges, PortSetId,
    SourceId, SourceKind, SourceRecord,
};
use serde::Serialize;

use crate::{
    enforce::{EntryKey, Target, class_name, source::label},
    ports::{PortSet, Protocol},
};

/// What the maps hold, read once.
pub struct MapView {
    pub config: Config,
    pub entries: BTreeMap<EntryKey, AllowEntry>,
    pub ports: BTreeMap<PortSetId, PortRanges>,
    pub sources: BTreeMap<SourceId, SourceRecord>,
    /// Cgroup id → class, for pods the agent placed.
    pub classes: BTreeMap<u64, ClassId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The destination as judged (an IPv4 host reached through IPv6 forms is IPv4 here).
    pub judged_as: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// `allowed`, `denied`, or `would be denied (audit mode)`.
    pub verdict: String,
    /// `loopback`, `entry`, `default`, `no_entry`, `wrong_port`, `wrong_protocol`.
    pub reason: String,
    /// The entry that decides, if one does.
    pub entry: Option<EntryView>,
    pub default_action: String,
    pub mode: String,
    /// The caller's class: `node` (the node-wide rules) or a class id.
    pub class: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryView {
    /// Address or prefix.
    pub key: String,
    pub ports: String,
    pub sources: Vec<SourceView>,
    /// Unix seconds; 0: never.
    pub expires_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceView {
    /// `host`, `rule` or `dns-resolver`.
    pub kind: String,
    pub name: String,
}

/// The IPv4 host an IPv6 destination carries, if it is a form the kernel judges as IPv4.
pub fn as_judged(addr: IpAddr) -> IpAddr {
    judged(addr).0
}

/// The address as judged, and whether it came through the NAT64 prefix (then it is never
/// loopback: it leaves for a translator).
fn judged(addr: IpAddr) -> (IpAddr, bool) {
    match addr {
        IpAddr::V6(a) => {
            let o = a.octets();
            let mapped = o[..10].iter().all(|&b| b == 0) && o[10] == 0xff && o[11] == 0xff;
            let nat64 = o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];
            if mapped || nat64 {
                (IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15])), nat64)
            } else {
                (addr, false)
            }
        }
        v4 => (v4, false),
    }
}

fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_loopback() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unspecified(),
    }
}

impl MapView {
    /// The class the kernel gives a caller whose cgroup has these ancestors (`ancestors[l]`
    /// is the id of the ancestor at level `l`, the root being level 0), as
    /// `egress-ebpf/src/programs/verdict.rs` works it out.
    pub fn class_of(&self, ancestors: &[u64]) -> ClassId {
        let levels = self.config.class_levels.min(MAX_CLASS_LEVELS);
        if levels == 0 {
            return ClassId::BASE;
        }
        let first = self.config.class_first_level as usize;
        ancestors
            .iter()
            .skip(first)
            .take(levels as usize)
            .find_map(|id| self.classes.get(id).copied())
            .unwrap_or(self.config.unknown_class)
    }

    /// Every entry of `class` that covers `addr` (exact address first, then prefixes,
    /// longest first), then those of the node-wide class; the first one is the one the
    /// kernel uses.
    pub fn covering(&self, addr: IpAddr, class: ClassId) -> Vec<(EntryKey, &AllowEntry)> {
        let mut found = self.covering_in(addr, |c| c == class);
        if class != ClassId::BASE {
            found.extend(self.covering_in(addr, |c| c == ClassId::BASE));
        }
        found
    }

    /// Every entry of any class that covers `addr`, the node-wide ones first.
    pub fn covering_any(&self, addr: IpAddr) -> Vec<(EntryKey, &AllowEntry)> {
        let mut found = self.covering_in(addr, |c| c == ClassId::BASE);
        found.extend(self.covering_in(addr, |c| c != ClassId::BASE));
        found
    }

    fn covering_in(
        &self,
        addr: IpAddr,
        in_class: impl Fn(ClassId) -> bool,
    ) -> Vec<(EntryKey, &AllowEntry)> {
        let addr = as_judged(addr);
        let mut exact: Vec<(EntryKey, &AllowEntry)> = Vec::new();
        let mut prefixes: Vec<(EntryKey, &AllowEntry)> = Vec::new();
        for (key, entry) in self.entries.iter().filter(|(k, _)| in_class(k.class)) {
            match key.target {
                Target::V4(a) if IpAddr::V4(a) == addr => exact.push((*key, entry)),
                Target::V6(a) if IpAddr::V6(a) == addr => exact.push((*key, entry)),
                t @ (Target::Net4(_) | Target::Net6(_)) if t.as_net().contains(&addr) => {
                    prefixes.push((*key, entry));
                }
                _ => {}
            }
        }
        prefixes.sort_by_key(|(k, _)| (k.class, std::cmp::Reverse(k.as_net().prefix_len())));
        exact.sort_by_key(|(k, _)| k.class);
        exact.extend(prefixes);
        exact
    }

    pub fn ports_of(&self, entry: &AllowEntry) -> PortSet {
        self.ports
            .get(&entry.ports)
            .map(PortSet::from_kernel)
            .unwrap_or_default()
    }

    pub fn view(&self, key: EntryKey, entry: &AllowEntry) -> EntryView {
        let held = (entry.source_count as usize).min(entry.sources.len());
        EntryView {
            key: key.to_string(),
            ports: self.ports_of(entry).to_string(),
            sources: entry.sources[..held]
                .iter()
                .map(|id| match self.sources.get(id) {
                    Some(r) => SourceView {
                        kind: kind_name(r.kind).to_owned(),
                        name: label(r),
                    },
                    None => SourceView {
                        kind: "unknown".into(),
                        name: format!("#{:x}", id.0),
                    },
                })
                .collect(),
            expires_at: entry.expires_at,
        }
    }

    /// The kernel's verdict for `addr:port` over `protocol` from a caller in `class`, and
    /// what decides it.
    pub fn explain(
        &self,
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
        class: ClassId,
    ) -> Explanation {
        let (judged, nat64) = judged(addr);
        let audit = self.config.mode == Mode::AUDIT;
        let default_allows = self.config.default_action == DefaultAction::ALLOW;
        let (allowed, reason, entry) = if class == ClassId::EXEMPT {
            (true, "exempt", None)
        } else if is_loopback(judged) && !nat64 {
            (true, "loopback", None)
        } else if let Some((key, entry)) = self.covering(judged, class).into_iter().next() {
            let ports = self.ports_of(entry);
            let reason = if ports.allows(protocol, port) {
                "entry"
            } else if !ports.ranges(protocol).is_empty() {
                "wrong_port"
            } else {
                "wrong_protocol"
            };
            (reason == "entry", reason, Some(self.view(key, entry)))
        } else if default_allows {
            (true, "default", None)
        } else {
            (false, "no_entry", None)
        };
        Explanation {
            judged_as: judged,
            port,
            protocol: protocol.to_string(),
            verdict: match (allowed, audit) {
                (true, _) => "allowed",
                (false, false) => "denied",
                (false, true) => "would be denied (audit mode: allowed)",
            }
            .to_owned(),
            reason: reason.to_owned(),
            entry,
            default_action: if default_allows { "allow" } else { "deny" }.to_owned(),
            mode: if audit { "audit" } else { "enforce" }.to_owned(),
            class: class_name(class),
        }
    }

    /// The hostnames behind an address: the hosts among the sources of every entry, of any
    /// class, that covers it.
    pub fn hostnames(&self, addr: IpAddr) -> Vec<String> {
        let mut names: Vec<String> = self
            .covering_any(addr)
            .into_iter()
            .flat_map(|(k, e)| self.view(k, e).sources)
            .filter(|s| s.kind == "host")
            .map(|s| s.name)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

pub fn kind_name(k: SourceKind) -> &'static str {
    match k {
        SourceKind::HOST => "host",
        SourceKind::RULE => "rule",
        SourceKind::DNS_RESOLVER => "dns-resolver",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_forms_of_ipv4_hosts_are_judged_as_ipv4() {
        let v4: IpAddr = "203.0.113.66".parse().unwrap();
        for form in ["::ffff:203.0.113.66", "64:ff9b::cb00:7142"] {
            assert_eq!(as_judged(form.parse().unwrap()), v4, "{form}");
        }
        let plain: IpAddr = "2001:db8::cb00:7142".parse().unwrap();
        assert_eq!(as_judged(plain), plain);
    }
}
