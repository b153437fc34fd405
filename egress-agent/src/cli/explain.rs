//! `egress-agent explain` and `egress-agent who-has`: the kernel's verdict for a destination
//! and what decides it, read from the pinned maps the programs use.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use egress_agent::{
    bpf::{Cgroup, PinnedMaps, Pins},
    enforce::MapStore as _,
    explain::{MapView, as_judged},
    ports::Protocol,
};

use super::{BpffsArg, when};

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// The destination, `ADDR:PORT` (`[v6]:PORT` for IPv6).
    destination: SocketAddr,
    /// Transport protocol.
    #[arg(long, value_parser = ["tcp", "udp"], default_value = "tcp")]
    proto: String,
    /// Explain for processes in this cgroup (absolute, or relative to the cgroup2 mount):
    /// checks that the agent enforces it.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    #[command(flatten)]
    bpffs: BpffsArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct WhoHasArgs {
    /// An IP address.
    address: IpAddr,
    #[command(flatten)]
    bpffs: BpffsArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The maps of the generation the attached programs use.
pub fn open_view(bpffs: &std::path::Path) -> anyhow::Result<(Pins, MapView)> {
    let pins = Pins::new(bpffs);
    let generation = pins.current_generation().with_context(|| {
        format!(
            "no pinned maps under {} (is an agent running with this --bpffs?)",
            pins.root().display()
        )
    })?;
    let maps = PinnedMaps::open(&generation)
        .with_context(|| format!("failed to open the maps in {}", generation.dir.display()))?;
    let view = MapView {
        config: maps.read_config()?,
        entries: maps.read_entries()?,
        ports: maps.read_ports()?,
        sources: maps.read_sources()?,
        classes: maps.read_classes()?,
    };
    Ok((pins, view))
}

pub fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let ExplainArgs {
        destination,
        proto,
        cgroup,
        bpffs,
        json,
    } = args;
    let (pins, view) = open_view(&bpffs.bpffs)?;
    let mut class = view.class_of(&[]);
    if let Some(dir) = cgroup {
        let cg = Cgroup::resolve(&dir)?;
        let enforced: Vec<u64> = pins.link_dirs().into_iter().map(|(id, _)| id).collect();
        if !is_below_any(&cg.path, &enforced) {
            bail!(
                "{} is not enforced by the agent with pins in {}: nothing is refused there",
                cg.path.display(),
                pins.root().display()
            );
        }
        class = view.class_of(&ancestor_ids(&cg.path)?);
    }
    let protocol = if proto == "udp" {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    let e = view.explain(destination.ip(), destination.port(), protocol, class);
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(ExitCode::SUCCESS);
    }
    let shown = if e.judged_as == destination.ip() {
        String::new()
    } else {
        format!(" (judged as {})", e.judged_as)
    };
    let class = if e.class == "node" {
        String::new()
    } else {
        format!(" [class {}]", e.class)
    };
    println!(
        "{destination}/{}{shown}: {} ({}){class}",
        e.protocol, e.verdict, e.reason
    );
    match &e.entry {
        Some(entry) => {
            println!(
                "  decided by the entry {}: allows {}; expires {}",
                entry.key,
                entry.ports,
                if entry.expires_at == 0 {
                    "never".to_owned()
                } else {
                    when(entry.expires_at)
                }
            );
            for s in &entry.sources {
                println!("    from {}", source_text(s));
            }
        }
        None if e.reason == "loopback" => println!("  loopback is always reachable"),
        None => println!(
            "  no entry covers {}: destinations no rule lists are {} (mode {})",
            e.judged_as,
            if e.default_action == "allow" {
                "allowed"
            } else {
                "denied"
            },
            e.mode
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The ids of a cgroup's ancestors by level, the root of the hierarchy (level 0) first and
/// the cgroup itself last, as the kernel's `bpf_get_current_ancestor_cgroup_id` numbers them.
fn ancestor_ids(path: &std::path::Path) -> anyhow::Result<Vec<u64>> {
    use std::os::unix::fs::MetadataExt as _;
    let root = egress_agent::bpf::cgroup2_root()?;
    let below = path
        .strip_prefix(&root)
        .with_context(|| format!("{} is not below {}", path.display(), root.display()))?;
    let mut ids = vec![std::fs::metadata(&root)?.ino()];
    let mut at = root.clone();
    for part in below.components() {
        at.push(part);
        ids.push(std::fs::metadata(&at)?.ino());
    }
    Ok(ids)
}

/// "host www.example.com", "rule google" (a rule's label already says it is a rule).
fn source_text(s: &egress_agent::explain::SourceView) -> String {
    if s.name.starts_with(&format!("{} ", s.kind)) {
        s.name.clone()
    } else {
        format!("{} {}", s.kind, s.name)
    }
}

/// Whether `path` is one of the cgroups with these ids, or below one.
fn is_below_any(path: &std::path::Path, ids: &[u64]) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    path.ancestors()
        .any(|p| std::fs::metadata(p).is_ok_and(|m| ids.contains(&m.ino())))
}

pub fn who_has(args: WhoHasArgs) -> anyhow::Result<ExitCode> {
    let WhoHasArgs {
        address,
        bpffs,
        json,
    } = args;
    let (_, view) = open_view(&bpffs.bpffs)?;
    let covering: Vec<_> = view
        .covering_any(address)
        .into_iter()
        .map(|(k, e)| view.view(k, e))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "address": address,
                "judged_as": as_judged(address),
                "hostnames": view.hostnames(address),
                "entries": covering,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if covering.is_empty() {
        println!("{address}: not present in the maps (no hostname or rule covers it)");
        return Ok(ExitCode::SUCCESS);
    }
    for (i, entry) in covering.iter().enumerate() {
        let role = if entry.key.contains("(class") {
            "for the pods of that class"
        } else if i == 0 {
            "decides"
        } else {
            "shadowed by the entry above"
        };
        println!("{} ({role}): allows {}", entry.key, entry.ports);
        for s in &entry.sources {
            println!("  from {}", source_text(s));
        }
    }
    Ok(ExitCode::SUCCESS)
}
