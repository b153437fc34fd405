//! Queries the upstream DNS servers for a hostname's A and AAAA records.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        op::ResponseCode,
        rr::{Name, RData, Record, RecordType},
    },
};

use super::cache::Outcome;
use crate::policy::{Hostname, values::unmap_addr};

/// The upstream resolvers, queried over UDP with TCP fallback for truncated answers.
pub struct Upstream {
    resolver: TokioResolver,
    servers: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("failed to read {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} names no nameserver; pass --dns-server")]
    NoServers { path: String },
    #[error("failed to build the DNS resolver: {0}")]
    Build(#[from] NetError),
}

/// Nameservers of a resolv.conf file (port 53).
pub fn servers_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, UpstreamError> {
    let text = std::fs::read_to_string(path).map_err(|source| UpstreamError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    let servers = parse_resolv_conf(&text);
    if servers.is_empty() {
        return Err(UpstreamError::NoServers {
            path: path.display().to_string(),
        });
    }
    Ok(servers)
}

/// The nameservers a resolv.conf text names (port 53), in order.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            // Drop an IPv6 zone (`fe80::1%eth0`): link-local upstreams are not supported.
            let addr = rest.trim().split('%').next()?;
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

impl Upstream {
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Result<Self, UpstreamError> {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 2;
        // The agent keeps its own per-address expiry; the resolver must not answer from a
        // cache of its own, or refreshes would not see new addresses.
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.ndots = 0;
        options.preserve_intermediates = true;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()?;
        Ok(Self { resolver, servers })
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Resolves A and AAAA together.
    pub async fn resolve(&self, host: &Hostname) -> Outcome {
        let name = match Name::from_ascii(format!("{host}.")) {
            Ok(n) => n,
            Err(e) => return Outcome::Failed(format!("invalid name: {e}")),
        };
        let (v4, v6) = tokio::join!(
            self.query(name.clone(), RecordType::A),
            self.query(name, RecordType::AAAA)
        );
        combine(v4, v6)
    }

    async fn query(&self, name: Name, rtype: RecordType) -> Outcome {
        match self.resolver.lookup(name, rtype).await {
            Ok(lookup) => outcome_of_answers(lookup.answers()),
            Err(NetError::Dns(DnsError::NoRecordsFound(no))) => match no.response_code {
                ResponseCode::NXDomain | ResponseCode::NoError => Outcome::NoAddress {
                    nxdomain: no.response_code == ResponseCode::NXDomain,
                    negative_ttl: no.negative_ttl,
                },
                code => Outcome::Failed(format!("{rtype} query answered {code}")),
            },
            Err(e) => Outcome::Failed(format!("{rtype} query failed: {e}")),
        }
    }
}

/// What an answer section says about a name: its addresses, each with the smallest TTL along
/// the CNAME chain (a chain lasts as long as its shortest-lived link), IPv4-mapped IPv6 as
/// IPv4. Everything the agent takes from a DNS message goes through here (fuzzed).
pub fn outcome_of_answers(answers: &[Record]) -> Outcome {
    let chain_ttl = answers
        .iter()
        .filter(|r| matches!(r.data, RData::CNAME(_)))
        .map(|r| r.ttl)
        .min()
        .unwrap_or(u32::MAX);
    let addrs: Vec<(IpAddr, u32)> = answers
        .iter()
        .filter_map(|r| {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => return None,
            };
            Some((unmap_addr(ip), r.ttl.min(chain_ttl)))
        })
        .collect();
    if addrs.is_empty() {
        Outcome::NoAddress {
            nxdomain: false,
            negative_ttl: None,
        }
    } else {
        Outcome::Addresses(addrs)
    }
}

/// One outcome for a name from its A and AAAA outcomes.
fn combine(v4: Outcome, v6: Outcome) -> Outcome {
    use Outcome::*;
    match (v4, v6) {
        (Addresses(mut a), Addresses(b)) => {
            a.extend(b);
            Addresses(a)
        }
        (Addresses(a), _) | (_, Addresses(a)) => Addresses(a),
        (Failed(e), _) | (_, Failed(e)) => Failed(e),
        (
            NoAddress {
                nxdomain: n1,
                negative_ttl: t1,
            },
            NoAddress {
                nxdomain: n2,
                negative_ttl: t2,
            },
        ) => NoAddress {
            nxdomain: n1 || n2,
            negative_ttl: match (t1, t2) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_prefers_addresses_then_failures() {
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let none = |nx, t| Outcome::NoAddress {
            nxdomain: nx,
            negative_ttl: t,
        };
        assert_eq!(
            combine(Outcome::Addresses(vec![(ip, 5)]), none(false, None)),
            Outcome::Addresses(vec![(ip, 5)])
        );
        assert_eq!(
            combine(none(false, Some(10)), Outcome::Addresses(vec![(ip, 5)])),
            Outcome::Addresses(vec![(ip, 5)])
        );
        assert_eq!(
            combine(none(true, Some(10)), none(false, Some(20))),
            none(true, Some(10))
        );
        assert!(matches!(
            combine(Outcome::Failed("x".into()), none(true, None)),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn resolv_conf_nameservers() {
        let dir = std::env::temp_dir().join(format!("egress-resolv-{}", std::process::id()));
        std::fs::write(
            &dir,
            "search x\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n# c\n",
        )
        .unwrap();
        let servers = servers_from_resolv_conf(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            servers,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
