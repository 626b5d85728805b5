//! Types shared by the eBPF programs (`leak-ebpf`) and userspace (`leak-userspace`).
//!
//! Every type here crosses the kernel boundary through a map or the ring buffer, so all are `#[repr(C)]`,
//! `Copy`, and padded explicitly: hash keys are compared byte by byte, and implicit padding would make equal keys
//! differ.
#![no_std]

/// What kind of memory a site allocates. Matches `sites[].kind` in report.json.
pub mod kind {
    /// Anonymous user pages (heap, mmap'd anonymous memory, stacks): page allocations that the memcg then charged
    /// as `NR_ANON_MAPPED`.
    pub const ANON: u32 = 0;
    /// Slab objects (`kmalloc`, `kmem_cache_alloc`).
    pub const SLAB: u32 = 1;
    /// Kernel pages charged to the memcg as kernel memory (`__GFP_ACCOUNT`): pipe buffers, page tables, kernel
    /// stacks. Pages backing slab objects are not among them (slab charges per object), so they count once.
    pub const PAGE: u32 = 2;
    pub const PERCPU: u32 = 3;
    /// Other pages from the page allocator: page cache, and kernel pages not charged to any memcg.
    pub const OTHER: u32 = 4;
    /// Bytes a process got from its allocator (`malloc` and kin, probed with `--heap`) and has not freed: who
    /// holds the heap, where `ANON` says who first touched its pages.
    pub const HEAP: u32 = 5;
}

/// `SiteKey::cache` for kmalloc objects: this bit set, the size class in the low bits. Otherwise `cache` is the
/// FNV-1a hash of the slab cache's name (top bit cleared), resolvable through the `CACHE_NAMES` map. 0 = none.
pub const CACHE_KMALLOC_BIT: u32 = 0x8000_0000;

/// One allocation site: who (tgid), where (kernel and user stack ids) and what (kind, slab cache).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteKey {
    pub tgid: u32,
    /// Stack id in `STACKS`, or a negative errno when no stack was taken (e.g. -EEXIST on a bucket collision).
    pub kstack: i32,
    /// A frame-pointer stack id in `STACKS` (`--record-all`), a negative errno, or, in userspace once the sample
    /// is unwound, an id of the unwound stacks with [`USTACK_UNWOUND_BIT`] set.
    pub ustack: i32,
    pub cache: u32,
    pub kind: u32,
    pub _pad: u32,
    /// The user stack sample ([`StackSample::token`]) taken with this one allocation, 0 for none. Unwinding happens
    /// in userspace, so the kernel cannot group allocations by user stack: each kept allocation is its own site
    /// until userspace has unwound its sample and merged it with the others of the same stack.
    pub usample: u64,
}

/// Cumulative per-site totals, one copy per CPU (userspace sums them). Frees are credited back to the site that
/// made the allocation, so `alloc - free - oom_freed` is what the site still holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteCounters {
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub free_bytes: u64,
    pub free_count: u64,
    /// Freed by an OOM victim's exit or by the OOM reaper: kept apart so the picture "before the SIGKILL" can be
    /// rebuilt after the memory is gone.
    pub oom_freed_bytes: u64,
    pub oom_freed_count: u64,
}

impl SiteCounters {
    /// Adds `other` field by field (per-CPU copies, or a site's earlier totals).
    pub fn accumulate(&mut self, other: &SiteCounters) {
        self.alloc_bytes = self.alloc_bytes.wrapping_add(other.alloc_bytes);
        self.alloc_count = self.alloc_count.wrapping_add(other.alloc_count);
        self.free_bytes = self.free_bytes.wrapping_add(other.free_bytes);
        self.free_count = self.free_count.wrapping_add(other.free_count);
        self.oom_freed_bytes = self.oom_freed_bytes.wrapping_add(other.oom_freed_bytes);
        self.oom_freed_count = self.oom_freed_count.wrapping_add(other.oom_freed_count);
    }

    /// What was added since `old`, an earlier reading of the same site, field by field (never below zero).
    pub fn since(&self, old: &SiteCounters) -> SiteCounters {
        SiteCounters {
            alloc_bytes: self.alloc_bytes.saturating_sub(old.alloc_bytes),
            alloc_count: self.alloc_count.saturating_sub(old.alloc_count),
            free_bytes: self.free_bytes.saturating_sub(old.free_bytes),
            free_count: self.free_count.saturating_sub(old.free_count),
            oom_freed_bytes: self.oom_freed_bytes.saturating_sub(old.oom_freed_bytes),
            oom_freed_count: self.oom_freed_count.saturating_sub(old.oom_freed_count),
        }
    }

    /// Whether every allocation of the site was freed (none is left in LIVE to credit a later free to it).
    pub fn all_freed(&self) -> bool {
        self.alloc_count == self.free_count.wrapping_add(self.oom_freed_count)
    }
}

/// Set in `SiteKey::ustack` by userspace: the id is one of its unwound user stacks, not a kernel stack map's.
pub const USTACK_UNWOUND_BIT: i32 = 1 << 29;

