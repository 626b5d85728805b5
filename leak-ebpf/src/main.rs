//! Kernel side of leaktrace: tracepoint programs that record who allocates the memory of one memory cgroup.
//!
//! Allocations (pages, slab objects) are recorded only when the allocating task belongs to the target memcg
//! subtree; frees are matched by address whoever runs them (RCU callbacks, reclaim, other tasks). Charges seen on
//! the `memcg:*` tracepoints are filtered by the charged memcg's id. Every record lands in per-CPU maps because
//! bpfel has no atomic read-modify-write; userspace sums the CPUs.
//!
//! The allocation and memcg programs are raw tracepoints: the kernel hands them the event's arguments without
//! assembling a trace record first, and guards each program against recursion on its own rather than behind the
//! global guard of classic tracepoints (which dropped events whenever any other tracer ran on the CPU).
//!
//! By default allocations are sampled by size before any other work (`sample_weight`): a kept allocation carries
//! its weight 1/p into every counter, so sums stay unbiased, and the free of one never kept ends at a LIVE miss.
//!
//! User stacks of kept allocations are not walked here: a frame-pointer walk loses the callers of leaf functions
//! and of code built without frame pointers (most of a distribution). Instead the program copies the user
//! registers and the top of the user stack into the `USTACKS` ring buffer (`user_stack_sample`), and userspace
//! unwinds the copy with the objects' DWARF call frame information. `--record-all`, which keeps every allocation,
//! cannot afford a copy per allocation and takes frame-pointer stack ids instead.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    bindings::{
        BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_prandom_u32, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated as gen,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{tracing::StackIdContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use leak_common::{
    arg, counter, exit_count, kind, regs, Config, ExitConfig, ExitEvent, LiveAlloc, OomEvent, PendingPage, SignalSent,
    SiteCounters, SiteKey, StackSample, CACHE_KMALLOC_BIT, CACHE_NAME_LEN, COMM_LEN, EXIT_MIN_LIFE_NS, FNV_OFFSET,
    GP_REGS, OFFSET_NONE, PENDING_UNSAMPLED, STACK_OVERFLOW_BIT, STACK_SAMPLE_FULL, STACK_SAMPLE_REGS, USTACK_CHUNK,
    USTACK_MAX_CHUNKS,
};

mod heap;
mod python;

/// Kernel layout facts discovered by userspace (tracefs formats, BTF) and written here before load.
#[no_mangle]
static CONFIG: Config = Config::unset();

/// memcg ids (cgroup directory inodes) of the target and its descendants, kept current by userspace.
#[map]
static MEMCGS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// A second chance for stacks whose bucket in STACKS holds another stack: without it such a site (even the leak
/// itself) loses its frames for the whole trace. Another seed, so a collision in both maps is rare.
#[map]
static STACKS_OVERFLOW: StackTrace = StackTrace::with_max_entries(4096, 0);

#[map]
static SITES: PerCpuHashMap<SiteKey, SiteCounters> = PerCpuHashMap::with_max_entries(16384, 0);

/// Outstanding allocations by address (slab) or tagged pfn (pages). Sized by userspace at load.
#[map]
static LIVE: HashMap<u64, LiveAlloc> = HashMap::with_max_entries(262144, 0);

#[map]
static PENDING: PerCpuArray<PendingPage> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static CACHE_NAMES: HashMap<u32, [u8; CACHE_NAME_LEN]> = HashMap::with_max_entries(1024, 0);

/// OOM victims (pid) whose exit frees memory because of the kill.
#[map]
static VICTIMS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(256, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// User stack samples of kept allocations, for userspace to unwind. Sized by userspace at load.
#[map]
static USTACKS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per process (tgid): how many stack chunks its samples copy, when userspace learned that its walks need fewer
/// than `--user-stack-bytes` (most C services need 1-2 KiB; a 16 KiB copy costs a kept event some 4 us).
#[map]
static USTACK_CHUNKS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(8192, 0);

/// A sample being assembled: its head, then the stack copy.
#[repr(C)]
struct StackScratch {
    head: StackSample,
    stack: [u8; USTACK_CHUNK * USTACK_MAX_CHUNKS],
}

/// How many scratch buffers (`STACK_SCRATCH` entries) one CPU may use at once: a program interrupted by one that
/// also samples (an interrupt's allocation charged to the same task) takes the next; deeper nesting goes without
/// a user stack.
const SCRATCH_LEVELS: u32 = 2;

#[map]
static STACK_SCRATCH: PerCpuArray<StackScratch> = PerCpuArray::with_max_entries(SCRATCH_LEVELS, 0);

/// Per CPU: the scratch buffers in use, and the sequence that makes sample tokens unique.
#[map]
static SCRATCH_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SAMPLE_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const EEXIST: i32 = 17;

#[inline(always)]
fn cfg<T: Copy>(field: &T) -> T {
    // Volatile: the value is patched into .rodata by the loader; the compiler must not fold the default.
    unsafe { core::ptr::read_volatile(field) }
}

/// The benchmark's floor: the programs attached, doing nothing. A constant to the verifier, which removes the
/// branch it does not take.
#[inline(always)]
fn floor() -> bool {
    cfg(&CONFIG.floor) != 0
}

#[inline(always)]
fn count(idx: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *p = (*p).wrapping_add(n) };
    }
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == OFFSET_NONE {
        return None;
    }
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// Argument `N` of a raw tracepoint (its position in the event's TP_PROTO, see `leak_common::arg`).
#[inline(always)]
fn tp_arg<const N: usize>(ctx: &RawTracePointContext) -> u64 {
    unsafe { *(ctx.as_ptr() as *const u64).add(N) }
}

/// A kernel value at `base + offset`; `None` for a null base or a member this kernel lacks.
#[inline(always)]
unsafe fn read_at<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() || offset == OFFSET_NONE {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T) }.ok()
}

