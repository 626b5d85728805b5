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
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Regs => "regs",
            Method::Dwarf => "dwarf",
            Method::Fp => "fp",
            Method::Jit => "jit",
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
    drop(iter);
    let end = if end == End::Failed && ran_off { End::Truncated } else { end };
    Walk { frames, end, depth }
}
