use std::time::Duration;

use egress_common::Proto;

use super::*;
use crate::{
    enforce::{
        reconcile::{MemoryStore, Reconciler},
        source::label,
    },
    policy::{Hostname, parse},
    resolve::{Outcome, ResolverSettings},
};

const NOW: u64 = 1_000;

fn policy(text: &str) -> Policy {
    parse(text, "p.yaml").unwrap()
}

fn native(rules: &str) -> Policy {
    policy(&format!(
        "apiVersion: egress/v1\nkind: EgressPolicy\ndnsResolvers: []\nrules:\n{rules}"
    ))
}

fn cache_with(policy: &Policy, answers: &[(&str, &[(&str, u32)])]) -> HostCache {
    let mut cache = HostCache::new(ResolverSettings {
        grace: Duration::from_secs(60),
        ..ResolverSettings::default()
    });
    let names: Vec<Hostname> = policy.hosts().keys().map(|h| (*h).clone()).collect();
    cache.sync(&names, NOW);
    for (host, addrs) in answers {
        let outcome = Outcome::Addresses(
            addrs
                .iter()
                .map(|(a, t)| (a.parse().unwrap(), *t))
                .collect(),
        );
        cache.apply(&Hostname::parse(host).unwrap(), outcome, NOW);
    }
    cache
}

fn key(s: &str) -> EntryKey {
    EntryKey::from_net(crate::policy::values::Net::parse(s).unwrap().0)
}

fn verdict(d: &Desired, k: &str, proto: Proto, port: u16) -> Option<egress_common::Counter> {
    // As the kernel decides: the entry's port set, none for PortSetId::NONE.
    d.entries.get(&key(k)).map(|e| {
        d.ports
            .get(&e.ports)
            .map_or(egress_common::Counter::DENY_PROTOCOL, |set| {
                set.verdict(proto, port)
            })
    })
}

fn allowed(d: &Desired, k: &str, proto: Proto, port: u16) -> bool {
    verdict(d, k, proto, port) == Some(egress_common::Counter::ALLOW_ENTRY)
}

#[test]
fn istio_reference_allows_the_resolved_address_on_443_tcp_and_the_resolver_on_53() {
    let p = policy(crate::policy::tests::ISTIO_REFERENCE);
    let cache = cache_with(
        &p,
        &[(
            "www.googleapis.com",
            &[("198.51.100.10", 300), ("2001:db8:100::10", 300)],
        )],
    );
    let upstream = ["10.200.0.53".parse().unwrap()];
    let d = compute(&p, &cache, &upstream, NOW);
    assert_eq!(d.entries.len(), 3);
    assert!(allowed(&d, "198.51.100.10", Proto::TCP, 443));
    assert!(!allowed(&d, "198.51.100.10", Proto::TCP, 80));
    assert!(!allowed(&d, "198.51.100.10", Proto::UDP, 443));
    assert!(allowed(&d, "2001:db8:100::10", Proto::TCP, 443));
    assert!(allowed(&d, "10.200.0.53", Proto::UDP, 53));
    assert!(allowed(&d, "10.200.0.53", Proto::TCP, 53));
    assert!(!allowed(&d, "10.200.0.53", Proto::TCP, 443));
    let entry = d.entries[&key("198.51.100.10")];
    assert_eq!(entry.expires_at, NOW + 300 + 60);
    assert_eq!(entry.source_count, 1);
    let host_source = &d.sources[&entry.sources[0]];
    assert_eq!(label(host_source), "www.googleapis.com");
    assert_eq!(host_source.addr_count, 2);
    assert_eq!(
        d.entries[&key("10.200.0.53")].expires_at,
        0,
        "resolver access never expires"
    );
    assert_eq!(
        d.config,
        Config {
            mode: egress_common::Mode::ENFORCE,
            default_action: DefaultAction::DENY,
            ..Config::default()
        }
    );
}

