//! The cgroup's own memory accounting, read every interval: the ground truth the traced call sites are measured
//! against. v1 and v2 name things differently; everything here is normalised to the v2 vocabulary.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use crate::cgroup::{CgroupVersion, Target};

/// v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes (0x7FFFFFFFFFFFF000 on x86-64, other values with other
/// page sizes); anything this large is no limit in practice.
const V1_UNLIMITED: u64 = 1 << 62;

/// One reading of a memcg, in bytes unless said otherwise. `None`: this kernel / cgroup version does not report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemorySnapshot {
    /// v1 `memory.usage_in_bytes`, v2 `memory.current`.
    pub usage: u64,
    /// The effective limit: the smallest of the cgroup's own and its ancestors' (v1 `hierarchical_memory_limit`,
    /// else `memory.limit_in_bytes`; v2 `memory.max` up the tree). `None` when unlimited.
    pub limit: Option<u64>,
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub slab: Option<u64>,
    pub kernel: Option<u64>,
    pub kernel_stack: Option<u64>,
    pub pagetables: Option<u64>,
    pub sock: Option<u64>,
    pub shmem: Option<u64>,
    /// Tasks (threads) in the subtree, so that a thread leak shows as a rising count.
    pub pids: Option<u64>,
    /// v1 `memory.oom_control` / v2 `memory.events` `oom_kill`.
    pub oom_kills: Option<u64>,
    /// v2 `memory.events` `oom` (v1 has no counter for it).
    pub oom_events: Option<u64>,
    /// Times the limit was hit: v1 `memory.failcnt`, v2 `memory.events` `max`.
    pub failcnt: Option<u64>,
}

/// The resident memory of a set of processes, from /proc/<pid>/status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessesRss {
    pub processes: u64,
    /// Sum of RssAnon + RssFile + RssShmem.
    pub rss: u64,
    pub rss_anon: u64,
    /// The process with the largest RssAnon: pid, comm, RssAnon, RSS.
    pub main: Option<(u32, String, u64, u64)>,
}

/// Reads /proc/<pid>/status of each pid; processes that are gone (or kernel threads, without Rss lines) count as
/// processes and add nothing.
pub fn processes_rss(pids: &[u32]) -> ProcessesRss {
    let mut out = ProcessesRss { processes: pids.len() as u64, ..Default::default() };
    for &pid in pids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let (comm, anon, rss) = status_rss(&text);
        out.rss += rss;
        out.rss_anon += anon;
        if out.main.as_ref().is_none_or(|m| anon > m.2) {
            out.main = Some((pid, comm, anon, rss));
        }
    }
    out
}

/// Name, RssAnon and RssAnon + RssFile + RssShmem (bytes) of a /proc/<pid>/status text.
pub fn status_rss(text: &str) -> (String, u64, u64) {
    let mut name = String::new();
    let (mut anon, mut rss) = (0, 0);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let kb = || value.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0) * 1024;
        match key {
            "Name" => name = value.trim().to_string(),
            "RssAnon" => {
                anon = kb();
                rss += anon;
            }
            "RssFile" | "RssShmem" => rss += kb(),
            _ => {}
        }
    }
    (name, anon, rss)
}

/// Parses `key value` lines (memory.stat, memory.events, memory.oom_control). Lines of any other shape are skipped.
pub fn parse_stat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (key, value, rest) = (words.next()?, words.next()?, words.next());
            match rest {
                None => Some((key.to_string(), value.parse().ok()?)),
                Some(_) => None,
            }
        })
        .collect()
}

