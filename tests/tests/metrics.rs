//! The Prometheus endpoint, scraped over HTTP by curl: figures move by exactly what the
//! test did, and /readyz and /healthz answer.

use std::collections::BTreeMap;

use egress_tests::{
    probe,
    world::{WAIT, World, native},
    zonesrv::Zone,
};

/// `name{labels}` → value, from the text format.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_count_exactly_what_happened() {
    let mut zone = Zone::new();
    zone.set(
        "api.allowed.test",
        &["198.51.100.10", "2001:db8:100::10"],
        300,
    );
    let (world, mut agent) = World::enforcing(
        zone,
        &native("  - hosts: [api.allowed.test]\n    ports: [443]\n"),
        &["--metrics", "127.0.0.1:0"],
    );
    let status = agent.wait_for(WAIT, "metrics address", |s| s.metrics.is_some());
    let base = format!("http://{}", status.metrics.unwrap());
    assert_eq!(
        world.http_get(&format!("{base}/readyz")),
        (200, "ready\n".into())
    );
    assert_eq!(world.http_get(&format!("{base}/healthz")).0, 200);

    let (code, before) = world.http_get(&format!("{base}/metrics"));
    assert_eq!(code, 200);
    let before = parse(&before);
    let r = probe::run(
        &world.pod,
        &[
            ("tcp", "203.0.113.66:443"),
            ("tcp", "203.0.113.66:80"),
            ("tcp", "[2001:db8:100::66]:443"),
            ("tcp", "198.51.100.10:22"),
            ("tcp", "198.51.100.10:443"),
            ("tcp", "[2001:db8:100::10]:443"),
        ],
    );
    assert!(
        r[..4].iter().all(|o| o.denied()) && r[4].ok && r[5].ok,
        "{r:?}"
    );
    // A reload, to be counted.
    let digest = world.write_policy(&native(
        "  - hosts: [api.allowed.test]\n    ports: [443, 8443]\n",
    ));
    agent.wait_applied(&digest, WAIT);
    let after = parse(&world.http_get(&format!("{base}/metrics")).1);
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        delta(r#"egress_verdicts_total{verdict="deny",reason="no_entry"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"egress_verdicts_total{verdict="deny",reason="wrong_port"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"egress_verdicts_total{verdict="allow",reason="entry"}"#),
        2.0
    );
    assert_eq!(delta(r#"egress_policy_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(
        after[r#"egress_map_entries{map="EGRESS_ALLOW_V4"}"#], 2.0,
        "the host and the resolver"
    );
    assert_eq!(after[r#"egress_map_entries{map="EGRESS_ALLOW_V6"}"#], 1.0);
    assert_eq!(
        after[r#"egress_map_capacity{map="EGRESS_ALLOW_V4"}"#],
        65536.0
    );
    assert_eq!(
        after[r#"egress_hostname_addresses{hostname="api.allowed.test"}"#],
        2.0
    );
    assert_eq!(after["egress_hostnames"], 1.0);
    assert!(after[r#"egress_dns_queries_total{result="ok"}"#] >= 1.0);
    assert!(after["egress_dns_query_duration_seconds_count"] >= 1.0);
    assert_eq!(after["egress_ready"], 1.0);
    assert_eq!(after["egress_events_lost_total"], 0.0);
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("egress_agent_info{version=\"0.1.0\",kernel=")),
        "{after:#?}"
    );
    // The denied flows, once each (the event reader sweeps every second).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = parse(&world.http_get(&format!("{base}/metrics")).1);
        if now["egress_flows_tracked"] == 4.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now:#?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
