//! Stacks: the user stack samples the kernel side sends (registers and a copy of the top of the stack, one per
//! kept allocation) unwound here and deduplicated, the kernel's per-sample site keys mapped onto them, and every
//! stack's addresses symbolized (`symbolize`).
//!
//! The kernel cannot group allocations by a user stack it does not unwind, so each kept allocation carries its
//! own sample token in `SiteKey::usample`. [`UserStacks::canonical`] turns such a key into the key of its
//! unwound stack (`USTACK_UNWOUND_BIT | id`), so allocations from the same code merge again; frees keep landing
//! on the token's entry in the kernel, found by the one LIVE lookup every free makes anyway.
pub mod maps;
mod object;
pub mod perfmap;
mod process;
pub mod symbolize;
pub mod unwind;

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsRawFd, RawFd},
};

use aya::maps::{MapData, RingBuf};
use framehop::x86_64::CacheX86_64;
use leak_common::{SiteCounters, SiteKey, StackSample, STACK_SAMPLE_FULL, USTACK_UNWOUND_BIT};
use serde::{Deserialize, Serialize};

use process::{Objects, Process};
pub use unwind::{Method, UserFrame};

/// Distinct unwound stacks kept; past this, new stacks are counted in `UnwindStats::stacks_dropped` and their
/// sites go without user frames.
const MAX_STACKS: usize = 1 << 16;

/// How often a process whose stacks lead into unknown code is read again.
const REREAD_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

const ENOENT: i32 = 2;
const E2BIG: i32 = 7;

/// `collection.unwind` in report.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnwindStats {
    /// User stack samples the kernel side sent, and those userspace unwound to at least one frame.
    pub samples: u64,
    pub unwound: u64,
    /// Frames found, by method (`regs`, `dwarf`, `fp`, `jit`).
    pub frames: BTreeMap<String, u64>,
    /// Walks that ended at the stack's root, and those that stopped early: needing stack beyond the copy
    /// (raise `--user-stack-bytes`), at an address that is not code, or where the unwinder gave up.
    pub reached_root: u64,
    pub truncated: u64,
    pub ended_not_code: u64,
    pub failed: u64,
    /// Samples of processes whose mappings could not be read (gone before their first sample was read).
    pub no_process: u64,
    /// Samples the kernel side could not take: no user registers (kernel threads), stack unreadable, the sample
    /// ring buffer full, the CPU's scratch buffers busy.
    pub lost_no_regs: u64,
    pub lost_unreadable: u64,
    pub lost_ring_full: u64,
    pub lost_nested: u64,
    /// Objects read for their unwind tables, and those without call frame information (named).
    pub objects: u64,
    pub objects_without_cfi: Vec<String>,
    /// How far above the stack pointer each walk read, in KiB buckets (the bucket's upper bound): what
    /// `--user-stack-bytes` must cover.
    pub depth_kib: BTreeMap<u64, u64>,
    pub distinct_stacks: u64,
    pub stacks_dropped: u64,
}

pub struct UserStacks {
    ring: Option<RingBuf<MapData>>,
    processes: HashMap<u32, Process>,
    objects: Objects,
    cache: CacheX86_64,
    ids: HashMap<Vec<UserFrame>, u32>,
    stacks: Vec<Vec<UserFrame>>,
    /// Sample token -> unwound stack id, for the tokens still in the kernel's site map.
    tokens: HashMap<u64, i32>,
    stats: UnwindStats,
}

impl UserStacks {
    /// Reads samples from `ring` (none: frame-pointer stacks, nothing to unwind).
    pub fn new(ring: Option<RingBuf<MapData>>) -> Self {
        UserStacks {
            ring,
            processes: HashMap::new(),
            objects: Objects::default(),
            cache: CacheX86_64::new(),
            ids: HashMap::new(),
            stacks: Vec::new(),
            tokens: HashMap::new(),
            stats: UnwindStats::default(),
        }
    }

    /// The ring buffer's fd, for the event loop to wait on.
    pub fn fd(&self) -> Option<RawFd> {
        self.ring.as_ref().map(|r| r.as_raw_fd())
    }

    /// Unwinds every sample waiting in the ring buffer. Called before the kernel's site map is read is not enough:
    /// a sample is sent before its site is counted, so reading the map first and draining after sees every
    /// token's sample.
    pub fn drain(&mut self) {
        let Some(mut ring) = self.ring.take() else { return };
        while let Some(item) = ring.next() {
            self.add(&item);
        }
        self.ring = Some(ring);
    }

    /// Unwinds one sample (its head, then the stack copy).
    pub fn add(&mut self, bytes: &[u8]) {
        let head = std::mem::size_of::<StackSample>();
        if bytes.len() < head {
            return;
        }
        // SAFETY: StackSample is plain integers; read_unaligned copes with the ring's 8-byte alignment or less.
        let sample: StackSample = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let stack = &bytes[head..head + (sample.len as usize).min(bytes.len() - head)];
        self.stats.samples += 1;
        self.refresh_process(sample.tgid, sample.ip, false);
        let Some(process) = self.processes.get(&sample.tgid) else {
            self.stats.no_process += 1;
            return;
        };
        let mut walk = unwind::walk(process, &sample, stack, &mut self.cache);
        // A caller in code mapped after the process was read (a library loaded later, JIT code): read it again,
        // at most every REREAD_AFTER.
        if walk.end == unwind::End::NotCode && process.read_at.elapsed() > REREAD_AFTER {
            self.refresh_process(sample.tgid, sample.ip, true);
            if let Some(process) = self.processes.get(&sample.tgid) {
                walk = unwind::walk(process, &sample, stack, &mut self.cache);
            }
        }
        let s = &mut self.stats;
        match walk.end {
            unwind::End::Root => s.reached_root += 1,
            unwind::End::Truncated if sample.flags & STACK_SAMPLE_FULL != 0 => s.truncated += 1,
            unwind::End::Truncated | unwind::End::Failed => s.failed += 1,
            unwind::End::NotCode => s.ended_not_code += 1,
        }
        *s.depth_kib.entry(walk.depth.div_ceil(1024).next_power_of_two().max(1)).or_default() += 1;
        if walk.frames.is_empty() {
            return;
        }
        s.unwound += 1;
        for f in &walk.frames {
            *s.frames.entry(f.method.name().to_string()).or_default() += 1;
        }
        let id = self.intern(walk.frames);
        self.tokens.insert(sample.token, id);
    }

