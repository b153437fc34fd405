//! Agent memory with 10k hostnames: each name served by the bed's DNS server with 8 A and 2
//! AAAA records (100k addresses in all), the agent started on a policy naming all of them.
//! Memory is read from /proc once every name has resolved: VmRSS (resident now) and VmHWM
//! (the peak).

use std::time::{Duration, Instant};

use egress_tests::zonesrv::Zone;

use crate::{
    bed::{Bed, memory_kib},
    report::Report,
};

pub const NAMES: usize = 10_000;
const V4_PER_NAME: usize = 8;
const V6_PER_NAME: usize = 2;
/// The target, in bytes.
const RSS_TARGET: f64 = 40e6;

fn name(i: usize) -> String {
    format!("n{i:05}.bench.test")
}

fn zone() -> Zone {
    let mut zone = Zone::new();
    for i in 0..NAMES {
        let mut addrs: Vec<String> = (0..V4_PER_NAME)
            .map(|j| {
                let n = i * V4_PER_NAME + j;
                format!("10.{}.{}.{}", 100 + n / 65536, (n / 256) % 256, n % 256)
            })
            .collect();
        addrs.extend((0..V6_PER_NAME).map(|j| format!("2001:db8:2::{:x}:{j:x}", i)));
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        zone.set(&name(i), &refs, 300);
    }
    zone
}

fn policy() -> String {
    let mut text = String::from(
        "apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n  - name: names\n    ports: [443]\n    hosts:\n",
    );
    for i in 0..NAMES {
        text.push_str(&format!("      - {}\n", name(i)));
    }
    text
}

pub fn run(bed: &Bed, report: &mut Report) -> anyhow::Result<()> {
    let _dns = bed.dns(zone())?;
    let cgroup = bed.cgroup("memory")?;
    let started = Instant::now();
    let mut agent = bed.agent(
        "memory",
        &cgroup,
        &policy(),
        &["--max-entries", "131072", "--resolve-wait", "120s"],
    )?;
    let (v4, v6) = (NAMES * V4_PER_NAME, NAMES * V6_PER_NAME);
    let status = agent
        .agent
        .wait_for(Duration::from_secs(300), "every name resolved", |s| {
            s.ready && s.entries.v4 >= v4 && s.entries.v6 >= v6
        });
    let took = started.elapsed();
    // Let the resolver tasks finish and the allocator settle.
    std::thread::sleep(Duration::from_secs(2));
    let (rss, hwm) = memory_kib(agent.agent.pid())?;
    report.table(
        &format!(
            "Agent memory: {NAMES} hostnames, {} addresses ({v4} IPv4 + {v6} IPv6) from DNS",
            v4 + v6
        ),
        &["what", "value"],
    );
    report.row(
        vec!["VmRSS".into(), format!("{:.1} MiB", rss as f64 / 1024.0)],
        format!(
            "grep VmRSS /proc/{}/status  (agent: {})",
            agent.agent.pid(),
            agent.command
        ),
    );
    report.row(
        vec![
            "VmHWM (peak)".into(),
            format!("{:.1} MiB", hwm as f64 / 1024.0),
        ],
        format!("grep VmHWM /proc/{}/status", agent.agent.pid()),
    );
    report.note(format!(
        "start → every name resolved and applied: {:.2} s; entries {} IPv4, {} IPv6; {} hosts",
        took.as_secs_f64(),
        status.entries.v4,
        status.entries.v6,
        status.hosts
    ));
    let bytes = rss as f64 * 1024.0;
    report.target(
        "agent RSS ≤ 40 MB with 10k names",
        bytes <= RSS_TARGET,
        format!(
            "VmRSS {:.1} MB ({:.1} MiB), peak VmHWM {:.1} MB",
            bytes / 1e6,
            rss as f64 / 1024.0,
            hwm as f64 * 1024.0 / 1e6
        ),
    );
    Ok(())
}
