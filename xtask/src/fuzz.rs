//! `cargo xtask fuzz`: the coverage-guided fuzz targets of `tests/fuzz` (cargo fuzz,
//! libFuzzer), each for a bounded time, after replaying every saved regression input.
//!
//! Inputs: `tests/fuzz/seeds/<target>` (committed starting points), a working corpus under
//! `target/fuzz/corpus/<target>` that grows from run to run, and
//! `tests/fuzz/regressions/<target>`: inputs that once crashed a target, replayed first on
//! every run so that a fixed crash stays fixed. A new crash fails the run; libFuzzer leaves
//! the input in `target/fuzz/artifacts/<target>`, to be copied into `regressions/` with its
//! fix.
//!
//! The targets are built without a sanitizer (the code under test is safe Rust; a panic,
//! an overflow — debug assertions are on — or a timeout is what the fuzzer looks for) and
//! without the kernel programs (`AYA_BUILD_SKIP`: nothing here loads them).

use std::{path::Path, process::Command};

use anyhow::Context as _;
use clap::Args;

/// Every target, in `tests/fuzz/Cargo.toml`.
pub const TARGETS: [&str; 3] = ["policy", "dns_answer", "resolv_conf"];

#[derive(Args, Clone, Debug)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Only these targets (default: all).
    pub targets: Vec<String>,
}

impl Default for FuzzArgs {
    fn default() -> Self {
        Self {
            seconds: 20,
            targets: Vec::new(),
        }
    }
}

pub fn run(root: &Path, args: &FuzzArgs) -> anyhow::Result<()> {
    let fuzz_dir = root.join("tests/fuzz");
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    for t in &targets {
        anyhow::ensure!(
            TARGETS.contains(t),
            "no fuzz target `{t}` (have: {TARGETS:?})"
        );
    }
    crate::setup::cargo_fuzz(root)?;
    let build_dir = root.join("target/fuzz");
    let cargo_fuzz = |sub: &str| {
        let mut cmd = Command::new("cargo");
        cmd.args([
            "+nightly",
            "fuzz",
            sub,
            "--sanitizer",
            "none",
            "--debug-assertions",
        ])
        .arg("--fuzz-dir")
        .arg(&fuzz_dir)
        .arg("--target-dir")
        .arg(&build_dir)
        .env("AYA_BUILD_SKIP", "1")
        .env("PATH", crate::setup::path_with_tools(root))
        .current_dir(root);
        cmd
    };
    crate::run(&mut cargo_fuzz("build"))?;
    let mut summary = Vec::new();
    for target in targets {
        let corpus = build_dir.join("corpus").join(target);
        let artifacts = build_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        // Regressions first: each saved input must now pass.
        let regressions = fuzz_dir.join("regressions").join(target);
        let saved: Vec<_> = std::fs::read_dir(&regressions)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        if !saved.is_empty() {
            crate::run(
                cargo_fuzz("run")
                    .arg(target)
                    .args(&saved)
                    .args(["--", "-runs=1"]),
            )
            .with_context(|| format!("a saved regression input of `{target}` fails again"))?;
        }
        let seeds = fuzz_dir.join("seeds").join(target);
        let out = libfuzzer(
            cargo_fuzz("run")
                .arg(target)
                .arg(&corpus)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={}", args.seconds))
                .arg("-max_len=16384")
                .arg("-timeout=10")
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                .arg("-print_final_stats=1"),
        )
        .with_context(|| {
            format!(
                "fuzz target `{target}` found a crash: the input is in {}; add it to {} with the fix",
                artifacts.display(),
                regressions.display()
            )
        })?;
        let runs = stat(&out, "stat::number_of_executed_units").unwrap_or_default();
        let coverage = out
            .lines()
            .rev()
            .find_map(|l| l.split_whitespace().skip_while(|w| *w != "cov:").nth(1))
            .unwrap_or("?")
            .to_owned();
        let entries = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        summary.push(format!(
            "{target:<12} {runs:>10} runs in {:>4} s, {} regression inputs replayed, coverage {coverage} edges, corpus {entries} inputs, 0 crashes",
            args.seconds,
            saved.len()
        ));
    }
    println!("fuzz:");
    for line in summary {
        println!("  {line}");
    }
    Ok(())
}

/// Runs libFuzzer, which reports on stderr; on failure the end of its report is the error.
fn libfuzzer(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let tail: Vec<&str> = report.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!("{}", tail.join("\n"));
    }
    Ok(report)
}

fn stat(out: &str, name: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim_start_matches(':').trim().to_owned())
}
