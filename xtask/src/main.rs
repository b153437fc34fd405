//! Developer tasks: `cargo xtask <setup|demo|test|lint>`. Each one sets up what it needs
//! first, so that a fresh machine needs nothing but this repository and rustup.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: nightly rust-src and clippy, bpf-linker built
    /// against the nightly's own LLVM (into .tools/), and the Debian packages the tests use.
    Setup,
    /// Set up, build, and run the demo: an Istio-style lockdown enforced in the kernel
    /// (needs root).
    Demo,
    /// Set up, lint, and run every test, the privileged end-to-end ones included (needs root).
    Test {
        /// Skip rustfmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Passed to `cargo test` (e.g. a test name filter after `--`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// rustfmt check and clippy with warnings denied, host crates and the eBPF crate.
    Lint,
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Setup => setup::run(&root),
        Task::Demo => {
            setup::run(&root)?;
            require_root("the demo creates network namespaces and cgroups and loads BPF programs")?;
            cargo(&root, &["build"])?;
            run(Command::new(root.join("target/debug/egress-demo")).current_dir(&root))
        }
        Task::Test { no_lint, args } => {
            setup::run(&root)?;
            if !no_lint {
                lint(&root)?;
            }
            require_root(
                "the end-to-end tests load BPF programs and create namespaces and cgroups",
            )?;
            // Build every binary first: the end-to-end tests run the real egress-agent.
            cargo(&root, &["build"])?;
            let mut test_args = vec!["test", "--no-fail-fast"];
            test_args.extend(args.iter().map(String::as_str));
            cargo(&root, &test_args)
        }
        Task::Lint => {
            setup::run(&root)?;
            lint(&root)
        }
    }
}

fn lint(root: &Path) -> anyhow::Result<()> {
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    // The host crates, without building the eBPF object (build.rs honours AYA_BUILD_SKIP).
    run(Command::new("cargo")
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .env("AYA_BUILD_SKIP", "1")
        .current_dir(root))?;
    // The eBPF crate, for its real target.
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--package",
            "egress-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("PATH", setup::path_with_tools(root))
        .current_dir(root))
}

fn require_root(why: &str) -> anyhow::Result<()> {
    let out = Command::new("id").arg("-u").output().context("run id -u")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("{why}: run as root (e.g. `sudo -E cargo xtask …`)");
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("cargo")
        .args(args)
        .env("PATH", setup::path_with_tools(root))
        .current_dir(root))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}
