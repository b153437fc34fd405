//! Restarts, crashes and upgrades never open a window: pinned programs and maps keep
//! enforcing while no agent runs, and a new agent takes over in place.

use std::time::Duration;

use egress_tests::{
    pod::Pod,
    probe,
    prober::{ALLOWED, Prober, pod, policy, zone},
    world::{WAIT, World},
};

const UNLISTED: [(&str, &str); 3] = [
    ("tcp", "203.0.113.66:443"),
    ("tcp", "[2001:db8:100::66]:443"),
    ("udp-sendto", "203.0.113.66:9999"),
];

#[test]
fn kill_9_and_restart_under_continuous_connections_never_gives_a_wrong_verdict() {
    let (world, mut agent) = World::enforcing(zone(), &policy(), &["--min-ttl", "1s"]);
    let prober = Prober::start(pod(&world), &UNLISTED);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(150));
        agent.kill9();
        // Down: the pinned programs and maps keep enforcing.
        std::thread::sleep(Duration::from_millis(150));
        agent = world.start_agent(&["--min-ttl", "1s"]);
        agent.wait_ready(WAIT);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (wrong, rounds) = prober.finish();
    assert!(rounds >= 20, "the prober ran {rounds} rounds");
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts in {rounds} rounds: {wrong:#?}",
        wrong.len()
    );
    assert!(
        agent.log().contains("how=Replaced"),
        "the restart swapped programs in place"
    );
    println!("10 kill -9 restarts, {rounds} probe rounds, 0 wrong verdicts");
}

#[test]
fn sigterm_leaves_enforcement_in_place_new_cgroups_included_and_detach_removes_it() {
    let (world, mut agent) = World::enforcing(zone(), &policy(), &[]);
    assert_eq!(agent.terminate(), 0);
    let status = egress_agent::agent::status::read(&world.state_dir()).unwrap();
    assert!(!status.running);
    // A pod created while no agent runs is enforced through the parent attachment.
    let pod2 = world.cgroup.child("pod2").unwrap();
    let late = Pod::new(&pod2, &world.pod_ns, &world.dir().join("resolv.conf"));
    for p in [&world.pod, &late] {
        let r = probe::run(p, &[ALLOWED[0], UNLISTED[0], UNLISTED[1]]);
        assert!(r[0].ok && r[1].denied() && r[2].denied(), "{r:?}");
    }
    let out = std::process::Command::new(egress_tests::agent::binary())
        .args(["detach", "--bpffs"])
        .arg(&world.bpffs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("enforcement removed"));
    let r = probe::one(&world.pod, UNLISTED[0].0, UNLISTED[0].1);
    assert!(r.ok, "after detach nothing is enforced: {r:?}");
    assert!(!world.bpffs.exists());
}

/// A new capacity means new maps: they are filled before the links switch to them, and the
/// old ones go afterwards.
#[test]
fn a_restart_with_another_capacity_migrates_the_maps_without_a_window() {
    let (world, mut agent) = World::enforcing(zone(), &policy(), &["--max-entries", "1024"]);
    let prober = Prober::start(pod(&world), &UNLISTED);
    std::thread::sleep(Duration::from_millis(200));
    agent.kill9();
    let mut agent = world.start_agent(&["--max-entries", "4096"]);
    agent.wait_ready(WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let (wrong, rounds) = prober.finish();
    assert!(wrong.is_empty(), "{wrong:#?} in {rounds} rounds");
    let generations: Vec<String> = std::fs::read_dir(&world.bpffs)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("maps-"))
        .collect();
    assert_eq!(generations.len(), 1, "{generations:?}");
    assert!(generations[0].ends_with("-4096"), "{generations:?}");
    let maps = agent.maps_json();
    assert!(
        maps["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["destination"] == "198.51.100.10")
    );
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused() {
    let (world, _agent) = World::enforcing(zone(), &policy(), &[]);
    let mut second = world.start_agent(&[]);
    assert_ne!(second.wait_exit(WAIT), 0);
    assert!(
        second.log().contains("another egress-agent holds"),
        "{}",
        second.log()
    );
    let r = probe::run(&world.pod, &[ALLOWED[0], UNLISTED[0]]);
    assert!(r[0].ok && r[1].denied(), "{r:?}");
}

/// The enforced cgroup deleted and created again is a new cgroup, without programs; the agent
/// notices (it checks twice a second) and attaches to it.
#[test]
fn a_recreated_cgroup_is_enforced_again() {
    let (world, mut agent) = World::enforcing(zone(), &policy(), &[]);
    let before = egress_agent::agent::status::read(&world.state_dir())
        .unwrap()
        .cgroup_id;
    let (enforced, child) = (world.cgroup.enforced.clone(), world.cgroup.pod());
    std::fs::remove_dir(&child).unwrap();
    std::fs::remove_dir(&enforced).unwrap();
    agent.wait_for(WAIT, "the cgroup reported missing", |s| {
        s.problems.iter().any(|p| p.contains("is gone"))
    });
    std::fs::create_dir_all(&child).unwrap();
    let status = agent.wait_for(WAIT, "attached to the new cgroup", |s| {
        s.cgroup_id != before && s.problems.is_empty()
    });
    assert_ne!(status.cgroup_id, before);
    let r = probe::run(&pod(&world), &[ALLOWED[0], UNLISTED[0], UNLISTED[1]]);
    assert!(r[0].ok, "{:?}", r[0]);
    assert!(r[1].denied() && r[2].denied(), "{r:?}");
    assert!(
        agent.log().contains("the enforced cgroup was created anew"),
        "{}",
        agent.log()
    );
}
