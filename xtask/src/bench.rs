//! `cargo xtask bench`: builds the agent and the bench in release mode and runs
//! `egress-bench run` (tests/src/bin/egress-bench), which measures every configuration in
//! one run and prints the table, the command behind each row, and the targets.

use std::{path::Path, process::Command};

#[derive(clap::Args, Default)]
pub struct BenchArgs {
    /// Fewer rounds and iterations, no 1M-entry agent: a smoke run of a few minutes.
    #[arg(long)]
    quick: bool,
    /// With --quick: measure the agent with 1M entries too.
    #[arg(long)]
    with_1m: bool,
}

pub fn run(root: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let BenchArgs { quick, with_1m } = args;
    crate::require_root("the bench loads BPF programs and creates namespaces and cgroups")?;
    // Release builds: the load and memory figures are those of the agent users run.
    crate::cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            "egress-agent",
            "--package",
            "egress-tests",
            "--bins",
        ],
    )?;
    let mut cmd = Command::new(root.join("target/release/egress-bench"));
    cmd.arg("run").current_dir(root);
    if *quick {
        cmd.arg("--quick");
        if *with_1m {
            cmd.arg("--1m");
        }
    }
    crate::run(&mut cmd)
}