/// A pointer at `base + offset`, `None` when it is null too.
#[inline(always)]
unsafe fn read_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    unsafe { read_at::<*const u8>(base, offset) }.filter(|p| !p.is_null())
}

/// The memory cgroup id of the current task, read through
/// task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id. Works on v1 and v2 alike, unlike
/// `bpf_get_current_cgroup_id`, which only knows the v2 hierarchy.
#[inline(always)]
fn current_memcg() -> Option<u64> {
    task_memcg(unsafe { bpf_get_current_task() } as *const u8)
}

/// The memory cgroup id of any task (see `current_memcg`).
#[inline(always)]
fn task_memcg(task: *const u8) -> Option<u64> {
    unsafe {
        let css_set = read_ptr(task, cfg(&CONFIG.task_cgroups))?;
        let css = read_ptr(css_set, cfg(&CONFIG.css_set_memory_subsys))?;
        cgroup_id(read_ptr(css, cfg(&CONFIG.css_cgroup))?)
    }
}

#[inline(always)]
fn in_target(memcg: u64) -> bool {
    unsafe { MEMCGS.get(&memcg).is_some() }
}

/// True when the current task sits in the target subtree. Interrupt context is not told apart: an allocation made
/// by an interrupt on top of a target task counts as the task's.
#[inline(always)]
fn target_task() -> bool {
    current_memcg().is_some_and(in_target)
}

/// The site of the allocation happening now: stacks are taken only for events that will be kept. `detail` tells
/// allocations of one kind and cache apart for the reuse of their kernel stack (a page's gfp flags and order).
#[inline(always)]
fn site_here(ctx: &RawTracePointContext, kind: u32, cache: u32, detail: u64) -> SiteKey {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let (ustack, usample) = user_site(ctx, user_regs, kind != kind::SLAB);
    // After the sample, with the registers read again: otherwise the verifier goes through the sample's loops once
    // for each way the kernel stack was found (on 6.18 the three allocation programs loaded in 88 ms so, in 108 ms
    // with the kernel stack first).
    let key = user_regs().map(|r| KstackKey { ip: r.ip, sp: r.sp, orig_ax: r.orig_ax, detail, cache, kind });
    let kstack = kernel_stack(ctx, key);
    SiteKey { tgid, kstack, ustack, cache, kind, _pad: 0, usample }
}

/// What a kernel stack is reused under: one kernel path, as far as the programs can tell it without walking the
/// stack. The user instruction and stack pointer the task entered the kernel from (one call of a system call
/// wrapper, or one faulting instruction, at one depth of the user stack), how it entered (the system call's
/// number), and what is allocated (kind, cache, gfp flags and order) are the same each time a path runs, and
/// seldom all the same for two paths. (Where on the kernel stack the tracepoint runs would tell more, but each
/// system call starts its stack at a random offset.)
#[repr(C)]
#[derive(Clone, Copy)]
struct KstackKey {
    ip: u64,
    sp: u64,
    orig_ax: u64,
    detail: u64,
    cache: u32,
    kind: u32,
}

/// The kernel stack last walked for a key, and how often the key came since its first walk.
#[repr(C)]
#[derive(Clone, Copy)]
struct KstackSeen {
    id: i32,
    uses: u32,
}

/// Every this many uses a key's stack is walked again: a changed stack replaces the one reused (counted).
const KSTACK_RECHECK: u32 = 16;

/// Kernel stacks by `KstackKey`. Walking the kernel stack (ORC) is most of a kept event's cost: 2.1 us of 3.3 on
/// page churn (bpf_stats, 6.18, every page kept), where the page fault path is the same thousands of times.
#[map]
static KSTACK_REUSE: LruHashMap<KstackKey, KstackSeen> = LruHashMap::with_max_entries(4096, 0);

/// The kernel stack id of the allocation happening now: walked, or the one walked last under `key` (see
/// `KstackKey`). Only the kernel half of a site is reused: the user half, which names the function to blame, is
/// each allocation's own.
#[inline(always)]
fn kernel_stack(ctx: &RawTracePointContext, key: Option<KstackKey>) -> i32 {
    let key = key.filter(|_| cfg(&CONFIG.kstack_reuse) != 0);
    // One walk below, not one per way there: the verifier goes through each copy of its branches.
    let mut seen = KstackSeen { id: -1, uses: 0 };
    if let Some(s) = key.as_ref().and_then(|k| KSTACK_REUSE.get_ptr_mut(k)) {
        unsafe {
            (*s).uses = (*s).uses.wrapping_add(1);
            if (*s).uses % KSTACK_RECHECK != 0 {
                count(counter::KSTACK_REUSED, 1);
                return (*s).id;
            }
            seen = *s;
        }
    }
    let id = stack_id(ctx, 0, counter::KSTACK_COLLISION);
    if let Some(k) = key.as_ref().filter(|_| id >= 0 && id != seen.id) {
        // A recheck (uses > 0) that found another stack, or a key's first walk.
        if seen.uses != 0 {
            count(counter::KSTACK_CHANGED, 1);
        }
        let _ = KSTACK_REUSE.insert(k, &KstackSeen { id, uses: seen.uses }, 0);
    }
    id
}

/// The user registers a stack sample starts from.
#[derive(Clone, Copy)]
struct UserRegs {
    ip: u64,
    sp: u64,
    bp: u64,
    /// `pt_regs.orig_ax`: how the task entered the kernel (see `Config::regs_orig_ax`).
    orig_ax: u64,
}

