//! Counters, and events for denials.
//!
//! Every verdict is counted per CPU by reason. A denial (or, in audit mode, a would-be
//! denial) is also counted per flow in `EGRESS_FLOWS`, and the first one of a flow — then at
//! most one a second per CPU — is sent as an event through the ring buffer. A full ring
//! buffer never blocks the hook: the event is counted as lost, and the flow's count stays
//! exact in the map, where the agent reads it.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_ktime_get_ns,
            bpf_skb_cgroup_id,
        },
    },
};
use egress_common::{Counter, EVENT_INTERVAL_NS, Event, FlowKey, FlowStat, Hook, Verdict};

use super::{
    maps::{EGRESS_COUNTERS, EGRESS_EVENTS, EGRESS_FLOWS},
    verdict::Dest,
};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = EGRESS_COUNTERS.get_ptr_mut(counter.0) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        unsafe { *slot += 1 };
    }
}

/// Who sent what was denied.
pub enum Origin {
    /// A syscall hook: the calling task.
    Task,
    /// The wire check: a packet, whose socket's cgroup is known but not its task.
    Packet(*const __sk_buff),
}

#[inline(always)]
pub fn denial(hook: Hook, d: &Dest, reason: Counter, verdict: Verdict, origin: Origin) {
    // SAFETY: helpers without preconditions (the skb pointer is the program's context).
    let (cgroup_id, now, cpu) = unsafe {
        let cgroup = match origin {
            Origin::Task => bpf_get_current_cgroup_id(),
            Origin::Packet(skb) => bpf_skb_cgroup_id(skb.cast_mut()),
        };
        (cgroup, bpf_ktime_get_ns(), bpf_get_smp_processor_id())
    };
    let key = FlowKey {
        cgroup_id,
        addr: d.bytes(),
        port: d.port,
        proto: d.proto,
        family: d.family,
        reason: reason.0 as u8,
        hook,
        verdict,
        reserved: 0,
    };
    if EGRESS_FLOWS.get_ptr_mut(key).is_none() {
        let _ = EGRESS_FLOWS.insert(key, FlowStat::default(), 0);
    }
    let Some(stat) = EGRESS_FLOWS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: this CPU's value of the flow; programs do not migrate while running.
    let stat = unsafe { &mut *stat };
    stat.total += 1;
    if stat.first_ns == 0 {
        stat.first_ns = now;
    }
    stat.last_ns = now;
    if stat.emitted_ns != 0 && now.wrapping_sub(stat.emitted_ns) < EVENT_INTERVAL_NS {
        return;
    }
    let Some(mut slot) = EGRESS_EVENTS.reserve::<Event>(0) else {
        count(Counter::EVENTS_LOST);
        return;
    };
    let (pid, comm) = match origin {
        Origin::Task => (
            (bpf_get_current_pid_tgid() >> 32) as u32,
            bpf_get_current_comm().unwrap_or([0; 16]),
        ),
        Origin::Packet(_) => (0, [0; 16]),
    };
    slot.write(Event {
        key,
        ts_ns: now,
        total: stat.total,
        pid,
        cpu,
        comm,
    });
    slot.submit(0);
    stat.emitted_ns = now;
}
