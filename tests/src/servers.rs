//! The "internet" hosts' servers, listening in the world namespace on every AnyIP address:
//! HTTPS (a real TLS handshake), plain HTTP, TCP echo and UDP echo. Each records what reached
//! it, so that a test can tell "refused in the kernel" from "refused by the peer".

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
    runtime::Runtime,
};

use crate::netns::Netns;

/// A connection or datagram that reached a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub proto: &'static str,
    /// The address and port the client reached.
    pub local: SocketAddr,
}

#[derive(Clone, Default)]
pub struct Hits(Arc<Mutex<Vec<Hit>>>);

impl Hits {
    fn push(&self, proto: &'static str, local: SocketAddr) {
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        self.0.lock().unwrap().push(Hit { proto, local });
    }

    pub fn all(&self) -> Vec<Hit> {
        self.0.lock().unwrap().clone()
    }

    /// Hits on `ip` (any port).
    pub fn to_ip(&self, ip: IpAddr) -> Vec<Hit> {
        self.all()
            .into_iter()
            .filter(|h| h.local.ip() == ip)
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// What a TCP listener does with a connection.
#[derive(Clone)]
pub enum Service {
    /// HTTP/1.x: answers any request with 200 and a body naming the address reached.
    Http,
    /// The same behind TLS.
    Https(Arc<rustls::ServerConfig>),
    /// Echoes bytes.
    Echo,
}

fn bind_tcp(netns: &Netns, port: u16) -> anyhow::Result<std::net::TcpListener> {
    let listener = netns.run(move || std::net::TcpListener::bind(("::", port)))??;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub fn tcp(
    rt: &Runtime,
    netns: &Netns,
    port: u16,
    service: Service,
    hits: Hits,
) -> anyhow::Result<()> {
    let std_listener = bind_tcp(netns, port)?;
    rt.spawn(async move {
        let listener = TcpListener::from_std(std_listener).expect("register listener");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let local = stream.local_addr().expect("local address");
            hits.push("tcp", local);
            let service = service.clone();
            tokio::spawn(async move {
                let _ = serve(stream, local, service).await;
            });
        }
    });
    Ok(())
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    local: SocketAddr,
    service: Service,
) -> std::io::Result<()> {
    match service {
        Service::Echo => {
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
        Service::Http => http(&mut stream, local).await,
        Service::Https(config) => {
            let mut tls = tokio_rustls::TlsAcceptor::from(config)
                .accept(stream)
                .await?;
            http(&mut tls, local).await
        }
    }
}

async fn http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    local: SocketAddr,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body = format!("hello from {}\n", local.ip().to_canonical());
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// A UDP echo server on every address. Its hits carry the port only (the unspecified
/// address): which address a datagram went to is the packet capture's business.
pub fn udp(rt: &Runtime, netns: &Netns, port: u16, hits: Hits) -> anyhow::Result<()> {
    let std_socket = netns.run(move || std::net::UdpSocket::bind(("::", port)))??;
    std_socket.set_nonblocking(true)?;
    rt.spawn(async move {
        let socket = UdpSocket::from_std(std_socket).expect("register socket");
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            hits.push("udp", SocketAddr::new(IpAddr::from([0u8; 16]), port));
            let _ = socket.send_to(&buf[..n], peer).await;
        }
    });
    Ok(())
}
