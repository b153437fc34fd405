//! Real sockets from the enforced pod against the kernel programs: every way a TCP or UDP
//! destination can be given to the kernel, IPv4 and IPv6, allowed or not.

use egress_tests::{
    probe::{self, Outcome},
    world::{World, native},
    zonesrv::Zone,
};

/// How long a positive capture check waits for the packet (the capture reads asynchronously).
const WIRE: std::time::Duration = std::time::Duration::from_secs(5);

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn assert_denied(o: &Outcome) {
    assert!(o.denied(), "expected EPERM: {o:?}");
}

fn assert_ok(o: &Outcome) {
    assert!(o.ok, "expected success: {o:?}");
}

#[test]
fn tcp_v4_and_v6_connects_are_judged_by_address_and_port() {
    let mut zone = Zone::new();
    zone.set(
        "api.allowed.test",
        &["198.51.100.10", "2001:db8:100::10"],
        300,
    );
    let (world, _agent) = World::enforcing(
        zone,
        &native("  - hosts: [api.allowed.test]\n    ports: [443]\n"),
        &[],
    );
    let r = probe::run(
        &world.pod,
        &[
            ("tcp", "198.51.100.10:443"),
            ("tcp", "[2001:db8:100::10]:443"),
            ("tcp", "203.0.113.66:443"),
            ("tcp", "[2001:db8:100::66]:443"),
            ("tcp", "198.51.100.9:443"),
        ],
    );
    assert_ok(&r[0]);
    assert_ok(&r[1]);
    assert_denied(&r[2]);
    assert_denied(&r[3]);
    assert_denied(&r[4]);
    assert!(!world.sniffer.wait_to(ip("198.51.100.10"), WIRE).is_empty());
    assert!(
        !world
            .sniffer
            .wait_to(ip("2001:db8:100::10"), WIRE)
            .is_empty()
    );
    for evil in ["203.0.113.66", "2001:db8:100::66", "198.51.100.9"] {
        assert!(
            world.sniffer.to(ip(evil)).is_empty(),
            "a packet to {evil} left the pod"
        );
    }
}

/// BR-02: UDP without connect() goes through sendmsg4/6, also with an explicit address on a
/// connected socket.
#[test]
fn udp_sendto_and_sendmsg_without_connect_are_enforced() {
    let mut zone = Zone::new();
    zone.set(
        "ntp.allowed.test",
        &["198.51.100.12", "2001:db8:100::12"],
        300,
    );
    let policy = native("  - hosts: [ntp.allowed.test]\n    ports: [123]\n    protocol: UDP\n");
    let (world, _agent) = World::enforcing(zone, &policy, &[]);
    let r = probe::run(
        &world.pod,
        &[
            ("udp-sendto", "203.0.113.66:9999"),
            ("udp-sendmsg", "203.0.113.66:9999"),
            ("udp-sendto", "198.51.100.12:123"),
            ("udp-sendto", "198.51.100.12:9999"),
            ("udp-sendto", "[2001:db8:100::66]:9999"),
            (
                "udp-connected-sendto",
                "198.51.100.12:123,203.0.113.66:9999",
            ),
            ("udp-connect", "198.51.100.12:123"),
            ("udp-connect", "203.0.113.66:9999"),
            ("udp-sendmsg", "[2001:db8:100::12]:123"),
            ("tcp", "198.51.100.12:123"),
        ],
    );
    assert_denied(&r[0]);
    assert_denied(&r[1]);
    assert_ok(&r[2]);
    assert_denied(&r[3]);
    assert_denied(&r[4]);
    assert_denied(&r[5]);
    assert_ok(&r[6]);
    assert_denied(&r[7]);
    assert_ok(&r[8]);
    assert!(
        r[9].denied() || !r[9].ok,
        "UDP-only entry must not allow TCP: {:?}",
        r[9]
    );
    assert_denied(&r[9]);
    let ntp: Vec<_> = world.sniffer.wait_to(ip("198.51.100.12"), WIRE);
    assert!(!ntp.is_empty(), "the allowed datagram must be on the wire");
    assert!(
        ntp.iter().all(|p| p.proto == 17 && p.dst_port == Some(123)),
        "{ntp:?}"
    );
    assert!(world.sniffer.to(ip("203.0.113.66")).is_empty());
    assert!(world.sniffer.to(ip("2001:db8:100::66")).is_empty());
}

