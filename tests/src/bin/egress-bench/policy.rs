//! The bench's policies: native `EgressPolicy` documents of literal addresses (each one an
//! exact /32 or /128 entry), and the same addresses for nftables and iptables.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

/// The destinations every connect round goes to; allowed in every policy of the bench.
pub const TARGET_V4: &str = "198.51.100.10";
pub const TARGET_V6: &str = "2001:db8:100::10";

/// `n` addresses of a family, `target` among them (the last one), the others taken from a
/// range no connect goes to, starting at the `offset`-th address of that range. IPv4 others
/// are 10.0.0.1 onwards, IPv6 others 2001::1 onwards (both sort below the targets; short, so
/// that 1M entries fit in the agent's 16 MiB limit on a policy file).
pub fn v4_addrs(n: usize, offset: usize, target: Option<&str>) -> Vec<String> {
    let others = n - usize::from(target.is_some());
    let mut out: Vec<String> = (0..others)
        .map(|k| Ipv4Addr::from(0x0a00_0001u32 + (offset + k) as u32).to_string())
        .collect();
    out.extend(target.map(str::to_owned));
    out
}

pub fn v6_addrs(n: usize, offset: usize, target: Option<&str>) -> Vec<String> {
    let others = n - usize::from(target.is_some());
    let base = u128::from(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 1));
    let mut out: Vec<String> = (0..others)
        .map(|k| Ipv6Addr::from(base + (offset + k) as u128).to_string())
        .collect();
    out.extend(target.map(str::to_owned));
    out
}

/// A native policy allowing `addrs` on port 9000, TCP and UDP, under the rule `name`. The
/// list is in flow style (`[a, b, …]`, 100 to a line): the most entries per byte.
pub fn native(name: &str, addrs: &[String]) -> String {
    let mut text = String::with_capacity(addrs.len() * 16 + 256);
    text.push_str("apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n");
    let _ = write!(
        text,
        "  - name: {name}\n    protocol: ANY\n    ports: [9000]\n    cidrs: ["
    );
    for (i, a) in addrs.iter().enumerate() {
        if i % 100 == 0 {
            text.push_str("\n     ");
        }
        // Quoted: an IPv6 address ending in `::` would read as a YAML mapping.
        let _ = write!(text, " \"{a}\",");
    }
    text.push_str("\n    ]\n");
    text
}

/// Addresses per YAML document: the agent's parser allows 250,000 nodes in one (serde-saphyr's
/// default budget), so a native policy, one document, holds fewer addresses than that.
pub const PER_DOCUMENT: usize = 200_000;

/// The policy of `n` entries, half of each family: the targets and other addresses. Up to
/// [`PER_DOCUMENT`] a native policy; beyond, Istio ServiceEntry documents of that many
/// addresses each (a file may hold many), allowing the same ports.
pub fn entries(n: usize) -> String {
    let mut addrs = v4_addrs(n / 2, 0, Some(TARGET_V4));
    addrs.extend(v6_addrs(n / 2, 0, Some(TARGET_V6)));
    if addrs.len() <= PER_DOCUMENT {
        return native("bench", &addrs);
    }
    let mut text = String::with_capacity(addrs.len() * 16);
    for (i, chunk) in addrs.chunks(PER_DOCUMENT).enumerate() {
        let _ = write!(
            text,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: bench-{i}\nspec:\n  hosts: [bench-{i}.bench.test]\n  resolution: STATIC\n  ports:\n    - {{number: 9000, name: tcp, protocol: TCP}}\n    - {{number: 9000, name: udp, protocol: UDP}}\n  addresses: ["
        );
        for (j, a) in chunk.iter().enumerate() {
            if j % 100 == 0 {
                text.push_str("\n   ");
            }
            let _ = write!(text, " \"{a}\",");
        }
        text.push_str("\n  ]\n");
    }
    text
}
