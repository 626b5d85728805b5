//! The serde model of report.json, schema "leaktrace.report/1" (see CONTRACT.md). Every field of the contract is
//! here under its contract name; `Option`s serialize as `null` and are never omitted, so scripts can rely on every
//! key being present. Extensions (`schema`, `collection`, `growth`, `sampling`, `sites_early`, `target.cgroups`, the
//! runtime facts in `target.container`, `kernel.degraded`, `window.ended_by`, `OomKill::trigger_*` and the other
//! fields marked "extension" below) only add keys.
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[cfg(test)]
pub(crate) mod tests;

pub const SCHEMA: &str = "leaktrace.report/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub target: TargetInfo,
    pub kernel: KernelInfo,
    pub window: Window,
    pub memory: Memory,
    pub attribution: Attribution,
    pub sites: Vec<Site>,
    pub oom_kills: Vec<OomKill>,
    /// Deaths of the target's processes: OOM kills, deaths by a signal (with its sender), non-zero exits of
    /// processes that lived a second or more, in order. Other exits are only counted (`collection.exits_unrecorded`).
    #[serde(default)]
    pub exits: Vec<Exit>,
    /// The sites as they stood about a third into the window (null when the window was too short to tell): what
    /// grew since is the growth flame graph.
    pub sites_early: Option<EarlySites>,
    pub verdict: Verdict,
    /// Extension: robust growth rates per category after the warm-up, the limit in use, time to the limit, and the
    /// OOM restarts: the trends the verdict is argued from.
    pub growth: Growth,
    /// What the tracer could not see, and what it cost: the numbers that say how far to trust the rest.
    pub collection: Collection,
    /// How allocations were recorded, so the reader knows whether site figures are exact or estimates.
    pub sampling: Sampling,
}

/// `mode` "bytes": an allocation of s bytes was kept with probability p = 2^-k, the smallest power of two not
/// below s / `rate_bytes` (always when s >= `rate_bytes`), and counted 1/p times: every byte and count in `sites`
/// is then an unbiased estimate, exact for allocations of `rate_bytes` or more. `mode` "all" (`--record-all`):
/// every allocation was recorded, `rate_bytes` is null. `kept_allocs`: allocations actually recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub mode: String,
    pub rate_bytes: Option<u64>,
    pub kept_allocs: u64,
}

