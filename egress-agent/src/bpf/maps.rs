//! The kernel maps behind [`MapStore`], opened from a loaded object or from pins.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, OwnedFd},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
    sys::SyscallError,
};
use egress_common::{
    AllowEntry, CIDR_V4_KEY, CIDR_V6_KEY, CLASS_BITS, CLASS_SLOTS, ClassId, Config, Counter,
    PortRanges, PortSetId, SocketKinds, SourceId, SourceRecord, V4Key, V6Key, cidr_v4_key,
    cidr_v6_key, maps,
};
use ipnet::{Ipv4Net, Ipv6Net};

use super::pins::Generation;
use crate::enforce::{Capacity, EntryKey, MapStore, StoreError, Target, reconcile::map_of};

/// Typed handles on every map of one generation.
pub struct PinnedMaps {
    allow_v4: HashMap<MapData, V4Key, AllowEntry>,
    allow_v6: HashMap<MapData, V6Key, AllowEntry>,
    cidr_v4: LpmTrie<MapData, [u8; CIDR_V4_KEY], AllowEntry>,
    cidr_v6: LpmTrie<MapData, [u8; CIDR_V6_KEY], AllowEntry>,
    ports: HashMap<MapData, PortSetId, PortRanges>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    sources: HashMap<MapData, SourceId, SourceRecord>,
    classes: HashMap<MapData, u64, ClassId>,
    sockets: HashMap<MapData, ClassId, SocketKinds>,
    max_entries: u32,
    /// The exact-address maps' fds again, for batch updates (aya 0.14 has none).
    batch_fds: Option<(OwnedFd, OwnedFd)>,
}

/// Elements per batch update: bounds the buffers, and each call's time in the kernel.
const BATCH: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("map {name} is missing")]
    Missing { name: &'static str },
    #[error("failed to open map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
}

