//! The bpf(2) commands aya 0.14 does not expose: opening a pinned link as a plain fd
//! (`BPF_OBJ_GET`), swapping the program behind a link (`BPF_LINK_UPDATE`, Linux ≥ 5.7 for
//! cgroup links) and detaching it at once (`BPF_LINK_DETACH`, Linux ≥ 5.9), and writing many
//! hash map elements in one call (`BPF_MAP_UPDATE_BATCH`, Linux ≥ 5.6). Swapping in place is what lets a restarted or upgraded agent replace its
//! programs with no instant in which the cgroup runs none (fail-open) or two (needless cost).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` is at most 144 bytes in current kernels; unused bytes must be zero.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Self([0; 144])
    }

    fn put_u32(&mut self, offset: usize, v: u32) {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, v: u64) {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned BPF object (here: a link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = Attr::new();
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr.put_u64(0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes `link` run `prog` from now on, atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    attr.put_u32(0, link.as_raw_fd() as u32);
    attr.put_u32(4, prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Detaches a link's program now, whoever still holds the link (Linux ≥ 5.9). Dropping the
/// last reference detaches too, but later: bpffs frees an unlinked pin after an RCU grace
/// period.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    // struct { __u32 link_fd; }
    attr.put_u32(0, link.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// Writes `keys[i]` → `values[i]` into the hash map `map`, in order, in one call. Each
/// element is replaced in one step, as by a single update (the kernel runs the same update
/// for each: `generic_map_update_batch` in kernel/bpf/syscall.c). Returns how many were
/// written, and the error that stopped the rest.
pub fn map_update_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> (usize, io::Result<()>) {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let Ok(count) = u32::try_from(keys.len()) else {
        return (0, Err(io::Error::from(io::ErrorKind::InvalidInput)));
    };
    let mut attr = Attr::new();
    // struct { __aligned_u64 in_batch, out_batch, keys, values; __u32 count, map_fd;
    //          __u64 elem_flags, flags; } batch;
    attr.put_u64(16, keys.as_ptr() as u64);
    attr.put_u64(24, values.as_ptr() as u64);
    attr.put_u32(32, count);
    attr.put_u32(36, map.as_raw_fd() as u32);
    let r = bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map(|_| ());
    // The kernel writes back how many elements it processed, on success and on error.
    let done = u32::from_ne_bytes(attr.0[32..36].try_into().expect("4 bytes")) as usize;
    (done.min(keys.len()), r)
}
