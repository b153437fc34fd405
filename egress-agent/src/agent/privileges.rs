//! Least privilege: once the programs are loaded and attached, the agent keeps only what its
//! loop needs — `bpf(2)` on the maps it holds (CAP_BPF, or CAP_SYS_ADMIN where the runtime
//! grants no CAP_BPF: kernels with `unprivileged_bpf_disabled` check it on every command) and
//! attaching the held programs to a re-created cgroup (CAP_NET_ADMIN) — and drops everything
//! else (CAP_SYS_ADMIN when CAP_BPF is there, CAP_PERFMON, CAP_DAC_OVERRIDE, CAP_SETUID, …)
//! from its effective, permitted, inheritable, ambient and bounding sets, with
//! `no_new_privs`, so that nothing it runs or becomes can get them back.
//!
//! Capabilities belong to threads, not processes, and `capset(2)` changes only the caller's.
//! So every thread of the process is made to drop them itself: a real-time signal whose
//! handler makes the same raw system calls (async-signal-safe), sent to each thread found in
//! `/proc/self/task` until every thread's status shows the reduced sets — the way glibc
//! broadcasts `setuid()`. Threads started later inherit the reduced sets from their creator.

use std::{
    sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

pub const CAP_SETPCAP: u32 = 8;

/// The capability set to keep, as a bit mask; read by the signal handler.
static KEEP: AtomicU64 = AtomicU64::new(0);
/// Whether the bounding set can be reduced too (that takes CAP_SETPCAP, which a container
/// may not have been given; with `no_new_privs` the bounding set no longer matters anyway:
/// nothing executed can gain a capability).
static BOUNDING: AtomicU64 = AtomicU64::new(0);
/// Threads that ran the drop, and the first error one of them met (0: none).
static DONE: AtomicUsize = AtomicUsize::new(0);
static ERROR: AtomicI32 = AtomicI32::new(0);

/// The capabilities the running agent keeps, given what it holds (`effective`).
pub fn needed(effective: u64) -> u64 {
    let bit = |c: u32| 1u64 << c;
    let bpf = if effective & bit(CAP_BPF) != 0 {
        bit(CAP_BPF)
    } else {
        bit(CAP_SYS_ADMIN)
    };
    (bpf | bit(CAP_NET_ADMIN)) & effective
}

/// One thread's capability sets, from its status file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadCaps {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

pub fn parse_status(status: &str) -> Option<ThreadCaps> {
    let hex = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some(ThreadCaps {
        effective: hex("CapEff:")?,
        permitted: hex("CapPrm:")?,
        inheritable: hex("CapInh:")?,
        bounding: hex("CapBnd:")?,
        ambient: hex("CapAmb:").unwrap_or(0),
        no_new_privs: status
            .lines()
            .find_map(|l| l.strip_prefix("NoNewPrivs:"))
            .is_some_and(|v| v.trim() == "1"),
    })
}

impl ThreadCaps {
    fn reduced_to(&self, keep: u64, bounding: bool) -> bool {
        self.effective & !keep == 0
            && self.permitted & !keep == 0
            && self.inheritable == 0
            && (!bounding || self.bounding & !keep == 0)
            && self.ambient == 0
            && self.no_new_privs
    }
}

/// Every thread's sets (threads that exit while being read are skipped).
pub fn threads() -> Vec<(u32, ThreadCaps)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            Some((tid, parse_status(&status)?))
        })
        .collect()
}

/// Drops every capability but `keep` in every thread of the process (from the bounding set
/// too where CAP_SETPCAP allows). Returns the mask kept.
pub fn drop_all_but(keep: u64) -> Result<u64, String> {
    KEEP.store(keep, Ordering::SeqCst);
    let effective = threads()
        .iter()
        .map(|(_, c)| c.effective)
        .fold(u64::MAX, |a, b| a & b);
    let bounding = effective & (1 << CAP_SETPCAP) != 0;
    BOUNDING.store(u64::from(bounding), Ordering::SeqCst);
    let signal = libc::SIGRTMIN() + 7;
    // SAFETY: installs a handler that only makes raw system calls and touches atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
    }
    let rc = drop_this_thread(keep);
    if rc != 0 {
        return Err(format!(
            "this thread: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    // SAFETY: plain system calls.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pending: Vec<u32> = threads()
            .into_iter()
            .filter(|(tid, caps)| *tid != me as u32 && !caps.reduced_to(keep, bounding))
            .map(|(tid, _)| tid)
            .collect();
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "threads {pending:?} still hold capabilities after 5 s"
            ));
        }
        let before = DONE.load(Ordering::SeqCst);
        let mut sent = 0;
        for tid in &pending {
            // SAFETY: a signal to a thread of this process; ESRCH when it has exited.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, *tid as libc::pid_t, signal) } == 0 {
                sent += 1;
            }
        }
        let wait = Instant::now() + Duration::from_millis(500);
        while DONE.load(Ordering::SeqCst) < before + sent && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(1));
        }
        let rc = ERROR.load(Ordering::SeqCst);
        if rc != 0 {
            return Err(format!(
                "a thread could not drop: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
    }
    Ok(keep)
}

extern "C" fn handler(_: libc::c_int) {
    let rc = drop_this_thread(KEEP.load(Ordering::SeqCst));
    if rc != 0 {
        let _ = ERROR.compare_exchange(0, rc, Ordering::SeqCst, Ordering::SeqCst);
    }
    DONE.fetch_add(1, Ordering::SeqCst);
}

/// The calling thread's drop, in raw system calls only (it runs in a signal handler).
/// Returns 0 or an errno.
fn drop_this_thread(keep: u64) -> i32 {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY (all calls): plain system calls on this thread's own attributes.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return errno();
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) != 0
        {
            return errno();
        }
        // The bounding set first: dropping from it needs CAP_SETPCAP, which goes below.
        let bounding = BOUNDING.load(Ordering::SeqCst) != 0;
        for cap in 0..64u32 {
            if bounding
                && keep & (1u64 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1
                && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            {
                return errno();
            }
        }
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let data = [
            Data {
                effective: keep as u32,
                permitted: keep as u32,
                inheritable: 0,
            },
            Data {
                effective: (keep >> 32) as u32,
                permitted: (keep >> 32) as u32,
                inheritable: 0,
            },
        ];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return errno();
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_bpf_and_net_admin_or_sys_admin_without_bpf() {
        let bit = |c: u32| 1u64 << c;
        let all = 0x1ff_ffff_ffff;
        assert_eq!(needed(all), bit(CAP_BPF) | bit(CAP_NET_ADMIN));
        let no_bpf = all & !bit(CAP_BPF);
        assert_eq!(needed(no_bpf), bit(CAP_SYS_ADMIN) | bit(CAP_NET_ADMIN));
        // Never more than held.
        assert_eq!(needed(bit(CAP_BPF)), bit(CAP_BPF));
    }

    #[test]
    fn status_lines_are_read() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000008000001000\nCapEff:\t0000008000001000\nCapBnd:\t0000008000001000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let caps = parse_status(s).unwrap();
        assert_eq!(caps.effective, (1 << 39) | (1 << 12));
        assert!(caps.reduced_to((1 << 39) | (1 << 12), true));
        assert!(!caps.reduced_to(1 << 39, true));
    }
}
