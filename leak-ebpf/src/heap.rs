//! `--heap`: uprobes on the allocator's entry points, so that a site is whoever holds the malloc'd bytes, not
//! whoever first touched the pages under them (allocators hand freed memory to the next caller).
//!
//! Userspace attaches these programs per process (the probes of one process never fire in another) and enters
//! each traced process in `HEAP_PROCS`. An allocation is sampled at the function's entry by its size, with the
//! same coin as the kernel side's; only a kept one leaves a record of the call in flight (`HEAP_CALLS`, by
//! thread), which the return probe finds to learn the pointer. Its user stack is copied at the return, where the
//! caller is the leaf and the allocator's frames are gone. Frees end at the counting filter unless a kept
//! allocation may live at that address.
use aya_ebpf::{
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{HashMap, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use leak_common::{arg, counter, heap_fn, kind, HeapCall, HeapKey, LiveAlloc, SiteKey, HEAP_NOT_KEPT};

use crate::{
    bpf_get_current_pid_tgid, cfg, count, floor, read_at, record_alloc_in, record_free_in, sample_weight,
    target_task, tp_arg, user_site, UserRegs, EXIT_CONFIG,
};

/// The traced processes (tgid) and their probe hits, which userspace reads to tell what the probes cost each one.
#[map]
static HEAP_PROCS: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Allocator calls in flight whose allocation was kept, or that fence the calls they make (see `heap_fn`).
#[map]
static HEAP_CALLS: HashMap<u32, HeapCall> = HashMap::with_max_entries(16384, 0);

/// Outstanding kept heap allocations. Sized by userspace at load.
#[map]
static HEAP_LIVE: HashMap<HeapKey, LiveAlloc> = HashMap::with_max_entries(65536, 0);

const ENOENT: i32 = 2;

/// Processes of the target that were just made (fork) or that replaced their program (exec), by pid: userspace
/// probes them at once rather than at its next interval, so a short life (a crash loop's) is traced whole.
#[map]
static SPAWNS: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);

/// sched_process_fork (struct task_struct *parent, struct task_struct *child), in the parent: a new process, not
/// a thread, of a target task.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn lt_heap_fork(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let child = tp_arg::<{ arg::FORK_CHILD }>(&ctx) as *const u8;
    let Some(tgid) = (unsafe { read_at::<u32>(child, cfg(&EXIT_CONFIG.task_tgid)) }) else { return 0 };
    if tgid != (bpf_get_current_pid_tgid() >> 32) as u32 && target_task() {
        let _ = SPAWNS.output::<u32>(&tgid, 0);
    }
    0
}

/// sched_process_exec, in the process that now runs another program.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn lt_heap_exec(_ctx: RawTracePointContext) -> i32 {
    if !floor() && target_task() {
        let _ = SPAWNS.output::<u32>(&((bpf_get_current_pid_tgid() >> 32) as u32), 0);
    }
    0
}

/// Counts `n` probe hits of the current process; `None` when it is not traced.
#[inline(always)]
fn hit(tgid: u32, n: u64) -> Option<()> {
    let hits = HEAP_PROCS.get_ptr_mut(&tgid)?;
    // SAFETY: the pointer is into the map's value; threads of one process hit it from several CPUs at once.
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(hits, n) };
    Some(())
}

/// The counting filter's key for a heap block: the address with the process mixed into bits no user address
/// uses, so that blocks of two processes at one address rarely share a slot.
#[inline(always)]
fn filter_key(key: &HeapKey) -> u64 {
    key.ptr ^ ((key.tgid as u64) << 47)
}

/// An allocator function's entry: `bytes` is what the caller asked for.
#[inline(always)]
fn enter(ctx: &ProbeContext, func: u32, bytes: u64, arg: u64) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Two hits per call: the entry and the return probe.
    hit((pid_tgid >> 32) as u32, 2)?;
    let tid = pid_tgid as u32;
    let sp = unsafe { (*ctx.regs).rsp };
    let leaf = func <= heap_fn::CALLOC;
    // malloc(0) still hands out a block: sampled as one byte, not kept every time.
    let shift = sample_weight(bytes.max(1));
    if leaf && shift.is_none() {
        return None; // most calls end here
    }
    // A call made inside a call in flight on this thread (realloc's malloc) is the outer call's: its stack would
    // unwind through the outer call's return address, which the kernel replaced to catch the outer return. A
    // record above this stack pointer is stale (its return never came) and is replaced.
    if let Some(outer) = unsafe { HEAP_CALLS.get(&tid) } {
        if sp < outer.sp {
            return None;
        }
    }
    let call = HeapCall { sp, bytes, arg, shift: shift.unwrap_or(HEAP_NOT_KEPT), func };
    if HEAP_CALLS.insert(&tid, &call, 0).is_err() {
        count(counter::HEAP_CALLS_FULL, 1);
    }
    Some(())
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// `n * size` as the allocator sees it. Written without an overflow check, which LLVM would turn into a 128-bit
/// multiplication the BPF target lacks: two factors below 2^32 multiply exactly, and a larger product than that
/// is saturated (such a call fails, unless one factor is 1).
#[inline(always)]
fn array_bytes(n: u64, size: u64) -> u64 {
    if (n | size) >> 32 == 0 || n <= 1 || size <= 1 {
        n * size
    } else {
        u64::MAX
    }
}

