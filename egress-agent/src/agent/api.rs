//! The agent's local API: a Unix socket in the state directory (mode 0600, in a 0700
//! directory), one JSON request per connection, answered with JSON lines.
//!
//! ```text
//! → {"events":{"since_ms":0,"follow":false}}
//! ← {"first_seen_ms":…,"count":3,"verdict":"deny","destination":"203.0.113.66",…}
//! ```
//!
//! With `follow`, the connection stays open and every change of a flow's record follows.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};

use crate::events::EventHub;

/// The socket's name in the state directory.
pub const SOCKET: &str = "agent.sock";
/// Clients served at once; more are closed on arrival.
const MAX_CLIENTS: usize = 64;
/// The longest request line read (a request is a few dozen bytes).
const MAX_REQUEST: u64 = 4096;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// The denied flows last seen at or after `since_ms` (Unix milliseconds), then, with
    /// `follow`, their changes as they happen.
    Events { since_ms: u64, follow: bool },
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Binds the socket (replacing a stale one) and serves it on a task.
pub fn serve(state_dir: &Path, hub: EventHub) -> std::io::Result<()> {
    let path = socket_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let hub = hub.clone();
                        tokio::spawn(async move {
                            handle(stream, hub).await;
                            drop(slot);
                        });
                    }
                    Err(_) => tracing::debug!("local API: too many clients"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "local API: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn handle(stream: UnixStream, hub: EventHub) {
    use tokio::io::AsyncReadExt as _;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let mut line = String::new();
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) if line.ends_with('\n') => {}
        Ok(Ok(_)) if line.len() as u64 >= MAX_REQUEST => {
            let error = serde_json::json!({ "error": "request too long" });
            let _ = write.write_all(format!("{error}\n").as_bytes()).await;
            return;
        }
        // A request without its newline, cut short by the client: read as is.
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => return,
    }
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let error = serde_json::json!({ "error": format!("bad request: {e}") });
            let _ = write.write_all(format!("{error}\n").as_bytes()).await;
            return;
        }
    };
    match request {
        Request::Events { since_ms, follow } => {
            // Subscribe before the snapshot, so that no change falls between the two.
            let mut updates = hub.subscribe();
            for record in hub.snapshot(since_ms) {
                if send(&mut write, &record).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            // The client's side of the connection says when it is gone: a closed client is
            // let go at once, not at the next change.
            let mut rest = [0u8; 64];
            loop {
                let update = tokio::select! {
                    update = updates.recv() => update,
                    read = reader.read(&mut rest) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    },
                };
                match update {
                    Ok(record) => {
                        if send(&mut write, &record).await.is_err() {
                            return;
                        }
                    }
                    // A slow reader misses intermediate states, not flows: the next change
                    // of each carries its full count.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    value: &impl Serialize,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}
