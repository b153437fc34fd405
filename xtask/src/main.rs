//! Developer tasks: `cargo xtask <setup|demo|test|lint|fuzz|bench|image|vm-test>`. Each one sets up what it needs
//! first, so that a fresh machine needs nothing but this repository and rustup.

mod bench;
mod fuzz;
mod image;
mod setup;
mod vm;

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
    /// Set up, lint, and run every test: unit tests, the privileged end-to-end tests on this
    /// kernel, then the same end-to-end tests on the VM kernel matrix (needs root).
    Test {
        /// Skip the lint step (rustfmt, the manifests' validation, clippy).
        #[arg(long)]
        no_lint: bool,
        /// Skip the VM kernel matrix (`cargo xtask vm-test` runs it alone).
        #[arg(long)]
        no_vm: bool,
        /// Passed to `cargo test` (e.g. a test name filter after `--`); the VM matrix is
        /// skipped when any are given.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// rustfmt check, the Kubernetes manifests' validation, and clippy with warnings denied,
    /// host crates and the eBPF crate.
    Lint,
    /// Build the agent statically and its container image (Dockerfile) with podman, and run
    /// `egress-agent --version` from the image (installs podman if missing).
    Image(image::ImageArgs),
    /// Run the fuzz targets of tests/fuzz (cargo fuzz) for a bounded time each, after
    /// replaying every saved regression input (installs cargo-fuzz if missing).
    Fuzz(fuzz::FuzzArgs),
    /// Measure what enforcement costs (per connect, against no program, an empty program,
    /// nftables and iptables; policy load; memory) and print the figures and targets
    /// (needs root; release build, then about 4 minutes; `--quick` about one).
    Bench(bench::BenchArgs),
    /// Run the end-to-end suite on several kernels, each booted under QEMU (needs root to
    /// install QEMU; fetches Debian's cloud kernels).
    VmTest(vm::VmTestArgs),
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
        Task::Test {
            no_lint,
            no_vm,
            args,
        } => {
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
            let host = cargo(&root, &test_args);
            if !args.is_empty() {
                eprintln!("test: the image and the VM kernel matrix were not run");
                return host;
            }
            // A short fuzz run of every parser that takes outside input.
            let host = host.and_then(|()| fuzz::run(&root, &fuzz::FuzzArgs::default()));
            // The image the manifests deploy: built, and started.
            let host = host.and_then(|()| {
                setup::podman()?;
                image::run(&root, &image::ImageArgs::default())
            });
            if no_vm {
                eprintln!("test: the VM kernel matrix was not run (cargo xtask vm-test runs it)");
                return host;
            }
            // The matrix runs even when the host tests failed: both results are wanted.
            setup::qemu()?;
            let vm = vm::run(&root, &vm::VmTestArgs::default());
            match (host, vm) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(h), Ok(())) => Err(h),
                (Ok(()), Err(v)) => Err(v),
                (Err(h), Err(v)) => bail!("{h:#}; and on the VM kernels: {v:#}"),
            }
        }
        Task::Lint => {
            setup::run(&root)?;
            lint(&root)
        }
        Task::Image(args) => {
            setup::run(&root)?;
            setup::podman()?;
            image::run(&root, &args)
        }
        Task::Fuzz(args) => {
            setup::run(&root)?;
            fuzz::run(&root, &args)
        }
        Task::Bench(args) => {
            setup::run(&root)?;
            bench::run(&root, &args)
        }
        Task::VmTest(args) => {
            setup::run(&root)?;
            setup::qemu()?;
            vm::run(&root, &args)
        }
    }
}

fn lint(root: &Path) -> anyhow::Result<()> {
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    manifests(root)?;
    // The host crates (setup has installed bpf-linker, so the agent's build.rs builds the
    // real eBPF object here, the same one the build after this reuses).
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The eBPF crate, for its real target.
    cargo(
        root,
        &[
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
        ],
    )
}

/// The Kubernetes manifests: every resource against the schema of the oldest Kubernetes
/// release the agent targets (strict: unknown fields are errors), and the kustomization's
/// resources present.
fn manifests(root: &Path) -> anyhow::Result<()> {
    let deploy = root.join("deploy");
    let kustomization = std::fs::read_to_string(deploy.join("kustomization.yaml"))
        .context("read deploy/kustomization.yaml")?;
    let resources: Vec<String> = kustomization
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(str::to_owned))
        .collect();
    anyhow::ensure!(
        !resources.is_empty(),
        "deploy/kustomization.yaml lists no resources"
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&deploy)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        anyhow::ensure!(
            resources.contains(&name),
            "deploy/{name} is not a resource of deploy/kustomization.yaml"
        );
    }
    for r in &resources {
        anyhow::ensure!(
            deploy.join(r).exists(),
            "deploy/kustomization.yaml lists missing {r}"
        );
    }
    run(Command::new(setup::kubernetes_validate_bin(root))
        .args(["--strict", "--quiet", "--kubernetes-version", "1.33.0"])
        .args(&files))
}

fn require_root(why: &str) -> anyhow::Result<()> {
    let out = Command::new("id").arg("-u").output().context("run id -u")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("{why}: run as root (e.g. `sudo -E cargo xtask …`)");
    }
    Ok(())
}

/// Runs cargo in the workspace. The variables `cargo run` set for xtask itself are removed:
/// build scripts that watch them (ring watches CARGO_MANIFEST_DIR) would otherwise rebuild
/// whenever cargo is run both directly and through xtask. (The agent's build.rs finds
/// bpf-linker in .tools/ by itself.)
pub fn cargo_command(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*key)
        {
            cmd.env_remove(&*key);
        }
    }
    cmd.current_dir(root);
    cmd
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(cargo_command(root).args(args))
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
