//! The agent's status file (`<state dir>/status.json`): what it enforces, from which
//! policy, and what went wrong last. Written atomically after every change; read by
//! `egress-agent status` and by tests that wait for a reload to land.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const STATUS_FILE: &str = "status.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    /// The running kernel's release.
    #[serde(default)]
    pub kernel: String,
    pub started_at: u64,
    /// Programs attached and a valid policy applied.
    pub ready: bool,
    /// Still enforcing (false once the agent has stopped; the pins stay).
    pub running: bool,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub bpffs: String,
    pub dns_servers: Vec<String>,
    pub max_entries: u32,
    pub policy: Option<AppliedPolicy>,
    pub last_reload: Option<Reload>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub entries: EntryCounts,
    pub hosts: usize,
    /// Conditions that keep the agent from enforcing exactly its policy.
    pub problems: Vec<String>,
    /// The capability mask the running agent kept after start-up (hex), or why not.
    #[serde(default)]
    pub capabilities: String,
    /// What this node's kernel does not let the agent enforce at all (fixed for the run).
    #[serde(default)]
    pub gaps: Vec<String>,
    /// Where the Prometheus endpoint listens (`--metrics`), as bound.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Pods placed in classes (with `--node-name`).
    #[serde(default)]
    pub pods: Option<PodsStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodsStatus {
    /// Pod cgroups with known metadata.
    pub placed: usize,
    /// Pod cgroups whose metadata is not known yet (unknown class), by pod UID.
    pub unplaced: Vec<String>,
    /// The metadata comes from a complete listing of the API by this run.
    pub synced: bool,
    /// Distinct classes in use, the node-wide one included.
    pub classes: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedPolicy {
    pub path: String,
    /// FNV-1a 64 of the file's bytes, as [`crate::policy::digest`] computes it.
    pub digest: String,
    pub applied_at: u64,
    pub mode: String,
    pub default_action: String,
    pub rules: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reload {
    pub at: u64,
    pub ok: bool,
    pub digest: String,
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryCounts {
    pub v4: usize,
    pub v6: usize,
    pub cidr_v4: usize,
    pub cidr_v6: usize,
    #[serde(default)]
    pub port_sets: usize,
    #[serde(default)]
    pub sources: usize,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Writes the file atomically (temporary file, then rename), readable by root only.
pub fn write(state_dir: &Path, status: &Status) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(status)?;
    crate::bpf::fs::write_private(&path(state_dir), text.as_bytes())
}

pub fn read(state_dir: &Path) -> std::io::Result<Status> {
    let text = std::fs::read_to_string(path(state_dir))?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// Creates the state directory, the agent's own and accessible by it only.
pub fn ensure_state_dir(dir: &Path) -> std::io::Result<()> {
    crate::bpf::fs::make_private_dir(dir)
}
