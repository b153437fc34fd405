//! Every DNS message the agent takes in: a response decoded by hickory-proto (as the resolver
//! does), its answer section read by the agent (`outcome_of_answers`: CNAME chains, TTLs,
//! mapped addresses), and the outcome recorded in the host cache, whose clamping and pruning
//! run on it. Invariants: no panic; every address recorded is live until a time no earlier
//! than now plus the minimum TTL, and the cache holds no more than the answer had.
#![no_main]

use egress_agent::{
    policy::Hostname,
    resolve::{HostCache, Outcome, dns::outcome_of_answers},
};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::from_vec(data) else {
        return;
    };
    let outcome = outcome_of_answers(&message.answers);
    let host = Hostname::parse("fuzz.example").unwrap();
    let mut cache = HostCache::default();
    cache.sync([&host], 1_000);
    let count = match &outcome {
        Outcome::Addresses(a) => a.len(),
        _ => 0,
    };
    cache.apply(&host, outcome, 1_000);
    let live = cache.live(&host, 1_000);
    assert!(live.len() <= count, "more live addresses than answered");
    for (addr, until) in &live {
        assert!(*until > 1_000, "{addr} recorded already expired");
        if let std::net::IpAddr::V6(v6) = addr {
            assert!(v6.to_ipv4_mapped().is_none(), "a mapped address kept as IPv6");
        }
    }
    cache.prune(1_000 + 86_400 * 365);
    // Re-encoding what was decoded must not panic either (the agent logs answers).
    let _ = message.to_vec();
});
