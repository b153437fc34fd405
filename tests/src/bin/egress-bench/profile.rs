//! BPF run-time statistics (`kernel.bpf_stats_enabled=1`): the time the kernel spends in the
//! connect programs themselves, per run, read with `bpftool` before and after a UDP connect
//! loop — free of the machine's noise that the wall-clock figures carry. Enabled only for
//! this measurement (the statistics cost a clock read per run), then restored.

use std::process::Command;

use anyhow::Context as _;

/// `(run_time_ns, run_cnt)` of the program `id`.
fn run_stats(id: u64) -> anyhow::Result<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .context("run bpftool (Debian package bpftool)")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// The ids of the programs attached to `cgroup` for `attach_type`
/// (`cgroup_inet4_connect`, `cgroup_inet6_connect`).
pub fn attached(cgroup: &std::path::Path, attach_type: &str) -> anyhow::Result<Vec<u64>> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .context("run bpftool (Debian package bpftool)")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["attach_type"] == attach_type)
        .filter_map(|p| p["id"].as_u64())
        .collect())
}

/// Runs `work` with the statistics on; returns ns per run of the programs `ids` over it.
pub fn ns_per_run(ids: &[u64], work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    const KNOB: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before_knob = std::fs::read_to_string(KNOB)?;
    std::fs::write(KNOB, "1")?;
    let before: Vec<(u64, u64)> = ids
        .iter()
        .map(|&i| run_stats(i))
        .collect::<Result<_, _>>()?;
    let r = work();
    let after: Vec<(u64, u64)> = ids
        .iter()
        .map(|&i| run_stats(i))
        .collect::<Result<_, _>>()?;
    std::fs::write(KNOB, before_knob.trim())?;
    r?;
    let (time, count) = before
        .iter()
        .zip(&after)
        .fold((0, 0), |(t, c), (b, a)| (t + a.0 - b.0, c + a.1 - b.1));
    anyhow::ensure!(count > 0, "the programs {ids:?} did not run");
    Ok(time as f64 / count as f64)
}
