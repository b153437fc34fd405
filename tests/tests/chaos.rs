//! Chaos: the agent killed a hundred times in a row — at any point, start-up included —
//! while the pod keeps connecting; its DNS upstream gone for longer than the staleness bound;
//! its policy file deleted, replaced by garbage, or made huge; a policy that does not fit the
//! maps. Each time the last good enforcement stays, and the agent says what happened.

use std::time::{Duration, Instant};

use egress_tests::{
    agent::Agent,
    probe,
    prober::{ALLOWED, Prober, pod, policy, zone},
    world::{WAIT, World, native},
};

const UNLISTED: [(&str, &str); 5] = [
    ("tcp", "203.0.113.66:443"),
    ("tcp", "[2001:db8:100::66]:443"),
    ("udp-sendto", "203.0.113.66:9999"),
    ("tcp", "[::ffff:203.0.113.66]:443"),
    ("raw-socket", "203.0.113.66:0"),
];

/// A cheap deterministic spread of kill moments (no clock or RNG dependency).
fn delay_ms(i: u64) -> u64 {
    (i * 7919 + 13) % 250
}

/// How many kills: 100, or `EGRESS_CHAOS_KILLS` (the VM matrix runs fewer: an emulated
/// agent start takes seconds).
fn kills() -> u64 {
    std::env::var("EGRESS_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[test]
fn a_hundred_sigkills_in_a_row_never_give_a_wrong_verdict() {
    let args = ["--min-ttl", "1s"];
    let kills = kills();
    let (world, mut agent) = World::enforcing(zone(), &policy(), &args);
    let prober = Prober::start(pod(&world), &UNLISTED);
    let started = Instant::now();
    let mut before_ready = 0;
    for i in 0..kills {
        // Two kills in three come at a random moment of a running agent; every third while
        // the new agent is still starting (loading, reconciling, attaching).
        if i % 3 == 2 {
            agent = world.start_agent(&args);
            std::thread::sleep(Duration::from_millis(delay_ms(i) / 4));
            if !agent.is_ready() {
                before_ready += 1;
            }
            agent.kill9();
        } else {
            std::thread::sleep(Duration::from_millis(delay_ms(i)));
            agent.kill9();
        }
        agent = world.start_agent(&args);
        agent.wait_ready(WAIT);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (wrong, rounds) = prober.finish();
    println!(
        "{kills} SIGKILLs ({before_ready} before the new agent was ready) in {:.1?}: {rounds} probe rounds of {} attempts, {} wrong verdicts",
        started.elapsed(),
        ALLOWED.len() + UNLISTED.len(),
        wrong.len()
    );
    assert!(
        rounds as u64 >= kills,
        "the prober ran {rounds} rounds only"
    );
    assert!(before_ready > 0, "no kill landed during start-up");
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts in {rounds} rounds: {wrong:#?}",
        wrong.len()
    );
}

fn host_status(agent: &Agent) -> String {
    agent.maps_json()["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api.allowed.test")
        .map(|s| s["status"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The upstream stops answering: the last known addresses stay allowed for `--stale-for`
/// after the last answer, then go (fail closed: an address nobody can vouch for any more is
/// not kept forever). The agent keeps running and says the name is failing; when the
/// upstream is back, the name is allowed again.
#[test]
fn an_upstream_gone_past_the_staleness_bound_fails_closed_and_recovers() {
    let args = [
        "--min-ttl",
        "1s",
        "--grace",
        "1s",
        "--stale-for",
        "4s",
        "--dns-timeout",
        "300ms",
    ];
    let (world, mut agent) = World::enforcing(zone(), &policy(), &args);
    let allowed = ("tcp", "198.51.100.10:443");
    assert!(probe::one(&world.pod, allowed.0, allowed.1).ok);
    let gone = Instant::now();
    world.dns.update(|z| z.silent = true);
    // Within the bound: still allowed, and reported as failing.
    let deadline = Instant::now() + WAIT;
    while !host_status(&agent).eq_ignore_ascii_case("failing") {
        assert!(Instant::now() < deadline, "never reported failing");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The bound runs from the last answer (`resolved_at`, whole seconds, so never later than
    // the real one), which came before the silence: checked only with a second to spare.
    let resolved_at = agent.maps_json()["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api.allowed.test")
        .and_then(|s| s["resolved_at"].as_u64())
        .unwrap();
    if egress_agent::agent::now() + 1 < resolved_at + 4 {
        assert!(
            probe::one(&world.pod, allowed.0, allowed.1).ok,
            "refused within the staleness bound"
        );
    }
    // Past the bound (4 s after the last answer, which came before `gone`): refused.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = probe::one(&world.pod, allowed.0, allowed.1);
        if o.denied() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still allowed {:?} after the upstream went",
            gone.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused_after = gone.elapsed();
    assert!(
        refused_after >= Duration::from_secs(2),
        "dropped before the bound: {refused_after:?}"
    );
    // Alive and answering the whole time.
    let status = agent.wait_ready(WAIT);
    assert!(status.running);
    assert!(
        agent.maps_text().to_lowercase().contains("failing"),
        "{}",
        agent.maps_text()
    );
    // Back: allowed again without a restart.
    world.dns.update(|z| z.silent = false);
    let deadline = Instant::now() + WAIT;
    while !probe::one(&world.pod, allowed.0, allowed.1).ok {
        assert!(
            Instant::now() < deadline,
            "not allowed again after the upstream came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "upstream gone: refused {refused_after:?} after (stale-for 4 s), allowed again once back"
    );
}

/// Waits for one more refused reload than `before`; returns its error and the status.
fn next_refusal(agent: &mut Agent, before: u64) -> (String, egress_agent::agent::status::Status) {
    let s = agent.wait_for(WAIT, "the reload refused", |s| s.reloads_failed > before);
    let error = s.last_reload.as_ref().unwrap().error.clone().unwrap();
    (error, s)
}

/// Deleted, garbage, huge, too big for the maps: each refused with a reason in the status,
/// the last good policy enforced throughout, and the next good file applied.
#[test]
fn a_deleted_garbage_huge_or_unfittable_policy_keeps_the_last_good_one() {
    let (world, mut agent) = World::enforcing(zone(), &policy(), &["--max-entries", "64"]);
    let good = egress_agent::policy::digest(&policy());
    let check = |world: &World| {
        let r = probe::run(
            &world.pod,
            &[("tcp", "198.51.100.10:443"), ("tcp", "203.0.113.66:443")],
        );
        assert!(r[0].ok, "the last good policy no longer allows: {:?}", r[0]);
        assert!(r[1].denied(), "{:?}", r[1]);
    };
    check(&world);
    let mut failed = 0;

    // Deleted.
    std::fs::remove_file(world.policy_path()).unwrap();
    let (err, s) = next_refusal(&mut agent, failed);
    failed = s.reloads_failed;
    assert!(err.contains("No such file"), "{err}");
    assert_eq!(s.policy.unwrap().digest, good);
    check(&world);

    // Garbage bytes (not UTF-8, not YAML).
    let garbage: Vec<u8> = (0..4096u64)
        .map(|i| (i * 2_654_435_761 % 251) as u8)
        .collect();
    std::fs::write(world.policy_path(), &garbage).unwrap();
    let (err, s) = next_refusal(&mut agent, failed);
    failed = s.reloads_failed;
    assert!(err.contains("policy.yaml"), "names the file: {err}");
    assert_eq!(s.policy.unwrap().digest, good);
    check(&world);

    // Huge: refused by its size.
    let huge = format!(
        "{}# {}\n",
        policy(),
        "x".repeat(egress_agent::policy::MAX_POLICY_BYTES)
    );
    world.write_policy(&huge);
    let (err, s) = next_refusal(&mut agent, failed);
    failed = s.reloads_failed;
    assert!(err.contains("bytes"), "{err}");
    assert_eq!(s.policy.unwrap().digest, good);
    check(&world);

    // More addresses than the maps hold (capacity 64): refused before anything is written.
    let cidrs: Vec<String> = (0..100).map(|i| format!("192.0.2.{i}")).collect();
    world.write_policy(&native(&format!("  - cidrs: [{}]\n", cidrs.join(", "))));
    let (err, s) = next_refusal(&mut agent, failed);
    assert!(err.contains("64"), "names the capacity: {err}");
    assert_eq!(s.policy.unwrap().digest, good);
    check(&world);
    assert!(probe::one(&world.pod, "tcp", "192.0.2.7:443").denied());

    // And a good file applies again.
    let digest = world.write_policy(&policy());
    agent.wait_applied(&digest, WAIT);
    check(&world);
}