impl Sampling {
    /// From the kernel side's `Config::sample_rate_shift` (0: everything recorded).
    pub fn from_shift(shift: u32, kept_allocs: u64) -> Self {
        match shift {
            0 => Sampling { mode: "all".into(), rate_bytes: None, kept_allocs },
            s => Sampling { mode: "bytes".into(), rate_bytes: Some(1 << s), kept_allocs },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// The cgroup traced last (a restarted container gets a new one).
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub cgroup_version: u8,
    pub container: Option<Container>,
    /// Every cgroup the trace followed, in order: the resolved one at `t` 0, then the cgroup of each restart of a
    /// container target.
    #[serde(default)]
    pub cgroups: Vec<FollowedCgroup>,
}

/// The container a target belongs to. Beyond `runtime`, `id` and `name` (empty when only the cgroup tree named
/// it), the facts the runtime gives, as of the end of the trace; `null` when it was not asked (no daemon).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// "docker", "containerd", "cri-o", "podman", "kubernetes" (cgroupfs pod layout), "unknown".
    pub runtime: String,
    pub id: String,
    pub name: String,
    pub image: Option<String>,
    /// The container's own memory limit (`docker run --memory`).
    pub memory_limit_bytes: Option<u64>,
    /// "no", "on-failure", "always", "unless-stopped".
    pub restart_policy: Option<String>,
    pub restart_count: Option<u64>,
    /// Whether its last exit was an OOM kill, and that exit's code (137 for SIGKILL), as the runtime recorded them.
    pub oom_killed: Option<bool>,
    pub last_exit_code: Option<i64>,
    /// Extension: the Kubernetes pod and namespace the container belongs to, from the labels kubelet gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowedCgroup {
    /// Seconds since the window's start when tracing moved to it.
    pub t: f64,
    pub cgroup_path: String,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub release: String,
    /// Which attribution paths were active: `pages`, `slab`, `memcg-anon-charges` (anon pages told by the memcg's
    /// NR_ANON_MAPPED charge), `gfp-anon` (the fallback before memcg tracepoints: anon pages told by gfp flags),
    /// `memcg-kmem-charges`, `oom-victim-rss` / `oom-victim` (mark_victim with / without the victim's RSS),
    /// `fault-address` (sampled pages carry their user fault's address: `sites[].region`).
    pub modes: Vec<String>,
    /// Extension: one line per capability this kernel lacks, with what that costs in accuracy.
    pub degraded: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// RFC3339.
    pub start: String,
    pub end: String,
    pub seconds: f64,
    /// Why the window ended: "duration elapsed", "interrupted (SIGINT)", "terminated (SIGTERM)", the same two
    /// "while attaching" (a window of almost nothing, marked so), "the target cgroup was removed", "the workload
    /// was OOM-killed" (demo), or "error: ..." when collection failed part-way (what came before is kept).
    #[serde(default)]
    pub ended_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub limit_bytes: Option<u64>,
    pub samples: Vec<Sample>,
}

/// One reading of the cgroup's memory files; `t` in seconds since the window's start, the rest in bytes
/// (`pids`, `processes`: counts). `None`: this kernel or cgroup version does not report it. v1 and v2 are
/// normalised to the v2 vocabulary (v1: `anon` = rss, `file` = cache, `kernel` = memory.kmem.usage_in_bytes, no
/// `slab`). Everything after `pids` is an extension.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub usage: u64,
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub slab: Option<u64>,
    pub kernel: Option<u64>,
    /// Tasks (threads) in the subtree.
    pub pids: Option<u64>,
    /// The effective limit at this moment (it can be changed while tracing).
    pub limit: Option<u64>,
    pub kernel_stack: Option<u64>,
    pub pagetables: Option<u64>,
    pub sock: Option<u64>,
    pub shmem: Option<u64>,
    /// Cumulative OOM kills in the cgroup (v1 memory.oom_control `oom_kill`, v2 memory.events `oom_kill`).
    pub oom_kill: Option<u64>,
    /// Cumulative OOM situations (v2 memory.events `oom`; v1 has no such counter).
    pub oom: Option<u64>,
    /// Cumulative times the limit was hit (v1 memory.failcnt, v2 memory.events `max`).
    pub failcnt: Option<u64>,
    /// Processes in the subtree.
    pub processes: Option<u64>,
    /// Sum over the processes of /proc/<pid>/status RssAnon + RssFile + RssShmem, and of RssAnon alone.
    pub rss: Option<u64>,
    pub rss_anon: Option<u64>,
    /// The process with the largest RssAnon.
    pub main_process: Option<ProcessRss>,
    /// What the traced sites held at this moment (net outstanding bytes since the trace began, per kind), so each
    /// interval's growth can be reconciled with the memory files.
    pub sites: Option<SiteTotals>,
}

/// Extension: one process's resident memory, from /proc/<pid>/status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessRss {
    pub pid: u32,
    pub comm: String,
    pub rss_anon: u64,
    /// RssAnon + RssFile + RssShmem.
    pub rss: u64,
}

