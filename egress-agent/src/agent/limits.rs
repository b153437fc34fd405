//! Bounds on what clients of the agent's endpoints can hold: how many connections at once,
//! and for how long. Whoever can reach the metrics port (often the whole cluster) must not
//! be able to exhaust the agent's file descriptors or memory by opening connections and
//! leaving them idle; the agent's real work (policy reloads, the status file) needs both.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};

/// Connections the metrics endpoint serves at once; more are closed on arrival.
pub const MAX_HTTP_CONNECTIONS: usize = 256;
/// Connections one peer address may hold at once: a client that hoards connections
/// exhausts its own share, not the kubelet's probes or Prometheus's scrapes.
pub const MAX_HTTP_CONNECTIONS_PER_PEER: usize = 8;
/// How long one metrics connection may live (a scrape takes milliseconds; keep-alive
/// clients reconnect).
pub const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(15);

/// A TCP listener for axum that keeps at most `max` connections, each for at most
/// `lifetime`.
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    per_peer: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    max_per_peer: usize,
    lifetime: Duration,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max: usize, max_per_peer: usize, lifetime: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            per_peer: Arc::default(),
            max_per_peer,
            lifetime,
        }
    }

    /// Counts a connection of `peer`, unless it already holds its share.
    fn admit(&self, peer: std::net::IpAddr) -> Option<PeerSlot> {
        let mut held = self.per_peer.lock().expect("peer counts");
        let n = held.entry(peer).or_insert(0);
        if *n >= self.max_per_peer {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peer,
            counts: self.per_peer.clone(),
        })
    }
}

/// One connection's place in its peer's share; given back when the connection ends.
pub struct PeerSlot {
    peer: std::net::IpAddr,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.counts.lock().expect("peer counts");
        if let Some(n) = held.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Limited<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted.
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(peer) = self.admit(addr.ip()) else {
                tracing::debug!(peer = %addr, "metrics endpoint: too many connections from this peer");
                continue;
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    return (Limited::new(stream, (permit, peer), self.lifetime), addr);
                }
                // Full: the newcomer is closed (dropped) at once rather than queued.
                Err(_) => tracing::debug!(peer = %addr, "metrics endpoint: too many connections"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that holds a slot while it lives and fails once its lifetime is over.
pub struct Limited<T> {
    io: T,
    deadline: Pin<Box<Sleep>>,
    _slot: (OwnedSemaphorePermit, PeerSlot),
}

impl<T> Limited<T> {
    pub fn new(io: T, slot: (OwnedSemaphorePermit, PeerSlot), lifetime: Duration) -> Self {
        Self {
            io,
            deadline: Box::pin(tokio::time::sleep(lifetime)),
            _slot: slot,
        }
    }

    /// Polling the deadline registers the task to be woken when it passes, so an idle
    /// connection is closed then, not only at its next read.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection lifetime over")
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
