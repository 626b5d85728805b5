//! Stacks: the user stack samples the kernel side sends (registers and a copy of the top of the stack, one per
//! kept allocation) unwound here and deduplicated, the kernel's per-sample site keys mapped onto them, and every
//! stack's addresses symbolized (`symbolize`).
//!
//! The kernel cannot group allocations by a user stack it does not unwind, so each kept allocation carries its
//! own sample token in `SiteKey::usample`. [`UserStacks::canonical`] turns such a key into the key of its
//! unwound stack (`USTACK_UNWOUND_BIT | id`), so allocations from the same code merge again; frees keep landing
//! on the token's entry in the kernel, found by the one LIVE lookup every free makes anyway.
//!
//! A page's sample also carries the registers of its page fault, which say where it hit (`fault_address`); the
//! kind of memory there (`regions`) rides in the unwound stack's id, so that sites can say which kind holds most
//! of their pages.
mod copy_size;
mod fault_address;
pub mod jvm_perfmap;
pub mod maps;
mod object;
pub mod perfmap;
mod process;
pub mod python;
pub mod regions;
pub mod runtime;
mod sample_queue;
pub mod symbolize;
mod table;
pub mod unwind;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::fd::RawFd,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use framehop::x86_64::CacheX86_64;
use leak_common::{PyProc, SiteCounters, SiteKey, StackSample, PY_TRUNCATED, STACK_SAMPLE_FULL, USTACK_UNWOUND_BIT};
use serde::{Deserialize, Serialize};

pub use copy_size::CopySizes;
use process::{Objects, Process};
use python::{PyFrameName, PythonFrames};
use regions::{RegionKind, RegionMap};
pub use sample_queue::SampleQueue;
use table::StackTable;
pub use unwind::{Method, UserFrame};

/// An unwound stack's id is `USTACK_UNWOUND_BIT`, the kind of memory its page lies in (`RegionKind::code`, 0 when
/// unknown) from this bit, and the stack's index (`table`) below: one stack's pages in two kinds of memory are two
/// ids of one stack.
const REGION_SHIFT: u32 = 24;
const _: () = assert!(USTACK_UNWOUND_BIT >> REGION_SHIFT > regions::RegionKind::COUNT as i32);

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
    /// Allocations the coin kept that a further coin left out while the sample ring was over half full (its reader
    /// behind): those kept meanwhile weigh as much more, so sums stay unbiased and each still has its stack.
    #[serde(default)]
    pub thinned: u64,
    /// Objects read for their unwind tables, and those without call frame information (named).
    pub objects: u64,
    pub objects_without_cfi: Vec<String>,
    /// How far above the stack pointer each walk read, in KiB buckets (the bucket's upper bound): what
    /// `--user-stack-bytes` must cover.
    pub depth_kib: BTreeMap<u64, u64>,
    /// Processes whose copy was cut to what their walks need (`stacks::copy_size`), and cut copies a walk ran out
    /// of (the process is back to the full copy; that walk is counted in `truncated`).
    #[serde(default)]
    pub copy_cuts: u64,
    #[serde(default)]
    pub copy_restores: u64,
    pub distinct_stacks: u64,
    pub stacks_dropped: u64,
    /// Unwound samples of page faults by the kind of memory the fault hit (`sites[].region`); `unknown`: no
    /// accessible mapping held the address, even read again (unmapped since, or a read not yet due).
    #[serde(default)]
    pub regions: BTreeMap<String, u64>,
    /// Python: the CPython versions of the traced processes whose frames were walked, samples that carried
    /// Python frames, those whose frame chain went on past what a sample holds, those whose thread had no thread
    /// state found, and frames whose code object could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonStats>,
}

/// `collection.unwind.python` in report.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PythonStats {
    pub versions: Vec<String>,
    pub samples: u64,
    pub truncated: u64,
    pub no_thread_state: u64,
    pub unreadable_frames: u64,
}

pub struct UserStacks {
    samples: Option<SampleQueue>,
    processes: HashMap<u32, Process>,
    objects: Objects,
    cache: CacheX86_64,
    table: StackTable,
    /// Sample token -> unwound stack id and the process that sent it, for the tokens still in the kernel's site
    /// map.
    tokens: HashMap<u64, (i32, u32)>,
    python: PythonFrames,
    py_truncated: u64,
    copies: CopySizes,
    stats: UnwindStats,
}

