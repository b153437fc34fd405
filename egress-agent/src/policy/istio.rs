//! Istio's egress vocabulary, accepted as operators already write it:
//! `ServiceEntry` documents (networking.istio.io, any version) and the mesh setting
//! `outboundTrafficPolicy.mode` (REGISTRY_ONLY / ALLOW_ANY), either as a mesh config document
//! or inside an `IstioOperator`.
//!
//! What a ServiceEntry allows, without a sidecar to route by name:
//! - `hosts`, resolved by the agent, on the entry's port numbers — what the workload reaches
//!   when it looks a host up and connects — for resolution DNS, DNS_ROUND_ROBIN and NONE.
//!   Istio matches NONE by the original destination (or SNI); an L3/L4 enforcer cannot, and
//!   allowing every address on those ports would make the entry a wildcard, so NONE resolves
//!   the hosts too. STATIC hosts are names for `addresses`/`endpoints` and are not resolved.
//! - `addresses` (IPs or CIDRs) on the port numbers;
//! - `endpoints[].address` (IPs, or hostnames for DNS resolution) on the endpoint's port for
//!   each port name, else the port's `targetPort`, else its number.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    Action, Builder, Hostname, Mode, Rule,
    values::{Net, PortSpec},
};
use crate::ports::{PortSet, Protocol};

pub const SERVICE_ENTRY: &str = "ServiceEntry";
pub const ISTIO_OPERATOR: &str = "IstioOperator";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    api_version: ApiVersion,
    #[expect(dead_code, reason = "checked by the document dispatcher")]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Spec,
    /// Present in `kubectl get -o yaml` output; nothing in it matters here.
    #[serde(default)]
    #[expect(dead_code, reason = "accepted, ignored")]
    status: Option<serde::de::IgnoredAny>,
}

/// `networking.istio.io/<version>`.
struct ApiVersion;

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        if raw.starts_with("networking.istio.io/") {
            Ok(Self)
        } else {
            Err(serde::de::Error::custom(format!(
                "ServiceEntry apiVersion `{raw}` is not networking.istio.io/..."
            )))
        }
    }
}

/// Kubernetes object metadata: only the name and namespace are used; the other standard
/// fields are accepted so that `kubectl get -o yaml` output can be used as is.
#[derive(Deserialize, Default)]
struct ObjectMeta {
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    addresses: Vec<Net>,
    ports: Vec<Spanned<Port>>,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "MESH_INTERNAL and MESH_EXTERNAL are enforced alike"
    )]
    location: Option<Location>,
    #[serde(default)]
    resolution: Resolution,
    #[serde(default)]
    endpoints: Vec<Spanned<Endpoint>>,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "selects server workloads, not clients; no effect on egress"
    )]
    workload_selector: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    export_to: Vec<String>,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "TLS identity checks are out of an L4 enforcer's reach"
    )]
    subject_alt_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Port {
    number: i128,
    protocol: Option<String>,
    name: Option<String>,
    target_port: Option<i128>,
}

#[derive(Deserialize)]
enum Location {
    #[serde(rename = "MESH_EXTERNAL")]
    External,
    #[serde(rename = "MESH_INTERNAL")]
    Internal,
}

#[derive(Deserialize, Default, PartialEq, Eq, Clone, Copy)]
enum Resolution {
    #[default]
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "STATIC")]
    Static,
    #[serde(rename = "DNS")]
    Dns,
    #[serde(rename = "DNS_ROUND_ROBIN")]
    DnsRoundRobin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Endpoint {
    address: Option<String>,
    #[serde(default)]
    ports: BTreeMap<String, i128>,
    #[serde(default)]
    #[expect(dead_code, reason = "routing metadata, no effect on egress")]
    labels: Option<serde::de::IgnoredAny>,
    #[expect(dead_code, reason = "routing metadata, no effect on egress")]
    network: Option<String>,
    #[expect(dead_code, reason = "routing metadata, no effect on egress")]
    locality: Option<String>,
    #[expect(dead_code, reason = "routing metadata, no effect on egress")]
    weight: Option<u32>,
    #[expect(dead_code, reason = "routing metadata, no effect on egress")]
    service_account: Option<String>,
}

