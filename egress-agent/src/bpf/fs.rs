//! Finding (and if need be mounting) the file systems the agent works in: cgroup v2 for the
//! attach point, bpffs for the pins. Their paths differ between machines (a hybrid cgroup
//! layout puts cgroup2 at /sys/fs/cgroup/unified; Kubernetes nodes usually have it at
//! /sys/fs/cgroup), so they are read from /proc/self/mountinfo instead of assumed.

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// statfs(2) magic numbers (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where bpffs is mounted on most systems; mounted here when nothing is.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no cgroup v2 file system is mounted (checked /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("{} is not a directory of the cgroup v2 file system{hint}", path.display())]
    NotCgroup2 { path: PathBuf, hint: String },
    #[error("{} is not on a bpf file system; give --bpffs a directory under a bpffs mount", path.display())]
    NotBpffs { path: PathBuf },
    #[error("failed to mount bpffs at {DEFAULT_BPFFS}: {0}")]
    Mount(io::Error),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Mount points of a file system type, from mountinfo (fields per proc(5)).
pub fn mounts_of(fstype: &str) -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == fstype).then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` — or, if it does not exist yet, its nearest existing ancestor — is on
/// bpffs.
pub fn on_bpffs(path: &Path) -> bool {
    let mut existing = path;
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return false,
        }
    }
    fs_magic(existing).is_ok_and(|m| m == BPF_FS_MAGIC)
}

fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `st` is plain data; statfs writes it fully on success.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path, `st` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// The cgroup v2 mount point.
pub fn cgroup2_root() -> Result<PathBuf, FsError> {
    mounts_of("cgroup2")
        .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?
        .into_iter()
        .next()
        .ok_or(FsError::NoCgroup2)
}

/// A cgroup to attach to, given as a path of the cgroup v2 file system, or relative to its
/// mount point (`/kubepods.slice` or `kubepods.slice`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    /// The cgroup id (the directory's inode number on cgroup2), as in BPF helpers and
    /// /proc/<pid>/cgroup-based tooling.
    pub id: u64,
}

impl Cgroup {
    pub fn resolve(given: &Path) -> Result<Self, FsError> {
        let candidate = if is_cgroup2(given) {
            given.to_owned()
        } else {
            let root = cgroup2_root()?;
            let relative = given.strip_prefix("/").unwrap_or(given);
            let joined = root.join(relative);
            if !is_cgroup2(&joined) {
                return Err(FsError::NotCgroup2 {
                    path: given.to_owned(),
                    hint: format!(
                        " (nor is {}; cgroup v2 is mounted at {})",
                        joined.display(),
                        root.display()
                    ),
                });
            }
            joined
        };
        // The real path: `..` and symlinks resolved, so that what is reported and compared
        // (explain's "is it enforced", levels below the mount) is the cgroup itself.
        let candidate = std::fs::canonicalize(&candidate).map_err(io_err("resolve", &candidate))?;
        let id = std::fs::metadata(&candidate)
            .map_err(io_err("stat", &candidate))?
            .ino();
        Ok(Self {
            path: candidate,
            id,
        })
    }
}

fn is_cgroup2(path: &Path) -> bool {
    path.is_dir() && fs_magic(path).is_ok_and(|m| m == CGROUP2_SUPER_MAGIC)
}

/// Makes sure `dir` can hold pins: it is (or will be created) on bpffs. When its ancestor is
/// the usual mount point and nothing is mounted there, bpffs is mounted (as `mount -t bpf`).
pub fn ensure_bpffs_dir(dir: &Path) -> Result<(), FsError> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let on_bpffs = fs_magic(existing).map_err(io_err("statfs", existing))? == BPF_FS_MAGIC;
    if !on_bpffs {
        let default = Path::new(DEFAULT_BPFFS);
        if dir.starts_with(default) && (existing == default || default.starts_with(existing)) {
            mount_bpffs(default)?;
        } else {
            return Err(FsError::NotBpffs {
                path: dir.to_owned(),
            });
        }
    }
    make_private_dir(dir).map_err(io_err("secure", dir))
}

/// Creates `dir` (and its parents) if need be, and makes it this process's own: a real
/// directory (not a symlink), owned by the agent's user, mode 0700. A directory another user
/// owns is refused — they could plant symlinks in it, take the agent's lock, or read what it
/// keeps there (world-writable parents like /tmp and bpffs's 1777 root allow pre-creating
/// it).
pub fn make_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(
            "not a directory (a symlink is not accepted)",
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "owned by uid {}, not by the agent's uid {me}: another user could take it over; \
             remove it or choose another directory",
            meta.uid()
        )));
    }
    check_ancestors(dir, me)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Every directory above `dir` must be root's or the agent's, and writable by nobody else
/// unless sticky (`/tmp`, bpffs's root): otherwise its owner could move the agent's
/// directory aside and put one of their own in its place, which the agent, working by path,
/// would then use.
fn check_ancestors(dir: &Path, me: u32) -> io::Result<()> {
    let real = std::fs::canonicalize(dir)?;
    for ancestor in real.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(io::Error::other(format!(
                "{} above it is owned by uid {}: that user could replace the directory",
                ancestor.display(),
                meta.uid()
            )));
        }
        let mode = meta.mode();
        if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
            return Err(io::Error::other(format!(
                "{} above it is writable by other users (mode {:o}) and not sticky: they could \
                 replace the directory",
                ancestor.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically (a temporary file beside it, then a rename),
/// readable by the agent only, never writing through a symlink planted in its place.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

fn mount_bpffs(at: &Path) -> Result<(), FsError> {
    std::fs::create_dir_all(at).map_err(io_err("create", at))?;
    let target = CString::new(at.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(FsError::Mount(io::Error::last_os_error()));
    }
    tracing::info!(path = %at.display(), "mounted bpffs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/tail\04"), r"/tail\04");
    }
}
