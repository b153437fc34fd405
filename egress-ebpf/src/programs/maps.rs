//! The maps. User space pins them (one generation per layout and capacity) and sets the
//! capacities of the sized ones at load time; the values here are defaults.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use egress_common::{
    AllowEntry, CIDR_V4_KEY, CIDR_V6_KEY, CLASS_SLOTS, ClassId, Config, Counter,
    DEFAULT_EVENT_BUFFER, DEFAULT_MAX_ENTRIES, FLOW_SLOTS, FlowKey, FlowStat, PortRanges,
    PortSetId, SocketKinds, SourceId, SourceRecord, V4Key, V6Key,
};

// Hash maps are created without preallocation so that an update replaces an element through
// RCU: a concurrent lookup sees the old value or the new one, never a recycled element.
#[map(name = "EGRESS_ALLOW_V4")]
pub static EGRESS_ALLOW_V4: HashMap<V4Key, AllowEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_ALLOW_V6")]
pub static EGRESS_ALLOW_V6: HashMap<V6Key, AllowEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_CIDR_V4")]
pub static EGRESS_CIDR_V4: LpmTrie<[u8; CIDR_V4_KEY], AllowEntry> =
    LpmTrie::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_CIDR_V6")]
pub static EGRESS_CIDR_V6: LpmTrie<[u8; CIDR_V6_KEY], AllowEntry> =
    LpmTrie::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_PORTS")]
pub static EGRESS_PORTS: HashMap<PortSetId, PortRanges> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_CONFIG")]
pub static EGRESS_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "EGRESS_COUNTERS")]
pub static EGRESS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Read only by user space; declared here so that it is created and pinned with the rest.
#[map(name = "EGRESS_SOURCES")]
pub static EGRESS_SOURCES: HashMap<SourceId, SourceRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_CLASSES")]
pub static EGRESS_CLASSES: HashMap<u64, ClassId> =
    HashMap::with_max_entries(CLASS_SLOTS, BPF_F_NO_PREALLOC);

#[map(name = "EGRESS_EVENTS")]
pub static EGRESS_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENT_BUFFER, 0);

#[map(name = "EGRESS_FLOWS")]
pub static EGRESS_FLOWS: LruPerCpuHashMap<FlowKey, FlowStat> =
    LruPerCpuHashMap::with_max_entries(FLOW_SLOTS, 0);

#[map(name = "EGRESS_SOCKETS")]
pub static EGRESS_SOCKETS: HashMap<ClassId, SocketKinds> =
    HashMap::with_max_entries(CLASS_SLOTS, BPF_F_NO_PREALLOC);