/// The transport under an Istio port protocol.
fn transport(protocol: Option<&str>) -> Result<Protocol, String> {
    match protocol {
        None => Ok(Protocol::Tcp),
        Some(p) => match p.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "GRPC-WEB" | "TLS" | "TCP" | "MONGO"
            | "MYSQL" | "REDIS" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            _ => Err(format!(
                "unknown port protocol `{p}`; Istio's are HTTP, HTTPS, HTTP2, GRPC, GRPC-Web, \
                 TLS, TCP, MONGO, MYSQL, REDIS and UDP"
            )),
        },
    }
}

pub fn apply_service_entry(
    doc: ServiceEntry,
    file: &str,
    at: (u64, u64),
    builder: &mut Builder,
) -> Result<(), super::PolicyError> {
    let ServiceEntry {
        api_version: ApiVersion,
        kind: _,
        metadata,
        spec,
        status: _,
    } = doc;
    let Spec {
        hosts,
        addresses,
        ports,
        location: _,
        resolution,
        endpoints,
        workload_selector: _,
        export_to,
        subject_alt_names: _,
    } = spec;
    let label = match (&metadata.namespace, &metadata.name) {
        (Some(ns), Some(name)) => format!("ServiceEntry {ns}/{name}"),
        (None, Some(name)) => format!("ServiceEntry {name}"),
        _ => "ServiceEntry (unnamed)".to_owned(),
    };
    let err = |spanned_line: u64, col: u64, field: String, msg: String| {
        super::PolicyError::invalid(file, (at.0 + spanned_line - 1, col), field, msg)
    };
    if hosts.is_empty() {
        return Err(err(
            1,
            1,
            "spec.hosts".into(),
            "a ServiceEntry needs at least one host".into(),
        ));
    }
    if ports.is_empty() {
        return Err(err(
            1,
            1,
            "spec.ports".into(),
            "a ServiceEntry needs at least one port".into(),
        ));
    }

    // Port number and transport of each port, and what endpoints reach them on.
    let mut service_ports = PortSet::default();
    let mut by_name: Vec<(Option<String>, Protocol, u16)> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (line, col) = (port.referenced.line(), port.referenced.column());
        let p = &port.value;
        let number = PortSpec::parse_number(p.number)
            .map_err(|m| err(line, col, format!("spec.ports[{i}].number"), m))?;
        let proto = transport(p.protocol.as_deref())
            .map_err(|m| err(line, col, format!("spec.ports[{i}].protocol"), m))?;
        let target = match p.target_port {
            Some(t) => PortSpec::parse_number(t)
                .map_err(|m| err(line, col, format!("spec.ports[{i}].targetPort"), m))?,
            None => number,
        };
        service_ports.insert(proto, number, number);
        by_name.push((p.name.clone(), proto, target));
    }

    let mut host_names = Vec::new();
    let mut nets: Vec<ipnet::IpNet> = addresses.into_iter().map(|n| n.0).collect();
    for (i, host) in hosts.iter().enumerate() {
        let (line, col) = (host.referenced.line(), host.referenced.column());
        // Istio lets `hosts` hold an address for entries that only name one.
        if let Ok(net) = Net::parse(&host.value) {
            nets.push(net.0);
            continue;
        }
        let name = Hostname::parse(&host.value)
            .map_err(|m| err(line, col, format!("spec.hosts[{i}]"), m))?;
        if resolution != Resolution::Static {
            host_names.push(name);
        }
    }
    let scope = super::scope::export_scope(metadata.namespace.as_deref(), &export_to)
        .map_err(|m| err(1, 1, "spec.exportTo".into(), m))?;
    if let Some(ns) = &metadata.namespace {
        super::scope::check_namespace(ns).map_err(|m| err(1, 1, "metadata.namespace".into(), m))?;
    }
    builder.rules.push(Rule {
        label: label.clone(),
        at,
        action: Action::Allow,
        hosts: host_names,
        nets,
        ports: service_ports,
        sockets: egress_common::SocketKinds::NONE,
        scope: scope.clone(),
    });

    for (i, endpoint) in endpoints.iter().enumerate() {
        let (line, col) = (endpoint.referenced.line(), endpoint.referenced.column());
        let ep = &endpoint.value;
        let Some(address) = ep.address.as_deref() else {
            continue;
        };
        if address.starts_with("unix://") {
            return Err(err(
                line,
                col,
                format!("spec.endpoints[{i}].address"),
                "unix domain socket endpoints are local; they have no place in an egress policy"
                    .into(),
            ));
        }
        for name in ep.ports.keys() {
            if !by_name
                .iter()
                .any(|(n, _, _)| n.as_deref() == Some(name.as_str()))
            {
                return Err(err(
                    line,
                    col,
                    format!("spec.endpoints[{i}].ports.{name}"),
                    format!("no port of this ServiceEntry is named `{name}`"),
                ));
            }
        }
        let mut ports = PortSet::default();
        for (name, proto, target) in &by_name {
            let port = match name.as_ref().and_then(|n| ep.ports.get(n)) {
                Some(&p) => PortSpec::parse_number(p)
                    .map_err(|m| err(line, col, format!("spec.endpoints[{i}].ports"), m))?,
                None => *target,
            };
            ports.insert(*proto, port, port);
        }
        let (hosts, nets) = match Net::parse(address) {
            Ok(net) => (Vec::new(), vec![net.0]),
            Err(_) if resolution == Resolution::Static => {
                return Err(err(
                    line,
                    col,
                    format!("spec.endpoints[{i}].address"),
                    format!("`{address}` is not an IP address; STATIC endpoints are addresses"),
                ));
            }
            Err(_) => (
                vec![
                    Hostname::parse(address)
                        .map_err(|m| err(line, col, format!("spec.endpoints[{i}].address"), m))?,
                ],
                Vec::new(),
            ),
        };
        builder.rules.push(Rule {
            label: format!("{label} endpoint {address}"),
            at: (at.0 + line - 1, col),
            action: Action::Allow,
            hosts,
            nets,
            ports,
            sockets: egress_common::SocketKinds::NONE,
            scope: scope.clone(),
        });
    }
    Ok(())
}