/// BR-07: a name without addresses contributes nothing, and is still visible as a source.
#[test]
fn a_name_without_addresses_adds_no_entry() {
    let p = native(
        "  - hosts: [missing.allowed.test]\n    ports: [80]\n  - hosts: [api.allowed.test]\n    ports: [443]\n",
    );
    let mut cache = cache_with(&p, &[("api.allowed.test", &[("198.51.100.10", 300)])]);
    cache.apply(
        &Hostname::parse("missing.allowed.test").unwrap(),
        Outcome::NoAddress {
            nxdomain: true,
            negative_ttl: Some(10),
        },
        NOW,
    );
    let d = compute(&p, &cache, &[], NOW);
    assert_eq!(
        d.entries.keys().copied().collect::<Vec<_>>(),
        vec![key("198.51.100.10")]
    );
    let missing = d
        .sources
        .values()
        .find(|s| label(s) == "missing.allowed.test")
        .unwrap();
    assert_eq!(
        (missing.status, missing.addr_count),
        (ResolveStatus::NXDOMAIN, 0)
    );
    assert!(!allowed(&d, "198.51.100.10", Proto::TCP, 80));
}

/// BR-15: one host named twice gets the union of the ports, in one entry.
#[test]
fn duplicate_hosts_merge_their_ports() {
    let p = native(
        "  - hosts: [\"Api.Allowed.TEST.\"]\n    ports: [80]\n  - hosts: [api.allowed.test]\n    ports: [8080]\n",
    );
    let cache = cache_with(&p, &[("api.allowed.test", &[("198.51.100.10", 300)])]);
    let d = compute(&p, &cache, &[], NOW);
    assert_eq!(d.entries.len(), 1);
    assert!(allowed(&d, "198.51.100.10", Proto::TCP, 80));
    assert!(allowed(&d, "198.51.100.10", Proto::TCP, 8080));
    assert!(!allowed(&d, "198.51.100.10", Proto::TCP, 81));
    assert_eq!(d.sources.len(), 1);
}

#[test]
fn addresses_inherit_covering_prefixes_and_deny_wins() {
    let p = native(
        "  - cidrs: [10.0.0.0/8]\n    ports: [443]\n\
         \x20 - cidrs: [10.1.0.0/16]\n    ports: [80]\n\
         \x20 - hosts: [h.test]\n    ports: [22]\n\
         \x20 - action: deny\n    cidrs: [10.1.2.0/24]\n    ports: [443]\n",
    );
    let cache = cache_with(&p, &[("h.test", &[("10.1.2.3", 300), ("10.9.9.9", 300)])]);
    let d = compute(&p, &cache, &[], NOW);
    // 10.1.0.0/16 carries its own port and the /8's.
    assert!(allowed(&d, "10.1.0.0/16", Proto::TCP, 80));
    assert!(allowed(&d, "10.1.0.0/16", Proto::TCP, 443));
    // The /24 deny rule removes 443 under it, and its entry carries the /16 and /8 ports.
    assert!(allowed(&d, "10.1.2.0/24", Proto::TCP, 80));
    assert!(!allowed(&d, "10.1.2.0/24", Proto::TCP, 443));
    // An exact address inherits every covering prefix, including the deny.
    assert!(allowed(&d, "10.1.2.3", Proto::TCP, 22));
    assert!(allowed(&d, "10.1.2.3", Proto::TCP, 80));
    assert!(!allowed(&d, "10.1.2.3", Proto::TCP, 443));
    assert!(allowed(&d, "10.9.9.9", Proto::TCP, 443));
    assert!(!allowed(&d, "10.9.9.9", Proto::TCP, 80));
    assert_eq!(d.entries[&key("10.0.0.0/8")].expires_at, 0);
}

#[test]
fn default_allow_with_deny_rules_is_a_deny_list() {
    let p = policy(
        "apiVersion: egress/v1\nkind: EgressPolicy\ndefaultAction: allow\ndnsResolvers: []\nrules:\n  - action: deny\n    cidrs: [203.0.113.66]\n    ports: [22]\n    protocol: ANY\n",
    );
    let d = compute(&p, &HostCache::default(), &[], NOW);
    assert!(!allowed(&d, "203.0.113.66", Proto::TCP, 22));
    assert!(!allowed(&d, "203.0.113.66", Proto::UDP, 22));
    assert!(allowed(&d, "203.0.113.66", Proto::TCP, 21));
    assert!(allowed(&d, "203.0.113.66", Proto::UDP, 23));
    assert_eq!(d.config.default_action, DefaultAction::ALLOW);
}

