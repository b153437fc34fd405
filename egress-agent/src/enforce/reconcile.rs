//! Brings the maps from what they hold to what they should hold.
//!
//! One [`Reconciler`] owns the maps (through a [`MapStore`]) and a mirror of their content,
//! so a reconciliation only writes differences. Order of writes:
//! 1. sources and port sets, then entries that are new or changed — an update replaces a
//!    value in one step, so a destination present before and after is never missing in
//!    between, and an entry is written only once the port set it refers to is there;
//! 2. the configuration (mode, default action);
//! 3. removals of entries, then of sources, no longer wanted; port sets no entry refers to
//!    are removed a little later (a program that read an entry a moment before its update
//!    may still look up the set the old value named).
//!
//! Adding before removing means that during a reload a destination is allowed by the old
//! policy, the new one, or both — never by neither, and never by something neither allows.
//! A write that fails does not stop the removals: what the policy no longer allows goes even
//! when something new could not be added (the error is returned, and the next
//! reconciliation tries again).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use egress_common::{
    AllowEntry, CLASS_SLOTS, ClassId, Config, PortRanges, PortSetId, SocketKinds, SourceId,
    SourceRecord, maps,
};

use super::{Desired, EntryKey, Target};

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("map {map} is full ({capacity} entries); raise --max-entries")]
    Full { map: &'static str, capacity: u32 },
    #[error("failed to {op} {key} in map {map}: {source}")]
    Syscall {
        op: &'static str,
        map: &'static str,
        key: String,
        source: std::io::Error,
    },
}

/// The capacity of each sized map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub max_entries: u32,
}