/// Size of one chunk of a user stack copy: copies are made of whole 4 KiB chunks starting at the chunk that holds
/// the stack pointer, so every read has a constant size and offset (the verifier wants both), and a chunk past the
/// stack's end fails alone.
pub const USTACK_CHUNK: usize = 4096;
/// The most chunks a copy may hold (`--user-stack-bytes` up to 28 KiB): the scratch buffer is a per-CPU map value,
/// which the kernel limits to 32 KiB.
pub const USTACK_MAX_CHUNKS: usize = 7;

/// The head of a user stack sample in the `USTACKS` ring buffer; `len` bytes of stack follow it, copied from
/// `base` (the stack pointer's chunk, rounded down) upwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackSample {
    /// Unique per sample (a per-CPU sequence and the CPU), never 0: `SiteKey::usample` of the allocation.
    pub token: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The user registers an unwind starts from (x86-64: rip, rsp, rbp).
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub base: u64,
    pub len: u32,
    /// [`STACK_SAMPLE_FULL`]: the copy reached the configured size, so the stack may go on above it.
    pub flags: u32,
    /// A page's sample ([`STACK_SAMPLE_REGS`]): how the thread entered the kernel (`pt_regs.orig_ax` and `ss`,
    /// which under FRED carries the event's type and vector) and its general registers (`pt_regs` from r15 to
    /// di). Userspace tells a user page fault from them and works out the faulting address from the instruction
    /// at `ip`: that says in what kind of memory the page lies (a malloc heap, a thread stack, ...). A program on
    /// every page fault of the machine would cost each a program run.
    pub orig_ax: u64,
    pub ss: u64,
    pub gp: [u64; GP_REGS],
    /// The Python frames running on the thread, newest first (`PyProc`): `py_len` of `py`.
    pub py_len: u32,
    /// [`PY_TRUNCATED`]: the interpreter's frame chain went on past `PY_MAX_FRAMES`.
    pub py_flags: u32,
    pub py: [PyFrame; PY_MAX_FRAMES],
}

pub const STACK_SAMPLE_FULL: u32 = 1;
/// The sample carries the entry's registers (`StackSample::gp`).
pub const STACK_SAMPLE_REGS: u32 = 2;
/// x86-64 general registers in `struct pt_regs` order: r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx,
/// si, di.
pub const GP_REGS: usize = 15;
pub const GP_REG_NAMES: [&str; GP_REGS] =
    ["r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di"];

/// Python frames a sample holds at most: a service's stack is rarely deeper, and each costs a few reads.
pub const PY_MAX_FRAMES: usize = 32;
/// Threads of a Python process searched for the sampled one's thread state at most (once per thread: the
/// programs remember what they found).
pub const PY_MAX_THREADS: usize = 64;
pub const PY_TRUNCATED: u32 = 1;
/// Set in `PyFrame::code` of a frame that began a call of the interpreter's eval loop from C: the frames up to it
/// run in one native `_PyEval_EvalFrameDefault` frame. Code objects are aligned, so the low bit is free.
pub const PY_ENTRY_BIT: u64 = 1;
/// Set in `PyFrame::code` of the eval loop's own entry frame (3.12+, `PY_OWNER_CSTACK`): no Python code, but the
/// frame before it began that call of the loop.
pub const PY_CSTACK_BIT: u64 = 2;

/// One interpreter frame as the programs read it: its code object, and where it is in that code (an instruction
/// pointer from 3.11, the byte or instruction offset `f_lasti` before), which userspace turns into a line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrame {
    pub code: u64,
    pub instr: u64,
}

/// Where a Python process keeps its threads' frames, by the tgid in `PY_PROCS`: the `_PyRuntime` address and the
/// member offsets of its CPython version (from `_Py_DebugOffsets` from 3.13, known tables before), found by
/// userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    pub runtime: u64,
    /// `_PyRuntime.interpreters.head`, `PyInterpreterState` -> its first thread state.
    pub interp_head: u32,
    pub threads_head: u32,
    /// `PyThreadState`: the next thread's, and the `pthread_t` of its thread (its TLS block: the task's fs base).
    pub tstate_next: u32,
    pub tstate_thread_id: u32,
    /// `PyThreadState` -> the newest frame; through `_PyCFrame.current_frame` when `cframe_frame` is set (3.11,
    /// 3.12).
    pub tstate_frame: u32,
    pub cframe_frame: u32,
    /// The frame's code object, its caller's frame, its instruction.
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    /// `owner` (3.12+: a frame the C stack owns, `PY_OWNER_CSTACK`, marks an entry into the eval loop and is no
    /// Python code) and `is_entry` (3.11); `OFFSET_NONE` where the version has none.
    pub frame_owner: u32,
    pub frame_is_entry: u32,
    pub _pad: u32,
}

/// `_PyInterpreterFrame.owner` of the eval loop's entry frame (3.12+: `FRAME_OWNED_BY_CSTACK`).
pub const PY_OWNER_CSTACK: u8 = 3;