impl PinnedMaps {
    /// Builds the handles from maps taken out of a loaded object (or opened from pins).
    pub fn from_maps(
        mut take: impl FnMut(&'static str) -> Option<Map>,
        max_entries: u32,
    ) -> Result<Self, OpenError> {
        fn typed<T: TryFrom<Map, Error = MapError>>(
            take: &mut impl FnMut(&'static str) -> Option<Map>,
            name: &'static str,
        ) -> Result<T, OpenError> {
            let map = take(name).ok_or(OpenError::Missing { name })?;
            T::try_from(map).map_err(|source| OpenError::Map { name, source })
        }
        fn dup(map: &Map) -> Option<OwnedFd> {
            match map {
                Map::HashMap(data) => data.fd().as_fd().try_clone_to_owned().ok(),
                _ => None,
            }
        }
        let v4 = take(maps::ALLOW_V4).ok_or(OpenError::Missing {
            name: maps::ALLOW_V4,
        })?;
        let v6 = take(maps::ALLOW_V6).ok_or(OpenError::Missing {
            name: maps::ALLOW_V6,
        })?;
        let batch_fds = dup(&v4).zip(dup(&v6));
        let (mut v4, mut v6) = (Some(v4), Some(v6));
        Ok(Self {
            allow_v4: typed(&mut |_| v4.take(), maps::ALLOW_V4)?,
            allow_v6: typed(&mut |_| v6.take(), maps::ALLOW_V6)?,
            cidr_v4: typed(&mut take, maps::CIDR_V4)?,
            cidr_v6: typed(&mut take, maps::CIDR_V6)?,
            ports: typed(&mut take, maps::PORTS)?,
            config: typed(&mut take, maps::CONFIG)?,
            counters: typed(&mut take, maps::COUNTERS)?,
            sources: typed(&mut take, maps::SOURCES)?,
            classes: typed(&mut take, maps::CLASSES)?,
            sockets: typed(&mut take, maps::SOCKETS)?,
            max_entries,
            batch_fds,
        })
    }

    /// Opens the maps pinned in a generation directory (read by the CLI and at adoption).
    pub fn open(generation: &Generation) -> Result<Self, OpenError> {
        Self::from_maps(
            |name| {
                let data = MapData::from_pin(generation.map_path(name)).ok()?;
                Map::from_map_data(data).ok()
            },
            generation.max_entries,
        )
    }

    /// The entry the kernel would find for `addr` among `class`'s: the exact address, else
    /// the longest matching prefix. (The kernel falls back to the node-wide class on a miss.)
    pub fn lookup(&self, class: ClassId, addr: IpAddr) -> Option<(EntryKey, AllowEntry)> {
        let key = |target| EntryKey::new(class, target);
        match addr {
            IpAddr::V4(a) => {
                let exact = V4Key {
                    class,
                    addr: a.octets(),
                    reserved: [0; 4],
                };
                if let Ok(e) = self.allow_v4.get(&exact, 0) {
                    return Some((key(Target::V4(a)), e));
                }
                let e = self.cidr_v4.get(&lpm_v4(class, Ipv4Net::from(a)), 0).ok()?;
                let net = self.longest_v4(class, a)?;
                Some((key(Target::Net4(net)), e))
            }
            IpAddr::V6(a) => {
                let exact = V6Key {
                    class,
                    addr: a.octets(),
                };
                if let Ok(e) = self.allow_v6.get(&exact, 0) {
                    return Some((key(Target::V6(a)), e));
                }
                let e = self.cidr_v6.get(&lpm_v6(class, Ipv6Net::from(a)), 0).ok()?;
                let net = self.longest_v6(class, a)?;
                Some((key(Target::Net6(net)), e))
            }
        }
    }

    /// The longest prefix of `class` in the trie that contains `a` (the trie's lookup
    /// returns only the value, so the key is found by trying lengths from the longest).
    fn longest_v4(&self, class: ClassId, a: Ipv4Addr) -> Option<Ipv4Net> {
        let keys: Vec<_> = self.cidr_v4.keys().filter_map(Result::ok).collect();
        (0..=32u8).rev().find_map(|len| {
            let net = Ipv4Net::new(a, len).ok()?.trunc();
            let want = lpm_v4(class, net);
            keys.iter()
                .any(|k| k.prefix_len() == want.prefix_len() && k.data() == want.data())
                .then_some(net)
        })
    }

    fn longest_v6(&self, class: ClassId, a: Ipv6Addr) -> Option<Ipv6Net> {
        let keys: Vec<_> = self.cidr_v6.keys().filter_map(Result::ok).collect();
        (0..=128u8).rev().find_map(|len| {
            let net = Ipv6Net::new(a, len).ok()?.trunc();
            let want = lpm_v6(class, net);
            keys.iter()
                .any(|k| k.prefix_len() == want.prefix_len() && k.data() == want.data())
                .then_some(net)
        })
    }

    /// The class of every cgroup the agent placed.
    pub fn classes(&self) -> BTreeMap<u64, ClassId> {
        self.classes.iter().filter_map(Result::ok).collect()
    }

    /// One source record.
    pub fn source(&self, id: SourceId) -> Option<SourceRecord> {
        self.sources.get(&id, 0).ok()
    }

    /// One port set.
    pub fn port_set(&self, id: PortSetId) -> Option<PortRanges> {
        self.ports.get(&id, 0).ok()
    }

    /// Sums the per-CPU verdict counters, in [`Counter`] order.
    pub fn counters(&self) -> Result<Vec<u64>, StoreError> {
        (0..Counter::COUNT)
            .map(|i| {
                self.counters
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .map_err(|e| syscall("read", maps::COUNTERS, i.to_string(), e))
            })
            .collect()
    }
}

/// The trie key of a prefix of `class`.
fn lpm_v4(class: ClassId, net: impl Into<Ipv4Net>) -> Key<[u8; CIDR_V4_KEY]> {
    let net = net.into();
    Key::new(
        CLASS_BITS + u32::from(net.prefix_len()),
        cidr_v4_key(class, net.addr().octets()),
    )
}

fn lpm_v6(class: ClassId, net: impl Into<Ipv6Net>) -> Key<[u8; CIDR_V6_KEY]> {
    let net = net.into();
    Key::new(
        CLASS_BITS + u32::from(net.prefix_len()),
        cidr_v6_key(class, net.addr().octets()),
    )
}

/// Class and prefix of a trie key (`None` for a key shorter than its class).
fn from_lpm<const N: usize>(k: &Key<[u8; N]>) -> Option<(ClassId, Vec<u8>, u8)> {
    let len = k.prefix_len().checked_sub(CLASS_BITS)?;
    let data = k.data();
    let class = ClassId(u64::from_ne_bytes(data[..8].try_into().ok()?));
    Some((class, data[8..].to_vec(), u8::try_from(len).ok()?))
}

fn syscall(op: &'static str, map: &'static str, key: String, e: MapError) -> StoreError {
    let source = match e {
        MapError::SyscallError(SyscallError { io_error, .. }) => io_error,
        other => io::Error::other(other.to_string()),
    };
    StoreError::Syscall {
        op,
        map,
        key,
        source,
    }
}

/// A failed insert: a full map is reported as such (hash maps say E2BIG, tries ENOSPC).
fn insert_error(map: &'static str, key: String, capacity: u32, e: MapError) -> StoreError {
    if let MapError::SyscallError(SyscallError { io_error, .. }) = &e
        && matches!(io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC))
    {
        return StoreError::Full { map, capacity };
    }
    syscall("insert", map, key, e)
}

/// A removal of a key that is already gone is not an error.
fn removed(map: &'static str, key: String, r: Result<(), MapError>) -> Result<(), StoreError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(syscall("remove", map, key, e)),
    }
}