/// The user half of a site key: a frame-pointer stack id (no stack copies configured), or the token of a user stack
/// sample taken from the registers `regs` gives; a negative errno when there is none. `page`: a page allocation,
/// which may be for a user page fault (its sample then carries the fault's address).
#[inline(always)]
fn user_site<C: StackIdContext>(ctx: &C, regs: impl FnOnce() -> Option<UserRegs>, page: bool) -> (i32, u64) {
    if cfg(&CONFIG.ustack_chunks) == 0 {
        (stack_id(ctx, BPF_F_USER_STACK as u64, counter::USTACK_COLLISION), 0)
    } else {
        match user_stack_sample(regs, page) {
            Ok(token) => (-1, token),
            Err(e) => (e, 0),
        }
    }
}

const ENODATA: i32 = 61;
const ENOSPC: i32 = 28;
const EBUSY: i32 = 16;

/// Sends the current task's user registers and the top of its user stack to userspace; returns the sample's
/// token, or the negative errno that stands in for the user stack of the site (counted).
#[inline(always)]
fn user_stack_sample(regs: impl FnOnce() -> Option<UserRegs>, page: bool) -> Result<u64, i32> {
    let depth = SCRATCH_DEPTH.get_ptr_mut(0).ok_or(-EBUSY)?;
    let level = unsafe { *depth };
    if level >= SCRATCH_LEVELS {
        count(counter::USTACK_NESTED, 1);
        return Err(-EBUSY);
    }
    unsafe { *depth = level + 1 };
    let sent = fill_and_send(level, regs, page);
    unsafe { *depth = level };
    sent
}

#[inline(always)]
fn fill_and_send(level: u32, regs: impl FnOnce() -> Option<UserRegs>, page: bool) -> Result<u64, i32> {
    let scratch = STACK_SCRATCH.get_ptr_mut(level).ok_or(-EBUSY)?;
    let Some(UserRegs { ip, sp, bp, orig_ax }) = regs() else {
        count(counter::USTACK_NO_REGS, 1);
        return Err(-ENODATA);
    };
    let seq = SAMPLE_SEQ.get_ptr_mut(0).ok_or(-EBUSY)?;
    let token = unsafe {
        *seq += 1;
        // The CPU in the low bits keeps tokens of different CPUs apart; never 0.
        (*seq << 12) | (gen::bpf_get_smp_processor_id() as u64 & 0xfff)
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let s = unsafe { &mut *scratch };
    let h = &mut s.head;
    h.tgid = (pid_tgid >> 32) as u32;
    // Before the copy: after it, the verifier follows each length the copy may end at and would walk the
    // interpreter's frame loops once for each (the three allocation programs took 230 ms to load, not 50, on 6.18).
    (h.py_len, h.py_flags) = python::frames(h.tgid, tid, &mut h.py);
    // So too the registers (flags live in the map value, which the verifier does not tell apart).
    h.flags = 0;
    if page {
        user_entry(h, orig_ax);
    }
    let base = sp & !(USTACK_CHUNK as u64 - 1);
    let full = cfg(&CONFIG.ustack_chunks);
    let want = unsafe { USTACK_CHUNKS.get(&h.tgid) }.map_or(full, |&c| c.min(full));
    let mut chunks = 0usize;
    while chunks < USTACK_MAX_CHUNKS {
        if chunks as u32 >= want {
            break;
        }
        let at = chunks * USTACK_CHUNK;
        let dst = unsafe { s.stack.as_mut_ptr().add(at) };
        let src = (base + at as u64) as *const core::ffi::c_void;
        // A chunk past the stack's end (the top of a thread's mapping) fails: the copy ends there.
        if unsafe { gen::bpf_probe_read_user(dst as *mut _, USTACK_CHUNK as u32, src) } != 0 {
            break;
        }
        chunks += 1;
    }
    if chunks == 0 {
        count(counter::USTACK_UNREADABLE, 1);
        return Err(-ENODATA);
    }
    let len = chunks * USTACK_CHUNK;
    // Field by field: the head, with its Python frames, is larger than a program's stack.
    let h = &mut s.head;
    h.token = token;
    h.tid = tid;
    h.ip = ip;
    h.sp = sp;
    h.bp = bp;
    h.base = base;
    h.len = len as u32;
    if chunks as u32 >= want {
        h.flags |= STACK_SAMPLE_FULL;
    }
    if h.py_len > 0 {
        count(counter::PY_STACKS, 1);
    }
    let size = core::mem::size_of::<StackSample>() + len;
    if size > core::mem::size_of::<StackScratch>() {
        return Err(-ENOSPC);
    }
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const u8, size) };
    // Waking the reader for every sample costs both sides a context switch (thousands a second under page
    // churn): userspace drains on a short timer, and is woken only when a quarter of the ring (sized by userspace
    // at load) is waiting.
    let wake = if USTACKS.query(BPF_RB_AVAIL_DATA as u64) > USTACKS.query(BPF_RB_RING_SIZE as u64) / 4 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if USTACKS.output::<[u8]>(bytes, wake as u64).is_err() {
        count(counter::USTACK_RINGBUF_DROP, 1);
        return Err(-ENOSPC);
    }
    count(counter::USTACK_SAMPLES, 1);
    Ok(token)
}

/// The `struct pt_regs` the current task's entry into the kernel saved.
#[inline(always)]
fn saved_regs() -> Option<*const u8> {
    match cfg(&CONFIG.regs_source) {
        // Dead code on kernels without the helpers (the verifier knows the config): they never see the calls.
        regs::HELPER => Some(unsafe { gen::bpf_task_pt_regs(gen::bpf_get_current_task_btf()) as *const u8 }),
        regs::STACK_TOP => unsafe {
            let stack = read_ptr(bpf_get_current_task() as *const u8, cfg(&CONFIG.task_stack))?;
            Some(stack.add((cfg(&CONFIG.thread_size) - cfg(&CONFIG.pt_regs_size)) as usize))
        },
        _ => None,
    }
}

