//! The native schema, `kind: EgressPolicy`:
//!
//! ```yaml
//! apiVersion: egress/v1
//! kind: EgressPolicy
//! mode: enforce            # enforce (default) | audit
//! defaultAction: deny      # deny (default) | allow
//! dnsResolvers: [upstream] # who workloads may query on port 53; `upstream` = the agent's servers
//! rules:
//!   - name: google-apis    # optional, shown as the source of literal addresses
//!     action: allow        # allow (default) | deny; deny wins over allow
//!     hosts: [www.googleapis.com]
//!     cidrs: [203.0.113.0/24, 2001:db8::/48, 198.51.100.7]
//!     ports: [443, "8000-8010"]   # omitted: every port
//!     protocol: TCP        # TCP | UDP | ANY; default TCP for allow rules, ANY for deny rules
//!     namespaces: [team-a] # optional: only pods of these namespaces
//!     podSelector:         # optional: only pods these labels select (Kubernetes syntax)
//!       matchLabels: {app: web}
//!   - name: ping           # a socket rule: kinds of sockets no address hook can judge
//!     sockets: [icmp]      # icmp (ping sockets) | raw (SOCK_RAW) | packet (AF_PACKET) |
//!                          # other (AF_XDP, vsock, … any family but unix, inet, inet6, netlink)
//!     namespaces: [monitoring]
//! ```
//!
//! A rule without `namespaces` and `podSelector` applies to every pod of the node. Raw, ICMP
//! and packet sockets are refused at creation unless a socket rule allows them; a socket rule
//! names nothing else (no hosts, cidrs, ports, protocol) and only allows.

use std::net::IpAddr;

use egress_common::SocketKinds;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    Action, Builder, DnsResolver, Hostname, Mode, PolicyError, Rule,
    scope::{Scope, SelectorSpec, check_namespace},
    values::{Net, PortSpec},
};
use crate::ports::{PortSet, Protocol};

pub const KIND: &str = "EgressPolicy";
pub const API_VERSION: &str = "egress/v1";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressPolicy {
    api_version: String,
    #[expect(dead_code, reason = "checked by the document dispatcher")]
    kind: String,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted for Kubernetes-style files, not used")]
    metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "present")]
    mode: Option<NativeMode>,
    #[serde(default, deserialize_with = "present")]
    default_action: Option<NativeAction>,
    #[serde(default, deserialize_with = "present")]
    dns_resolvers: Option<Vec<ResolverSpec>>,
    rules: Vec<Spanned<NativeRule>>,
}

/// For optional keys: a missing key means the default, but a key written with no value
/// (`ports:` alone, YAML null) is an error. Read as "the default", an emptied `ports:` would
/// allow every port and an emptied `action:` would allow.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(v) => Ok(Some(v)),
        None => Err(serde::de::Error::custom(
            "the key has no value; give one, or leave the key out for the default",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    #[expect(dead_code, reason = "accepted, not used")]
    name: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum NativeMode {
    Enforce,
    Audit,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum NativeAction {
    Allow,
    Deny,
}

impl From<NativeAction> for Action {
    fn from(a: NativeAction) -> Self {
        match a {
            NativeAction::Allow => Self::Allow,
            NativeAction::Deny => Self::Deny,
        }
    }
}

#[derive(Deserialize, Clone, Copy, Default)]
enum NativeProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "ANY")]
    Any,
}

/// `upstream` or an IP address.
struct ResolverSpec(DnsResolver);