/// What must fit, per map.
#[derive(Debug, thiserror::Error)]
#[error(
    "the policy needs {} but the maps hold at most {capacity} entries each (--max-entries); nothing was changed",
    describe(needs)
)]
pub struct CapacityError {
    pub needs: Vec<(&'static str, usize)>,
    pub capacity: u32,
}

fn describe(needs: &[(&'static str, usize)]) -> String {
    needs
        .iter()
        .map(|(map, n)| format!("{n} entries in {map}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Access to the maps. The kernel implementation is `crate::bpf::PinnedMaps`.
pub trait MapStore {
    fn capacity(&self) -> Capacity;
    fn read_entries(&self) -> Result<BTreeMap<EntryKey, AllowEntry>, StoreError>;
    fn read_ports(&self) -> Result<BTreeMap<PortSetId, PortRanges>, StoreError>;
    fn read_sources(&self) -> Result<BTreeMap<SourceId, SourceRecord>, StoreError>;
    fn read_config(&self) -> Result<Config, StoreError>;
    fn put_entry(&mut self, key: &EntryKey, value: &AllowEntry) -> Result<(), StoreError>;
    /// Writes `items` in order; returns how many were written before the first failure,
    /// and that failure. A store may write many in one call (the kernel's batch update).
    fn put_entries(&mut self, items: &[(EntryKey, AllowEntry)]) -> (usize, Result<(), StoreError>) {
        for (i, (key, value)) in items.iter().enumerate() {
            if let Err(e) = self.put_entry(key, value) {
                return (i, Err(e));
            }
        }
        (items.len(), Ok(()))
    }
    fn remove_entry(&mut self, key: &EntryKey) -> Result<(), StoreError>;
    fn put_ports(&mut self, id: PortSetId, set: &PortRanges) -> Result<(), StoreError>;
    fn remove_ports(&mut self, id: PortSetId) -> Result<(), StoreError>;
    fn put_source(&mut self, id: SourceId, record: &SourceRecord) -> Result<(), StoreError>;
    fn remove_source(&mut self, id: SourceId) -> Result<(), StoreError>;
    fn put_config(&mut self, config: &Config) -> Result<(), StoreError>;
    fn read_classes(&self) -> Result<BTreeMap<u64, ClassId>, StoreError>;
    fn put_class(&mut self, cgroup_id: u64, class: ClassId) -> Result<(), StoreError>;
    fn remove_class(&mut self, cgroup_id: u64) -> Result<(), StoreError>;
    fn read_sockets(&self) -> Result<BTreeMap<ClassId, SocketKinds>, StoreError>;
    fn put_sockets(&mut self, class: ClassId, kinds: SocketKinds) -> Result<(), StoreError>;
    fn remove_sockets(&mut self, class: ClassId) -> Result<(), StoreError>;
}

/// Name of the map an entry key lives in.
pub fn map_of(key: &EntryKey) -> &'static str {
    match key.target {
        Target::V4(_) => maps::ALLOW_V4,
        Target::V6(_) => maps::ALLOW_V6,
        Target::Net4(_) => maps::CIDR_V4,
        Target::Net6(_) => maps::CIDR_V6,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counts of one reconciliation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

/// How long a port set no entry refers to is kept before it is removed: far longer than any
/// program run, which is all the time a reader of an old entry value needs.
pub const PORT_SET_RETIREMENT: Duration = Duration::from_secs(2);

/// Additions and removals after which the mirror is rebuilt compactly.
const COMPACT_AFTER: usize = 1000;

/// What the mirror keeps of an entry the maps hold: which port set it names (for retiring
/// sets) and a fingerprint of its 88 bytes (to tell whether the map holds the desired value)
/// — 16 bytes instead of the entry, which with 100k entries is 7 MB of the agent's memory.
/// A 64-bit FNV-1a collision between an entry and its replacement would leave the old value
/// in place until the next change of that entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub ports: PortSetId,
    fingerprint: u64,
}

impl Held {
    pub fn of(entry: &AllowEntry) -> Self {
        // SAFETY: AllowEntry is plain old data without padding (see egress-common's size
        // assertions); its bytes are initialised.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (entry as *const AllowEntry).cast::<u8>(),
                std::mem::size_of::<AllowEntry>(),
            )
        };
        Self {
            ports: entry.ports,
            fingerprint: crate::hash::fnv1a(bytes.iter().copied()),
        }
    }
}

pub struct Reconciler<S> {
    store: S,
    entries: BTreeMap<EntryKey, Held>,
    ports: BTreeMap<PortSetId, PortRanges>,
    sources: BTreeMap<SourceId, SourceRecord>,
    config: Config,
    classes: BTreeMap<u64, ClassId>,
    sockets: BTreeMap<ClassId, SocketKinds>,
    /// Port sets no entry refers to, and since when.
    retired: BTreeMap<PortSetId, Instant>,
    retirement: Duration,
}

impl<S: MapStore> Reconciler<S> {
    /// Takes over `store`, reading what it holds.
    pub fn new(store: S) -> Result<Self, StoreError> {
        Ok(Self {
            entries: store
                .read_entries()?
                .iter()
                .map(|(k, e)| (*k, Held::of(e)))
                .collect(),
            ports: store.read_ports()?,
            sources: store.read_sources()?,
            config: store.read_config()?,
            classes: store.read_classes()?,
            sockets: store.read_sockets()?,
            store,
            retired: BTreeMap::new(),
            retirement: PORT_SET_RETIREMENT,
        })
    }

    /// Sets how long unreferenced port sets are kept (tests use zero).
    pub fn with_retirement(mut self, retirement: Duration) -> Self {
        self.retirement = retirement;
        self
    }

    /// The entries the maps hold (as the mirror keeps them).
    pub fn entries(&self) -> &BTreeMap<EntryKey, Held> {
        &self.entries
    }

    pub fn ports(&self) -> &BTreeMap<PortSetId, PortRanges> {
        &self.ports
    }

    pub fn sources(&self) -> &BTreeMap<SourceId, SourceRecord> {
        &self.sources
    }

    pub fn classes(&self) -> &BTreeMap<u64, ClassId> {
        &self.classes
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    /// Refuses a desired state that cannot fit, before anything is written.
    pub fn preflight(&self, desired: &Desired) -> Result<(), CapacityError> {
        let capacity = self.store.capacity().max_entries;
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for key in desired.entries.keys() {
            *counts.entry(map_of(key)).or_default() += 1;
        }
        counts.insert(maps::PORTS, desired.ports.len());
        counts.insert(maps::SOURCES, desired.sources.len());
        let mut needs: Vec<_> = counts
            .into_iter()
            .filter(|&(_, n)| n > capacity as usize)
            .collect();
        if desired.classes.len() > CLASS_SLOTS as usize {
            needs.push((maps::CLASSES, desired.classes.len()));
        }
        if needs.is_empty() {
            Ok(())
        } else {
            Err(CapacityError { needs, capacity })
        }
    }

    /// Writes the difference between the maps and `desired`. On a failed write the rest is
    /// still done, removals included, and the first error is returned; the mirror always
    /// matches what the maps hold.
    pub fn apply(&mut self, desired: &Desired) -> Result<Applied, ReconcileError> {
        self.preflight(desired)?;
        let mut failure: Option<StoreError> = None;
        let mut note = |r: Result<(), StoreError>| match r {
            Ok(()) => true,
            Err(e) => {
                failure.get_or_insert(e);
                false
            }
        };
        let r = self.make_room(desired);
        note(r);
        let mut applied = Applied::default();

        for (id, record) in &desired.sources {
            if self.sources.get(id) != Some(record) && note(self.store.put_source(*id, record)) {
                self.sources.insert(*id, *record);
            }
        }
        let mut collided = BTreeSet::new();
        for (id, set) in &desired.ports {
            match self.ports.get(id) {
                // A set's id is derived from its content: the same id should mean the same set.
                Some(held) if held == set => {}
                Some(_) => {
                    // Two sets hashed alike (never seen; 64 bits): the entries that need the
                    // new one wait rather than get the other's ports.
                    tracing::error!(id = format!("{:x}", id.0), "port set id collision");
                    collided.insert(*id);
                    note(Err(StoreError::Syscall {
                        op: "write",
                        map: maps::PORTS,
                        key: format!("{:x}", id.0),
                        source: std::io::Error::other("port set id collision"),
                    }));
                }
                None => {
                    if note(self.store.put_ports(*id, set)) {
                        self.ports.insert(*id, *set);
                    }
                }
            }
        }
        let writes: Vec<(EntryKey, AllowEntry)> = desired
            .entries
            .iter()
            .filter(|(key, entry)| self.entries.get(key) != Some(&Held::of(entry)))
            // An entry whose port set could not be written waits (the failure is noted).
            .filter(|(_, entry)| {
                entry.ports == PortSetId::NONE
                    || (self.ports.contains_key(&entry.ports) && !collided.contains(&entry.ports))
            })
            .map(|(key, entry)| (*key, *entry))
            .collect();
        let mut next = 0;
        while next < writes.len() {
            let (written, r) = self.store.put_entries(&writes[next..]);
            for (key, entry) in &writes[next..next + written] {
                match self.entries.insert(*key, Held::of(entry)) {
                    Some(_) => applied.changed += 1,
                    None => applied.added += 1,
                }
            }
            next += written;
            if !note(r) {
                next += 1; // the one that failed; the rest are still tried
            }
        }
        // A class's socket kinds are in before its pods are placed, and removed after.
        for (&class, &kinds) in &desired.sockets {
            if self.sockets.get(&class) != Some(&kinds)
                && note(self.store.put_sockets(class, kinds))
            {
                self.sockets.insert(class, kinds);
            }
        }
        // Cgroups move to their classes once those classes' entries are in, and the
        // configuration (which says whether classes are looked up at all) follows.
        for (&cgroup, &class) in &desired.classes {
            if self.classes.get(&cgroup) != Some(&class)
                && note(self.store.put_class(cgroup, class))
            {
                self.classes.insert(cgroup, class);
            }
        }
        if self.config != desired.config && note(self.store.put_config(&desired.config)) {
            self.config = desired.config;
        }
        let stale: Vec<u64> = self
            .classes
            .keys()
            .filter(|k| !desired.classes.contains_key(k))
            .copied()
            .collect();
        for cgroup in stale {
            if note(self.store.remove_class(cgroup)) {
                self.classes.remove(&cgroup);
            }
        }
        let stale: Vec<ClassId> = self
            .sockets
            .keys()
            .filter(|k| !desired.sockets.contains_key(k))
            .copied()
            .collect();
        for class in stale {
            if note(self.store.remove_sockets(class)) {
                self.sockets.remove(&class);
            }
        }

        let stale: Vec<EntryKey> = self
            .entries
            .keys()
            .filter(|k| !desired.entries.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            if note(self.store.remove_entry(&key)) {
                self.entries.remove(&key);
                applied.removed += 1;
            }
        }
        let stale: Vec<SourceId> = self
            .sources
            .keys()
            .filter(|k| !desired.sources.contains_key(k))
            .copied()
            .collect();
        for id in stale {
            if note(self.store.remove_source(id)) {
                self.sources.remove(&id);
            }
        }
        let r = self.retire_port_sets(Instant::now());
        note(r);
        if applied.added + applied.removed >= COMPACT_AFTER {
            // Keys inserted in ascending order leave the B-tree's nodes half full: rebuilt
            // from its sorted content, the mirror of a 100k policy takes half the memory.
            self.entries = std::mem::take(&mut self.entries).into_iter().collect();
        }
        match failure {
            None => Ok(applied),
            Some(e) => Err(e.into()),
        }
    }

    /// Port sets no entry in the maps refers to: retired now, removed once retired long
    /// enough.
    fn retire_port_sets(&mut self, now: Instant) -> Result<(), StoreError> {
        let referenced: BTreeSet<PortSetId> = self.entries.values().map(|e| e.ports).collect();
        self.retired.retain(|id, _| !referenced.contains(id));
        let unreferenced: Vec<PortSetId> = self
            .ports
            .keys()
            .filter(|id| !referenced.contains(id))
            .copied()
            .collect();
        let mut result = Ok(());
        for id in unreferenced {
            let since = *self.retired.entry(id).or_insert(now);
            if now.duration_since(since) >= self.retirement {
                match self.store.remove_ports(id) {
                    Ok(()) => {
                        self.ports.remove(&id);
                        self.retired.remove(&id);
                    }
                    Err(e) => result = Err(e),
                }
            }
        }
        result
    }

    /// Whether port sets wait for removal (the agent reconciles again once they are due).
    pub fn retiring(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Adding before removing needs room for both the old and the new content of a map.
    /// When a map has no such room, what is stale in it goes first: it is denied from then
    /// on, as it would be a moment later anyway.
    fn make_room(&mut self, desired: &Desired) -> Result<(), StoreError> {
        let capacity = self.store.capacity().max_entries as usize;
        for map in [maps::ALLOW_V4, maps::ALLOW_V6, maps::CIDR_V4, maps::CIDR_V6] {
            let in_map = |k: &&EntryKey| map_of(k) == map;
            let union = self.entries.keys().filter(in_map).count()
                + desired
                    .entries
                    .keys()
                    .filter(in_map)
                    .filter(|k| !self.entries.contains_key(*k))
                    .count();
            if union <= capacity {
                continue;
            }
            let stale: Vec<EntryKey> = self
                .entries
                .keys()
                .filter(in_map)
                .filter(|k| !desired.entries.contains_key(*k))
                .copied()
                .collect();
            tracing::warn!(
                map,
                stale = stale.len(),
                "map too full to add before removing; removing stale entries first"
            );
            for key in stale {
                self.store.remove_entry(&key)?;
                self.entries.remove(&key);
            }
        }
        let new_sources = desired
            .sources
            .keys()
            .filter(|k| !self.sources.contains_key(*k))
            .count();
        if self.sources.len() + new_sources > capacity {
            let stale: Vec<SourceId> = self
                .sources
                .keys()
                .filter(|k| !desired.sources.contains_key(*k))
                .copied()
                .collect();
            tracing::warn!(
                map = maps::SOURCES,
                stale = stale.len(),
                "map too full to add before removing; removing stale sources first"
            );
            for id in stale {
                self.store.remove_source(id)?;
                self.sources.remove(&id);
            }
        }
        let new_ports = desired
            .ports
            .keys()
            .filter(|k| !self.ports.contains_key(*k))
            .count();
        if self.ports.len() + new_ports > capacity {
            // Sets only stale entries refer to go with those entries.
            let stale: Vec<EntryKey> = self
                .entries
                .keys()
                .filter(|k| !desired.entries.contains_key(*k))
                .copied()
                .collect();
            for key in stale {
                self.store.remove_entry(&key)?;
                self.entries.remove(&key);
            }
            let referenced: BTreeSet<PortSetId> = self.entries.values().map(|e| e.ports).collect();
            let unused: Vec<PortSetId> = self
                .ports
                .keys()
                .filter(|id| !referenced.contains(id) && !desired.ports.contains_key(*id))
                .copied()
                .collect();
            tracing::warn!(
                map = maps::PORTS,
                stale = unused.len(),
                "map too full to add before removing; removing unused port sets first"
            );
            for id in unused {
                self.store.remove_ports(id)?;
                self.ports.remove(&id);
                self.retired.remove(&id);
            }
        }
        Ok(())
    }
}

/// An in-memory [`MapStore`] with the kernel maps' capacity rule and an operation log.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub max_entries: u32,
    pub entries: BTreeMap<EntryKey, AllowEntry>,
    pub ports: BTreeMap<PortSetId, PortRanges>,
    pub sources: BTreeMap<SourceId, SourceRecord>,
    pub config: Config,
    pub classes: BTreeMap<u64, ClassId>,
    pub sockets: BTreeMap<ClassId, SocketKinds>,
    /// Every write, in order: `put <key>`, `remove <key>`, `config`, `put-source`…
    pub log: Vec<String>,
    /// Fail the first write logged as this (`put 192.0.2.2`…), once, to test partial
    /// failures.
    pub fail_on: Option<String>,
}

impl MemoryStore {
    pub fn new(max_entries: u32) -> Self {
        Self {
            max_entries,
            ..Self::default()
        }
    }

    fn write(&mut self, what: String) -> Result<(), StoreError> {
        if self.fail_on.as_deref() == Some(what.as_str()) {
            self.fail_on = None;
            return Err(StoreError::Syscall {
                op: "write",
                map: "memory",
                key: what,
                source: std::io::Error::from_raw_os_error(libc::ENOMEM),
            });
        }
        self.log.push(what);
        Ok(())
    }
}

impl MapStore for MemoryStore {
    fn capacity(&self) -> Capacity {
        Capacity {
            max_entries: self.max_entries,
        }
    }
    fn read_entries(&self) -> Result<BTreeMap<EntryKey, AllowEntry>, StoreError> {
        Ok(self.entries.clone())
    }
    fn read_ports(&self) -> Result<BTreeMap<PortSetId, PortRanges>, StoreError> {
        Ok(self.ports.clone())
    }
    fn read_sources(&self) -> Result<BTreeMap<SourceId, SourceRecord>, StoreError> {
        Ok(self.sources.clone())
    }
    fn read_config(&self) -> Result<Config, StoreError> {
        Ok(self.config)
    }
    fn read_classes(&self) -> Result<BTreeMap<u64, ClassId>, StoreError> {
        Ok(self.classes.clone())
    }
    fn put_class(&mut self, cgroup_id: u64, class: ClassId) -> Result<(), StoreError> {
        self.write(format!(
            "put-class {cgroup_id} {}",
            super::class_name(class)
        ))?;
        self.classes.insert(cgroup_id, class);
        Ok(())
    }
    fn remove_class(&mut self, cgroup_id: u64) -> Result<(), StoreError> {
        self.write(format!("remove-class {cgroup_id}"))?;
        self.classes.remove(&cgroup_id);
        Ok(())
    }
    fn read_sockets(&self) -> Result<BTreeMap<ClassId, SocketKinds>, StoreError> {
        Ok(self.sockets.clone())
    }
    fn put_sockets(&mut self, class: ClassId, kinds: SocketKinds) -> Result<(), StoreError> {
        self.write(format!(
            "put-sockets {} {}",
            super::class_name(class),
            kinds.0
        ))?;
        self.sockets.insert(class, kinds);
        Ok(())
    }
    fn remove_sockets(&mut self, class: ClassId) -> Result<(), StoreError> {
        self.write(format!("remove-sockets {}", super::class_name(class)))?;
        self.sockets.remove(&class);
        Ok(())
    }
    fn put_entry(&mut self, key: &EntryKey, value: &AllowEntry) -> Result<(), StoreError> {
        let map = map_of(key);
        let in_map = self.entries.keys().filter(|k| map_of(k) == map).count();
        if !self.entries.contains_key(key) && in_map >= self.max_entries as usize {
            return Err(StoreError::Full {
                map,
                capacity: self.max_entries,
            });
        }
        self.write(format!("put {key}"))?;
        self.entries.insert(*key, *value);
        Ok(())
    }
    fn remove_entry(&mut self, key: &EntryKey) -> Result<(), StoreError> {
        self.write(format!("remove {key}"))?;
        self.entries.remove(key);
        Ok(())
    }
    fn put_ports(&mut self, id: PortSetId, set: &PortRanges) -> Result<(), StoreError> {
        if !self.ports.contains_key(&id) && self.ports.len() >= self.max_entries as usize {
            return Err(StoreError::Full {
                map: maps::PORTS,
                capacity: self.max_entries,
            });
        }
        self.write(format!("put-ports {:x}", id.0))?;
        self.ports.insert(id, *set);
        Ok(())
    }
    fn remove_ports(&mut self, id: PortSetId) -> Result<(), StoreError> {
        self.write(format!("remove-ports {:x}", id.0))?;
        self.ports.remove(&id);
        Ok(())
    }
    fn put_source(&mut self, id: SourceId, record: &SourceRecord) -> Result<(), StoreError> {
        if !self.sources.contains_key(&id) && self.sources.len() >= self.max_entries as usize {
            return Err(StoreError::Full {
                map: maps::SOURCES,
                capacity: self.max_entries,
            });
        }
        self.write(format!("put-source {}", super::source::label(record)))?;
        self.sources.insert(id, *record);
        Ok(())
    }
    fn remove_source(&mut self, id: SourceId) -> Result<(), StoreError> {
        self.write(format!("remove-source {:x}", id.0))?;
        self.sources.remove(&id);
        Ok(())
    }
    fn put_config(&mut self, config: &Config) -> Result<(), StoreError> {
        self.write("config".into())?;
        self.config = *config;
        Ok(())
    }
}
