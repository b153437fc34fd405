//! The pods of this node, for scoped rules: which cgroup each pod has (from the kubelet's
//! cgroup tree, [`kubelet`]) and what its namespace and labels are (from the Kubernetes API,
//! [`kube`]). The tracker joins the two on the pod UID and publishes the result, which the
//! controller turns into classes.
//!
//! A pod that has a cgroup but no metadata yet is not placed: the kernel gives it the
//! unknown class (node-wide allows minus every deny), never more.

pub mod kube;
pub mod kubelet;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use notify::Watcher as _;
use tokio::sync::{mpsc, watch};

use self::{kube::PodIndex, kubelet::PodCgroup};
use crate::enforce::desired::Pods;

/// How often the cgroup tree is scanned even without a change notification.
const RESCAN: Duration = Duration::from_secs(1);

/// The tracker's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    pub pods: Pods,
    /// Pod cgroups with no metadata yet (their UIDs).
    pub unplaced: Vec<String>,
    /// Whether the metadata comes from a complete listing by this run.
    pub synced: bool,
    /// Pod UID → `namespace/name`, for the pods with a cgroup here (for events).
    pub names: BTreeMap<String, String>,
}

/// Joins pod cgroups and metadata; the pod `exempt` (the agent's own) is not enforced.
pub fn join(
    first_level: u32,
    cgroups: &BTreeMap<String, PodCgroup>,
    index: &PodIndex,
    exempt: Option<&str>,
) -> Tracked {
    let mut pods = Pods {
        first_level,
        ..Pods::default()
    };
    let mut unplaced = Vec::new();
    let mut names = BTreeMap::new();
    for (uid, cg) in cgroups {
        if let Some(p) = index.pods.get(uid) {
            names.insert(uid.clone(), format!("{}/{}", p.namespace, p.name));
        }
        if Some(uid.as_str()) == exempt {
            pods.exempt.insert(cg.id);
            continue;
        }
        match index.pods.get(uid) {
            Some(p) => {
                pods.by_cgroup.insert(cg.id, p.meta());
            }
            None => unplaced.push(uid.clone()),
        }
    }
    Tracked {
        pods,
        unplaced,
        synced: index.synced,
        names,
    }
}

/// Watches the pods' root `root` (at cgroup level `root_level`) and the metadata index, and
/// publishes their join whenever it changes. The index is also written to `state_dir` for
/// the next run. Returns the first join (made before returning) and the channel.
pub fn track(
    root: PathBuf,
    root_level: u32,
    mut index: watch::Receiver<PodIndex>,
    state_dir: PathBuf,
    exempt: Option<String>,
) -> watch::Receiver<Tracked> {
    let first_level = root_level + 1;
    let scan = |root: &Path| {
        kubelet::scan(root).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "failed to scan the pods' cgroups");
            BTreeMap::new()
        })
    };
    let initial = {
        let snapshot = index.borrow_and_update();
        // What start-up already listed is kept for the next run too.
        if snapshot.synced
            && let Err(e) = kube::store_cached(&state_dir, &snapshot)
        {
            tracing::warn!(error = %e, "failed to keep the pod metadata for the next run");
        }
        join(first_level, &scan(&root), &snapshot, exempt.as_deref())
    };
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        // Directory events wake the scan at once; the periodic rescan covers what inotify
        // cannot report (a QoS cgroup created after the watch was set up, missed events).
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |_event| {
            let _ = events_tx.send(());
        })
        .map_err(|e| tracing::warn!(error = %e, "no cgroup notifications; scanning every second"))
        .ok();
        let mut watched = BTreeSet::new();
        let mut tick = tokio::time::interval(RESCAN);
        loop {
            if let Some(w) = watcher.as_mut() {
                for dir in kubelet::watched_dirs(&root) {
                    if !watched.contains(&dir)
                        && w.watch(&dir, notify::RecursiveMode::NonRecursive).is_ok()
                    {
                        watched.insert(dir);
                    }
                }
            }
            let current = {
                let index = index.borrow();
                join(first_level, &scan(&root), &index, exempt.as_deref())
            };
            tx.send_if_modified(|t| {
                if *t == current {
                    return false;
                }
                *t = current;
                true
            });
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = events.recv() => {
                    while events.try_recv().is_ok() {}
                }
                changed = index.changed() => {
                    if changed.is_err() {
                        // No metadata source any more: keep scanning with what is known.
                        index.mark_unchanged();
                        tick.tick().await;
                        continue;
                    }
                    let snapshot = index.borrow_and_update().clone();
                    if let Err(e) = kube::store_cached(&state_dir, &snapshot) {
                        tracing::warn!(error = %e, "failed to keep the pod metadata for the next run");
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::{kube::StoredPod, *};

    #[test]
    fn pods_without_metadata_are_not_placed() {
        let cg = |uid: &str, id| {
            (
                uid.to_owned(),
                PodCgroup {
                    uid: uid.to_owned(),
                    id,
                    path: PathBuf::from(uid),
                },
            )
        };
        let cgroups: BTreeMap<_, _> = [cg("a", 10), cg("b", 11)].into();
        let mut index = PodIndex::default();
        index.pods.insert(
            "a".into(),
            StoredPod {
                namespace: "ns".into(),
                name: "pa".into(),
                labels: BTreeMap::new(),
            },
        );
        index.pods.insert(
            "gone".into(),
            StoredPod {
                namespace: "ns".into(),
                name: "pg".into(),
                labels: BTreeMap::new(),
            },
        );
        let t = join(3, &cgroups, &index, None);
        assert_eq!(t.pods.first_level, 3);
        assert_eq!(
            t.pods.by_cgroup.keys().copied().collect::<Vec<_>>(),
            vec![10]
        );
        assert_eq!(t.pods.by_cgroup[&10].name, "pa");
        assert_eq!(t.unplaced, vec!["b".to_owned()]);
        let t = join(3, &cgroups, &index, Some("b"));
        assert!(t.unplaced.is_empty());
        assert_eq!(t.pods.exempt.iter().copied().collect::<Vec<_>>(), vec![11]);
    }
}
