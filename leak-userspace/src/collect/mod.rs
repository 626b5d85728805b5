//! Collection: every interval, follow the target's subtree and processes, sample its memory files; at each OOM
//! kill, take the picture of the sites before the SIGKILL; at the end, assemble the report.
pub mod oom;
mod retire;

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    time::Instant,
};

use anyhow::Result;
use leak_common::counter;

use crate::{
    attribution,
    memory::{self, MemorySnapshot},
    probes::{Discovery, Probes},
    report,
    sites::{self, Outstanding},
    symbolize::Symbolizer,
    target::{self, Target},
    verdict,
};

/// How many sites report.json keeps (largest outstanding first); attribution counts every site.
const REPORT_SITES: usize = 500;

pub struct Collector {
    target: Target,
    /// The target relative to its hierarchy's root, as /proc/<pid>/cgroup names it.
    target_rel: PathBuf,
    release: String,
    modes: Vec<String>,
    top: usize,
    start: Instant,
    start_wall: time::OffsetDateTime,
    start_ktime_ns: u64,
    memcg_ids: Vec<u64>,
    known_pids: BTreeSet<u32>,
    /// The first mapping of each process when its mappings were cached: an exec (even of the same file)
    /// replaces every mapping, and this line with them.
    first_mappings: HashMap<u32, String>,
    comms: HashMap<u32, String>,
    symbolizer: Symbolizer,
    samples: Vec<report::Sample>,
    limit: Option<u64>,
    oom_kills: Vec<report::OomKill>,
    intervals: u64,
    /// Sites of exited processes, taken out of the kernel map so it does not fill up.
    retired: retire::Retired,
}