/// A page's sample: how the task entered the kernel and its general registers, from which userspace works out
/// the address of a user page fault (`StackSample::gp`). Only kept pages pay for it.
#[inline(always)]
fn user_entry(h: &mut StackSample, orig_ax: u64) {
    if cfg(&CONFIG.regs_gp) == OFFSET_NONE {
        return;
    }
    let Some(regs) = saved_regs() else { return };
    unsafe {
        let gp = h.gp.as_mut_ptr() as *mut core::ffi::c_void;
        let src = regs.add(cfg(&CONFIG.regs_gp) as usize) as *const core::ffi::c_void;
        if gen::bpf_probe_read_kernel(gp, core::mem::size_of::<[u64; GP_REGS]>() as u32, src) != 0 {
            return;
        }
        h.ss = read_at(regs, cfg(&CONFIG.regs_ss)).unwrap_or(0);
    }
    h.orig_ax = orig_ax;
    h.flags |= STACK_SAMPLE_REGS;
}

/// The user registers saved when the current task entered the kernel (syscall, fault, interrupt); `None` for a
/// kernel thread, whose saved registers are not user mode.
#[inline(always)]
fn user_regs() -> Option<UserRegs> {
    let regs = saved_regs()?;
    unsafe {
        let cs: u64 = read_at(regs, cfg(&CONFIG.regs_cs))?;
        if cs & 3 != 3 {
            return None;
        }
        Some(UserRegs {
            ip: read_at(regs, cfg(&CONFIG.regs_ip))?,
            sp: read_at(regs, cfg(&CONFIG.regs_sp))?,
            bp: read_at(regs, cfg(&CONFIG.regs_bp))?,
            // Unknown, it reads as 0 (a read(2)'s number): never a fault's.
            orig_ax: read_at(regs, cfg(&CONFIG.regs_orig_ax)).unwrap_or(0),
        })
    }
}

#[inline(always)]
fn stack_id<C: StackIdContext>(ctx: &C, flags: u64, collision: u32) -> i32 {
    let id = match ctx.get_stackid(&STACKS, flags) {
        Err(e) if e == -EEXIST => ctx.get_stackid(&STACKS_OVERFLOW, flags).map(|id| id as i32 | STACK_OVERFLOW_BIT),
        other => other.map(|id| id as i32),
    };
    match id {
        Ok(id) => id,
        Err(e) => {
            // -EEXIST: another stack owns the bucket in both maps. Never reuse it: that would relabel an older site.
            count(if e == -EEXIST { collision } else { counter::STACK_ERROR }, 1);
            e
        }
    }
}

/// Whether to keep an allocation of `bytes`, and its weight (log2 of 1/p) when kept. Decided before anything else
/// about the event: a random number is far cheaper than the memcg walk, and most small objects and pages of a
/// churning workload stop here. Allocations of a page or less toss the cheap first half of the coin before their
/// exact weight is worked out.
#[inline(always)]
fn sample_weight(bytes: u64) -> Option<u32> {
    // A larger allocation's first step has weight 0 (always passes): its whole coin is the second step.
    let max_bits = if bytes <= 1 << SMALL_BITS { SMALL_BITS } else { u32::MAX };
    let (random, pre) = pre_coin(max_bits)?;
    finish_coin(random, pre, bytes)
}

/// Allocations of at most 2^SMALL_BITS bytes (a page) take the two-step coin.
const SMALL_BITS: u32 = 12;
/// Slab objects are assumed at most 2^CACHE_BITS bytes when their coin is tossed before their size is read (the
/// read is a helper call, and most events end at the coin). A larger object is kept with the first step's
/// probability and weighted by it: still unbiased.
const CACHE_BITS: u32 = 15;

/// The first step of the coin (`leak_common::coin_first`) for an allocation of at most `2^max_bits` bytes:
/// the random number and `pre` when the allocation may be kept.
#[inline(always)]
fn pre_coin(max_bits: u32) -> Option<(u32, u32)> {
    let random = coin_random();
    Some((random, leak_common::coin_first(random, cfg(&CONFIG.sample_rate_shift), max_bits)?))
}

/// Per CPU: the coin's generator state (`leak_common::next_random`), seeded by the kernel's generator at a CPU's
/// first toss.
#[map]
static COIN_STATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The coin's random number. Every allocation of the machine tosses it, and the kernel's generator cost more
/// than all the rest of an untaken event: with `bpf_get_prandom_u32` a page allocation that was not kept ran
/// 122 ns (bpf_stats, 6.18, programs that return at once 52 ns), with the per-CPU state 64 ns.
#[inline(always)]
fn coin_random() -> u32 {
    let Some(state) = COIN_STATE.get_ptr_mut(0) else {
        return unsafe { bpf_get_prandom_u32() };
    };
    unsafe {
        if *state == 0 {
            *state = leak_common::seed_random(bpf_get_prandom_u32());
        }
        let (next, random) = leak_common::next_random(*state);
        *state = next;
        random
    }
}

/// The weight of an allocation the coin kept, once the user stack ring's fill is taken into account: past half
/// full a further coin thins kept allocations (`leak_common::thinning_shift`), so that its reader, fallen behind,
/// gets fewer samples with their stacks rather than none. `None`: thinned out (counted).
#[inline(always)]
fn thin(shift: u32) -> Option<u32> {
    if cfg(&CONFIG.ustack_chunks) == 0 {
        return Some(shift);
    }
    let fill = USTACKS.query(BPF_RB_AVAIL_DATA as u64);
    let extra = leak_common::thinning_shift(fill, USTACKS.query(BPF_RB_RING_SIZE as u64));
    let Some(kept) = leak_common::thinned_weight(shift, extra, coin_random()) else {
        count(counter::USTACK_THINNED, 1);
        return None;
    };
    let Some(slot) = KEPT_WEIGHT.get_ptr_mut(0) else {
        return Some(kept);
    };
    unsafe {
        core::ptr::write_volatile(slot, kept);
        Some(core::ptr::read_volatile(slot))
    }
}