#[test]
fn expired_addresses_leave_the_desired_state() {
    let p = native("  - hosts: [h.test]\n    ports: [443]\n");
    let cache = cache_with(&p, &[("h.test", &[("198.51.100.1", 10)])]);
    assert_eq!(compute(&p, &cache, &[], NOW + 10 + 59).entries.len(), 1);
    assert!(compute(&p, &cache, &[], NOW + 10 + 60).entries.is_empty());
}

/// A destination whose ports cannot be represented fails closed: it gets an entry that
/// allows nothing, never the default action or a wider prefix's ports.
#[test]
fn a_destination_with_too_many_port_ranges_is_closed_and_reported() {
    let max = egress_common::MAX_RANGES;
    let ports: Vec<String> = (1..=max + 1).map(|p| (p * 10).to_string()).collect();
    let p = policy(&format!(
        "apiVersion: egress/v1\nkind: EgressPolicy\ndnsResolvers: []\ndefaultAction: allow\nrules:\n  - action: deny\n    protocol: TCP\n    cidrs: [192.0.2.1]\n    ports: [{}]\n",
        ports.join(", ")
    ));
    let d = compute(&p, &HostCache::default(), &[], NOW);
    assert_eq!(d.closed.len(), 1);
    // Every TCP gap between the denied ports, the TCP tail, and all of UDP.
    assert_eq!(d.closed[0].1.needed, max + 3);
    assert_eq!(d.closed[0].2, vec!["rule #1".to_owned()]);
    let entry = d.entries[&key("192.0.2.1")];
    assert_eq!(entry.ports, egress_common::PortSetId::NONE);
    assert!(!allowed(&d, "192.0.2.1", Proto::TCP, 10), "a denied port");
    assert!(!allowed(&d, "192.0.2.1", Proto::TCP, 15), "fails closed");
}

/// Hostnames are checked before their addresses are known.
#[test]
fn hosts_whose_rules_need_too_many_ranges_are_found_up_front() {
    let max = egress_common::MAX_RANGES;
    let ports: Vec<String> = (1..=max / 2 + 1).map(|p| (p * 10).to_string()).collect();
    let p = native(&format!(
        "  - hosts: [many.test]\n    ports: [{}]\n    protocol: ANY\n  - hosts: [few.test]\n    ports: [443]\n",
        ports.join(", ")
    ));
    let found = host_port_overflows(&p);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "many.test");
    assert_eq!(found[0].1.needed, max + 2);
}

/// Equal port sets are stored once, whatever the number of destinations.
#[test]
fn destinations_with_equal_ports_share_one_port_set() {
    let p = native(
        "  - cidrs: [192.0.2.1, 192.0.2.2, 2001:db8::1]\n    ports: [443]\n  - cidrs: [192.0.2.3]\n    ports: [80]\n",
    );
    let d = compute(&p, &HostCache::default(), &[], NOW);
    assert_eq!(d.entries.len(), 4);
    assert_eq!(d.ports.len(), 2);
    assert_eq!(
        d.entries[&key("192.0.2.1")].ports,
        d.entries[&key("2001:db8::1")].ports
    );
}

fn store_log(r: &Reconciler<MemoryStore>) -> Vec<String> {
    r.store().log.clone()
}

#[test]
fn reconcile_adds_before_it_removes_and_is_idempotent() {
    let before = native("  - cidrs: [192.0.2.1, 192.0.2.2]\n    ports: [443]\n");
    let after = native("  - cidrs: [192.0.2.2, 192.0.2.3]\n    ports: [443]\n");
    let cache = HostCache::default();
    let mut r = Reconciler::new(MemoryStore::new(16)).unwrap();
    r.apply(&compute(&before, &cache, &[], NOW)).unwrap();
    let n = store_log(&r).len();
    let applied = r.apply(&compute(&after, &cache, &[], NOW)).unwrap();
    assert_eq!((applied.added, applied.changed, applied.removed), (1, 0, 1));
    let writes: Vec<String> = store_log(&r)[n..].to_vec();
    let put = writes.iter().position(|w| w == "put 192.0.2.3").unwrap();
    let remove = writes.iter().position(|w| w == "remove 192.0.2.1").unwrap();
    assert!(put < remove, "{writes:?}");
    let n = store_log(&r).len();
    r.apply(&compute(&after, &cache, &[], NOW)).unwrap();
    assert_eq!(store_log(&r).len(), n, "a second apply writes nothing");
}