/// BR-01: IPv4 through AF_INET6 sockets is judged as IPv4, on every hook.
#[test]
fn ipv4_mapped_ipv6_destinations_are_judged_as_ipv4() {
    let mut zone = Zone::new();
    zone.set("api.allowed.test", &["198.51.100.10"], 300);
    let (world, _agent) = World::enforcing(
        zone,
        &native("  - hosts: [api.allowed.test]\n    ports: [80]\n"),
        &[],
    );
    let r = probe::run(
        &world.pod,
        &[
            ("tcp", "[::ffff:203.0.113.66]:80"),
            ("tcp", "[::ffff:198.51.100.10]:80"),
            ("udp-sendto", "[::ffff:203.0.113.66]:9999"),
            ("udp-connect", "[::ffff:203.0.113.66]:9999"),
            ("udp-sendmsg", "[::ffff:203.0.113.66]:9999"),
            ("tcp", "[::ffff:198.51.100.10]:22"),
            // The NAT64 well-known prefix (64:ff9b::/96) embeds an IPv4 host; judged as it:
            // 203.0.113.66 is refused, 198.51.100.10:80 is not (no NAT64 gateway here, so
            // the connection itself fails, without EPERM).
            ("tcp", "[64:ff9b::cb00:7142]:80"),
            ("tcp", "[64:ff9b::c633:640a]:80"),
        ],
    );
    assert_denied(&r[0]);
    assert_ok(&r[1]);
    assert_denied(&r[2]);
    assert_denied(&r[3]);
    assert_denied(&r[4]);
    assert_denied(&r[5]);
    assert_denied(&r[6]);
    assert!(!r[7].ok && r[7].errno != probe::EPERM, "{:?}", r[7]);
    assert!(!world.sniffer.wait_to(ip("198.51.100.10"), WIRE).is_empty());
    assert!(world.sniffer.to(ip("203.0.113.66")).is_empty());
}

/// A deny-list (default allow) covers the IPv4 hosts it names in every form an AF_INET6
/// socket can reach them by: plain, IPv4-mapped, and through NAT64's well-known prefix.
#[test]
fn deny_lists_cover_mapped_and_nat64_forms_of_ipv4() {
    let policy = "apiVersion: egress/v1\nkind: EgressPolicy\ndefaultAction: allow\nrules:\n  - action: deny\n    cidrs: [203.0.113.0/24]\n";
    let (world, _agent) = World::enforcing(Zone::new(), policy, &[]);
    let r = probe::run(
        &world.pod,
        &[
            ("tcp", "203.0.113.66:80"),
            ("tcp", "[::ffff:203.0.113.66]:80"),
            ("tcp", "[64:ff9b::cb00:7142]:80"),
            ("tcp", "198.51.100.10:80"),
        ],
    );
    assert_denied(&r[0]);
    assert_denied(&r[1]);
    assert_denied(&r[2]);
    assert_ok(&r[3]);
}

/// BR-03: TCP Fast Open opens connections without connect(); the pre-connect hook still runs.
#[test]
fn tcp_fast_open_is_enforced() {
    let mut zone = Zone::new();
    zone.set("api.allowed.test", &["198.51.100.10"], 300);
    let (world, _agent) = World::enforcing(
        zone,
        &native("  - hosts: [api.allowed.test]\n    ports: [80]\n"),
        &[],
    );
    let r = probe::run(
        &world.pod,
        &[
            ("tfo-sendto", "203.0.113.66:80"),
            ("tfo-sendto", "[2001:db8:100::66]:80"),
            ("tfo-sendto", "198.51.100.10:80"),
            ("tfo-connect", "203.0.113.66:80"),
            ("tfo-connect", "198.51.100.10:80"),
        ],
    );
    assert_denied(&r[0]);
    assert_denied(&r[1]);
    assert!(
        r[2].ok || r[2].errno != probe::EPERM,
        "allowed TFO send: {:?}",
        r[2]
    );
    assert_denied(&r[3]);
    assert_ok(&r[4]);
    assert!(!world.sniffer.wait_to(ip("198.51.100.10"), WIRE).is_empty());
    assert!(
        world.sniffer.to(ip("203.0.113.66")).is_empty(),
        "no SYN to evil"
    );
    assert!(world.sniffer.to(ip("2001:db8:100::66")).is_empty());
}

