//! A pod that keeps connecting while the agent is restarted, killed or fed bad policies: the
//! zone and policy both restart and chaos tests use, and a prober thread that counts every
//! wrong verdict (an allowed destination refused, an unlisted one not refused with EPERM).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use crate::{pod::Pod, probe, world::World, world::native, zonesrv::Zone};

/// Allowed by [`policy`].
pub const ALLOWED: [(&str, &str); 3] = [
    ("tcp", "198.51.100.10:443"),
    ("tcp", "[2001:db8:100::10]:443"),
    ("udp-sendto", "198.51.100.10:123"),
];

/// `api.allowed.test` with a short TTL, so that the agent refreshes (and rewrites entries)
/// while a test runs.
pub fn zone() -> Zone {
    let mut zone = Zone::new();
    zone.set(
        "api.allowed.test",
        &["198.51.100.10", "2001:db8:100::10"],
        2,
    );
    zone
}

/// TCP 443 and UDP 123 to `api.allowed.test`.
pub fn policy() -> String {
    native(
        "  - hosts: [api.allowed.test]\n    ports: [443]\n  - hosts: [api.allowed.test]\n    ports: [123]\n    protocol: UDP\n",
    )
}

/// Another process in the world's enforced pod cgroup.
pub fn pod(world: &World) -> Pod {
    Pod::new(
        &world.cgroup.pod(),
        &world.pod_ns,
        &world.dir().join("resolv.conf"),
    )
}

/// Probes [`ALLOWED`] and `unlisted` destinations from the pod until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Vec<String>, usize)>,
}

impl Prober {
    pub fn start(pod: Pod, unlisted: &'static [(&'static str, &'static str)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut wrong = Vec::new();
            let mut rounds = 0;
            let ops: Vec<(&str, &str)> = ALLOWED.iter().chain(unlisted).copied().collect();
            while !flag.load(Ordering::Relaxed) {
                let r = probe::run(&pod, &ops);
                for o in &r[..ALLOWED.len()] {
                    if !o.ok {
                        wrong.push(format!("allowed refused: {o:?}"));
                    }
                }
                for o in &r[ALLOWED.len()..] {
                    if !o.denied() {
                        wrong.push(format!("unlisted not refused: {o:?}"));
                    }
                }
                rounds += 1;
            }
            (wrong, rounds)
        });
        Self { stop, handle }
    }

    /// Stops probing; returns the wrong verdicts seen and the number of rounds.
    pub fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("prober thread")
    }
}