/// Per CPU: a kept allocation's weight on its way out of `thin`. Read back from a map, it is a number the verifier
/// knows nothing of; otherwise it tells apart the weights of thinning's ways through and goes through the rest of
/// the program once for each (5.10 under QEMU: 8 s more to attach).
#[map]
static KEPT_WEIGHT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn finish_coin(random: u32, pre: u32, bytes: u64) -> Option<u32> {
    leak_common::coin_second(random, pre, bytes, cfg(&CONFIG.sample_rate_shift))
}

/// `bytes` and `allocs` are estimates: already scaled by the sampling weight.
#[inline(always)]
fn add_alloc(site: &SiteKey, bytes: u64, allocs: u64) -> bool {
    if let Some(c) = SITES.get_ptr_mut(site) {
        unsafe {
            (*c).alloc_bytes = (*c).alloc_bytes.wrapping_add(bytes);
            (*c).alloc_count = (*c).alloc_count.wrapping_add(allocs);
        }
        return true;
    }
    let c = SiteCounters { alloc_bytes: bytes, alloc_count: allocs, ..SiteCounters::default() };
    if SITES.insert(site, &c, 0).is_err() {
        count(counter::SITE_MAP_FULL, 1);
        return false;
    }
    true
}

/// Takes an allocation back from a site's totals (the page turned out to be anon and moves to its anon site).
#[inline(always)]
fn sub_alloc(site: &SiteKey, bytes: u64, allocs: u64) {
    if let Some(c) = SITES.get_ptr_mut(site) {
        unsafe {
            (*c).alloc_bytes = (*c).alloc_bytes.wrapping_sub(bytes);
            (*c).alloc_count = (*c).alloc_count.wrapping_sub(allocs);
        }
    }
}

#[inline(always)]
fn credit_free(rec: &LiveAlloc, by_oom: bool) {
    let (bytes, allocs) = (rec.bytes, 1u64 << rec.weight_shift);
    if let Some(c) = SITES.get_ptr_mut(&rec.site) {
        unsafe {
            if by_oom {
                (*c).oom_freed_bytes = (*c).oom_freed_bytes.wrapping_add(bytes);
                (*c).oom_freed_count = (*c).oom_freed_count.wrapping_add(allocs);
            } else {
                (*c).free_bytes = (*c).free_bytes.wrapping_add(bytes);
                (*c).free_count = (*c).free_count.wrapping_add(allocs);
            }
        }
    }
}

/// Records a kept allocation of `bytes` sampled with weight `shift` (see `sample_weight`).
#[inline(always)]
fn record_alloc(key: u64, site: &SiteKey, bytes: u64, shift: u32) -> bool {
    record_alloc_in(&LIVE, &key, key, site, bytes, shift)
}

/// `record_alloc` into a table of outstanding allocations `live` under `key`, counted in the filter as
/// `filter_key`.
#[inline(always)]
fn record_alloc_in<K>(live: &HashMap<K, LiveAlloc>, key: &K, filter_key: u64, site: &SiteKey, bytes: u64, shift: u32) -> bool {
    // An allocation at an address we still track means its free was missed (e.g. dropped by the kernel's
    // recursion guard): close the old record rather than let it look leaked forever.
    let tracked = match unsafe { live.get(key) } {
        Some(old) => {
            let old = *old;
            credit_free(&old, false);
            count(counter::IMPLICIT_FREE, 1);
            true
        }
        None => false,
    };
    let (bytes, weight) = (bytes << shift, 1u64 << shift);
    if !add_alloc(site, bytes, weight) {
        return false;
    }
    let rec = LiveAlloc { site: *site, weight_shift: shift, bytes };
    if live.insert(key, &rec, 0).is_err() {
        sub_alloc(site, bytes, weight);
        count(counter::LIVE_MAP_FULL, 1);
        return false;
    }
    // An address tracked already is counted in the filter already.
    if !tracked {
        filter_add(filter_key, 1);
    }
    count(counter::ALLOC_EVENTS, 1);
    true
}

/// Outstanding kept allocations counted by their address (`filter_slot`). Nearly every free is of an allocation that
/// was never kept; with the slot's count at zero it ends at one array read, which the verifier inlines, instead of
/// a LIVE hash lookup. Counts change by atomic adds: an allocation and a free of two addresses sharing a slot may
/// run on two CPUs at once.
const FILTER_SLOTS: u32 = 1 << 19;

#[map]
static KEPT_FILTER: Array<u32> = Array::with_max_entries(FILTER_SLOTS, 0);

/// The key's address bits above the cache line: struct pages (64 bytes apart) and the objects of one slab take
/// neighbouring slots, so the frees of a batch of pages or a slab's objects read a few cache lines of the filter,
/// not one line (and one TLB entry) each, as a hash's scattered slots did at every freed page. The bits from 44
/// up are folded in: constant in a kernel address (the slots keep their order), the process in a `--heap` key
/// (`heap::filter_key`), so that forked workers' blocks at one address do not share a slot.
#[inline(always)]
fn filter_slot(key: u64) -> u32 {
    ((key >> 6) ^ (key >> 44)) as u32 & (FILTER_SLOTS - 1)
}

