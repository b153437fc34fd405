//! Loading the programs against pinned maps, and attaching them through pinned links.

use std::{fs::File, io, os::fd::AsFd as _, path::PathBuf};

use aya::{
    EbpfLoader,
    maps::{MapData, MapInfo, PerCpuHashMap, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkbAttachType, Program, ProgramError, ProgramFd, links::FdLink,
    },
};
use egress_common::{
    AllowEntry, CIDR_V4_KEY, CIDR_V6_KEY, CLASS_SLOTS, ClassId, Config, Counter, FLOW_SLOTS,
    FlowKey, FlowStat, PortRanges, PortSetId, SocketKinds, SourceId, SourceRecord, V4Key, V6Key,
    maps, programs,
};

use super::{
    fs::Cgroup,
    maps::{OpenError, PinnedMaps},
    object,
    pins::{Generation, Pins},
    sys,
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this egress-agent was built without its kernel programs (AYA_BUILD_SKIP); rebuild it with `cargo xtask setup` done"
    )]
    NoObject,
    #[error("failed to create {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("pinned map {} does not match this agent ({detail}); remove it with `egress-agent detach`", path.display())]
    Incompatible { path: PathBuf, detail: String },
    #[error("failed to load the kernel object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("failed to load program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error(transparent)]
    Maps(#[from] OpenError),
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("failed to open cgroup {}: {source}", path.display())]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("failed to attach {name} to {}: {source}", path.display())]
    Attach {
        name: &'static str,
        path: PathBuf,
        source: ProgramError,
    },
    #[error("failed to pin link {}: {reason}", path.display())]
    Pin { path: PathBuf, reason: String },
}

/// The loaded object: its programs, until they are attached through pinned links.
pub struct Loaded {
    ebpf: aya::Ebpf,
    pub generation: Generation,
    /// The programs loaded, in attach order.
    names: Vec<&'static str>,
    /// Whether packet sockets are refused (the LSM program loaded), or why not.
    pub packet_sockets: Result<(), String>,
}

/// The maps that carry denials to user space: the ring buffer of events (not pinned: each
/// agent reads the one its programs write) and the pinned per-flow counts.
pub struct EventMaps {
    pub events: RingBuf<MapData>,
    pub flows: PerCpuHashMap<MapData, FlowKey, FlowStat>,
}

/// Key and value sizes each map must have, and whether its capacity follows `--max-entries`.
fn expected_layout(name: &str) -> (usize, usize, bool) {
    use std::mem::size_of;
    match name {
        maps::ALLOW_V4 => (size_of::<V4Key>(), size_of::<AllowEntry>(), true),
        maps::ALLOW_V6 => (size_of::<V6Key>(), size_of::<AllowEntry>(), true),
        maps::CIDR_V4 => (4 + CIDR_V4_KEY, size_of::<AllowEntry>(), true),
        maps::CIDR_V6 => (4 + CIDR_V6_KEY, size_of::<AllowEntry>(), true),
        maps::PORTS => (size_of::<PortSetId>(), size_of::<PortRanges>(), true),
        maps::CONFIG => (4, size_of::<Config>(), false),
        maps::COUNTERS => (4, size_of::<u64>(), false),
        maps::SOURCES => (size_of::<SourceId>(), size_of::<SourceRecord>(), true),
        maps::FLOWS => (size_of::<FlowKey>(), size_of::<FlowStat>(), false),
        maps::CLASSES => (size_of::<u64>(), size_of::<ClassId>(), false),
        maps::SOCKETS => (size_of::<ClassId>(), size_of::<SocketKinds>(), false),
        _ => (0, 0, false),
    }
}

/// The fixed capacity of a map whose capacity does not follow `--max-entries`.
fn fixed_capacity(name: &str) -> Option<u32> {
    match name {
        maps::CONFIG => Some(1),
        maps::COUNTERS => Some(Counter::COUNT),
        maps::FLOWS => Some(FLOW_SLOTS),
        maps::CLASSES | maps::SOCKETS => Some(CLASS_SLOTS),
        _ => None,
    }
}

