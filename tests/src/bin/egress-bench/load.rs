//! Policy load: how long the agent takes from its start to a policy of 100k addresses
//! applied, and from a change of the policy file to the new policy enforced.
//!
//! Start: the time from spawning `egress-agent run` (fresh pins: the maps are created) until
//! its status file says ready (polled every 20 ms). Change: a worker in the enforced cgroup
//! connects to an address the old policy lacks until the kernel allows it; the time is from
//! just before the new file is renamed into place (CLOCK_MONOTONIC in both processes). The
//! new policy replaces every address (100k added, 100k removed), and the probed address is
//! the one the agent writes last (the highest key).

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    Settings,
    bed::{Bed, PORT, memory_kib},
    policy::{native, v4_addrs, v6_addrs},
    report::Report,
    stats::median,
    worker::monotonic_ns,
};

/// Addresses of the policy: half IPv4, half IPv6.
pub const ADDRESSES: usize = 100_000;
/// Sorts after every other entry of the new policy.
const FLIP: &str = "2001:db8:100::20";

fn policy(offset: usize, flip: bool) -> String {
    let mut addrs = v4_addrs(ADDRESSES / 2, offset, None);
    addrs.extend(v6_addrs(ADDRESSES / 2, offset, flip.then_some(FLIP)));
    native(if flip { "new" } else { "old" }, &addrs)
}

pub fn run(bed: &Bed, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let client = bed.client()?;
    let old = policy(0, false);
    let new = policy(1_000_000, true);
    let flip_addr = format!("[{FLIP}]:{PORT}");
    let exe = std::env::current_exe()?;
    let (mut starts, mut changes, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let (mut agent_cmd, mut flip_cmd) = (String::new(), String::new());
    for round in 0..settings.load_rounds {
        let cgroup = bed.cgroup(&format!("load{round}"))?;
        let started = Instant::now();
        let mut agent = bed.agent(
            &format!("load{round}"),
            &cgroup,
            &old,
            &["--max-entries", "131072", "--resolve-wait", "1s"],
        )?;
        let status = agent.agent.wait_ready(Duration::from_secs(300));
        starts.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            status.entries.v4 + status.entries.v6 >= ADDRESSES,
            "{:?}",
            status.entries
        );
        rss.push(memory_kib(agent.agent.pid())?);
        agent_cmd = agent.command.clone();

        let pod = client.pod(&cgroup);
        let mut child = pod
            .command_in(&cgroup.pod(), &exe)
            .args(["flip", &flip_addr])
            .stdout(Stdio::piped())
            .spawn()?;
        flip_cmd = format!(
            "sh -c 'echo $$ > {} && exec ip netns exec {} {} flip {flip_addr}'",
            cgroup.pod().join("cgroup.procs").display(),
            client.ns.name,
            exe.display()
        );
        let mut lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        let first = lines.next().context("worker said nothing")??;
        anyhow::ensure!(first == "denied", "worker: {first}");
        let t0 = monotonic_ns();
        agent.write_policy(&new)?;
        let flipped: u64 = lines
            .next()
            .context("worker ended before the address was allowed")??
            .parse()?;
        anyhow::ensure!(child.wait()?.success(), "flip worker failed");
        changes.push((flipped - t0) as f64 / 1e9);
        eprintln!(
            "bench: load round {}: start→applied {:.3} s, change→enforced {:.3} s",
            round + 1,
            starts.last().unwrap(),
            changes.last().unwrap()
        );
    }
    let fmt = |v: &[f64]| {
        let min = v.iter().cloned().fold(f64::MAX, f64::min);
        let max = v.iter().cloned().fold(f64::MIN, f64::max);
        vec![
            format!("{:.3} s", median(v)),
            format!("{min:.3} s"),
            format!("{max:.3} s"),
        ]
    };
    report.table(
        &format!(
            "Policy load: {ADDRESSES} addresses ({} IPv4 + {} IPv6), {} rounds",
            ADDRESSES / 2,
            ADDRESSES / 2,
            settings.load_rounds
        ),
        &["what", "median", "min", "max"],
    );
    let mut row = vec!["agent start → policy applied (maps created)".to_owned()];
    row.extend(fmt(&starts));
    report.row(row, agent_cmd);
    let mut row = vec!["policy file replaced → new address allowed".to_owned()];
    row.extend(fmt(&changes));
    report.row(
        row,
        format!("{flip_cmd}  (then the policy file is replaced)"),
    );
    let (rss_kib, hwm_kib) = rss[rss.len() / 2];
    report.note(format!(
        "agent memory after the start with {ADDRESSES} addresses: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    ));
    let start = median(&starts);
    report.target(
        "100k addresses loaded in ≤ 1 s (agent start → policy applied)",
        start <= 1.0,
        format!(
            "{start:.3} s (median); policy change → enforced {:.3} s",
            median(&changes)
        ),
    );
    Ok(())
}
