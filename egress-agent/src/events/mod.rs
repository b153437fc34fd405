//! Denials, from the kernel to whoever asks.
//!
//! The programs send an event for the first denial of a flow (who, where to, how, why) and at
//! most one a second after that, and count every denial per flow and per CPU in a pinned map
//! (see `egress-ebpf/src/programs/report.rs`). Here:
//! - [`reader`] drains the ring buffer as it fills and sweeps the per-flow counts every
//!   second, so that counts stay exact even for denials that sent no event, or whose event
//!   was lost to a full ring buffer;
//! - [`flows`] folds both into one record per flow (count, first and last seen, pid and
//!   command, the hostnames the kernel maps know for the address);
//! - [`cgroups`] names a cgroup id by its path, and a kubelet path by its pod and container.
//!
//! One task owns the table; readers (the local API, the metrics) take snapshots or follow
//! updates through an [`EventHub`].

pub mod cgroups;
pub mod flows;
pub mod reader;

use std::sync::{Arc, Mutex};

pub use flows::{FlowRecord, FlowTable};
use tokio::sync::broadcast;

/// Flows kept in memory; the least recently seen ones go first.
pub const MAX_FLOWS: usize = 10_000;

/// Shared access to the flow table: snapshots, and a stream of updated records.
#[derive(Clone)]
pub struct EventHub {
    table: Arc<Mutex<FlowTable>>,
    updates: broadcast::Sender<FlowRecord>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new(MAX_FLOWS)
    }
}

impl EventHub {
    pub fn new(capacity: usize) -> Self {
        let (updates, _) = broadcast::channel(4096);
        Self {
            table: Arc::new(Mutex::new(FlowTable::new(capacity))),
            updates,
        }
    }

    /// Every flow last seen at or after `since_ms` (Unix milliseconds), oldest first.
    pub fn snapshot(&self, since_ms: u64) -> Vec<FlowRecord> {
        self.table
            .lock()
            .expect("flow table")
            .records()
            .into_iter()
            .filter(|r| r.last_seen_ms >= since_ms)
            .collect()
    }

    /// Records as they change, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FlowRecord> {
        self.updates.subscribe()
    }

    /// Runs `f` on the table and publishes the records it returns.
    pub(crate) fn update(&self, f: impl FnOnce(&mut FlowTable) -> Vec<FlowRecord>) {
        let changed = f(&mut self.table.lock().expect("flow table"));
        for record in changed {
            // No subscriber is not an error.
            let _ = self.updates.send(record);
        }
    }

    pub fn len(&self) -> usize {
        self.table.lock().expect("flow table").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
