//! The eBPF side as userspace sees it: discovering this kernel's layouts, loading and attaching the embedded
//! programs, and reading their maps.
pub mod allocator;
mod batch;
mod heap;
mod layout;

use std::{
    cell::RefCell,
    collections::HashMap as StdHashMap,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::Program,
    Ebpf, EbpfLoader,
};
use leak_common::{counter, exit_count, SiteCounters, SiteKey, CACHE_NAME_LEN, STACK_OVERFLOW_BIT};

pub use crate::report::ProgramStats;

pub use layout::{discover, Discovery};

/// The eBPF object built by build.rs, embedded so the binary is the only file to copy onto a host.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leak-ebpf.o"));

/// Outstanding allocations the kernel side can track at once (pages and slab objects together).
pub const DEFAULT_LIVE_ENTRIES: u32 = 262_144;

/// Distinct stacks the kernel side can keep; the kernel rounds the bucket count up to a power of two.
pub const DEFAULT_STACK_ENTRIES: u32 = 16_384;

/// Sites the kernel side can count at once. With frame-pointer stacks a site is a stack; with unwinding in
/// userspace each kept allocation is a site of its own until it is freed (its entry then leaves at the next
/// interval), so the map must hold the outstanding kept allocations and an interval's churn of them.
const FP_SITE_ENTRIES: u32 = 16_384;
const SAMPLED_SITE_ENTRIES: u32 = 65_536;

/// The user stack sample ring buffer for a sampling rate of `2^sample_rate_shift` bytes. At the default rate the
/// fastest page churn measured sends ~7,000 samples a second, ~75 MB/s: 4 MiB holds ~50 ms of it, several times
/// the reader thread's 10 ms poll (`stacks::sample_queue`). Finer rates send more and get 8 MiB. The kernel maps the ring's data twice into the
/// reader (so that a record may wrap), all of it resident: each MiB here is two of the tracer's RSS.
fn ustack_ring_bytes(sample_rate_shift: u32) -> u32 {
    if sample_rate_shift >= crate::cli::DEFAULT_SAMPLE_BYTES.trailing_zeros() {
        4 << 20
    } else {
        8 << 20
    }
}

/// Kernel memory of the BPF maps this process holds: the `memlock` of each map's fd.
pub fn map_bytes() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else { return 0 };
    let memlock = |info: &str| info.lines().find_map(|l| l.strip_prefix("memlock:")?.trim().parse::<u64>().ok());
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| memlock(&info))
        .sum()
}

/// A ring buffer the event loop waits on.
pub type Ring = tokio::io::unix::AsyncFd<RingBuf<MapData>>;

/// Registers `ring` (the `what` ring buffer) with the event loop.
pub fn watch(ring: RingBuf<MapData>, what: &str) -> Result<Ring> {
    // SAFETY: the ring buffer owns its fd, and the AsyncFd owns the ring buffer for as long as it is registered.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("cannot watch the {what} ring buffer: {e}"))
}

/// The records of `ring` once it has some, every one that is there.
pub async fn records(ring: &mut Ring) -> std::io::Result<Vec<Vec<u8>>> {
    let mut guard = ring.readable_mut().await?;
    let out = pending(guard.get_inner_mut());
    guard.clear_ready();
    Ok(out)
}

/// The records in `ring` now (at the end of a window: they belong to it).
pub fn pending(ring: &mut RingBuf<MapData>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(item.to_vec());
    }
    out
}

/// Registers the fd that says user stack samples are queued (none with frame-pointer stacks) with the event loop.
pub fn watch_user_stacks(
    fd: Option<std::os::fd::RawFd>,
) -> Result<Option<tokio::io::unix::AsyncFd<std::os::fd::RawFd>>> {
    let Some(fd) = fd else { return Ok(None) };
    // SAFETY: the fd belongs to the reader's sample queue, which outlives the event loop that watches it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map(Some)
        .map_err(|e| anyhow!("cannot watch the user stack samples: {e}"))
}

/// Waits until user stack samples are queued (when there is a queue `fd`), and clears its readiness first: a
/// sample queued while they are drained makes it ready again.
pub async fn user_stacks_ready(fd: Option<&tokio::io::unix::AsyncFd<std::os::fd::RawFd>>) -> std::io::Result<()> {
    match fd {
        Some(fd) => fd.readable().await.map(|mut guard| guard.clear_ready()),
        None => std::future::pending().await,
    }
}

/// A program, the tracepoint it belongs on, and the attribution modes that need it.
pub struct Attachment {
    pub program: &'static str,
    pub category: &'static str,
    pub event: &'static str,
    pub modes: &'static [&'static str],
}

