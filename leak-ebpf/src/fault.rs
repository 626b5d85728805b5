//! The user address a page is allocated for: `exceptions:page_fault_user` fires at every user page fault before
//! the kernel allocates anything for it, and leaves the faulting address in a per-CPU slot for the page
//! allocations of that fault. Userspace tells from the address what kind of memory the page lies in (a malloc
//! heap, an mmap'd block, a thread stack).
//!
//! The program runs at every user page fault of the machine, so it does the least it can: no memcg walk, no
//! kernel memory read (its arguments are all it needs), one store into the slot.
use aya_ebpf::{macros::map, macros::raw_tracepoint, maps::PerCpuArray, programs::RawTracePointContext};
use leak_common::arg;

use crate::{bpf_get_current_pid_tgid, floor, tp_arg};

/// The last user page fault taken on a CPU: by which thread, with which error code, at which address.
#[repr(C)]
#[derive(Clone, Copy)]
struct FaultSeen {
    tid: u32,
    _pad: u32,
    error_code: u64,
    addr: u64,
}

#[map]
static LAST_FAULT: PerCpuArray<FaultSeen> = PerCpuArray::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn lt_page_fault(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    if let Some(slot) = LAST_FAULT.get_ptr_mut(0) {
        let fault = FaultSeen {
            tid: bpf_get_current_pid_tgid() as u32,
            _pad: 0,
            error_code: tp_arg::<{ arg::FAULT_ERROR_CODE }>(&ctx),
            addr: tp_arg::<{ arg::FAULT_ADDRESS }>(&ctx),
        };
        unsafe { *slot = fault };
    }
    0
}

/// The faulting address when thread `tid` allocates a page for the user fault it is handling, 0 otherwise: the
/// slot is this thread's, and the registers saved at its entry into the kernel say a fault (`orig_ax`: -1 for an
/// exception, which the entry code writes in place of the error code, or the error code itself under FRED). A
/// later system call of the thread carries its number there, so its allocations never take a slot left by a fault
/// whose page was not sampled; a later fault overwrites the slot. The slot is left in place, so that every page of
/// one fault (a page table page, then the page) gets the address. Not told apart: an interrupt's allocation on
/// top of the thread in user mode (counted as the thread's anyway), and a thread moved to another CPU in the
/// middle of a fault, which may find its own older fault there.
#[inline(always)]
pub fn fault_address(tid: u32, orig_ax: u64) -> u64 {
    match LAST_FAULT.get(0) {
        Some(f) if f.tid == tid && (orig_ax == u64::MAX || orig_ax == f.error_code) => f.addr,
        _ => 0,
    }
}
