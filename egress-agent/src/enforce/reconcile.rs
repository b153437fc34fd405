//! Brings the maps from what they hold to what they should hold.
//!
//! One [`Reconciler`] owns the maps (through a [`MapStore`]) and a mirror of their content,
//! so a reconciliation only writes differences. Order of writes:
//! 1. sources, then entries that are new or changed — an update replaces a value in one
//!    step, so a destination present before and after is never missing in between;
//! 2. the configuration (mode, default action);
//! 3. removals of entries, then of sources, no longer wanted.
//!
//! Adding before removing means that during a reload a destination is allowed by the old
//! policy, the new one, or both — never by neither, and never by something neither allows.

use std::collections::BTreeMap;

use egress_common::{AllowEntry, Config, SourceId, SourceRecord, maps};

use super::{Desired, EntryKey};

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
    fn read_sources(&self) -> Result<BTreeMap<SourceId, SourceRecord>, StoreError>;
    fn read_config(&self) -> Result<Config, StoreError>;
    fn put_entry(&mut self, key: &EntryKey, value: &AllowEntry) -> Result<(), StoreError>;
    fn remove_entry(&mut self, key: &EntryKey) -> Result<(), StoreError>;
    fn put_source(&mut self, id: SourceId, record: &SourceRecord) -> Result<(), StoreError>;
    fn remove_source(&mut self, id: SourceId) -> Result<(), StoreError>;
    fn put_config(&mut self, config: &Config) -> Result<(), StoreError>;
}

/// Name of the map an entry key lives in.
pub fn map_of(key: &EntryKey) -> &'static str {
    match key {
        EntryKey::V4(_) => maps::ALLOW_V4,
        EntryKey::V6(_) => maps::ALLOW_V6,
        EntryKey::Net4(_) => maps::CIDR_V4,
        EntryKey::Net6(_) => maps::CIDR_V6,
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

pub struct Reconciler<S> {
    store: S,
    entries: BTreeMap<EntryKey, AllowEntry>,
    sources: BTreeMap<SourceId, SourceRecord>,
    config: Config,
}

impl<S: MapStore> Reconciler<S> {
    /// Takes over `store`, reading what it holds.
    pub fn new(store: S) -> Result<Self, StoreError> {
        Ok(Self {
            entries: store.read_entries()?,
            sources: store.read_sources()?,
            config: store.read_config()?,
            store,
        })
    }

    pub fn entries(&self) -> &BTreeMap<EntryKey, AllowEntry> {
        &self.entries
    }

    pub fn sources(&self) -> &BTreeMap<SourceId, SourceRecord> {
        &self.sources
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
        counts.insert(maps::SOURCES, desired.sources.len());
        let needs: Vec<_> = counts
            .into_iter()
            .filter(|&(_, n)| n > capacity as usize)
            .collect();
        if needs.is_empty() {
            Ok(())
        } else {
            Err(CapacityError { needs, capacity })
        }
    }

    /// Writes the difference between the maps and `desired`.
    pub fn apply(&mut self, desired: &Desired) -> Result<Applied, ReconcileError> {
        self.preflight(desired)?;
        let mut applied = Applied::default();
        self.make_room(desired)?;

        for (id, record) in &desired.sources {
            if self.sources.get(id) != Some(record) {
                self.store.put_source(*id, record)?;
                self.sources.insert(*id, *record);
            }
        }
        for (key, entry) in &desired.entries {
            match self.entries.get(key) {
                Some(current) if current == entry => continue,
                Some(_) => applied.changed += 1,
                None => applied.added += 1,
            }
            self.store.put_entry(key, entry)?;
            self.entries.insert(*key, *entry);
        }
        if self.config != desired.config {
            self.store.put_config(&desired.config)?;
            self.config = desired.config;
        }
        let stale: Vec<EntryKey> = self
            .entries
            .keys()
            .filter(|k| !desired.entries.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            self.store.remove_entry(&key)?;
            self.entries.remove(&key);
            applied.removed += 1;
        }
        let stale: Vec<SourceId> = self
            .sources
            .keys()
            .filter(|k| !desired.sources.contains_key(k))
            .copied()
            .collect();
        for id in stale {
            self.store.remove_source(id)?;
            self.sources.remove(&id);
        }
        Ok(applied)
    }

    /// Adding before removing needs room for both the old and the new entries of a map. When
    /// a map has no such room, its stale entries go first: they are denied from then on, as
    /// they would be a moment later anyway.
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
        Ok(())
    }
}

/// An in-memory [`MapStore`] with the kernel maps' capacity rule and an operation log.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub max_entries: u32,
    pub entries: BTreeMap<EntryKey, AllowEntry>,
    pub sources: BTreeMap<SourceId, SourceRecord>,
    pub config: Config,
    /// Every write, in order: `put <key>`, `remove <key>`, `config`, `put-source`…
    pub log: Vec<String>,
    /// Fail the n-th write (0-based) and every later one, to test partial failures.
    pub fail_from: Option<usize>,
}

impl MemoryStore {
    pub fn new(max_entries: u32) -> Self {
        Self {
            max_entries,
            ..Self::default()
        }
    }

    fn write(&mut self, what: String) -> Result<(), StoreError> {
        if self.fail_from.is_some_and(|n| self.log.len() >= n) {
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
    fn read_sources(&self) -> Result<BTreeMap<SourceId, SourceRecord>, StoreError> {
        Ok(self.sources.clone())
    }
    fn read_config(&self) -> Result<Config, StoreError> {
        Ok(self.config)
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
    fn put_source(&mut self, id: SourceId, record: &SourceRecord) -> Result<(), StoreError> {
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
