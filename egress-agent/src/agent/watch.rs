//! Tells the agent loop when the policy file may have changed.
//!
//! Directories are watched, not the file: editors replace files by renaming, and a
//! Kubernetes ConfigMap volume swaps a `..data` symlink, so the file's own inode is never
//! the one that changes. The policy's directory is watched, and the directory of every
//! symlink on the way to the real file (a symlink pointing into a ConfigMap mount, say). Any
//! event there wakes the loop, which re-reads the file and acts only if its content differs.
//! A periodic check backs the watch up (inotify does not follow a directory that is itself
//! replaced, nor symlinks changed after start).
//!
//! [`PolicyWatcher::changed`] is cancellation safe: the agent loop selects on it among other
//! things, and an event or a due poll is never lost when another branch wins.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher as _};
use tokio::{
    sync::mpsc,
    time::{Instant, Interval, MissedTickBehavior},
};

/// How long to wait for a burst of events (write, rename, chmod…) to settle.
const SETTLE: Duration = Duration::from_millis(100);
/// Fallback poll interval.
const POLL: Duration = Duration::from_secs(10);
/// Symlinks followed to find directories to watch.
const MAX_HOPS: usize = 8;

pub struct PolicyWatcher {
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
    poll: Interval,
    /// When the first event of an unsettled burst arrived.
    burst: Option<Instant>,
}

impl PolicyWatcher {
    pub fn new(policy: &Path) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let dirs = directories_to_watch(policy);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| {
            for dir in &dirs {
                w.watch(dir, RecursiveMode::NonRecursive)?;
            }
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dirs = ?dirs, error = %e, "cannot watch the policy's directories; polling every {}s", POLL.as_secs());
                None
            }
        };
        let mut poll = tokio::time::interval_at(Instant::now() + POLL, POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            _watcher: watcher,
            events,
            poll,
            burst: None,
        }
    }

    /// Returns once the watched directories saw events that have settled, or the poll
    /// interval passed.
    pub async fn changed(&mut self) {
        loop {
            match self.burst {
                Some(first) => tokio::select! {
                    () = tokio::time::sleep_until(first + SETTLE) => {
                        while self.events.try_recv().is_ok() {}
                        self.burst = None;
                        return;
                    }
                    Some(()) = self.events.recv() => {}
                },
                None => tokio::select! {
                    Some(()) = self.events.recv() => self.burst = Some(Instant::now()),
                    _ = self.poll.tick() => return,
                },
            }
        }
    }
}

/// The policy's directory, and that of each symlink target on the way to the real file.
fn directories_to_watch(policy: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    };
    let mut dirs = vec![parent(policy)];
    let mut at = policy.to_owned();
    for _ in 0..MAX_HOPS {
        let Ok(target) = std::fs::read_link(&at) else {
            break;
        };
        at = if target.is_absolute() {
            target
        } else {
            parent(&at).join(target)
        };
        let dir = parent(&at);
        if !dirs.contains(&dir) && dir.is_dir() {
            dirs.push(dir);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_add_their_directories() {
        let root = std::env::temp_dir().join(format!("egress-watch-{}", std::process::id()));
        let mount = root.join("configmap");
        std::fs::create_dir_all(mount.join("..2026_01")).unwrap();
        std::fs::write(mount.join("..2026_01/policy.yaml"), "x").unwrap();
        std::os::unix::fs::symlink("..2026_01", mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/policy.yaml", mount.join("policy.yaml")).unwrap();
        std::os::unix::fs::symlink(mount.join("policy.yaml"), root.join("policy.yaml")).unwrap();
        let dirs = directories_to_watch(&root.join("policy.yaml"));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            dirs,
            vec![root.clone(), mount.clone(), mount.join("..data")]
        );
    }
}
