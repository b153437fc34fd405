//! Network namespaces made with iproute2, and running code inside them without changing
//! the mount namespace (unlike `ip netns exec`, which remounts /sys and would hide the
//! cgroup and bpffs mounts).

use std::{
    fs::File,
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
};

use crate::sh;

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct Netns {
    pub name: String,
    file: File,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        sh("ip", &["netns", "add", name])?;
        let file = File::open(Self::path_of(name))?;
        let ns = Self {
            name: name.to_owned(),
            file,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn path_of(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Sets a sysctl of this namespace (`net.*` only).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value))??;
        Ok(())
    }

    /// A duplicate of the namespace fd, for `setns` in a child process.
    pub fn fd(&self) -> OwnedFd {
        self.file.try_clone().expect("dup netns fd").into()
    }

    /// Runs `f` on a fresh thread that has joined this namespace. Sockets created by `f`
    /// belong to the namespace for their whole life.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let fd = self.fd();
        std::thread::spawn(move || {
            // SAFETY: a valid netns fd; only this thread changes namespace, and it ends
            // when `f` returns.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!(
                    "setns: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}
