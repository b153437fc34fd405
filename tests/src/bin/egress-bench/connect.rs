//! Per-`connect()` cost: every configuration measured in the same rounds, in an order
//! shuffled per round, each round a fresh worker process in the configuration's cgroup.

use std::{process::Command, time::Instant};

use anyhow::Context as _;
use egress_tests::{cgroup::TestCgroup, pod::Pod};

use crate::{
    Settings,
    bed::{Bed, Client, PORT, RunningAgent},
    emptyprog, filters,
    policy::{self, TARGET_V4, TARGET_V6},
    report::Report,
    stats::{iqr, median, paired_diff, paired_ratio},
};

/// What a worker measures: protocol and family.
#[derive(Clone, Copy)]
struct Kind {
    proto: &'static str,
    v6: bool,
}

const KINDS: [Kind; 4] = [
    Kind {
        proto: "udp",
        v6: false,
    },
    Kind {
        proto: "udp",
        v6: true,
    },
    Kind {
        proto: "tcp",
        v6: false,
    },
    Kind {
        proto: "tcp",
        v6: true,
    },
];

impl Kind {
    fn addr(self) -> String {
        if self.v6 {
            format!("[{TARGET_V6}]:{PORT}")
        } else {
            format!("{TARGET_V4}:{PORT}")
        }
    }

    fn title(self) -> String {
        let family = if self.v6 { "IPv6" } else { "IPv4" };
        match self.proto {
            "udp" => format!("UDP connect() loop, {family}: ns per connect()"),
            _ => format!(
                "TCP connect to another namespace (veth), {family}: ns per socket+connect+close"
            ),
        }
    }
}

/// One configuration: where its workers run, and what keeps it in force.
struct Setup {
    /// First: dropped (and detached) before its cgroup is removed.
    _agent: Option<RunningAgent>,
    name: String,
    cgroup: TestCgroup,
    pod: Pod,
    ns: String,
}

/// The agent's entry counts measured (in all: half IPv4, half IPv6).
fn entry_counts(settings: &Settings) -> Vec<usize> {
    let mut n = vec![10, 1_000, 100_000];
    if settings.million {
        n.push(1_000_000);
    }
    n
}

