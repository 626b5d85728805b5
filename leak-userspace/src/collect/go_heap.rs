//! `--heap` for Go programs. Go allocates from its own heap, not through malloc, so there is nothing to probe;
//! but its runtime keeps a sampled heap profile (one allocation in every `runtime.MemProfileRate` bytes, 512 KiB
//! by default) in the bucket list at `runtime.mbuckets`. It is read from the process's memory every interval, as
//! oomprof does, so a Go process gets heap sites without probes; the last profile read stands for a process
//! that has gone.
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::unix::fs::FileExt,
};

use anyhow::{bail, ensure, Context, Result};
use object::{Object, ObjectSymbol};

use super::profile_sites::{Held, ProfileSites};
use crate::{report::Site, sites::FrameResolver};

/// A bucket's header: next, allnext, typ, hash, size, nstk (uintptr each).
const HEADER: usize = 6 * 8;
/// `memProfile` in the runtime's bucketType.
const MEM_PROFILE: u64 = 1;
/// Past this many frames a bucket is not one (the runtime keeps at most 32, 128 with profstackdepth).
const MAX_STACK: u64 = 1024;
/// Buckets read per process and interval at most: a bound on the time a read takes.
const MAX_BUCKETS: usize = 50_000;

/// The addresses of the profile's variables in a Go executable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Symbols {
    mbuckets: u64,
    rate: u64,
}

impl Symbols {
    /// The profile's variables in process `pid`, or `None` when it runs no Go program.
    pub fn find(pid: u32) -> Option<Symbols> {
        let file = File::open(format!("/proc/{pid}/exe")).ok()?;
        // SAFETY: a read-only map of an executable, which is not written while it runs; only the pages of the
        // headers (and, for a Go program, of the symbol table) are read.
        let data = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let elf = object::File::parse(&*data).ok()?;
        // Every Go executable since Go 1.13 has its build information section; a stripped one has no symbols.
        elf.section_by_name(".go.buildinfo")?;
        let at = |name: &str| elf.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address());
        let (mbuckets, rate) = (at("runtime.mbuckets")?, at("runtime.MemProfileRate")?);
        let bias = crate::stacks::maps::load_bias(&elf, || load_address(pid))?;
        Some(Symbols { mbuckets: mbuckets + bias, rate: rate + bias })
    }
}

/// Where the executable's first mapping (file offset 0) starts in `pid`.
fn load_address(pid: u32) -> Option<u64> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let exe = exe.to_str()?;
    crate::stacks::maps::parse(&maps)
        .into_iter()
        .find(|m| m.offset == 0 && m.path.as_deref() == Some(exe))
        .map(|m| m.start)
}

/// One stack of the profile, scaled to estimates of all allocations.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Return addresses, leaf first (past the allocator's own frames).
    pub stack: Vec<u64>,
    pub held: Held,
}

