//! Running processes "in the pod": in the enforced cgroup (joined before the program starts,
//! so every socket it creates belongs to that cgroup, as in a container), in the pod's network
//! namespace, and with the pod's resolv.conf bind-mounted over /etc/resolv.conf.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
};

use crate::netns::Netns;

pub struct Pod {
    pub cgroup: PathBuf,
    pub netns_fd: OwnedFd,
    pub resolv_conf: PathBuf,
}

impl Pod {
    pub fn new(cgroup: &Path, netns: &Netns, resolv_conf: &Path) -> Self {
        Self {
            cgroup: cgroup.to_owned(),
            netns_fd: netns.fd(),
            resolv_conf: resolv_conf.to_owned(),
        }
    }

    /// A command that runs in this pod.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_in(&self.cgroup, program)
    }

    /// A command that runs in this pod's namespaces but in another cgroup.
    pub fn command_in(&self, cgroup: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        let resolv = CString::new(self.resolv_conf.as_os_str().as_bytes()).unwrap();
        let netns = self.netns_fd.as_raw_fd();
        let mut cmd = Command::new(program);
        // SAFETY: the closure only makes async-signal-safe system calls on data prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                // Join the cgroup first: "0" means the writing process.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                libc::close(fd);
                check(written as libc::c_int)?;
                check(libc::setns(netns, libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    resolv.as_ptr(),
                    c"/etc/resolv.conf".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                Ok(())
            });
        }
        cmd
    }
}
