//! `egress-agent check`: validate a policy file and show what it would enforce.

use std::{path::PathBuf, process::ExitCode};

use egress_agent::{
    enforce::{self, source::label},
    policy::{self, DnsResolver},
};

#[derive(clap::Args)]
pub struct Args {
    /// Policy file to validate.
    #[arg(long)]
    policy: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args { policy: path, json } = args;
    let (policy, text) = policy::load(&path)?;
    // Literal addresses and prefixes only: hostnames are resolved by the running agent. What
    // the agent would refuse is refused here too (the map capacity aside: --max-entries).
    let desired = enforce::desired::check_representable(
        &policy,
        &[],
        egress_agent::agent::now(),
        &path.display().to_string(),
    )
    .map_err(anyhow::Error::msg)?;
    let resolvers: Vec<String> = policy
        .dns_resolvers
        .iter()
        .map(|r| match r {
            DnsResolver::Upstream => "the agent's upstream resolvers".to_owned(),
            DnsResolver::Addr(a) => a.to_string(),
        })
        .collect();
    if json {
        let rules: Vec<_> = policy
            .rules
            .iter()
            .map(|r| {
                serde_json::json!({
                    "source": r.label,
                    "action": r.action.to_string(),
                    "hosts": r.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "cidrs": r.nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "ports": r.ports.to_string(),
                    "for": r.scope.to_string(),
                })
            })
            .collect();
        let entries: Vec<_> = desired
            .entries
            .iter()
            .map(|(k, e)| {
                serde_json::json!({
                    "destination": k.to_string(),
                    "ports": desired.ports_of(e).to_string(),
                    "sources": e.sources[..(e.source_count as usize).min(e.sources.len())]
                        .iter()
                        .filter_map(|id| desired.sources.get(id).map(label))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "file": path.display().to_string(),
            "valid": true,
            "digest": policy::digest(&text),
            "mode": policy.mode.to_string(),
            "default_action": policy.default_action.to_string(),
            "dns_resolvers": policy.dns_resolvers.iter().map(|r| match r {
                DnsResolver::Upstream => "upstream".to_owned(),
                DnsResolver::Addr(a) => a.to_string(),
            }).collect::<Vec<_>>(),
            "rules": rules,
            "literal_entries": entries,
            "notes": policy.notes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: valid (digest {})",
        path.display(),
        policy::digest(&text)
    );
    println!(
        "mode: {}; destinations no rule allows: {}",
        policy.mode, policy.default_action
    );
    if resolvers.is_empty() {
        println!("DNS: no resolver is allowed implicitly");
    } else {
        println!(
            "DNS: workloads may query {} on 53/TCP and 53/UDP",
            resolvers.join(", ")
        );
    }
    println!("rules:");
    if policy.rules.is_empty() {
        println!("  (none: every destination but loopback gets the default action)");
    }
    for rule in &policy.rules {
        println!("  {:<5} {}", rule.action, rule.label);
        if !rule.hosts.is_empty() {
            let hosts: Vec<String> = rule.hosts.iter().map(ToString::to_string).collect();
            println!(
                "        hosts: {} (resolved by the agent)",
                hosts.join(", ")
            );
        }
        if !rule.nets.is_empty() {
            let nets: Vec<String> = rule.nets.iter().map(ToString::to_string).collect();
            println!("        addresses: {}", nets.join(", "));
        }
        if rule.sockets == egress_common::SocketKinds::NONE {
            println!("        ports: {}", rule.ports);
        } else {
            let kinds: Vec<&str> = [
                (egress_common::SocketKinds::RAW, "raw"),
                (egress_common::SocketKinds::ICMP, "icmp"),
                (egress_common::SocketKinds::PACKET, "packet"),
                (egress_common::SocketKinds::OTHER, "other"),
            ]
            .into_iter()
            .filter(|(k, _)| rule.sockets.contains(*k))
            .map(|(_, name)| name)
            .collect();
            println!("        sockets: {}", kinds.join(", "));
        }
        if !rule.scope.node_wide() {
            println!("        for: {}", rule.scope);
        }
    }
    if !desired.entries.is_empty() {
        println!("entries from literal addresses:");
        for (key, entry) in &desired.entries {
            println!("  {:<24} {}", key.to_string(), desired.ports_of(entry));
        }
    }
    for note in &policy.notes {
        println!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}
