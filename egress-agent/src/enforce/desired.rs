//! What the maps should hold, computed from the policy, the host cache and the clock.
//!
//! Semantics, per destination address or prefix:
//! - the ports of every allow rule that covers it (by hostname, address or prefix) are
//!   unioned, those of every deny rule are subtracted: deny wins;
//! - with `defaultAction: allow`, the start set is every port instead of the allow union;
//! - an exact address also inherits the rules of every prefix that contains it, and a prefix
//!   those of every shorter prefix that contains it, because the kernel consults the
//!   exact-address map first and the longest matching prefix next, and stops at the first
//!   hit.
//!
//! A destination with an entry is allowed on exactly the ports of the entry's port set; one
//! without an entry gets the default action.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use egress_common::{
    AllowEntry, Config, DefaultAction, MAX_SOURCES, PortRanges, PortSetId, ResolveStatus, SourceId,
    SourceKind, SourceRecord,
};
use ipnet::IpNet;

use super::{
    EntryKey,
    source::{DNS_RESOLVER_LABEL, record, source_id},
};
use crate::{
    policy::{Action, DnsResolver, Mode, Policy},
    ports::{PortSet, Protocol, TooManyRanges, port_set_id},
    resolve::HostCache,
};

/// The full intended content of the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub entries: BTreeMap<EntryKey, AllowEntry>,
    /// The port sets the entries refer to.
    pub ports: BTreeMap<PortSetId, PortRanges>,
    pub sources: BTreeMap<SourceId, SourceRecord>,
    pub config: Config,
    /// Destinations whose ports need more ranges than a port set holds, with the labels of
    /// their sources. They get an entry that allows no port at all: failing closed, never
    /// falling back to the default action or to a wider prefix.
    pub closed: Vec<(EntryKey, TooManyRanges, Vec<String>)>,
}

impl Desired {
    /// The ports an entry allows (none for [`PortSetId::NONE`] or an unknown id).
    pub fn ports_of(&self, entry: &AllowEntry) -> PortSet {
        self.ports
            .get(&entry.ports)
            .map(PortSet::from_kernel)
            .unwrap_or_default()
    }
}

/// What rules contribute to one destination.
#[derive(Default, Clone)]
struct Contribution {
    allow: PortSet,
    deny: PortSet,
    sources: BTreeSet<SourceId>,
    labels: BTreeSet<String>,
    /// 0 when some source never expires (a literal address), else the latest expiry.
    expires_at: Option<u64>,
}

impl Contribution {
    fn add(
        &mut self,
        action: Action,
        ports: &PortSet,
        source: SourceId,
        label: &str,
        expires_at: u64,
    ) {
        match action {
            Action::Allow => self.allow.union(ports),
            Action::Deny => self.deny.union(ports),
        }
        self.sources.insert(source);
        self.labels.insert(label.to_owned());
        self.expires_at = Some(match self.expires_at {
            None => expires_at,
            Some(0) => 0,
            Some(_) if expires_at == 0 => 0,
            Some(e) => e.max(expires_at),
        });
    }

    /// What the destination may be reached on: the allowed ports (every port under a
    /// default action of allow) without the denied ones.
    fn ports(&self, default_action: Action) -> PortSet {
        let mut ports = match default_action {
            Action::Allow => PortSet::all(),
            Action::Deny => self.allow.clone(),
        };
        ports.subtract(&self.deny);
        ports
    }

    /// Takes the ports of a covering prefix, and its sources: they explain the verdict too
    /// (`maps` and `explain` name every rule that shaped an entry). Its expiry is not taken:
    /// prefixes never expire, and an address's entry lives as long as its own sources say.
    fn inherit(&mut self, covering: &Contribution) {
        self.allow.union(&covering.allow);
        self.deny.union(&covering.deny);
        self.sources.extend(covering.sources.iter().copied());
        self.labels.extend(covering.labels.iter().cloned());
    }
}

/// Hostnames whose own rules already need more port ranges than a port set holds, whatever
/// they resolve to, with the labels of those rules (covering prefixes can only add to this,
/// and are judged per address once the addresses are known).
pub fn host_port_overflows(policy: &Policy) -> Vec<(String, TooManyRanges, Vec<String>)> {
    policy
        .hosts()
        .into_iter()
        .filter_map(|(host, rules)| {
            let mut c = Contribution::default();
            for rule in &rules {
                c.add(rule.action, &rule.ports, SourceId(0), &rule.label, 0);
            }
            let err = c.ports(policy.default_action).to_kernel().err()?;
            Some((host.to_string(), err, c.labels.into_iter().collect()))
        })
        .collect()
}

/// Refuses a policy the kernel's port sets cannot represent — a literal destination or a
/// hostname's own rules needing too many ranges — before anything is applied, naming the
/// file, the first rule involved, the destination and its rules. Otherwise returns what the
/// literal destinations need (for a capacity check).
pub fn check_representable(
    policy: &Policy,
    upstream: &[IpAddr],
    now: u64,
    file: &str,
) -> Result<Desired, String> {
    let probe = compute(policy, &HostCache::default(), upstream, now);
    let problem = probe
        .closed
        .first()
        .map(|(key, err, labels)| (key.to_string(), err.clone(), labels.clone()))
        .or_else(|| host_port_overflows(policy).into_iter().next());
    let Some((what, err, labels)) = problem else {
        return Ok(probe);
    };
    let (line, col) = policy
        .rules
        .iter()
        .find(|r| labels.contains(&r.label))
        .map_or((1, 1), |r| r.at);
    Err(format!(
        "{file}:{line}:{col}: {what} ({}) {err}",
        labels.join(", ")
    ))
}