#[inline(always)]
fn filter_add(key: u64, delta: u32) {
    if let Some(p) = KEPT_FILTER.get_ptr_mut(filter_slot(key)) {
        // SAFETY: p points into the array map's value, which lives as long as the map. The result is unused, so
        // LLVM emits the BPF atomic add that every kernel since 3.18 has (the target offers no atomic types).
        unsafe { core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(p, delta) };
    }
}

/// False when no kept allocation hashes to `key`'s slot: it cannot be in LIVE.
#[inline(always)]
fn maybe_kept(key: u64) -> bool {
    KEPT_FILTER.get(filter_slot(key)).is_none_or(|&n| n != 0)
}

/// Frees of memory the OOM killer reclaims: by the victim itself as it exits, or by the oom_reaper thread.
#[inline(always)]
fn freed_by_oom() -> bool {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    tgid == cfg(&CONFIG.oom_reaper_pid) || unsafe { VICTIMS.get(&tid).is_some() || VICTIMS.get(&tgid).is_some() }
}

/// Only sampled allocations are in LIVE: the free of any other one ends at the filter (or, sharing a slot with a
/// kept one, at the lookup's miss).
#[inline(always)]
fn record_free(key: u64) {
    record_free_in(&LIVE, &key, key)
}

/// `record_free` from the table `live` (see `record_alloc_in`).
#[inline(always)]
fn record_free_in<K>(live: &HashMap<K, LiveAlloc>, key: &K, filter_key: u64) {
    if !maybe_kept(filter_key) {
        return;
    }
    let rec = match unsafe { live.get(key) } {
        Some(r) => *r,
        None => return,
    };
    if live.remove(key).is_ok() {
        filter_add(filter_key, u32::MAX);
    }
    // khugepaged copies the small pages of a region into a huge page it allocated itself (outside the target's
    // tasks, so unseen), then frees them: the memory stays the process's and the site that faulted it keeps it.
    if (bpf_get_current_pid_tgid() >> 32) as u32 == cfg(&CONFIG.khugepaged_pid) && cfg(&CONFIG.khugepaged_pid) != 0 {
        count(counter::COLLAPSED, 1);
        return;
    }
    credit_free(&rec, freed_by_oom());
    count(counter::FREE_EVENTS, 1);
}

#[raw_tracepoint(tracepoint = "mm_page_alloc")]
pub fn lt_page_alloc(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let _ = page_alloc(&ctx);
    0
}

fn page_alloc(ctx: &RawTracePointContext) -> Option<()> {
    let page = tp_arg::<{ arg::PAGE_ALLOC_PAGE }>(ctx);
    if page == 0 {
        return None; // failed allocation
    }
    let order = tp_arg::<{ arg::PAGE_ALLOC_ORDER }>(ctx) as u32;
    let bytes = (cfg(&CONFIG.page_size) as u64) << (order & 31);
    let Some(shift) = sample_weight(bytes) else {
        unsampled_page();
        return None;
    };
    if !target_task() {
        return None;
    }
    let Some(shift) = thin(shift) else {
        unsampled_page();
        return None;
    };
    // Kernel memory charged to the memcg carries __GFP_ACCOUNT; page cache and anon pages do not (anon ones are
    // recognised by the charge that follows).
    let account = cfg(&CONFIG.gfp_account) as u64;
    let gfp = tp_arg::<{ arg::PAGE_ALLOC_GFP }>(ctx) & 0xffff_ffff;
    let kind = if account == 0 || gfp & account != 0 {
        kind::PAGE
    } else if fallback_anon(gfp) {
        kind::ANON
    } else {
        kind::OTHER
    };
    let site = site_here(ctx, kind, 0, gfp | (order as u64) << 32);
    if record_alloc(page, &site, bytes, shift) && cfg(&CONFIG.anon_by_charge) != 0 {
        if let Some(p) = PENDING.get_ptr_mut(0) {
            unsafe { *p = PendingPage { tid: bpf_get_current_pid_tgid() as u32, _pad: 0, live_key: page } };
        }
    }
    Some(())
}

/// A page allocation not kept: the anon charge that may follow belongs to this page, and must neither be taken for
/// an earlier (sampled) page of the same fault, such as its page table, nor count as a charge the tracer missed.
#[inline(always)]
fn unsampled_page() {
    if cfg(&CONFIG.anon_by_charge) == 0 {
        return;
    }
    if let Some(p) = PENDING.get_ptr_mut(0) {
        let tid = bpf_get_current_pid_tgid() as u32;
        unsafe { *p = PendingPage { tid, _pad: 0, live_key: PENDING_UNSAMPLED } };
    }
}

/// Kernels without the memcg charge tracepoints: user pages that are zeroed (anonymous faults) or transparent huge
/// pages are anon. Page cache pages are user pages too, but neither zeroed nor allocated that way.
#[inline(always)]
fn fallback_anon(gfp: u64) -> bool {
    let user = cfg(&CONFIG.gfp_user) as u64;
    let thp = cfg(&CONFIG.gfp_thp) as u64;
    user != 0 && gfp & user == user && (gfp & cfg(&CONFIG.gfp_zero) as u64 != 0 || (thp != 0 && gfp & thp == thp))
}

