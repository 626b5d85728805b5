//! Unwinding one user stack sample: the registers and stack copy the kernel side took, walked with the call frame
//! information of the process's objects (framehop), falling back to frame pointers in code without it.
use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64},
    Unwinder,
};
use leak_common::StackSample;
use serde::{Deserialize, Serialize};

use super::process::Process;

/// How a frame was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The leaf: the instruction pointer the kernel saved.
    Regs,
    /// From the callee's DWARF call frame information (`.eh_frame`, `.debug_frame`).
    Dwarf,
    /// From the callee's frame pointer: the callee's object has no call frame information.
    Fp,
    /// In JIT code (anonymous executable memory), found by the frame pointer of its callee.
    Jit,
    /// A Python function, from the interpreter's own frame chain (its address is the frame's id in
    /// `stacks::python`).
    Python,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Regs => "regs",
            Method::Dwarf => "dwarf",
            Method::Fp => "fp",
            Method::Jit => "jit",
            Method::Python => "python",
        }
    }
}

/// A frame of an unwound stack: the address to look up (a return address less one, so that it falls in the call
/// instruction, whatever follows it) and how it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserFrame {
    pub address: u64,
    pub method: Method,
}

/// Why a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// At the stack's root (`_start`, a thread's start): the call frame information says there is no caller.
    Root,
    /// It needed stack memory beyond the copy.
    Truncated,
    /// The next address was not code: non-canonical, in no executable mapping, or in a data section.
    NotCode,
    /// The unwinder gave up (no rule, a loop, a null return address), or the frame limit was reached.
    Failed,
}

pub struct Walk {
    pub frames: Vec<UserFrame>,
    pub end: End,
    /// How far above the stack pointer the walk read: the copy size this stack needed.
    pub depth: u64,
}

/// Frames kept of one stack at most.
pub const MAX_FRAMES: usize = 128;

/// The highest user address on x86-64 (47-bit address space; 57-bit with 5-level paging is not used by
/// ordinary processes' stacks).
const USER_MAX: u64 = 0x0000_7fff_ffff_ffff;

pub fn walk(process: &Process, sample: &StackSample, stack: &[u8], cache: &mut CacheX86_64) -> Walk {
    let base = sample.base;
    let mut depth = 0u64;
    let mut ran_off = false;
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        let off = addr.checked_sub(base).ok_or(())? as usize;
        match stack.get(off..off + 8) {
            Some(b) => {
                depth = depth.max(addr + 8 - sample.sp.min(addr));
                Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            None => {
                ran_off = true;
                Err(())
            }
        }
    };
    let regs = UnwindRegsX86_64::new(sample.ip, sample.sp, sample.bp);
    let mut iter = process.unwinder.iter_frames(sample.ip, regs, cache, &mut read_stack);
    let mut frames: Vec<UserFrame> = Vec::new();
    let mut caller_has_cfi = false;
    let end = loop {
        if frames.len() == MAX_FRAMES {
            break End::Failed;
        }
        let address = match iter.next() {
            Ok(Some(a)) => a.address_for_lookup(),
            Ok(None) => break End::Root,
            Err(_) => break End::Failed,
        };
        let Some(region) = (address != 0 && address <= USER_MAX).then(|| process.region(address)).flatten() else {
            break End::NotCode;
        };
        if !region.is_code(address) {
            break End::NotCode;
        }
        let method = match (frames.is_empty(), region.jit, caller_has_cfi) {
            (true, _, _) => Method::Regs,
            (false, true, _) => Method::Jit,
            (false, false, true) => Method::Dwarf,
            (false, false, false) => Method::Fp,
        };
        caller_has_cfi = region.has_cfi();
        frames.push(UserFrame { address, method });
    };
    let end = if end == End::Failed && ran_off { End::Truncated } else { end };
    Walk { frames, end, depth }
}

#[cfg(test)]
pub(super) mod tests {
    use std::{hint::black_box, os::unix::fs::FileExt};

    use leak_common::USTACK_CHUNK;

    use super::*;
    use crate::stacks::{process::Objects, symbolize::Symbolizer};