/// BR-26: a policy that cannot fit is refused before any write, with the counts.
#[test]
fn preflight_refuses_what_cannot_fit_without_writing() {
    let cidrs: Vec<String> = (1..=5).map(|i| format!("192.0.2.{i}")).collect();
    let p = native(&format!(
        "  - cidrs: [{}]\n    ports: [443]\n",
        cidrs.join(", ")
    ));
    let mut r = Reconciler::new(MemoryStore::new(4)).unwrap();
    let e = r
        .apply(&compute(&p, &HostCache::default(), &[], NOW))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the policy needs 5 entries in EGRESS_ALLOW_V4 but the maps hold at most 4 entries each (--max-entries); nothing was changed"
    );
    assert!(store_log(&r).is_empty());
}

#[test]
fn a_full_map_makes_room_by_removing_stale_entries_first() {
    let a = native("  - cidrs: [192.0.2.1, 192.0.2.2]\n    ports: [443]\n");
    let b = native("  - cidrs: [192.0.2.3, 192.0.2.4]\n    ports: [443]\n");
    let mut r = Reconciler::new(MemoryStore::new(3)).unwrap();
    r.apply(&compute(&a, &HostCache::default(), &[], NOW))
        .unwrap();
    r.apply(&compute(&b, &HostCache::default(), &[], NOW))
        .unwrap();
    assert_eq!(
        r.entries()
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        vec!["192.0.2.3", "192.0.2.4"]
    );
}

/// A failed addition does not keep what the policy no longer allows: removals still happen,
/// the error is returned, and the mirror matches the store.
#[test]
fn a_failed_write_still_removes_what_is_no_longer_allowed() {
    let a = native("  - cidrs: [192.0.2.1]\n    ports: [443]\n");
    let b = native("  - cidrs: [192.0.2.2, 192.0.2.3]\n    ports: [443]\n");
    let mut r = Reconciler::new(MemoryStore::new(16)).unwrap();
    r.apply(&compute(&a, &HostCache::default(), &[], NOW))
        .unwrap();
    let mut store = r.into_store();
    store.fail_on = Some("put 192.0.2.2".into());
    let mut r = Reconciler::new(store).unwrap();
    assert!(
        r.apply(&compute(&b, &HostCache::default(), &[], NOW))
            .is_err()
    );
    assert!(!r.entries().contains_key(&key("192.0.2.1")), "removed");
    assert!(r.entries().contains_key(&key("192.0.2.3")), "added");
    assert!(
        !r.entries().contains_key(&key("192.0.2.2")),
        "its write failed"
    );
    let held: BTreeMap<_, _> = r
        .store()
        .entries
        .iter()
        .map(|(k, e)| (*k, crate::enforce::reconcile::Held::of(e)))
        .collect();
    assert_eq!(r.entries(), &held);
    // The next reconciliation completes it.
    r.apply(&compute(&b, &HostCache::default(), &[], NOW))
        .unwrap();
    assert!(r.entries().contains_key(&key("192.0.2.2")));
}

/// An entry is written after the port set it refers to; a set no entry refers to any more is
/// removed only once it has been retired for the retirement period.
#[test]
fn port_sets_come_before_their_entries_and_leave_after_retirement() {
    let a = native("  - cidrs: [192.0.2.1]\n    ports: [443]\n");
    let b = native("  - cidrs: [192.0.2.1]\n    ports: [8443]\n");
    let mut r = Reconciler::new(MemoryStore::new(16))
        .unwrap()
        .with_retirement(Duration::from_millis(50));
    r.apply(&compute(&a, &HostCache::default(), &[], NOW))
        .unwrap();
    let log = store_log(&r);
    let set = log.iter().position(|w| w.starts_with("put-ports")).unwrap();
    let entry = log.iter().position(|w| w == "put 192.0.2.1").unwrap();
    assert!(set < entry, "{log:?}");
    r.apply(&compute(&b, &HostCache::default(), &[], NOW))
        .unwrap();
    assert_eq!(
        r.store().ports.len(),
        2,
        "the old set is retired, not removed"
    );
    assert!(r.retiring());
    std::thread::sleep(Duration::from_millis(60));
    r.apply(&compute(&b, &HostCache::default(), &[], NOW))
        .unwrap();
    assert_eq!(r.store().ports.len(), 1);
    assert!(!r.retiring());
}

