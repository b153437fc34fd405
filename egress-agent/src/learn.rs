//! `egress-agent learn`: a proposed policy from what was denied (in audit mode: what would
//! have been). Deterministic: the same observations give the same text.
//!
//! What is learned: TCP and UDP destinations refused at the syscall hooks (no entry, wrong
//! port, wrong protocol). A destination whose address the kernel maps know a hostname for is
//! learned as that hostname (so its other addresses come with it); any other as its /32 or
//! /128. Packets the wire check refused (routing headers, loopback off the loopback device,
//! ICMP) are not learned: no rule can allow them.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use crate::{
    events::FlowRecord,
    policy::{Action, DnsResolver, Policy, Rule},
    ports::{PortSet, Protocol, Ranges},
};

/// Where a learned rule points.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Host(String),
    Addr(IpAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host(h) => f.write_str(h),
            Self::Addr(a) => a.fmt(f),
        }
    }
}

/// The destinations and ports the flows show, by target.
pub fn observed(flows: &[FlowRecord]) -> BTreeMap<Target, PortSet> {
    let mut out: BTreeMap<Target, PortSet> = BTreeMap::new();
    for f in flows {
        if f.hook == "wire"
            || !["no_entry", "wrong_port", "wrong_protocol"].contains(&f.reason.as_str())
        {
            continue;
        }
        let protocol = match f.protocol.as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => continue,
        };
        let target = match f.hostnames.iter().min() {
            Some(h) => Target::Host(h.clone()),
            None => Target::Addr(f.destination),
        };
        out.entry(target)
            .or_default()
            .insert(protocol, f.port, f.port);
    }
    out
}

/// A complete native policy: the current one's rules (if any), then one rule per learned
/// target and protocol.
pub fn propose_native(current: Option<&Policy>, flows: &[FlowRecord], note: &str) -> String {
    let mut y = String::new();
    let learned = observed(flows);
    let _ = writeln!(
        y,
        "# Proposed by `egress-agent learn` {note}: {} denied flows, {} destinations to add.",
        flows.len(),
        learned.len()
    );
    y.push_str("# Review it before applying; it enforces (mode: enforce).\n");
    y.push_str("apiVersion: egress/v1\nkind: EgressPolicy\nmode: enforce\n");
    if let Some(p) = current {
        let _ = writeln!(y, "defaultAction: {}", p.default_action);
        let resolvers: Vec<String> = p
            .dns_resolvers
            .iter()
            .map(|r| match r {
                DnsResolver::Upstream => "upstream".to_owned(),
                DnsResolver::Addr(a) => a.to_string(),
            })
            .collect();
        let _ = writeln!(y, "dnsResolvers: [{}]", resolvers.join(", "));
    }
    y.push_str("rules:\n");
    if let Some(p) = current {
        if !p.rules.is_empty() {
            y.push_str("  # from the current policy\n");
        }
        for rule in &p.rules {
            write_rule(&mut y, rule);
        }
    }
    if !learned.is_empty() {
        y.push_str("  # learned\n");
    }
    for (target, ports) in &learned {
        let (hosts, nets) = match target {
            Target::Host(h) => (vec![h.clone()], vec![]),
            Target::Addr(a) => (vec![], vec![ipnet::IpNet::from(*a)]),
        };
        write_ports(
            &mut y,
            &format!("learned {target}"),
            Action::Allow,
            &hosts,
            &nets,
            ports,
        );
    }
    if current.is_none_or(|p| p.rules.is_empty()) && learned.is_empty() {
        y.push_str("  []\n");
    }
    y
}

/// ServiceEntry documents for the learned targets (to add to an Istio mesh configuration
/// with `outboundTrafficPolicy: REGISTRY_ONLY`).
pub fn propose_istio(flows: &[FlowRecord], note: &str) -> String {
    let learned = observed(flows);
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# ServiceEntries proposed by `egress-agent learn` {note}: {} destinations seen denied.",
        learned.len()
    );
    y.push_str("# Add them to the mesh configuration (outboundTrafficPolicy: REGISTRY_ONLY).\n");
    for (target, ports) in &learned {
        let name: String = format!("learned-{target}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        y.push_str("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n");
        let _ = writeln!(y, "  name: {}", name.trim_matches('-'));
        y.push_str("spec:\n");
        let _ = writeln!(y, "  hosts: [\"{target}\"]");
        if let Target::Addr(a) = target {
            let _ = writeln!(y, "  addresses: [\"{a}\"]");
        }
        y.push_str("  ports:\n");
        for p in Protocol::BOTH {
            for (first, last) in ports.ranges(p).iter() {
                for port in first..=last {
                    let _ = writeln!(
                        y,
                        "  - number: {port}\n    name: {}-{port}\n    protocol: {p}",
                        p.to_string().to_lowercase()
                    );
                }
            }
        }
        let resolution = match target {
            Target::Host(_) => "DNS",
            Target::Addr(_) => "NONE",
        };
        let _ = writeln!(y, "  resolution: {resolution}\n  location: MESH_EXTERNAL");
    }
    y
}

