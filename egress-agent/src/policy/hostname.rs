//! Hostnames as the policy names them, normalised the way DNS compares them.

use std::fmt;

/// A validated, normalised DNS name: ASCII (IDNA A-labels), lower case, no trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

/// Longest DNS name in presentation form without the trailing dot (RFC 1035 §2.3.4).
const MAX_NAME: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;

impl Hostname {
    /// Normalises `raw` (case, trailing dot, Unicode → punycode) and validates it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("empty hostname".into());
        }
        if trimmed.contains('*') {
            return Err(format!(
                "`{trimmed}` is a wildcard; wildcard hosts need DNS-aware enforcement, which \
                 this agent does not do yet: list each name explicitly"
            ));
        }
        let without_dot = trimmed.strip_suffix('.').unwrap_or(trimmed);
        // An address would be sent to DNS as a name and resolve to nothing: say so instead.
        // (Top-level domains are never all-numeric, RFC 3696 §2, so no real name is lost.)
        if without_dot.parse::<std::net::IpAddr>().is_ok()
            || without_dot
                .rsplit('.')
                .next()
                .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "`{trimmed}` is an address, not a hostname; list addresses under `cidrs`"
            ));
        }
        // Check labels before IDNA processing, which would otherwise accept or rewrite
        // some malformed input (empty labels, for one).
        for label in without_dot.split('.') {
            if label.is_empty() {
                return Err(format!("`{trimmed}` has an empty label"));
            }
        }
        let ascii = idna::domain_to_ascii(without_dot)
            .map_err(|_| format!("`{trimmed}` is not a valid internationalised hostname"))?;
        if ascii.len() > MAX_NAME {
            return Err(format!(
                "`{trimmed}` is {} characters long; a hostname has at most {MAX_NAME}",
                ascii.len()
            ));
        }
        for label in ascii.split('.') {
            if label.is_empty() {
                return Err(format!("`{trimmed}` has an empty label"));
            }
            if label.len() > MAX_LABEL {
                return Err(format!(
                    "`{trimmed}` has a label of {} characters; a label has at most {MAX_LABEL}",
                    label.len()
                ));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(format!(
                    "`{trimmed}` contains `{c}`, which a hostname cannot"
                ));
            }
        }
        Ok(Self(ascii))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Hostname {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_trailing_dot_and_unicode() {
        assert_eq!(
            Hostname::parse("Api.Allowed.TEST.").unwrap().as_str(),
            "api.allowed.test"
        );
        assert_eq!(
            Hostname::parse("bücher.allowed.test").unwrap().as_str(),
            "xn--bcher-kva.allowed.test"
        );
        assert_eq!(
            Hostname::parse("xn--bcher-kva.allowed.test").unwrap(),
            Hostname::parse("BÜCHER.allowed.test").unwrap()
        );
    }

    #[test]
    fn rejects_malformed_names() {
        let long_label = format!("{}.allowed.test", "a".repeat(64));
        for bad in [
            "",
            "a..b",
            ".a",
            "*.cdn.allowed.test",
            "**.deep.allowed.test",
            long_label.as_str(),
            "a b.test",
            "a/b.test",
        ] {
            assert!(Hostname::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let ok_label = format!("{}.allowed.test", "a".repeat(63));
        assert!(Hostname::parse(&ok_label).is_ok());
    }
}
