//! A reload is atomic per destination: while a policy of 100k entries is replaced by another
//! 100k policy that shares half of them, a process in the enforced cgroup connecting all the
//! time never sees an address of both policies refused, nor an address of neither allowed.
//!
//! What a non-atomic reload would show: maps cleared and refilled (or removals written before
//! additions) refuse shared addresses for as long as the refill takes — with 100k entries,
//! far longer than the watcher's round over its addresses; a reload that detached, opened
//! the default, or wrote a wider entry on the way would let an address of neither through.
//! The test first proves its watcher sees such a switch: a policy that lacks the sampled
//! shared addresses and allows one address of neither must be reported as wrong verdicts.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    process::Stdio,
    time::Duration,
};

use egress_tests::{
    agent::Agent,
    probe,
    world::{WAIT, World},
    zonesrv::Zone,
};

const PORT: u16 = 9000;

/// Entries per policy: 100k (80 % IPv4), or `EGRESS_RELOAD_ENTRIES` (the VM matrix uses 10k:
/// an emulated agent takes minutes over 100k).
fn entries() -> usize {
    std::env::var("EGRESS_RELOAD_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn n4() -> usize {
    entries() * 4 / 5
}

fn n6() -> usize {
    entries() - n4()
}

fn v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32 + i as u32)
}

fn v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 0)) + i as u128)
}

/// A policy of the v4 indices `a4` and the v6 indices `a6` (UDP and TCP to port 9000),
/// under the rule `name` (the entries' source, so shared entries change value on a switch).
fn policy(name: &str, a4: impl Iterator<Item = usize>, a6: impl Iterator<Item = usize>) -> String {
    let mut text = format!(
        "apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n  - name: {name}\n    protocol: ANY\n    ports: [{PORT}]\n    cidrs:\n"
    );
    for i in a4 {
        text.push_str(&format!("      - {}\n", v4(i)));
    }
    for i in a6 {
        text.push_str(&format!("      - \"{}\"\n", v6(i)));
    }
    text
}

/// Old: v4 0..n4, v6 0..n6. New: v4 n4/2..3n4/2, v6 n6/2..3n6/2. Shared: half of each.
fn old() -> String {
    policy("old", 0..n4(), 0..n6())
}

fn new() -> String {
    policy("new", n4() / 2..n4() * 3 / 2, n6() / 2..n6() * 3 / 2)
}

/// Shared addresses sampled across the shared range (all in both policies), and addresses
/// in neither (above both ranges).
fn both_sample() -> Vec<String> {
    let mut out: Vec<String> = (0..48)
        .map(|k| format!("{}:{PORT}", v4(n4() / 2 + k * (n4() / 2) / 48 + 7)))
        .collect();
    out.extend((0..16).map(|k| format!("[{}]:{PORT}", v6(n6() / 2 + k * (n6() / 2) / 16 + 3))));
    out
}

fn neither_sample() -> Vec<String> {
    let mut out: Vec<String> = (0..24)
        .map(|k| format!("{}:{PORT}", v4(n4() * 2 + k * 997)))
        .collect();
    out.extend((0..8).map(|k| format!("[{}]:{PORT}", v6(n6() * 2 + k * 991))));
    out
}

#[derive(Debug)]
struct Watched {
    attempts: u64,
    rounds: u64,
    refused_both: u64,
    allowed_neither: u64,
    first_wrong: Option<String>,
}

/// Runs `switch` while a watcher in the pod connects to the samples; returns what it saw.
fn watch_during(world: &World, agent: &mut Agent, text: &str) -> Watched {
    let stop = world
        .dir()
        .join(format!("stop-{}", egress_tests::unique("")));
    let mut child = world
        .pod
        .command(egress_tests::probe::bench_binary())
        .arg("watch")
        .arg(&stop)
        .arg(format!("both={}", both_sample().join(",")))
        .arg(format!("neither={}", neither_sample().join(",")))
        .stdout(Stdio::piped())
        .spawn()
        .expect("run egress-bench watch (built with the tests)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "watching");
    std::thread::sleep(Duration::from_millis(200));
    let digest = world.write_policy(text);
    agent.wait_applied(&digest, WAIT);
    // Past the agent's "applied" (removals are written last) and the port-set retirement.
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::write(&stop, "").unwrap();
    let line = lines.next().expect("watcher result").unwrap();
    assert!(child.wait().unwrap().success(), "watcher failed");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let w = Watched {
        attempts: v["attempts"].as_u64().unwrap(),
        rounds: v["rounds"].as_u64().unwrap(),
        refused_both: v["refused_both"].as_u64().unwrap(),
        allowed_neither: v["allowed_neither"].as_u64().unwrap(),
        first_wrong: v["first_wrong"].as_str().map(str::to_owned),
    };
    println!("{w:?}");
    w
}

#[test]
fn replacing_a_big_policy_never_gives_a_wrong_verdict_for_a_shared_address() {
    let (world, mut agent) = World::enforcing(
        Zone::new(),
        &old(),
        &["--max-entries", "131072", "--resolve-wait", "1s"],
    );

    // The watcher can fail: a switch to a policy without the sampled shared addresses and
    // with one address of neither is seen as wrong verdicts of both kinds.
    let both = both_sample();
    let neither = neither_sample();
    let broken = {
        let mut t = policy(
            "broken",
            (0..n4()).filter(|i| !both.contains(&format!("{}:{PORT}", v4(*i)))),
            (0..n6()).filter(|i| !both.contains(&format!("[{}]:{PORT}", v6(*i)))),
        );
        t.push_str(&format!(
            "      - {}\n",
            neither[0].trim_end_matches(&format!(":{PORT}"))
        ));
        t
    };
    let seen = watch_during(&world, &mut agent, &broken);
    assert!(
        seen.refused_both > 0 && seen.allowed_neither > 0,
        "the watcher must see a wrong switch: {seen:?}"
    );
    let back = watch_during(&world, &mut agent, &old());
    assert!(back.rounds > 0, "{back:?}");

    // The real switches, both ways: not one wrong verdict.
    for (label, text) in [("old → new", new()), ("new → old", old())] {
        let w = watch_during(&world, &mut agent, &text);
        assert!(w.rounds > 100, "{label}: too few rounds watched: {w:?}");
        assert_eq!(
            (w.refused_both, w.allowed_neither),
            (0, 0),
            "{label}: wrong verdicts during the reload ({} attempts; first: {:?})\nlog:\n{}",
            w.attempts,
            w.first_wrong,
            agent.log()
        );
    }

    // And the switch happened: only-new addresses allowed after old → new, refused after
    // the switch back.
    let only_new = format!("{}:{PORT}", v4(n4() + 5));
    let only_old = format!("{}:{PORT}", v4(5));
    let r = probe::run(
        &world.pod,
        &[("udp-connect", &only_old), ("udp-connect", &only_new)],
    );
    assert!(r[0].ok && r[1].denied(), "{r:?}");
}