    /// The process of a sample, read when first seen and read again when `stale` or when the leaf lies in no
    /// known code (an exec, a library loaded since).
    fn refresh_process(&mut self, tgid: u32, ip: u64, stale: bool) {
        let stale = stale || self.processes.get(&tgid).is_none_or(|p| p.region(ip).is_none());
        if stale {
            if let Some(p) = Process::read(tgid, &mut self.objects) {
                self.processes.insert(tgid, p);
            }
            self.stats.objects = self.objects.read;
        }
    }

    fn intern(&mut self, frames: Vec<UserFrame>) -> i32 {
        if let Some(&id) = self.ids.get(&frames) {
            return id as i32 | USTACK_UNWOUND_BIT;
        }
        if self.stacks.len() >= MAX_STACKS {
            self.stats.stacks_dropped += 1;
            return -E2BIG;
        }
        let id = self.stacks.len() as u32;
        self.stacks.push(frames.clone());
        self.ids.insert(frames, id);
        id as i32 | USTACK_UNWOUND_BIT
    }

    /// The key of the unwound stack a sampled allocation's key stands for; other keys are returned as they are.
    pub fn canonical(&self, key: &SiteKey) -> SiteKey {
        if key.usample == 0 {
            return *key;
        }
        let ustack = self.tokens.get(&key.usample).copied().unwrap_or(-ENOENT);
        SiteKey { ustack, usample: 0, ..*key }
    }

    /// `raw` with sampled keys replaced by their stacks' and counters of equal keys summed.
    pub fn canonicalize(&self, raw: Vec<(SiteKey, SiteCounters)>) -> Vec<(SiteKey, SiteCounters)> {
        let mut merged: HashMap<SiteKey, SiteCounters> = HashMap::with_capacity(raw.len());
        for (key, c) in raw {
            merged.entry(self.canonical(&key)).or_default().accumulate(&c);
        }
        merged.into_iter().collect()
    }

    /// Forgets the tokens of sites that left the kernel map: no free can reach them any more.
    pub fn forget(&mut self, keys: &[SiteKey]) {
        for key in keys.iter().filter(|k| k.usample != 0) {
            self.tokens.remove(&key.usample);
        }
    }

    /// Drops the processes that are gone (after the samples they sent were drained).
    pub fn prune(&mut self) {
        self.processes.retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    /// An unwound stack, leaf first.
    pub fn frames(&self, id: i32) -> Option<&[UserFrame]> {
        if id < 0 || id & USTACK_UNWOUND_BIT == 0 {
            return None;
        }
        self.stacks.get((id & !USTACK_UNWOUND_BIT) as usize).map(Vec::as_slice)
    }

    /// The figures of `collection.unwind`, with what the kernel side counted as lost.
    pub fn stats(&self, lost: [u64; 4]) -> UnwindStats {
        let mut s = self.stats.clone();
        [s.lost_no_regs, s.lost_unreadable, s.lost_ring_full, s.lost_nested] = lost;
        s.objects_without_cfi = self.objects.without_cfi.clone();
        s.distinct_stacks = self.stacks.len() as u64;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(address: u64) -> UserFrame {
        UserFrame { address, method: Method::Dwarf }
    }

    #[test]
    fn samples_of_one_stack_merge_and_their_tokens_are_forgotten() {
        let mut u = UserStacks::new(None);
        let a = u.intern(vec![frame(1), frame(2)]);
        let b = u.intern(vec![frame(1), frame(3)]);
        assert_eq!(u.intern(vec![frame(1), frame(2)]), a, "the same stack, the same id");
        assert_ne!(a, b);
        u.tokens.extend([(10, a), (11, a), (12, b)]);
        let key = |usample| SiteKey { tgid: 5, kind: 0, usample, ..Default::default() };
        let c = |n| SiteCounters { alloc_bytes: n, alloc_count: 1, ..Default::default() };
        let mut merged = u.canonicalize(vec![(key(10), c(4)), (key(11), c(6)), (key(12), c(1)), (key(99), c(2))]);
        merged.sort_by_key(|(k, _)| k.ustack);
        let got: Vec<(i32, u64, u64)> = merged.iter().map(|(k, c)| (k.ustack, k.usample, c.alloc_bytes)).collect();
        assert_eq!(got, [(-ENOENT, 0, 2), (a, 0, 10), (b, 0, 1)], "an unknown token keeps its counts, without frames");
        assert_eq!(u.frames(a).unwrap(), [frame(1), frame(2)]);
        assert_eq!(u.frames(-1), None);
        assert_eq!(u.frames(3), None, "a kernel stack id is not an unwound one");
        u.forget(&[key(10), key(12)]);
        assert_eq!(u.tokens.len(), 1);
        let plain = SiteKey { ustack: 4, ..key(0) };
        assert_eq!(u.canonical(&plain), plain, "frame-pointer keys stay as they are");
    }

    #[test]
    fn a_short_record_is_ignored() {
        let mut u = UserStacks::new(None);
        u.add(&[0u8; 8]);
        assert_eq!(u.stats([0; 4]).samples, 0);
    }
}