impl<'de> Deserialize<'de> for ResolverSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        if raw == "upstream" {
            return Ok(Self(DnsResolver::Upstream));
        }
        raw.parse::<IpAddr>()
            .map(|a| Self(DnsResolver::Addr(super::values::unmap_addr(a))))
            .map_err(|_| {
                serde::de::Error::custom(format!("`{raw}` is neither `upstream` nor an IP address"))
            })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NativeRule {
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    action: Option<NativeAction>,
    #[serde(default, deserialize_with = "present")]
    hosts: Option<Vec<Hostname>>,
    #[serde(default, deserialize_with = "present")]
    cidrs: Option<Vec<Net>>,
    #[serde(default, deserialize_with = "present")]
    ports: Option<Vec<PortSpec>>,
    #[serde(default, deserialize_with = "present")]
    protocol: Option<NativeProtocol>,
    #[serde(default, deserialize_with = "present")]
    namespaces: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pod_selector: Option<SelectorSpec>,
    #[serde(default, deserialize_with = "present")]
    sockets: Option<Vec<NativeSocket>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum NativeSocket {
    Raw,
    Icmp,
    Packet,
    Other,
}

impl From<NativeSocket> for SocketKinds {
    fn from(s: NativeSocket) -> Self {
        match s {
            NativeSocket::Raw => Self::RAW,
            NativeSocket::Icmp => Self::ICMP,
            NativeSocket::Packet => Self::PACKET,
            NativeSocket::Other => Self::OTHER,
        }
    }
}

pub fn apply(
    doc: EgressPolicy,
    file: &str,
    at: (u64, u64),
    builder: &mut Builder,
) -> Result<(), PolicyError> {
    let EgressPolicy {
        api_version,
        kind: _,
        metadata: _,
        mode,
        default_action,
        dns_resolvers,
        rules,
    } = doc;
    if api_version != API_VERSION {
        return Err(PolicyError::invalid(
            file,
            at,
            "apiVersion",
            format!(
                "unsupported apiVersion `{api_version}` for EgressPolicy; expected `{API_VERSION}`"
            ),
        ));
    }
    if mode.is_some() || default_action.is_some() {
        let mode = match mode.unwrap_or(NativeMode::Enforce) {
            NativeMode::Enforce => Mode::Enforce,
            NativeMode::Audit => Mode::Audit,
        };
        let action = default_action.map_or(Action::Deny, Action::from);
        builder.set_mode((mode, action), "EgressPolicy", file, at)?;
    }
    if let Some(resolvers) = dns_resolvers {
        builder.dns_resolvers = Some(resolvers.into_iter().map(|r| r.0).collect());
    }
    for (i, rule) in rules.into_iter().enumerate() {
        let at = (at.0 + rule.referenced.line() - 1, rule.referenced.column());
        let NativeRule {
            name,
            action,
            hosts,
            cidrs,
            ports,
            protocol,
            namespaces,
            pod_selector,
            sockets,
        } = rule.value;
        let namespaces = match namespaces {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(PolicyError::invalid(
                    file,
                    at,
                    format!("rules[{i}].namespaces"),
                    "`namespaces: []` selects no pod; omit `namespaces` to mean every namespace",
                ));
            }
            Some(list) => {
                for (j, ns) in list.iter().enumerate() {
                    check_namespace(ns).map_err(|m| {
                        PolicyError::invalid(file, at, format!("rules[{i}].namespaces[{j}]"), m)
                    })?;
                }
                Some(list.into_iter().collect())
            }
        };
        let pods = match pod_selector {
            None => None,
            Some(spec) => spec.into_selector().map_err(|(field, m)| {
                PolicyError::invalid(file, at, format!("rules[{i}].podSelector.{field}"), m)
            })?,
        };
        let label = format!("rule {}", name.unwrap_or_else(|| format!("#{}", i + 1)));
        if let Some(kinds) = sockets {
            let field = format!("rules[{i}].sockets");
            if matches!(action, Some(NativeAction::Deny)) {
                return Err(PolicyError::invalid(
                    file,
                    at,
                    field,
                    "raw, ICMP and packet sockets are refused unless a rule allows them; a deny rule cannot name them",
                ));
            }
            if hosts.is_some() || cidrs.is_some() || ports.is_some() || protocol.is_some() {
                return Err(PolicyError::invalid(
                    file,
                    at,
                    field,
                    "a socket rule allows kinds of sockets wherever they send; it cannot also name hosts, cidrs, ports or a protocol (write those in a rule of their own)",
                ));
            }
            if kinds.is_empty() {
                return Err(PolicyError::invalid(
                    file,
                    at,
                    field,
                    "`sockets: []` allows nothing; omit the rule",
                ));
            }
            builder.rules.push(Rule {
                at,
                label,
                action: Action::Allow,
                hosts: Vec::new(),
                nets: Vec::new(),
                ports: PortSet::default(),
                sockets: kinds
                    .into_iter()
                    .fold(SocketKinds::NONE, |k, s| k.union(s.into())),
                scope: Scope { namespaces, pods },
            });
            continue;
        }
        let (hosts, cidrs) = (hosts.unwrap_or_default(), cidrs.unwrap_or_default());
        if hosts.is_empty() && cidrs.is_empty() {
            return Err(PolicyError::invalid(
                file,
                at,
                format!("rules[{i}]"),
                "the rule names no destination; give `hosts`, `cidrs` or both (or `sockets`)",
            ));
        }
        let action = action.map_or(Action::Allow, Action::from);
        // An allow rule opens TCP unless told otherwise; a deny rule closes every protocol
        // unless told otherwise: a deny-list that left UDP (QUIC, DNS tunnels) open would
        // fail open.
        let default_protocol = match action {
            Action::Allow => NativeProtocol::Tcp,
            Action::Deny => NativeProtocol::Any,
        };
        let protocols: &[Protocol] = match protocol.unwrap_or(default_protocol) {
            NativeProtocol::Tcp => &[Protocol::Tcp],
            NativeProtocol::Udp => &[Protocol::Udp],
            NativeProtocol::Any => &Protocol::BOTH,
        };
        let mut set = PortSet::default();
        for &p in protocols {
            match &ports {
                None => set.insert(p, 0, u16::MAX),
                Some(specs) => {
                    for s in specs {
                        set.insert(p, s.first, s.last);
                    }
                }
            }
        }
        if set.is_empty() {
            return Err(PolicyError::invalid(
                file,
                at,
                format!("rules[{i}].ports"),
                "`ports: []` allows nothing; omit `ports` to mean every port",
            ));
        }
        builder.rules.push(Rule {
            at,
            label,
            action,
            hosts,
            nets: cidrs.into_iter().map(|n| n.0).collect(),
            ports: set,
            sockets: SocketKinds::NONE,
            scope: Scope { namespaces, pods },
        });
    }
    Ok(())
}