/// The sources map makes room like the entry maps do (it used to fail, leaving the removed
/// host's entries in force).
#[test]
fn a_full_sources_map_makes_room_by_removing_stale_sources_first() {
    let a =
        native("  - name: one\n    cidrs: [192.0.2.1]\n  - name: two\n    cidrs: [192.0.2.2]\n");
    let b =
        native("  - name: three\n    cidrs: [192.0.2.3]\n  - name: four\n    cidrs: [192.0.2.4]\n");
    let mut r = Reconciler::new(MemoryStore::new(3)).unwrap();
    r.apply(&compute(&a, &HostCache::default(), &[], NOW))
        .unwrap();
    r.apply(&compute(&b, &HostCache::default(), &[], NOW))
        .unwrap();
    assert_eq!(r.store().sources.len(), 2);
    assert_eq!(
        r.entries()
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        vec!["192.0.2.3", "192.0.2.4"]
    );
}

/// Scoped rules: for each pod (and for a pod the agent does not know), the kernel's lookup
/// over its class's entries and then the node-wide ones gives exactly the verdicts of a
/// policy made of the rules that apply to it alone.
#[test]
fn classes_give_each_pod_the_verdicts_of_its_own_rules() {
    use crate::{explain::MapView, policy::PodMeta};
    let full = native(
        "\
- {name: web-out, hosts: [api.example.com], ports: [443]}
- {name: corp, cidrs: [10.0.0.0/8], ports: [22]}
- {name: one, cidrs: [10.1.2.3], ports: [8080], protocol: ANY}
- {name: team-a-net, cidrs: [10.1.0.0/16], ports: [80], namespaces: [team-a]}
- {name: team-a-deny, action: deny, cidrs: [10.1.2.0/24], ports: [80, 22], namespaces: [team-a]}
- {name: web-extra, cidrs: [203.0.113.5, 10.1.2.3], ports: [443], podSelector: {matchLabels: {app: web}}}
- {name: b-deny, action: deny, cidrs: [10.0.0.0/9], namespaces: [team-b]}
- {name: b-host, hosts: [db.example.com], ports: [5432], namespaces: [team-b]}
- {name: five, cidrs: [10.5.1.1], ports: [443]}
- {name: a-five, action: deny, cidrs: [10.5.0.0/16], ports: [80], namespaces: [team-a]}
",
    );
    let cache = cache_with(
        &full,
        &[
            (
                "api.example.com",
                &[("203.0.113.5", 300), ("10.1.2.3", 300)],
            ),
            ("db.example.com", &[("10.1.9.9", 300), ("10.200.0.1", 300)]),
        ],
    );
    let pod = |ns: &str, app: &str| PodMeta {
        namespace: ns.into(),
        name: format!("{ns}-{app}"),
        labels: [("app".to_owned(), app.to_owned())].into(),
    };
    let pods = Pods {
        first_level: 2,
        by_cgroup: [
            (101, pod("team-a", "web")),
            (102, pod("team-a", "db")),
            (103, pod("team-b", "web")),
            (104, pod("team-c", "batch")),
        ]
        .into(),
        ..Pods::default()
    };
    let d = compute_for(&full, &cache, &[], NOW, &pods);
    assert_eq!(d.config.class_levels, egress_common::MAX_CLASS_LEVELS);
    assert_eq!(d.config.class_first_level, 2);
    assert_ne!(
        d.config.unknown_class,
        ClassId::BASE,
        "scoped denies apply to unknown pods"
    );
    assert_eq!(d.classes.len(), 4);
    assert_eq!(
        d.classes[&104],
        ClassId::BASE,
        "no scoped rule selects team-c"
    );
    let view = |d: &Desired| MapView {
        config: d.config,
        entries: d.entries.clone(),
        ports: d.ports.clone(),
        sources: d.sources.clone(),
        classes: d.classes.clone(),
    };
    let classed = view(&d);

    // The reference: a policy of the rules that apply, made node-wide.
    let reference = |keep: &dyn Fn(&crate::policy::Rule) -> bool| {
        let mut p = full.clone();
        p.rules.retain(|r| keep(r));
        for r in &mut p.rules {
            r.scope = Default::default();
        }
        view(&compute(&p, &cache, &[], NOW))
    };
    let addrs = [
        "203.0.113.5",
        "10.1.2.3",
        "10.1.2.4",
        "10.1.3.3",
        "10.1.9.9",
        "10.200.0.1",
        "10.130.0.1",
        "10.2.0.1",
        "192.0.2.1",
        "10.5.1.1",
        "10.5.2.2",
    ];
    let check = |who: &str, ancestors: &[u64], expected: &MapView| {
        let class = classed.class_of(ancestors);
        for addr in addrs {
            for port in [22, 80, 443, 5432, 8080, 9] {
                for proto in [Protocol::Tcp, Protocol::Udp] {
                    let a: IpAddr = addr.parse().unwrap();
                    let got = classed.explain(a, port, proto, class);
                    let want = expected.explain(a, port, proto, ClassId::BASE);
                    assert_eq!(
                        (got.verdict.as_str(), got.reason.as_str()),
                        (want.verdict.as_str(), want.reason.as_str()),
                        "{who}: {addr}:{port}/{proto}"
                    );
                }
            }
        }
    };
    for (cgroup, meta) in &pods.by_cgroup {
        let expected = reference(&|r| r.scope.matches(meta));
        // The pod cgroup at level 2, a container below it at level 3.
        check(&meta.name, &[1, 50, *cgroup, 9000], &expected);
    }
    let unknown = reference(&|r| r.scope.node_wide() || r.action == Action::Deny);
    check("unknown pod", &[1, 50, 999, 9001], &unknown);

    // The node-wide class is what it would be without scoped rules.
    let node_wide = reference(&|r| r.scope.node_wide());
    let base_only: BTreeMap<_, _> = d
        .entries
        .iter()
        .filter(|(k, _)| k.class == ClassId::BASE)
        .map(|(k, e)| (*k, *e))
        .collect();
    assert_eq!(base_only, node_wide.entries);
}