impl UserStacks {
    /// Reads samples from `samples` (none: frame-pointer stacks, nothing to unwind); enters the Python processes
    /// it meets in `python` (the programs' `PY_PROCS`) for their frames to be walked; learns each process's stack
    /// copy size in `copies`.
    pub fn new(
        samples: Option<SampleQueue>,
        python: Option<BpfHashMap<MapData, u32, PyProc>>,
        copies: CopySizes,
    ) -> Self {
        UserStacks {
            samples,
            processes: HashMap::new(),
            objects: Objects::default(),
            cache: CacheX86_64::new(),
            table: StackTable::new(1 << REGION_SHIFT),
            tokens: HashMap::new(),
            python: PythonFrames::new(python),
            py_truncated: 0,
            copies,
            stats: UnwindStats::default(),
        }
    }

    /// The fd that says samples are queued, for the event loop to wait on.
    pub fn fd(&self) -> Option<RawFd> {
        self.samples.as_ref().map(SampleQueue::fd)
    }

    /// Unwinds every sample sent so far (the queue's reader takes them off the ring as they come). Called before
    /// the kernel's site map is read is not enough: a sample is sent before its site is counted, so reading the
    /// map first and draining after sees every token's sample.
    pub fn drain(&mut self) {
        let Some(samples) = self.samples.take() else { return };
        samples.take(|sample| self.add(sample));
        self.samples = Some(samples);
    }

    /// Unwinds the samples the queue's reader has queued (`SampleQueue::take_queued`).
    pub fn drain_queued(&mut self) {
        let Some(samples) = self.samples.take() else { return };
        samples.take_queued(|sample| self.add(sample));
        self.samples = Some(samples);
    }

    /// Unwinds one sample (its head, then the stack copy).
    pub fn add(&mut self, bytes: &[u8]) {
        let Some((sample, stack)) = split_sample(bytes) else { return };
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
        let ran_out = walk.end == unwind::End::Truncated && sample.flags & STACK_SAMPLE_FULL != 0;
        self.copies.observe(&sample, walk.depth, ran_out);
        let s = &mut self.stats;
        match walk.end {
            unwind::End::Root => s.reached_root += 1,
            unwind::End::Truncated if ran_out => s.truncated += 1,
            unwind::End::Truncated | unwind::End::Failed => s.failed += 1,
            unwind::End::NotCode => s.ended_not_code += 1,
        }
        *s.depth_kib.entry(walk.depth.div_ceil(1024).next_power_of_two().max(1)).or_default() += 1;
        // The thread's Python frames follow its native ones: the report puts each where its eval loop runs.
        let py = &sample.py[..(sample.py_len as usize).min(sample.py.len())];
        if sample.py_flags & PY_TRUNCATED != 0 {
            self.py_truncated += 1;
        }
        let python = self.python.intern(sample.tgid, py);
        walk.frames.extend(python.into_iter().map(|id| UserFrame { address: id as u64, method: Method::Python }));
        let s = &mut self.stats;
        if walk.frames.is_empty() {
            return;
        }
        s.unwound += 1;
        for f in &walk.frames {
            *s.frames.entry(f.method.name().to_string()).or_default() += 1;
        }
        let region = self.fault_region(&sample);
        let id = self.intern(sample.tgid, walk.frames);
        self.tokens.insert(sample.token, (with_region(id, region), sample.tgid));
    }

    /// The kind of memory a sample's page fault hit. Mappings that hold no such address are read again, when a
    /// read is due: the heap grew (brk) or a block was mapped since they were read.
    fn fault_region(&mut self, sample: &StackSample) -> Option<RegionKind> {
        if !fault_address::in_page_fault(sample) {
            return None;
        }
        let process = self.processes.get_mut(&sample.tgid)?;
        let addr = process.code_at(sample.tgid, sample.ip).and_then(|code| fault_address::address(code, sample));
        let kind = addr.and_then(|addr| {
            let mut kind = process.memory.kind(addr);
            if kind.is_none() && process.memory.may_reread() {
                if let Some(memory) = RegionMap::read(sample.tgid) {
                    process.memory = memory;
                    kind = process.memory.kind(addr);
                }
            }
            kind
        });
        let name = match (addr, kind) {
            (None, _) => "undecoded",
            (Some(_), None) => "unknown",
            (Some(_), Some(kind)) => kind.name(),
        };
        *self.stats.regions.entry(name.to_string()).or_default() += 1;
        kind
    }