const PAGES: &[&str] = &["pages", "gfp-anon", "memcg-anon-charges"];
const SLAB: &[&str] = &["slab"];
const VICTIM: &[&str] = &["oom-victim", "oom-victim-rss"];

pub const ATTACHMENTS: &[Attachment] = &[
    Attachment { program: "lt_page_alloc", category: "kmem", event: "mm_page_alloc", modes: PAGES },
    Attachment { program: "lt_page_free", category: "kmem", event: "mm_page_free", modes: PAGES },
    Attachment { program: "lt_kmalloc", category: "kmem", event: "kmalloc", modes: SLAB },
    Attachment { program: "lt_kmalloc", category: "kmem", event: "kmalloc_node", modes: SLAB },
    Attachment { program: "lt_kfree", category: "kmem", event: "kfree", modes: SLAB },
    Attachment { program: "lt_cache_alloc", category: "kmem", event: "kmem_cache_alloc", modes: SLAB },
    Attachment { program: "lt_cache_alloc", category: "kmem", event: "kmem_cache_alloc_node", modes: SLAB },
    Attachment { program: "lt_cache_free", category: "kmem", event: "kmem_cache_free", modes: SLAB },
    Attachment {
        program: "lt_memcg_lruvec",
        category: "memcg",
        event: "mod_memcg_lruvec_state",
        modes: &["memcg-anon-charges"],
    },
    Attachment { program: "lt_mark_victim", category: "oom", event: "mark_victim", modes: VICTIM },
    Attachment { program: "lt_process_exit", category: "sched", event: "sched_process_exit", modes: &["exits"] },
    Attachment {
        program: "lt_signal_generate",
        category: "signal",
        event: "signal_generate",
        modes: &["exit-senders"],
    },
];

/// Loaded and attached programs. Dropping this detaches everything (the links are file descriptors, so even a
/// SIGKILL of the tracer leaves nothing attached).
pub struct Probes {
    ebpf: Ebpf,
    pub attached: Vec<&'static str>,
    /// `--heap`: the allocator programs are loaded, and the probes attached to each traced process.
    heap_enabled: bool,
    heap_links: StdHashMap<u32, heap::Attached>,
    reaper: heap::Reaper,
    /// The machine's figures while held (`hold_figures`).
    held: RefCell<Option<HeldFigures>>,
}

/// The counters and program figures, read once while held.
#[derive(Default)]
struct HeldFigures {
    counters: Option<[u64; counter::COUNT as usize]>,
    programs: Option<Vec<ProgramStats>>,
}

/// Holds the machine's figures (`Probes::hold_figures`) until dropped.
pub struct FiguresHeld<'a>(&'a Probes);

impl Drop for FiguresHeld<'_> {
    fn drop(&mut self) {
        *self.0.held.borrow_mut() = None;
    }
}

impl Drop for Probes {
    /// The heap probes go first, together (one by one they would take a tenth of a second each).
    fn drop(&mut self) {
        self.detach_all_heap();
    }
}