/// Without scoped rules there are no classes: no lookups, no placements.
#[test]
fn node_wide_policies_need_no_classes() {
    let p = native("- {cidrs: [192.0.2.0/24], ports: [443]}\n");
    let pods = Pods {
        first_level: 1,
        by_cgroup: [(7, crate::policy::PodMeta::default())].into(),
        ..Pods::default()
    };
    let d = compute_for(&p, &HostCache::default(), &[], NOW, &pods);
    assert_eq!(d.config.class_levels, 0);
    assert!(d.classes.is_empty());
    assert!(d.entries.keys().all(|k| k.class == ClassId::BASE));
}

/// Socket rules: the node-wide kinds in the node-wide class; a class whose scoped rules allow
/// more gets its own entry; the unknown class gets only the node-wide kinds.
#[test]
fn socket_rules_give_each_class_its_kinds() {
    let p = native(
        "  - sockets: [icmp]\n  - sockets: [raw, packet]\n    namespaces: [monitoring]\n  - cidrs: [192.0.2.1]\n    namespaces: [team-a]\n",
    );
    let pod = |ns: &str| PodMeta {
        namespace: ns.into(),
        name: format!("{ns}-pod"),
        labels: Default::default(),
    };
    let pods = Pods {
        first_level: 2,
        by_cgroup: [
            (1, pod("monitoring")),
            (2, pod("team-a")),
            (3, pod("other")),
        ]
        .into(),
        exempt: Default::default(),
    };
    let d = compute_for(&p, &HostCache::default(), &[], NOW, &pods);
    assert_eq!(d.sockets[&ClassId::BASE], SocketKinds::ICMP);
    let monitoring = d.classes[&1];
    assert_eq!(
        d.sockets[&monitoring],
        SocketKinds::ICMP
            .union(SocketKinds::RAW)
            .union(SocketKinds::PACKET)
    );
    // team-a's class differs by addresses only: the kernel falls back to the node-wide kinds.
    assert!(!d.sockets.contains_key(&d.classes[&2]));
    let unknown = d.sockets.get(&d.config.unknown_class);
    assert_eq!(
        unknown.unwrap_or(&d.sockets[&ClassId::BASE]),
        &SocketKinds::ICMP
    );
    assert_eq!(d.sockets.len(), 2, "{:?}", d.sockets);
}