    /// The process of a sample, read when first seen and read again when `stale` or when the leaf lies in no
    /// known code (an exec, a library loaded since).
    fn refresh_process(&mut self, tgid: u32, ip: u64, stale: bool) {
        let stale = stale || self.processes.get(&tgid).is_none_or(|p| p.region(ip).is_none());
        if stale {
            if let Some(p) = Process::read(tgid, &mut self.objects) {
                self.processes.insert(tgid, p);
                // It may have mapped its libpython, or exec'd, since it was looked at (at an interval).
                self.python.look_at(tgid, true);
            }
            self.stats.objects = self.objects.read;
        }
    }

    fn intern(&mut self, tgid: u32, frames: Vec<UserFrame>) -> i32 {
        match self.table.intern(tgid, frames) {
            Some(index) => index as i32 | USTACK_UNWOUND_BIT,
            None => {
                self.stats.stacks_dropped += 1;
                -E2BIG
            }
        }
    }

    /// The key of the unwound stack a sampled allocation's key stands for; other keys are returned as they are.
    pub fn canonical(&self, key: &SiteKey) -> SiteKey {
        if key.usample == 0 {
            return *key;
        }
        let ustack = self.tokens.get(&key.usample).map_or(-ENOENT, |&(id, _)| id);
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

    /// The target's processes as its cgroup lists them: a CPython one has its frames walked from its first sample,
    /// not only once a sample made it known (a process running before the trace, or spawned since an interval).
    pub fn look_at(&mut self, pids: &[u32]) {
        pids.iter().for_each(|&pid| self.python.look_at(pid, false));
    }

    /// Forgets what the processes `tgids` sampled (they exited and no site refers to them): their tokens, and the
    /// stacks no process remembered still holds.
    pub fn forget_processes(&mut self, tgids: &BTreeSet<u32>) {
        if tgids.is_empty() {
            return;
        }
        for &tgid in tgids {
            self.table.forget_process(tgid);
        }
        self.tokens.retain(|_, (_, tgid)| !tgids.contains(tgid));
    }

    /// Drops the processes that are gone (after the samples they sent were drained).
    pub fn prune(&mut self) {
        let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        self.processes.retain(|&pid, _| alive(pid));
        self.copies.prune(alive);
        self.python.prune(alive);
    }

    /// A Python frame of an unwound stack (`Method::Python`), by its address there.
    pub fn python_frame(&self, address: u64) -> Option<&PyFrameName> {
        self.python.name(address)
    }

    /// An unwound stack, leaf first.
    pub fn frames(&self, id: i32) -> Option<&[UserFrame]> {
        if id < 0 || id & USTACK_UNWOUND_BIT == 0 {
            return None;
        }
        self.table.frames((id & ((1 << REGION_SHIFT) - 1)) as u32)
    }

    /// The kind of memory the pages of an unwound stack's id lie in, when their faults said.
    pub fn region(&self, id: i32) -> Option<RegionKind> {
        if id < 0 || id & USTACK_UNWOUND_BIT == 0 {
            return None;
        }
        RegionKind::from_code(((id & !USTACK_UNWOUND_BIT) >> REGION_SHIFT) as u32)
    }

    /// The figures of `collection.unwind`, with what the kernel side counted as lost or thinned out, and its counts
    /// of samples with Python frames and without a thread state.
    pub fn stats(&self, kernel: [u64; 5], [py_samples, py_no_thread]: [u64; 2]) -> UnwindStats {
        let mut s = self.stats.clone();
        [s.lost_no_regs, s.lost_unreadable, s.lost_ring_full, s.lost_nested, s.thinned] = kernel;
        let versions = self.python.versions();
        if !versions.is_empty() {
            s.python = Some(PythonStats {
                versions,
                samples: py_samples,
                truncated: self.py_truncated,
                no_thread_state: py_no_thread,
                unreadable_frames: self.python.unreadable,
            });
        }
        s.objects_without_cfi = self.objects.without_cfi.clone();
        s.distinct_stacks = self.table.len() as u64;
        s.copy_cuts = self.copies.counts.cuts;
        s.copy_restores = self.copies.counts.restores;
        s
    }
}

/// A sample record's head and its stack copy, only as long as the head says (a record may be longer). `None` for a
/// record shorter than a head.
fn split_sample(bytes: &[u8]) -> Option<(StackSample, &[u8])> {
    let head = std::mem::size_of::<StackSample>();
    if bytes.len() < head {
        return None;
    }
    // SAFETY: StackSample is plain integers; read_unaligned copes with the ring's 8-byte alignment or less.
    let sample: StackSample = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let stack = &bytes[head..head + (sample.len as usize).min(bytes.len() - head)];
    Some((sample, stack))
}

/// A sample's head as the bytes a record begins with.
fn sample_head(sample: &StackSample) -> &[u8] {
    // SAFETY: StackSample is plain integers; the slice borrows `sample` and covers exactly it.
    unsafe {
        std::slice::from_raw_parts((sample as *const StackSample).cast::<u8>(), std::mem::size_of::<StackSample>())
    }
}

/// An unwound stack's id with the kind of memory of its sample's page (an error stays as it is).
fn with_region(id: i32, region: Option<RegionKind>) -> i32 {
    match region {
        Some(kind) if id >= 0 => id | (kind.code() << REGION_SHIFT) as i32,
        _ => id,
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
        let mut u = UserStacks::new(None, None, CopySizes::new(None, 4));
        let a = u.intern(5, vec![frame(1), frame(2)]);
        let b = u.intern(5, vec![frame(1), frame(3)]);
        assert_eq!(u.intern(6, vec![frame(1), frame(2)]), a, "the same stack, the same id");
        assert_ne!(a, b);
        u.tokens.extend([(10, (a, 5)), (11, (a, 5)), (12, (b, 5))]);
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
        // Process 5 forgotten: its tokens go, and the stack only it sampled; process 6 holds the other.
        u.forget_processes(&BTreeSet::from([5]));
        assert!(u.tokens.is_empty());
        assert_eq!((u.frames(a).is_some(), u.frames(b)), (true, None));
        let plain = SiteKey { ustack: 4, ..key(0) };
        assert_eq!(u.canonical(&plain), plain, "frame-pointer keys stay as they are");
    }

    /// Pages of one stack in two kinds of memory: two ids, one stack, each id with its kind.
    #[test]
    fn the_kind_of_memory_rides_in_the_stack_id() {
        let mut u = UserStacks::new(None, None, CopySizes::new(None, 4));
        let a = u.intern(5, vec![frame(1), frame(2)]);
        let heap = with_region(a, Some(RegionKind::BrkHeap));
        let mmap = with_region(a, Some(RegionKind::Mmap));
        assert!(heap != mmap && heap != a && mmap != a);
        for id in [a, heap, mmap] {
            assert_eq!(u.frames(id).unwrap(), [frame(1), frame(2)]);
        }
        assert_eq!(u.region(heap), Some(RegionKind::BrkHeap));
        assert_eq!(u.region(mmap), Some(RegionKind::Mmap));
        assert_eq!(u.region(a), None, "no fault address");
        assert_eq!(with_region(-E2BIG, Some(RegionKind::Mmap)), -E2BIG, "no stack, nothing to mark");
        assert_eq!(u.region(3), None, "a kernel stack id");
    }

    #[test]
    fn a_short_record_is_ignored() {
        let mut u = UserStacks::new(None, None, CopySizes::new(None, 4));
        u.add(&[0u8; 8]);
        assert_eq!(u.stats([0; 5], [0; 2]).samples, 0);
    }

    pub(super) fn record(sample: &StackSample, stack: &[u8], rest: usize) -> Vec<u8> {
        [sample_head(sample), stack, &vec![0xff; rest]].concat()
    }

    /// A record's stack is only as long as its head says: what follows (a longer record) is not read as stack.
    #[test]
    fn a_record_is_stack_only_as_far_as_its_head_says() {
        let (mut sample, stack) = std::hint::black_box(unwind::tests::caller_of_the_leaf(3));
        // A copy that ends 64 bytes above the stack pointer: the walk runs out of stack there, and would read the
        // record's rest (0xff bytes, no return address) if it took that for stack.
        let cut = (sample.sp - sample.base) as usize + 64;
        sample.len = cut as u32;
        let mut u = UserStacks::new(None, None, CopySizes::new(None, 4));
        u.add(&record(&sample, &stack[..cut], 0));
        sample.token = 2;
        u.add(&record(&sample, &stack[..cut], 3 * leak_common::USTACK_CHUNK));
        let s = u.stats([0; 5], [0; 2]);
        assert_eq!((s.samples, s.unwound, s.ended_not_code), (2, 2, 0));
        assert_eq!(u.tokens[&1], u.tokens[&2], "the unused rest of a record is not stack");
    }
}
