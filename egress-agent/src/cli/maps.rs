//! `egress-agent maps`: what the kernel enforces now, read from the pinned maps.

use std::{collections::BTreeMap, process::ExitCode};

use anyhow::Context as _;
use egress_agent::{
    bpf::{PinnedMaps, Pins},
    enforce::{MapStore as _, source::label},
    ports::PortSet,
};
use egress_common::{Counter, DefaultAction, Mode, ResolveStatus, SourceKind};

use super::{BpffsArg, when};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    bpffs: BpffsArg,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Only this address family.
    #[arg(long, value_parser = ["4", "6"])]
    family: Option<String>,
}

fn status_name(s: ResolveStatus) -> &'static str {
    match s {
        ResolveStatus::PENDING => "pending",
        ResolveStatus::OK => "ok",
        ResolveStatus::NXDOMAIN => "NXDOMAIN",
        ResolveStatus::NODATA => "no-address",
        ResolveStatus::FAILING => "failing",
        ResolveStatus::STATIC => "static",
        _ => "unknown",
    }
}

fn kind_name(k: SourceKind) -> &'static str {
    match k {
        SourceKind::HOST => "host",
        SourceKind::RULE => "rule",
        SourceKind::DNS_RESOLVER => "dns-resolver",
        _ => "unknown",
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        bpffs,
        json,
        family,
    } = args;
    let pins = Pins::new(&bpffs.bpffs);
    let generation = pins.current_generation().with_context(|| {
        format!(
            "no pinned maps under {} (is an agent running with this --bpffs?)",
            pins.root().display()
        )
    })?;
    let maps = PinnedMaps::open(&generation)
        .with_context(|| format!("failed to open the maps in {}", generation.dir.display()))?;
    let config = maps.read_config()?;
    let entries = maps.read_entries()?;
    let port_sets = maps.read_ports()?;
    let sources = maps.read_sources()?;
    let counters = maps.counters()?;
    let links = pins.link_files();

    let mode = if config.mode == Mode::AUDIT {
        "audit"
    } else {
        "enforce"
    };
    let default = if config.default_action == DefaultAction::ALLOW {
        "allow"
    } else {
        "deny"
    };
    let wanted = |v6: bool| match family.as_deref() {
        Some("4") => !v6,
        Some("6") => v6,
        _ => true,
    };
    let rows: Vec<_> = entries
        .iter()
        .filter(|(k, _)| wanted(k.is_v6()))
        .map(|(key, e)| {
            let ports = port_sets
                .get(&e.ports)
                .map(PortSet::from_kernel)
                .unwrap_or_default();
            let held = (e.source_count as usize).min(e.sources.len());
            let mut names: Vec<String> = e.sources[..held]
                .iter()
                .map(|id| {
                    sources
                        .get(id)
                        .map_or_else(|| format!("#{:x}", id.0), label)
                })
                .collect();
            if e.source_count as usize > held {
                names.push(format!("+{} more", e.source_count as usize - held));
            }
            (key, ports, names, e.expires_at)
        })
        .collect();

    if json {
        let out = serde_json::json!({
            "bpffs": pins.root().display().to_string(),
            "generation": generation.dir.display().to_string(),
            "attached": links.iter().map(|l| l.display().to_string()).collect::<Vec<_>>(),
            "mode": mode,
            "default_action": default,
            "entries": rows.iter().map(|(k, ports, names, exp)| serde_json::json!({
                "destination": k.to_string(),
                "prefix": k.is_prefix(),
                "ports": ports.to_string(),
                "tcp": ports.tcp.to_string(),
                "udp": ports.udp.to_string(),
                "sources": names,
                "expires_at": exp,
            })).collect::<Vec<_>>(),
            "sources": sources.values().map(|s| serde_json::json!({
                "kind": kind_name(s.kind),
                "name": label(s),
                "status": status_name(s.status),
                "addresses": s.addr_count,
                "resolved_at": s.resolved_at,
                "refresh_at": s.refresh_at,
            })).collect::<Vec<_>>(),
            "counters": Counter::NAMES.iter().zip(&counters).map(|(n, v)| (n.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }

    println!(
        "mode {mode}, unlisted destinations {default}; {} programs attached; maps {}",
        links.len(),
        generation.dir.display()
    );
    println!();
    println!(
        "{:<40} {:<24} {:<32} EXPIRES",
        "DESTINATION", "PORTS", "SOURCES"
    );
    if rows.is_empty() {
        println!("(no entries: only loopback is reachable unless the default action allows)");
    }
    for (key, ports, names, exp) in &rows {
        let expires = if *exp == 0 {
            "never".to_owned()
        } else {
            when(*exp)
        };
        println!(
            "{:<40} {:<24} {:<32} {expires}",
            key.to_string(),
            ports.to_string(),
            names.join(", ")
        );
    }
    println!();
    println!(
        "{:<40} {:<12} {:<10} {:<36} NEXT REFRESH",
        "SOURCE", "STATUS", "ADDRESSES", "RESOLVED"
    );
    // With --family, only the sources of the entries shown.
    let shown: std::collections::BTreeSet<_> = entries
        .iter()
        .filter(|(k, _)| wanted(k.is_v6()))
        .flat_map(|(_, e)| e.sources[..(e.source_count as usize).min(e.sources.len())].to_vec())
        .collect();
    let now = egress_agent::agent::now();
    for (id, s) in &sources {
        if family.is_some() && !shown.contains(id) {
            continue;
        }
        // A refresh time in the past means a query is under way (or waiting for a slot).
        let refresh = if s.refresh_at != 0 && s.refresh_at < now {
            "due now".to_owned()
        } else {
            when(s.refresh_at)
        };
        let name = match s.kind {
            SourceKind::HOST => label(s),
            k => format!("{} ({})", label(s), kind_name(k)),
        };
        println!(
            "{:<40} {:<12} {:<10} {:<36} {}",
            name,
            status_name(s.status),
            s.addr_count,
            when(s.resolved_at),
            refresh
        );
    }
    println!();
    let verdicts: Vec<String> = Counter::NAMES
        .iter()
        .zip(&counters)
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    println!("verdicts since load: {}", verdicts.join(" "));
    Ok(ExitCode::SUCCESS)
}
