//! `explain` and `who-has` say what the kernel does, read from the same maps (checked
//! against real connections); `learn` turns an audited session into a policy that allows
//! exactly that session.

use std::process::Command;

use egress_tests::{
    agent::{Agent, binary},
    probe,
    world::{WAIT, World, native},
    zonesrv::Zone,
};
use serde_json::Value;

fn cli(agent: &Agent, args: &[&str]) -> Value {
    let out = Command::new(binary())
        .args(args)
        .arg("--bpffs")
        .arg(&agent.bpffs)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn explain_agrees_with_the_kernel_and_names_what_decides() {
    let mut zone = Zone::new();
    zone.set(
        "api.allowed.test",
        &["198.51.100.10", "2001:db8:100::10"],
        300,
    );
    let policy = native(
        "  - hosts: [api.allowed.test]\n    ports: [443]\n\
         \x20 - name: test-net\n    cidrs: [203.0.113.0/24]\n    ports: [80]\n    protocol: ANY\n\
         \x20 - name: not-this-one\n    action: deny\n    cidrs: [203.0.113.66]\n",
    );
    let (world, agent) = World::enforcing(zone, &policy, &[]);
    let cases = [
        ("tcp", "198.51.100.10:443"),
        ("tcp", "198.51.100.10:22"),
        ("udp", "198.51.100.10:443"),
        ("tcp", "[2001:db8:100::10]:443"),
        ("tcp", "[::ffff:198.51.100.10]:443"),
        ("tcp", "[64:ff9b::cb00:7105]:80"),
        ("tcp", "203.0.113.5:80"),
        ("udp", "203.0.113.5:80"),
        ("tcp", "203.0.113.66:80"),
        ("tcp", "192.0.2.1:443"),
        ("tcp", "127.0.0.1:9"),
    ];
    let ops: Vec<(&str, &str)> = cases
        .iter()
        .map(|&(proto, addr)| (if proto == "tcp" { "tcp" } else { "udp-sendto" }, addr))
        .collect();
    let kernel = probe::run(&world.pod, &ops);
    for ((proto, addr), outcome) in cases.iter().zip(&kernel) {
        let e = cli(&agent, &["explain", addr, "--proto", proto]);
        let says_denied = e["verdict"] == "denied";
        assert_eq!(
            says_denied,
            outcome.denied(),
            "{proto} {addr}: explain says {e}, the kernel said {outcome:?}"
        );
    }
    let e = cli(&agent, &["explain", "198.51.100.10:22"]);
    assert_eq!(e["reason"], "wrong_port");
    assert_eq!(e["entry"]["key"], "198.51.100.10");
    assert_eq!(e["entry"]["ports"], "443/TCP");
    assert_eq!(e["entry"]["sources"][0]["name"], "api.allowed.test");
    let e = cli(&agent, &["explain", "203.0.113.5:80", "--proto", "udp"]);
    assert_eq!(
        (&e["verdict"], &e["reason"]),
        (&"allowed".into(), &"entry".into())
    );
    assert_eq!(e["entry"]["key"], "203.0.113.0/24");
    let e = cli(&agent, &["explain", "[64:ff9b::cb00:7105]:80"]);
    assert_eq!(e["judged_as"], "203.0.113.5");
    let e = cli(&agent, &["explain", "192.0.2.1:443"]);
    assert_eq!(
        (&e["reason"], &e["entry"]),
        (&"no_entry".into(), &Value::Null)
    );

    let w = cli(&agent, &["who-has", "203.0.113.66"]);
    let keys: Vec<&str> = w["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["203.0.113.66", "203.0.113.0/24"], "{w}");
    let w = cli(&agent, &["who-has", "2001:db8:100::10"]);
    assert_eq!(w["hostnames"], serde_json::json!(["api.allowed.test"]));

    // --cgroup: refused for a cgroup the agent does not enforce.
    let out = Command::new(binary())
        .args(["explain", "192.0.2.1:443", "--cgroup", "/", "--bpffs"])
        .arg(&agent.bpffs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not enforced by the agent"));
    let out = Command::new(binary())
        .args(["explain", "192.0.2.1:443", "--cgroup"])
        .arg(world.cgroup.pod())
        .arg("--bpffs")
        .arg(&agent.bpffs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn learn_turns_an_audited_session_into_a_policy_that_allows_exactly_it() {
    let mut zone = Zone::new();
    zone.set(
        "api.allowed.test",
        &["198.51.100.10", "2001:db8:100::10"],
        300,
    );
    // Audit mode: nothing is refused; the policy knows api.allowed.test on 443 already.
    let audit = "apiVersion: egress/v1\nkind: EgressPolicy\nmode: audit\nrules:\n  - name: api\n    hosts: [api.allowed.test]\n    ports: [443]\n";
    let (world, mut agent) = World::enforcing(zone, audit, &[]);
    let session = [
        ("tcp", "198.51.100.10:443"),
        ("tcp", "198.51.100.10:8080"),
        ("tcp", "[2001:db8:100::10]:443"),
        ("udp-sendto", "198.51.100.12:123"),
        ("tcp", "203.0.113.5:22"),
        ("tcp", "[2001:db8:100::40]:5432"),
    ];
    let r = probe::run(&world.pod, &session);
    assert!(r.iter().all(|o| o.ok), "audit mode: {r:?}");
    agent.wait_events(WAIT, "the session's would-denies", |e| e.len() >= 4);
    let out = Command::new(binary())
        .args(["learn", "--state-dir"])
        .arg(&agent.state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let learned = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        learned.contains("hosts: [api.allowed.test]\n    ports: [8080]"),
        "{learned}"
    );
    assert!(learned.contains("mode: enforce"), "{learned}");
    let again = Command::new(binary())
        .args(["learn", "--state-dir"])
        .arg(&agent.state_dir)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        learned,
        "deterministic"
    );

    let digest = world.write_policy(&learned);
    agent.wait_applied(&digest, WAIT);
    let r = probe::run(&world.pod, &session);
    assert!(
        r.iter().all(|o| o.ok),
        "the learned policy allows the session: {r:?}"
    );
    let others = probe::run(
        &world.pod,
        &[
            ("tcp", "198.51.100.10:8081"),
            ("tcp", "203.0.113.5:23"),
            ("udp-sendto", "198.51.100.12:124"),
            ("tcp", "203.0.113.66:443"),
        ],
    );
    assert!(
        others.iter().all(|o| o.denied()),
        "and nothing else: {others:?}"
    );

    let out = Command::new(binary())
        .args(["learn", "--istio", "--state-dir"])
        .arg(&agent.state_dir)
        .output()
        .unwrap();
    let istio = String::from_utf8_lossy(&out.stdout);
    assert!(
        istio.contains("kind: ServiceEntry") && istio.contains("number: 123"),
        "{istio}"
    );
}
