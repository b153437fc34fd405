//! `cargo xtask setup`: idempotent, and quick when everything is already there.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian packages the tests and the demo run: curl (the client in the pod) and iproute2
/// (namespaces and veth pairs); binutils (strip) and xz-utils (compressed kernel modules) for
/// the VM initramfs; python3-venv for the manifest validator; nftables and iptables, which
/// `cargo xtask bench` compares the agent with, and bpftool, which reads its BPF run-time
/// statistics.
const DEBIAN_PACKAGES: [&str; 9] = [
    "curl",
    "iproute2",
    "ca-certificates",
    "binutils",
    "xz-utils",
    "python3-venv",
    "nftables",
    "iptables",
    "bpftool",
];

/// kubernetes-validate (PyPI), which checks the manifests in deploy/ against the Kubernetes
/// schemas it carries (no cluster, no network at validation time).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Where setup installs kubernetes-validate (a virtual environment of the system Python).
pub fn kubernetes_validate_bin(root: &Path) -> PathBuf {
    root.join(".tools/kubernetes-validate/bin/kubernetes-validate")
}

/// bpf-linker release built here; 0.13 supports LLVM 21–23.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run(root: &Path) -> anyhow::Result<()> {
    nightly_components()?;
    bpf_linker(root)?;
    debian_packages(&DEBIAN_PACKAGES)?;
    kubernetes_validate(root)?;
    eprintln!("setup: ready");
    Ok(())
}

/// PATH with the project's tools first (cargo install warns about a root not on PATH).
pub fn path_with_tools(root: &Path) -> OsString {
    let mut path = OsString::from(root.join(".tools/bin"));
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    path
}

pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_components() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain");
        crate::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    for component in ["rust-src", "clippy", "rustfmt"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("setup: adding {component} to nightly");
            crate::run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    Ok(())
}

/// The nightly's LLVM major version and its shared library.
fn nightly_llvm() -> anyhow::Result<(String, PathBuf)> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV shows no LLVM version")?
        .to_owned();
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .context("the nightly toolchain ships no libLLVM.so")?;
    Ok((major, lib))
}

/// bpf-linker must use the same LLVM as the nightly rustc that emits the bitcode, so it is
/// built here against the nightly's own libLLVM (about 2 minutes), into `.tools/`.
fn bpf_linker(root: &Path) -> anyhow::Result<()> {
    let tools = root.join(".tools");
    let (major, libllvm) = nightly_llvm()?;
    let stamp = tools.join("bpf-linker.llvm");
    let binary = tools.join("bin/bpf-linker");
    let built_for = std::fs::read_to_string(&stamp).unwrap_or_default();
    let works = Command::new(&binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && built_for.trim() == major {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (takes a couple of minutes)"
    );
    std::fs::create_dir_all(tools.join("lib"))?;
    let link = tools.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    let sysroot_lib = libllvm.parent().context("libLLVM has a directory")?;
    crate::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--root",
            ])
            .arg(&tools)
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &tools)
            .env("PATH", path_with_tools(root))
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", sysroot_lib.display()),
            ),
    )?;
    std::fs::write(&stamp, &major)?;
    Ok(())
}

/// cargo-fuzz release installed for `cargo xtask fuzz`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// cargo-fuzz, into `.tools/` (only the fuzz task needs it).
pub fn cargo_fuzz(root: &Path) -> anyhow::Result<()> {
    let tools = root.join(".tools");
    let works = Command::new(tools.join("bin/cargo-fuzz"))
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)
        });
    if works {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    crate::run(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
                "--force",
                "--root",
            ])
            .arg(&tools)
            .env("PATH", path_with_tools(root)),
    )
}

fn kubernetes_validate(root: &Path) -> anyhow::Result<()> {
    let venv = root.join(".tools/kubernetes-validate");
    let stamp = venv.join("installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == KUBERNETES_VALIDATE)
        && kubernetes_validate_bin(root).exists()
    {
        return Ok(());
    }
    eprintln!(
        "setup: installing {KUBERNETES_VALIDATE} into {}",
        venv.display()
    );
    crate::run(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    crate::run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]))?;
    std::fs::write(&stamp, KUBERNETES_VALIDATE)?;
    Ok(())
}

/// Installs those of `packages` that are missing (and nothing when none is).
fn debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {}", missing.join(" "));
    let apt = |args: &[&str]| {
        crate::run(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

/// podman for `image` (readelf comes with binutils), from the machine's own Debian suite.
pub fn podman() -> anyhow::Result<()> {
    debian_packages(&["podman"])
}

/// QEMU for `vm-test`. Debian bookworm's qemu-system-x86 would replace the newer qemu-utils
/// these machines come with, so both come from bookworm-backports, through a private sources
/// list (the system's apt configuration is left alone).
pub fn qemu() -> anyhow::Result<()> {
    let works = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    eprintln!("setup: installing qemu-system-x86 and qemu-utils from bookworm-backports");
    let dir = std::env::temp_dir().join("egress-setup-apt");
    std::fs::create_dir_all(dir.join("lists/partial"))?;
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let mut list = String::new();
    for suite in ["bookworm", "bookworm-updates", "bookworm-backports"] {
        list.push_str(&format!(
            "deb [signed-by={keyring}] http://deb.debian.org/debian {suite} main\n"
        ));
    }
    list.push_str(&format!(
        "deb [signed-by={keyring}] http://deb.debian.org/debian-security bookworm-security main\n"
    ));
    std::fs::write(dir.join("sources.list"), list)?;
    let apt = |args: &[&str]| {
        crate::run(
            Command::new("apt-get")
                .arg("-o")
                .arg(format!(
                    "Dir::Etc::SourceList={}",
                    dir.join("sources.list").display()
                ))
                .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
                .arg("-o")
                .arg(format!("Dir::State::Lists={}", dir.join("lists").display()))
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-t",
        "bookworm-backports",
        "qemu-system-x86",
        "qemu-utils",
    ])
}