impl MapStore for PinnedMaps {
    fn capacity(&self) -> Capacity {
        Capacity {
            max_entries: self.max_entries,
        }
    }

    fn read_entries(&self) -> Result<BTreeMap<EntryKey, AllowEntry>, StoreError> {
        let mut out = BTreeMap::new();
        let read = |map, e| syscall("read", map, String::new(), e);
        let bad = |map| read(map, MapError::IoError(io::Error::other("malformed key")));
        for item in self.allow_v4.iter() {
            let (k, v) = item.map_err(|e| read(maps::ALLOW_V4, e))?;
            out.insert(
                EntryKey::new(k.class, Target::V4(Ipv4Addr::from(k.addr))),
                v,
            );
        }
        for item in self.allow_v6.iter() {
            let (k, v) = item.map_err(|e| read(maps::ALLOW_V6, e))?;
            out.insert(
                EntryKey::new(k.class, Target::V6(Ipv6Addr::from(k.addr))),
                v,
            );
        }
        for item in self.cidr_v4.iter() {
            let (k, v) = item.map_err(|e| read(maps::CIDR_V4, e))?;
            let (class, addr, len) = from_lpm(&k).ok_or_else(|| bad(maps::CIDR_V4))?;
            let addr: [u8; 4] = addr.try_into().map_err(|_| bad(maps::CIDR_V4))?;
            let net = Ipv4Net::new(Ipv4Addr::from(addr), len).map_err(|_| bad(maps::CIDR_V4))?;
            out.insert(EntryKey::new(class, Target::Net4(net)), v);
        }
        for item in self.cidr_v6.iter() {
            let (k, v) = item.map_err(|e| read(maps::CIDR_V6, e))?;
            let (class, addr, len) = from_lpm(&k).ok_or_else(|| bad(maps::CIDR_V6))?;
            let addr: [u8; 16] = addr.try_into().map_err(|_| bad(maps::CIDR_V6))?;
            let net = Ipv6Net::new(Ipv6Addr::from(addr), len).map_err(|_| bad(maps::CIDR_V6))?;
            out.insert(EntryKey::new(class, Target::Net6(net)), v);
        }
        Ok(out)
    }

    fn read_classes(&self) -> Result<BTreeMap<u64, ClassId>, StoreError> {
        self.classes
            .iter()
            .map(|item| item.map_err(|e| syscall("read", maps::CLASSES, String::new(), e)))
            .collect()
    }

    fn put_class(&mut self, cgroup_id: u64, class: ClassId) -> Result<(), StoreError> {
        self.classes
            .insert(cgroup_id, class, 0)
            .map_err(|e| insert_error(maps::CLASSES, cgroup_id.to_string(), CLASS_SLOTS, e))
    }

    fn remove_class(&mut self, cgroup_id: u64) -> Result<(), StoreError> {
        removed(
            maps::CLASSES,
            cgroup_id.to_string(),
            self.classes.remove(&cgroup_id),
        )
    }

