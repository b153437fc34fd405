//! Runs `egress-probe` in a pod and reads its verdicts.

use std::path::PathBuf;

use crate::pod::Pod;

/// errno of a refused syscall: what the cgroup hooks return.
pub const EPERM: i32 = libc::EPERM;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub op: String,
    pub addr: String,
    pub ok: bool,
    pub errno: i32,
}

impl Outcome {
    pub fn denied(&self) -> bool {
        !self.ok && self.errno == EPERM
    }
}

/// The probe binary: next to the test binaries' parent directory, or `EGRESS_PROBE_BIN`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_PROBE_BIN") {
        return p.into();
    }
    crate::agent::target_dir().join("egress-probe")
}

/// The benchmark binary (its `watch` runs in the cgroup for the reload test): beside the
/// probe, or `EGRESS_BENCH_BIN`.
pub fn bench_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_BENCH_BIN") {
        return p.into();
    }
    crate::agent::target_dir().join("egress-bench")
}

/// Runs the operations (`(op, addr)` pairs) in one probe process in `pod`.
pub fn run(pod: &Pod, ops: &[(&str, &str)]) -> Vec<Outcome> {
    run_in(pod, &pod.cgroup, ops)
}

/// As [`run`], with the probe in `cgroup` (in the pod's namespaces): a container cgroup of a
/// simulated kubelet tree, or a cgroup outside the enforced one.
pub fn run_in(pod: &Pod, cgroup: &std::path::Path, ops: &[(&str, &str)]) -> Vec<Outcome> {
    let mut cmd = pod.command_in(cgroup, binary());
    for (op, addr) in ops {
        cmd.arg(op).arg(addr);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", binary().display()));
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Outcome> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("probe prints JSON lines");
            Outcome {
                op: v["op"].as_str().unwrap_or_default().to_owned(),
                addr: v["addr"].as_str().unwrap_or_default().to_owned(),
                ok: v["ok"].as_bool().unwrap_or(false),
                errno: v["errno"].as_i64().unwrap_or(-1) as i32,
            }
        })
        .collect();
    assert_eq!(lines.len(), ops.len(), "one result per operation");
    lines
}

/// Runs one operation.
pub fn one(pod: &Pod, op: &str, addr: &str) -> Outcome {
    run(pod, &[(op, addr)]).remove(0)
}
