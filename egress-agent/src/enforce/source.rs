//! Sources: the hostnames and rules that entries come from, identified by a stable hash so
//! that a restarted agent finds the same ids in the pinned maps.

use egress_common::{MAX_LABEL, ResolveStatus, SourceId, SourceKind, SourceRecord};

/// 64-bit FNV-1a of the kind and label.
pub fn source_id(kind: SourceKind, label: &str) -> SourceId {
    SourceId(crate::hash::fnv1a(
        std::iter::once(kind.0).chain(label.bytes()),
    ))
}

/// Label of the implicit source that lets workloads reach their DNS resolvers.
pub const DNS_RESOLVER_LABEL: &str = "dns-resolver";

pub fn record(
    kind: SourceKind,
    label: &str,
    status: ResolveStatus,
    addr_count: u32,
    resolved_at: u64,
    refresh_at: u64,
) -> SourceRecord {
    let mut buf = [0u8; MAX_LABEL];
    // Labels are hostnames (≤ 253 bytes) or rule names; longer rule names are cut, on a
    // character boundary so that the stored label stays UTF-8.
    let mut len = label.len().min(MAX_LABEL);
    while !label.is_char_boundary(len) {
        len -= 1;
    }
    buf[..len].copy_from_slice(&label.as_bytes()[..len]);
    SourceRecord {
        kind,
        status,
        label_len: len as u16,
        addr_count,
        resolved_at,
        refresh_at,
        label: buf,
    }
}

pub fn label(record: &SourceRecord) -> String {
    let len = usize::from(record.label_len).min(MAX_LABEL);
    String::from_utf8_lossy(&record.label[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_kind_dependent() {
        // A pinned map outlives the agent binary: the hash must never change.
        assert_eq!(
            source_id(SourceKind::HOST, "www.googleapis.com"),
            source_id(SourceKind::HOST, "www.googleapis.com")
        );
        assert_eq!(
            source_id(SourceKind::HOST, ""),
            SourceId(0xaf63_bc4c_8601_b62c)
        );
        assert_ne!(
            source_id(SourceKind::HOST, "x"),
            source_id(SourceKind::RULE, "x")
        );
    }

    #[test]
    fn labels_round_trip_and_are_cut_on_char_boundaries() {
        let r = record(
            SourceKind::RULE,
            "rule café",
            ResolveStatus::STATIC,
            1,
            0,
            0,
        );
        assert_eq!(label(&r), "rule café");
        let long = "é".repeat(200);
        let r = record(SourceKind::RULE, &long, ResolveStatus::STATIC, 1, 0, 0);
        assert_eq!(label(&r), "é".repeat(128));
    }
}