/// Reads the profile of `pid`.
pub fn read(pid: u32, sym: Symbols) -> Result<Vec<Record>> {
    let mem = File::open(format!("/proc/{pid}/mem")).context("cannot open its memory")?;
    let word = |addr: u64| -> Result<u64> {
        let mut b = [0u8; 8];
        mem.read_exact_at(&mut b, addr).with_context(|| format!("cannot read its memory at {addr:#x}"))?;
        Ok(u64::from_le_bytes(b))
    };
    let rate = word(sym.rate)?;
    ensure!(
        rate > 0,
        "its runtime.MemProfileRate is 0: heap profiling is off (Go's linker turns it off in a program that links \
         neither runtime/pprof nor net/http/pprof)"
    );
    let mut records = Vec::new();
    let mut at = word(sym.mbuckets)?;
    while at != 0 && records.len() < MAX_BUCKETS {
        let mut header = [0u8; HEADER];
        mem.read_exact_at(&mut header, at).context("cannot read a profile bucket")?;
        let w = |i: usize| u64::from_le_bytes(header[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let (allnext, typ, nstk) = (w(1), w(2), w(5));
        if typ != MEM_PROFILE || nstk > MAX_STACK {
            bail!("a profile bucket at {at:#x} is not one (type {typ}, {nstk} frames): an unknown Go version?");
        }
        // The stack, then the memRecord: its `active` cycle (allocs, frees, alloc_bytes, free_bytes), what the
        // last collection published, and three `future` ones, what was allocated and swept since. All four are
        // counted: memory grows between collections too, and the pages hold what is not swept yet.
        let mut rest = vec![0u8; (nstk as usize + 16) * 8];
        mem.read_exact_at(&mut rest, at + HEADER as u64).context("cannot read a profile bucket")?;
        let words: Vec<u64> =
            rest.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        let (stack, cycles) = words.split_at(nstk as usize);
        let sum = |i: usize| cycles.iter().skip(i).step_by(4).fold(0u64, |a, &c| a.wrapping_add(c));
        records.push(record(stack.to_vec(), [sum(0), sum(1), sum(2), sum(3)], rate));
        at = allnext;
    }
    Ok(records)
}

/// How many allocations of `size` bytes one sample stands for when one is taken every `rate` bytes on average
/// (a Poisson process, as Go's and V8's samplers are): 1 / (1 - e^(-size/rate)).
pub fn sampled_count(size: f64, rate: u64) -> f64 {
    1.0 / (1.0 - (-size / rate as f64).exp())
}

/// A bucket's counts scaled as pprof scales a heap profile's, by the sample count of their average size.
fn record(stack: Vec<u64>, [allocs, frees, alloc_bytes, free_bytes]: [u64; 4], rate: u64) -> Record {
    let scale = |count: u64, bytes: u64| -> (f64, f64) {
        if count == 0 || bytes == 0 {
            return (0.0, 0.0);
        }
        let s = sampled_count(bytes as f64 / count as f64, rate);
        (count as f64 * s, bytes as f64 * s)
    };
    let (inuse_objects, inuse_bytes) = scale(allocs.saturating_sub(frees), alloc_bytes.saturating_sub(free_bytes));
    let (alloc_objects, alloc_bytes) = scale(allocs, alloc_bytes);
    Record { stack, held: Held { inuse_bytes, inuse_objects, alloc_bytes, alloc_objects } }
}

/// The Go processes of the target and their last profiles.
#[derive(Default)]
pub struct GoHeap {
    procs: BTreeMap<u32, GoProcess>,
}

struct GoProcess {
    sym: Symbols,
    records: Vec<Record>,
    /// Why the last read failed.
    error: Option<String>,
}

impl GoHeap {
    pub fn add(&mut self, pid: u32, sym: Symbols) {
        self.procs.insert(pid, GoProcess { sym, records: Vec::new(), error: None });
    }

    /// Reads the profile of every Go process still there; a process gone keeps its last one.
    pub fn read_all(&mut self) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        pids.into_iter().for_each(|pid| self.read_one(pid));
    }

    /// Reads the profile of `pid` if it is a Go process still there (an OOM victim, before it is gone).
    pub fn read_one(&mut self, pid: u32) {
        let Some(p) = self.procs.get_mut(&pid) else { return };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        match read(pid, p.sym) {
            // A dying process's memory may read as an empty list: its last profile stands.
            Ok(records) if records.is_empty() && !p.records.is_empty() => {}
            Ok(records) => (p.records, p.error) = (records, None),
            Err(e) => p.error = Some(format!("{e:#}")),
        }
    }

    /// For a Go process, why the last read of its profile failed, if it did.
    pub fn last_error(&self, pid: u32) -> Option<Option<&str>> {
        self.procs.get(&pid).map(|p| p.error.as_deref())
    }

    /// The `heap` sites of the profiles (of `victim`'s only, as it stood before its OOM kill, when given), merged
    /// by function (one leak, one site). A process that has gone holds nothing any more: its sites keep what
    /// they allocated.
    pub fn sites(
        &self,
        resolver: &mut dyn FrameResolver,
        comms: &HashMap<u32, String>,
        victim: Option<u32>,
    ) -> Vec<Site> {
        let mut sites = ProfileSites::new(comms);
        for (&pid, p) in self.procs.iter().filter(|(&pid, _)| victim.is_none_or(|v| v == pid)) {
            let alive = victim.is_some() || std::path::Path::new(&format!("/proc/{pid}")).exists();
            for r in p.records.iter().filter(|r| r.held.alloc_bytes > 0.0) {
                // Return addresses: the call is the byte before. The runtime records an inlined call as a PC of
                // its own, so each PC is one frame: the innermost function at it.
                let mut frames: Vec<_> = r
                    .stack
                    .iter()
                    .filter_map(|&a| resolver.user(pid, &[a.saturating_sub(1)]).into_iter().next())
                    .collect();
                frames.iter_mut().for_each(|f| f.unwind = Some("profile".into()));
                sites.add(pid, alive, &frames, r.held);
            }
        }
        sites.into_sites()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_scaled_as_pprof_scales_them() {
        // 4 samples of 64 KiB at the default rate: each stands for 1 / (1 - e^(-1/8)) = 8.51 allocations.
        let r = record(vec![0x401000], [4, 1, 4 << 16, 1 << 16], 512 << 10);
        let each = 1.0 / (1.0 - (-0.125f64).exp());
        assert!((each - 8.51).abs() < 0.01);
        assert!((r.held.alloc_objects - 4.0 * each).abs() < 1e-6, "{r:?}");
        assert!((r.held.inuse_bytes - 3.0 * 65536.0 * each).abs() < 1e-3, "{r:?}");
        let none = record(vec![], [0, 0, 0, 0], 512 << 10);
        assert_eq!((none.held.alloc_bytes, none.held.inuse_objects), (0.0, 0.0));
    }

    #[test]
    fn a_program_that_is_not_go_has_no_profile() {
        assert_eq!(Symbols::find(std::process::id()), None);
    }
}
