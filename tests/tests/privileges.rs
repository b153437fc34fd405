//! Least privilege, checked from outside the agent: after start-up every thread of the agent
//! holds CAP_BPF and CAP_NET_ADMIN and nothing else (no_new_privs set, nothing inheritable,
//! ambient or in the bounding set), and the agent keeps working with that — reloads, pods in
//! new cgroups, events. What it leaves on disk (state directory, socket, status, pins) is the
//! agent's alone: an unprivileged user can read none of it and change none of it.

use std::{os::unix::fs::PermissionsExt as _, os::unix::process::CommandExt as _, path::Path};

use egress_agent::agent::privileges::{CAP_BPF, CAP_NET_ADMIN, parse_status};
use egress_tests::{
    agent, probe,
    world::{WAIT, World, native},
    zonesrv::Zone,
};

const NOBODY: u32 = 65534;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `program args` as an unprivileged user; returns (success, stderr).
fn as_nobody(program: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run as nobody");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_running_agent_keeps_only_bpf_and_net_admin_and_its_files_are_its_own() {
    let mut zone = Zone::new();
    zone.set("api.allowed.test", &["198.51.100.10"], 300);
    let (world, mut agent) = World::enforcing(
        zone,
        &native("  - hosts: [api.allowed.test]\n    ports: [443]\n"),
        &[],
    );
    let status = agent.wait_for(WAIT, "capabilities dropped", |s| !s.capabilities.is_empty());
    let keep = (1u64 << CAP_BPF) | (1u64 << CAP_NET_ADMIN);
    assert_eq!(status.capabilities, format!("{keep:016x}"), "{status:?}");

    // Every thread, as the kernel sees it.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap();
    let mut threads = 0;
    for task in tasks.flatten() {
        let caps =
            parse_status(&std::fs::read_to_string(task.path().join("status")).unwrap()).unwrap();
        assert_eq!(
            caps.effective,
            keep,
            "thread {:?}: {caps:?}",
            task.file_name()
        );
        assert_eq!(caps.permitted, keep, "{caps:?}");
        assert_eq!(caps.bounding, keep, "{caps:?}");
        assert_eq!(caps.inheritable, 0, "{caps:?}");
        assert_eq!(caps.ambient, 0, "{caps:?}");
        assert!(caps.no_new_privs, "{caps:?}");
        threads += 1;
    }
    assert!(threads > 1, "a multi-threaded agent: {threads} threads");

    // Still does its work: a reload, a pod in a new cgroup, events.
    let digest = world.write_policy(&native(
        "  - hosts: [api.allowed.test]\n    ports: [443, 8443]\n",
    ));
    agent.wait_applied(&digest, WAIT);
    let late = world.cgroup.child("late-pod").unwrap();
    let r = probe::run_in(
        &world.pod,
        &late,
        &[("tcp", "198.51.100.10:443"), ("tcp", "203.0.113.66:443")],
    );
    assert!(r[0].ok && r[1].denied(), "{r:?}");
    agent.wait_events(WAIT, "the denial's event", |e| {
        e.iter().any(|e| e["destination"] == "203.0.113.66")
    });

    // Its files are its own.
    let state = world.state_dir();
    assert_eq!(mode(&state), 0o700);
    for name in ["agent.sock", "status.json"] {
        assert_eq!(
            mode(&state.join(name)) & 0o077,
            0,
            "{name} is open to others"
        );
    }
    assert_eq!(
        mode(&world.bpffs) & 0o077,
        0,
        "the pin directory is open to others"
    );
    let bin = agent::binary();
    let state_arg = state.display().to_string();
    let bpffs_arg = world.bpffs.display().to_string();
    for args in [
        vec!["status", "--state-dir", &state_arg],
        vec!["events", "--state-dir", &state_arg],
        vec!["maps", "--bpffs", &bpffs_arg],
        vec!["detach", "--bpffs", &bpffs_arg],
    ] {
        let (ok, err) = as_nobody(&bin, &args);
        assert!(!ok, "an unprivileged user ran `{}`: {err}", args.join(" "));
    }
    // Nor can it read the status, plant files the agent reads (its pod cache) or replace its
    // socket.
    let probe_bin = probe::binary();
    for (op, name) in [
        ("read-file", "status.json"),
        ("write-file", "pods.json"),
        ("remove-file", "agent.sock"),
    ] {
        let path = format!("{state_arg}/{name}");
        let out = std::process::Command::new(&probe_bin)
            .args([op, &path])
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && line.contains("\"ok\":false") && line.contains("\"errno\":13"),
            "{op} {name} as nobody: {line}"
        );
    }
    assert!(state.join("agent.sock").exists());
    // And enforcement is exactly as before.
    let r = probe::run(&world.pod, &[("tcp", "203.0.113.66:443")]);
    assert!(r[0].denied(), "{r:?}");
}

/// The DaemonSet's container gets exactly CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and
/// CAP_SYS_RESOURCE — no CAP_SETPCAP, so the bounding set cannot be reduced: the agent still drops CAP_SYS_ADMIN
/// from every thread's effective and permitted sets, with no_new_privs (which makes the
/// bounding set moot), and enforces.
#[test]
fn with_the_daemonsets_capabilities_the_agent_still_drops_to_bpf_and_net_admin() {
    let mut zone = Zone::new();
    zone.set("api.allowed.test", &["198.51.100.10"], 300);
    let world = World::new(zone).unwrap();
    world.write_policy(&native("  - hosts: [api.allowed.test]\n    ports: [443]\n"));
    // BPF, NET_ADMIN, SYS_ADMIN (21), SYS_RESOURCE (24), as deploy/daemonset.yaml adds them.
    // (This machine's root itself lacks SYS_RESOURCE: what is granted is also bounded by it.)
    let ours = parse_status(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap();
    let granted =
        ((1u64 << CAP_BPF) | (1u64 << CAP_NET_ADMIN) | (1u64 << 21) | (1u64 << 24)) & ours.bounding;
    let mut agent = world.start_agent_with_capabilities(&[], Some(granted));
    agent.wait_ready(WAIT);
    let status = agent.wait_for(WAIT, "capabilities dropped", |s| !s.capabilities.is_empty());
    let keep = (1u64 << CAP_BPF) | (1u64 << CAP_NET_ADMIN);
    assert_eq!(status.capabilities, format!("{keep:016x}"), "{status:?}");
    for task in std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .unwrap()
        .flatten()
    {
        let caps =
            parse_status(&std::fs::read_to_string(task.path().join("status")).unwrap()).unwrap();
        assert_eq!((caps.effective, caps.permitted), (keep, keep), "{caps:?}");
        assert_eq!(
            caps.bounding, granted,
            "the bounding set stays as granted: {caps:?}"
        );
        assert!(caps.no_new_privs, "{caps:?}");
    }
    let r = probe::run(
        &world.pod,
        &[("tcp", "198.51.100.10:443"), ("tcp", "203.0.113.66:443")],
    );
    assert!(r[0].ok && r[1].denied(), "{r:?}");
}
