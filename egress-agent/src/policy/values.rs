//! Field types that validate themselves while they are deserialised, so that their errors
//! carry the position of the offending value.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer, de::Error as _};

/// An address or prefix. A bare address is a /32 or /128; IPv4-mapped IPv6 (`::ffff:a.b.c.d`,
/// `::ffff:0:0/96` and longer) and the NAT64 well-known prefix (`64:ff9b::/96` and longer)
/// are stored as the IPv4 they denote, which is how the kernel programs judge them; host
/// bits must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net(pub IpNet);

impl Net {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let net = if raw.contains('/') {
            let net: IpNet = raw
                .parse()
                .map_err(|_| format!("`{raw}` is not an IP address or CIDR prefix"))?;
            if net.trunc() != net {
                return Err(format!(
                    "`{raw}` has host bits set; the prefix is {}",
                    net.trunc()
                ));
            }
            net
        } else {
            let addr: IpAddr = raw
                .parse()
                .map_err(|_| format!("`{raw}` is not an IP address or CIDR prefix"))?;
            IpNet::from(addr)
        };
        Ok(Self(unmap(net)))
    }
}

/// The IPv4 address an IPv6 address stands for, where the kernel programs judge it as IPv4:
/// IPv4-mapped `::ffff:a.b.c.d`, and the NAT64 well-known prefix `64:ff9b::a.b.c.d` (what
/// DNS64 answers with in IPv6-only clusters).
fn embedded_v4(addr: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let o = addr.octets();
    let nat64 = o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];
    if nat64 {
        return Some(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    addr.to_ipv4_mapped()
}

/// `::ffff:a.b.c.d/n` and `64:ff9b::a.b.c.d/n` (n ≥ 96) → `a.b.c.d/(n-96)`.
pub fn unmap(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = embedded_v4(v6.addr())
    {
        return IpNet::V4(
            Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix length is at most 32"),
        );
    }
    net
}

/// Normalises an address the same way: its IPv4 form where the kernel judges it as IPv4.
pub fn unmap_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A port or an inclusive port range, written `443` or `"8000-8010"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub first: u16,
    pub last: u16,
}

impl PortSpec {
    pub fn parse_number(n: i128) -> Result<u16, String> {
        if (1..=65535).contains(&n) {
            Ok(n as u16)
        } else {
            Err(format!("port {n} is out of range; ports are 1-65535"))
        }
    }

    pub fn parse_str(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let number = |part: &str| -> Result<u16, String> {
            let n: i128 = part.trim().parse().map_err(|_| {
                format!("`{raw}` is not a port or a range; write 443 or \"8000-8010\"")
            })?;
            Self::parse_number(n)
        };
        match s.split_once('-') {
            None => {
                let p = number(s)?;
                Ok(Self { first: p, last: p })
            }
            Some((a, b)) => {
                let (first, last) = (number(a)?, number(b)?);
                if first > last {
                    return Err(format!(
                        "port range `{raw}` is reversed; write \"{last}-{first}\""
                    ));
                }
                Ok(Self { first, last })
            }
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port (443) or a port range (\"8000-8010\")")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<PortSpec, E> {
                PortSpec::parse_number(i128::from(n))
                    .map(|p| PortSpec { first: p, last: p })
                    .map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<PortSpec, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PortSpec, E> {
                PortSpec::parse_str(s).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use ipnet::Ipv6Net;

    use super::*;

    fn v6(net: &str) -> Ipv6Net {
        net.parse().unwrap()
    }

    #[test]
    fn nets_normalise_and_reject_host_bits() {
        assert_eq!(
            Net::parse("198.51.100.7").unwrap().0.to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            Net::parse("::ffff:198.51.100.7").unwrap().0.to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            Net::parse("::ffff:10.0.0.0/104").unwrap().0.to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            Net::parse("2001:db8::/32").unwrap().0,
            IpNet::V6(v6("2001:db8::/32"))
        );
        assert!(Net::parse("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("example.com").is_err());
    }

    #[test]
    fn port_specs() {
        assert_eq!(
            PortSpec::parse_str("8000-8010"),
            Ok(PortSpec {
                first: 8000,
                last: 8010
            })
        );
        assert_eq!(
            PortSpec::parse_str("443"),
            Ok(PortSpec {
                first: 443,
                last: 443
            })
        );
        for bad in ["8010-8000", "0-80", "1-65536", "80-", "443/tcp", "", "-1"] {
            assert!(
                PortSpec::parse_str(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(PortSpec::parse_number(0).is_err());
        assert!(PortSpec::parse_number(70000).is_err());
    }
}
