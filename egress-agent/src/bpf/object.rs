//! The kernel programs, embedded at build time (see build.rs).

/// The `egress-ebpf` ELF object.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-ebpf"));

/// Whether this binary carries the programs (a build with `AYA_BUILD_SKIP=1` does not).
pub fn present() -> bool {
    !OBJECT.is_empty()
}

#[cfg(test)]
mod tests {
    use egress_common::{maps, programs};

    use super::*;

    /// Every name the agent looks up must be a symbol of the object, or loading fails at
    /// run time with a bare "not found".
    #[test]
    fn every_program_and_map_name_is_in_the_object() {
        assert!(present(), "built without kernel programs (AYA_BUILD_SKIP)");
        let obj = aya_obj::Object::parse(OBJECT).expect("the object parses");
        for name in programs::ALL.iter().chain([&programs::PACKET_SOCKET]) {
            assert!(obj.programs.contains_key(*name), "program {name} missing");
        }
        for name in maps::ALL {
            assert!(obj.maps.contains_key(name), "map {name} missing");
        }
        assert_eq!(
            obj.programs.len(),
            programs::ALL.len() + 1,
            "unexpected programs"
        );
        assert_eq!(obj.maps.len(), maps::ALL.len(), "unexpected maps");
    }
}
