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
/// are 10.0.0.1 onwards, IPv6 others 2001:db8:1::/48 (both sort below the targets).
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
    let base = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1));
    let mut out: Vec<String> = (0..others)
        .map(|k| Ipv6Addr::from(base + ((offset + k) as u128) * 0x1_0001).to_string())
        .collect();
    out.extend(target.map(str::to_owned));
    out
}

/// A native policy allowing `addrs` on port 9000, TCP and UDP, under the rule `name`.
pub fn native(name: &str, addrs: &[String]) -> String {
    let mut text = String::with_capacity(addrs.len() * 24 + 256);
    text.push_str("apiVersion: egress/v1\nkind: EgressPolicy\nrules:\n");
    let _ = writeln!(
        text,
        "  - name: {name}\n    protocol: ANY\n    ports: [9000]\n    cidrs:"
    );
    for a in addrs {
        // Quoted: an IPv6 address ending in `::` would read as a YAML mapping.
        let _ = writeln!(text, "      - \"{a}\"");
    }
    text
}

/// The policy of `n` entries per family: the targets and `n - 1` other addresses each.
pub fn entries(n: usize) -> String {
    let mut addrs = v4_addrs(n, 0, Some(TARGET_V4));
    addrs.extend(v6_addrs(n, 0, Some(TARGET_V6)));
    native("bench", &addrs)
}
