//! A packet capture on the world side of the pod's veth: proof that a refused connection
//! never put a packet on the wire (an AF_PACKET socket, no tcpdump needed).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::netns::Netns;

/// One captured IP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub dst: IpAddr,
    /// 6 TCP, 17 UDP, …
    pub proto: u8,
    pub dst_port: Option<u16>,
}

pub struct Sniffer {
    packets: Arc<Mutex<Vec<Packet>>>,
    stop: Arc<AtomicBool>,
}

impl Sniffer {
    /// Captures every IPv4/IPv6 packet that arrives on `ifname` in `netns`.
    pub fn start(netns: &Netns, ifname: &str) -> anyhow::Result<Self> {
        let ifname = std::ffi::CString::new(ifname)?;
        let fd = netns.run(move || -> std::io::Result<OwnedFd> {
            let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
            // SAFETY: plain syscalls on a fresh fd.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(fd);
                let index = libc::if_nametoindex(ifname.as_ptr());
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto as u16;
                sll.sll_ifindex = index as i32;
                if libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                Ok(fd)
            }
        })??;
        let packets = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (packets.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: valid fd and buffer.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue;
                }
                if let Some(pkt) = parse(&buf[..n as usize]) {
                    p.lock().unwrap().push(pkt);
                }
            }
        });
        Ok(Self { packets, stop })
    }

    pub fn packets(&self) -> Vec<Packet> {
        self.packets.lock().unwrap().clone()
    }

    /// Packets sent to `dst`.
    pub fn to(&self, dst: IpAddr) -> Vec<Packet> {
        self.packets()
            .into_iter()
            .filter(|p| p.dst == dst)
            .collect()
    }

    /// Packets sent to `dst`, waiting up to `timeout` for the first one: the capture reads
    /// asynchronously, so a positive check polls. Checking an allowed destination first also
    /// proves the capture has caught up before a test asserts that nothing reached a denied one.
    pub fn wait_to(&self, dst: IpAddr, timeout: std::time::Duration) -> Vec<Packet> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen = self.to(dst);
            if !seen.is_empty() || std::time::Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn clear(&self) {
        self.packets.lock().unwrap().clear();
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Ethernet → IPv4/IPv6 → TCP/UDP destination port.
fn parse(frame: &[u8]) -> Option<Packet> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (dst, proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(dst), *ip.get(9)?, ip.get(ihl..)?)
        }
        0x86dd => {
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(dst)), *ip.get(6)?, ip.get(40..)?)
        }
        _ => return None,
    };
    let dst_port = matches!(proto, 6 | 17)
        .then(|| Some(u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?])))
        .flatten();
    Some(Packet {
        dst,
        proto,
        dst_port,
    })
}
