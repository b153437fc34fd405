//! Which kernels the agent runs on.
//!
//! Hard floor, by feature: Linux 5.7 brought cgroup `bpf_link`s (`BPF_LINK_CREATE` for
//! cgroups) and `BPF_LINK_UPDATE`, on which pinned, restart-safe enforcement rests (without
//! them a crashed agent would take enforcement with it), and 5.8 the BPF ring buffer that
//! carries denial events. Older kernels are refused.
//!
//! Proven floor, by experiment: `cargo xtask vm-test` runs the whole end-to-end suite on
//! Debian's 5.10, 6.1, 6.12 and newest kernels. 5.10 is the oldest kernel obtainable there;
//! kernels from 5.8 up to it are accepted with a warning that they are untested.

use std::fmt;

/// Refused below this.
pub const REQUIRED: KernelVersion = KernelVersion(5, 8);
/// The oldest kernel the VM matrix has proven.
pub const TESTED: KernelVersion = KernelVersion(5, 10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl KernelVersion {
    /// Major and minor of a release string such as `6.1.0-57-cloud-amd64`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self(major, minor))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "Linux {release} is too old: egress-agent needs Linux ≥ {REQUIRED} (cgroup bpf_link and \
         BPF_LINK_UPDATE keep enforcement attached while no agent runs; the BPF ring buffer \
         carries denial events)"
    )]
    TooOld { release: String },
    #[error("cannot read the kernel release ({0}); refusing to guess which features it has")]
    Unknown(String),
}

/// Checks a release string: `Ok(None)` when tested, `Ok(Some(warning))` when supported but
/// older than the matrix proves, an error when the agent cannot work there.
pub fn check(release: &str) -> Result<Option<String>, KernelError> {
    let version =
        KernelVersion::parse(release).ok_or_else(|| KernelError::Unknown(release.to_owned()))?;
    if version < REQUIRED {
        return Err(KernelError::TooOld {
            release: release.to_owned(),
        });
    }
    Ok((version < TESTED).then(|| {
        format!(
            "Linux {release} has the features egress-agent needs but is older than {TESTED}, the \
             oldest kernel its VM tests prove; watch it closely"
        )
    }))
}

/// The running kernel's release (`uname -r`).
pub fn running_release() -> Result<String, KernelError> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .map_err(|e| KernelError::Unknown(e.to_string()))
}

/// Whether the BPF LSM is among the kernel's active security modules, which is what makes
/// `lsm_cgroup` programs run at all (a kernel built with it but booted without `bpf` in
/// `lsm=` would accept the program and never call it). Read from securityfs; where it is
/// not mounted (containers), a private mount of it is read and dropped.
pub fn bpf_lsm_active() -> Result<bool, String> {
    const LSM: &str = "/sys/kernel/security/lsm";
    let list = match std::fs::read_to_string(LSM) {
        Ok(list) => list,
        Err(_) => read_private_securityfs()?,
    };
    Ok(list.trim().split(',').any(|m| m == "bpf"))
}

fn read_private_securityfs() -> Result<String, String> {
    use std::ffi::CString;
    let dir = std::env::temp_dir().join(format!("egress-agent-securityfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let c_dir = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let fs = c"securityfs";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            c_dir.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(&dir);
        return Err(format!("securityfs is not mounted and cannot be ({e})"));
    }
    let list = std::fs::read_to_string(dir.join("lsm"));
    // SAFETY: the mount made above.
    unsafe { libc::umount2(c_dir.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(&dir);
    list.map_err(|e| format!("securityfs lsm: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(
            KernelVersion::parse("6.1.0-57-cloud-amd64"),
            Some(KernelVersion(6, 1))
        );
        assert_eq!(
            KernelVersion::parse("7.2.13+deb14-cloud-amd64"),
            Some(KernelVersion(7, 2))
        );
        assert_eq!(
            KernelVersion::parse("5.10.0-46-cloud-amd64"),
            Some(KernelVersion(5, 10))
        );
        assert_eq!(KernelVersion::parse("6"), None);
        assert_eq!(KernelVersion::parse("garbage"), None);
    }

    #[test]
    fn old_kernels_are_refused_untested_ones_warned_about() {
        assert!(matches!(
            check("4.19.0-27-amd64"),
            Err(KernelError::TooOld { .. })
        ));
        assert!(matches!(check("5.7.19"), Err(KernelError::TooOld { .. })));
        assert!(check("5.8.0").unwrap().is_some());
        assert!(check("5.9.16").unwrap().is_some());
        assert_eq!(check("5.10.0-46-cloud-amd64").unwrap(), None);
        assert_eq!(check("6.18.0").unwrap(), None);
        assert!(matches!(check(""), Err(KernelError::Unknown(_))));
    }
}
