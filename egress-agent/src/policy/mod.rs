//! The allow-list policy: YAML in (Istio `ServiceEntry` documents, Istio mesh settings, or the
//! native `EgressPolicy` schema), a validated [`Policy`] out.
//!
//! Parsing is strict on purpose (an egress policy that is silently misread fails open):
//! unknown keys, duplicate keys, misspelt enum values and malformed ports are errors that
//! name the file, line, column and field, and nothing of a refused file is applied.

mod error;
mod hostname;
mod istio;
mod native;
pub mod scope;
pub mod values;
mod yaml;

use std::{collections::BTreeMap, fmt, net::IpAddr, path::Path};

pub use error::PolicyError;
pub use hostname::Hostname;
use ipnet::IpNet;
pub use scope::{PodMeta, Scope};
pub use yaml::MAX_POLICY_BYTES;

use crate::ports::PortSet;

/// Enforce the allow-list, or only report what it would refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Audit,
}

/// What a rule does to the traffic it matches, or what happens to unmatched traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Deny,
}

/// A DNS server the workloads may query on port 53 (UDP and TCP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsResolver {
    /// The servers the agent itself resolves names with (`--dns-server` or resolv.conf).
    Upstream,
    Addr(IpAddr),
}

/// One rule: destinations (names to resolve and literal networks) and the ports it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Where the rule comes from, e.g. `ServiceEntry default/googleapis` or `rule google`.
    pub label: String,
    /// Line and column of the rule in its file.
    pub at: (u64, u64),
    pub action: Action,
    pub hosts: Vec<Hostname>,
    /// Literal addresses (as /32 or /128) and prefixes. IPv4-mapped IPv6 is stored as IPv4.
    pub nets: Vec<IpNet>,
    pub ports: PortSet,
    /// Kinds of address-less sockets (raw, ICMP, packet) it allows the pods to create.
    pub sockets: egress_common::SocketKinds,
    /// The pods it applies to (every pod of the node by default).
    pub scope: Scope,
}

/// A validated policy, ready to be turned into kernel map entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub default_action: Action,
    pub dns_resolvers: Vec<DnsResolver>,
    pub rules: Vec<Rule>,
    /// Things worth telling the operator that do not make the policy invalid.
    pub notes: Vec<String>,
}

impl Default for Policy {
    /// Deny everything (but loopback): what a node enforces before it has a valid policy.
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            default_action: Action::Deny,
            dns_resolvers: Vec::new(),
            rules: Vec::new(),
            notes: Vec::new(),
        }
    }
}

impl Policy {
    /// Whether some rule applies to only some pods: then the kernel looks up each caller's
    /// class.
    pub fn scoped(&self) -> bool {
        self.rules.iter().any(|r| !r.scope.node_wide())
    }

