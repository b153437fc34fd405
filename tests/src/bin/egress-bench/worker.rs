//! The processes the bench starts inside a cgroup and a client namespace: everything they
//! do runs the cgroup's connect hooks (or the namespace's netfilter hooks).
//!
//! - `loop udp ADDR N`: one UDP socket connected N times to ADDR (each `connect()` runs the
//!   cgroup/connect hook; UDP sends nothing); prints the ns per connect.
//! - `loop tcp ADDR N`: N times socket, connect (a full handshake with the server), close
//!   with a reset (SO_LINGER 0: no TIME_WAIT left to exhaust ports); prints ns per round.
//! - `flip ADDR`: UDP connects to ADDR until one is allowed; prints `denied` after the first
//!   EPERM, then the CLOCK_MONOTONIC time (ns) of the first success.
//! - `watch STOPFILE both=A,B,... neither=C,...`: UDP connects, round robin over the
//!   addresses, until STOPFILE exists (at most 5 minutes); prints `watching` once the first
//!   round is done, and at the end one JSON line: attempts, `both` addresses refused, and
//!   `neither` addresses allowed (the wrong verdicts of a policy switch).

use std::{
    io::{self, Write as _},
    mem::{size_of, zeroed},
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn socket(addr: &SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A prepared destination: connect() on it costs the syscall and nothing else of ours.
struct Dest {
    sa: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Dest {
    fn new(addr: &SocketAddr) -> Self {
        let (sa, len) = sockaddr(addr);
        Self { sa, len }
    }

    fn connect(&self, fd: &OwnedFd) -> io::Result<()> {
        // SAFETY: valid fd and sockaddr.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&raw const self.sa).cast::<libc::sockaddr>(),
                self.len,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

fn linger_zero(fd: &OwnedFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn tcp_once(addr: &SocketAddr, dest: &Dest) -> io::Result<()> {
    let fd = socket(addr, libc::SOCK_STREAM)?;
    linger_zero(&fd)?;
    dest.connect(&fd)
}

pub fn connect_loop(proto: &str, addr: SocketAddr, n: u64) -> anyhow::Result<()> {
    let dest = Dest::new(&addr);
    let elapsed = match proto {
        "udp" => {
            let fd = socket(&addr, libc::SOCK_DGRAM)?;
            // Warm up (caches, the route) with a tenth of the count.
            for _ in 0..n / 10 {
                dest.connect(&fd)
                    .with_context(|| format!("udp connect {addr}"))?;
            }
            let start = Instant::now();
            for _ in 0..n {
                dest.connect(&fd)
                    .with_context(|| format!("udp connect {addr}"))?;
            }
            start.elapsed()
        }
        "tcp" => {
            for _ in 0..n / 10 {
                tcp_once(&addr, &dest).with_context(|| format!("tcp connect {addr}"))?;
            }
            let start = Instant::now();
            for _ in 0..n {
                tcp_once(&addr, &dest).with_context(|| format!("tcp connect {addr}"))?;
            }
            start.elapsed()
        }
        other => bail!("unknown protocol {other}"),
    };
    println!("{:.1}", elapsed.as_nanos() as f64 / n as f64);
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the same clock in every process, so the bench can subtract a time
/// it took from one this worker printed.
pub fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data.
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: a valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn flip(addr: SocketAddr) -> anyhow::Result<()> {
    let dest = Dest::new(&addr);
    let fd = socket(&addr, libc::SOCK_DGRAM)?;
    let mut told = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match dest.connect(&fd) {
            Ok(()) if told => {
                println!("{}", monotonic_ns());
                return Ok(());
            }
            Ok(()) => bail!("{addr} is allowed before the change"),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                if !told {
                    println!("denied");
                    io::stdout().flush()?;
                    told = true;
                }
            }
            Err(e) => bail!("connect {addr}: {e}"),
        }
        if Instant::now() > deadline {
            bail!("{addr} still refused after 120 s");
        }
    }
}

fn addr_list(arg: &str, key: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let list = arg
        .strip_prefix(key)
        .and_then(|s| s.strip_prefix('='))
        .with_context(|| format!("expected {key}=ADDR,..."))?;
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().with_context(|| format!("address {s}")))
        .collect()
}

pub fn watch(args: &[String]) -> anyhow::Result<()> {
    let [stop, both, neither] = args else {
        bail!("watch STOPFILE both=ADDR,... neither=ADDR,...")
    };
    let stop = std::path::Path::new(stop);
    let both = addr_list(both, "both")?;
    let neither = addr_list(neither, "neither")?;
    let v4 = socket(&"0.0.0.0:0".parse()?, libc::SOCK_DGRAM)?;
    let v6 = socket(&"[::]:0".parse()?, libc::SOCK_DGRAM)?;
    let targets: Vec<(bool, SocketAddr, Dest)> = both
        .iter()
        .map(|a| (true, *a, Dest::new(a)))
        .chain(neither.iter().map(|a| (false, *a, Dest::new(a))))
        .collect();
    anyhow::ensure!(!targets.is_empty(), "no address to watch");
    let (mut attempts, mut refused_both, mut allowed_neither) = (0u64, 0u64, 0u64);
    let mut first_wrong: Option<String> = None;
    let end = Instant::now() + Duration::from_secs(300);
    let mut rounds = 0u64;
    while !stop.exists() && Instant::now() < end {
        for (in_both, addr, dest) in &targets {
            let fd = if addr.is_ipv4() { &v4 } else { &v6 };
            attempts += 1;
            match (dest.connect(fd), in_both) {
                (Ok(()), false) => {
                    allowed_neither += 1;
                    first_wrong.get_or_insert_with(|| format!("{addr} allowed"));
                }
                (Err(e), true) if e.raw_os_error() == Some(libc::EPERM) => {
                    refused_both += 1;
                    first_wrong.get_or_insert_with(|| format!("{addr} refused"));
                }
                (Err(e), _) if e.raw_os_error() != Some(libc::EPERM) => {
                    bail!("connect {addr}: {e}")
                }
                _ => {}
            }
        }
        rounds += 1;
        if rounds == 1 {
            println!("watching");
            io::stdout().flush()?;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "attempts": attempts,
            "rounds": rounds,
            "refused_both": refused_both,
            "allowed_neither": allowed_neither,
            "first_wrong": first_wrong,
        })
    );
    Ok(())
}