fn write_rule(y: &mut String, rule: &Rule) {
    let name = rule.label.strip_prefix("rule ").unwrap_or(&rule.label);
    let hosts: Vec<String> = rule.hosts.iter().map(ToString::to_string).collect();
    write_ports(y, name, rule.action, &hosts, &rule.nets, &rule.ports);
}

/// One native rule per protocol group: a single `ANY` rule when TCP and UDP have the same
/// ports, otherwise one for each protocol that has any.
fn write_ports(
    y: &mut String,
    name: &str,
    action: Action,
    hosts: &[String],
    nets: &[ipnet::IpNet],
    ports: &PortSet,
) {
    let groups: Vec<(&str, &Ranges)> = if ports.tcp == ports.udp {
        vec![("ANY", &ports.tcp)]
    } else {
        [("TCP", &ports.tcp), ("UDP", &ports.udp)]
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
            .collect()
    };
    for (protocol, ranges) in groups {
        let _ = writeln!(y, "  - name: {}", serde_json::Value::from(name));
        if action == Action::Deny {
            y.push_str("    action: deny\n");
        }
        if !hosts.is_empty() {
            let _ = writeln!(y, "    hosts: [{}]", hosts.join(", "));
        }
        if !nets.is_empty() {
            let nets: Vec<String> = nets
                .iter()
                .map(|n| {
                    if n.prefix_len() == n.max_prefix_len() {
                        format!("\"{}\"", n.addr())
                    } else {
                        format!("\"{n}\"")
                    }
                })
                .collect();
            let _ = writeln!(y, "    cidrs: [{}]", nets.join(", "));
        }
        if *ranges != Ranges::all() {
            let items: Vec<String> = ranges
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("\"{a}-{b}\"")
                    }
                })
                .collect();
            let _ = writeln!(y, "    ports: [{}]", items.join(", "));
        }
        let _ = writeln!(y, "    protocol: {protocol}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(dst: &str, port: u16, proto: &str, reason: &str, hosts: &[&str]) -> FlowRecord {
        FlowRecord {
            first_seen_ms: 1,
            last_seen_ms: 2,
            count: 1,
            verdict: "would-deny".into(),
            reason: reason.into(),
            hook: "connect4".into(),
            family: "inet".into(),
            destination: dst.parse().unwrap(),
            port,
            protocol: proto.into(),
            cgroup_id: 1,
            cgroup: None,
            pod_uid: None,
            container_id: None,
            pod: None,
            pid: 1,
            comm: "curl".into(),
            hostnames: hosts.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn proposals_are_valid_deterministic_policies() {
        let flows = vec![
            flow("203.0.113.5", 8080, "TCP", "no_entry", &[]),
            flow("198.51.100.10", 8443, "TCP", "wrong_port", &["api.test"]),
            flow("198.51.100.12", 123, "UDP", "no_entry", &[]),
            flow("203.0.113.5", 8081, "TCP", "no_entry", &[]),
            flow("2001:db8::5", 443, "TCP", "no_entry", &[]),
            flow("203.0.113.9", 0, "ICMP", "wrong_protocol", &[]),
        ];
        let current = crate::policy::parse(
            "apiVersion: egress/v1\nkind: EgressPolicy\nmode: audit\nrules:\n  - name: api\n    hosts: [api.test]\n    ports: [443]\n",
            "p.yaml",
        )
        .unwrap();
        let text = propose_native(Some(&current), &flows, "since the start");
        let mut shuffled = flows.clone();
        shuffled.reverse();
        assert_eq!(
            text,
            propose_native(Some(&current), &shuffled, "since the start")
        );
        let parsed =
            crate::policy::parse(&text, "learned.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(parsed.mode, crate::policy::Mode::Enforce);
        let hosts = parsed.hosts();
        let api = &hosts[&crate::policy::Hostname::parse("api.test").unwrap()];
        let mut ports = PortSet::default();
        for rule in api {
            ports.union(&rule.ports);
        }
        assert!(ports.allows(Protocol::Tcp, 443) && ports.allows(Protocol::Tcp, 8443));
        assert!(
            text.contains(
                "cidrs: [\"203.0.113.5\"]\n    ports: [\"8080-8081\"]\n    protocol: TCP"
            ),
            "{text}"
        );
        assert!(
            text.contains("cidrs: [\"198.51.100.12\"]\n    ports: [123]\n    protocol: UDP"),
            "{text}"
        );
        assert!(text.contains("cidrs: [\"2001:db8::5\"]"), "{text}");
        assert!(!text.contains("203.0.113.9"), "ICMP is not learned: {text}");

        let istio = propose_istio(&flows, "since the start");
        let parsed =
            crate::policy::parse(&istio, "istio.yaml").unwrap_or_else(|e| panic!("{e}\n{istio}"));
        assert_eq!(parsed.rules.len(), 4, "{istio}");
    }
}
