//! What a user would otherwise pick: netfilter in the client's namespace, on the output
//! hook, stateless (no conntrack), letting the allowed addresses' TCP and UDP through and
//! dropping other TCP and UDP.
//! - nftables: one hash set per family holding the same addresses as the agent's 100k
//!   configuration (50k each);
//! - iptables (Debian's default `iptables`, the nf_tables backend) and ip6tables: a chain of
//!   10k `-d ADDR -j ACCEPT` rules per family, the connected address last — a linear chain
//!   is walked by every packet until a rule matches.
//!
//! Both see packets, not `connect()`: the SYN, the ACK and the reset of each TCP round.

use std::fmt::Write as _;

use crate::{
    bed::{Bed, Client},
    policy::{TARGET_V4, TARGET_V6, v4_addrs, v6_addrs},
};

pub const NFT_SET: usize = 100_000;
pub const IPT_RULES: usize = 10_000;

/// Loads the nftables ruleset into `client`'s namespace; returns what was done.
pub fn nftables(bed: &Bed, client: &Client) -> anyhow::Result<String> {
    let mut text = String::from(
        "table inet egress_bench {\n  set allow4 { type ipv4_addr; }\n  set allow6 { type ipv6_addr; }\n  chain out {\n    type filter hook output priority filter; policy accept;\n    meta l4proto { tcp, udp } ip daddr @allow4 accept\n    meta l4proto { tcp, udp } ip6 daddr @allow6 accept\n    meta l4proto { tcp, udp } drop\n  }\n}\n",
    );
    for (set, addrs) in [
        ("allow4", v4_addrs(NFT_SET / 2, 0, Some(TARGET_V4))),
        ("allow6", v6_addrs(NFT_SET / 2, 0, Some(TARGET_V6))),
    ] {
        for chunk in addrs.chunks(5000) {
            let _ = writeln!(
                text,
                "add element inet egress_bench {set} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
    let file = bed.dir.join("nft.rules");
    std::fs::write(&file, text)?;
    let started = std::time::Instant::now();
    client.exec_with_input("nft", &["-f", "-"], &file)?;
    Ok(format!(
        "nftables sets, {} IPv4 + {} IPv6 addresses: loaded in {:.2} s: ip netns exec {} nft -f {}",
        NFT_SET / 2,
        NFT_SET / 2,
        started.elapsed().as_secs_f64(),
        client.ns.name,
        file.display()
    ))
}

/// Loads the iptables and ip6tables chains into `client`'s namespace.
pub fn iptables(bed: &Bed, client: &Client) -> anyhow::Result<String> {
    let mut shown = Vec::new();
    let started = std::time::Instant::now();
    for (tool, addrs, len) in [
        (
            "iptables-restore",
            v4_addrs(IPT_RULES, 0, Some(TARGET_V4)),
            32,
        ),
        (
            "ip6tables-restore",
            v6_addrs(IPT_RULES, 0, Some(TARGET_V6)),
            128,
        ),
    ] {
        let mut text = String::from("*filter\n:EGRESS - [0:0]\n-A OUTPUT -o c0 -j EGRESS\n");
        for a in &addrs {
            let _ = writeln!(text, "-A EGRESS -d {a}/{len} -j ACCEPT");
        }
        text.push_str("-A EGRESS -p tcp -j DROP\n-A EGRESS -p udp -j DROP\nCOMMIT\n");
        let file = bed.dir.join(format!("{tool}.rules"));
        std::fs::write(&file, text)?;
        client.exec_with_input(tool, &[], &file)?;
        shown.push(format!(
            "ip netns exec {} {tool} < {}",
            client.ns.name,
            file.display()
        ));
    }
    Ok(format!(
        "iptables chain, {IPT_RULES} rules per family, the allowed address last: loaded in {:.2} s: {}",
        started.elapsed().as_secs_f64(),
        shown.join("; ")
    ))
}
