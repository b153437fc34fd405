//! The policy parser, both schemas (Istio ServiceEntry / mesh config and EgressPolicy: one
//! entry point dispatches by document), then the computation of the maps' content from what
//! it accepted. Invariants: no panic; an accepted policy yields a desired state whose every
//! entry refers to a port set it carries; an error names the file.
#![no_main]

use egress_agent::{enforce, policy, resolve::HostCache};
use egress_common::PortSetId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match policy::parse(text, "fuzz.yaml") {
        Ok(p) => {
            let mut cache = HostCache::default();
            cache.sync(p.hosts().into_keys(), 0);
            let desired = enforce::compute(&p, &cache, &["192.0.2.53".parse().unwrap()], 0);
            for entry in desired.entries.values() {
                assert!(
                    entry.ports == PortSetId::NONE || desired.ports.contains_key(&entry.ports),
                    "an entry refers to a port set the desired state lacks"
                );
            }
        }
        Err(e) => assert!(e.to_string().contains("fuzz.yaml"), "the error names the file: {e}"),
    }
});