fn label(n: usize) -> String {
    match n {
        1_000_000 => "1M".into(),
        n if n >= 1000 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn worker_command(setup: &Setup, kind: Kind, iters: u64) -> (Command, String) {
    let exe = std::env::current_exe().expect("own executable");
    let args = [
        "loop".to_owned(),
        kind.proto.to_owned(),
        kind.addr(),
        iters.to_string(),
    ];
    let mut cmd = setup.pod.command_in(&setup.cgroup.pod(), &exe);
    cmd.args(&args);
    let shown = format!(
        "sh -c 'echo $$ > {} && exec ip netns exec {} {} {}'",
        setup.cgroup.pod().join("cgroup.procs").display(),
        setup.ns,
        exe.display(),
        args.join(" ")
    );
    (cmd, shown)
}

fn measure(setup: &Setup, kind: Kind, iters: u64) -> anyhow::Result<f64> {
    let (mut cmd, shown) = worker_command(setup, kind, iters);
    let out = cmd.output().with_context(|| format!("run {shown}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{} ({}): {}",
        shown,
        setup.name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn plain(bed: &Bed, client: &Client, name: &str, tag: &str) -> anyhow::Result<Setup> {
    let cgroup = bed.cgroup(tag)?;
    Ok(Setup {
        _agent: None,
        name: name.to_owned(),
        pod: client.pod(&cgroup),
        ns: client.ns.name.clone(),
        cgroup,
    })
}

fn max_entries(n: usize) -> u32 {
    // Room for a family's half of the entries, the DNS resolver's, and nothing near the
    // limit.
    ((n / 2 + 16).next_power_of_two() as u32).max(65_536)
}

pub fn run(bed: &Bed, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let pod_client = bed.client()?;
    let nft_client = bed.client()?;
    let ipt_client = bed.client()?;
    let mut setups = vec![plain(bed, &pod_client, "bare (no program)", "bare")?];
    let empty = plain(bed, &pod_client, "empty program (floor)", "empty")?;
    emptyprog::attach(&empty.cgroup.enforced)?;
    setups.push(empty);
    let mut notes = Vec::new();
    for n in entry_counts(settings) {
        let mut s = plain(
            bed,
            &pod_client,
            &format!("agent, {} entries", label(n)),
            &format!("agent{n}"),
        )?;
        let text = policy::entries(n);
        let max = max_entries(n).to_string();
        let started = Instant::now();
        let mut agent = bed.agent(
            &format!("connect{n}"),
            &s.cgroup,
            &text,
            &["--max-entries", &max, "--resolve-wait", "1s"],
        )?;
        let status = agent.agent.wait_ready(std::time::Duration::from_secs(600));
        let took = started.elapsed();
        anyhow::ensure!(
            status.entries.v4 >= n / 2 && status.entries.v6 >= n / 2,
            "agent with {n} entries holds {:?}",
            status.entries
        );
        notes.push(format!(
            "agent, {} entries: {} IPv4 + {} IPv6 entries ({} KiB policy file, {}), started and applied in {:.2} s: {}",
            label(n),
            status.entries.v4,
            status.entries.v6,
            text.len() / 1024,
            if n / 2 * 2 > policy::PER_DOCUMENT {
                "ServiceEntry documents"
            } else {
                "a native EgressPolicy"
            },
            took.as_secs_f64(),
            agent.command
        ));
        eprintln!("bench: {}", notes.last().unwrap());
        s._agent = Some(agent);
        setups.push(s);
    }
    let nft = plain(
        bed,
        &nft_client,
        &format!("nftables sets, {} addresses", label(filters::NFT_SET)),
        "nft",
    )?;
    notes.push(filters::nftables(bed, &nft_client)?);
    setups.push(nft);
    let ipt = plain(
        bed,
        &ipt_client,
        &format!("iptables chain, {} rules", label(filters::IPT_RULES)),
        "ipt",
    )?;
    notes.push(filters::iptables(bed, &ipt_client)?);
    setups.push(ipt);

    // Every configuration must reach the target before anything is timed.
    for s in &setups {
        for kind in KINDS {
            measure(s, kind, 10).with_context(|| format!("{} cannot reach the target", s.name))?;
        }
    }

    // results[setup][kind] = ns per operation, one value per round.
    let mut results = vec![vec![Vec::new(); KINDS.len()]; setups.len()];
    let mut order: Vec<usize> = (0..setups.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..settings.rounds {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            for (k, kind) in KINDS.iter().enumerate() {
                let iters = if kind.proto == "udp" {
                    settings.udp_iters
                } else {
                    settings.tcp_iters
                };
                results[i][k].push(measure(&setups[i], *kind, iters)?);
            }
        }
        eprintln!(
            "bench: connect round {}/{} done",
            round + 1,
            settings.rounds
        );
    }

    let (bare, floor) = (0, 1);
    for (k, kind) in KINDS.iter().enumerate() {
        report.table(
            &kind.title(),
            &[
                "configuration",
                "ns (median)",
                "IQR",
                "ratio to bare",
                "ns above floor",
            ],
        );
        for (i, s) in setups.iter().enumerate() {
            let iters = if kind.proto == "udp" {
                settings.udp_iters
            } else {
                settings.tcp_iters
            };
            let (_, shown) = worker_command(s, *kind, iters);
            let x = &results[i][k];
            report.row(
                vec![
                    s.name.clone(),
                    format!("{:.0}", median(x)),
                    format!("{:.0}", iqr(x)),
                    format!("{:.3}", paired_ratio(x, &results[bare][k])),
                    if i == bare {
                        "-".into()
                    } else {
                        format!("{:+.0}", paired_diff(x, &results[floor][k]))
                    },
                ],
                shown,
            );
        }
        report.note(format!(
            "{} rounds; each row's figure is the median over rounds, ratio and difference paired per round with bare / the floor",
            settings.rounds
        ));
        if kind.proto == "udp" {
            report.note(
                "(a UDP connect() sends no packet: nftables and iptables never see it, the bare cost is theirs)"
                    .into(),
            );
        }
    }
    report.table("Configurations", &["setup"]);
    for n in notes {
        report.row(vec![n.split(':').next().unwrap_or_default().to_owned()], n);
    }

    targets(&setups, &results, report);
    run_time(&setups, report)?;
    Ok(())
}

/// The programs' own run time per connect (BPF statistics): the floor's and each agent's,
/// over 1M UDP connects per family.
fn run_time(setups: &[Setup], report: &mut Report) -> anyhow::Result<()> {
    const LOOPS: u64 = 1_000_000;
    /// Spread of the agents' figures within which the cost is called flat.
    const FLAT_NS: f64 = 10.0;
    let measured: Vec<&Setup> = setups
        .iter()
        .filter(|s| s.name.starts_with("empty") || s.name.starts_with("agent"))
        .collect();
    report.table(
        "BPF run time per connect (kernel.bpf_stats_enabled=1, 1M UDP connects per family)",
        &["program", "ns per run", "above floor"],
    );
    for (kind, attach) in [
        (KINDS[0], "cgroup_inet4_connect"),
        (KINDS[1], "cgroup_inet6_connect"),
    ] {
        let family = if kind.v6 { "IPv6" } else { "IPv4" };
        let mut floor = None;
        let mut above = Vec::new();
        for s in &measured {
            let ids = crate::profile::attached(&s.cgroup.enforced, attach)?;
            let per_run = crate::profile::ns_per_run(&ids, || measure(s, kind, LOOPS).map(|_| ()))?;
            let (_, shown) = worker_command(s, kind, LOOPS);
            let diff = floor.map(|f| per_run - f);
            report.row(
                vec![
                    format!("{}: {attach} (ids {ids:?})", s.name),
                    format!("{per_run:.1}"),
                    diff.map_or("-".into(), |d| format!("{d:+.1}")),
                ],
                format!(
                    "bpftool -j prog show id <id> (run_time_ns, run_cnt) before and after: {shown}"
                ),
            );
            match diff {
                None => floor = Some(per_run),
                Some(d) => above.push((s.name.clone(), d)),
            }
        }
        if let Some((_, d)) = above.iter().find(|(n, _)| n.starts_with("agent, 100k")) {
            report.target(
                &format!(
                    "cost above the floor at 100k entries ≤ 100 ns ({family}, BPF run-time statistics)"
                ),
                *d <= 100.0,
                format!("{d:+.1} ns per connect"),
            );
        }
        let max = above.iter().map(|a| a.1).fold(f64::MIN, f64::max);
        let min = above.iter().map(|a| a.1).fold(f64::MAX, f64::min);
        report.target(
            &format!(
                "flat from 10 to the largest entry count ({family}, BPF run-time statistics; flat = spread ≤ {FLAT_NS} ns)"
            ),
            max - min <= FLAT_NS,
            format!(
                "above floor {}; spread {:.1} ns",
                above
                    .iter()
                    .map(|(_, d)| format!("{d:+.1}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                max - min
            ),
        );
    }
    Ok(())
}

fn targets(setups: &[Setup], results: &[Vec<Vec<f64>>], report: &mut Report) {
    let find = |prefix: &str| setups.iter().position(|s| s.name.starts_with(prefix));
    let (bare, floor) = (0, 1);
    let agents: Vec<usize> = (0..setups.len())
        .filter(|&i| setups[i].name.starts_with("agent"))
        .collect();
    let a100k = find("agent, 100k").expect("the 100k agent");
    let nft = find("nftables").expect("nft");
    let ipt = find("iptables").expect("iptables");
    for (k, family) in [(0, "IPv4"), (1, "IPv6")] {
        let above = paired_diff(&results[a100k][k], &results[floor][k]);
        report.target(
            &format!("cost above the floor at 100k entries ≤ 100 ns ({family}, UDP connect)"),
            above <= 100.0,
            format!("{above:+.0} ns"),
        );
        let aboves: Vec<f64> = agents
            .iter()
            .map(|&i| paired_diff(&results[i][k], &results[floor][k]))
            .collect();
        let spread = aboves.iter().cloned().fold(f64::MIN, f64::max)
            - aboves.iter().cloned().fold(f64::MAX, f64::min);
        let noise = iqr(&results[agents[0]][k]);
        report.target(
            &format!("flat from 10 to the largest entry count ({family}, UDP connect; flat = spread of the medians ≤ the IQR of the 10-entry rounds)"),
            spread <= noise,
            format!(
                "above floor {}; spread {spread:.0} ns, noise {noise:.0} ns",
                aboves.iter().map(|a| format!("{a:+.0}")).collect::<Vec<_>>().join(" / ")
            ),
        );
    }
    for (k, family) in [(2, "IPv4"), (3, "IPv6")] {
        let ratio = paired_ratio(&results[a100k][k], &results[bare][k]);
        report.target(
            &format!(
                "TCP connect to another namespace ≤ 3% slower enforced (100k) than bare ({family})"
            ),
            ratio <= 1.03,
            format!("{:+.2}%", (ratio - 1.0) * 100.0),
        );
        let vs_ipt = paired_ratio(&results[a100k][k], &results[ipt][k]);
        report.target(
            &format!("cheaper than an iptables chain of 10k rules (TCP, {family})"),
            vs_ipt < 1.0,
            format!(
                "agent/iptables {vs_ipt:.3} (ratios to bare: agent {:.3}, iptables {:.3})",
                paired_ratio(&results[a100k][k], &results[bare][k]),
                paired_ratio(&results[ipt][k], &results[bare][k])
            ),
        );
        let vs_nft = paired_ratio(&results[a100k][k], &results[nft][k]);
        report.target(
            &format!("no worse than an nftables set (TCP, {family}; within 1%)"),
            vs_nft <= 1.01,
            format!(
                "agent/nftables {vs_nft:.3} (ratios to bare: agent {:.3}, nftables {:.3})",
                paired_ratio(&results[a100k][k], &results[bare][k]),
                paired_ratio(&results[nft][k], &results[bare][k])
            ),
        );
    }
}

/// Fisher–Yates with a xorshift generator: a fixed, reproducible order per round.
fn shuffle(v: &mut [usize], seed: &mut u64) {
    for i in (1..v.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}