/// Extension: net outstanding bytes of every traced site by kind (same kinds as `sites[].kind`), and the bytes
/// allocated in total (the load the workload puts on the allocators).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteTotals {
    pub anon: i64,
    pub slab: i64,
    pub page: i64,
    pub percpu: i64,
    pub other: i64,
    /// `--heap`: what the `heap` sites hold (malloc'd bytes, a view of the anon memory above, not more of it).
    #[serde(default)]
    pub heap: i64,
    pub allocated_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    pub anon: Coverage,
    pub slab: Coverage,
    /// `--heap`: how much of the anon growth the `heap` sites (the malloc'd bytes still held) explain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<Coverage>,
    /// Extension: the same reconciliation for every interval between two samples (`t0`..`t1`), from the site
    /// totals recorded with each sample. Empty when the samples carry no site totals.
    pub intervals: Vec<IntervalCoverage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub growth_bytes: i64,
    pub attributed_bytes: i64,
    pub coverage: Option<f64>,
    /// Extension: `growth_bytes - attributed_bytes`, the growth no traced site explains (negative: the sites hold
    /// more than the cgroup grew).
    pub unexplained_bytes: i64,
}

/// Extension: one interval's reconciliation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalCoverage {
    pub t0: f64,
    pub t1: f64,
    pub anon: Coverage,
    pub slab: Coverage,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Site {
    /// "anon" | "slab" | "page" | "percpu" | "other"
    pub kind: String,
    pub outstanding_bytes: i64,
    pub outstanding_allocs: i64,
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub slab_cache: Option<String>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// Leaf first: the kernel frames of the allocation, then the user frames that led to it.
    pub frames: Vec<Frame>,
    /// What names the site for people: its first application frame (`sites::app_frame`), not a C library or
    /// allocator leaf.
    #[serde(default)]
    pub label: Option<String>,
    /// The kind of memory that holds most of the site's sampled pages, told by their page faults' addresses:
    /// `brk-heap`, `malloc-arena`, `thread-stack`, `mmap`, `file` (`stacks::regions`); null when unknown.
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    pub symbol: Option<String>,
    pub module: Option<String>,
    /// "0x..." hex.
    pub address: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub kernel: bool,
    /// How a user frame was found: `regs` (the leaf, from the saved registers), `dwarf` (the callee's call frame
    /// information), `fp` (the callee's frame pointer: code without CFI), `jit` (in JIT code named by a perf map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwind: Option<String>,
}

impl Frame {
    /// A frame nothing is known about but its address.
    pub fn unknown(address: u64, kernel: bool) -> Self {
        Frame {
            symbol: None,
            module: None,
            address: format!("{address:#x}"),
            file: None,
            line: None,
            kernel,
            unwind: None,
        }
    }

    /// What to show for this frame: the symbol, else the address.
    pub fn label(&self) -> &str {
        self.symbol.as_deref().unwrap_or(&self.address)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OomKill {
    pub t: f64,
    /// The victim.
    pub pid: u32,
    pub comm: String,
    pub anon_rss_bytes: Option<u64>,
    /// The sites as they stood just before the kill (frees made by the dying victim not counted).
    pub sites_before_kill: Vec<Site>,
    /// The task that ran into the limit: often not the victim.
    pub trigger_pid: u32,
    pub trigger_comm: String,
    /// Extension: the victim's anon + file + shmem RSS from the kill event (`None` where the kernel gives only the
    /// pid).
    pub rss_bytes: Option<u64>,
    /// Extension, the flight recorder: which sites grew in the 10, 30 and 60 seconds before the kill.
    pub grew_before_kill: Vec<GrowthBeforeKill>,
    /// Extension: which life of the workload this kill ended (1 = the first in the window; a restart policy that
    /// relaunches the workload makes later kills 2, 3, ...).
    pub life: u32,
}

/// One death of a process of the target (CONTRACT "Additions": `exits[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    pub t: f64,
    pub pid: u32,
    pub comm: String,
    /// "oom-kill" (the OOM killer chose it), "signal" (any other fatal signal), "exit" (a non-zero status).
    pub cause: String,
    /// The signal it died of.
    pub signal: Option<i32>,
    /// Who sent that signal (the process itself for a fault such as SIGSEGV); null when no sending was seen.
    pub sender_pid: Option<u32>,
    pub sender_comm: Option<String>,
    /// The exit status; for a death by a signal 128 + the signal, as a shell or Docker reports it (137: SIGKILL).
    pub exit_code: Option<i32>,
    /// Extension: whether the sender sits outside the target cgroup (null: no sender seen).
    pub sender_outside: Option<bool>,
    /// Extension: how long the process had lived.
    pub lived_seconds: Option<f64>,
    /// Extension: the signal dumped core.
    pub core_dumped: bool,
}

/// Extension: the sites that grew in a span before an OOM kill; each site's `outstanding_bytes` and
/// `outstanding_allocs` are the growth within the span, `alloc_bytes` and `alloc_count` what it allocated in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrowthBeforeKill {
    /// The span asked for (10, 30, 60).
    pub seconds: f64,
    /// The span the recorder could cover (shorter when the trace began less than `seconds` before the kill).
    pub covered_seconds: f64,
    /// Sites that grew in the span, largest growth first.
    pub sites: Vec<Site>,
}

