//! `cargo xtask vm-test`: the privileged end-to-end suite on several kernels, each booted
//! under QEMU with an initramfs whose init runs the tests and reports one line per test.
//!
//! Steps: build the agent, the probe, the guest init and the test binaries (the same ones
//! `cargo test` runs on the host); fetch the matrix's kernels (see [`kernels`]); pack one
//! initramfs per kernel (its modules differ); find out whether KVM works; boot the kernels,
//! a few at a time, streaming their consoles; print a table; fail if any kernel failed, or if
//! fewer kernels ran than were asked for.

mod initramfs;
mod kernels;
mod qemu;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, bail};
use initramfs::Initramfs;
use kernels::{Apt, Kernel, MATRIX};
use qemu::{Accel, BootSpec};

/// Test binaries (tests/tests/*.rs) left out of the VM runs, with the reason.
const HOST_ONLY: [(&str, &str); 0] = [];

/// Kernel modules the test bed needs that Debian builds as modules.
const MODULES: [&str; 1] = ["veth"];

/// System tools the tests run, copied from the host with their libraries.
const TOOLS: [&str; 2] = ["ip", "curl"];

#[derive(clap::Args, Clone, Debug)]
pub struct VmTestArgs {
    /// Kernel series to test (repeatable): 5.10, 6.1, 6.12, newest. Default: all of them.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// VMs booted at once (default: as many as the host's cores hold at --cpus each; more
    /// only oversubscribe an emulated guest).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// CPUs per VM.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// kvm, tcg, or auto (KVM when a probe boot proves it works).
    #[arg(long, default_value = "auto")]
    pub accel: String,
    /// Only the test binaries (tests/tests/*.rs) or tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Minutes one VM may run before it is stopped and counted as failed.
    #[arg(long, default_value_t = 30)]
    pub timeout_minutes: u64,
    /// Do not echo the guests' consoles (they are still saved under target/vm-test/).
    #[arg(long)]
    pub quiet: bool,
    /// Succeed even if some kernels could not be obtained (they are reported as skipped).
    #[arg(long)]
    pub allow_skipped: bool,
}

struct Planned {
    series: String,
    kernel: Result<Kernel, String>,
}

struct Report {
    series: String,
    package: String,
    release: String,
    accel: Option<Accel>,
    /// (binary, test, outcome)
    tests: Vec<(String, String, String)>,
    /// (binary, exit, seconds)
    binaries: Vec<(String, String, String)>,
    seconds: f64,
    problem: Option<String>,
}

impl Report {
    fn failed_tests(&self) -> Vec<String> {
        self.tests
            .iter()
            .filter(|(_, _, o)| o == "FAILED")
            .map(|(b, t, _)| format!("{b}::{t}"))
            .collect()
    }

    fn passed(&self) -> bool {
        self.problem.is_none()
    }
}

