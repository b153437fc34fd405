//! Naming the cgroup a denial came from: its path (a cgroup's id is the inode number of its
//! directory in the cgroup v2 file system), and for kubelet cgroups the pod and container.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Cgroup id → path, found by walking the tree below the enforced cgroup (where every
/// denial comes from) and cached; a miss walks again, at most once a second.
pub struct CgroupNames {
    root: PathBuf,
    known: HashMap<u64, PathBuf>,
    last_walk: Option<std::time::Instant>,
}

/// Directories visited by one walk at most (pod trees are a few levels deep).
const MAX_WALK: usize = 100_000;

impl CgroupNames {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            known: HashMap::new(),
            last_walk: None,
        }
    }

    pub fn path_of(&mut self, id: u64) -> Option<PathBuf> {
        if let Some(p) = self.known.get(&id).filter(|p| ino(p) == Some(id)) {
            return Some(p.clone());
        }
        let recent = self
            .last_walk
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
        if recent {
            return None;
        }
        self.last_walk = Some(std::time::Instant::now());
        self.known.clear();
        let mut stack = vec![self.root.clone()];
        let mut visited = 0;
        while let Some(dir) = stack.pop() {
            visited += 1;
            if visited > MAX_WALK {
                break;
            }
            if let Some(i) = ino(&dir) {
                self.known.insert(i, dir.clone());
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        self.known.get(&id).cloned()
    }
}

fn ino(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Pod UID and container id in a kubelet cgroup path, for both cgroup drivers:
/// - systemd: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/
///   cri-containerd-<id>.scope` (also `crio-<id>.scope`, `docker-<id>.scope`);
/// - cgroupfs: `kubepods/burstable/pod<uid>/<id>`.
pub fn kubelet_ids(path: &str) -> (Option<String>, Option<String>) {
    let mut pod = None;
    let mut container = None;
    for part in path.split('/') {
        let systemd_pod = part
            .strip_suffix(".slice")
            .and_then(|s| s.rsplit_once("-pod"))
            .filter(|(prefix, _)| prefix.contains("kubepods"))
            .map(|(_, uid)| uid.replace('_', "-"));
        let cgroupfs_pod = part
            .strip_prefix("pod")
            .filter(|uid| is_uid(uid))
            .map(str::to_owned);
        if let Some(uid) = systemd_pod.or(cgroupfs_pod).filter(|u| is_uid(u)) {
            pod = Some(uid);
            continue;
        }
        if pod.is_some() {
            let id = part
                .strip_suffix(".scope")
                .map(|s| s.rsplit('-').next().unwrap_or(s))
                .unwrap_or(part);
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                container = Some(id.to_owned());
            }
        }
    }
    (pod, container)
}

/// A pod UID: 36 characters of hex digits and dashes (8-4-4-4-12).
fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn systemd_driver_paths() {
        let uid_ = UID.replace('-', "_");
        for (qos_slice, pod_slice) in [
            (
                "kubepods-burstable.slice/",
                format!("kubepods-burstable-pod{uid_}.slice"),
            ),
            (
                "kubepods-besteffort.slice/",
                format!("kubepods-besteffort-pod{uid_}.slice"),
            ),
            ("", format!("kubepods-pod{uid_}.slice")),
        ] {
            for scope in [
                format!("cri-containerd-{CID}.scope"),
                format!("crio-{CID}.scope"),
                format!("docker-{CID}.scope"),
            ] {
                let path = format!("/sys/fs/cgroup/kubepods.slice/{qos_slice}{pod_slice}/{scope}");
                assert_eq!(
                    kubelet_ids(&path),
                    (Some(UID.to_owned()), Some(CID.to_owned())),
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn cgroupfs_driver_paths() {
        for qos in ["burstable/", "besteffort/", ""] {
            let path = format!("/sys/fs/cgroup/kubepods/{qos}pod{UID}/{CID}");
            assert_eq!(
                kubelet_ids(&path),
                (Some(UID.to_owned()), Some(CID.to_owned()))
            );
        }
        let pod_only = format!("/sys/fs/cgroup/kubepods/pod{UID}");
        assert_eq!(kubelet_ids(&pod_only), (Some(UID.to_owned()), None));
    }

    #[test]
    fn other_paths_name_no_pod() {
        assert_eq!(
            kubelet_ids("/sys/fs/cgroup/unified/egress-test/pod1"),
            (None, None)
        );
        assert_eq!(kubelet_ids("/system.slice/docker.service"), (None, None));
    }
}
