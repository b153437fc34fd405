//! The resolv.conf reader (the agent's upstream servers when no --dns-server is given).
#![no_main]

use egress_agent::resolve::dns::parse_resolv_conf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for server in parse_resolv_conf(text) {
        assert_eq!(server.port(), 53);
    }
});