    fn read_sockets(&self) -> Result<BTreeMap<ClassId, SocketKinds>, StoreError> {
        self.sockets
            .iter()
            .map(|item| item.map_err(|e| syscall("read", maps::SOCKETS, String::new(), e)))
            .collect()
    }

    fn put_sockets(&mut self, class: ClassId, kinds: SocketKinds) -> Result<(), StoreError> {
        self.sockets
            .insert(class, kinds, 0)
            .map_err(|e| insert_error(maps::SOCKETS, format!("{:x}", class.0), CLASS_SLOTS, e))
    }

    fn remove_sockets(&mut self, class: ClassId) -> Result<(), StoreError> {
        removed(
            maps::SOCKETS,
            format!("{:x}", class.0),
            self.sockets.remove(&class),
        )
    }

    fn read_sources(&self) -> Result<BTreeMap<SourceId, SourceRecord>, StoreError> {
        self.sources
            .iter()
            .map(|item| item.map_err(|e| syscall("read", maps::SOURCES, String::new(), e)))
            .collect()
    }

    fn read_config(&self) -> Result<Config, StoreError> {
        self.config
            .get(&0, 0)
            .map_err(|e| syscall("read", maps::CONFIG, "0".into(), e))
    }

    fn put_entry(&mut self, key: &EntryKey, value: &AllowEntry) -> Result<(), StoreError> {
        let map = map_of(key);
        let cap = self.max_entries;
        let class = key.class;
        let r = match key.target {
            Target::V4(a) => self.allow_v4.insert(
                V4Key {
                    class,
                    addr: a.octets(),
                    reserved: [0; 4],
                },
                value,
                0,
            ),
            Target::V6(a) => self.allow_v6.insert(
                V6Key {
                    class,
                    addr: a.octets(),
                },
                value,
                0,
            ),
            Target::Net4(n) => self.cidr_v4.insert(&lpm_v4(class, n), value, 0),
            Target::Net6(n) => self.cidr_v6.insert(&lpm_v6(class, n), value, 0),
        };
        r.map_err(|e| insert_error(map, key.to_string(), cap, e))
    }

    /// Runs of exact addresses go to the kernel in batches (one call for thousands instead
    /// of one each); prefixes (the LPM trie has no batch update) and kernels without batch
    /// updates take the single updates.
    fn put_entries(&mut self, items: &[(EntryKey, AllowEntry)]) -> (usize, Result<(), StoreError>) {
        let mut done = 0;
        while done < items.len() {
            let rest = &items[done..];
            let (written, r) = match rest[0].0.target {
                Target::V4(_) => {
                    let run = run_of(rest, |t| matches!(t, Target::V4(_)));
                    let keys: Vec<V4Key> = run
                        .iter()
                        .map(|(k, _)| match k.target {
                            Target::V4(a) => V4Key {
                                class: k.class,
                                addr: a.octets(),
                                reserved: [0; 4],
                            },
                            _ => unreachable!("a run of IPv4 addresses"),
                        })
                        .collect();
                    self.batch(false, run, &keys)
                }
                Target::V6(_) => {
                    let run = run_of(rest, |t| matches!(t, Target::V6(_)));
                    let keys: Vec<V6Key> = run
                        .iter()
                        .map(|(k, _)| match k.target {
                            Target::V6(a) => V6Key {
                                class: k.class,
                                addr: a.octets(),
                            },
                            _ => unreachable!("a run of IPv6 addresses"),
                        })
                        .collect();
                    self.batch(true, run, &keys)
                }
                Target::Net4(_) | Target::Net6(_) => {
                    let (key, value) = &rest[0];
                    match self.put_entry(key, value) {
                        Ok(()) => (1, Ok(())),
                        Err(e) => (0, Err(e)),
                    }
                }
            };
            done += written;
            if r.is_err() {
                return (done, r);
            }
        }
        (done, Ok(()))
    }

