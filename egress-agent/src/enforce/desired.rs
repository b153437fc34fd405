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
    sync::Arc,
};

use egress_common::{
    AllowEntry, ClassId, Config, DefaultAction, MAX_CLASS_LEVELS, MAX_SOURCES, PortRanges,
    PortSetId, ResolveStatus, SocketKinds, SourceId, SourceKind, SourceRecord,
};
use ipnet::IpNet;

use super::{
    EntryKey, Target,
    source::{DNS_RESOLVER_LABEL, record, source_id},
};
use crate::{
    policy::{Action, DnsResolver, Mode, PodMeta, Policy},
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
    /// The class of each pod cgroup the agent placed (empty when no rule is scoped).
    pub classes: BTreeMap<u64, ClassId>,
    /// The address-less socket kinds each class may create: always the node-wide class, and
    /// every other class whose rules allow more.
    pub sockets: BTreeMap<ClassId, SocketKinds>,
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

/// A set kept as a sorted vector. A destination has one source or a few: a B-tree node for
/// its sources and another for its labels (with a copy of each label) made a destination
/// cost about a kilobyte while the maps' content was computed — 100 MB for 100k addresses.
#[derive(Clone, Debug)]
struct SortedSet<T>(Vec<T>);

impl<T> Default for SortedSet<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: Ord + Clone> SortedSet<T> {
    fn insert(&mut self, value: T) {
        if let Err(at) = self.0.binary_search(&value) {
            self.0.insert(at, value);
        }
    }

    fn extend(&mut self, other: &Self) {
        for v in &other.0 {
            self.insert(v.clone());
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

/// What rules contribute to one destination.
#[derive(Default, Clone)]
struct Contribution {
    allow: PortSet,
    deny: PortSet,
    sources: SortedSet<SourceId>,
    /// Shared with the rule or hostname they name (one allocation per label, not per
    /// destination).
    labels: SortedSet<Arc<str>>,
    /// 0 when some source never expires (a literal address), else the latest expiry.
    expires_at: Option<u64>,
}

impl Contribution {
    fn add(
        &mut self,
        action: Action,
        ports: &PortSet,
        source: SourceId,
        label: &Arc<str>,
        expires_at: u64,
    ) {
        match action {
            Action::Allow => self.allow.union(ports),
            Action::Deny => self.deny.union(ports),
        }
        self.sources.insert(source);
        self.labels.insert(Arc::clone(label));
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
        self.sources.extend(&covering.sources);
        self.labels.extend(&covering.labels);
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
                c.add(
                    rule.action,
                    &rule.ports,
                    SourceId(0),
                    &rule.label.as_str().into(),
                    0,
                );
            }
            let err = c.ports(policy.default_action).to_kernel().err()?;
            Some((
                host.to_string(),
                err,
                c.labels.iter().map(|l| l.to_string()).collect(),
            ))
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

/// The pods the agent knows, by the id of their pod-level cgroup, and where the hooks find
/// those cgroups: `first_level` is the cgroup level just below the pods' root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pods {
    pub first_level: u32,
    pub by_cgroup: BTreeMap<u64, PodMeta>,
    /// Pod cgroups that are not enforced at all (the agent's own pod).
    pub exempt: BTreeSet<u64>,
}

/// Computes the maps' intended content at `now`, for a node whose pods are unknown (every
/// caller gets the unknown class when some rule is scoped). `upstream` are the agent's own
/// DNS servers, which `dnsResolvers: [upstream]` lets workloads query.
pub fn compute(policy: &Policy, hosts: &HostCache, upstream: &[IpAddr], now: u64) -> Desired {
    compute_for(policy, hosts, upstream, now, &Pods::default())
}

/// Computes the maps' intended content at `now` for these pods.
///
/// Classes: the node-wide class ([`ClassId::BASE`]) holds the entries of the rules that
/// apply to every pod. A pod whose labels and namespace some scoped rules select is in the
/// class of exactly those rules, whose id is a hash of them (pods selected alike share it).
/// A pod the agent does not know gets the node-wide allows and every deny rule, scoped or
/// not: never more than any pod could be allowed, so an unknown pod is never let through by
/// accident. Each class holds only the entries where its rules make a difference, plus the
/// entries a lookup in it would otherwise skip over (see [`class_entries`]).
pub fn compute_for(
    policy: &Policy,
    hosts: &HostCache,
    upstream: &[IpAddr],
    now: u64,
    pods: &Pods,
) -> Desired {
    let resolvers: BTreeSet<IpAddr> = policy
        .dns_resolvers
        .iter()
        .flat_map(|r| match r {
            DnsResolver::Upstream => upstream.to_vec(),
            DnsResolver::Addr(a) => vec![*a],
        })
        .map(crate::policy::values::unmap_addr)
        .collect();
    let scoped = policy.scoped();
    let node_wide: Vec<usize> = (0..policy.rules.len())
        .filter(|&i| policy.rules[i].scope.node_wide())
        .collect();

    // The scoped rules of each class (empty for the node-wide class).
    let mut classes: BTreeMap<ClassId, Vec<usize>> = BTreeMap::new();
    let mut placed = BTreeMap::new();
    let scoped_denies: Vec<usize> = (0..policy.rules.len())
        .filter(|&i| !policy.rules[i].scope.node_wide() && policy.rules[i].action == Action::Deny)
        .collect();
    let unknown_class = class_id(policy, &scoped_denies);
    if scoped {
        classes.insert(unknown_class, scoped_denies);
        for (&cgroup, pod) in &pods.by_cgroup {
            let selected: Vec<usize> = (0..policy.rules.len())
                .filter(|&i| {
                    !policy.rules[i].scope.node_wide() && policy.rules[i].scope.matches(pod)
                })
                .collect();
            let class = class_id(policy, &selected);
            classes.insert(class, selected);
            placed.insert(cgroup, class);
        }
    }

    let base = contributions(policy, &node_wide, hosts, &resolvers, now);
    // Classes are looked up when some rule is scoped or some pod is exempt.
    let classed = scoped || !pods.exempt.is_empty();
    if classed {
        for &cgroup in &pods.exempt {
            placed.insert(cgroup, ClassId::EXEMPT);
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
            unknown_class: if scoped { unknown_class } else { ClassId::BASE },
            class_first_level: if classed { pods.first_level } else { 0 },
            class_levels: if classed { MAX_CLASS_LEVELS } else { 0 },
        },
        sources: source_records(policy, hosts, &resolvers, now),
        classes: placed,
        ..Desired::default()
    };
    let base_entries = entries(policy.default_action, &base, ClassId::BASE, &mut desired);
    let base_sockets = socket_kinds(policy, &node_wide);
    desired.sockets.insert(ClassId::BASE, base_sockets);
    for (&class, selected) in classes.iter().filter(|(c, _)| **c != ClassId::BASE) {
        let mut rules = node_wide.clone();
        rules.extend(selected);
        rules.sort_unstable();
        let kinds = socket_kinds(policy, &rules);
        if kinds != base_sockets {
            desired.sockets.insert(class, kinds);
        }
        let full = contributions(policy, &rules, hosts, &resolvers, now);
        let mut scratch = Desired::default();
        let own = entries(policy.default_action, &full, class, &mut scratch);
        for (target, entry) in class_entries(&own, &base_entries) {
            desired.entries.insert(EntryKey::new(class, target), entry);
        }
        desired.ports.extend(scratch.ports);
        desired.closed.extend(scratch.closed);
    }
    desired.entries.extend(
        base_entries
            .into_iter()
            .map(|(t, e)| (EntryKey::new(ClassId::BASE, t), e)),
    );
    desired
}

/// The socket kinds these rules allow (socket rules only allow; see the native schema).
fn socket_kinds(policy: &Policy, rules: &[usize]) -> SocketKinds {
    rules
        .iter()
        .map(|&i| &policy.rules[i])
        .filter(|r| r.action == Action::Allow)
        .fold(SocketKinds::NONE, |k, r| k.union(r.sockets))
}

/// A class's id: a hash of its scoped rules (their labels and places in the file), never
/// [`ClassId::BASE`] unless there are none.
fn class_id(policy: &Policy, scoped: &[usize]) -> ClassId {
    if scoped.is_empty() {
        return ClassId::BASE;
    }
    let mut text = String::from("class");
    for &i in scoped {
        let r = &policy.rules[i];
        text.push_str(&format!("\0{}@{}:{}", r.label, r.at.0, r.at.1));
    }
    match crate::hash::fnv1a(text.bytes()) {
        0 => ClassId(1),
        h => ClassId(h),
    }
}

/// The entries a class must hold so that the kernel's lookup — the class's exact address,
/// its longest prefix, then the node-wide exact address and longest prefix — gives what its
/// full table (`own`) gives: every entry that differs from the node-wide one for the same
/// target, and every entry under a prefix among those (a lookup would stop at that prefix
/// instead of falling through). The rest the node-wide entries answer alike.
fn class_entries(
    own: &BTreeMap<Target, AllowEntry>,
    base: &BTreeMap<Target, AllowEntry>,
) -> BTreeMap<Target, AllowEntry> {
    let differing: BTreeMap<Target, AllowEntry> = own
        .iter()
        .filter(|(t, e)| base.get(t) != Some(e))
        .map(|(t, e)| (*t, *e))
        .collect();
    let prefixes: BTreeSet<IpNet> = differing
        .keys()
        .filter(|t| t.is_prefix())
        .map(Target::as_net)
        .collect();
    let lengths: BTreeSet<(bool, u8)> = prefixes
        .iter()
        .map(|n| (matches!(n, IpNet::V6(_)), n.prefix_len()))
        .collect();
    let mut out = differing.clone();
    for (target, entry) in own.iter().filter(|(t, _)| !differing.contains_key(t)) {
        let net = target.as_net();
        let v6 = matches!(net, IpNet::V6(_));
        let covered = lengths
            .iter()
            .filter(|(f, l)| *f == v6 && *l < net.prefix_len())
            .any(|&(_, len)| {
                let cover = IpNet::new(net.addr(), len).expect("shorter").trunc();
                prefixes.contains(&cover)
            });
        if covered {
            out.insert(*target, *entry);
        }
    }
    out
}

/// The source records of every rule and hostname, scoped or not.
fn source_records(
    policy: &Policy,
    hosts: &HostCache,
    resolvers: &BTreeSet<IpAddr>,
    now: u64,
) -> BTreeMap<SourceId, SourceRecord> {
    let mut sources = BTreeMap::new();
    for rule in policy.rules.iter().filter(|r| !r.nets.is_empty()) {
        let id = source_id(SourceKind::RULE, &rule.label);
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
    for host in policy.hosts().into_keys() {
        let id = source_id(SourceKind::HOST, host.as_str());
        let live = hosts.live(host, now);
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
    if !resolvers.is_empty() {
        let id = source_id(SourceKind::DNS_RESOLVER, DNS_RESOLVER_LABEL);
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
    sources
}

/// What the rules `selected` (indices into the policy's rules) and the DNS resolvers
/// contribute to each target, inheritance from covering prefixes included.
fn contributions(
    policy: &Policy,
    selected: &[usize],
    hosts: &HostCache,
    resolvers: &BTreeSet<IpAddr>,
    now: u64,
) -> BTreeMap<Target, Contribution> {
    let mut exact: BTreeMap<Target, Contribution> = BTreeMap::new();
    let mut prefixes: BTreeMap<Target, Contribution> = BTreeMap::new();
    let rules: Vec<&crate::policy::Rule> = selected.iter().map(|&i| &policy.rules[i]).collect();

    for rule in &rules {
        let id = source_id(SourceKind::RULE, &rule.label);
        let label: Arc<str> = rule.label.as_str().into();
        for net in &rule.nets {
            let key = Target::from_net(*net);
            let target = if key.is_prefix() {
                &mut prefixes
            } else {
                &mut exact
            };
            target
                .entry(key)
                .or_default()
                .add(rule.action, &rule.ports, id, &label, 0);
        }
    }

    let mut by_host: BTreeMap<&crate::policy::Hostname, Vec<&crate::policy::Rule>> =
        BTreeMap::new();
    for rule in &rules {
        for host in &rule.hosts {
            by_host.entry(host).or_default().push(rule);
        }
    }
    for (host, rules) in by_host {
        let id = source_id(SourceKind::HOST, host.as_str());
        let label: Arc<str> = host.as_str().into();
        for (addr, until) in hosts.live(host, now) {
            let c = exact.entry(Target::from_addr(addr)).or_default();
            for rule in &rules {
                c.add(rule.action, &rule.ports, id, &label, until);
            }
        }
    }

    if !resolvers.is_empty() {
        let id = source_id(SourceKind::DNS_RESOLVER, DNS_RESOLVER_LABEL);
        let label: Arc<str> = DNS_RESOLVER_LABEL.into();
        let mut dns = PortSet::default();
        for p in Protocol::BOTH {
            dns.insert(p, 53, 53);
        }
        for addr in resolvers {
            exact.entry(Target::from_addr(*addr)).or_default().add(
                Action::Allow,
                &dns,
                id,
                &label,
                0,
            );
        }
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
    exact.extend(prefixes);
    exact
}

/// Turns contributions into entries of `class`, adding the port sets they refer to to
/// `desired` (and the targets whose ports do not fit to its `closed` list).
fn entries(
    default_action: Action,
    contributions: &BTreeMap<Target, Contribution>,
    class: ClassId,
    desired: &mut Desired,
) -> BTreeMap<Target, AllowEntry> {
    let mut out = BTreeMap::new();
    for (target, c) in contributions {
        let ports = c.ports(default_action);
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
            Err(e) => desired.closed.push((
                EntryKey::new(class, *target),
                e,
                c.labels.iter().map(|l| l.to_string()).collect(),
            )),
        }
        out.insert(*target, entry);
    }
    out
}

#[cfg(test)]
mod tests;