impl Collector {
    pub fn new(target: Target, discovery: &Discovery, top: usize) -> Self {
        let target_rel = relative_to_hierarchy(&target.path);
        Collector {
            target,
            target_rel,
            release: read_release(),
            modes: discovery.modes.clone(),
            top,
            start: Instant::now(),
            start_wall: time::OffsetDateTime::now_utc(),
            start_ktime_ns: monotonic_ns(),
            memcg_ids: Vec::new(),
            known_pids: BTreeSet::new(),
            first_mappings: HashMap::new(),
            comms: HashMap::new(),
            symbolizer: Symbolizer::new(),
            samples: Vec::new(),
            limit: None,
            oom_kills: Vec::new(),
            intervals: 0,
            retired: retire::Retired::default(),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Keeps the kernel filter on the target's current subtree and learns the processes living in it.
    fn follow_subtree(&mut self, probes: &mut Probes) -> Result<()> {
        let mut ids = target::subtree_ids(&self.target.path);
        ids.sort_unstable();
        if ids != self.memcg_ids {
            probes.set_memcgs(&ids)?;
            self.memcg_ids = ids;
        }
        for pid in target::member_pids(&self.target.path) {
            self.learn_process(pid);
        }
        Ok(())
    }

    /// One interval. Returns false once the target cgroup is gone.
    pub fn tick(&mut self, probes: &mut Probes) -> Result<bool> {
        if !self.target.path.join("cgroup.procs").exists() {
            return Ok(false);
        }
        self.follow_subtree(probes)?;
        // Processes that allocated and left between two scans are known only from the sites they made.
        let raw = probes.sites()?;
        for (key, _) in &raw {
            self.learn_process(key.tgid);
        }
        self.retired.retire(probes, &raw, retire::process_alive)?;
        self.sample();
        self.intervals += 1;
        Ok(true)
    }

    fn sample(&mut self) {
        match memory::read_snapshot(&self.target) {
            Ok(snap) => {
                self.limit = snap.limit;
                let t = self.start.elapsed().as_secs_f64();
                self.samples.push(sample_of(t, &snap));
            }
            Err(e) => tracing::warn!("cannot read the memory files of {}: {e:#}", self.target.path.display()),
        }
    }

    /// Caches a process's mappings when it is first seen, and again after it execs, so its stacks symbolize even
    /// after it is killed.
    fn learn_process(&mut self, pid: u32) {
        if pid == 0 {
            return;
        }
        let first = first_mapping(pid);
        let new = self.known_pids.insert(pid);
        if !new && (first.is_none() || first.as_ref() == self.first_mappings.get(&pid)) {
            return;
        }
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            self.comms.insert(pid, comm.trim_end().to_string());
        }
        if let Some(first) = first {
            self.first_mappings.insert(pid, first);
        }
        self.symbolizer.remember_process(pid);
    }

    /// Handles one ring buffer record. Returns true when it was an OOM kill of the target.
    pub fn oom_event(&mut self, probes: &Probes, bytes: &[u8]) -> Result<bool> {
        let Some(notice) = oom::decode(bytes) else {
            return Ok(false);
        };
        if !oom::belongs_to_target(&notice, &self.memcg_ids, &self.known_pids, &self.target_rel) {
            return Ok(false);
        }
        // Read the counters first: what follows (symbolizing) may take a while.
        let raw = self.retired.merged(probes.sites()?);
        self.comms.entry(notice.victim_pid).or_insert_with(|| notice.victim_comm.clone());
        let sites = self.build_sites(probes, &raw, Outstanding::BeforeOomKill, self.top)?;
        let t = notice.ktime_ns.saturating_sub(self.start_ktime_ns) as f64 / 1e9;
        self.oom_kills.push(report::OomKill {
            t,
            pid: notice.victim_pid,
            comm: notice.victim_comm,
            anon_rss_bytes: notice.anon_rss_bytes,
            sites_before_kill: sites,
            trigger_pid: notice.trigger_pid,
            trigger_comm: notice.trigger_comm,
        });
        Ok(true)
    }

    fn build_sites(
        &mut self,
        probes: &Probes,
        raw: &[(leak_common::SiteKey, leak_common::SiteCounters)],
        mode: Outstanding,
        top: usize,
    ) -> Result<Vec<report::Site>> {
        let stacks = probes.stacks()?;
        let caches = probes.cache_names()?;
        Ok(sites::build(raw, &stacks, &caches, &self.comms, &mut self.symbolizer, mode, top))
    }

    /// The last sample and the final picture of every site, assembled into the report.
    pub fn finish(mut self, probes: &Probes) -> Result<report::Report> {
        if self.target.path.join("cgroup.procs").exists() {
            self.sample();
        }
        let raw = self.retired.merged(probes.sites()?);
        let mut sites = self.build_sites(probes, &raw, Outstanding::Live, usize::MAX)?;
        let c = probes.counters()?;
        let end = time::OffsetDateTime::now_utc();
        let usage = resource_usage();
        let attribution = attribution::attribute(&self.samples, &sites);
        sites.truncate(REPORT_SITES);
        let mut report = report::Report {
            schema: report::SCHEMA.to_string(),
            target: report::TargetInfo {
                cgroup_path: self.target.path.display().to_string(),
                cgroup_id: self.target.id,
                cgroup_version: self.target.version.number(),
                container: self.target.container.as_ref().map(|c| report::Container {
                    runtime: c.runtime.clone(),
                    id: c.id.clone(),
                    name: c.name.clone(),
                }),
            },
            kernel: report::KernelInfo { release: self.release.clone(), modes: self.modes.clone() },
            window: report::Window {
                start: rfc3339(self.start_wall),
                end: rfc3339(end),
                seconds: self.start.elapsed().as_secs_f64(),
                ended_by: String::new(),
            },
            memory: report::Memory { limit_bytes: self.limit, samples: self.samples },
            attribution,
            sites,
            oom_kills: self.oom_kills,
            verdict: report::Verdict { class: "inconclusive".into(), confidence: 0.0, evidence: Vec::new() },
            collection: report::Collection {
                stack_collisions_kernel: c[counter::KSTACK_COLLISION as usize],
                stack_collisions_user: c[counter::USTACK_COLLISION as usize],
                stack_errors: c[counter::STACK_ERROR as usize],
                live_map_full: c[counter::LIVE_MAP_FULL as usize],
                site_map_full: c[counter::SITE_MAP_FULL as usize],
                ringbuf_drops: c[counter::RINGBUF_DROP as usize],
                implicit_frees: c[counter::IMPLICIT_FREE as usize],
                anon_charge_unmatched_pages: c[counter::ANON_CHARGE_UNMATCHED as usize],
                alloc_events: c[counter::ALLOC_EVENTS as usize],
                free_events: c[counter::FREE_EVENTS as usize],
                oom_events: c[counter::OOM_EVENTS as usize],
                recursion_misses: probes.recursion_misses(),
                intervals: self.intervals,
                tracer_cpu_seconds: usage.0,
                tracer_peak_rss_bytes: usage.1,
                retired_sites_dropped: self.retired.dropped(),
            },
        };
        report.verdict = verdict::judge(&report);
        Ok(report)
    }
}

fn sample_of(t: f64, s: &MemorySnapshot) -> report::Sample {
    report::Sample { t, usage: s.usage, anon: s.anon, file: s.file, slab: s.slab, kernel: s.kernel, pids: s.pids }
}

fn first_mapping(pid: u32) -> Option<String> {
    use std::io::BufRead;
    let file = std::fs::File::open(format!("/proc/{pid}/maps")).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(file).read_line(&mut line).ok()?;
    (!line.is_empty()).then_some(line)
}

fn read_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// `/sys/fs/cgroup/memory/a/b` -> `a/b`: the mount point is the first directory holding `cgroup.procs`'s root.
fn relative_to_hierarchy(path: &std::path::Path) -> PathBuf {
    let mut root = path;
    while let Some(parent) = root.parent() {
        if !parent.join("cgroup.procs").exists() {
            break;
        }
        root = parent;
    }
    path.strip_prefix(root).map(PathBuf::from).unwrap_or_default()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The tracer's own CPU seconds and peak RSS in bytes.
fn resource_usage() -> (f64, u64) {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss as u64 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_of_a_real_cgroup_dir() {
        let base = tempfile::tempdir().unwrap();
        let a = base.path().join("root/a/b");
        std::fs::create_dir_all(&a).unwrap();
        for d in ["root", "root/a", "root/a/b"] {
            std::fs::write(base.path().join(d).join("cgroup.procs"), b"").unwrap();
        }
        assert_eq!(relative_to_hierarchy(&a), PathBuf::from("a/b"));
    }

    #[test]
    fn resource_usage_is_positive() {
        let (_, rss) = resource_usage();
        assert!(rss > 0);
    }
}