    fn remove_entry(&mut self, key: &EntryKey) -> Result<(), StoreError> {
        let map = map_of(key);
        let class = key.class;
        let r = match key.target {
            Target::V4(a) => self.allow_v4.remove(&V4Key {
                class,
                addr: a.octets(),
                reserved: [0; 4],
            }),
            Target::V6(a) => self.allow_v6.remove(&V6Key {
                class,
                addr: a.octets(),
            }),
            Target::Net4(n) => self.cidr_v4.remove(&lpm_v4(class, n)),
            Target::Net6(n) => self.cidr_v6.remove(&lpm_v6(class, n)),
        };
        removed(map, key.to_string(), r)
    }

    fn read_ports(&self) -> Result<BTreeMap<PortSetId, PortRanges>, StoreError> {
        self.ports
            .iter()
            .map(|item| item.map_err(|e| syscall("read", maps::PORTS, String::new(), e)))
            .collect()
    }

    fn put_ports(&mut self, id: PortSetId, set: &PortRanges) -> Result<(), StoreError> {
        let cap = self.max_entries;
        self.ports
            .insert(id, set, 0)
            .map_err(|e| insert_error(maps::PORTS, format!("{:x}", id.0), cap, e))
    }

    fn remove_ports(&mut self, id: PortSetId) -> Result<(), StoreError> {
        removed(maps::PORTS, format!("{:x}", id.0), self.ports.remove(&id))
    }

    fn put_source(&mut self, id: SourceId, record: &SourceRecord) -> Result<(), StoreError> {
        let cap = self.max_entries;
        self.sources
            .insert(id, record, 0)
            .map_err(|e| insert_error(maps::SOURCES, format!("{:x}", id.0), cap, e))
    }

    fn remove_source(&mut self, id: SourceId) -> Result<(), StoreError> {
        removed(
            maps::SOURCES,
            format!("{:x}", id.0),
            self.sources.remove(&id),
        )
    }

    fn put_config(&mut self, config: &Config) -> Result<(), StoreError> {
        self.config
            .set(0, config, 0)
            .map_err(|e| syscall("write", maps::CONFIG, "0".into(), e))
    }
}

/// The leading items of `items` whose targets are `kind`, at most [`BATCH`].
fn run_of(
    items: &[(EntryKey, AllowEntry)],
    kind: impl Fn(&Target) -> bool,
) -> &[(EntryKey, AllowEntry)] {
    let n = items
        .iter()
        .take(BATCH)
        .take_while(|(k, _)| kind(&k.target))
        .count();
    &items[..n]
}

impl PinnedMaps {
    /// One batch update of the exact-address map of a family; without batch updates (Linux
    /// before 5.6, or an fd that could not be duplicated) the single updates.
    fn batch<K: Copy>(
        &mut self,
        v6: bool,
        run: &[(EntryKey, AllowEntry)],
        keys: &[K],
    ) -> (usize, Result<(), StoreError>) {
        let single = |maps: &mut Self| {
            for (i, (key, value)) in run.iter().enumerate() {
                if let Err(e) = maps.put_entry(key, value) {
                    return (i, Err(e));
                }
            }
            (run.len(), Ok(()))
        };
        let Some((fd4, fd6)) = &self.batch_fds else {
            return single(self);
        };
        let fd = if v6 { fd6 } else { fd4 };
        let values: Vec<AllowEntry> = run.iter().map(|(_, v)| *v).collect();
        let (written, r) = super::sys::map_update_batch(fd.as_fd(), keys, &values);
        match r {
            Ok(()) => (written, Ok(())),
            // No batch operations for this map type or kernel: not an error of the entries.
            Err(e)
                if written == 0
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOTSUP | libc::ENOSYS | ENOTSUPP)
                    ) =>
            {
                tracing::debug!(error = %e, "no batch map updates; writing entries one by one");
                self.batch_fds = None;
                single(self)
            }
            Err(e) => {
                let (key, _) = &run[written.min(run.len() - 1)];
                let map = map_of(key);
                let e = MapError::SyscallError(SyscallError {
                    call: "bpf_map_update_batch",
                    io_error: e,
                });
                (
                    written,
                    Err(insert_error(map, key.to_string(), self.max_entries, e)),
                )
            }
        }
    }
}

/// The kernel's internal "operation not supported" (include/linux/errno.h), which bpf(2)
/// returns to user space for map types without batch operations.
const ENOTSUPP: i32 = 524;
