//! The serde model of report.json, schema "leaktrace.report/1" (see CONTRACT.md). Every field of the contract is
//! here under its contract name; `Option`s serialize as `null` and are never omitted, so scripts can rely on every
//! key being present. Extensions (`schema`, `collection`, `OomKill::trigger_*`, `window.ended_by`) only add keys.
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
    pub verdict: Verdict,
    /// What the tracer could not see, and what it cost: the numbers that say how far to trust the rest.
    pub collection: Collection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub cgroup_version: u8,
    pub container: Option<Container>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub runtime: String,
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub release: String,
    /// Which attribution paths were active.
    pub modes: Vec<String>,
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
/// (`pids`: a count). `None`: this kernel or cgroup version does not report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub usage: u64,
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub slab: Option<u64>,
    pub kernel: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    pub anon: Coverage,
    pub slab: Coverage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub growth_bytes: i64,
    pub attributed_bytes: i64,
    pub coverage: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl Frame {
    /// A frame nothing is known about but its address.
    pub fn unknown(address: u64, kernel: bool) -> Self {
        Frame { symbol: None, module: None, address: format!("{address:#x}"), file: None, line: None, kernel }
    }

    /// What to show for this frame: the symbol, else the address.
    pub fn label(&self) -> &str {
        self.symbol.as_deref().unwrap_or(&self.address)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub class: String,
    pub confidence: f64,
    pub evidence: Vec<String>,
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
    pub recursion_misses: u64,
    pub intervals: u64,
    pub tracer_cpu_seconds: f64,
    pub tracer_peak_rss_bytes: u64,
    /// Sites of exited processes that held nothing and were left out of the report to bound the tracer's memory
    /// (only on cgroups that run tens of thousands of processes).
    #[serde(default)]
    pub retired_sites_dropped: u64,
}

/// Writes `report.json` into `dir` atomically, mode 0600.
pub fn write_json(dir: &Path, report: &Report) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(report).context("cannot serialize the report")?;
    bytes.push(b'\n');
    crate::output::write_atomic(dir, "report.json", &bytes)
}
