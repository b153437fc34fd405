//! The wire check (`cgroup_skb/egress`): packets that would leave for another destination
//! than the one their syscall named — through an IPv6 routing header, an IPv4 source route, a
//! loopback address pushed out of a real device, an ICMP "ping" socket — are dropped, and
//! nothing of them reaches the wire; ordinary traffic, inbound connections included, is
//! untouched.
//!
//! The policy here allows raw and ICMP sockets (which are otherwise refused at creation, see
//! bypass.rs): the wire check is the second line, for sockets the first one let through.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    process::Stdio,
    time::{Duration, Instant},
};

use egress_tests::{
    agent::Agent,
    probe::{self, Outcome},
    world::{World, native},
    zonesrv::Zone,
};

const WIRE: Duration = Duration::from_secs(5);
const A4: &str = "198.51.100.10";
const A6: &str = "2001:db8:100::10";
const EVIL4: &str = "203.0.113.66";
const EVIL6: &str = "2001:db8:100::66";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn enforcing() -> (World, Agent) {
    let mut zone = Zone::new();
    zone.set("api.allowed.test", &[A4, A6], 300);
    World::enforcing(
        zone,
        &native(
            "  - hosts: [api.allowed.test]\n    ports: [80, 9999]\n    protocol: ANY\n  - sockets: [raw, icmp]\n",
        ),
        &[],
    )
}

fn counter(agent: &Agent, name: &str) -> u64 {
    agent.maps_json()["counters"][name].as_u64().unwrap()
}

fn assert_refused(o: &Outcome) {
    assert!(!o.ok, "must not get through: {o:?}");
}

/// An IPv6 routing header names the allowed host last and an unlisted one first: the packet
/// would go to the unlisted one. Set with setsockopt or per message, on UDP or TCP.
#[test]
fn routing_headers_cannot_send_packets_to_unlisted_hosts() {
    let (world, agent) = enforcing();
    let before = counter(&agent, "wire_drop");
    let via_evil = format!("[{A6}]:9999,[{EVIL6}]:9999");
    let r = probe::run(
        &world.pod,
        &[
            ("udp-rthdr", &via_evil),
            ("udp-rthdr-cmsg", &via_evil),
            ("tcp-rthdr", &format!("[{A6}]:80,[{EVIL6}]:80")),
            // The other way round (unlisted last) is refused by the syscall hook already.
            ("udp-rthdr", &format!("[{EVIL6}]:9999,[{A6}]:9999")),
            ("udp-sendto", &format!("[{A6}]:9999")),
        ],
    );
    assert!(r[0].denied(), "{:?}", r[0]);
    // EPERM where the kernel takes the header per message, EINVAL where it is built
    // without Mobile IPv6 (this test machine's kernel).
    assert!(r[1].denied() || r[1].errno == libc::EINVAL, "{:?}", r[1]);
    assert_refused(&r[2]);
    assert!(r[3].denied(), "{:?}", r[3]);
    assert!(r[4].ok, "{:?}", r[4]);
    assert!(!world.sniffer.wait_to(ip(A6), WIRE).is_empty());
    assert!(
        world.sniffer.to(ip(EVIL6)).is_empty(),
        "{:?}",
        world.sniffer.to(ip(EVIL6))
    );
    assert!(world.hits.to_ip(ip(EVIL6)).is_empty());
    assert!(
        counter(&agent, "wire_drop") >= before + 2,
        "the wire check dropped them"
    );
}

/// IPv4 loose source routing (IP_OPTIONS) through an unlisted host.
#[test]
fn ipv4_source_routes_cannot_send_packets_to_unlisted_hosts() {
    let (world, agent) = enforcing();
    let before = counter(&agent, "wire_drop");
    let r = probe::run(
        &world.pod,
        &[
            ("udp-lsrr", &format!("{A4}:9999,{EVIL4}:9999")),
            ("udp-sendto", &format!("{A4}:9999")),
        ],
    );
    assert!(r[0].denied(), "{:?}", r[0]);
    assert!(r[1].ok, "{:?}", r[1]);
    assert!(!world.sniffer.wait_to(ip(A4), WIRE).is_empty());
    assert!(world.sniffer.to(ip(EVIL4)).is_empty());
    assert!(counter(&agent, "wire_drop") > before);
}