/// Where the programs find a task's saved user registers (`Config::regs_source`).
pub mod regs {
    /// The registers are not found on this kernel.
    pub const NONE: u32 = 0;
    /// `bpf_task_pt_regs(bpf_get_current_task_btf())` (5.15+).
    pub const HELPER: u32 = 1;
    /// The `struct pt_regs` at the top of the task's kernel stack (`task->stack + THREAD_SIZE`), before 5.15.
    pub const STACK_TOP: u32 = 2;
}

/// Set in a `SiteKey` stack id that lives in the second stack map (`STACKS_OVERFLOW`): the stack's bucket in the
/// first was taken by another stack.
pub const STACK_OVERFLOW_BIT: i32 = 1 << 30;

/// An allocation still outstanding, keyed by its address: the object's (slab) or its `struct page`'s (pages),
/// which lie in disjoint kernel address ranges.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveAlloc {
    pub site: SiteKey,
    /// The allocation stands for `1 << weight_shift` allocations (it was sampled with probability
    /// `2^-weight_shift`); `bytes` is already scaled by that weight.
    pub weight_shift: u32,
    pub bytes: u64,
}

/// The sampling weight (log2 of 1/p) of an allocation of `bytes` when about one byte in `2^rate_shift` is sampled
/// (`rate_shift` 0: every allocation is kept). The probability is the smallest power of two not below
/// `bytes / 2^rate_shift`: `p = 2^-k` with `k = rate_shift - ceil(log2 bytes)`, clamped to 0..=31, so a page
/// (4 KiB) under a 64 KiB rate is kept with p = 1/16 and anything of the rate's size or larger always.
/// Scaling each kept allocation by `1/p` makes every sum an unbiased (Horvitz-Thompson) estimate.
#[inline(always)]
pub fn sample_shift(bytes: u64, rate_shift: u32) -> u32 {
    if rate_shift == 0 || bytes == 0 {
        return 0;
    }
    let ceil_log2 = bit_len(bytes - 1);
    if ceil_log2 >= rate_shift {
        0
    } else {
        (rate_shift - ceil_log2).min(31)
    }
}

/// The sampling coin's generator, xorshift64* (Vigna): one step from a nonzero `state` gives the next state and
/// 32 random bits (the product's high half; its low bits are weak, and the coin tests low bits). Not for secrets:
/// it only has to be unpredictable to the workload's allocation pattern, which never sees it.
#[inline(always)]
pub fn next_random(mut state: u64) -> (u64, u32) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    (state, (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32)
}

/// A nonzero generator state from a 32-bit seed (a state of 0 would stay 0).
#[inline(always)]
pub fn seed_random(seed: u32) -> u64 {
    (seed as u64) << 32 | 0x9e37_79b9
}

/// The first step of a two-step coin for an allocation of at most `2^max_bits` bytes, tossed before its exact
/// size is known or its weight computed: the low `pre` bits of the random number must be zero, `pre` being the
/// weight of a `2^max_bits`-byte allocation, which no smaller allocation is below. Returns `pre`, or `None` when
/// the allocation is not kept (most events end here).
#[inline(always)]
pub fn coin_first(random: u32, rate_shift: u32, max_bits: u32) -> Option<u32> {
    let pre = if rate_shift > max_bits { (rate_shift - max_bits).min(31) } else { 0 };
    if pre != 0 && random & ((1u32 << pre) - 1) != 0 {
        return None;
    }
    Some(pre)
}

/// The second step, for the same random number: an allocation of `bytes` is kept when the further bits of its
/// weight are zero too, with probability 2^-weight as the one-step coin `sample_shift` gives. One larger than the
/// first step assumed was kept with that step's probability and carries its weight (still unbiased).
#[inline(always)]
pub fn coin_second(random: u32, pre: u32, bytes: u64, rate_shift: u32) -> Option<u32> {
    let shift = sample_shift(bytes, rate_shift);
    if shift <= pre {
        return Some(pre);
    }
    if random & ((1u32 << shift) - 1) != 0 {
        return None;
    }
    Some(shift)
}

/// How much rarer kept allocations become while the user stack samples' ring holds `avail` of its `size` bytes
/// (log2: a further coin keeps 1 in 2^n of them, and those kept weigh 2^n more). Nothing below half full; then
/// harder as it fills, so a reader that falls behind (a burst of new processes, a starved tracer) gets fewer
/// samples, each with its stack, rather than a full ring that loses the stacks of all. The last sixteenth keeps
/// 1 in 1,024: an agent starved of CPU by fifty busy containers (its fair share, 4 % of a core) stopped reading
/// for a second, and at 1 in 64 the ring still filled.
pub fn thinning_shift(avail: u64, size: u64) -> u32 {
    if avail * 2 <= size {
        0
    } else if avail * 4 <= size * 3 {
        1
    } else if avail * 8 <= size * 7 {
        3
    } else if avail * 16 <= size * 15 {
        6
    } else {
        10
    }
}