#[uprobe]
pub fn lt_heap_malloc(ctx: ProbeContext) -> u32 {
    if !floor() {
        let _ = enter(&ctx, heap_fn::MALLOC, arg(&ctx, 0), 0);
    }
    0
}

#[uprobe]
pub fn lt_heap_calloc(ctx: ProbeContext) -> u32 {
    if !floor() {
        let _ = enter(&ctx, heap_fn::CALLOC, array_bytes(arg(&ctx, 0), arg(&ctx, 1)), 0);
    }
    0
}

#[uprobe]
pub fn lt_heap_realloc(ctx: ProbeContext) -> u32 {
    if !floor() {
        let _ = enter(&ctx, heap_fn::REALLOC, arg(&ctx, 1), arg(&ctx, 0));
    }
    0
}

#[uprobe]
pub fn lt_heap_reallocarray(ctx: ProbeContext) -> u32 {
    if !floor() {
        let _ = enter(&ctx, heap_fn::REALLOCARRAY, array_bytes(arg(&ctx, 1), arg(&ctx, 2)), arg(&ctx, 0));
    }
    0
}

#[uprobe]
pub fn lt_heap_memalign(ctx: ProbeContext) -> u32 {
    if !floor() {
        let _ = enter(&ctx, heap_fn::MEMALIGN, arg(&ctx, 1), 0);
    }
    0
}

#[uprobe]
pub fn lt_heap_posix_memalign(ctx: ProbeContext) -> u32 {
    if !floor() {
        let _ = enter(&ctx, heap_fn::POSIX_MEMALIGN, arg(&ctx, 2), arg(&ctx, 0));
    }
    0
}

#[uprobe]
pub fn lt_heap_sized(ctx: ProbeContext) -> u32 {
    if !floor() {
        let _ = enter(&ctx, heap_fn::SIZED, arg(&ctx, 0), 0);
    }
    0
}

#[uprobe]
pub fn lt_heap_free(ctx: ProbeContext) -> u32 {
    if !floor() {
        let _ = free(arg(&ctx, 0));
    }
    0
}

#[inline(always)]
fn free(ptr: u64) -> Option<()> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    hit(tgid, 1)?;
    if ptr != 0 {
        free_block(tgid, ptr);
    }
    Some(())
}

#[inline(always)]
fn free_block(tgid: u32, ptr: u64) {
    let key = HeapKey { tgid, _pad: 0, ptr };
    record_free_in(&HEAP_LIVE, &key, filter_key(&key));
}

/// Every probed allocator function's return.
#[uretprobe]
pub fn lt_heap_return(ctx: RetProbeContext) -> u32 {
    if !floor() {
        let _ = returned(&ctx);
    }
    0
}

fn returned(ctx: &RetProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let call = unsafe { *HEAP_CALLS.get(&tid)? }; // most returns end here
    let regs = unsafe { &*ctx.regs };
    // The return pops the return address the entry's stack pointer pointed at; an inner call returns deeper.
    if regs.rsp < call.sp + 8 {
        return None;
    }
    let _ = HEAP_CALLS.remove(&tid);
    if regs.rsp != call.sp + 8 {
        count(counter::HEAP_UNMATCHED_RETURN, 1);
        return None;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let value: u64 = ctx.ret();
    if matches!(call.func, heap_fn::REALLOC | heap_fn::REALLOCARRAY) && call.arg != 0 && (value != 0 || call.bytes == 0)
    {
        // The old block is gone: moved (and freed) or resized in place, whose new size counts anew.
        free_block(tgid, call.arg);
    }
    if call.shift == HEAP_NOT_KEPT {
        return None;
    }
    let ptr = if call.func == heap_fn::POSIX_MEMALIGN {
        if value as u32 != 0 {
            return None;
        }
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(call.arg as *const u64) }.ok()?
    } else {
        value
    };
    if ptr == 0 {
        return None;
    }
    let at_return = UserRegs { ip: regs.rip, sp: regs.rsp, bp: regs.rbp, orig_ax: regs.orig_rax };
    let (ustack, usample) = user_site(ctx, || Some(at_return), false);
    let site = SiteKey { tgid, kstack: -ENOENT, ustack, cache: 0, kind: kind::HEAP, _pad: 0, usample };
    let key = HeapKey { tgid, _pad: 0, ptr };
    record_alloc_in(&HEAP_LIVE, &key, filter_key(&key), &site, call.bytes.max(1), call.shift);
    Some(())
}
