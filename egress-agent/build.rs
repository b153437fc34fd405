//! Builds the kernel programs (`egress-ebpf`) for the BPF target with aya-build and leaves the
//! object in OUT_DIR, where `src/bpf/object.rs` embeds it.
//!
//! Needs the nightly toolchain with rust-src and bpf-linker; `cargo xtask setup` installs
//! both, bpf-linker into `<workspace>/.tools/bin`, which is put on PATH here. With
//! `AYA_BUILD_SKIP=1` (used for `cargo clippy`/`check`) an empty placeholder is written instead
//! and the agent reports at run time that it has no programs.

use std::{env, ffi::OsString, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "egress-ebpf";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let workspace = manifest_dir
        .parent()
        .context("the agent lives in a workspace")?;

    let tools = workspace.join(".tools").join("bin");
    println!(
        "cargo:rerun-if-changed={}",
        tools.join("bpf-linker").display()
    );
    if tools.is_dir() {
        let mut path = OsString::from(tools.as_os_str());
        if let Some(old) = env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", path) };
    }

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join(EBPF_PACKAGE), [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    if which("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed; run `cargo xtask setup` (or set AYA_BUILD_SKIP=1 for \
             a build without kernel programs)"
        ));
    }

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = packages
        .into_iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} not found"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .context("manifest has a parent directory")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
