//! The kubelet's cgroups on cgroup v2: where the pods' root is, and which pod cgroups are
//! below it.
//!
//! Layouts, for both cgroup drivers and every QoS class (Guaranteed pods sit directly under
//! the root, Burstable and BestEffort ones under their QoS cgroup):
//! - systemd: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, `-` as
//!   `_`>.slice/cri-containerd-<id>.scope` (`crio-<id>.scope`, `docker-<id>.scope`), and
//!   `kubepods.slice/kubepods-pod<uid>.slice/...`;
//! - cgroupfs: `kubepods/burstable/pod<uid>/<id>`, `kubepods/pod<uid>/<id>`.
//!
//! The root may itself be nested (kubelet's `--cgroup-root`, a node in a container:
//! `kubelet.slice/kubelet-kubepods.slice`), so it is searched for a few levels deep.

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::events::cgroups::kubelet_ids;

/// How deep below the cgroup2 mount the pods' root is searched for.
const ROOT_SEARCH_DEPTH: usize = 3;
/// QoS cgroups under the pods' root.
const QOS: [&str; 2] = ["burstable", "besteffort"];

/// One pod's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    pub uid: String,
    /// The cgroup id (inode number) of the pod-level cgroup.
    pub id: u64,
    pub path: PathBuf,
}

/// Finds the pods' root below the cgroup2 mount `mount`: a directory named `kubepods.slice`
/// (systemd driver), `kubepods` (cgroupfs) or `<prefix>-kubepods.slice` (a nested root),
/// at most [`ROOT_SEARCH_DEPTH`] levels down, shallowest first.
pub fn find_pods_root(mount: &Path) -> Option<PathBuf> {
    let mut level = vec![mount.to_owned()];
    for _ in 0..ROOT_SEARCH_DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            for child in subdirs(dir) {
                let name = file_name(&child);
                if name == "kubepods.slice"
                    || name == "kubepods"
                    || name.ends_with("-kubepods.slice")
                {
                    return Some(child);
                }
                next.push(child);
            }
        }
        level = next;
    }
    None
}

/// The pod cgroups below `root`, by pod UID: directly under it (Guaranteed) and under its
/// QoS cgroups (Burstable, BestEffort), in either driver's naming.
pub fn scan(root: &Path) -> io::Result<BTreeMap<String, PodCgroup>> {
    let mut pods = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    for child in subdirs(root) {
        let name = file_name(&child);
        if QOS.iter().any(|q| is_qos_dir(&name, q)) {
            dirs.push(child);
        }
    }
    for dir in dirs {
        for child in subdirs(&dir) {
            let name = file_name(&child);
            let Some(uid) = pod_uid(&name) else {
                continue;
            };
            // A pod deleted between the listing and here is simply gone.
            let Ok(meta) = std::fs::metadata(&child) else {
                continue;
            };
            pods.insert(
                uid.clone(),
                PodCgroup {
                    uid,
                    id: meta.ino(),
                    path: child,
                },
            );
        }
    }
    if !root.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not exist", root.display()),
        ));
    }
    Ok(pods)
}

/// The directories a pods' root's scan looks into (for a watch on new pods).
pub fn watched_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_owned()];
    dirs.extend(
        subdirs(root)
            .into_iter()
            .filter(|c| QOS.iter().any(|q| is_qos_dir(&file_name(c), q))),
    );
    dirs
}

/// `burstable` (cgroupfs) or `kubepods-burstable.slice` / `<prefix>-kubepods-burstable.slice`.
fn is_qos_dir(name: &str, qos: &str) -> bool {
    name == qos || name.ends_with(&format!("kubepods-{qos}.slice"))
}

/// The pod UID a pod-level cgroup's name carries, if it is one.
fn pod_uid(name: &str) -> Option<String> {
    // `kubelet_ids` reads whole paths; a pod-level name alone is such a path.
    kubelet_ids(name).0
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The cgroup level of `path` below the cgroup2 mount `mount` (the mount's root is level 0),
/// as the kernel's ancestor helpers count.
pub fn level(mount: &Path, path: &Path) -> Option<u32> {
    let below = path.strip_prefix(mount).ok()?;
    u32::try_from(below.components().count()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9";
    const UID2: &str = "00000000-1111-2222-3333-444444444444";
    const UID3: &str = "abcdef01-2345-6789-abcd-ef0123456789";

    fn mkdirs(root: &Path, dirs: &[String]) {
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
    }

    #[test]
    fn scans_both_drivers_and_every_qos_class() {
        let tmp = std::env::temp_dir().join(format!("egress-kubelet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let u = |s: &str| s.replace('-', "_");
        mkdirs(
            &tmp,
            &[
                format!(
                    "sys/kubepods.slice/kubepods-pod{}.slice/cri-containerd-x.scope",
                    u(UID)
                ),
                format!(
                    "sys/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                    u(UID2)
                ),
                format!(
                    "sys/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                    u(UID3)
                ),
                "sys/kubepods.slice/kubepods-burstable.slice/not-a-pod".to_owned(),
                format!("fs/kubepods/pod{UID}/0123"),
                format!("fs/kubepods/burstable/pod{UID2}"),
                format!("fs/kubepods/besteffort/pod{UID3}"),
                "nested/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice"
                    .to_owned(),
            ],
        );
        for (base, root) in [("sys", "kubepods.slice"), ("fs", "kubepods")] {
            let found = find_pods_root(&tmp.join(base)).unwrap();
            assert_eq!(found, tmp.join(base).join(root));
            let pods = scan(&found).unwrap();
            assert_eq!(
                pods.keys().cloned().collect::<Vec<_>>(),
                {
                    let mut v = vec![UID.to_owned(), UID2.to_owned(), UID3.to_owned()];
                    v.sort();
                    v
                },
                "{base}"
            );
            assert_eq!(level(&tmp.join(base), &found), Some(1));
        }
        let nested = find_pods_root(&tmp.join("nested")).unwrap();
        assert!(nested.ends_with("kubelet.slice/kubelet-kubepods.slice"));
        assert_eq!(watched_dirs(&nested).len(), 2);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