impl Probes {
    /// `heap`: load the allocator programs too (`--heap`).
    pub fn load(discovery: &mut Discovery, live_entries: u32, stack_entries: u32, heap: bool) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!("this leaktrace was built without its eBPF programs (LEAKTRACE_SKIP_EBPF); rebuild it with `cargo xtask build`");
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &discovery.config, true)
            .override_global("EXIT_CONFIG", &discovery.exit_config, true)
            .map_max_entries("LIVE", live_entries)
            .map_max_entries("HEAP_LIVE", if heap { live_entries } else { 1 })
            .map_max_entries("STACKS", stack_entries)
            // The second chance for colliding stacks scales with the first (4096 at the default 16384).
            .map_max_entries("STACKS_OVERFLOW", (stack_entries / 4).max(1))
            .map_max_entries(
                "SITES",
                if discovery.config.ustack_chunks > 0 { SAMPLED_SITE_ENTRIES } else { FP_SITE_ENTRIES },
            )
            // Frame-pointer stacks send no samples: the ring buffer then takes the least the kernel allows.
            .map_max_entries(
                "USTACKS",
                if discovery.config.ustack_chunks > 0 {
                    ustack_ring_bytes(discovery.config.sample_rate_shift)
                } else {
                    discovery.config.page_size
                },
            )
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow!("loading the eBPF programs failed: {e}"))?;
        let mut attached = Vec::new();
        let present: Vec<&Attachment> =
            ATTACHMENTS.iter().filter(|a| discovery.has_event(a.category, a.event)).collect();
        for a in present {
            // A kernel that refuses one program costs the modes that need it, not the whole trace.
            match attach(&mut ebpf, a) {
                Ok(()) => attached.push(a.program),
                Err(e) => discovery.lose(a.modes, format!("{}:{} is not traced: {e:#}", a.category, a.event)),
            }
        }
        if !discovery.modes.iter().any(|m| m == "pages" || m == "slab") {
            bail!("this kernel refused the allocation programs: {}", discovery.degraded.join("; "));
        }
        let mut probes = Probes {
            ebpf,
            attached,
            heap_enabled: false,
            heap_links: StdHashMap::new(),
            reaper: heap::Reaper::default(),
            held: RefCell::new(None),
        };
        if heap {
            probes.load_heap(discovery)?;
            discovery.modes.push("heap".into());
        }
        Ok(probes)
    }

    /// Makes the kernel side follow exactly these memcgs (target and descendants).
    pub fn set_memcgs(&mut self, ids: &[u64]) -> Result<()> {
        let mut map: HashMap<&mut MapData, u64, u8> = HashMap::try_from(self.map_mut("MEMCGS")?)?;
        let old: Vec<u64> = map.keys().filter_map(|k| k.ok()).collect();
        for id in &old {
            if !ids.contains(id) {
                let _ = map.remove(id);
            }
        }
        for id in ids {
            if !old.contains(id) {
                map.insert(id, 1, 0).context("memcg id map is full")?;
            }
        }
        Ok(())
    }

    /// Every site with its counters summed over CPUs.
    pub fn sites(&self) -> Result<Vec<(SiteKey, SiteCounters)>> {
        let sum = |per_cpu: &[SiteCounters]| {
            let mut sum = SiteCounters::default();
            per_cpu.iter().for_each(|c| sum.accumulate(c));
            sum
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("cannot count the CPUs: {e}"))?;
        if let Some(all) = batch::lookup_all(self.map_fd("SITES")?, cpus, sum).context("reading the site map")? {
            return Ok(all);
        }
        let map: PerCpuHashMap<&MapData, SiteKey, SiteCounters> = PerCpuHashMap::try_from(self.map("SITES")?)?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (key, per_cpu) = item?;
            out.push((key, sum(&per_cpu)));
        }
        Ok(out)
    }

    /// Deletes sites from the kernel map (their totals were taken over by userspace).
    pub fn remove_sites(&mut self, keys: &[SiteKey]) -> Result<()> {
        if batch::delete_all(self.map_fd("SITES")?, keys).context("deleting from the site map")? {
            return Ok(());
        }
        let mut map: PerCpuHashMap<&mut MapData, SiteKey, SiteCounters> =
            PerCpuHashMap::try_from(self.map_mut("SITES")?)?;
        for key in keys {
            // Already gone is fine: nothing else deletes from SITES, so that cannot lose counts.
            let _ = map.remove(key);
        }
        Ok(())
    }

    /// While the guard lives, the counters and the programs' figures are read once and shared: an agent's scrape
    /// assembles every container's report of one moment, and each would read the same map and fdinfo files again.
    pub fn hold_figures(&self) -> FiguresHeld<'_> {
        *self.held.borrow_mut() = Some(HeldFigures::default());
        FiguresHeld(self)
    }

    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize]> {
        if let Some(c) = self.held.borrow().as_ref().and_then(|h| h.counters) {
            return Ok(c);
        }
        let c = self.summed("COUNTERS")?;
        if let Some(h) = self.held.borrow_mut().as_mut() {
            h.counters = Some(c);
        }
        Ok(c)
    }

    /// A per-CPU array of counters, each summed over the CPUs.
    fn summed<const N: usize>(&self, name: &str) -> Result<[u64; N]> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(name)?)?;
        let mut out = [0u64; N];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Ok(out)
    }

    pub fn cache_names(&self) -> Result<StdHashMap<u32, String>> {
        let map: HashMap<&MapData, u32, [u8; CACHE_NAME_LEN]> = HashMap::try_from(self.map("CACHE_NAMES")?)?;
        Ok(map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| {
                let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
                (k, String::from_utf8_lossy(&v[..end]).into_owned())
            })
            .collect())
    }

    pub fn stacks(&self) -> Result<Stacks<'_>> {
        Ok(Stacks {
            main: StackTraceMap::try_from(self.map("STACKS")?)?,
            overflow: StackTraceMap::try_from(self.map("STACKS_OVERFLOW")?)?,
        })
    }

    /// The OOM event ring buffer, handed out once to the event loop.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        self.take_ring("EVENTS")
    }

    /// The exit ring buffer, handed out once to the event loop.
    pub fn take_exits(&mut self) -> Result<RingBuf<MapData>> {
        self.take_ring("EXITS")
    }

    /// Exits counted but not recorded, and those lost to a full ring buffer ([`leak_common::exit_count`]).
    pub fn exit_counts(&self) -> Result<[u64; exit_count::COUNT as usize]> {
        self.summed("EXIT_COUNTS")
    }

    /// The user stack sample ring buffer, handed out once to the unwinder.
    pub fn take_user_stacks(&mut self) -> Result<RingBuf<MapData>> {
        self.take_ring("USTACKS")
    }

    /// The table of Python processes whose frames the programs walk (`PY_PROCS`).
    pub fn take_python_procs(&mut self) -> Result<HashMap<MapData, u32, leak_common::PyProc>> {
        let map = self.ebpf.take_map("PY_PROCS").ok_or_else(|| anyhow!("PY_PROCS already taken"))?;
        Ok(HashMap::try_from(map)?)
    }

    /// The table of the stack copy sizes learned per process (`USTACK_CHUNKS`).
    pub fn take_stack_chunks(&mut self) -> Result<HashMap<MapData, u32, u32>> {
        let map = self.ebpf.take_map("USTACK_CHUNKS").ok_or_else(|| anyhow!("USTACK_CHUNKS already taken"))?;
        Ok(HashMap::try_from(map)?)
    }

    fn take_ring(&mut self, name: &str) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(name).ok_or_else(|| anyhow!("{name} ring buffer already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// What each loaded program did, from its fdinfo: run count and time (counted only while
    /// `kernel.bpf_stats_enabled` is 1), and runs the kernel skipped because another BPF program was running on the
    /// CPU (its recursion guard): each one an event leaktrace never saw, most often a free, which makes memory look
    /// leaked.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        if let Some(p) = self.held.borrow().as_ref().and_then(|h| h.programs.clone()) {
            return p;
        }
        let stats = self.read_program_stats();
        if let Some(h) = self.held.borrow_mut().as_mut() {
            h.programs = Some(stats.clone());
        }
        stats
    }

    fn read_program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| Some((name, p.fd().ok()?)))
            .filter_map(|(name, fd)| {
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd())).ok()?;
                let value = |key| fdinfo_value(&info, key).unwrap_or(0);
                Some(ProgramStats {
                    program: name.to_string(),
                    run_count: value("run_cnt"),
                    run_time_ns: value("run_time_ns"),
                    recursion_misses: value("recursion_misses"),
                })
            })
            .collect()
    }

    /// A hash map's fd, for the batch operations aya lacks.
    fn map_fd(&self, name: &str) -> Result<BorrowedFd<'_>> {
        match self.map(name)? {
            aya::maps::Map::HashMap(m) | aya::maps::Map::PerCpuHashMap(m) => Ok(m.fd().as_fd()),
            _ => bail!("map {name} is not a hash map"),
        }
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }
}

