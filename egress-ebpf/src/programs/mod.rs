//! The programs and maps (BPF target only; see main.rs).
//!
//! - [`maps`]: every map, shared by all programs;
//! - [`verdict`]: one judgement for every hook — a destination, its entry, its port set;
//! - [`sock_addr`]: the connect/sendmsg hooks (the syscall fails with EPERM);
//! - [`wire`]: the cgroup_skb/egress check of the packets that actually leave;
//! - [`sock_create`]: raw and ICMP sockets refused at creation (no address hook sees them);
//! - [`report`]: counters, and events for denials.

mod maps;
mod report;
mod sock_addr;
mod sock_create;
mod verdict;
mod wire;

use core::ptr::read_volatile;

/// Reads one `u32` field of a context with a full-width load. The verifier rejects narrow
/// loads of some context fields (`bpf_sock_addr.protocol`, `type`), and the compiler may
/// otherwise split a load it only needs part of.
#[inline(always)]
fn field(ptr: *const u32) -> u32 {
    // SAFETY: callers pass pointers into the context the kernel handed the program.
    unsafe { read_volatile(ptr) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