/// The thinning coin (`thinning_shift`) for an allocation kept with weight `shift`: kept with probability 2^-extra
/// (the low `extra` bits of `random` zero), then weighing 2^extra more, so sums stay unbiased. The weight stays a
/// shift of at most 31 (extra is cut to fit).
#[inline(always)]
pub fn thinned_weight(shift: u32, extra: u32, random: u32) -> Option<u32> {
    let extra = extra.min(31u32.saturating_sub(shift));
    if extra != 0 && random & ((1u32 << extra) - 1) != 0 {
        return None;
    }
    Some(shift + extra)
}

/// Number of significant bits (0 for 0). Written out because the BPF target has no count-leading-zeros.
#[inline(always)]
pub fn bit_len(mut v: u64) -> u32 {
    let mut n = 0;
    let mut step = 32;
    while step > 0 {
        if v >> step != 0 {
            v >>= step;
            n += step;
        }
        step >>= 1;
    }
    n + v as u32
}

/// An outstanding heap allocation of a process: user addresses repeat from one process to the next.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeapKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ptr: u64,
}

/// The allocator functions `--heap` probes, by how their arguments read (`HeapCall::func`).
pub mod heap_fn {
    /// `malloc(size)`, `calloc(n, size)`, `free(ptr)`: they call no other probed function, so a call needs an
    /// entry in `HEAP_CALLS` only when its allocation is kept.
    pub const MALLOC: u32 = 0;
    pub const CALLOC: u32 = 1;
    /// The rest may call `malloc` on the way (glibc's `realloc(NULL, n)`, `aligned_alloc` with a small
    /// alignment): every call is entered in `HEAP_CALLS`, so that the inner call is not counted a second time
    /// nor its stack unwound through the outer call's hijacked return address.
    /// `realloc(ptr, size)`:
    pub const REALLOC: u32 = 2;
    /// `reallocarray(ptr, n, size)`:
    pub const REALLOCARRAY: u32 = 3;
    /// `memalign(align, size)`, `aligned_alloc(align, size)`:
    pub const MEMALIGN: u32 = 4;
    /// `posix_memalign(&ptr, align, size)`: the pointer is read back at the return.
    pub const POSIX_MEMALIGN: u32 = 5;
    /// `valloc(size)`, `pvalloc(size)`, C++ `operator new(size, ...)` where the allocator defines it:
    pub const SIZED: u32 = 6;
}

/// `HeapCall::shift` of a call whose allocation was not kept (the call is entered only to fence inner calls).
pub const HEAP_NOT_KEPT: u32 = u32::MAX;

/// An allocator call in flight on a thread (keyed by thread id), from its entry to its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapCall {
    /// The stack pointer at the entry (pointing at the return address): the matching return's is 8 above it, an
    /// inner call's below it.
    pub sp: u64,
    pub bytes: u64,
    /// `realloc`: the block given back. `posix_memalign`: where the new pointer is stored.
    pub arg: u64,
    pub shift: u32,
    pub func: u32,
}

/// The last page a task took from the page allocator on this CPU, so that the anon charge that follows in the
/// same page fault can mark that page as anonymous.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingPage {
    pub tid: u32,
    pub _pad: u32,
    pub live_key: u64,
}

/// `PendingPage::live_key` of a page the sampler skipped: its anon charge is expected, not a missed page.
pub const PENDING_UNSAMPLED: u64 = u64::MAX;

pub const COMM_LEN: usize = 16;

/// Sent through the ring buffer at `oom:mark_victim`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomEvent {
    pub ktime_ns: u64,
    pub victim_pid: u32,
    /// The task that ran into the OOM (`current`): often not the victim.
    pub trigger_tid: u32,
    pub trigger_tgid: u32,
    /// 1 when the victim's RSS fields exist in this kernel's tracepoint layout.
    pub has_rss: u32,
    /// memcg of the triggering task (0 when unknown).
    pub trigger_memcg: u64,
    /// In kB, as the tracepoint reports them.
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub victim_comm: [u8; COMM_LEN],
    pub trigger_comm: [u8; COMM_LEN],
}

/// Sent through the `EXITS` ring buffer when a process of the target ends (its main thread exits) in a way worth a
/// line of its own: by a signal, or with a non-zero status after living at least [`EXIT_MIN_LIFE_NS`]. Every other
/// exit is only counted (`exit_count`), so a cgroup that runs thousands of short commands cannot flood userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitEvent {
    pub ktime_ns: u64,
    /// When the process started (`task_struct.start_time`, the same clock as `ktime_ns`).
    pub start_ns: u64,
    pub pid: u32,
    /// `task_struct.exit_code`: the killing signal in the low 7 bits (0x80: core dumped), else the status << 8.
    pub exit_code: u32,
    /// The last fatal signal sent to the process before it died (0: none seen), and who sent it.
    pub signal: u32,
    pub sender_pid: u32,
    /// 1 when the sender sits in the target itself (a fault's signal, a parent killing its child).
    pub sender_in_target: u32,
    /// 1 when the OOM killer had chosen the process (`oom:mark_victim`).
    pub oom_victim: u32,
    pub comm: [u8; COMM_LEN],
    pub sender_comm: [u8; COMM_LEN],
}