#[raw_tracepoint(tracepoint = "mm_page_free")]
pub fn lt_page_free(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    free_at(tp_arg::<{ arg::PAGE_FREE_PAGE }>(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "kmalloc")]
pub fn lt_kmalloc(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let _ = kmalloc(&ctx);
    0
}

fn kmalloc(ctx: &RawTracePointContext) -> Option<()> {
    let ptr = tp_arg::<{ arg::KMALLOC_PTR }>(ctx);
    if ptr == 0 {
        return None;
    }
    let bytes = tp_arg::<{ arg::KMALLOC_BYTES_ALLOC }>(ctx);
    let shift = sample_weight(bytes)?;
    if !target_task() {
        return None;
    }
    let shift = thin(shift)?;
    let class = CACHE_KMALLOC_BIT | (bytes as u32 & !CACHE_KMALLOC_BIT);
    let site = site_here(ctx, kind::SLAB, class, 0);
    record_alloc(ptr, &site, bytes, shift);
    Some(())
}

#[raw_tracepoint(tracepoint = "kmem_cache_alloc")]
pub fn lt_cache_alloc(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let _ = cache_alloc(&ctx);
    0
}

fn cache_alloc(ctx: &RawTracePointContext) -> Option<()> {
    let ptr = tp_arg::<{ arg::CACHE_ALLOC_PTR }>(ctx);
    if ptr == 0 {
        return None;
    }
    // Each branch ends differently after its context read, so LLVM cannot merge the two reads into one at a
    // computed offset (which the verifier would refuse).
    let (cache, bytes, shift) = if cfg(&CONFIG.cache_alloc_has_cache) != 0 {
        let (random, pre) = pre_coin(CACHE_BITS)?;
        let cache = tp_arg::<{ arg::CACHE_ALLOC_CACHE }>(ctx) as *const u8;
        let bytes = unsafe { read_at::<u32>(cache, cfg(&CONFIG.kmem_cache_size))? } as u64;
        (cache, bytes, finish_coin(random, pre, bytes)?)
    } else {
        let bytes = tp_arg::<{ arg::CACHE_ALLOC_BYTES_ALLOC }>(ctx);
        (core::ptr::null(), bytes, sample_weight(bytes)?)
    };
    if !target_task() {
        return None;
    }
    let shift = thin(shift)?;
    let name = unsafe { read_ptr(cache, cfg(&CONFIG.kmem_cache_name)) };
    let site = site_here(ctx, kind::SLAB, name.and_then(cache_name_id).unwrap_or(0), 0);
    record_alloc(ptr, &site, bytes, shift);
    Some(())
}

/// Hashes a cache's name and remembers the name for userspace.
#[inline(always)]
fn cache_name_id(src: *const u8) -> Option<u32> {
    let mut name = [0u8; CACHE_NAME_LEN];
    let bytes = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut name) }.ok()?;
    let len = bytes.len();
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < CACHE_NAME_LEN {
        if i >= len {
            break;
        }
        hash = leak_common::fnv1a_step(hash, name[i]);
        i += 1;
    }
    let id = hash & !CACHE_KMALLOC_BIT;
    let id = if id == 0 { 1 } else { id };
    if unsafe { CACHE_NAMES.get(&id).is_none() } {
        let _ = CACHE_NAMES.insert(&id, &name, BPF_NOEXIST as u64);
    }
    Some(id)
}

#[raw_tracepoint(tracepoint = "kfree")]
pub fn lt_kfree(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    free_at(tp_arg::<{ arg::FREE_PTR }>(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "kmem_cache_free")]
pub fn lt_cache_free(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    free_at(tp_arg::<{ arg::FREE_PTR }>(&ctx));
    0
}

/// The free of an object or `struct page` at `key`.
#[inline(always)]
fn free_at(key: u64) {
    if key != 0 {
        record_free(key);
    }
}

/// Per-page anon stat updates of a memcg. A positive NR_ANON_MAPPED update right after the same task took a page
/// on this CPU marks that page as anonymous memory of the site that faulted it in.
#[raw_tracepoint(tracepoint = "mod_memcg_lruvec_state")]
pub fn lt_memcg_lruvec(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let _ = memcg_lruvec(&ctx);
    0
}

/// The value of a memcg stat update when it is `wanted` and made to the target subtree. The item is compared first:
/// it is the cheapest test and rejects most of these very frequent events.
#[inline(always)]
fn target_update(ctx: &RawTracePointContext, wanted: i32) -> Option<i32> {
    if tp_arg::<{ arg::MEMCG_ITEM }>(ctx) as i32 != wanted {
        return None;
    }
    let memcg = tp_arg::<{ arg::MEMCG }>(ctx) as *const u8;
    if !in_target(memcg_id(memcg)?) {
        return None;
    }
    Some(tp_arg::<{ arg::MEMCG_VAL }>(ctx) as i32)
}

/// The cgroup id of a `struct mem_cgroup`, as the memcg tracepoints' own records compute it.
#[inline(always)]
fn memcg_id(memcg: *const u8) -> Option<u64> {
    unsafe {
        let css = memcg.add(cfg(&CONFIG.memcg_css) as usize);
        cgroup_id(read_ptr(css, cfg(&CONFIG.css_cgroup))?)
    }
}

/// cgroup->kn->id: the cgroup directory's inode number.
#[inline(always)]
unsafe fn cgroup_id(cgroup: *const u8) -> Option<u64> {
    unsafe { read_at::<u64>(read_ptr(cgroup, cfg(&CONFIG.cgroup_kn))?, cfg(&CONFIG.kn_id)) }
}

fn memcg_lruvec(ctx: &RawTracePointContext) -> Option<()> {
    let val = target_update(ctx, cfg(&CONFIG.item_anon_mapped))?;
    if val <= 0 {
        return None;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let pending = PENDING.get_ptr_mut(0)?;
    let key = unsafe {
        let p = *pending;
        (*pending).live_key = 0;
        if p.tid == tid && p.live_key == PENDING_UNSAMPLED {
            return None;
        }
        if p.tid != tid || p.live_key == 0 {
            count(counter::ANON_CHARGE_UNMATCHED, val as u64);
            return None;
        }
        p.live_key
    };
    let rec = LIVE.get_ptr_mut(&key)?;
    unsafe {
        if (*rec).site.kind == kind::ANON {
            return None;
        }
        let old = (*rec).site;
        let mut anon = old;
        anon.kind = kind::ANON;
        let weight = 1u64 << (*rec).weight_shift;
        if add_alloc(&anon, (*rec).bytes, weight) {
            sub_alloc(&old, (*rec).bytes, weight);
            (*rec).site = anon;
        }
    }
    Some(())
}

/// Every OOM victim goes to userspace at once; it decides whether the victim belongs to the target.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn lt_mark_victim(ctx: TracePointContext) -> u32 {
    if floor() {
        return 0;
    }
    let _ = mark_victim(&ctx);
    0
}

fn mark_victim(ctx: &TracePointContext) -> Option<()> {
    let victim: i32 = field(ctx, cfg(&CONFIG.victim_pid))?;
    let victim = victim as u32;
    let _ = VICTIMS.insert(&victim, &1, 0);
    count(counter::OOM_EVENTS, 1);
    let Some(mut entry) = EVENTS.reserve::<OomEvent>(0) else {
        count(counter::RINGBUF_DROP, 1);
        return None;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let rss_off = cfg(&CONFIG.victim_anon_rss);
    let mut ev = OomEvent {
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        victim_pid: victim,
        trigger_tid: pid_tgid as u32,
        trigger_tgid: (pid_tgid >> 32) as u32,
        has_rss: (rss_off != OFFSET_NONE) as u32,
        trigger_memcg: current_memcg().unwrap_or(0),
        total_vm_kb: field(ctx, cfg(&CONFIG.victim_total_vm)).unwrap_or(0),
        anon_rss_kb: field(ctx, rss_off).unwrap_or(0),
        file_rss_kb: field(ctx, cfg(&CONFIG.victim_file_rss)).unwrap_or(0),
        shmem_rss_kb: field(ctx, cfg(&CONFIG.victim_shmem_rss)).unwrap_or(0),
        victim_comm: [0; COMM_LEN],
        trigger_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    if let Some(loc) = field::<u32>(ctx, cfg(&CONFIG.victim_comm)) {
        let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut ev.victim_comm) };
    }
    entry.write(ev);
    entry.submit(0);
    Some(())
}

/// task_struct offsets of the exit and signal programs, discovered by userspace like `CONFIG`.
#[no_mangle]
static EXIT_CONFIG: ExitConfig = ExitConfig::unset();

/// The last fatal signal sent to each process of the target (by pid), waiting for its exit to name the sender.
#[map]
static SIGNALS: LruHashMap<u32, SignalSent> = LruHashMap::with_max_entries(1024, 0);

#[map]
static EXITS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[map]
static EXIT_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(exit_count::COUNT, 0);

/// Signals whose default action ends a process: HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE TERM
/// XCPU XFSZ SYS. The timer, profiling and I/O signals that runtimes take by the thousand are left out: they kill
/// nobody in practice, and each would cost a map update.
const FATAL_SIGNALS: u64 = signal_mask(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 24, 25, 31]);