/// Loopback is always allowed, but only on the loopback device: bound to the pod's real
/// device (with route_localnet, as kube-proxy sets it) a packet for 127.0.0.1 would leave
/// the pod (the CVE-2020-8558 class).
#[test]
fn loopback_destinations_stay_on_the_loopback_device() {
    let (world, agent) = enforcing();
    for key in [
        "net.ipv4.conf.all.route_localnet",
        "net.ipv4.conf.p0.route_localnet",
    ] {
        world.pod_ns.sysctl(key, "1").unwrap();
    }
    let before = counter(&agent, "wire_loopback");
    let r = probe::run(
        &world.pod,
        &[
            ("udp-bind-dev", "127.0.0.1:9999,p0"),
            ("udp-bind-dev", "[::1]:9999,p0"),
            ("udp-sendto", "127.0.0.1:9999"),
            ("udp-sendto", "[::1]:9999"),
            ("udp-sendto", &format!("{A4}:9999")),
        ],
    );
    assert_refused(&r[0]);
    assert_refused(&r[1]);
    assert!(r[2].ok && r[3].ok, "loopback itself stays open: {r:?}");
    assert!(!world.sniffer.wait_to(ip(A4), WIRE).is_empty());
    for lo in ["127.0.0.1", "::1"] {
        assert!(world.sniffer.to(ip(lo)).is_empty(), "{lo} left the pod");
    }
    assert!(
        counter(&agent, "wire_loopback") > before,
        "the wire check refused it (not only routing)"
    );
}

/// ICMP "ping" sockets need no privilege and send without connect(). Allowed here by a
/// socket rule, they reach the addresses some rule allows (an echo has no port to judge)
/// and nothing else: the wire check drops the rest.
#[test]
fn allowed_icmp_ping_sockets_reach_only_allowed_addresses() {
    let (world, _agent) = enforcing();
    world
        .pod_ns
        .sysctl("net.ipv4.ping_group_range", "0 2147483647")
        .unwrap();
    let r = probe::run(
        &world.pod,
        &[
            ("icmp-ping", &format!("{EVIL4}:0")),
            ("icmp-ping", &format!("[{EVIL6}]:0")),
            ("icmp-ping", &format!("{A4}:0")),
            ("udp-sendto", &format!("{A4}:9999")),
        ],
    );
    // IPv4 reports the drop to the caller; the IPv6 ping path does not (the datagram is
    // dropped all the same, as the capture shows).
    assert!(r[0].denied(), "{:?}", r[0]);
    assert!(r[2].ok, "a ping to an allowed address: {:?}", r[2]);
    assert!(!world.sniffer.wait_to(ip(A4), WIRE).is_empty());
    let to_evil: Vec<_> = world
        .sniffer
        .packets()
        .into_iter()
        .filter(|p| p.proto == 1 || p.proto == 58)
        .filter(|p| [EVIL4, EVIL6].iter().any(|a| p.dst == ip(a)))
        .collect();
    assert!(to_evil.is_empty(), "{to_evil:?}");
    assert!(
        world
            .sniffer
            .packets()
            .iter()
            .any(|p| p.proto == 1 && p.dst == ip(A4)),
        "the echo request to the allowed address left"
    );
}