/// A fatal signal sent to a process of the target, kept by the receiving process's pid until it exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SignalSent {
    pub signal: u32,
    pub sender_pid: u32,
    pub sender_in_target: u32,
    pub _pad: u32,
    pub sender_comm: [u8; COMM_LEN],
}

/// Non-zero exits of processes younger than this are counted, not sent: a failing helper command is no death of
/// the service.
pub const EXIT_MIN_LIFE_NS: u64 = 1_000_000_000;

/// Indices into the per-CPU `EXIT_COUNTS` array: exits counted but not sent, and exits lost to a full ring buffer.
pub mod exit_count {
    pub const UNRECORDED: u32 = 0;
    pub const DROPPED: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// `task_struct` offsets the exit and signal programs read, from BTF (a global of its own beside [`Config`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitConfig {
    pub task_exit_code: u32,
    pub task_start_time: u32,
    pub task_tgid: u32,
    pub _pad: u32,
}

impl ExitConfig {
    pub const fn unset() -> Self {
        ExitConfig { task_exit_code: OFFSET_NONE, task_start_time: OFFSET_NONE, task_tgid: OFFSET_NONE, _pad: 0 }
    }
}

/// Indices into the per-CPU `COUNTERS` array: everything the kernel side could not record, and what it kept.
pub mod counter {
    pub const KSTACK_COLLISION: u32 = 0;
    pub const USTACK_COLLISION: u32 = 1;
    pub const STACK_ERROR: u32 = 2;
    pub const LIVE_MAP_FULL: u32 = 3;
    pub const SITE_MAP_FULL: u32 = 4;
    pub const RINGBUF_DROP: u32 = 5;
    /// Allocation at an address already tracked: the earlier one was freed without us seeing it.
    pub const IMPLICIT_FREE: u32 = 6;
    /// Pages charged as anon to the target without a matching page record (remote charges, missed allocs).
    pub const ANON_CHARGE_UNMATCHED: u32 = 7;
    /// Allocation events kept (target tasks) and frees matched.
    pub const ALLOC_EVENTS: u32 = 8;
    pub const FREE_EVENTS: u32 = 9;
    pub const OOM_EVENTS: u32 = 10;
    /// User stack samples sent, and those lost: no user registers (kernel threads), the stack unreadable, the
    /// sample ring buffer full, or the scratch buffers of this CPU busy (nested programs).
    pub const USTACK_SAMPLES: u32 = 11;
    pub const USTACK_NO_REGS: u32 = 12;
    pub const USTACK_UNREADABLE: u32 = 13;
    pub const USTACK_RINGBUF_DROP: u32 = 14;
    pub const USTACK_NESTED: u32 = 15;
    /// Kept pages khugepaged collapsed into a huge page: not credited as freed (the memory lives on).
    pub const COLLAPSED: u32 = 16;
    /// `--heap`: kept allocator calls lost because the table of calls in flight was full, and allocator returns
    /// that did not match their call (a `longjmp` out of the allocator, a probe detached mid-call).
    pub const HEAP_CALLS_FULL: u32 = 17;
    pub const HEAP_UNMATCHED_RETURN: u32 = 18;
    /// Samples of Python processes that carry the thread's Python frames, and those whose thread had no thread
    /// state the programs found (a thread Python did not start, or more threads than they search).
    pub const PY_STACKS: u32 = 19;
    pub const PY_NO_THREAD: u32 = 20;
    /// Kept allocations that took the kernel stack walked last time on the same path instead of walking it, and
    /// the rechecks that found the path's stack changed (the new one is reused from then on).
    pub const KSTACK_REUSED: u32 = 21;
    pub const KSTACK_CHANGED: u32 = 22;
    /// Allocations the coin kept that a further coin left out because the user stack ring was filling
    /// (`thinning_shift`).
    pub const USTACK_THINNED: u32 = 23;
    pub const COUNT: u32 = 24;
}

/// Marks a record field or struct member this kernel does not have.
pub const OFFSET_NONE: u32 = u32::MAX;
/// Memcg item numbers not present in this kernel's BTF.
pub const ITEM_NONE: i32 = -1;

