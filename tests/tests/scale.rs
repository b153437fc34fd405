//! BR-26: a big allow-list loads completely within a bound, or is refused before any map is
//! touched with the entries needed and available; never a partial load.

use std::time::{Duration, Instant};

use egress_tests::{probe, world::World, zonesrv::Zone};

const HOSTS: usize = 5000;

/// h0000.bulk.test … h4999.bulk.test: 4 A records from 100.64.0.0/14 and one AAAA each.
fn bulk_zone() -> Zone {
    let mut zone = Zone::new();
    for i in 0..HOSTS {
        let a: Vec<String> = (0..4)
            .map(|j| {
                let n = i * 4 + j;
                format!("100.{}.{}.{}", 64 + n / 65536, (n / 256) % 256, n % 256)
            })
            .collect();
        let v6 = format!("2001:db8:100::{:x}", 0x1000 + i);
        let mut addrs: Vec<&str> = a.iter().map(String::as_str).collect();
        addrs.push(&v6);
        zone.set(&format!("h{i:04}.bulk.test"), &addrs, 300);
    }
    zone
}

fn bulk_policy() -> String {
    let mut text = String::from("apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n  - hosts:\n");
    for i in 0..HOSTS {
        text.push_str(&format!("    - h{i:04}.bulk.test\n"));
    }
    text.push_str("    ports: [443]\n  - cidrs: [100.96.0.0/12]\n    ports: [443]\n");
    text
}

/// Kernel memory charged to the agent's maps (the `memlock` of each map fd it holds).
fn map_memory(pid: u32) -> u64 {
    let mut total = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy() == "anon_inode:bpf-map" {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            total += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

#[test]
fn five_thousand_names_load_completely_or_are_refused_up_front() {
    let world = World::new(bulk_zone()).unwrap();
    let policy = bulk_policy();
    world.write_policy(&policy);

    // Too small: refused before anything is written, with what is needed and available.
    let mut small = world.start_agent(&["--max-entries", "10000", "--resolve-wait", "60s"]);
    assert_ne!(small.wait_exit(Duration::from_secs(90)), 0);
    let log = small.log();
    assert!(
        log.contains("the policy needs 20001 entries in EGRESS_ALLOW_V4 but the maps hold at most 10000 entries each (--max-entries); nothing was changed"),
        "{log}"
    );
    // 20,000 addresses of the names and the DNS resolver's. Nothing was pinned before, so the cgroup denies everything rather than stay open.
    assert!(probe::one(&world.pod, "tcp", "100.64.0.1:443").denied());

    let started = Instant::now();
    let mut agent = world.start_agent(&["--resolve-wait", "60s"]);
    let status = agent.wait_ready(Duration::from_secs(90));
    let load_time = started.elapsed();
    assert_eq!(
        (status.entries.v4, status.entries.v6, status.entries.cidr_v4),
        (HOSTS * 4 + 1, HOSTS, 1),
        "{status:?}"
    );
    assert!(
        load_time < Duration::from_secs(60),
        "loaded in {load_time:?}"
    );
    let last_a = format!(
        "100.{}.{}.{}:443",
        64 + (HOSTS * 4 - 4) / 65536,
        ((HOSTS * 4 - 4) / 256) % 256,
        (HOSTS * 4 - 4) % 256
    );
    let r = probe::run(
        &world.pod,
        &[
            ("tcp", &last_a),
            ("tcp", "100.100.1.1:443"),
            ("tcp", "100.127.255.254:443"),
        ],
    );
    assert!(r[0].ok, "the last host is allowed: {:?}", r[0]);
    assert!(r[1].ok, "the CIDR entry allows: {:?}", r[1]);
    assert!(r[2].denied(), "an unlisted address is refused: {:?}", r[2]);

    // Applying the same policy again changes nothing.
    agent.hangup();
    std::thread::sleep(Duration::from_secs(3));
    let again = egress_agent::agent::status::read(&world.state_dir()).unwrap();
    assert_eq!(again.entries, status.entries);
    println!(
        "BR-26: {} v4 + {} v6 + {} prefix entries for {HOSTS} names loaded in {load_time:?}; maps hold {} KiB of kernel memory",
        status.entries.v4,
        status.entries.v6,
        status.entries.cidr_v4,
        map_memory(agent.pid()) / 1024
    );
}
