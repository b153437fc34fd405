//! The bypass suite: every known way around a connect-time allow-list, each attempted from
//! the enforced pod with real sockets, and each must fail with EPERM **and** leave an event
//! naming the hook and the reason — a refusal nobody can see is half a fix. Allowed traffic
//! through the same paths is checked alongside, so that a hook refusing everything would fail
//! here too.
//!
//! Each attempt uses its own port (or socket kind) so that each is its own flow, with its own
//! event.

use egress_tests::{
    agent::Agent,
    probe,
    world::{WAIT, World, native},
    zonesrv::Zone,
};
use serde_json::Value;

const A4: &str = "198.51.100.10";
const A6: &str = "2001:db8:100::10";
const EVIL4: &str = "203.0.113.66";
const EVIL6: &str = "2001:db8:100::66";

fn enforcing() -> (World, Agent) {
    let mut zone = Zone::new();
    zone.set("api.allowed.test", &[A4, A6], 300);
    let (world, agent) = World::enforcing(
        zone,
        &native("  - hosts: [api.allowed.test]\n    ports: [443, 9999]\n    protocol: ANY\n"),
        &[],
    );
    world
        .pod_ns
        .sysctl("net.ipv4.ping_group_range", "0 2147483647")
        .unwrap();
    (world, agent)
}

/// One bypass attempt and the flow it must leave: (op, argument, destination as judged,
/// port, protocol, hook, reason).
type Case = (
    &'static str,
    String,
    &'static str,
    u64,
    &'static str,
    &'static str,
    &'static str,
);

fn flow<'a>(events: &'a [Value], case: &Case) -> Option<&'a Value> {
    let (_, _, dst, port, proto, hook, _) = case;
    events.iter().find(|e| {
        e["destination"] == *dst
            && e["port"] == *port
            && e["protocol"] == *proto
            && e["hook"] == *hook
    })
}

