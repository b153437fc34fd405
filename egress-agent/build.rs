//! Builds the kernel programs (`egress-ebpf`) for the BPF target and leaves the object in
//! OUT_DIR, where `src/bpf/object.rs` embeds it.
//!
//! This does what aya-build does (`cargo +nightly build --target bpfel-unknown-none -Z
//! build-std=core` with BTF and debug information), with two differences: the nested build
//! uses one target directory for the whole workspace (`<target>/ebpf`), so that `cargo build`,
//! `cargo test` and `cargo clippy` — which run this script with different OUT_DIRs — share
//! one build of the programs instead of making three; and its output is shown only when it
//! fails, not as a screenful of `warning:` lines on every build.
//!
//! Needs the nightly toolchain with rust-src and bpf-linker; `cargo xtask setup` installs
//! both, bpf-linker into `<workspace>/.tools/bin`, which is put on PATH here. With
//! `AYA_BUILD_SKIP=1` (for `cargo clippy`/`check` on a machine without them) an empty
//! placeholder is written instead and the agent reports at run time that it has no programs.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "egress-ebpf";
const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let workspace = manifest_dir
        .parent()
        .context("the agent lives in a workspace")?;

    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join(EBPF_PACKAGE), [])?;
        return Ok(());
    }

    let tools = workspace.join(".tools").join("bin");
    println!(
        "cargo:rerun-if-changed={}",
        tools.join("bpf-linker").display()
    );
    for watched in [
        "egress-ebpf/src",
        "egress-ebpf/Cargo.toml",
        "egress-common/src",
        "egress-common/Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let mut path = OsString::from(tools.as_os_str());
    if let Some(old) = env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    if which(&path, "bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed; run `cargo xtask setup` (or set AYA_BUILD_SKIP=1 for \
             a build without kernel programs)"
        ));
    }

    let target_dir = shared_target_dir(&out_dir).join("ebpf");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        EBPF_PACKAGE,
    ])
    .args([
        "--bins",
        "--release",
        "--target",
        TARGET,
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(workspace)
    .env("PATH", &path)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
    // The outer build's compiler settings are not the nightly's.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_TARGET_DIR");
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the kernel programs failed: {cmd:?}: {}",
            out.status
        );
    }
    let object = target_dir.join(TARGET).join("release").join(EBPF_PACKAGE);
    fs::copy(&object, out_dir.join(EBPF_PACKAGE))
        .with_context(|| format!("copy {}", object.display()))?;
    Ok(())
}

/// The outer build's target directory: OUT_DIR is `<target>/<profile>/build/<pkg>-<hash>/out`.
fn shared_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .nth(4)
        .map_or_else(|| out_dir.to_owned(), Path::to_owned)
}

fn which(path: &OsString, program: &str) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