    /// This thread's registers and the top of its stack, as the kernel side would send them: whole chunks from
    /// the stack pointer's chunk up, read through /proc/self/mem so the copy ends where the mapping does.
    #[inline(never)]
    fn sample_here() -> (StackSample, Vec<u8>) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, touches no memory.
        unsafe {
            std::arch::asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp", ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp)
        };
        let base = sp & !(USTACK_CHUNK as u64 - 1);
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let mut stack = Vec::new();
        let mut chunk = vec![0u8; USTACK_CHUNK];
        while stack.len() < 7 * USTACK_CHUNK && mem.read_exact_at(&mut chunk, base + stack.len() as u64).is_ok() {
            stack.extend_from_slice(&chunk);
        }
        let pid = std::process::id();
        let sample = StackSample {
            token: 1,
            tgid: pid,
            tid: pid,
            ip,
            sp,
            bp,
            base,
            len: stack.len() as u32,
            flags: 0,
            ..Default::default()
        };
        (sample, stack)
    }

    #[inline(never)]
    fn leaf_of_the_walk() -> (StackSample, Vec<u8>) {
        black_box(sample_here())
    }

    #[inline(never)]
    pub(in crate::stacks) fn caller_of_the_leaf(n: u32) -> (StackSample, Vec<u8>) {
        // Work after the call keeps this a real frame (no tail call).
        let s = leaf_of_the_walk();
        black_box(n);
        s
    }

    /// The test binary is built with the release profile's defaults (no frame pointers forced): the walk must go
    /// through every caller by CFI alone.
    #[test]
    fn unwinds_this_thread_through_its_callers() {
        let (sample, stack) = black_box(caller_of_the_leaf(black_box(7)));
        let mut objects = Objects::default();
        let process = crate::stacks::process::Process::read(sample.tgid, &mut objects).unwrap();
        let walk = walk(&process, &sample, &stack, &mut CacheX86_64::new());
        assert!(walk.frames.len() >= 4, "{:?}", walk.frames);
        assert_eq!(walk.frames[0].method, Method::Regs);
        assert!(walk.frames[1..].iter().all(|f| f.method == Method::Dwarf), "{:?}", walk.frames);
        let addrs: Vec<u64> = walk.frames.iter().map(|f| f.address).collect();
        let names: Vec<String> =
            Symbolizer::new().user(sample.tgid, &addrs).into_iter().filter_map(|f| f.symbol).collect();
        let at = |name: &str| names.iter().position(|n| n.contains(name));
        let (leaf, caller, test) =
            (at("sample_here"), at("caller_of_the_leaf"), at("unwinds_this_thread_through_its_callers"));
        assert!(leaf.is_some() && leaf < caller && caller < test, "{names:?}");
        assert!(walk.depth > 0 && walk.depth < stack.len() as u64);
    }

    #[test]
    fn a_copy_cut_short_says_truncated() {
        let (mut sample, stack) = black_box(caller_of_the_leaf(black_box(3)));
        let mut objects = Objects::default();
        let process = crate::stacks::process::Process::read(sample.tgid, &mut objects).unwrap();
        // Only the stack pointer's own chunk: the walk needs more.
        let cut = &stack[..(sample.sp - sample.base) as usize + 16];
        sample.len = cut.len() as u32;
        let walk = walk(&process, &sample, cut, &mut CacheX86_64::new());
        assert_eq!(walk.end, End::Truncated, "{:?}", walk.frames);
        assert!(!walk.frames.is_empty());
    }

    #[test]
    fn garbage_never_becomes_a_frame() {
        let (mut sample, stack) = black_box(caller_of_the_leaf(black_box(5)));
        let mut objects = Objects::default();
        let process = crate::stacks::process::Process::read(sample.tgid, &mut objects).unwrap();
        // A fill byte where the instruction pointer should be, as a frame-pointer walk through memset finds.
        sample.ip = 0x2b2b_2b2b_2b2b_2b2b;
        let walk = walk(&process, &sample, &stack, &mut CacheX86_64::new());
        assert_eq!((walk.frames.len(), walk.end), (0, End::NotCode));
    }
}
