//! The policy over time: hot reloads (rename, in-place write, ConfigMap symlink swap, SIGHUP),
//! broken files that must not change enforcement, names that appear later, and start-up
//! with a broken file.

use std::time::{Duration, Instant};

use egress_tests::{
    probe,
    world::{WAIT, World, native},
    zonesrv::Zone,
};

fn api_zone() -> Zone {
    let mut zone = Zone::new();
    zone.set("api.allowed.test", &["198.51.100.10"], 300);
    zone
}

const GOOD: &str = "apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n  - hosts: [api.allowed.test]\n    ports: [443]\n";

fn assert_good_policy_enforced(world: &World) {
    let r = probe::run(
        &world.pod,
        &[("tcp", "198.51.100.10:443"), ("tcp", "203.0.113.66:443")],
    );
    assert!(
        r[0].ok,
        "the last good policy must still allow api: {:?}",
        r[0]
    );
    assert!(
        r[1].denied(),
        "the last good policy must still deny evil: {:?}",
        r[1]
    );
}

/// BR-27: each broken variant, applied as a hot reload over a good policy, is refused with
/// file, line and field, and the good policy stays in force.
#[test]
fn broken_policies_are_refused_and_the_last_good_one_stays() {
    let (world, mut agent) = World::enforcing(api_zone(), GOOD, &[]);
    assert_good_policy_enforced(&world);
    let native_head = "apiVersion: egress/v1\nkind: EgressPolicy\n";
    let variants: Vec<(String, &str)> = vec![
        (
            "outboundTrafficPolicy:\n  mode: REGISTRY-ONLY\n".into(),
            ":2:9: outboundTrafficPolicy.mode: unknown variant `REGISTRY-ONLY`",
        ),
        (
            "outboundTrafficPolicy:\n  mode: registry_only\n".into(),
            ":2:9: outboundTrafficPolicy.mode: unknown variant `registry_only`",
        ),
        (
            format!("{native_head}hots: []\nrules: []\n"),
            ":3:1: hots: unknown field `hots`",
        ),
        (
            format!(
                "{native_head}rules:\n  - hosts: [api.allowed.test]\n    ports: [\"443/tcp\"]\n"
            ),
            ":5:13: rules[0].ports[0]: `443/tcp` is not a port",
        ),
        (
            format!("{native_head}rules:\n  - hosts: [api.allowed.test]\n    ports: [70000]\n"),
            ":5:13: rules[0].ports[0]: port 70000 is out of range",
        ),
        (
            format!("{native_head}rules:\n  - hosts: [api.allowed.test]\n    protocol: TPC\n"),
            ":5:15: rules[0].protocol: unknown variant `TPC`",
        ),
        (
            format!("{native_head}rules:\n\t- hosts: [api.allowed.test]\n"),
            ":4:2: (document): tabs disallowed",
        ),
        (
            format!("{native_head}rules: []\n---\n{native_head}rules: []\n"),
            ":4:1: kind: a second EgressPolicy document",
        ),
        (
            String::new(),
            ":1:1: (document): the file holds no YAML document",
        ),
        (
            format!("{native_head}mode: enforce\nmode: audit\nrules: []\n"),
            ":4:1: (document): duplicate mapping key: mode",
        ),
        (
            format!("{native_head}rules:\n  - hosts: [\"*.allowed.test\"]\n"),
            ":4:13: rules[0].hosts[0]: `*.allowed.test` is a wildcard",
        ),
        (
            format!(
                "{native_head}rules:\n  - hosts: [range.allowed.test]\n    ports: [\"8010-8000\"]\n"
            ),
            "rules[0].ports[0]: port range `8010-8000` is reversed",
        ),
        (
            format!("{native_head}rules:\n  - hosts: [api.allowed.test]\n    ports:\n"),
            "rules[0].ports: the key has no value",
        ),
        (
            format!("{native_head}rules:\n  - hosts: [\"198.51.100.10\"]\n"),
            "is an address, not a hostname",
        ),
        (
            // A hostname's own rules need 65 port ranges: refused before it resolves.
            format!(
                "{native_head}defaultAction: allow\nrules:\n  - action: deny\n    protocol: TCP\n    hosts: [evil.test]\n    ports: [{}]\n",
                (1..=64)
                    .map(|i| (i * 100).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ":5:5: evil.test (rule #1) needs 66 port ranges",
        ),
    ];
    for (text, expected) in &variants {
        let digest = world.write_policy(text);
        let status = agent.wait_rejected(&digest, WAIT);
        let error = status.last_reload.unwrap().error.unwrap();
        let file = world.policy_path().display().to_string();
        assert!(
            error.starts_with(&file),
            "the error names the file: {error}"
        );
        assert!(
            error.contains(expected),
            "for {text:?}\nexpected …{expected}…\n     got {error}"
        );
        assert!(agent.log().contains(&error), "the error is logged");
        assert_good_policy_enforced(&world);
    }
    let status = egress_agent::agent::status::read(&world.state_dir()).unwrap();
    assert_eq!(status.reloads_failed, variants.len() as u64);
    assert_eq!(
        status.policy.unwrap().digest,
        egress_agent::policy::digest(GOOD)
    );

    // The control: an empty allow-list is valid, and denies both.
    let digest = world.write_policy(&format!("{native_head}rules: []\n"));
    agent.wait_applied(&digest, WAIT);
    let r = probe::run(
        &world.pod,
        &[("tcp", "198.51.100.10:443"), ("tcp", "203.0.113.66:443")],
    );
    assert!(r[0].denied() && r[1].denied(), "{r:?}");
}

/// Reloads land without a restart however the file is replaced: in place, by rename, by a
/// Kubernetes ConfigMap-style `..data` symlink swap, and on SIGHUP.
#[test]
fn reloads_follow_in_place_writes_renames_symlink_swaps_and_sighup() {
    let mut zone = api_zone();
    zone.set("other.allowed.test", &["198.51.100.20"], 300);
    let world = World::new(zone).unwrap();
    // ConfigMap layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>
    let mount = world.dir().join("configmap");
    let version = |name: &str, text: &str| {
        let dir = mount.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policy.yaml"), text).unwrap();
    };
    version("..2026_01", GOOD);
    std::os::unix::fs::symlink("..2026_01", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", mount.join("policy.yaml")).unwrap();
    std::fs::remove_file(world.policy_path()).ok();
    std::os::unix::fs::symlink(mount.join("policy.yaml"), world.policy_path()).unwrap();
    let mut agent = world.start_agent(&[]);
    agent.wait_ready(WAIT);
    assert_good_policy_enforced(&world);

    // The kubelet's atomic swap: a new timestamped directory, a new symlink renamed over ..data.
    let other = native("  - hosts: [other.allowed.test]\n    ports: [443]\n");
    version("..2026_02", &other);
    std::os::unix::fs::symlink("..2026_02", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    let started = Instant::now();
    agent.wait_applied(&egress_agent::policy::digest(&other), WAIT);
    let took = started.elapsed();
    let r = probe::run(
        &world.pod,
        &[("tcp", "198.51.100.20:443"), ("tcp", "198.51.100.10:443")],
    );
    assert!(r[0].ok && r[1].denied(), "{r:?}");
    println!("symlink swap applied in {took:?}");

    // In place (truncate and write) into the real file.
    std::fs::write(mount.join("..2026_02/policy.yaml"), GOOD).unwrap();
    agent.wait_applied(&egress_agent::policy::digest(GOOD), WAIT);
    assert_good_policy_enforced(&world);

    // SIGHUP re-reads even an unchanged file, and refreshes every name at once.
    let before = world.dns.queries();
    agent.hangup();
    let deadline = Instant::now() + WAIT;
    while world.dns.queries() < before + 2 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not refresh the names"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = egress_agent::agent::status::read(&world.state_dir()).unwrap();
    assert_eq!(status.pid, agent.pid(), "no restart");
}

/// BR-07: a name without addresses allows nothing — no wildcard, no zero key — and its
/// addresses are allowed once it resolves, within its negative-cache interval.
#[test]
fn a_name_without_addresses_allows_nothing_until_it_resolves() {
    let mut zone = api_zone();
    zone.negative_ttl = 2;
    let policy = native(
        "  - hosts: [missing.allowed.test]\n    ports: [80]\n  - hosts: [api.allowed.test]\n    ports: [443]\n",
    );
    let (world, mut agent) = World::enforcing(zone, &policy, &["--min-ttl", "1s"]);
    let ops = [
        ("tcp", "203.0.113.66:80"),
        ("tcp", "198.51.100.70:80"),
        ("tcp", "198.51.100.10:80"),
    ];
    for o in probe::run(&world.pod, &ops) {
        assert!(o.denied(), "{o:?}");
    }
    let maps = agent.maps_json();
    let missing = maps["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "missing.allowed.test")
        .unwrap();
    assert_eq!(missing["status"], "NXDOMAIN");
    assert_eq!(missing["addresses"], 0);
    let destinations: Vec<&str> = maps["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["destination"].as_str().unwrap())
        .collect();
    assert!(
        !destinations
            .iter()
            .any(|d| d.starts_with("0.0.0.0") || d.starts_with("::/") || *d == "::"),
        "{destinations:?}"
    );
    assert!(!destinations.contains(&"198.51.100.70"));

    world.dns.update(|z| {
        z.set("missing.allowed.test", &["198.51.100.70"], 30);
    });
    let appeared = Instant::now();
    agent.wait_for(
        Duration::from_secs(10),
        "missing.allowed.test resolved",
        |_| probe::one(&world.pod, "tcp", "198.51.100.70:80").ok,
    );
    assert!(
        appeared.elapsed() < Duration::from_secs(5),
        "within the 2 s negative TTL (+ margin): {:?}",
        appeared.elapsed()
    );
    let r = probe::run(&world.pod, &ops);
    assert!(r[0].denied() && r[1].ok && r[2].denied(), "{r:?}");
    let warnings = agent.log().matches("name has no address").count();
    assert_eq!(
        warnings, 1,
        "the empty name is logged once, not on every retry"
    );
}

/// An invalid file at start-up: the agent exits non-zero naming the file, line and field, and
/// the cgroup is not left open: with nothing pinned, all egress is denied; with a previous
/// agent's pins, its policy stays in force.
#[test]
fn an_invalid_policy_at_start_up_fails_closed() {
    let world = World::new(api_zone()).unwrap();
    world.write_policy("outboundTrafficPolicy:\n  mode: REGISTRY-ONLY\n");
    let mut agent = world.start_agent(&[]);
    assert_ne!(agent.wait_exit(WAIT), 0);
    assert!(
        agent.log().contains(
            "policy.yaml:2:9: outboundTrafficPolicy.mode: unknown variant `REGISTRY-ONLY`"
        ),
        "{}",
        agent.log()
    );
    let r = probe::run(
        &world.pod,
        &[("tcp", "198.51.100.10:443"), ("tcp", "203.0.113.66:443")],
    );
    assert!(
        r[0].denied() && r[1].denied(),
        "deny-all while no valid policy exists: {r:?}"
    );
    assert!(
        probe::one(&world.pod, "tcp", "127.0.0.1:9").errno != probe::EPERM,
        "loopback stays open"
    );

    // A valid policy, then a restart with a broken file: the valid one stays.
    world.write_policy(GOOD);
    let mut agent = world.start_agent(&[]);
    agent.wait_ready(WAIT);
    agent.kill9();
    world.write_policy(&format!("{GOOD}    protocol: TPC\n"));
    let mut agent = world.start_agent(&[]);
    assert_ne!(agent.wait_exit(WAIT), 0);
    assert!(
        agent.log().contains("protocol: unknown variant `TPC`"),
        "{}",
        agent.log()
    );
    assert_good_policy_enforced(&world);

    // A file that parses but cannot be enforced (65 disjoint ports on one address, one more
    // than a port set holds) is refused at start-up too, before any map is touched.
    let ports: Vec<String> = (1..=65).map(|i| (i * 100).to_string()).collect();
    world.write_policy(&native(&format!(
        "  - name: too-many-ports\n    cidrs: [198.51.100.20]\n    ports: [{}]\n",
        ports.join(", ")
    )));
    let mut agent = world.start_agent(&[]);
    assert_ne!(agent.wait_exit(WAIT), 0);
    assert!(
        agent
            .log()
            .contains("198.51.100.20 (rule too-many-ports) needs 65 port ranges"),
        "{}",
        agent.log()
    );
    assert_good_policy_enforced(&world);
}

/// A FIFO or a device in place of the policy file is refused without blocking or exhausting
/// the agent (a FIFO used to stall the loop; /dev/zero was read without end); the next valid
/// file is applied as usual.
#[test]
fn special_files_in_place_of_the_policy_are_refused_and_the_agent_stays_responsive() {
    let (world, mut agent) = World::enforcing(api_zone(), GOOD, &[]);
    let policy = world.policy_path();
    let fifo = world.dir().join("policy.fifo");
    let path = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    std::fs::rename(&fifo, &policy).unwrap();
    agent.wait_for(WAIT, "FIFO refused", |s| {
        s.last_reload
            .as_ref()
            .and_then(|r| r.error.as_deref())
            .is_some_and(|e| e.contains("the policy must be a regular file; this is a FIFO"))
    });
    assert_good_policy_enforced(&world);

    let link = world.dir().join("policy.link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    std::fs::rename(&link, &policy).unwrap();
    agent.wait_for(WAIT, "device refused", |s| {
        s.last_reload
            .as_ref()
            .and_then(|r| r.error.as_deref())
            .is_some_and(|e| e.contains("this is a character device"))
    });
    assert_good_policy_enforced(&world);

    // Still responsive: a new valid policy lands.
    let digest = world.write_policy(&native(
        "  - hosts: [api.allowed.test]\n    ports: [443, 8443]\n",
    ));
    agent.wait_applied(&digest, WAIT);
    assert_good_policy_enforced(&world);
}
