//! PID 1 of the kernel-test VMs that `cargo xtask vm-test` boots.
//!
//! The initramfs holds this program, the project's end-to-end test binaries with the agent and
//! probe they run, the few system tools they call (iproute2, curl) with their libraries, and
//! the kernel modules the test bed needs (veth). This init mounts what a booted system has,
//! loads the modules, runs every test binary listed in `/vm/plan`, and reports each test's
//! outcome as one line on the second serial port (`/dev/ttyS1`), which the host reads:
//!
//! ```text
//! EGRESS-VM kernel 6.1.0-57-cloud-amd64
//! EGRESS-VM test sockets tcp_v4_and_v6_connects_are_judged_by_address_and_port ok
//! EGRESS-VM binary sockets exit=0 seconds=12.3
//! EGRESS-VM done
//! ```
//!
//! The host judges by these lines only (QEMU exits 0 even when the guest panics): a missing
//! `done` line is a failure. The console (`/dev/ttyS0`) carries everything the tests print.
//!
//! Kernel command line options: `egress.filter=<substring>` runs the test binaries whose name
//! contains it whole, and filters the tests of the others by name; `egress.probe=1` only reports `EGRESS-VM done` (used to find out
//! whether KVM works on this host).

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

const PLAN: &str = "/vm/plan";
const RESULTS_PORT: &str = "/dev/ttyS1";
const MARK: &str = "EGRESS-VM";

fn main() {
    if let Err(e) = boot() {
        console(&format!("egress-vm-init: {e}"));
    }
    // SAFETY: flushes file systems; no memory effects.
    unsafe { libc::sync() };
    // SAFETY: PID 1 powering the machine off; nothing runs after this.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
}

fn console(line: &str) {
    eprintln!("{line}");
}

fn boot() -> anyhow::Result<()> {
    mount_system()?;
    let mut results = Results::open();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    results.line(&format!("kernel {}", release.trim()));
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let option = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    if option("egress.probe").is_some() {
        results.line("done");
        return Ok(());
    }
    let filter = option("egress.filter");
    let plan = std::fs::read_to_string(PLAN)?;
    for line in plan.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "module" => load_module(Path::new(rest))?,
            "env" => {
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                // SAFETY: single-threaded here; the tests inherit the environment.
                unsafe { std::env::set_var(k, v) };
            }
            "run" => run_setup(rest)?,
            "test" => run_tests(rest, filter.as_deref(), &mut results),
            other => anyhow::bail!("unknown plan line kind `{other}`"),
        }
    }
    results.line("done");
    Ok(())
}

/// What a booted system offers the tests: /proc, /sys, /dev, writable /tmp and /run, the
/// cgroup v2 hierarchy and bpffs.
fn mount_system() -> anyhow::Result<()> {
    let mounts: [(&str, &str, &str, &str); 8] = [
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("devtmpfs", "/dev", "devtmpfs", ""),
        ("tmpfs", "/tmp", "tmpfs", "mode=1777"),
        ("tmpfs", "/run", "tmpfs", "mode=755"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", ""),
        ("bpf", "/sys/fs/bpf", "bpf", ""),
        ("devpts", "/dev/pts", "devpts", ""),
    ];
    for (source, target, fstype, data) in mounts {
        std::fs::create_dir_all(target)?;
        let c = |s: &str| CString::new(s).expect("no NUL");
        let (source, target_c, fstype, data) = (c(source), c(target), c(fstype), c(data));
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            anyhow::bail!("mount {target}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn load_module(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // SAFETY: a valid fd and an empty parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            anyhow::bail!("load module {}: {err}", path.display());
        }
    }
    console(&format!("egress-vm-init: loaded {}", path.display()));
    Ok(())
}

/// A setup command (`ip link set lo up`); it must succeed.
fn run_setup(command: &str) -> anyhow::Result<()> {
    let mut words = command.split_whitespace();
    let program = words.next().unwrap_or_default();
    let status = Command::new(program).args(words).status()?;
    anyhow::ensure!(status.success(), "`{command}` failed: {status}");
    Ok(())
}

/// Runs one test binary (`<path> [args…]`), streaming its output to the console and reporting
/// every test's outcome.
fn run_tests(command: &str, filter: Option<&str>, results: &mut Results) {
    let mut words = command.split_whitespace();
    let path = words.next().unwrap_or_default();
    let name = Path::new(path)
        .file_name()
        .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned());
    let mut cmd = Command::new(path);
    cmd.args(words);
    // A filter naming the binary runs all of it; otherwise it filters test names.
    if let Some(f) = filter.filter(|f| !name.contains(f)) {
        cmd.arg(f);
    }
    console(&format!("egress-vm-init: running {command}"));
    let started = Instant::now();
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            results.line(&format!("binary {name} exit=spawn-error:{e} seconds=0"));
            return;
        }
    };
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        console(&line);
        if let Some((test, outcome)) = parse_test_line(&line) {
            results.line(&format!("test {name} {test} {outcome}"));
        }
    }
    let code = child
        .wait()
        .ok()
        .and_then(|s| s.code())
        .map_or_else(|| "signal".to_owned(), |c| c.to_string());
    results.line(&format!(
        "binary {name} exit={code} seconds={:.1}",
        started.elapsed().as_secs_f64()
    ));
}

/// `test <name> ... ok|FAILED|ignored` as libtest prints it.
fn parse_test_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    let (name, outcome) = rest.rsplit_once(" ... ")?;
    let outcome = outcome.split_whitespace().next()?;
    matches!(outcome, "ok" | "FAILED" | "ignored").then_some((name, outcome))
}

/// The result lines, on the second serial port when there is one (else the console).
struct Results(Option<File>);

impl Results {
    fn open() -> Self {
        Self(OpenOptions::new().write(true).open(RESULTS_PORT).ok())
    }

    fn line(&mut self, text: &str) {
        let line = format!("{MARK} {text}\n");
        match &mut self.0 {
            Some(port) => {
                let _ = port.write_all(line.as_bytes());
                let _ = port.flush();
            }
            None => eprint!("{line}"),
        }
    }
}