    /// Every hostname with the rules that name it, in name order.
    pub fn hosts(&self) -> BTreeMap<&Hostname, Vec<&Rule>> {
        let mut hosts: BTreeMap<&Hostname, Vec<&Rule>> = BTreeMap::new();
        for rule in &self.rules {
            for host in &rule.hosts {
                hosts.entry(host).or_default().push(rule);
            }
        }
        hosts
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// Identifies a policy file's content (see the status file).
pub fn digest(text: &str) -> String {
    format!("{:016x}", crate::hash::fnv1a(text.bytes()))
}

/// Reads and validates a policy file; returns the policy and the file's text.
pub fn load(path: &Path) -> Result<(Policy, String), PolicyError> {
    let text = read(path)?;
    let policy = parse(&text, &path.display().to_string())?;
    Ok((policy, text))
}

/// Reads a policy file's text: a regular file (a FIFO would block the agent, a device could
/// be endless), at most [`MAX_POLICY_BYTES`] of UTF-8, however large it claims to be.
pub fn read(path: &Path) -> Result<String, PolicyError> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let read_err = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let file_err = |message: String| {
        PolicyError::invalid(&path.display().to_string(), (1, 1), "(file)", message)
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let kind = file.metadata().map_err(read_err)?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if std::os::unix::fs::FileTypeExt::is_fifo(&kind) {
            "a FIFO"
        } else if std::os::unix::fs::FileTypeExt::is_char_device(&kind) {
            "a character device"
        } else {
            "not a regular file"
        };
        return Err(file_err(format!(
            "the policy must be a regular file; this is {what}"
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(file_err(format!(
            "the file is larger than {MAX_POLICY_BYTES} bytes, the most a policy file may be"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        file_err(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Validates policy text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
    let docs = yaml::split_documents(text);
    if docs.is_empty() {
        return Err(PolicyError::invalid(
            file,
            (1, 1),
            "(document)",
            "the file holds no YAML document; an empty allow-list is written explicitly, \
             e.g. `kind: EgressPolicy` with `rules: []`",
        ));
    }
    let mut builder = Builder::default();
    for doc in &docs {
        let header: Header = yaml::decode(doc, file)?;
        let at = (doc.first_line, 1);
        match (
            header.kind.as_deref(),
            header.outbound_traffic_policy.is_some(),
        ) {
            (Some(native::KIND), _) => {
                if builder.native_seen {
                    return Err(PolicyError::invalid(
                        file,
                        at,
                        "kind",
                        "a second EgressPolicy document; a file holds at most one",
                    ));
                }
                builder.native_seen = true;
                native::apply(yaml::decode(doc, file)?, file, at, &mut builder)?;
            }
            (Some(istio::SERVICE_ENTRY), _) => {
                istio::apply_service_entry(yaml::decode(doc, file)?, file, at, &mut builder)?;
            }
            (Some(istio::ISTIO_OPERATOR), _) => {
                if let Some(mode) = istio::operator_mode(yaml::decode(doc, file)?) {
                    builder.set_mode(mode, "IstioOperator", file, at)?;
                }
            }
            (None, true) => {
                let mode = istio::mesh_config_mode(yaml::decode(doc, file)?);
                builder.set_mode(mode, "mesh config", file, at)?;
            }
            (Some(other), _) => {
                return Err(PolicyError::invalid(
                    file,
                    at,
                    "kind",
                    format!(
                        "unsupported kind `{other}`; expected EgressPolicy, ServiceEntry, \
                         IstioOperator, or a mesh config document (outboundTrafficPolicy)"
                    ),
                ));
            }
            (None, false) => {
                return Err(PolicyError::invalid(
                    file,
                    at,
                    "kind",
                    "the document has no `kind` and no `outboundTrafficPolicy`; expected \
                     EgressPolicy, ServiceEntry, IstioOperator, or a mesh config document",
                ));
            }
        }
    }
    Ok(builder.finish())
}

/// Enough of any document to tell what it is.
#[derive(serde::Deserialize)]
struct Header {
    kind: Option<String>,
    #[serde(rename = "outboundTrafficPolicy")]
    outbound_traffic_policy: Option<serde::de::IgnoredAny>,
}

/// Collects what every document of a file contributes.
#[derive(Default)]
struct Builder {
    native_seen: bool,
    /// The mode and default action, and which document set them.
    mode: Option<(Mode, Action, &'static str)>,
    dns_resolvers: Option<Vec<DnsResolver>>,
    rules: Vec<Rule>,
    notes: Vec<String>,
}

impl Builder {
    fn set_mode(
        &mut self,
        (mode, action): (Mode, Action),
        by: &'static str,
        file: &str,
        at: (u64, u64),
    ) -> Result<(), PolicyError> {
        if let Some((_, _, earlier)) = self.mode {
            return Err(PolicyError::invalid(
                file,
                at,
                "mode",
                format!("the mode is already set by the {earlier} document; set it once"),
            ));
        }
        self.mode = Some((mode, action, by));
        Ok(())
    }

    fn finish(mut self) -> Policy {
        // Without a mode setting the file is an allow-list, enforced. (Istio's own default is
        // ALLOW_ANY; an egress enforcer that fails open by default would be no enforcer.)
        let (mode, default_action, _) = self.mode.unwrap_or((Mode::Enforce, Action::Deny, ""));
        let policy_hosts: BTreeMap<&Hostname, usize> = self
            .rules
            .iter()
            .flat_map(|r| &r.hosts)
            .fold(BTreeMap::new(), |mut m, h| {
                *m.entry(h).or_default() += 1;
                m
            });
        for (host, n) in policy_hosts.iter().filter(|(_, n)| **n > 1) {
            self.notes.push(format!(
                "{host} is named by {n} rules; its addresses get the union of their ports"
            ));
        }
        Policy {
            mode,
            default_action,
            dns_resolvers: self
                .dns_resolvers
                .unwrap_or_else(|| vec![DnsResolver::Upstream]),
            rules: self.rules,
            notes: self.notes,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