/// Computes the maps' intended content at `now`. `upstream` are the agent's own DNS servers,
/// which `dnsResolvers: [upstream]` lets workloads query.
pub fn compute(policy: &Policy, hosts: &HostCache, upstream: &[IpAddr], now: u64) -> Desired {
    let mut exact: BTreeMap<EntryKey, Contribution> = BTreeMap::new();
    let mut prefixes: BTreeMap<EntryKey, Contribution> = BTreeMap::new();
    let mut sources = BTreeMap::new();

    for rule in &policy.rules {
        if !rule.nets.is_empty() {
            let id = source_id(SourceKind::RULE, &rule.label);
            for net in &rule.nets {
                let key = EntryKey::from_net(*net);
                let target = if key.is_prefix() {
                    &mut prefixes
                } else {
                    &mut exact
                };
                target
                    .entry(key)
                    .or_default()
                    .add(rule.action, &rule.ports, id, &rule.label, 0);
            }
            let rec = record(
                SourceKind::RULE,
                &rule.label,
                ResolveStatus::STATIC,
                rule.nets.len() as u32,
                0,
                0,
            );
            sources.insert(id, rec);
        }
    }

    for (host, rules) in policy.hosts() {
        let id = source_id(SourceKind::HOST, host.as_str());
        let live = hosts.live(host, now);
        for &(addr, until) in &live {
            let c = exact.entry(EntryKey::from_addr(addr)).or_default();
            for rule in &rules {
                c.add(rule.action, &rule.ports, id, host.as_str(), until);
            }
        }
        let state = hosts.get(host);
        sources.insert(
            id,
            record(
                SourceKind::HOST,
                host.as_str(),
                state.map_or(ResolveStatus::PENDING, |s| s.status),
                live.len() as u32,
                state.map_or(0, |s| s.resolved_at),
                state.map_or(0, |s| s.refresh_at),
            ),
        );
    }

    let resolvers: BTreeSet<IpAddr> = policy
        .dns_resolvers
        .iter()
        .flat_map(|r| match r {
            DnsResolver::Upstream => upstream.to_vec(),
            DnsResolver::Addr(a) => vec![*a],
        })
        .map(crate::policy::values::unmap_addr)
        .collect();
    if !resolvers.is_empty() {
        let id = source_id(SourceKind::DNS_RESOLVER, DNS_RESOLVER_LABEL);
        let mut dns = PortSet::default();
        for p in Protocol::BOTH {
            dns.insert(p, 53, 53);
        }
        for addr in &resolvers {
            exact.entry(EntryKey::from_addr(*addr)).or_default().add(
                Action::Allow,
                &dns,
                id,
                DNS_RESOLVER_LABEL,
                0,
            );
        }
        let rec = record(
            SourceKind::DNS_RESOLVER,
            DNS_RESOLVER_LABEL,
            ResolveStatus::STATIC,
            resolvers.len() as u32,
            0,
            0,
        );
        sources.insert(id, rec);
    }

    // Inheritance from covering prefixes, computed on the rules' own contributions only.
    // Looking up each shorter prefix length present keeps this O(entries × lengths).
    let own_prefixes: HashMap<IpNet, Contribution> = prefixes
        .iter()
        .map(|(k, c)| (k.as_net(), c.clone()))
        .collect();
    let lengths: BTreeSet<(bool, u8)> = own_prefixes
        .keys()
        .map(|n| (matches!(n, IpNet::V6(_)), n.prefix_len()))
        .collect();
    for (key, c) in exact.iter_mut().chain(prefixes.iter_mut()) {
        let net = key.as_net();
        let v6 = matches!(net, IpNet::V6(_));
        for &(_, len) in lengths
            .iter()
            .filter(|(f, l)| *f == v6 && *l < net.prefix_len())
        {
            let cover = IpNet::new(net.addr(), len)
                .expect("shorter than the key's")
                .trunc();
            if let Some(cover) = own_prefixes.get(&cover) {
                c.inherit(cover);
            }
        }
    }

    let mut desired = Desired {
        config: Config {
            mode: match policy.mode {
                Mode::Enforce => egress_common::Mode::ENFORCE,
                Mode::Audit => egress_common::Mode::AUDIT,
            },
            default_action: match policy.default_action {
                Action::Allow => DefaultAction::ALLOW,
                Action::Deny => DefaultAction::DENY,
            },
        },
        sources,
        ..Desired::default()
    };
    for (key, c) in exact.into_iter().chain(prefixes) {
        let ports = c.ports(policy.default_action);
        let mut entry = AllowEntry {
            expires_at: c.expires_at.unwrap_or(0),
            source_count: c.sources.len() as u32,
            ..AllowEntry::EMPTY
        };
        for (slot, id) in entry
            .sources
            .iter_mut()
            .zip(c.sources.iter().take(MAX_SOURCES))
        {
            *slot = *id;
        }
        match ports.to_kernel() {
            // Nothing left (a deny rule took every port): no set to look up.
            Ok(set) if set.range_count == 0 => {}
            Ok(set) => {
                let id = port_set_id(&set);
                desired.ports.insert(id, set);
                entry.ports = id;
            }
            Err(e) => desired
                .closed
                .push((key, e, c.labels.into_iter().collect())),
        }
        desired.entries.insert(key, entry);
    }
    desired
}

#[cfg(test)]
mod tests;