#[test]
fn every_bypass_is_refused_with_eperm_and_an_event() {
    let (world, agent) = enforcing();
    let mapped = |port: u16| format!("[::ffff:{EVIL4}]:{port}");
    let cases: Vec<Case> = vec![
        // IPv4-mapped IPv6 through AF_INET6 sockets, judged as the IPv4 address.
        (
            "tcp",
            mapped(1001),
            EVIL4,
            1001,
            "TCP",
            "connect6",
            "no_entry",
        ),
        (
            "udp-connect",
            mapped(1002),
            EVIL4,
            1002,
            "UDP",
            "connect6",
            "no_entry",
        ),
        (
            "udp-sendto",
            mapped(1003),
            EVIL4,
            1003,
            "UDP",
            "sendmsg4",
            "no_entry",
        ),
        // UDP without connect().
        (
            "udp-sendto",
            format!("{EVIL4}:1004"),
            EVIL4,
            1004,
            "UDP",
            "sendmsg4",
            "no_entry",
        ),
        (
            "udp-sendmsg",
            format!("{EVIL4}:1005"),
            EVIL4,
            1005,
            "UDP",
            "sendmsg4",
            "no_entry",
        ),
        // An explicit address on a socket connected to an allowed peer.
        (
            "udp-connected-sendto",
            format!("{A4}:9999,{EVIL4}:1006"),
            EVIL4,
            1006,
            "UDP",
            "sendmsg4",
            "no_entry",
        ),
        // TCP Fast Open: data in the SYN, without connect().
        (
            "tfo-sendto",
            format!("{EVIL4}:1007"),
            EVIL4,
            1007,
            "TCP",
            "connect4",
            "no_entry",
        ),
        (
            "tfo-connect",
            format!("{EVIL4}:1008"),
            EVIL4,
            1008,
            "TCP",
            "connect4",
            "no_entry",
        ),
        // io_uring: the ring's connect and sendmsg run the same socket code as the syscalls.
        (
            "uring-connect",
            format!("{EVIL4}:1009"),
            EVIL4,
            1009,
            "TCP",
            "connect4",
            "no_entry",
        ),
        (
            "uring-sendmsg",
            format!("{EVIL4}:1010"),
            EVIL4,
            1010,
            "UDP",
            "sendmsg4",
            "no_entry",
        ),
        (
            "uring-connect",
            format!("[{EVIL6}]:1011"),
            EVIL6,
            1011,
            "TCP",
            "connect6",
            "no_entry",
        ),
        // IPv6 literals.
        (
            "tcp",
            format!("[{EVIL6}]:1012"),
            EVIL6,
            1012,
            "TCP",
            "connect6",
            "no_entry",
        ),
        (
            "udp-sendto",
            format!("[{EVIL6}]:1013"),
            EVIL6,
            1013,
            "UDP",
            "sendmsg6",
            "no_entry",
        ),
        // An allowed address on a port no rule allows.
        (
            "tcp",
            format!("{A4}:1014"),
            A4,
            1014,
            "TCP",
            "connect4",
            "wrong_port",
        ),
        (
            "tcp",
            format!("[{A6}]:1015"),
            A6,
            1015,
            "TCP",
            "connect6",
            "wrong_port",
        ),
        // DNS to a resolver the policy does not allow, over UDP and TCP.
        (
            "udp-sendto",
            format!("{EVIL4}:53"),
            EVIL4,
            53,
            "UDP",
            "sendmsg4",
            "no_entry",
        ),
        (
            "tcp",
            format!("{EVIL4}:53"),
            EVIL4,
            53,
            "TCP",
            "connect4",
            "no_entry",
        ),
        // DNS over TLS to an unlisted resolver.
        (
            "tcp",
            format!("{EVIL4}:853"),
            EVIL4,
            853,
            "TCP",
            "connect4",
            "no_entry",
        ),
        // Sockets no address hook sees: refused at creation. A raw socket's flow names its
        // type (SOCK_RAW = 3) as the port, its protocol (UDP) as the protocol.
        (
            "raw-socket",
            format!("{EVIL4}:0"),
            "0.0.0.0",
            3,
            "UDP",
            "socket",
            "raw_socket",
        ),
        (
            "raw-socket",
            format!("[{EVIL6}]:0"),
            "::",
            3,
            "UDP",
            "socket",
            "raw_socket",
        ),
        // ICMP "ping" sockets (SOCK_DGRAM = 2), open to every user here.
        (
            "icmp-ping",
            format!("{EVIL4}:0"),
            "0.0.0.0",
            2,
            "ICMP",
            "socket",
            "icmp_socket",
        ),
        (
            "icmp-ping",
            format!("[{EVIL6}]:0"),
            "::",
            2,
            "ICMPv6",
            "socket",
            "icmp_socket",
        ),
    ];
    let ops: Vec<(&str, &str)> = cases.iter().map(|c| (c.0, c.1.as_str())).collect();
    let outcomes = probe::run(&world.pod, &ops);
    for (case, outcome) in cases.iter().zip(&outcomes) {
        assert!(
            outcome.denied(),
            "{} {} must fail with EPERM: {outcome:?}",
            case.0,
            case.1
        );
    }
    let events = agent.wait_events(WAIT, "an event per bypass attempt", |e| {
        cases.iter().all(|c| flow(e, c).is_some())
    });
    for case in &cases {
        let e = flow(&events, case).unwrap();
        assert_eq!(e["reason"], case.6, "{} {}: {e}", case.0, case.1);
        assert_eq!(e["verdict"], "deny", "{e}");
        assert_eq!(e["comm"], "egress-probe", "{e}");
    }
    // Nothing of any attempt reached the other side.
    assert!(
        world.hits.to_ip(EVIL4.parse().unwrap()).is_empty()
            && world.hits.to_ip(EVIL6.parse().unwrap()).is_empty()
    );
    assert!(world.sniffer.to(EVIL4.parse().unwrap()).is_empty());
    assert!(world.sniffer.to(EVIL6.parse().unwrap()).is_empty());

    // The same paths to allowed destinations still work: the hooks judge, they do not block.
    let allowed = probe::run(
        &world.pod,
        &[
            ("tcp", &format!("[::ffff:{A4}]:443")),
            ("udp-sendto", &format!("[::ffff:{A4}]:9999")),
            ("udp-connected-sendto", &format!("{A4}:9999,{A4}:9999")),
            ("tfo-sendto", &format!("{A4}:443")),
            ("uring-connect", &format!("{A4}:443")),
            ("uring-sendmsg", &format!("[{A6}]:9999")),
            ("tcp", &format!("[{A6}]:443")),
        ],
    );
    for o in &allowed {
        assert!(o.ok, "allowed destination refused: {o:?}");
    }
}

