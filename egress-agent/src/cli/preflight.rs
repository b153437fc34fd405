//! `egress-agent preflight`: what this node has and lacks for enforcing.

use std::process::ExitCode;

use egress_agent::preflight::{Outcome, checks};

use super::BpffsArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    bpffs: BpffsArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let list = checks(&args.bpffs.bpffs);
    let mut failed = false;
    for c in &list {
        let (mark, text) = match &c.outcome {
            Outcome::Ok(t) => ("ok  ", t),
            Outcome::Warn(t) => ("warn", t),
            Outcome::Fail(t) => {
                failed = true;
                ("FAIL", t)
            }
        };
        println!("{mark}  {:<13} {text}", c.what);
    }
    if failed {
        println!("\nthis node cannot enforce egress until the failures above are fixed");
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
