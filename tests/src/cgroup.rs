//! Throwaway cgroup v2 directories: the enforced "pod" cgroup and its children.

use std::path::{Path, PathBuf};

use egress_agent::bpf::fs::cgroup2_root;

/// `<cgroup2>/<name>/` with a `pod1` child; removed (processes killed) on drop.
pub struct TestCgroup {
    /// The cgroup the agent attaches to.
    pub enforced: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let enforced = cgroup2_root()?.join(name);
        std::fs::create_dir_all(enforced.join("pod1"))?;
        Ok(Self { enforced })
    }

    /// The pod cgroup under the enforced one, where test processes run.
    pub fn pod(&self) -> PathBuf {
        self.enforced.join("pod1")
    }

    /// Creates (if need be) and returns another child cgroup.
    pub fn child(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.enforced.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    // cgroup.kill exists since Linux 5.14; older kernels get the processes killed one by one.
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err()
        && let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs"))
    {
        for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_tree(&self.enforced);
    }
}
