//! The Python frames of the sampled thread, for processes userspace found to run CPython (`PY_PROCS`).
//!
//! The interpreter keeps its frames in its own memory, not on the C stack: a native unwind only shows
//! `_PyEval_EvalFrameDefault` where the Python functions run. So at each kept sample the program finds the
//! thread's `PyThreadState` (the one whose `thread_id`, a `pthread_t`, is the task's TLS base) and walks its frame
//! chain, copying each frame's code object pointer and instruction; userspace reads the names from the code
//! objects, which live as long as their functions. A thread's state is remembered (`PY_THREADS`), and checked
//! again at each use: a thread id is reused after its thread exits.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_user, generated as gen},
    macros::map,
    maps::{HashMap, LruHashMap},
};
use leak_common::{
    counter, PyFrame, PyProc, OFFSET_NONE, PY_CSTACK_BIT, PY_ENTRY_BIT, PY_MAX_FRAMES, PY_MAX_THREADS, PY_OWNER_CSTACK,
    PY_TRUNCATED,
};

use crate::{cfg, count, read_at, CONFIG};

/// Python processes by tgid, written by userspace when it first reads a process.
#[map]
static PY_PROCS: HashMap<u32, PyProc> = HashMap::with_max_entries(4096, 0);

/// Thread id -> its thread state's address, found once per thread.
#[map]
static PY_THREADS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn user<T>(addr: u64, offset: u32) -> Option<T> {
    if addr == 0 || offset == OFFSET_NONE {
        return None;
    }
    unsafe { bpf_probe_read_user((addr + offset as u64) as *const T) }.ok()
}

/// `size` bytes (at most 8) at `addr + offset`, 0 when unreadable or absent: no branch for the verifier to follow
/// in the frame loop, whose every path it walks.
#[inline(always)]
fn word(addr: u64, offset: u32, size: u32) -> u64 {
    let mut v = 0u64;
    if offset != OFFSET_NONE {
        unsafe {
            gen::bpf_probe_read_user(&mut v as *mut u64 as *mut _, size, (addr + offset as u64) as *const _);
        }
    }
    v
}

/// Fills `out` with the thread's interpreter frames, newest first; returns how many, and `PY_TRUNCATED` when
/// there were more. The eval loop's entry frames of 3.12+ are kept too, marked `PY_CSTACK_BIT`: userspace drops
/// them and marks the frame before as the entry (kept here, the loop has one index and nothing to decide).
/// Nothing for a process that is not Python.
#[inline(always)]
pub fn frames(tgid: u32, tid: u32, out: &mut [PyFrame; PY_MAX_FRAMES]) -> (u32, u32) {
    let Some(p) = (unsafe { PY_PROCS.get(&tgid) }) else { return (0, 0) };
    let Some(tstate) = thread_state(p, tid) else {
        count(counter::PY_NO_THREAD, 1);
        return (0, 0);
    };
    let mut frame = word(tstate, p.tstate_frame, 8);
    if p.cframe_frame != OFFSET_NONE && frame != 0 {
        frame = word(frame, p.cframe_frame, 8);
    }
    let mut n = 0;
    for slot in out.iter_mut() {
        if frame == 0 {
            return (n, 0);
        }
        let cstack = word(frame, p.frame_owner, 1) == PY_OWNER_CSTACK as u64;
        let entry = word(frame, p.frame_is_entry, 1) != 0;
        slot.code = word(frame, p.frame_code, 8)
            | if entry { PY_ENTRY_BIT } else { 0 }
            | if cstack { PY_CSTACK_BIT } else { 0 };
        slot.instr = word(frame, p.frame_instr, 8);
        n += 1;
        frame = word(frame, p.frame_previous, 8);
    }
    (n, if frame != 0 { PY_TRUNCATED } else { 0 })
}

/// The thread state of thread `tid`: remembered, or searched for among the main interpreter's threads.
#[inline(always)]
fn thread_state(p: &PyProc, tid: u32) -> Option<u64> {
    let fsbase: u64 = unsafe { read_at(bpf_get_current_task() as *const u8, cfg(&CONFIG.task_fsbase)) }?;
    if fsbase == 0 {
        return None;
    }
    if let Some(&known) = unsafe { PY_THREADS.get(&tid) } {
        if user::<u64>(known, p.tstate_thread_id) == Some(fsbase) {
            return Some(known);
        }
    }
    let interp: u64 = user(p.runtime, p.interp_head)?;
    let mut t: u64 = user(interp, p.threads_head)?;
    let mut i = 0;
    while i < PY_MAX_THREADS {
        i += 1;
        if t == 0 {
            return None;
        }
        if user::<u64>(t, p.tstate_thread_id) == Some(fsbase) {
            let _ = PY_THREADS.insert(&tid, &t, 0);
            return Some(t);
        }
        t = user(t, p.tstate_next)?;
    }
    None
}