/// Positions of the raw tracepoint arguments the programs read (TP_PROTO order, from 0). Fixed, because the
/// verifier refuses context reads at computed offsets; userspace checks each one's type in the kernel's
/// `btf_trace_<event>` prototype before attaching, and leaves an event untraced when it differs.
pub mod arg {
    /// mm_page_alloc (struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype)
    pub const PAGE_ALLOC_PAGE: usize = 0;
    pub const PAGE_ALLOC_ORDER: usize = 1;
    pub const PAGE_ALLOC_GFP: usize = 2;
    /// mm_page_free (struct page *page, unsigned int order)
    pub const PAGE_FREE_PAGE: usize = 0;
    /// kmalloc (unsigned long call_site, const void *ptr, size_t bytes_req, size_t bytes_alloc, ...)
    pub const KMALLOC_PTR: usize = 1;
    pub const KMALLOC_BYTES_ALLOC: usize = 3;
    /// kfree, kmem_cache_free (unsigned long call_site, const void *ptr, ...)
    pub const FREE_PTR: usize = 1;
    /// kmem_cache_alloc: (call_site, ptr, bytes_req, bytes_alloc, ...) before 6.1; (call_site, ptr,
    /// struct kmem_cache *s, ...) from 6.1, the object size being the cache's.
    pub const CACHE_ALLOC_PTR: usize = 1;
    pub const CACHE_ALLOC_BYTES_ALLOC: usize = 3;
    pub const CACHE_ALLOC_CACHE: usize = 2;
    /// mod_memcg_lruvec_state (struct mem_cgroup *memcg, int item, int val)
    pub const MEMCG: usize = 0;
    pub const MEMCG_ITEM: usize = 1;
    pub const MEMCG_VAL: usize = 2;
    /// signal_generate (int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
    pub const SIGNAL_SIG: usize = 0;
    pub const SIGNAL_TASK: usize = 2;
    /// sched_process_fork (struct task_struct *parent, struct task_struct *child)
    pub const FORK_CHILD: usize = 1;
}

/// Everything the programs need to know about this kernel, discovered by userspace and set as one global before
/// load. Nothing here is hard-coded for a kernel version.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// 1 when kmem_cache_alloc passes its cache (`arg::CACHE_ALLOC_CACHE`), 0 when it passes the size.
    pub cache_alloc_has_cache: u32,
    // oom:mark_victim record offsets
    pub victim_pid: u32,
    pub victim_comm: u32,
    pub victim_total_vm: u32,
    pub victim_anon_rss: u32,
    pub victim_file_rss: u32,
    pub victim_shmem_rss: u32,
    /// NR_ANON_MAPPED (enum node_stat_item), resolved from BTF.
    pub item_anon_mapped: i32,
    /// 1 when memcg anon charges are traced (`memcg-anon-charges`): page allocations then leave their page for the
    /// charge that follows.
    pub anon_by_charge: u32,
    /// The `__GFP_ACCOUNT` bit of gfp flags (0 when unknown: then every page counts as `PAGE`).
    pub gfp_account: u32,
    /// Fallback for kernels without `memcg:mod_memcg_lruvec_state`: a page allocation is anon when its gfp flags
    /// hold every bit of `gfp_user` (`__GFP_HARDWALL | __GFP_MOVABLE`: user pages), no `__GFP_ACCOUNT`, and
    /// either `gfp_zero` (`__GFP_ZERO`: anonymous page faults) or every bit of `gfp_thp` (`__GFP_COMP |
    /// __GFP_NOMEMALLOC`: transparent huge pages). 0 = off (the memcg charge tells anon pages apart instead).
    pub gfp_user: u32,
    pub gfp_zero: u32,
    pub gfp_thp: u32,
    // Struct member offsets from BTF. The task -> memory cgroup id walk:
    // task_struct.cgroups -> css_set.subsys[memory_cgrp_id] -> css.cgroup -> cgroup.kn -> kernfs_node.id
    pub task_cgroups: u32,
    pub css_set_memory_subsys: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// mem_cgroup.css: from a memcg tracepoint's memcg to its cgroup id.
    pub memcg_css: u32,
    /// kmem_cache.size (bytes per object) and kmem_cache.name.
    pub kmem_cache_size: u32,
    pub kmem_cache_name: u32,
    /// The `oom_reaper` kernel thread: its frees are frees caused by an OOM kill.
    pub oom_reaper_pid: u32,
    /// The `khugepaged` kernel thread: its frees of small pages collapse them into a huge page, whose memory lives
    /// on for the process.
    pub khugepaged_pid: u32,
    pub page_size: u32,
    /// log2 of the sampling rate in bytes (see `sample_shift`); 0 records every allocation.
    pub sample_rate_shift: u32,
    /// Where the user registers are read (a `regs::*` source), and how user stacks are taken: a copy of this many
    /// `USTACK_CHUNK`s of stack for userspace to unwind, or (0) a frame-pointer walk by the kernel.
    pub regs_source: u32,
    pub ustack_chunks: u32,
    /// `regs::STACK_TOP`: task_struct.stack, THREAD_SIZE and sizeof(struct pt_regs).
    pub task_stack: u32,
    pub thread_size: u32,
    pub pt_regs_size: u32,
    /// struct pt_regs members.
    pub regs_ip: u32,
    pub regs_sp: u32,
    pub regs_bp: u32,
    pub regs_cs: u32,
    /// How the task entered the kernel: a system call's number; an exception's or interrupt's -1 (or, under
    /// FRED, a fault's error code).
    pub regs_orig_ax: u32,
    /// `pt_regs.ss`, and `pt_regs.r15`, the first of the `GP_REGS` (OFFSET_NONE unless they follow it 8 bytes
    /// apart in that order).
    pub regs_ss: u32,
    pub regs_gp: u32,
    /// `task_struct.thread.fsbase`: a thread's TLS block, which is its `pthread_t` (Python frames: which thread
    /// state is the current thread's).
    pub task_fsbase: u32,
    /// 1: every program returns at once (the benchmark's floor: what attaching alone costs).
    pub floor: u32,
    /// 1: a kept allocation may take the kernel stack walked before on the same path (`KSTACK_REUSE`).
    pub kstack_reuse: u32,
    pub _pad: u32,
}

