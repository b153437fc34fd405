//! `egress-bench`: what egress enforcement costs, measured side by side in one run.
//!
//! `egress-bench run [--quick]` (what `cargo xtask bench` runs, as root) builds a bench bed —
//! a "world" network namespace with a TCP server and a DNS server, client namespaces joined
//! to it by veth pairs, one cgroup per configuration — and measures:
//! - per-`connect()` cost ([`connect`]): a UDP connect loop and TCP connects to the world,
//!   IPv4 and IPv6, for every configuration (bare, an empty program, the agent with 10 to 1M
//!   entries, an nftables set, an iptables chain), in interleaved rounds;
//! - policy load ([`load`]): agent start to policy applied, policy change to enforcement;
//! - agent memory ([`memory`]) with 10k hostnames resolved to 100k addresses.
//!
//! It then prints the figures, the command behind each, and each target of issue 7 as MET or
//! MISSED. The other subcommands are the workers the bench (and the reload test) start in
//! an enforced cgroup: see [`worker`].

mod bed;
mod connect;
mod emptyprog;
mod filters;
mod load;
mod memory;
mod policy;
mod profile;
mod report;
mod stats;
mod worker;

use anyhow::{Context as _, bail};

fn usage() -> ! {
    eprintln!(
        "usage: egress-bench run [--quick] [--no-1m] [--only connect,load,memory]\n       \
         egress-bench loop udp|tcp ADDR N\n       \
         egress-bench flip ADDR\n       \
         egress-bench watch STOPFILE both=ADDR,... neither=ADDR,..."
    );
    std::process::exit(2)
}

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Interleaved rounds of every connect configuration.
    pub rounds: usize,
    /// UDP connects per round and configuration.
    pub udp_iters: u64,
    /// TCP connects per round and configuration.
    pub tcp_iters: u64,
    /// Measure the agent with 1M entries per map too.
    pub million: bool,
    /// Agent starts timed (policy load).
    pub load_rounds: usize,
    /// The sections to run (`--only connect,load,memory`); all by default.
    pub only: Option<Vec<String>>,
}

impl Settings {
    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == section))
    }
}

impl Settings {
    fn full() -> Self {
        Self {
            rounds: 31,
            udp_iters: 50_000,
            tcp_iters: 2_000,
            million: true,
            load_rounds: 5,
            only: None,
        }
    }

    fn quick() -> Self {
        Self {
            rounds: 7,
            udp_iters: 20_000,
            tcp_iters: 500,
            million: false,
            load_rounds: 2,
            only: None,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };
    match cmd.as_str() {
        "run" => {
            let mut settings = Settings::full();
            let mut only = None;
            let mut rest = args[1..].iter();
            while let Some(a) = rest.next() {
                match a.as_str() {
                    "--only" => {
                        let list = rest.next().context("--only SECTION,...")?;
                        only = Some(list.split(',').map(str::to_owned).collect());
                    }
                    "--quick" => settings = Settings::quick(),
                    "--no-1m" => settings.million = false,
                    "--1m" => settings.million = true,
                    other => bail!("unknown option {other}"),
                }
            }
            settings.only = only;
            egress_tests::require_root();
            run(settings, &args)
        }
        "loop" => {
            let [_, proto, addr, n] = &args[..] else {
                usage()
            };
            let addr = addr.parse().context("ADDR")?;
            let n = n.parse().context("N")?;
            worker::connect_loop(proto, addr, n)
        }
        "flip" => {
            let [_, addr] = &args[..] else { usage() };
            worker::flip(addr.parse().context("ADDR")?)
        }
        "watch" => worker::watch(&args[1..]),
        _ => usage(),
    }
}

fn run(settings: Settings, args: &[String]) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    eprintln!("bench: {settings:?}");
    let bed = bed::Bed::new()?;
    let mut report = report::Report::new(format!("egress-bench {}", args.join(" ")));
    // One after the other: the connect rounds' agents (up to 2M entries) are gone before
    // the load is timed and the memory read.
    if settings.runs("connect") {
        connect::run(&bed, &settings, &mut report)?;
    }
    if settings.runs("load") {
        load::run(&bed, &settings, &mut report)?;
    }
    if settings.runs("memory") {
        memory::run(&bed, &mut report)?;
    }
    report.print();
    eprintln!("bench: done in {:.0?}", started.elapsed());
    Ok(())
}
