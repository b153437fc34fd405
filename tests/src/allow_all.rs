//! A cgroup/connect4 or connect6 program that allows everything (`r0 = 1; exit`), loaded and
//! attached with raw `bpf(2)` calls (`union bpf_attr` layout: include/uapi/linux/bpf.h). Two
//! uses: the benchmark's floor (what running *any* program at the hook costs), and the rogue
//! program of the bypass suite (what a workload with CAP_BPF, or a careless operator, might
//! attach below the enforced cgroup to lift enforcement).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub const BPF_F_ALLOW_OVERRIDE: u32 = 1;
pub const BPF_F_ALLOW_MULTI: u32 = 2;

/// `r0 = 1` (BPF_ALU64 | BPF_MOV | BPF_K), `exit` (BPF_JMP | BPF_EXIT).
const INSNS: [u64; 2] = [0xb7 | (1 << 32), 0x95];

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<i32> {
    // SAFETY: attr is a zero-filled union bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

fn put(attr: &mut [u8; 128], offset: usize, bytes: &[u8]) {
    attr[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Loads the program for `attach_type` (connect4 or connect6).
pub fn load(attach_type: u32) -> io::Result<OwnedFd> {
    // Before 5.11 BPF memory is charged to RLIMIT_MEMLOCK, and going over it is EPERM.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit; failure leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_ne_bytes()); // prog_type
    put(&mut attr, 4, &(INSNS.len() as u32).to_ne_bytes()); // insn_cnt
    put(&mut attr, 8, &(INSNS.as_ptr() as u64).to_ne_bytes()); // insns
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes()); // license
    put(&mut attr, 48, b"allow_all"); // prog_name
    put(&mut attr, 68, &attach_type.to_ne_bytes()); // expected_attach_type
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: a new fd owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches `prog` to `cgroup` for `attach_type` with `flags` (BPF_PROG_ATTACH: the cgroup
/// holds the program from then on, until it is removed).
pub fn attach(prog: &OwnedFd, cgroup: &Path, attach_type: u32, flags: u32) -> io::Result<()> {
    let dir = std::fs::File::open(cgroup)?;
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &(dir.as_raw_fd() as u32).to_ne_bytes()); // target_fd
    put(&mut attr, 4, &(prog.as_raw_fd() as u32).to_ne_bytes()); // attach_bpf_fd
    put(&mut attr, 8, &attach_type.to_ne_bytes()); // attach_type
    put(&mut attr, 12, &flags.to_ne_bytes()); // attach_flags
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}
