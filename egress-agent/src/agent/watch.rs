//! Tells the agent loop when the policy file may have changed.
//!
//! The parent directory is watched, not the file: editors replace files by renaming, and a
//! Kubernetes ConfigMap volume swaps a `..data` symlink, so the file's own inode is never
//! the one that changes. Any event in the directory wakes the loop, which re-reads the file
//! and acts only if its content differs. A periodic check backs the watch up (inotify does
//! not follow a directory that is itself replaced).

use std::{path::Path, time::Duration};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long to wait for a burst of events (write, rename, chmod…) to settle.
const SETTLE: Duration = Duration::from_millis(100);
/// Fallback poll interval.
const POLL: Duration = Duration::from_secs(10);

pub struct PolicyWatcher {
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
}

impl PolicyWatcher {
    pub fn new(policy: &Path) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let dir = policy
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the policy directory; polling every {}s", POLL.as_secs());
                None
            }
        };
        Self {
            _watcher: watcher,
            events,
        }
    }

    /// Returns once the directory saw events that have settled, or the poll interval passed.
    pub async fn changed(&mut self) {
        tokio::select! {
            Some(()) = self.events.recv() => {
                tokio::time::sleep(SETTLE).await;
                while self.events.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