/// A server in the enforced pod still answers clients that no rule lists: replies go to the
/// peer the socket accepted.
#[test]
fn servers_in_the_pod_still_answer_inbound_connections() {
    let (world, _agent) = enforcing();
    let server = world
        .pod
        .command(probe::binary())
        .args(["tcp-serve", "0.0.0.0:7000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let echoed = world
        .world
        .run(|| -> std::io::Result<[u8; 1]> {
            let pod: SocketAddr = "10.200.0.2:7000".parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut conn = loop {
                match TcpStream::connect_timeout(&pod, Duration::from_secs(1)) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            conn.write_all(b"y")?;
            let mut back = [0u8; 1];
            conn.read_exact(&mut back)?;
            Ok(back)
        })
        .unwrap();
    let out = server.wait_with_output().unwrap();
    assert_eq!(echoed.unwrap(), *b"y");
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("\"ok\":true"), "{line}");
}

/// Protocols no syscall hook judges (UDP-Lite) and raw sockets, which can connect() to any
/// address without a hook, get nothing out: only TCP and UDP sockets' own traffic skips the
/// wire check's judgement. A source route whose first hop is the connected, allowed peer is
/// refused too (IP options are judged as a protocol no rule allows).
#[test]
fn other_protocols_raw_sockets_and_source_routes_via_the_peer_are_refused() {
    let (world, agent) = enforcing();
    let before = counter(&agent, "wire_drop");
    let r = probe::run(
        &world.pod,
        &[
            ("udplite-connect", &format!("{EVIL4}:9999")),
            ("udplite-connect", &format!("[{EVIL6}]:9999")),
            ("raw-udp-connect", &format!("{EVIL4}:9999")),
            ("raw-udp-connect", &format!("[{EVIL6}]:9999")),
            ("udp-connected-lsrr", &format!("{A4}:9999,{EVIL4}:9999")),
            // An allowed raw socket's hand-built UDP is judged by its port: 7 is not allowed.
            ("raw-udp-connect", &format!("{A4}:7")),
            ("udp-sendto", &format!("{A4}:9999")),
        ],
    );
    for o in &r[..6] {
        assert_refused(o);
    }
    assert!(r[6].ok, "{:?}", r[6]);
    assert!(!world.sniffer.wait_to(ip(A4), WIRE).is_empty());
    for evil in [EVIL4, EVIL6] {
        assert!(
            world.sniffer.to(ip(evil)).is_empty(),
            "{:?}",
            world.sniffer.to(ip(evil))
        );
    }
    assert!(world.hits.to_ip(ip(EVIL4)).is_empty() && world.hits.to_ip(ip(EVIL6)).is_empty());
    // Each EPERM came from the wire check (a kernel without UDP-Lite refuses the socket).
    let eperm = r[..6].iter().filter(|o| o.denied()).count() as u64;
    assert!(eperm >= 3, "{r:?}");
    assert!(
        counter(&agent, "wire_drop") >= before + eperm,
        "the wire check dropped them: {r:?}"
    );
    // Only the allowed datagram reached A (the source-routed and the raw one did not).
    let to_a: Vec<_> = world.sniffer.to(ip(A4));
    assert_eq!(to_a.len(), 1, "{to_a:?}");
}

/// IPv6 destination options (and hop-by-hop options) before the transport header are walked
/// past: an allowed datagram carrying them still goes out.
#[test]
fn ipv6_option_headers_do_not_hide_the_transport() {
    let (world, _agent) = enforcing();
    let r = probe::run(&world.pod, &[("udp-dstopts", &format!("[{A6}]:9999"))]);
    assert!(r[0].ok, "{:?}", r[0]);
    assert!(!world.sniffer.wait_to(ip(A6), WIRE).is_empty());
}

/// The NAT64 forms of loopback (`64:ff9b::127.0.0.1`, `64:ff9b::`) leave through the default
/// route for a translator: they are not loopback, and nothing allows them.
#[test]
fn nat64_forms_of_loopback_are_not_loopback() {
    let (world, _agent) = enforcing();
    let r = probe::run(
        &world.pod,
        &[
            ("udp-sendto", "[64:ff9b::7f00:1]:9999"),
            ("tcp", "[64:ff9b::7f00:1]:22"),
            ("udp-sendto", "[64:ff9b::]:53"),
            ("udp-sendto", &format!("{A4}:9999")),
        ],
    );
    for o in &r[..3] {
        assert!(o.denied(), "{o:?}");
    }
    assert!(!world.sniffer.wait_to(ip(A4), WIRE).is_empty());
    for a in ["64:ff9b::7f00:1", "64:ff9b::"] {
        assert!(world.sniffer.to(ip(a)).is_empty());
    }
}