const fn signal_mask(signals: &[u32]) -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < signals.len() {
        mask |= 1 << signals[i];
        i += 1;
    }
    mask
}

#[inline(always)]
fn count_exit(idx: u32) {
    if let Some(p) = EXIT_COUNTS.get_ptr_mut(idx) {
        unsafe { *p = (*p).wrapping_add(1) };
    }
}

/// Every signal of the machine passes here; only fatal ones to the target's tasks are kept, with their sender
/// (the current task).
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn lt_signal_generate(ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let _ = signal_generate(&ctx);
    0
}

fn signal_generate(ctx: &RawTracePointContext) -> Option<()> {
    let sig = tp_arg::<{ arg::SIGNAL_SIG }>(ctx) as u32;
    if sig >= 64 || FATAL_SIGNALS & (1u64 << sig) == 0 {
        return None;
    }
    let task = tp_arg::<{ arg::SIGNAL_TASK }>(ctx) as *const u8;
    if !task_memcg(task).is_some_and(in_target) {
        return None;
    }
    let pid: u32 = unsafe { read_at(task, cfg(&EXIT_CONFIG.task_tgid))? };
    let sent = SignalSent {
        signal: sig,
        sender_pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        sender_in_target: target_task() as u32,
        _pad: 0,
        sender_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    SIGNALS.insert(&pid, &sent, 0).ok()
}

/// A task of the machine exits (the current task). A process of the target ends with its main thread; its death
/// goes to userspace with the last fatal signal it was sent.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn lt_process_exit(_ctx: RawTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let _ = process_exit();
    0
}

fn process_exit() -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if pid != pid_tgid as u32 || !target_task() {
        return None;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let exit_code: u32 = unsafe { read_at(task, cfg(&EXIT_CONFIG.task_exit_code))? };
    let start_ns: u64 = unsafe { read_at(task, cfg(&EXIT_CONFIG.task_start_time)) }.unwrap_or(0);
    let now = unsafe { bpf_ktime_get_ns() };
    let sent = unsafe { SIGNALS.get(&pid) }.copied();
    let _ = SIGNALS.remove(&pid);
    if exit_code & 0x7f == 0 && (exit_code == 0 || now.saturating_sub(start_ns) < EXIT_MIN_LIFE_NS) {
        count_exit(exit_count::UNRECORDED);
        return None;
    }
    let Some(mut entry) = EXITS.reserve::<ExitEvent>(0) else {
        count_exit(exit_count::DROPPED);
        return None;
    };
    let sent = sent.unwrap_or_default();
    entry.write(ExitEvent {
        ktime_ns: now,
        start_ns,
        pid,
        exit_code,
        signal: sent.signal,
        sender_pid: sent.sender_pid,
        sender_in_target: sent.sender_in_target,
        oom_victim: unsafe { VICTIMS.get(&pid).is_some() } as u32,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        sender_comm: sent.sender_comm,
    });
    entry.submit(0);
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