/// Refuses pinned maps whose shape differs from what this binary would create: a reused
/// map with another layout would be misread by the programs.
fn check_pinned(generation: &Generation) -> Result<(), LoadError> {
    for name in maps::PINNED {
        let path = generation.map_path(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| LoadError::Incompatible {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let (key, value, sized) = expected_layout(name);
        let mut problems = Vec::new();
        if info.key_size() as usize != key {
            problems.push(format!("key size {} ≠ {key}", info.key_size()));
        }
        if info.value_size() as usize != value {
            problems.push(format!("value size {} ≠ {value}", info.value_size()));
        }
        let capacity = if sized {
            Some(generation.max_entries)
        } else {
            fixed_capacity(name)
        };
        if let Some(want) = capacity
            && info.max_entries() != want
        {
            problems.push(format!("capacity {} ≠ {want}", info.max_entries()));
        }
        if !problems.is_empty() {
            return Err(LoadError::Incompatible {
                path,
                detail: problems.join(", "),
            });
        }
    }
    Ok(())
}

/// Loads the object, creating the generation's maps or reusing them when pinned, and loads
/// (verifies) every program — where `packet_sockets` is `Ok` (the BPF LSM is active), the
/// LSM program that refuses packet sockets too. Nothing is attached yet.
pub fn load(
    pins: &Pins,
    max_entries: u32,
    event_buffer: u32,
    packet_sockets: Result<(), &str>,
) -> Result<(Loaded, PinnedMaps), LoadError> {
    if !object::present() {
        return Err(LoadError::NoObject);
    }
    let generation = pins.generation(max_entries);
    std::fs::create_dir_all(&generation.dir).map_err(|source| LoadError::Dir {
        path: generation.dir.clone(),
        source,
    })?;
    check_pinned(&generation)?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&'static str, PathBuf)> = maps::PINNED
        .iter()
        .map(|&name| (name, generation.map_path(name)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    for name in maps::SIZED {
        loader.map_max_entries(name, max_entries);
    }
    loader.map_max_entries(maps::EVENTS, event_buffer);
    let mut ebpf = loader.load(object::OBJECT)?;
    let mut names = programs::ALL.to_vec();
    for &name in &names {
        let loaded = match ebpf.program_mut(name) {
            Some(Program::CgroupSockAddr(p)) => p.load(),
            Some(Program::CgroupSkb(p)) => p.load(),
            Some(Program::CgroupSock(p)) => p.load(),
            _ => Err(ProgramError::UnexpectedProgramType),
        };
        loaded.map_err(|source| LoadError::Program { name, source })?;
        log_loaded(&ebpf, name);
    }
    // The packet-socket program is the one optional part: a kernel may lack the BPF LSM's
    // cgroup attachment, or a security policy of the host may refuse LSM programs. Either
    // way the rest is enforced and the gap is reported, never hidden.
    let packet_sockets = match packet_sockets {
        Ok(()) => match load_packet_socket(&mut ebpf) {
            Ok(()) => {
                names.insert(1, programs::PACKET_SOCKET);
                log_loaded(&ebpf, programs::PACKET_SOCKET);
                Ok(())
            }
            Err(e) => Err(format!(
                "packet sockets (AF_PACKET), AF_XDP and other non-IP families are not refused: the kernel refused the LSM program \
                 ({e}); a workload holding CAP_NET_RAW can send frames no hook judges — drop \
                 CAP_NET_RAW from pods"
            )),
        },
        Err(gap) => Err(gap.to_owned()),
    };
    let maps = PinnedMaps::from_maps(|name| ebpf.take_map(name), max_entries)?;
    Ok((
        Loaded {
            ebpf,
            generation,
            names,
            packet_sockets,
        },
        maps,
    ))
}

fn load_packet_socket(ebpf: &mut aya::Ebpf) -> Result<(), String> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
    match ebpf.program_mut(programs::PACKET_SOCKET) {
        Some(Program::LsmCgroup(p)) => p
            .load(programs::PACKET_SOCKET_HOOK, &btf)
            .map_err(|e| format!("{e}")),
        _ => Err("not in the object".to_owned()),
    }
}

/// The verifier's work is what start-up waits for (and a budget the programs must stay well
/// within on every kernel).
fn log_loaded(ebpf: &aya::Ebpf, name: &str) {
    let info = match ebpf.program(name) {
        Some(Program::CgroupSockAddr(p)) => p.info().ok(),
        Some(Program::CgroupSkb(p)) => p.info().ok(),
        Some(Program::CgroupSock(p)) => p.info().ok(),
        Some(Program::LsmCgroup(p)) => p.info().ok(),
        _ => None,
    };
    if let Some(i) = info {
        tracing::debug!(
            program = name,
            verified_instructions = i.verified_instruction_count(),
            bytes = i.size_translated(),
            "loaded"
        );
    }
}

/// How a program came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A pinned link to the cgroup existed; its program was swapped in place.
    Replaced,
    /// A new link was created and pinned.
    New,
}

impl Loaded {
    /// The event maps, once (the events pipeline takes them).
    pub fn take_event_maps(&mut self) -> Result<EventMaps, OpenError> {
        fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            ebpf: &mut aya::Ebpf,
            name: &'static str,
        ) -> Result<T, OpenError> {
            let map = ebpf.take_map(name).ok_or(OpenError::Missing { name })?;
            T::try_from(map).map_err(|source| OpenError::Map { name, source })
        }
        Ok(EventMaps {
            events: take(&mut self.ebpf, maps::EVENTS)?,
            flows: take(&mut self.ebpf, maps::FLOWS)?,
        })
    }

    /// Attaches every program to `cgroup`. Where a pinned link exists (a previous agent's),
    /// its program is replaced atomically; otherwise a link is created and pinned. Links
    /// pinned for other cgroups (a previous `--cgroup`) are then removed.
    pub fn attach(
        &mut self,
        pins: &Pins,
        cgroup: &Cgroup,
    ) -> Result<Vec<(&'static str, Attached)>, AttachError> {
        let dir = pins.links_dir(cgroup.id);
        std::fs::create_dir_all(&dir).map_err(|e| AttachError::Pin {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let cgroup_file = File::open(&cgroup.path).map_err(|source| AttachError::Cgroup {
            path: cgroup.path.clone(),
            source,
        })?;
        let mut report = Vec::new();
        for name in self.names.clone() {
            let program = self.ebpf.program_mut(name).expect("loaded in load()");
            let path = pins.link_path(cgroup.id, name);
            if path.exists() {
                let swapped = sys::obj_get(&path).and_then(|link| {
                    let prog_fd = program_fd(program).map_err(io::Error::other)?;
                    sys::link_update(link.as_fd(), prog_fd.as_fd())
                });
                match swapped {
                    Ok(()) => {
                        report.push((name, Attached::Replaced));
                        continue;
                    }
                    Err(e) => {
                        // ENOLINK: the cgroup the link was made for is gone.
                        tracing::warn!(link = %path.display(), error = %e, "pinned link unusable; attaching anew");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            let attach_err = |source| AttachError::Attach {
                name,
                path: cgroup.path.clone(),
                source,
            };
            let pin_err = |e: aya::programs::links::LinkError| AttachError::Pin {
                path: path.clone(),
                reason: e.to_string(),
            };
            let link: FdLink = match program {
                Program::CgroupSockAddr(p) => {
                    let id = p
                        .attach(&cgroup_file, CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                    p.take_link(id)
                        .map_err(attach_err)?
                        .try_into()
                        .map_err(pin_err)?
                }
                Program::CgroupSkb(p) => {
                    let id = p
                        .attach(
                            &cgroup_file,
                            CgroupSkbAttachType::Egress,
                            CgroupAttachMode::Single,
                        )
                        .map_err(attach_err)?;
                    p.take_link(id)
                        .map_err(attach_err)?
                        .try_into()
                        .map_err(pin_err)?
                }
                Program::CgroupSock(p) => {
                    let id = p
                        .attach(&cgroup_file, CgroupAttachMode::Single)
                        .map_err(attach_err)?;
                    p.take_link(id)
                        .map_err(attach_err)?
                        .try_into()
                        .map_err(pin_err)?
                }
                Program::LsmCgroup(p) => {
                    let id = p.attach(&cgroup_file).map_err(attach_err)?;
                    p.take_link(id).map_err(attach_err)?.into()
                }
                _ => return Err(attach_err(ProgramError::UnexpectedProgramType)),
            };
            link.pin(&path).map_err(|e| AttachError::Pin {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            report.push((name, Attached::New));
        }
        for (other, other_dir) in pins.link_dirs() {
            if other != cgroup.id {
                tracing::info!(
                    cgroup_id = other,
                    "removing links of a cgroup no longer enforced"
                );
                let _ = std::fs::remove_dir_all(other_dir);
            }
        }
        Ok(report)
    }
}

/// The fd of one of the agent's programs (the four kinds it loads).
fn program_fd(program: &Program) -> Result<&ProgramFd, ProgramError> {
    match program {
        Program::CgroupSockAddr(p) => p.fd(),
        Program::CgroupSkb(p) => p.fd(),
        Program::CgroupSock(p) => p.fd(),
        Program::LsmCgroup(p) => p.fd(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
}