pub fn run(root: &Path, args: &VmTestArgs) -> anyhow::Result<()> {
    let work = root.join("target/vm-test");
    std::fs::create_dir_all(&work)?;
    let selected = select(&args.kernels)?;

    let binaries = build(root)?;
    let apt = Apt::new(&work.join("apt"))?;
    let updated = apt.update();
    let planned: Vec<Planned> = selected
        .iter()
        .map(|&(series, suite)| Planned {
            series: series.to_owned(),
            kernel: match &updated {
                Err(e) => Err(e.to_string()),
                Ok(()) => apt
                    .kernel(series, suite, &work.join("kernels"))
                    .map_err(|e| format!("{e:#}")),
            },
        })
        .collect();

    let mut ready = Vec::new();
    for p in &planned {
        match &p.kernel {
            Ok(kernel) => {
                let initrd = work.join(format!("initramfs-{}.cpio", p.series));
                pack(&binaries, kernel, &work.join(format!("stage-{}", p.series)))?
                    .write(&initrd)?;
                ready.push((kernel.clone(), initrd));
            }
            Err(e) => eprintln!("vm-test: skipping {}: {e}", p.series),
        }
    }

    let accel = match args.accel.as_str() {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        "auto" => match ready.first() {
            Some((k, initrd)) => qemu::detect(&k.vmlinuz, initrd, &work),
            None => Accel::Tcg,
        },
        other => bail!("--accel {other}: expected kvm, tcg or auto"),
    };

    let reports = Mutex::new(Vec::new());
    let queue = Mutex::new(ready.into_iter());
    std::thread::scope(|s| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let jobs = args
            .jobs
            .unwrap_or(cores / args.cpus.max(1) as usize)
            .max(1);
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let next = queue.lock().expect("queue").next();
                    let Some((kernel, initrd)) = next else { break };
                    let report = boot_and_judge(&kernel, &initrd, accel, args, &work, &binaries);
                    eprintln!(
                        "vm-test: {} {} after {:.0}s",
                        report.series,
                        report.problem.as_deref().unwrap_or("passed"),
                        report.seconds
                    );
                    reports.lock().expect("reports").push(report);
                }
            });
        }
    });
    let mut reports = reports.into_inner().expect("reports");
    for p in &planned {
        if let Err(e) = &p.kernel {
            reports.push(Report {
                series: p.series.clone(),
                package: "-".into(),
                release: "-".into(),
                accel: None,
                tests: Vec::new(),
                binaries: Vec::new(),
                seconds: 0.0,
                problem: Some(format!("skipped: {e}")),
            });
        }
    }
    let order = |s: &str| selected.iter().position(|(n, _)| *n == s);
    reports.sort_by_key(|r| order(&r.series));
    for r in reports.iter().filter(|r| r.accel.is_some() && !r.passed()) {
        print_failure_excerpt(&work.join(format!("{}.console", r.series)), &r.series);
    }
    print_table(&reports);

    let skipped = planned.iter().filter(|p| p.kernel.is_err()).count();
    let failed = reports
        .iter()
        .filter(|r| r.accel.is_some() && !r.passed())
        .count();
    if failed > 0 {
        bail!("{failed} of {} kernels failed", reports.len() - skipped);
    }
    if skipped > 0 && !args.allow_skipped {
        bail!(
            "{skipped} of {} configured kernels could not be obtained (see above); \
             --allow-skipped accepts that",
            reports.len()
        );
    }
    if skipped == reports.len() {
        bail!("no kernel ran");
    }
    Ok(())
}

fn select(wanted: &[String]) -> anyhow::Result<Vec<(&'static str, kernels::Suite)>> {
    if wanted.is_empty() {
        return Ok(MATRIX.to_vec());
    }
    wanted
        .iter()
        .map(|w| {
            MATRIX
                .iter()
                .find(|(series, _)| series == w)
                .copied()
                .with_context(|| {
                    let known: Vec<&str> = MATRIX.iter().map(|(s, _)| *s).collect();
                    format!("unknown kernel series {w}; known: {}", known.join(", "))
                })
        })
        .collect()
}

/// What goes into every initramfs, built on the host.
struct Binaries {
    init: PathBuf,
    agent: PathBuf,
    probe: PathBuf,
    /// The benchmark binary, whose `watch` the reload test runs in the cgroup.
    bench: PathBuf,
    /// (name, path) of each end-to-end test binary.
    tests: Vec<(String, PathBuf)>,
}

