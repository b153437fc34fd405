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
//!
//! Ways to make a packet leave for another address than the one the syscall names (what the
//! wire check must stop); `A,X` means "name A, send to X":
//! - `udp-rthdr`: an IPv6 segment routing header listing X before the final A (setsockopt),
//!   then sendto A; `udp-rthdr-cmsg`: a type 2 routing header naming X, per message;
//! - `tcp-rthdr`: the same header on a TCP socket, then connect to A (1 s timeout);
//! - `udp-lsrr`: an IPv4 loose source route through X (IP_OPTIONS), then sendto A;
//! - `udp-bind-dev`: `ADDR,IFNAME`: SO_BINDTODEVICE, then sendto ADDR (a loopback address
//!   pushed out of a real device);
//! - `icmp-ping`: an ICMP echo request from an unprivileged "ping" socket, sendto ADDR;
//! - `udp-connected-lsrr` `A,X`: connect to A, then a loose source route through A and X;
//! - `udplite-connect`: a UDP-Lite socket (which no syscall hook judges), connect and send;
//! - `raw-udp-connect`: a raw IPPROTO_UDP socket, connect (no hook either), send a UDP
//!   datagram built by hand;
//! - `udp-dstopts`: an IPv6 destination options header (PadN) on an unconnected socket,
//!   sendto ADDR: ordinary traffic that must still pass.
//! - `raw-socket`: only create a raw IPPROTO_UDP socket of ADDR's family;
//! - `packet-socket`: only create an AF_PACKET socket (ADDR is ignored);
//! - `xdp-socket`: only create an AF_XDP socket (ADDR is ignored);
//! - `uring-connect`: a TCP connect submitted through io_uring (IORING_OP_CONNECT);
//! - `uring-sendmsg`: a UDP sendmsg with ADDR through io_uring (IORING_OP_SENDMSG).
//!
//! - `tcp-moved`: `ADDR,PROCS`: create a TCP socket, move this process to the cgroup whose
//!   `cgroup.procs` is PROCS, then connect (a socket keeps the cgroup it was made in).
//!
//! File operations (ADDR is a path), for the least-privilege test run as another user:
//! `write-file` creates or truncates it and writes `{}`, `remove-file` unlinks it,
//! `read-file` reads it.
//!
//! Bursts, for counting: `tcp-each ADDR:FIRST-LAST` connects once to every port of the
//! range, `tcp-repeat ADDR,N` N times to one address; both succeed when every attempt was
//! refused with EPERM.
//!
//! And one that receives: `tcp-serve` listens on ADDR, accepts one connection (5 s), echoes
//! one byte back.

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
    tcp_connect_within(fd, addr, 2)
}

fn tcp_connect_within(fd: &OwnedFd, addr: &SocketAddr, seconds: i64) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: seconds,
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
    match connect(fd, addr) {
        // A signal (or io_uring task work of this process, which the kernel reports as one)
        // interrupted the wait: the handshake goes on; wait for it as applications do.
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => finish_connect(fd, seconds),
        other => other,
    }
}

fn finish_connect(fd: &OwnedFd, seconds: i64) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, (seconds * 1000) as libc::c_int) };
    check(n as isize)?;
    if n == 0 {
        return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
    }
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and option buffer.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    } as isize)?;
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(())
}

const IPV6_RTHDR: libc::c_int = 57;

fn parse(s: &str) -> io::Result<SocketAddr> {
    s.parse::<SocketAddr>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{s}: {e}")))
}

fn pair(arg: &str) -> io::Result<(SocketAddr, SocketAddr)> {
    let (a, b) = arg
        .split_once(',')
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "want A,B"))?;
    Ok((parse(a)?, parse(b)?))
}

/// A segment routing header (type 4) that sends the packet to `via` first, then to `last`.
fn segment_routing_header(last: &SocketAddr, via: &SocketAddr) -> io::Result<Vec<u8>> {
    let (SocketAddr::V6(last), SocketAddr::V6(via)) = (last, via) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv6 only"));
    };
    // next header (set by the kernel), length in 8-byte units beyond the first (2 segments
    // = 4), type 4, segments left 1, last entry 1, flags, tag; then the segments, last first.
    let mut h = vec![0, 4, 4, 1, 1, 0, 0, 0];
    h.extend_from_slice(&last.ip().octets());
    h.extend_from_slice(&via.ip().octets());
    Ok(h)
}

fn setsockopt_bytes(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: valid fd and option buffer of the length passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    } as isize)
}

