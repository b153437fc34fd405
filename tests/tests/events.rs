//! Every denial is visible: one event per denied flow with who, where to, how and why,
//! counts that lose nothing (aggregated in the kernel, exact even when the ring buffer
//! overflows), would-deny events in audit mode, and none for what is allowed.

use std::{process::Stdio, time::Duration};

use egress_tests::{
    probe,
    world::{WAIT, World, native},
    zonesrv::Zone,
};
use serde_json::Value;

fn zone() -> Zone {
    let mut zone = Zone::new();
    zone.set(
        "api.allowed.test",
        &["198.51.100.10", "2001:db8:100::10"],
        300,
    );
    zone
}

fn policy() -> String {
    native("  - hosts: [api.allowed.test]\n    ports: [443]\n")
}

/// Runs the probe in the pod and returns its pid with the outcomes.
fn probe_with_pid(world: &World, ops: &[(&str, &str)]) -> (u32, Vec<Value>) {
    let mut cmd = world.pod.command(probe::binary());
    for (op, addr) in ops {
        cmd.arg(op).arg(addr);
    }
    let child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (pid, lines)
}

fn find<'a>(events: &'a [Value], dst: &str, port: u64) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["destination"] == dst && e["port"] == port)
        .collect()
}

#[test]
fn each_denied_flow_is_one_event_with_who_where_and_why() {
    let (world, agent) = World::enforcing(zone(), &policy(), &[]);
    let (pid, r) = probe_with_pid(
        &world,
        &[
            ("tcp", "203.0.113.66:443"),
            ("udp-sendto", "203.0.113.66:9999"),
            ("tcp", "[2001:db8:100::66]:443"),
            ("tcp", "[::ffff:203.0.113.66]:8080"),
            ("tcp", "198.51.100.10:22"),
            ("tcp", "198.51.100.10:443"),
        ],
    );
    assert!(r[..5].iter().all(|o| o["errno"] == 1), "{r:?}");
    assert_eq!(r[5]["ok"], true);
    let events = agent.wait_events(WAIT, "five denied flows", |e| e.len() >= 5);
    assert_eq!(
        events.len(),
        5,
        "one per denied flow, none for the allowed: {events:#?}"
    );
    let cgroup = world.cgroup.pod().display().to_string();
    for (dst, port, proto, hook, family, reason) in [
        ("203.0.113.66", 443, "TCP", "connect4", "inet", "no_entry"),
        ("203.0.113.66", 9999, "UDP", "sendmsg4", "inet", "no_entry"),
        (
            "2001:db8:100::66",
            443,
            "TCP",
            "connect6",
            "inet6",
            "no_entry",
        ),
        // Through an AF_INET6 socket, judged (and reported) as the IPv4 host.
        ("203.0.113.66", 8080, "TCP", "connect6", "inet6", "no_entry"),
        ("198.51.100.10", 22, "TCP", "connect4", "inet", "wrong_port"),
    ] {
        let found = find(&events, dst, port);
        assert_eq!(found.len(), 1, "{dst}:{port}: {events:#?}");
        let e = found[0];
        assert_eq!(e["protocol"], proto, "{e}");
        assert_eq!(e["hook"], hook, "{e}");
        assert_eq!(e["family"], family, "{e}");
        assert_eq!(e["reason"], reason, "{e}");
        assert_eq!(e["verdict"], "deny", "{e}");
        assert_eq!(e["count"], 1, "{e}");
        assert_eq!(e["pid"], u64::from(pid), "{e}");
        assert_eq!(e["comm"], "egress-probe", "{e}");
        assert_eq!(e["cgroup"], cgroup.as_str(), "{e}");
        assert!(e["first_seen_ms"].as_u64().unwrap() > 0, "{e}");
    }
    // The kernel maps know the allowed host's address: its name comes with the denial.
    assert_eq!(
        find(&events, "198.51.100.10", 22)[0]["hostnames"],
        serde_json::json!(["api.allowed.test"])
    );
    assert_eq!(
        find(&events, "203.0.113.66", 443)[0]["hostnames"],
        serde_json::json!([])
    );
    let table = std::process::Command::new(egress_tests::agent::binary())
        .args(["events", "--state-dir"])
        .arg(&agent.state_dir)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("203.0.113.66:443/TCP (connect4)") && table.contains("api.allowed.test"),
        "{table}"
    );
}

/// Repeated identical denials are one flow whose count is exact; the kernel sends one event
/// for them, not one each.
#[test]
fn repeated_denials_are_aggregated_with_nothing_lost() {
    let (world, agent) = World::enforcing(zone(), &policy(), &[]);
    let r = probe::run(&world.pod, &[("tcp-repeat", "203.0.113.66:443,500")]);
    assert!(r[0].ok, "{r:?}");
    let events = agent.wait_events(WAIT, "the count of 500", |e| {
        find(e, "203.0.113.66", 443)
            .first()
            .is_some_and(|f| f["count"] == 500)
    });
    assert_eq!(events.len(), 1, "{events:#?}");
    let counters = &agent.maps_json()["counters"];
    assert_eq!(counters["deny_no_entry"], 500);
    assert_eq!(counters["events_lost"], 0);
}

/// Audit mode lets the connection through and reports the would-be denial.
#[test]
fn audit_mode_lets_through_and_reports_would_deny() {
    let audit = "outboundTrafficPolicy:\n  mode: ALLOW_ANY\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\nspec:\n  hosts: [api.allowed.test]\n  ports: [{number: 443, name: https, protocol: TLS}]\n";
    let (world, agent) = World::enforcing(zone(), audit, &[]);
    let r = probe::run(
        &world.pod,
        &[("tcp", "203.0.113.66:443"), ("tcp", "198.51.100.10:443")],
    );
    assert!(r[0].ok && r[1].ok, "audit mode refuses nothing: {r:?}");
    let events = agent.wait_events(WAIT, "a would-deny", |e| !e.is_empty());
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["verdict"], "would-deny");
    assert_eq!(events[0]["destination"], "203.0.113.66");
    assert_eq!(events[0]["reason"], "no_entry");
}

/// A burst of denials of distinct flows overflows a small ring buffer: every event is either
/// received or counted as lost, and every denial is still counted.
#[test]
fn ring_buffer_overflow_is_accounted_for() {
    const FLOWS: u64 = 3000;
    let (world, agent) = World::enforcing(zone(), &policy(), &["--event-buffer", "4096"]);
    let r = probe::run(&world.pod, &[("tcp-each", "203.0.113.66:20001-23000")]);
    assert!(r[0].ok, "{r:?}");
    // Flows known only from the sweep of the kernel's counts have no process.
    let events = agent.wait_events(Duration::from_secs(20), "every flow", |e| {
        e.len() as u64 == FLOWS
    });
    let received = events.iter().filter(|e| e["pid"] != 0).count() as u64;
    let counters = &agent.maps_json()["counters"];
    let lost = counters["events_lost"].as_u64().unwrap();
    assert!(
        lost > 0,
        "a 4 KiB ring buffer cannot take {FLOWS} events at once"
    );
    assert_eq!(received + lost, FLOWS, "received {received}, lost {lost}");
    let total: u64 = events.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(total, FLOWS, "no denial uncounted");
    println!("overflow: {received} events received, {lost} lost, {total} denials counted");
}
