//! Command-line interface: one module per subcommand.

mod check;
mod detach;
mod events;
mod explain;
mod learn;
mod maps;
mod preflight;
mod run;
mod status;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

/// Default directory of the agent's pins (on bpffs; mounted there if need be).
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/egress-agent";
/// Default directory of the agent's status file.
pub const DEFAULT_STATE_DIR: &str = "/run/egress-agent";

#[derive(Parser)]
#[command(
    name = "egress-agent",
    version,
    about = "eBPF egress enforcer: allow-listed destinations only, refused in the kernel at connect()"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once; boxing buys nothing"
)]
pub enum Command {
    /// Load the programs, attach them to a cgroup and enforce a policy file.
    Run(run::Args),
    /// Validate a policy file and print what it would enforce.
    Check(check::Args),
    /// Print what the kernel enforces now, read from the pinned maps.
    Maps(maps::Args),
    /// Print the running agent's status.
    Status(status::Args),
    /// Print the denied flows (who, where to, why, how often), from the running agent.
    Events(events::Args),
    /// Say whether the kernel allows a destination, and which entry (or none) decides.
    Explain(explain::ExplainArgs),
    /// List the entries, hostnames and rules behind an address.
    WhoHas(explain::WhoHasArgs),
    /// Print a proposed policy: the current one plus what was denied (or would have been).
    Learn(learn::Args),
    /// Remove the programs and maps: enforcement stops (refused while an agent runs).
    Detach(detach::Args),
    /// Check what this node needs to enforce (kernel, cgroup v2, bpf(2), bpffs,
    /// capabilities); exits non-zero when something is missing.
    Preflight(preflight::Args),
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::run(args),
        Command::Maps(args) => maps::run(args),
        Command::Status(args) => status::run(args),
        Command::Events(args) => events::run(args),
        Command::Explain(args) => explain::explain(args),
        Command::WhoHas(args) => explain::who_has(args),
        Command::Learn(args) => learn::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Preflight(args) => preflight::run(args),
    }
}

pub fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // kube's client logs every retried request of an API outage as an error; the pod
    // watcher reports an outage once, and its end. `RUST_LOG=kube_client=debug` shows them.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube")) {
        filter = filter.add_directive("kube_client=off".parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `--bpffs` as every subcommand takes it.
#[derive(clap::Args)]
pub struct BpffsArg {
    /// Directory on bpffs holding the agent's pinned programs and maps.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,
}

/// Formats unix seconds as UTC RFC 3339 and relative to now.
pub fn when(unix: u64) -> String {
    if unix == 0 {
        return "-".into();
    }
    let now = egress_agent::agent::now();
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    let rel = if unix == now {
        "now".to_owned()
    } else if unix > now {
        format!(
            "in {}",
            humantime::format_duration(std::time::Duration::from_secs(unix - now))
        )
    } else {
        format!(
            "{} ago",
            humantime::format_duration(std::time::Duration::from_secs(now - unix))
        )
    };
    format!("{} ({rel})", humantime::format_rfc3339_seconds(at))
}