impl Config {
    pub const fn unset() -> Self {
        Config {
            cache_alloc_has_cache: 0,
            victim_pid: OFFSET_NONE,
            victim_comm: OFFSET_NONE,
            victim_total_vm: OFFSET_NONE,
            victim_anon_rss: OFFSET_NONE,
            victim_file_rss: OFFSET_NONE,
            victim_shmem_rss: OFFSET_NONE,
            item_anon_mapped: ITEM_NONE,
            anon_by_charge: 0,
            gfp_account: 0,
            gfp_user: 0,
            gfp_zero: 0,
            gfp_thp: 0,
            task_cgroups: OFFSET_NONE,
            css_set_memory_subsys: OFFSET_NONE,
            css_cgroup: OFFSET_NONE,
            cgroup_kn: OFFSET_NONE,
            kn_id: OFFSET_NONE,
            memcg_css: OFFSET_NONE,
            kmem_cache_size: OFFSET_NONE,
            kmem_cache_name: OFFSET_NONE,
            oom_reaper_pid: 0,
            khugepaged_pid: 0,
            page_size: 4096,
            sample_rate_shift: 0,
            regs_source: regs::NONE,
            ustack_chunks: 0,
            task_stack: OFFSET_NONE,
            thread_size: 0,
            pt_regs_size: 0,
            regs_ip: OFFSET_NONE,
            regs_sp: OFFSET_NONE,
            regs_bp: OFFSET_NONE,
            regs_cs: OFFSET_NONE,
            regs_orig_ax: OFFSET_NONE,
            regs_ss: OFFSET_NONE,
            regs_gp: OFFSET_NONE,
            task_fsbase: OFFSET_NONE,
            floor: 0,
            kstack_reuse: 0,
            _pad: 0,
        }
    }
}

/// Slab cache names are hashed in the kernel (FNV-1a, top bit cleared) to keep site keys small.
pub const CACHE_NAME_LEN: usize = 32;

pub const fn fnv1a_step(hash: u32, byte: u8) -> u32 {
    (hash ^ byte as u32).wrapping_mul(0x0100_0193)
}
pub const FNV_OFFSET: u32 = 0x811c_9dc5;

