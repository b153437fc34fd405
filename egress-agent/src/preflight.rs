//! What a node needs before the agent can enforce, checked up front and reported as a whole:
//! a kernel new enough, cgroup v2, a working bpf(2), bpffs (mounted, or mountable), and the
//! capabilities to load and attach. `egress-agent preflight` prints the list; `run` refuses
//! to start, naming every missing piece, rather than failing halfway.

use std::path::Path;

use crate::bpf::{
    fs,
    kernel::{self, KernelVersion},
};

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    /// Works, with a caveat.
    Warn(String),
    /// Missing: the agent cannot enforce.
    Fail(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub what: &'static str,
    pub outcome: Outcome,
}

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Every check, for an agent that would pin under `bpffs`.
pub fn checks(bpffs: &Path) -> Vec<Check> {
    vec![
        Check {
            what: "kernel",
            outcome: kernel_check(),
        },
        Check {
            what: "cgroup v2",
            outcome: match fs::cgroup2_root() {
                Ok(root) => Outcome::Ok(format!("mounted at {}", root.display())),
                Err(e) => Outcome::Fail(format!(
                    "{e}; the hooks attach to cgroup v2 (mount it, or boot with \
                     systemd.unified_cgroup_hierarchy=1)"
                )),
            },
        },
        Check {
            what: "capabilities",
            outcome: capability_check(),
        },
        Check {
            what: "bpf(2)",
            outcome: bpf_syscall_check(),
        },
        Check {
            what: "bpffs",
            outcome: bpffs_check(bpffs),
        },
        Check {
            what: "BTF",
            outcome: if Path::new("/sys/kernel/btf/vmlinux").exists() {
                Outcome::Ok("/sys/kernel/btf/vmlinux".into())
            } else {
                Outcome::Warn(
                    "no /sys/kernel/btf/vmlinux; the programs do not need it, kernel \
                     diagnostics (bpftool) are poorer without it"
                        .into(),
                )
            },
        },
    ]
}

fn kernel_check() -> Outcome {
    let release = match kernel::running_release() {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    match kernel::check(&release) {
        Ok(None) => Outcome::Ok(release),
        Ok(Some(warning)) => Outcome::Warn(warning),
        Err(e) => Outcome::Fail(e.to_string()),
    }
}

/// The effective capability set of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn capability_check() -> Outcome {
    let Some(caps) = effective_caps() else {
        return Outcome::Warn("cannot read CapEff from /proc/self/status".into());
    };
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (or CAP_SYS_ADMIN), to load programs and create maps");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN, to attach cgroup network programs");
    }
    if !has(CAP_SYS_ADMIN) {
        // Not fatal: bpffs may already be mounted, and CAP_BPF loads the programs.
        return if missing.is_empty() {
            Outcome::Warn(
                "no CAP_SYS_ADMIN: bpffs must already be mounted, and unprivileged BPF \
                 helpers only"
                    .into(),
            )
        } else {
            Outcome::Fail(format!("missing {}", missing.join("; ")))
        };
    }
    if missing.is_empty() {
        Outcome::Ok(format!("CapEff {caps:#x}"))
    } else {
        Outcome::Fail(format!("missing {}", missing.join("; ")))
    }
}

/// Creates (and closes) a one-element array map: bpf(2) exists, is allowed, and memory can
/// be charged for maps.
fn bpf_syscall_check() -> Outcome {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        rest: [u8; 124],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        rest: [0; 124],
    };
    // Kernels before 5.11 charge map memory to RLIMIT_MEMLOCK (of all the user's processes
    // together); the loader lifts the limit as aya does, and so does this probe, first.
    raise_memlock();
    // SAFETY: a valid, zero-padded bpf_attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>() as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::ENOSYS) => " (the kernel has no BPF syscall: CONFIG_BPF_SYSCALL)",
            Some(libc::EPERM) => {
                " (not permitted: capabilities, seccomp, or a container runtime's profile)"
            }
            _ => "",
        };
        return Outcome::Fail(format!("creating a map failed: {e}{hint}"));
    }
    // SAFETY: closing the fd just created.
    unsafe { libc::close(fd as libc::c_int) };
    // A one-entry map fits any limit; the agent's maps (tens of MiB) do not fit the 64 KiB a
    // container often gets, and only CAP_SYS_RESOURCE lifts it.
    let charged = kernel::running_release()
        .ok()
        .and_then(|r| KernelVersion::parse(&r))
        .is_some_and(|v| v < KernelVersion(5, 11));
    let limit = memlock_limit();
    if charged && limit < MEMLOCK_NEEDED {
        return Outcome::Fail(format!(
            "RLIMIT_MEMLOCK is {} KiB and cannot be raised: before Linux 5.11 BPF maps are \
             charged to it; grant CAP_SYS_RESOURCE (the DaemonSet does) or raise the limit",
            limit / 1024
        ));
    }
    Outcome::Ok("maps can be created".into())
}

/// What the agent's maps need under RLIMIT_MEMLOCK accounting, with room (the default
/// capacities take about 24 MiB).
const MEMLOCK_NEEDED: u64 = 1 << 30;

fn memlock_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return 0;
    }
    r.rlim_cur
}

/// Lifts RLIMIT_MEMLOCK (best effort: it needs CAP_SYS_RESOURCE).
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit value; setrlimit has no memory effects.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

fn bpffs_check(bpffs: &Path) -> Outcome {
    let mounts = fs::mounts_of("bpf").unwrap_or_default();
    // Judged by the file system the directory (or its nearest existing ancestor) is really
    // on, not by how the path is spelt (`..`, symlinks).
    if fs::on_bpffs(bpffs) {
        return Outcome::Ok(format!("{} is on bpffs", bpffs.display()));
    }
    if bpffs
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Outcome::Fail(format!(
            "{} is not on bpffs (and `..` in it hides where it leads)",
            bpffs.display()
        ));
    }
    if bpffs.starts_with(fs::DEFAULT_BPFFS) && !fs::on_bpffs(Path::new(fs::DEFAULT_BPFFS)) {
        let can_mount = effective_caps().is_some_and(|c| c & (1u64 << CAP_SYS_ADMIN) != 0);
        return if can_mount {
            Outcome::Warn(format!(
                "nothing mounted at {}; the agent will mount bpffs there, but in a container \
                 that mount is private and the pins end with the container: mount bpffs on \
                 the host (systemd does)",
                fs::DEFAULT_BPFFS
            ))
        } else {
            Outcome::Fail(format!(
                "no bpffs at {} and no CAP_SYS_ADMIN to mount one",
                fs::DEFAULT_BPFFS
            ))
        };
    }
    Outcome::Fail(format!(
        "{} is not on a mounted bpffs ({} mounted)",
        bpffs.display(),
        if mounts.is_empty() {
            "none".to_owned()
        } else {
            mounts
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ))
}

/// The failures among `checks`, one line each.
pub fn failures(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Fail(m) => Some(format!("{}: {m}", c.what)),
            _ => None,
        })
        .collect()
}
