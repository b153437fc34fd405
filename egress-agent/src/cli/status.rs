//! `egress-agent status`: the running agent's status file.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use egress_agent::agent::status;

use super::{DEFAULT_STATE_DIR, when};

#[derive(clap::Args)]
pub struct Args {
    /// The agent's state directory.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args { state_dir, json } = args;
    let s = status::read(&state_dir).with_context(|| {
        format!(
            "no agent status in {} (is an agent running with this --state-dir?)",
            state_dir.display()
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let state = match (s.running, s.ready) {
        (true, true) => "enforcing",
        (true, false) => "starting (not ready)",
        (false, _) => "stopped (pinned enforcement stays in force)",
    };
    println!(
        "agent {} pid {} on Linux {}: {state}",
        s.version, s.pid, s.kernel
    );
    println!("cgroup: {} (id {})", s.cgroup, s.cgroup_id);
    println!("pins: {}", s.bpffs);
    println!("dns servers: {}", s.dns_servers.join(", "));
    if let Some(p) = &s.policy {
        println!(
            "policy: {} (digest {}), mode {}, default {}, {} rules, applied {}",
            p.path,
            p.digest,
            p.mode,
            p.default_action,
            p.rules,
            when(p.applied_at)
        );
    }
    println!(
        "entries: {} v4, {} v6, {} v4 prefixes, {} v6 prefixes (capacity {} each); {} hostnames",
        s.entries.v4, s.entries.v6, s.entries.cidr_v4, s.entries.cidr_v6, s.max_entries, s.hosts
    );
    if let Some(pods) = &s.pods {
        println!(
            "pods: {} placed in their class, {} not known yet (unknown class); {} classes; \
             metadata {}",
            pods.placed,
            pods.unplaced.len(),
            pods.classes,
            if pods.synced {
                "listed from the API"
            } else {
                "from the previous run (API not listed yet)"
            }
        );
    }
    println!(
        "reloads: {} applied, {} rejected",
        s.reloads_ok, s.reloads_failed
    );
    if let Some(r) = &s.last_reload {
        match &r.error {
            None => println!("last reload: ok {}", when(r.at)),
            Some(e) => println!("last reload: REJECTED {}: {e}", when(r.at)),
        }
    }
    for p in &s.problems {
        println!("problem: {p}");
    }
    for g in &s.gaps {
        println!("not enforced on this node: {g}");
    }
    Ok(ExitCode::SUCCESS)
}