/// Userspace twin of the in-kernel cache name hash.
pub fn cache_name_hash(name: &[u8]) -> u32 {
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < name.len() && i < CACHE_NAME_LEN && name[i] != 0 {
        h = fnv1a_step(h, name[i]);
        i += 1;
    }
    (h & !CACHE_KMALLOC_BIT).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_starts_past_half_full_and_grows_as_the_ring_fills() {
        let size = 4u64 << 20;
        let avail =
            [0, size / 4, size / 2, size / 2 + 1, size * 3 / 4, size * 7 / 8, size * 15 / 16, size * 15 / 16 + 1, size];
        assert_eq!(avail.map(|a| thinning_shift(a, size)), [0, 0, 0, 1, 1, 3, 6, 10, 10]);
    }

    /// Over every low-bit pattern of the random number, a thinned allocation is kept 1 in 2^extra times with 2^extra
    /// times its weight: as many allocations are stood for as without thinning.
    #[test]
    fn thinning_keeps_the_estimate_unbiased() {
        for (shift, extra) in [(7u32, 0u32), (7, 1), (7, 3), (7, 6), (7, 10), (0, 6), (29, 6), (31, 3)] {
            let n = 1u32 << 12;
            let stood_for: u64 = (0..n).filter_map(|r| thinned_weight(shift, extra, r)).map(|w| 1u64 << w).sum();
            let cut = extra.min(31 - shift);
            assert_eq!(stood_for, u64::from(n) << shift, "shift {shift} extra {extra}");
            assert_eq!((0..n).filter(|&r| thinned_weight(shift, extra, r).is_some()).count() as u32, n >> cut);
        }
    }

    #[test]
    fn bit_len_matches_leading_zeros() {
        for v in [0u64, 1, 2, 3, 4095, 4096, 4097, 65535, 1 << 40, u64::MAX] {
            assert_eq!(bit_len(v), 64 - v.leading_zeros(), "{v}");
        }
    }

    /// Over every low-bit pattern of the random number, the two-step coin keeps an allocation exactly as often as
    /// its weight says, and no differently from the one-step coin, whatever its size.
    #[test]
    fn the_two_step_coin_keeps_with_the_probability_of_its_weight() {
        let rate = 19;
        for bytes in [1u64, 64, 100, 4096, 8192, 32768, 40000, 1 << 20] {
            let mut kept = 0u64;
            let mut weighted = 0f64;
            let n = 1u32 << 20;
            for random in 0..n {
                if let Some(w) = coin_first(random, rate, 15).and_then(|pre| coin_second(random, pre, bytes, rate)) {
                    kept += 1;
                    weighted += (1u64 << w) as f64;
                }
            }
            // Each kept allocation stands for 2^w: over all 2^20 patterns they add up to 2^20 allocations.
            assert_eq!(weighted, n as f64, "{bytes} bytes: the estimate is unbiased");
            let one_step = (0..n).filter(|r| r & ((1u32 << sample_shift(bytes, rate)) - 1) == 0).count() as u64;
            if bytes <= 1 << 15 {
                assert_eq!(kept, one_step, "{bytes} bytes: the same probability as the one-step coin");
            } else {
                assert!(kept < one_step, "{bytes} bytes: larger than assumed, kept with the first step's probability");
            }
        }
        // A first step assuming no bound passes always: the second alone is the one-step coin.
        for random in [0u32, 1, 0xffff, 0x8_0000, u32::MAX] {
            assert_eq!(coin_first(random, 19, u32::MAX), Some(0));
            for bytes in [1u64, 4096, 65536, 1 << 20] {
                let one_step = sample_shift(bytes, 19);
                let kept = random & ((1u32 << one_step) - 1) == 0;
                assert_eq!(coin_second(random, 0, bytes, 19), kept.then_some(one_step), "{random:#x} {bytes}");
            }
        }
        assert_eq!(coin_first(12345, 0, 15), Some(0), "rate 0 keeps everything");
        assert_eq!(coin_second(12345, 0, 4096, 0), Some(0));
    }

    /// The coin tests the low bits: from any seed, the generator's low 7 and 19 bits are zero as often as a fair
    /// coin's (1/128 and 1/2^19 of tosses, within a few standard deviations), and consecutive tosses are not
    /// kept together more often than chance (a burst would make one allocation pattern's every page kept).
    #[test]
    fn the_coin_generator_is_fair_in_its_low_bits() {
        for seed in [0u32, 1, 0xdead_beef, u32::MAX] {
            let mut state = seed_random(seed);
            assert_ne!(state, 0);
            let n = 1u64 << 24;
            let (mut low7, mut low19, mut pairs, mut last) = (0u64, 0u64, 0u64, false);
            for _ in 0..n {
                let (next, r) = next_random(state);
                state = next;
                let kept = r & 127 == 0;
                low7 += kept as u64;
                low19 += (r & ((1 << 19) - 1) == 0) as u64;
                pairs += (kept && last) as u64;
                last = kept;
            }
            let within = |got: u64, p: f64| (got as f64 - n as f64 * p).abs() <= 5.0 * (n as f64 * p).sqrt();
            assert!(within(low7, 1.0 / 128.0), "seed {seed:#x}: low 7 bits zero {low7} times of {n}");
            assert!(within(low19, 1.0 / (1 << 19) as f64), "seed {seed:#x}: low 19 bits zero {low19} times");
            assert!(within(pairs, 1.0 / (128.0 * 128.0)), "seed {seed:#x}: {pairs} kept pairs");
        }
    }

    #[test]
    fn sample_shift_keeps_at_least_bytes_over_rate() {
        // 64 KiB rate: a page is kept 1 in 16, a 100-byte object 1 in 512 (>= 100/65536), big ones always.
        assert_eq!(sample_shift(4096, 16), 4);
        assert_eq!(sample_shift(100, 16), 9);
        assert_eq!(sample_shift(65536, 16), 0);
        assert_eq!(sample_shift(1 << 20, 16), 0);
        assert_eq!(sample_shift(1, 40), 31, "clamped to what a u32 random can decide");
        assert_eq!(sample_shift(4096, 0), 0, "rate 0 records everything");
        for bytes in 1..5000u64 {
            let k = sample_shift(bytes, 16);
            let p = 1.0 / (1u64 << k) as f64;
            assert!(p >= bytes as f64 / 65536.0 && p < 2.0 * bytes as f64 / 65536.0 + 1e-12, "{bytes}: p {p}");
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and made only of integers with explicit padding.
    unsafe impl aya::Pod for SiteKey {}
    unsafe impl aya::Pod for SiteCounters {}
    unsafe impl aya::Pod for LiveAlloc {}
    unsafe impl aya::Pod for OomEvent {}
    unsafe impl aya::Pod for StackSample {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ExitEvent {}
    unsafe impl aya::Pod for SignalSent {}
    unsafe impl aya::Pod for ExitConfig {}
    unsafe impl aya::Pod for HeapKey {}
    unsafe impl aya::Pod for PyProc {}
}