/// Packet sockets (AF_PACKET) and AF_XDP reach the device below IP: `inet_create()` never
/// sees them, so they are refused by an LSM program where the BPF LSM is active; elsewhere
/// the agent says, in its log and status, that they are not enforced (a silent pass would be
/// the failure).
#[test]
fn packet_sockets_are_refused_or_the_gap_is_reported() {
    let (world, mut agent) = enforcing();
    let status = agent.wait_ready(WAIT);
    let outcome = probe::one(&world.pod, "packet-socket", "0.0.0.0:0");
    let xdp = probe::one(&world.pod, "xdp-socket", "0.0.0.0:0");
    if status.gaps.is_empty() {
        assert!(outcome.denied(), "{outcome:?}");
        assert!(xdp.denied(), "AF_XDP: {xdp:?}");
        let events = agent.wait_events(WAIT, "the packet socket's event", |e| {
            e.iter().any(|e| e["reason"] == "packet_socket")
        });
        let e = events
            .iter()
            .find(|e| e["reason"] == "packet_socket")
            .unwrap();
        assert_eq!(e["hook"], "socket", "{e}");
        assert_eq!(e["family"], "packet", "{e}");
        // ETH_P_ALL as the flow's port.
        assert_eq!(e["port"], 3, "{e}");
    } else {
        assert!(
            status
                .gaps
                .iter()
                .any(|g| g.contains("AF_PACKET") && g.contains("AF_XDP")),
            "{:?}",
            status.gaps
        );
        assert!(agent.log().contains("AF_PACKET"), "{}", agent.log());
        let text = agent.status_text();
        assert!(text.contains("not enforced on this node"), "{text}");
    }
}

/// A socket rule lets exactly its kinds through; the wire check still judges where such a
/// socket sends: only to addresses some rule allows.
#[test]
fn socket_rules_allow_their_kinds_only() {
    let mut zone = Zone::new();
    zone.set("api.allowed.test", &[A4, A6], 300);
    let (world, _agent) = World::enforcing(
        zone,
        &native(
            "  - hosts: [api.allowed.test]\n    ports: [9999]\n    protocol: UDP\n  - sockets: [icmp]\n",
        ),
        &[],
    );
    world
        .pod_ns
        .sysctl("net.ipv4.ping_group_range", "0 2147483647")
        .unwrap();
    let r = probe::run(
        &world.pod,
        &[
            ("raw-socket", &format!("{EVIL4}:0")),
            ("icmp-ping", &format!("{EVIL4}:0")),
            ("icmp-ping", &format!("{A4}:0")),
        ],
    );
    assert!(r[0].denied(), "raw sockets are not allowed: {:?}", r[0]);
    // The ping socket is made; its echo request to an unlisted host is dropped on the wire,
    // the one to an allowed address (UDP 9999 there) leaves.
    assert!(r[1].denied(), "{:?}", r[1]);
    assert!(r[2].ok, "{:?}", r[2]);
    let icmp: Vec<_> = world
        .sniffer
        .packets()
        .into_iter()
        .filter(|p| p.proto == 1 && p.dst == EVIL4.parse::<std::net::IpAddr>().unwrap())
        .collect();
    assert!(icmp.is_empty(), "{icmp:?}");
}

/// BR-11: a socket is judged by the cgroup it was made in. Made in the pod and carried out
/// of it (the process moves to the root cgroup), it is still refused; children of the pod's
/// cgroup, one made after the agent attached included, are enforced alike; and a program
/// attached below the enforced cgroup to allow everything cannot lift a denial: the agent's
/// links are multi-attach, the kernel runs every program on the way down and a denial wins.
#[test]
fn sockets_keep_their_cgroup_children_are_covered_and_a_rogue_program_cannot_override() {
    let (world, _agent) = enforcing();
    let root_procs = egress_agent::bpf::fs::cgroup2_root()
        .unwrap()
        .join("cgroup.procs");
    let r = probe::run(
        &world.pod,
        &[(
            "tcp-moved",
            &format!("{EVIL4}:443,{}", root_procs.display()),
        )],
    );
    assert!(r[0].denied(), "a socket carried out of the pod: {:?}", r[0]);

    for child in ["app", "sidecar", "debug"] {
        let dir = world.cgroup.child(child).unwrap();
        let r = probe::run_in(
            &world.pod,
            &dir,
            &[
                ("tcp", &format!("{EVIL4}:443")),
                ("tcp", &format!("{A4}:443")),
            ],
        );
        assert!(r[0].denied() && r[1].ok, "{child}: {r:?}");
    }

    let app = world.cgroup.child("app").unwrap();
    use egress_tests::allow_all::{self, BPF_CGROUP_INET4_CONNECT};
    let rogue = allow_all::load(BPF_CGROUP_INET4_CONNECT).expect("load the rogue program");
    for flags in [
        allow_all::BPF_F_ALLOW_MULTI,
        allow_all::BPF_F_ALLOW_OVERRIDE,
        0,
    ] {
        // Whether or not the kernel takes it, the denial must stand.
        let attached = allow_all::attach(&rogue, &app, BPF_CGROUP_INET4_CONNECT, flags);
        let r = probe::run_in(&world.pod, &app, &[("tcp", &format!("{EVIL4}:443"))]);
        assert!(
            r[0].denied(),
            "a rogue program (flags {flags}, attach {attached:?}) lifted a denial: {:?}",
            r[0]
        );
    }
}
