//! The floor: a cgroup/connect4 and a cgroup/connect6 program that only return "allow"
//! (`r0 = 1; exit`), loaded with bpf(2) BPF_PROG_LOAD and attached with BPF_PROG_ATTACH.
//! What a connect costs with it, less the bare cost, is the price of running any program
//! at that hook; what the agent costs above it is the price of its lookups.
//! (`union bpf_attr` layout: include/uapi/linux/bpf.h.)

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;

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

fn load(attach_type: u32) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_ne_bytes()); // prog_type
    put(&mut attr, 4, &(INSNS.len() as u32).to_ne_bytes()); // insn_cnt
    put(&mut attr, 8, &(INSNS.as_ptr() as u64).to_ne_bytes()); // insns
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes()); // license
    put(&mut attr, 48, b"bench_empty"); // prog_name
    put(&mut attr, 68, &attach_type.to_ne_bytes()); // expected_attach_type
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: a new fd owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches the empty program to `cgroup` for connect4 and connect6. The cgroup holds the
/// programs from then on (until it is removed).
pub fn attach(cgroup: &Path) -> anyhow::Result<()> {
    let dir = std::fs::File::open(cgroup)?;
    for attach_type in [BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT] {
        let prog = load(attach_type)
            .map_err(|e| anyhow::anyhow!("BPF_PROG_LOAD of the empty program: {e}"))?;
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &(dir.as_raw_fd() as u32).to_ne_bytes()); // target_fd
        put(&mut attr, 4, &(prog.as_raw_fd() as u32).to_ne_bytes()); // attach_bpf_fd
        put(&mut attr, 8, &attach_type.to_ne_bytes()); // attach_type
        bpf(BPF_PROG_ATTACH, &mut attr)
            .map_err(|e| anyhow::anyhow!("BPF_PROG_ATTACH to {}: {e}", cgroup.display()))?;
    }
    Ok(())
}
