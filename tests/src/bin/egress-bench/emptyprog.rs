//! The floor: a cgroup/connect4 and a cgroup/connect6 program that only return "allow"
//! ([`egress_tests::allow_all`]). What a connect costs with it, less the bare cost, is the
//! price of running any program at that hook; what the agent costs above it is the price of
//! its lookups.

use std::path::Path;

use egress_tests::allow_all::{self, BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT};

/// Attaches the empty program to `cgroup` for connect4 and connect6. The cgroup holds the
/// programs from then on (until it is removed).
pub fn attach(cgroup: &Path) -> anyhow::Result<()> {
    for attach_type in [BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT] {
        let prog = allow_all::load(attach_type)
            .map_err(|e| anyhow::anyhow!("BPF_PROG_LOAD of the empty program: {e}"))?;
        allow_all::attach(&prog, cgroup, attach_type, 0)
            .map_err(|e| anyhow::anyhow!("BPF_PROG_ATTACH to {}: {e}", cgroup.display()))?;
    }
    Ok(())
}