fn build(root: &Path) -> anyhow::Result<Binaries> {
    crate::cargo(root, &["build", "--bins"])?;
    let out = crate::cargo_command(root)
        .args([
            "test",
            "--no-run",
            "--message-format=json",
            "--package",
            "egress-tests",
            "--tests",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "building the test binaries failed");
    let mut tests = Vec::new();
    for message in cargo_metadata::Message::parse_stream(out.stdout.as_slice()) {
        if let cargo_metadata::Message::CompilerArtifact(a) = message?
            && a.profile.test
            && a.target.kind.iter().any(|k| k.to_string() == "test")
            && let Some(exe) = a.executable
            && !HOST_ONLY.iter().any(|(n, _)| *n == a.target.name)
        {
            tests.push((a.target.name.clone(), exe.into_std_path_buf()));
        }
    }
    tests.sort();
    anyhow::ensure!(!tests.is_empty(), "no end-to-end test binaries were built");
    let bin = root.join("target/debug");
    Ok(Binaries {
        init: bin.join("egress-vm-init"),
        agent: bin.join("egress-agent"),
        probe: bin.join("egress-probe"),
        bench: bin.join("egress-bench"),
        tests,
    })
}

/// The initramfs for `kernel`: everything in [`Binaries`], stripped of debug information
/// (they are several times smaller without it), the tools, the modules and the plan.
fn pack(binaries: &Binaries, kernel: &Kernel, stage: &Path) -> anyhow::Result<Initramfs> {
    std::fs::create_dir_all(stage)?;
    let strip = |source: &Path, name: &str| -> anyhow::Result<PathBuf> {
        let out = stage.join(name);
        let fresh = std::fs::metadata(&out)
            .and_then(|m| m.modified())
            .ok()
            .zip(std::fs::metadata(source).and_then(|m| m.modified()).ok())
            .is_some_and(|(o, s)| o >= s);
        if !fresh {
            crate::run(
                Command::new("strip")
                    .arg("--strip-debug")
                    .arg("-o")
                    .arg(&out)
                    .arg(source),
            )?;
        }
        Ok(out)
    };
    let mut fs = Initramfs::new();
    fs.executable("/init", &strip(&binaries.init, "init")?)?;
    fs.executable(
        "/vm/bin/egress-agent",
        &strip(&binaries.agent, "egress-agent")?,
    )?;
    fs.executable(
        "/vm/bin/egress-probe",
        &strip(&binaries.probe, "egress-probe")?,
    )?;
    fs.executable(
        "/vm/bin/egress-bench",
        &strip(&binaries.bench, "egress-bench")?,
    )?;
    let mut plan = String::new();
    for module in MODULES {
        for path in
            initramfs::module_with_dependencies(&kernel.modules, module, &stage.join("modules"))?
        {
            let name = path
                .file_name()
                .expect("file")
                .to_string_lossy()
                .into_owned();
            let guest = format!("/vm/modules/{name}");
            fs.file(&guest, &path, 0o644);
            plan.push_str(&format!("module {guest}\n"));
        }
    }
    let mut ip = None;
    for tool in TOOLS {
        let host = which(tool).with_context(|| format!("{tool} is not installed"))?;
        let guest = host.display().to_string();
        fs.executable(&guest, &host)?;
        if tool == "ip" {
            ip = Some(guest);
        }
    }
    plan.push_str(&format!(
        "run {} link set lo up\n",
        ip.expect("ip is a tool")
    ));
    for (key, value) in [
        (
            "PATH",
            "/vm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("EGRESS_AGENT_BIN", "/vm/bin/egress-agent"),
        ("EGRESS_PROBE_BIN", "/vm/bin/egress-probe"),
        ("EGRESS_BENCH_BIN", "/vm/bin/egress-bench"),
        ("RUST_BACKTRACE", "1"),
        ("HOME", "/tmp"),
        // An emulated agent start takes seconds: 20 kills there, the full 100 on the host.
        ("EGRESS_CHAOS_KILLS", "20"),
        // And a 100k-entry reload takes minutes there: 10k entries per policy.
        ("EGRESS_RELOAD_ENTRIES", "10000"),
    ] {
        plan.push_str(&format!("env {key}={value}\n"));
    }
    for (name, path) in &binaries.tests {
        let guest = format!("/vm/tests/{name}");
        fs.executable(&guest, &strip(path, &format!("test-{name}"))?)?;
        plan.push_str(&format!("test {guest} --test-threads=2\n"));
    }
    fs.text("/vm/plan", plan);
    fs.text("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n");
    fs.text("/etc/resolv.conf", "nameserver 127.0.0.1\n");
    fs.text("/etc/nsswitch.conf", "hosts: files dns\n");
    fs.text("/etc/passwd", "root:x:0:0:root:/tmp:/bin/sh\n");
    fs.text("/etc/group", "root:x:0:\n");
    Ok(fs)
}

fn boot_and_judge(
    kernel: &Kernel,
    initrd: &Path,
    accel: Accel,
    args: &VmTestArgs,
    work: &Path,
    binaries: &Binaries,
) -> Report {
    let series = &kernel.series;
    eprintln!(
        "vm-test: booting {series} ({}) under {accel}",
        kernel.package
    );
    let spec = BootSpec {
        vmlinuz: &kernel.vmlinuz,
        initrd,
        accel,
        cpus: args.cpus,
        memory_mib: 2048,
        cmdline: args
            .filter
            .iter()
            .map(|f| format!("egress.filter={f}"))
            .collect(),
        timeout: Duration::from_secs(args.timeout_minutes * 60),
        console_log: work.join(format!("{series}.console")),
        results_file: work.join(format!("{series}.results")),
        echo: (!args.quiet).then(|| format!("[{series}] ")),
    };
    let mut report = Report {
        series: series.clone(),
        package: kernel.package.clone(),
        release: "?".into(),
        accel: Some(accel),
        tests: Vec::new(),
        binaries: Vec::new(),
        seconds: 0.0,
        problem: None,
    };
    let outcome = match qemu::boot(&spec) {
        Ok(o) => o,
        Err(e) => {
            report.problem = Some(format!("{e:#}"));
            return report;
        }
    };
    report.seconds = outcome.elapsed.as_secs_f64();
    let mut done = false;
    for line in &outcome.results {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["kernel", release] => report.release = (*release).to_owned(),
            ["test", bin, test, outcome] => {
                report
                    .tests
                    .push(((*bin).into(), (*test).into(), (*outcome).into()))
            }
            ["binary", bin, exit, seconds] => report.binaries.push((
                (*bin).into(),
                exit.trim_start_matches("exit=").into(),
                seconds.trim_start_matches("seconds=").into(),
            )),
            ["done"] => done = true,
            _ => {}
        }
    }
    let failed = report.failed_tests();
    let bad_exits: Vec<String> = report
        .binaries
        .iter()
        .filter(|(_, exit, _)| exit != "0")
        .map(|(b, exit, _)| format!("{b} exited {exit}"))
        .collect();
    let missing: Vec<&str> = binaries
        .tests
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !report.binaries.iter().any(|(b, _, _)| b == n))
        .collect();
    report.problem = if outcome.timed_out {
        Some(format!("timed out after {:.0}s", report.seconds))
    } else if !done {
        Some(format!(
            "the guest stopped before reporting `done` (see {})",
            spec.console_log.display()
        ))
    } else if !failed.is_empty() {
        Some(format!("failed: {}", failed.join(", ")))
    } else if !bad_exits.is_empty() {
        Some(bad_exits.join(", "))
    } else if !missing.is_empty() {
        Some(format!("did not run: {}", missing.join(", ")))
    } else if report.tests.is_empty() {
        Some("no test ran".into())
    } else {
        None
    };
    report
}