/// Extension: how each category of memory moves after the warm-up, robustly (Theil-Sen slope: the median of the
/// slopes between every pair of samples of the same life, so neither noise nor an OOM kill's drop bends it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// Samples before this `t` are the warm-up and are not used for trends.
    pub warmup_seconds: f64,
    /// Samples used (after the warm-up).
    pub samples: u64,
    /// Lives of the workload in the window: OOM kills split the series, and trends never span a kill.
    pub lives: u32,
    /// OOM kills after which a new process appeared in the cgroup.
    pub restarts: u32,
    /// usage, anon, file, kernel (slab where the cgroup has no kernel figure), kernel_stack, sock, shmem, tasks.
    pub trends: Vec<Trend>,
    /// Last usage / limit.
    pub limit_share: Option<f64>,
    /// Share of post-warm-up samples whose usage was above 80 % of the limit.
    pub near_limit_share: Option<f64>,
    /// Seconds until usage reaches the limit if the usage trend continues (null: no limit or no growth).
    pub time_to_limit_seconds: Option<f64>,
}

/// Extension: one category's trend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    pub name: String,
    /// "bytes", or "tasks" for `tasks`.
    pub unit: String,
    /// Robust slope in units per hour.
    pub rate_per_hour: f64,
    /// Kendall's tau over the same pairs, -1..1: how steadily the category moves (1: every later sample is
    /// higher); near 0 for a flat or noisy series.
    pub steadiness: f64,
    /// Slope times the time covered by the lives: the growth the trend accounts for.
    pub change: f64,
    pub first: Option<u64>,
    pub last: Option<u64>,
}

/// `sites` at `t` seconds into the window, same shape and order as `Report::sites`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlySites {
    pub t: f64,
    pub sites: Vec<Site>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub class: String,
    pub confidence: f64,
    pub evidence: Vec<String>,
    /// What to do, each with its figure (a memory limit in bytes, a pids.max, where to look instead).
    #[serde(default)]
    pub recommendations: Vec<String>,
    /// The language runtime the memory goes through: `go`, `python`, `node`, `jvm`; null for native programs
    /// (`verdict::runtime`).
    #[serde(default)]
    pub runtime: Option<String>,
    /// Where the growing memory lives: `application-heap`, `managed-heap`, `off-heap`, `runtime`, `thread-stack`,
    /// `kernel`, `page-cache`, `shmem`; null when nothing grows or the class says nothing of it.
    #[serde(default)]
    pub location: Option<String>,
}