/// sendmsg with one control message (`level`, `ty`, `data`).
fn sendmsg_with(
    fd: &OwnedFd,
    addr: &SocketAddr,
    level: libc::c_int,
    ty: libc::c_int,
    data: &[u8],
) -> io::Result<()> {
    let (mut sa, len) = sockaddr(addr);
    let mut byte = *b"x";
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(data.len() as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds one header of `space` bytes, aligned for cmsghdr.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = ty;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
    }
    // SAFETY: msg points at live buffers.
    check(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) })
}

fn run(op: &str, arg: &str) -> io::Result<()> {
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
        "udp-rthdr" | "udp-rthdr-cmsg" | "tcp-rthdr" => {
            let (a, x) = pair(arg)?;
            let header = segment_routing_header(&a, &x)?;
            let ty = if op == "tcp-rthdr" {
                libc::SOCK_STREAM
            } else {
                libc::SOCK_DGRAM
            };
            let fd = socket(&a, ty)?;
            if op == "udp-rthdr-cmsg" {
                // Per message, Linux takes only the Mobile IPv6 type 2 header (one address),
                // and only when built with CONFIG_IPV6_MIP6 (EINVAL otherwise).
                let SocketAddr::V6(via) = x else {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv6 only"));
                };
                let mut type2 = vec![0, 2, 2, 1, 0, 0, 0, 0];
                type2.extend_from_slice(&via.ip().octets());
                return sendmsg_with(&fd, &a, libc::IPPROTO_IPV6, IPV6_RTHDR, &type2);
            }
            setsockopt_bytes(&fd, libc::IPPROTO_IPV6, IPV6_RTHDR, &header)?;
            if op == "tcp-rthdr" {
                tcp_connect_within(&fd, &a, 1)
            } else {
                sendto(&fd, &a, 0)
            }
        }
        "udp-lsrr" => {
            let (a, x) = pair(arg)?;
            let SocketAddr::V4(via) = x else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
            };
            // NOP, then LSRR: type 131, length 7, pointer 4, one hop.
            let mut option = vec![1, 131, 7, 4];
            option.extend_from_slice(&via.ip().octets());
            let fd = socket(&a, libc::SOCK_DGRAM)?;
            setsockopt_bytes(&fd, libc::IPPROTO_IP, libc::IP_OPTIONS, &option)?;
            sendto(&fd, &a, 0)
        }
        "udp-connected-lsrr" => {
            let (a, x) = pair(arg)?;
            let (SocketAddr::V4(first), SocketAddr::V4(via)) = (a, x) else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
            };
            // NOP, LSRR: type 131, length 11, pointer 4, two hops (A, then X).
            let mut option = vec![1, 131, 11, 4];
            option.extend_from_slice(&first.ip().octets());
            option.extend_from_slice(&via.ip().octets());
            let fd = socket(&a, libc::SOCK_DGRAM)?;
            connect(&fd, &a)?;
            setsockopt_bytes(&fd, libc::IPPROTO_IP, libc::IP_OPTIONS, &option)?;
            send(&fd)
        }
        "udplite-connect" | "raw-udp-connect" => {
            let addr = parse(arg)?;
            let family = if addr.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let (ty, proto) = if op == "udplite-connect" {
                (libc::SOCK_DGRAM, 136)
            } else {
                (libc::SOCK_RAW, libc::IPPROTO_UDP)
            };
            // SAFETY: plain syscall.
            let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
            check(fd as isize)?;
            // SAFETY: a new fd owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if op == "raw-udp-connect" && !addr.is_ipv4() {
                // The kernel fills in the checksum at offset 6.
                let offset: libc::c_int = 6;
                setsockopt_bytes(
                    &fd,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_CHECKSUM,
                    &offset.to_ne_bytes(),
                )?;
            }
            connect(&fd, &addr)?;
            if op == "raw-udp-connect" {
                let mut datagram = vec![0x30, 0x39];
                datagram.extend_from_slice(&addr.port().to_be_bytes());
                datagram.extend_from_slice(&9u16.to_be_bytes());
                datagram.extend_from_slice(&[0, 0, b'x']);
                // SAFETY: valid fd and buffer.
                return check(unsafe {
                    libc::send(fd.as_raw_fd(), datagram.as_ptr().cast(), datagram.len(), 0)
                });
            }
            send(&fd)
        }
        "udp-dstopts" => {
            let addr = parse(arg)?;
            let fd = socket(&addr, libc::SOCK_DGRAM)?;
            // next header, length 0 (8 bytes), PadN of 4 bytes.
            let header = [0u8, 0, 1, 4, 0, 0, 0, 0];
            setsockopt_bytes(&fd, libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS, &header)?;
            sendto(&fd, &addr, 0)
        }
        "udp-bind-dev" => {
            let (addr, ifname) = arg
                .split_once(',')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "want ADDR,IFNAME"))?;
            let addr = parse(addr)?;
            let fd = socket(&addr, libc::SOCK_DGRAM)?;
            setsockopt_bytes(
                &fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                ifname.as_bytes(),
            )?;
            sendto(&fd, &addr, 0)
        }
        "tcp-moved" => {
            let (addr, procs) = arg
                .split_once(',')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "want ADDR,PROCS"))?;
            let addr = parse(addr)?;
            let fd = socket(&addr, libc::SOCK_STREAM)?;
            std::fs::write(procs, std::process::id().to_string())?;
            connect(&fd, &addr)
        }
        "write-file" => std::fs::write(arg, b"{}"),
        "remove-file" => std::fs::remove_file(arg),
        "read-file" => std::fs::read(arg).map(drop),
        "raw-socket" => {
            let addr = parse(arg)?;
            let family = if addr.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            // SAFETY: plain syscall; the fd is closed right away.
            let fd = unsafe {
                libc::socket(
                    family,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_UDP,
                )
            };
            check(fd as isize)?;
            // SAFETY: the fd just made.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(())
        }
        "packet-socket" => {
            let eth_p_all = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
            // SAFETY: plain syscall; the fd is closed right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    eth_p_all,
                )
            };
            check(fd as isize)?;
            // SAFETY: the fd just made.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(())
        }
        "xdp-socket" => {
            const AF_XDP: libc::c_int = 44;
            // SAFETY: plain syscall; the fd is closed right away.
            let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            check(fd as isize)?;
            // SAFETY: the fd just made.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(())
        }
        "uring-connect" | "uring-sendmsg" => {
            let addr = parse(arg)?;
            let ty = if op == "uring-connect" {
                libc::SOCK_STREAM
            } else {
                libc::SOCK_DGRAM
            };
            let fd = socket(&addr, ty)?;
            uring(&fd, &addr, op == "uring-connect")
        }
        "icmp-ping" => {
            let addr = parse(arg)?;
            let (family, proto, echo) = if addr.is_ipv4() {
                (libc::AF_INET, libc::IPPROTO_ICMP, 8u8)
            } else {
                (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8)
            };
            // SAFETY: plain syscall.
            let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
            check(fd as isize)?;
            // SAFETY: a new fd owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let (sa, len) = sockaddr(&SocketAddr::new(addr.ip(), 0));
            let request = [echo, 0, 0, 0, 0, 1, 0, 1, b'x'];
            // SAFETY: valid fd, buffer and sockaddr.
            check(unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    len,
                )
            })
        }
        "tcp-each" | "tcp-repeat" => {
            let targets: Vec<SocketAddr> = if op == "tcp-each" {
                let (host, range) = arg
                    .rsplit_once(':')
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "want ADDR:A-B"))?;
                let (a, b) = range
                    .split_once('-')
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "want A-B"))?;
                let bad = |_| io::Error::new(io::ErrorKind::InvalidInput, "bad port");
                let (a, b): (u16, u16) = (a.parse().map_err(bad)?, b.parse().map_err(bad)?);
                (a..=b)
                    .map(|p| parse(&format!("{host}:{p}")))
                    .collect::<io::Result<_>>()?
            } else {
                let (addr, n) = arg
                    .split_once(',')
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "want ADDR,N"))?;
                let n: usize = n
                    .parse()
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad count"))?;
                vec![parse(addr)?; n]
            };
            for t in &targets {
                match tcp_connect(&socket(t, libc::SOCK_STREAM)?, t) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                    Ok(()) => return Err(io::Error::other(format!("{t} was not refused"))),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        "tcp-serve" => {
            let addr = parse(arg)?;
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let (mut conn, _) = loop {
                match listener.accept() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if std::time::Instant::now() > deadline {
                            return Err(io::Error::from(io::ErrorKind::TimedOut));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            };
            conn.set_nonblocking(false)?;
            conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            let mut byte = [0u8; 1];
            io::Read::read_exact(&mut conn, &mut byte)?;
            io::Write::write_all(&mut conn, &byte)
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

/// One connect or sendmsg through an io_uring ring; the completion's result is the syscall's.
fn uring(fd: &OwnedFd, addr: &SocketAddr, connect: bool) -> io::Result<()> {
    use io_uring::{IoUring, opcode, types};
    let mut ring = IoUring::new(4)?;
    let (sa, len) = sockaddr(addr);
    let payload = [b'x'];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: zero is a valid msghdr; the fields set point at live locals.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &sa as *const _ as *mut libc::c_void;
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let target = types::Fd(fd.as_raw_fd());
    let entry = if connect {
        opcode::Connect::new(target, &sa as *const _ as *const libc::sockaddr, len).build()
    } else {
        opcode::SendMsg::new(target, &msg).build()
    };
    // SAFETY: the sockaddr, msghdr and buffer outlive the submission (waited for below).
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(())
}