/// What a failed kernel's console says around its first panic (or its end), so that a CI
/// log shows the cause without the console file.
fn print_failure_excerpt(console: &Path, series: &str) {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("panicked at"))
        .unwrap_or(lines.len().saturating_sub(60));
    eprintln!(
        "---- {series}: {} (from line {}) ----",
        console.display(),
        start + 1
    );
    for line in lines.iter().skip(start).take(60) {
        eprintln!("[{series}] {line}");
    }
}

fn print_table(reports: &[Report]) {
    println!();
    println!(
        "{:<8} {:<28} {:<5} {:>6} {:>6} {:>6} {:>7}  RESULT",
        "KERNEL", "RELEASE", "ACCEL", "TESTS", "PASSED", "FAILED", "TIME"
    );
    for r in reports {
        let count = |o: &str| r.tests.iter().filter(|(_, _, x)| x == o).count();
        println!(
            "{:<8} {:<28} {:<5} {:>6} {:>6} {:>6} {:>6.0}s  {}",
            r.series,
            r.release,
            r.accel.map_or("-".to_owned(), |a| a.to_string()),
            r.tests.len(),
            count("ok"),
            count("FAILED"),
            r.seconds,
            r.problem.as_deref().unwrap_or("pass"),
        );
    }
    for r in reports.iter().filter(|r| r.package != "-") {
        println!("{:<8} {}", r.series, r.package);
    }
    let mut bins: Vec<&str> = reports
        .iter()
        .flat_map(|r| r.binaries.iter().map(|(b, _, _)| b.as_str()))
        .collect();
    bins.sort_unstable();
    bins.dedup();
    if !bins.is_empty() {
        println!();
        print!("{:<8}", "KERNEL");
        for b in &bins {
            print!(" {b:>16}");
        }
        println!();
        for r in reports.iter().filter(|r| !r.binaries.is_empty()) {
            print!("{:<8}", r.series);
            for b in &bins {
                let cell = r.binaries.iter().find(|(x, _, _)| x == b).map_or(
                    "-".to_owned(),
                    |(_, exit, secs)| {
                        let tests = r.tests.iter().filter(|(x, _, _)| x == b);
                        let (n, ok) = tests.fold((0, 0), |(n, ok), (_, _, o)| {
                            (n + 1, ok + usize::from(o == "ok"))
                        });
                        let mark = if exit == "0" { "" } else { " ✗" };
                        format!("{ok}/{n} {secs}s{mark}")
                    },
                );
                print!(" {cell:>16}");
            }
            println!();
        }
    }
    println!();
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

impl Default for VmTestArgs {
    /// What `cargo xtask test` runs: every kernel of the matrix, none may be missing.
    fn default() -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: VmTestArgs,
        }
        Wrapper::parse_from(["vm-test", "--quiet"]).args
    }
}