/// `outboundTrafficPolicy: {mode: REGISTRY_ONLY | ALLOW_ANY}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    mode: OutboundMode,
}

#[derive(Deserialize, Clone, Copy)]
enum OutboundMode {
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
}

impl OutboundTrafficPolicy {
    fn mode(&self) -> (Mode, Action) {
        match self.mode {
            OutboundMode::RegistryOnly => (Mode::Enforce, Action::Deny),
            // ALLOW_ANY: nothing is refused, and what REGISTRY_ONLY would refuse is reported.
            OutboundMode::AllowAny => (Mode::Audit, Action::Deny),
        }
    }
}

/// A mesh config document. Only `outboundTrafficPolicy` is read; MeshConfig has many other
/// settings, which are accepted and ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    outbound_traffic_policy: OutboundTrafficPolicy,
}

pub fn mesh_config_mode(doc: MeshConfig) -> (Mode, Action) {
    doc.outbound_traffic_policy.mode()
}

/// An IstioOperator; only `spec.meshConfig.outboundTrafficPolicy` is read.
#[derive(Deserialize)]
pub struct IstioOperator {
    spec: Option<OperatorSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperatorSpec {
    mesh_config: Option<OperatorMesh>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperatorMesh {
    outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// `None` when the operator does not set the mode: it then leaves the policy's mode alone.
pub fn operator_mode(doc: IstioOperator) -> Option<(Mode, Action)> {
    doc.spec
        .and_then(|s| s.mesh_config)
        .and_then(|m| m.outbound_traffic_policy)
        .map(|o| o.mode())
}
