//! `cargo xtask image`: the agent as a statically linked binary, and the container image
//! (`Dockerfile`: FROM scratch) built from it with podman, which then runs
//! `egress-agent --version` from the image to prove it starts.
//!
//! Podman keeps its storage under `target/image/` (vfs driver, cgroupfs manager): nothing of
//! the machine's container configuration is used or changed.

use std::{path::Path, process::Command};

use anyhow::Context as _;

/// The name `deploy/daemonset.yaml` asks for (podman's own prefix for local images, which an
/// exported archive keeps through `ctr images import`).
pub const TAG: &str = concat!("localhost/egress-agent:", env!("CARGO_PKG_VERSION"));

#[derive(clap::Args, Default)]
pub struct ImageArgs {
    /// Build the binary with the release profile (the image to deploy); the default debug
    /// build is what the test suite checks.
    #[arg(long)]
    pub release: bool,
    /// Also write the image as an OCI archive to this file (for `ctr images import` or a
    /// registry push).
    #[arg(long)]
    pub save: Option<std::path::PathBuf>,
}

/// A containers.conf without default ulimits: crun cannot raise limits where the agent's
/// own process is already capped (setrlimit fails with EPERM), and `--version` needs none.
fn containers_conf(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let path = root.join("target/image/containers.conf");
    std::fs::write(&path, "[containers]\ndefault_ulimits = []\n")?;
    Ok(path)
}

/// Unpacks the image's file system and runs `/egress-agent --version` chrooted into it.
fn run_exported(root: &Path, podman: &dyn Fn(&[&str]) -> Command) -> anyhow::Result<String> {
    let rootfs = root.join("target/image/rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(&rootfs)?;
    let id = crate::setup::output(&mut podman(&["create", TAG]))?;
    let id = id.trim();
    let tar = root.join("target/image/rootfs.tar");
    let exported = crate::run(podman(&["export", "--output"]).arg(&tar).arg(id));
    let _ = crate::setup::output(&mut podman(&["rm", id]));
    exported?;
    crate::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&rootfs),
    )?;
    let entries: Vec<_> = std::fs::read_dir(&rootfs)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    eprintln!("image: root file system holds {entries:?}");
    crate::setup::output(
        Command::new("/usr/sbin/chroot")
            .arg(&rootfs)
            .args(["/egress-agent", "--version"])
            .env_clear(),
    )
}

pub fn run(root: &Path, args: &ImageArgs) -> anyhow::Result<()> {
    let profile = if args.release { "release" } else { "debug" };
    let mut build = crate::cargo_command(root);
    build
        .args([
            "build",
            "--package",
            "egress-agent",
            "--bin",
            "egress-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(root.join("target/static"))
        // With an explicit --target, RUSTFLAGS reach the target's code only, not build
        // scripts: the binary is static, the build tools stay ordinary.
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    if args.release {
        build.arg("--release");
    }
    crate::run(&mut build)?;
    let binary = root.join(format!(
        "target/static/x86_64-unknown-linux-gnu/{profile}/egress-agent"
    ));
    let program_headers = crate::setup::output(Command::new("readelf").arg("-lW").arg(&binary))?;
    anyhow::ensure!(
        !program_headers.contains("INTERP"),
        "{} is not statically linked",
        binary.display()
    );
    let context = root.join("target/image/context");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&binary, context.join("egress-agent"))
        .with_context(|| format!("copy {}", binary.display()))?;
    crate::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg(context.join("egress-agent")),
    )?;

    let podman = |args: &[&str]| {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(root.join("target/image/storage"))
            .arg("--runroot")
            .arg(root.join("target/image/run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(args);
        cmd
    };
    crate::run(
        podman(&["build", "--quiet", "--tag", TAG, "--file"])
            .arg(root.join("Dockerfile"))
            .arg(&context),
    )?;
    let version = match crate::setup::output(
        podman(&["run", "--rm", "--network", "none", TAG, "--version"])
            .env("CONTAINERS_CONF", containers_conf(root)?),
    ) {
        Ok(v) => v,
        Err(e) => {
            // Some hosts cannot run containers at all (crun refuses hybrid cgroup hierarchies,
            // as on this kind of machine): the image's root file system is then unpacked and
            // its entry point run in it by chroot — the same binary, with nothing else
            // around it.
            eprintln!(
                "image: podman cannot run containers here ({e:#}); running the image's root by chroot"
            );
            run_exported(root, &podman)?
        }
    };
    let expected = concat!("egress-agent ", env!("CARGO_PKG_VERSION"));
    anyhow::ensure!(
        version.trim() == expected,
        "the image printed {version:?}, expected {expected:?}"
    );
    let size = std::fs::metadata(context.join("egress-agent"))?.len();
    eprintln!(
        "image: {TAG} built; `egress-agent --version` in it printed {:?}; binary {:.1} MiB",
        version.trim(),
        size as f64 / (1024.0 * 1024.0)
    );
    if let Some(out) = &args.save {
        crate::run(
            podman(&["save", "--format", "oci-archive", "--output"])
                .arg(out)
                .arg(TAG),
        )?;
        eprintln!("image: saved to {}", out.display());
    }
    Ok(())
}