fn attach(ebpf: &mut Ebpf, a: &Attachment) -> Result<()> {
    let prog =
        ebpf.program_mut(a.program).ok_or_else(|| anyhow!("program {} missing from the eBPF object", a.program))?;
    let refused = |e| anyhow!("the kernel refused program {}: {e}", a.program);
    let failed = |e| anyhow!("attaching to {}:{} failed: {e}", a.category, a.event);
    // Loaded once, attached once per event (kmalloc and kmalloc_node share a program).
    match prog {
        Program::RawTracePoint(p) => {
            if p.fd().is_err() {
                p.load().map_err(refused)?;
            }
            p.attach(a.event).map_err(failed)?;
        }
        Program::TracePoint(p) => {
            if p.fd().is_err() {
                p.load().map_err(refused)?;
            }
            p.attach(a.category, a.event).map_err(failed)?;
        }
        _ => bail!("program {} is of an unexpected type", a.program),
    }
    Ok(())
}

fn fdinfo_value(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix(':')?.trim().parse().ok())
}

/// The two stack maps: ids with `STACK_OVERFLOW_BIT` live in the second.
pub struct Stacks<'a> {
    main: StackTraceMap<&'a MapData>,
    overflow: StackTraceMap<&'a MapData>,
}

impl crate::sites::StackSource for Stacks<'_> {
    fn stack(&self, id: i32) -> Option<Vec<u64>> {
        let map = if id & STACK_OVERFLOW_BIT != 0 { &self.overflow } else { &self.main };
        let id = u32::try_from(id & !STACK_OVERFLOW_BIT).ok()?;
        let trace = map.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_parses_recursion_misses() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t27\n";
        assert_eq!(fdinfo_value(info, "recursion_misses"), Some(27));
        assert_eq!(fdinfo_value(info, "run_cnt"), Some(0));
        assert_eq!(fdinfo_value(info, "missing"), None);
    }
}
