//! Booting one kernel under QEMU with the test initramfs, streaming its console and collecting
//! the result lines the guest's init writes to the second serial port.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// How the guest CPU is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (needs /dev/kvm that works for these kernels).
    Kvm,
    /// QEMU's software emulation: slower, but boots everywhere.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

pub struct BootSpec<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Extra kernel command line words (`egress.filter=…`, `egress.probe=1`).
    pub cmdline: Vec<String>,
    pub timeout: Duration,
    /// Where the console and the result lines are kept.
    pub console_log: PathBuf,
    pub results_file: PathBuf,
    /// Console lines are echoed to stderr with this prefix; `None` keeps them quiet.
    pub echo: Option<String>,
}

pub struct BootOutcome {
    /// The guest's `EGRESS-VM …` lines, without the marker.
    pub results: Vec<String>,
    pub elapsed: Duration,
    pub timed_out: bool,
}

pub fn boot(spec: &BootSpec) -> anyhow::Result<BootOutcome> {
    let mut cmdline = vec![
        "console=ttyS0".to_owned(),
        // Any panic or oops ends the VM at once (with -no-reboot) instead of hanging.
        "panic=-1".to_owned(),
        "oops=panic".to_owned(),
        // `-cpu max` has RDRAND: the tests' TLS and DNS need entropy early.
        "random.trust_cpu=on".to_owned(),
        "rdinit=/init".to_owned(),
    ];
    cmdline.extend(spec.cmdline.iter().cloned());
    let _ = std::fs::remove_file(&spec.results_file);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-monitor", "none"]);
    match spec.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.arg("-smp")
        .arg(spec.cpus.to_string())
        .arg("-m")
        .arg(format!("{}M", spec.memory_mib))
        .arg("-kernel")
        .arg(spec.vmlinuz)
        .arg("-initrd")
        .arg(spec.initrd)
        .arg("-append")
        .arg(cmdline.join(" "))
        .args(["-chardev", "stdio,id=console,signal=off"])
        .args(["-serial", "chardev:console"])
        .arg("-serial")
        .arg(format!("file:{}", spec.results_file.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().context("start qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (done_tx, done_rx) = mpsc::channel();
    let mut log = std::fs::File::create(&spec.console_log)?;
    let echo = spec.echo.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            let _ = writeln!(log, "{line}");
            if let Some(prefix) = &echo {
                eprintln!("{prefix}{line}");
            }
        }
        let _ = done_tx.send(());
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let timed_out = done_rx.recv_timeout(spec.timeout).is_err();
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let _ = reader.join();
    let qemu_err = err_reader.join().unwrap_or_default();
    let elapsed = started.elapsed();
    let results = std::fs::read_to_string(&spec.results_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("EGRESS-VM "))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    if results.is_empty() && !status.success() && !timed_out {
        anyhow::bail!("qemu failed ({status}): {}", qemu_err.trim());
    }
    Ok(BootOutcome {
        results,
        elapsed,
        timed_out,
    })
}

/// KVM when /dev/kvm exists and a probe boot under it completes no slower than one under TCG;
/// TCG otherwise. (On nested hosts /dev/kvm can exist while guests abort or crawl under it.)
pub fn detect(vmlinuz: &Path, initrd: &Path, work: &Path) -> Accel {
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm_usable {
        eprintln!("vm-test: /dev/kvm is not usable; using TCG");
        return Accel::Tcg;
    }
    let probe = |accel: Accel| {
        let spec = BootSpec {
            vmlinuz,
            initrd,
            accel,
            cpus: 1,
            memory_mib: 1024,
            cmdline: vec!["egress.probe=1".to_owned()],
            timeout: Duration::from_secs(60),
            console_log: work.join(format!("probe-{accel}.console")),
            results_file: work.join(format!("probe-{accel}.results")),
            echo: None,
        };
        boot(&spec)
            .ok()
            .filter(|o| !o.timed_out && o.results.iter().any(|l| l == "done"))
            .map(|o| o.elapsed)
    };
    let (kvm, tcg) = std::thread::scope(|s| {
        let kvm = s.spawn(|| probe(Accel::Kvm));
        let tcg = s.spawn(|| probe(Accel::Tcg));
        (kvm.join().ok().flatten(), tcg.join().ok().flatten())
    });
    match (kvm, tcg) {
        (Some(k), Some(t)) if k <= t => {
            eprintln!("vm-test: probe boot took {k:.1?} under KVM, {t:.1?} under TCG; using KVM");
            Accel::Kvm
        }
        (Some(k), None) => {
            eprintln!("vm-test: probe boot took {k:.1?} under KVM and failed under TCG; using KVM");
            Accel::Kvm
        }
        (k, t) => {
            eprintln!(
                "vm-test: probe boot under KVM: {}; under TCG: {}; using TCG",
                k.map_or("failed".to_owned(), |d| format!("{d:.1?}")),
                t.map_or("failed".to_owned(), |d| format!("{d:.1?}"))
            );
            Accel::Tcg
        }
    }
}