/// The breakdown fields of a snapshot from a parsed memory.stat; `usage`, `limit`, counts and v1 `kernel` (which
/// is not in v1's memory.stat) are left at their defaults.
pub fn normalise(version: CgroupVersion, stat: &BTreeMap<String, u64>) -> MemorySnapshot {
    let get = |key: &str| stat.get(key).copied();
    match version {
        CgroupVersion::V2 => {
            // `kernel` appeared in 5.18; before it, the kernel-side items are summed.
            let parts = ["kernel_stack", "pagetables", "percpu", "sock", "slab"].map(get);
            let summed = parts.iter().any(Option::is_some).then(|| parts.iter().flatten().sum());
            MemorySnapshot {
                anon: get("anon"),
                file: get("file"),
                slab: get("slab"),
                kernel: get("kernel").or(summed),
                kernel_stack: get("kernel_stack"),
                pagetables: get("pagetables"),
                sock: get("sock"),
                shmem: get("shmem"),
                ..Default::default()
            }
        }
        CgroupVersion::V1 => {
            // `total_*` cover the whole subtree like usage_in_bytes does; the plain keys are this cgroup alone and
            // equal when it has no children (or when use_hierarchy is off and total_* are absent). `rss` already
            // includes transparent huge pages (`rss_huge` is a part of it, not an addition).
            let v1 = |key: &str| get(&format!("total_{key}")).or_else(|| get(key));
            MemorySnapshot { anon: v1("rss"), file: v1("cache"), shmem: v1("shmem"), ..Default::default() }
        }
    }
}

/// Reads the target's accounting now, with its `tasks` counted by the caller's walk (`cgroup::subtree`). Fails
/// only when the usage cannot be read (typically: the cgroup is gone); every other missing file leaves its fields
/// `None`.
pub fn read_snapshot(target: &Target, tasks: u64) -> anyhow::Result<MemorySnapshot> {
    let dir = &target.path;
    let stat = read_keyed(dir, "memory.stat").unwrap_or_default();
    let pids = Some(tasks);
    let snapshot = match target.version {
        CgroupVersion::V1 => {
            let oom = read_keyed(dir, "memory.oom_control").unwrap_or_default();
            let own_limit = read_u64(dir, "memory.limit_in_bytes");
            let limit = stat.get("hierarchical_memory_limit").copied().or(own_limit).filter(|&l| l < V1_UNLIMITED);
            MemorySnapshot {
                usage: required_u64(dir, "memory.usage_in_bytes")?,
                limit,
                kernel: read_u64(dir, "memory.kmem.usage_in_bytes"),
                pids,
                oom_kills: oom.get("oom_kill").copied(),
                oom_events: None,
                failcnt: read_u64(dir, "memory.failcnt"),
                ..normalise(CgroupVersion::V1, &stat)
            }
        }
        CgroupVersion::V2 => {
            let events = read_keyed(dir, "memory.events").unwrap_or_default();
            MemorySnapshot {
                usage: required_u64(dir, "memory.current")?,
                limit: v2_effective_limit(dir),
                pids,
                oom_kills: events.get("oom_kill").copied(),
                oom_events: events.get("oom").copied(),
                failcnt: events.get("max").copied(),
                ..normalise(CgroupVersion::V2, &stat)
            }
        }
    };
    Ok(snapshot)
}

/// The smallest `memory.max` of `dir` and its ancestors; the root has no memory.max, which ends the walk.
fn v2_effective_limit(dir: &Path) -> Option<u64> {
    dir.ancestors()
        .map_while(|d| std::fs::read_to_string(d.join("memory.max")).ok())
        .filter_map(|text| text.trim().parse::<u64>().ok()) // "max" does not parse: unlimited
        .min()
}

fn read_keyed(dir: &Path, file: &str) -> Option<BTreeMap<String, u64>> {
    std::fs::read_to_string(dir.join(file)).ok().map(|t| parse_stat(&t))
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
}

fn required_u64(dir: &Path, file: &str) -> anyhow::Result<u64> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (was the cgroup removed?)", path.display()))?;
    text.trim().parse().with_context(|| format!("{} does not hold a number: {:?}", path.display(), text.trim()))
}

#[cfg(test)]
mod tests;
