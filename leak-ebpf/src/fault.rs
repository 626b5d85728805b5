//! The user address a page is allocated for: `exceptions:page_fault_user` fires at every user page fault before
//! the kernel allocates anything for it, and leaves the faulting address in a per-CPU slot for the page
//! allocations of that fault. Userspace tells from the address what kind of memory the page lies in (a malloc
//! heap, an mmap'd block, a thread stack).
//!
//! The program runs at every user page fault of the machine, so it does the least it can: no memcg walk, one
//! read of the faulting instruction's address, one store into the slot.
use aya_ebpf::{macros::map, macros::raw_tracepoint, maps::PerCpuArray, programs::RawTracePointContext};
use leak_common::arg;

use crate::{bpf_get_current_pid_tgid, cfg, floor, read_at, tp_arg, CONFIG};

/// The last user page fault taken on a CPU: by which thread, at which instruction, at which address.
#[repr(C)]
#[derive(Clone, Copy)]
struct FaultSeen {
    tid: u32,
    _pad: u32,
    ip: u64,
    addr: u64,
}

#[map]
static LAST_FAULT: PerCpuArray<FaultSeen> = PerCpuArray::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn lt_page_fault(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let regs = tp_arg::<{ arg::FAULT_REGS }>(&ctx) as *const u8;
    let Some(ip) = (unsafe { read_at::<u64>(regs, cfg(&CONFIG.regs_ip)) }) else { return 0 };
    if let Some(slot) = LAST_FAULT.get_ptr_mut(0) {
        let tid = bpf_get_current_pid_tgid() as u32;
        unsafe { *slot = FaultSeen { tid, _pad: 0, ip, addr: tp_arg::<{ arg::FAULT_ADDRESS }>(&ctx) } };
    }
    0
}

/// The faulting address when thread `tid`, whose user registers say it entered the kernel at `ip`, allocates a
/// page for the user fault it is handling; 0 otherwise. The slot is left in place: every page of one fault (a page
/// table page, then the page itself) gets the address, and the thread's next entry into the kernel (a syscall, an
/// interrupt) comes from another instruction than the fault's, so its allocations never take a slot left by a
/// fault whose page was not sampled. A thread moved to another CPU mid-fault finds another thread's slot (or an
/// older fault's instruction) and gets 0.
#[inline(always)]
pub fn fault_address(tid: u32, ip: u64) -> u64 {
    match LAST_FAULT.get(0) {
        Some(f) if f.tid == tid && f.ip == ip => f.addr,
        _ => 0,
    }
}