/// Counters of what the kernel side missed or dropped, and the tracer's own cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    pub stack_collisions_kernel: u64,
    pub stack_collisions_user: u64,
    pub stack_errors: u64,
    pub live_map_full: u64,
    pub site_map_full: u64,
    pub ringbuf_drops: u64,
    pub implicit_frees: u64,
    pub anon_charge_unmatched_pages: u64,
    pub alloc_events: u64,
    pub free_events: u64,
    pub oom_events: u64,
    /// Kept pages that khugepaged collapsed into a huge page: still held by the site that faulted them in (the
    /// huge page's own later free is not seen).
    #[serde(default)]
    pub collapsed_into_huge_pages: u64,
    /// Kept allocations whose kernel stack was the one walked before on the same kernel path (told by the user
    /// instruction and stack pointer, the system call and what is allocated) instead of a walk of their own; and
    /// the rechecks, one use in 16, that found a path's stack changed (the new one is reused from then on).
    #[serde(default)]
    pub kernel_stacks_reused: u64,
    #[serde(default)]
    pub kernel_stack_rechecks_changed: u64,
    pub recursion_misses: u64,
    pub intervals: u64,
    pub tracer_cpu_seconds: f64,
    pub tracer_peak_rss_bytes: u64,
    /// Per eBPF program: `run_count` and `run_time_ns` (0 unless `kernel.bpf_stats_enabled` was 1: the kernel
    /// only counts then), and its share of `recursion_misses`.
    pub programs: Vec<ProgramStats>,
    /// Sites of exited processes that held nothing and were left out of the report to bound the tracer's memory
    /// (only on cgroups that run tens of thousands of processes).
    #[serde(default)]
    pub retired_sites_dropped: u64,
    /// Sites beyond the report's bound (`sites` keeps the largest): counted here, still in `attribution`.
    #[serde(default)]
    pub sites_left_out: u64,
    /// How the user stacks of kept allocations were unwound.
    #[serde(default)]
    pub unwind: crate::stacks::UnwindStats,
    /// Exits of the target's processes counted but not in `exits` (status 0, or a non-zero one within a second of
    /// the start, or past the report's bound), and exits lost to a full ring buffer.
    #[serde(default)]
    pub exits_unrecorded: u64,
    #[serde(default)]
    pub exits_dropped: u64,
    /// `--heap`: the processes probed, what the probes cost each one, and which were let go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<HeapCollection>,
    /// `--jvm-perfmap`: the JVMs asked for perf maps, and how they answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jvm_perfmaps: Vec<crate::stacks::jvm_perfmap::JvmPerfMapStats>,
    /// `--node-heap`: the node processes whose V8 heap was profiled, and how that went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_heaps: Vec<crate::collect::node_heap::NodeHeapStats>,
    /// `--jvm-heap`: the JVMs whose heap JFR's old-object sampler sampled, and how that went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jvm_heaps: Vec<crate::collect::jvm_heap::JvmHeapStats>,
}

/// `collection.heap`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapCollection {
    /// What one probe hit costs here, measured at the start on the tracer's own `malloc` and `free`.
    pub hit_cost_ns: f64,
    /// `--heap-budget`: the most of a process's CPU time the probes may take before they are detached from it.
    pub budget_percent: f64,
    pub processes: Vec<HeapProcess>,
    /// Kept allocator calls lost because the kernel's table of calls in flight was full.
    pub calls_lost: u64,
    /// Allocator returns that did not match their call (a `longjmp` out of the allocator, a probe detached
    /// mid-call): their allocation is not counted.
    pub unmatched_returns: u64,
}

/// One process of the target as `--heap` saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapProcess {
    pub pid: u32,
    pub comm: String,
    /// The object probed (the process's path): its libc, the executable, jemalloc...
    pub allocator: Option<String>,
    pub probes: u32,
    /// Seconds since the start.
    pub attached_at: f64,
    /// `traced`, `exited`, `over-budget` (detached), `not-traced` (no allocator found, or attaching failed), `go-profile`
    /// (a Go program without libc: its runtime's heap profile is read instead; see `note`).
    pub state: String,
    pub hits: u64,
    /// In the first interval after attaching.
    pub hits_per_second: Option<f64>,
    /// The highest estimated cost over an interval, in CPUs (hits/s times the cost of a hit).
    pub cost_cpu: f64,
    pub detached_at: Option<f64>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramStats {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
}

/// Writes `report.json` into `dir` atomically, mode 0600.
pub fn write_json(dir: &Path, report: &Report) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(report).context("cannot serialize the report")?;
    bytes.push(b'\n');
    crate::output::write_atomic(dir, "report.json", &bytes)
}
