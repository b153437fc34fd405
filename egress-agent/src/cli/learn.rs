//! `egress-agent learn`: a proposed policy from the flows the running agent saw denied.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use egress_agent::{agent::status, bpf::Cgroup, learn, policy};

use super::DEFAULT_STATE_DIR;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's state directory (its status file and local API are there).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Only flows denied within this long (e.g. `1h`); default: every flow the agent holds.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Only flows from this cgroup or below it (absolute, or relative to the cgroup2 mount).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// The policy to extend; default: the one the agent enforces.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Print Istio ServiceEntry documents for what was learned, instead of a native policy.
    #[arg(long)]
    istio: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        state_dir,
        since,
        cgroup,
        policy: policy_file,
        istio,
    } = args;
    let mut flows = Vec::new();
    super::events::fetch(&state_dir, since, false, |r| {
        flows.push(r);
        Ok(())
    })?;
    if let Some(dir) = cgroup {
        let root = Cgroup::resolve(&dir)?.path;
        flows.retain(|f| {
            f.cgroup
                .as_deref()
                .is_some_and(|c| std::path::Path::new(c).starts_with(&root))
        });
    }
    let note = match since {
        Some(d) => format!("from the last {}", humantime::format_duration(d)),
        None => "from every flow the agent holds".to_owned(),
    };
    if istio {
        print!("{}", learn::propose_istio(&flows, &note));
        return Ok(ExitCode::SUCCESS);
    }
    let path = match policy_file {
        Some(p) => p,
        None => {
            let s = status::read(&state_dir)
                .with_context(|| format!("read the agent's status in {}", state_dir.display()))?;
            PathBuf::from(
                s.policy
                    .context("the agent has no policy applied; give --policy")?
                    .path,
            )
        }
    };
    let (current, _) = policy::load(&path)?;
    print!("{}", learn::propose_native(Some(&current), &flows, &note));
    Ok(ExitCode::SUCCESS)
}
