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
    d.entries.get(&key(k)).map(|e| e.verdict(proto, port))
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
            default_action: DefaultAction::DENY
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

#[test]
fn a_destination_with_too_many_port_ranges_is_omitted_and_reported() {
    let ports: Vec<String> = (1..=17).map(|p| (p * 10).to_string()).collect();
    let p = native(&format!(
        "  - cidrs: [192.0.2.1]\n    ports: [{}]\n",
        ports.join(", ")
    ));
    let d = compute(&p, &HostCache::default(), &[], NOW);
    assert!(d.entries.is_empty());
    assert_eq!(d.omitted.len(), 1);
    assert_eq!(d.omitted[0].1.needed, 17);
    assert_eq!(d.omitted[0].2, vec!["rule #1".to_owned()]);
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

#[test]
fn a_failed_write_leaves_the_mirror_true_and_removes_nothing() {
    let a = native("  - cidrs: [192.0.2.1]\n    ports: [443]\n");
    let b = native("  - cidrs: [192.0.2.2, 192.0.2.3]\n    ports: [443]\n");
    let mut store = MemoryStore::new(16);
    let mut r = Reconciler::new(std::mem::take(&mut store)).unwrap();
    r.apply(&compute(&a, &HostCache::default(), &[], NOW))
        .unwrap();
    let n = store_log(&r).len();
    let mut store = r.into_store();
    store.fail_from = Some(n + 2);
    store.max_entries = 16;
    let mut r = Reconciler::new(store).unwrap();
    assert!(
        r.apply(&compute(&b, &HostCache::default(), &[], NOW))
            .is_err()
    );
    assert!(
        r.entries().contains_key(&key("192.0.2.1")),
        "nothing removed after a failure"
    );
    assert_eq!(r.entries(), &r.store().entries);
}
