//! Kernel side of the egress enforcer: cgroup v2 sock_addr programs.
//!
//! Which hook sees which traffic (all run in the caller's context, before any packet leaves):
//! - `cgroup/connect4`, `cgroup/connect6`: TCP `connect()` (including TCP Fast Open through
//!   `sendto(MSG_FASTOPEN)` and `TCP_FASTOPEN_CONNECT`, which go through the same pre-connect
//!   path) and UDP `connect()`. Linux ≥ 4.17.
//! - `cgroup/sendmsg4`, `cgroup/sendmsg6`: UDP `sendto()`/`sendmsg()` that carry a destination
//!   address, whether or not the socket is connected. Linux ≥ 4.18.
//!   See `udp_sendmsg()` and `udpv6_sendmsg()` in net/ipv4/udp.c and net/ipv6/udp.c: a v4-mapped
//!   destination on an AF_INET6 UDP socket is handed to `udp_sendmsg()` and therefore reaches
//!   `sendmsg4` with the plain IPv4 address.
//!
//! An AF_INET6 `connect()` to `::ffff:a.b.c.d` reaches `connect6` with the mapped address; it is
//! judged as the IPv4 address it carries (RFC 4291 §2.5.5.2), so IPv4 rules cannot be bypassed
//! through a dual-stack socket.
//!
//! Return value: 1 lets the syscall proceed, 0 makes it fail with EPERM.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

/// Host builds (e.g. `cargo build --workspace`) get an empty binary: the programs exist only
/// for the BPF target, which the agent's build.rs builds through aya-build.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