/// BR-04: IPv6 is enforced, and names with only AAAA records work.
#[test]
fn ipv6_is_enforced_and_aaaa_only_names_are_allowed() {
    let mut zone = Zone::new();
    zone.set(
        "dual.allowed.test",
        &["198.51.100.40", "2001:db8:100::40"],
        300,
    )
    .set("v6only.allowed.test", &["2001:db8:100::41"], 300);
    let policy = native(
        "  - hosts: [dual.allowed.test]\n    ports: [80]\n  - hosts: [v6only.allowed.test]\n    ports: [80]\n",
    );
    let (world, agent) = World::enforcing(zone, &policy, &[]);
    let (code, out) = world.curl(&["-6", "http://dual.allowed.test/"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2001:db8:100::40"), "{out}");
    let (code, out) = world.curl(&["http://v6only.allowed.test/"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = world.curl(&["-6", "http://evil.test/"]);
    assert_eq!(code, 7, "{out}");
    let (code, out) = world.curl(&["http://[2001:db8:100::66]/"]);
    assert_eq!(code, 7, "{out}");
    assert_denied(&probe::one(
        &world.pod,
        "udp-sendto",
        "[2001:db8:100::66]:9999",
    ));
    assert!(
        !world
            .sniffer
            .wait_to(ip("2001:db8:100::40"), WIRE)
            .is_empty()
    );
    assert!(world.sniffer.to(ip("2001:db8:100::66")).is_empty());

    let out = std::process::Command::new(egress_tests::agent::binary())
        .args(["maps", "--json", "--family", "6", "--bpffs"])
        .arg(&agent.bpffs)
        .output()
        .unwrap();
    let maps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v6: Vec<&str> = maps["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["destination"].as_str().unwrap())
        .collect();
    assert_eq!(v6, vec!["2001:db8:100::40", "2001:db8:100::41"]);
}

/// BR-06: an allowed address is allowed on its ports and protocol only; ALLOW_ANY lets all
/// through and counts each would-be denial.
#[test]
fn other_ports_and_protocols_on_an_allowed_address_are_refused() {
    let mut zone = Zone::new();
    zone.set(
        "api.allowed.test",
        &["198.51.100.10", "2001:db8:100::10"],
        300,
    );
    let entry = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\nspec:\n  hosts: [api.allowed.test]\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: DNS\n";
    let (world, mut agent) = World::enforcing(zone, entry, &[]);
    let ops = [
        ("tcp", "198.51.100.10:443"),
        ("tcp", "[2001:db8:100::10]:443"),
        ("tcp", "198.51.100.10:22"),
        ("tcp", "198.51.100.10:5432"),
        ("tcp", "198.51.100.10:8080"),
        ("tcp", "198.51.100.10:27017"),
        ("tcp", "[2001:db8:100::10]:22"),
        ("udp-sendto", "198.51.100.10:443"),
    ];
    let r = probe::run(&world.pod, &ops);
    assert_ok(&r[0]);
    assert_ok(&r[1]);
    for o in &r[2..] {
        assert_denied(o);
    }
    assert!(
        world.hits.all().iter().all(|h| h.local.port() == 443),
        "{:?}",
        world.hits.all()
    );

    let counters_before = agent.maps_json()["counters"]["audit_would_deny"]
        .as_u64()
        .unwrap();
    let digest = world.write_policy(&format!(
        "outboundTrafficPolicy:\n  mode: ALLOW_ANY\n---\n{entry}"
    ));
    agent.wait_applied(&digest, egress_tests::world::WAIT);
    let r = probe::run(&world.pod, &ops);
    for o in &r {
        assert_ok(o);
    }
    let counters_after = agent.maps_json()["counters"]["audit_would_deny"]
        .as_u64()
        .unwrap();
    assert_eq!(
        counters_after - counters_before,
        6,
        "each would-be denial is counted once"
    );
}

#[test]
fn cidr_entries_and_deny_rules() {
    let policy = native(
        "  - cidrs: [203.0.113.0/24]\n    ports: [80]\n\
         \x20 - cidrs: ['2001:db8:100::100/120']\n    ports: [22]\n\
         \x20 - action: deny\n    cidrs: [203.0.113.66]\n",
    );
    let (world, _agent) = World::enforcing(Zone::new(), &policy, &[]);
    let r = probe::run(
        &world.pod,
        &[
            ("tcp", "203.0.113.5:80"),
            ("tcp", "203.0.113.66:80"),
            ("tcp", "203.0.113.5:22"),
            ("tcp", "192.0.2.1:80"),
            ("tcp", "[2001:db8:100::1ff]:22"),
            ("tcp", "[2001:db8:100::200]:22"),
        ],
    );
    assert_ok(&r[0]);
    assert_denied(&r[1]);
    assert_denied(&r[2]);
    assert_denied(&r[3]);
    assert_ok(&r[4]);
    assert_denied(&r[5]);
}

/// BR-20: a port range opens every port in it, and only those, for its protocol only.
#[test]
fn port_ranges_cover_their_ends_and_nothing_else() {
    let mut zone = Zone::new();
    zone.set("range.allowed.test", &["198.51.100.50"], 300);
    let policy = native("  - hosts: [range.allowed.test]\n    ports: [\"8000-8010\"]\n");
    let (world, _agent) = World::enforcing(zone, &policy, &[]);
    let r = probe::run(
        &world.pod,
        &[
            ("tcp", "198.51.100.50:7999"),
            ("tcp", "198.51.100.50:8000"),
            ("tcp", "198.51.100.50:8005"),
            ("tcp", "198.51.100.50:8010"),
            ("tcp", "198.51.100.50:8011"),
            ("udp-sendto", "198.51.100.50:8005"),
        ],
    );
    assert_denied(&r[0]);
    assert_ok(&r[1]);
    assert_ok(&r[2]);
    assert_ok(&r[3]);
    assert_denied(&r[4]);
    assert_denied(&r[5]);
}

/// BR-17: loopback in every form stays reachable without any entry.
#[test]
fn loopback_stays_reachable_without_an_entry() {
    let (world, agent) = World::enforcing(
        Zone::new(),
        "apiVersion: egress/v1\nkind: EgressPolicy\nrules: []\n",
        &[],
    );
    egress_tests::servers::tcp(
        &world.rt,
        &world.pod_ns,
        5432,
        egress_tests::servers::Service::Echo,
        world.hits.clone(),
    )
    .unwrap();
    let r = probe::run(
        &world.pod,
        &[
            ("tcp", "127.0.0.1:5432"),
            ("tcp", "127.0.0.2:5432"),
            ("tcp", "[::1]:5432"),
            ("tcp", "[::ffff:127.0.0.1]:5432"),
            ("udp-sendto", "127.0.0.1:5432"),
            ("tcp", "0.0.0.0:5432"),
            ("tcp", "203.0.113.66:80"),
        ],
    );
    for o in &r[..6] {
        assert_ok(o);
    }
    assert_denied(&r[6]);
    let (code, out) = world.curl(&[
        "-s",
        "-o",
        "/dev/null",
        "telnet://localhost:5432",
        "--max-time",
        "1",
    ]);
    assert!(
        code == 0 || code == 28,
        "localhost by name is loopback too: {code} {out}"
    );
    let counters = &agent.maps_json()["counters"];
    assert_eq!(
        counters["deny_no_entry"], 1,
        "only the evil connect was denied: {counters}"
    );
}

/// BR-15: names match case-insensitively, with or without the trailing dot, and Unicode names
/// are their punycode; one host named twice has the union of its ports in one entry.
#[test]
fn hostnames_are_normalised_and_duplicates_merged() {
    let mut zone = Zone::new();
    zone.set("api.allowed.test", &["198.51.100.10"], 300).set(
        "xn--bcher-kva.allowed.test",
        &["198.51.100.11"],
        300,
    );
    zone.random_case = true;
    let policy = native(
        "  - hosts: [\"Api.Allowed.TEST.\"]\n    ports: [80]\n\
         \x20 - hosts: [api.allowed.test]\n    ports: [8080]\n\
         \x20 - hosts: [\"bücher.allowed.test\"]\n    ports: [80]\n",
    );
    let (world, agent) = World::enforcing(zone, &policy, &[]);
    let (code, out) = world.curl(&["http://API.allowed.test/"]);
    assert_eq!(code, 0, "{out}");
    assert_ok(&probe::one(&world.pod, "tcp", "198.51.100.10:8080"));
    let (code, out) = world.curl(&["http://xn--bcher-kva.allowed.test/"]);
    assert_eq!(code, 0, "{out}");
    let maps = agent.maps_json();
    let entries = maps["entries"].as_array().unwrap();
    let api = entries
        .iter()
        .find(|e| e["destination"] == "198.51.100.10")
        .unwrap();
    assert_eq!(api["tcp"], "80,8080");
    assert_eq!(api["sources"], serde_json::json!(["api.allowed.test"]));
    let idn = entries
        .iter()
        .find(|e| e["destination"] == "198.51.100.11")
        .unwrap();
    assert_eq!(
        idn["sources"],
        serde_json::json!(["xn--bcher-kva.allowed.test"])
    );
    assert!(
        agent.log().contains("api.allowed.test is named by 2 rules"),
        "the merge is logged"
    );
}
