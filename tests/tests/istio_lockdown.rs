//! The acceptance scenario: Istio-style egress lockdown (REGISTRY_ONLY), then the reference
//! ServiceEntry written verbatim to the watched policy file, with real curl, real TLS, a real
//! DNS server and the real agent.

use std::time::{Duration, Instant};

use egress_tests::{probe, world::World, zonesrv::Zone};

use egress_tests::examples::{REGISTRY_ONLY, SERVICE_ENTRY};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn registry_only_refuses_in_the_kernel_until_the_service_entry_allows_the_host() {
    let mut zone = Zone::new();
    zone.set(
        "www.googleapis.com",
        &["198.51.100.10", "2001:db8:100::10"],
        300,
    )
    .set(
        "storage.googleapis.com",
        &["198.51.100.11", "2001:db8:100::11"],
        300,
    );
    let world = World::new(zone).unwrap();
    world.write_policy(REGISTRY_ONLY);
    let mut agent = world.start_agent(&[]);
    agent.wait_ready(WAIT);
    let google = "198.51.100.10".parse().unwrap();
    let google6 = "2001:db8:100::10".parse().unwrap();

    // Nothing allowed: curl fails at once (exit 7), the connect got EPERM, nothing left the pod.
    let started = Instant::now();
    let (code, out) = world.curl(&["https://www.googleapis.com/storage/v1/b"]);
    let elapsed = started.elapsed();
    assert_eq!(code, 7, "curl must fail to connect: {out}");
    assert!(
        elapsed < Duration::from_secs(1),
        "refused at once, not by a timeout ({elapsed:?})"
    );
    let denied = probe::one(&world.pod, "tcp", "198.51.100.10:443");
    assert!(
        denied.denied(),
        "connect() must fail with EPERM: {denied:?}"
    );
    // curl's DNS query went out on the same wire: once it is seen, the capture has caught up.
    let dns = egress_tests::world::DNS.parse().unwrap();
    assert!(!world.sniffer.wait_to(dns, WAIT).is_empty());
    assert!(
        world.sniffer.to(google).is_empty(),
        "no packet may reach the host: {:?}",
        world.sniffer.to(google)
    );
    assert!(world.sniffer.to(google6).is_empty());
    assert!(world.hits.to_ip(google).is_empty() && world.hits.to_ip(google6).is_empty());

    // The ServiceEntry, verbatim, into the watched file: no restart.
    let pid = agent.pid();
    let digest = world.write_policy(SERVICE_ENTRY);
    agent.wait_applied(&digest, WAIT);
    assert_eq!(agent.pid(), pid);
    let (code, out) = world.curl(&["https://www.googleapis.com/storage/v1/b"]);
    assert_eq!(code, 0, "the allowed host must be reachable: {out}");
    assert!(
        out.contains("hello from 198.51.100.10") || out.contains("hello from 2001:db8:100::10"),
        "the TLS server must have answered: {out}"
    );
    assert!(!world.hits.to_ip(google).is_empty() || !world.hits.to_ip(google6).is_empty());

    // Another name on the same host: refused.
    let (code, out) = world.curl(&["https://storage.googleapis.com/"]);
    assert_eq!(code, 7, "{out}");
    assert!(
        world
            .sniffer
            .to("198.51.100.11".parse().unwrap())
            .is_empty()
    );
    // Port 80 on the allowed address: refused.
    let (code, out) = world.curl(&["http://www.googleapis.com:80/"]);
    assert_eq!(code, 7, "{out}");
    assert!(probe::one(&world.pod, "tcp", "198.51.100.10:80").denied());
    assert!(probe::one(&world.pod, "tcp", "[2001:db8:100::10]:80").denied());
    assert!(probe::one(&world.pod, "tcp", "[2001:db8:100::10]:443").ok);

    // `egress-agent maps` lists the address, 443/TCP, and the hostname as its source.
    let maps = agent.maps_json();
    let entry = maps["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["destination"] == "198.51.100.10")
        .unwrap_or_else(|| panic!("198.51.100.10 missing from {maps:#}"));
    assert_eq!(entry["ports"], "443/TCP");
    assert_eq!(entry["sources"], serde_json::json!(["www.googleapis.com"]));
    assert!(entry["expires_at"].as_u64().unwrap() > egress_agent::agent::now());
    let table = agent.maps_text();
    let line = table
        .lines()
        .find(|l| l.starts_with("198.51.100.10 "))
        .unwrap_or_else(|| panic!("no line for the address in:\n{table}"));
    assert!(
        line.contains("443/TCP") && line.contains("www.googleapis.com"),
        "{line}"
    );
}
