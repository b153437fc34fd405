//! The agent's own surfaces under hostile clients and hostile directories: idle connections
//! to the metrics port and oversized requests on the local API do not exhaust the agent,
//! and directories another user owns are refused.

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use egress_tests::{
    world::{WAIT, World, native},
    zonesrv::Zone,
};

const POLICY: &str = "  - {cidrs: [198.51.100.10], ports: [443]}\n";

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// 300 idle connections to the metrics port from one address: the agent keeps its
/// per-peer share of them (8), goes on applying policies and writing its status, and
/// answers /healthz from another address at once (the kubelet's probes are not starved).
#[test]
fn idle_metrics_connections_cannot_exhaust_the_agent() {
    let (world, mut agent) =
        World::enforcing(Zone::new(), &native(POLICY), &["--metrics", "0.0.0.0:0"]);
    let status = agent.wait_for(WAIT, "metrics address", |s| s.metrics.is_some());
    let port = status
        .metrics
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    let before = open_fds(agent.pid());
    // The hoarder connects over loopback (peer 127.0.0.1), the probe over w0 (10.200.0.1).
    let idle = world
        .world
        .run(move || {
            (0..300)
                .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
                .collect::<Vec<_>>()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(agent.pid());
    assert!(
        during <= before + 8 + 4,
        "the agent holds {during} descriptors (was {before}) with {} idle clients",
        idle.len()
    );
    let started = Instant::now();
    let (code, _) = world.http_get(&format!("http://10.200.0.1:{port}/healthz"));
    assert_eq!(code, 200, "/healthz while one peer hoards connections");
    let digest = world.write_policy(&native("  - {cidrs: [198.51.100.11], ports: [443]}\n"));
    agent.wait_applied(&digest, WAIT);
    eprintln!(
        "descriptors {before} → {during} with 300 idle clients; /healthz answered in {:?}",
        started.elapsed()
    );
    drop(idle);
}

/// A request line without end on the local API is cut at its limit and answered with an
/// error; the agent's memory does not grow with what the client sends.
#[test]
fn oversized_api_requests_are_refused() {
    let (world, agent) = World::enforcing(Zone::new(), &native(POLICY), &[]);
    let socket = world.state_dir().join("agent.sock");
    let rss = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let before = rss(agent.pid());
    // The API is served right after the agent is ready: wait for its socket.
    let start = Instant::now();
    let mut stream = loop {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(e) => {
                assert!(start.elapsed() < WAIT, "no API socket: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let junk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..64 {
        match stream.write(&junk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let mut answer = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.read_to_string(&mut answer);
    let after = rss(agent.pid());
    assert!(answer.contains("request too long"), "answer: {answer:?}");
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} kB to {after} kB after {sent} bytes of request"
    );
}

/// The agent exits non-zero, saying a directory belongs to uid 65534.
fn assert_refused_as_foreign(world: &World) {
    let mut agent = world.start_agent(&[]);
    assert_ne!(agent.wait_exit(WAIT), 0);
    assert!(
        agent.log().contains("owned by uid 65534"),
        "{}",
        agent.log()
    );
}

/// Directories another user could control are refused, for the pins and for the state.
#[test]
fn directories_of_another_user_are_refused() {
    let world = World::new(Zone::new()).expect("world");
    world.write_policy(&native(POLICY));
    // A pin directory pre-created by an unprivileged user (bpffs's root is 1777).
    std::fs::create_dir_all(&world.bpffs).unwrap();
    std::os::unix::fs::chown(&world.bpffs, Some(65534), Some(65534)).unwrap();
    assert_refused_as_foreign(&world);
    std::fs::remove_dir(&world.bpffs).unwrap();

    // A state directory of another user.
    let state = world.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    assert_refused_as_foreign(&world);
    std::fs::remove_dir(&state).unwrap();

    // A state directory of its own, below a directory another user owns (who could move it
    // aside and put theirs in its place).
    let parent = state.parent().unwrap().to_owned();
    std::os::unix::fs::chown(&parent, Some(65534), Some(65534)).unwrap();
    assert_refused_as_foreign(&world);
    std::os::unix::fs::chown(&parent, Some(0), Some(0)).unwrap();
    let _ = std::fs::remove_dir(&state);

    // Its own directories are made private.
    let mut agent = world.start_agent(&[]);
    agent.wait_ready(WAIT);
    for dir in [&world.bpffs, &state] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
}
