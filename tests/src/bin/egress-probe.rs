//! Opens real sockets the way applications do and reports what the kernel said, one JSON
//! line per operation: `{"op":"tcp","addr":"203.0.113.66:80","ok":false,"errno":1}`.
//!
//! Usage: `egress-probe OP ADDR [OP ADDR]...`. An IPv6 address (including `::ffff:a.b.c.d`)
//! uses an AF_INET6 socket, an IPv4 one AF_INET. Operations:
//! - `tcp`: connect (2 s timeout);
//! - `udp-connect`: connect, then send one byte;
//! - `udp-sendto`, `udp-sendmsg`: send one byte to ADDR on an unconnected socket;
//! - `udp-connected-sendto`: connect to the first address of `A,B`, then sendto B;
//! - `tfo-sendto`: TCP Fast Open, `sendto(MSG_FASTOPEN)`;
//! - `tfo-connect`: `TCP_FASTOPEN_CONNECT`, then connect and send.

use std::{
    io,
    mem::{size_of, zeroed},
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const TCP_FASTOPEN_CONNECT: libc::c_int = 30;

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
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
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
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
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

fn check(rc: isize) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn connect(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    // SAFETY: valid fd and sockaddr.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    } as isize)
}

fn sendto(fd: &OwnedFd, addr: &SocketAddr, flags: libc::c_int) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    let buf = b"x";
    // SAFETY: valid fd, buffer and sockaddr.
    check(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            flags,
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    })
}

fn send(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: valid fd and buffer.
    check(unsafe { libc::send(fd.as_raw_fd(), b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) })
}

fn sendmsg(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let (mut sa, len) = sockaddr(addr);
    let mut byte = *b"x";
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: msg points at live buffers.
    check(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) })
}

/// Connects with a timeout: EPERM from the cgroup hook comes back at once; a real
/// handshake needs the peer.
fn tcp_connect(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: valid fd and option buffer.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    connect(fd, addr)
}

fn run(op: &str, arg: &str) -> io::Result<()> {
    let parse = |s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{s}: {e}")))
    };
    match op {
        "tcp" => {
            let addr = parse(arg)?;
            tcp_connect(&socket(&addr, libc::SOCK_STREAM)?, &addr)
        }
        "udp-connect" => {
            let addr = parse(arg)?;
            let fd = socket(&addr, libc::SOCK_DGRAM)?;
            connect(&fd, &addr)?;
            send(&fd)
        }
        "udp-sendto" => {
            let addr = parse(arg)?;
            sendto(&socket(&addr, libc::SOCK_DGRAM)?, &addr, 0)
        }
        "udp-sendmsg" => {
            let addr = parse(arg)?;
            sendmsg(&socket(&addr, libc::SOCK_DGRAM)?, &addr)
        }
        "udp-connected-sendto" => {
            let (first, second) = arg
                .split_once(',')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "want A,B"))?;
            let (first, second) = (parse(first)?, parse(second)?);
            let fd = socket(&first, libc::SOCK_DGRAM)?;
            connect(&fd, &first)?;
            sendto(&fd, &second, 0)
        }
        "tfo-sendto" => {
            let addr = parse(arg)?;
            sendto(
                &socket(&addr, libc::SOCK_STREAM)?,
                &addr,
                libc::MSG_FASTOPEN,
            )
        }
        "tfo-connect" => {
            let addr = parse(arg)?;
            let fd = socket(&addr, libc::SOCK_STREAM)?;
            let one: libc::c_int = 1;
            // SAFETY: valid fd and option buffer.
            check(unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    TCP_FASTOPEN_CONNECT,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            } as isize)?;
            tcp_connect(&fd, &addr)?;
            send(&fd)
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown op {other}"),
        )),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || !args.len().is_multiple_of(2) {
        eprintln!("usage: egress-probe OP ADDR [OP ADDR]...");
        std::process::exit(2);
    }
    for pair in args.chunks(2) {
        let (op, addr) = (&pair[0], &pair[1]);
        let line = match run(op, addr) {
            Ok(()) => serde_json::json!({"op": op, "addr": addr, "ok": true, "errno": 0}),
            Err(e) => {
                serde_json::json!({"op": op, "addr": addr, "ok": false, "errno": e.raw_os_error().unwrap_or(-1), "error": e.to_string()})
            }
        };
        println!("{line}");
    }
}
