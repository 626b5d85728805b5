//! One traced cgroup's window: the cgroup (followed through a container's restarts), its processes, its memory
//! samples with what its sites held at each, its OOM kills with the sites before each, its deaths, and the flight
//! recorder and early counters its report is argued from. A trace has one window; the agent has one per container.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Result;
use leak_common::{kind, SiteCounters, SiteKey};

use super::{
    early, exits, flight,
    oom::{self, OomNotice},
    site_reader::{RawSites, SiteReader},
};
use crate::{
    cgroup::{self, Follower, Poll, Target},
    memory::{self, MemorySnapshot},
    probes::Probes,
    report,
    sites::Outstanding,
};

/// How many grown sites each flight-recorder span of an OOM kill keeps.
const FLIGHT_SITES: usize = 10;

pub struct Window {
    pub(super) target: Target,
    /// Moves `target` to a restarted container's new cgroup.
    pub(super) follower: Follower,
    /// The target relative to its hierarchy's root, as /proc/<pid>/cgroup names it.
    target_rel: PathBuf,
    /// The subtree at the last scan: its memcg ids and processes.
    subtree: cgroup::Subtree,
    /// Every process seen in the target (its subtree or its sites), with when it was first seen (seconds since the
    /// start): a process new after a kill is a restart.
    pub(super) first_seen: HashMap<u32, f64>,
    pub(super) start: Instant,
    pub(super) start_wall: time::OffsetDateTime,
    start_ktime_ns: u64,
    pub(super) samples: Vec<report::Sample>,
    pub(super) limit: Option<u64>,
    pub(super) oom_kills: Vec<report::OomKill>,
    pub(super) exits: Vec<report::Exit>,
    /// Deaths past `exits::MAX_EXITS`, counted only.
    pub(super) exits_over: u64,
    pub(super) intervals: u64,
    pub(super) early: early::EarlySites,
    flight: flight::FlightRecorder,
}

/// What the window has seen so far: moved into the final report, copied into a snapshot.
pub struct History {
    pub samples: Vec<report::Sample>,
    pub oom_kills: Vec<report::OomKill>,
    pub exits: Vec<report::Exit>,
}

impl Window {
    pub fn new(target: Target) -> Self {
        Window {
            follower: Follower::new(&target),
            target_rel: relative_to_hierarchy(&target.path),
            target,
            subtree: cgroup::Subtree::default(),
            first_seen: HashMap::new(),
            start: Instant::now(),
            start_wall: time::OffsetDateTime::now_utc(),
            start_ktime_ns: monotonic_ns(),
            samples: Vec::new(),
            limit: None,
            oom_kills: Vec::new(),
            exits: Vec::new(),
            exits_over: 0,
            intervals: 0,
            early: early::EarlySites::default(),
            flight: flight::FlightRecorder::default(),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn samples(&self) -> &[report::Sample] {
        &self.samples
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    pub fn oom_kills(&self) -> &[report::OomKill] {
        &self.oom_kills
    }

    pub fn follower(&self) -> &Follower {
        &self.follower
    }

    /// Seconds since the window's start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Whether the target moved (a restarted container's new cgroup), is gone, or is waited for.
    pub fn follow(&mut self) -> Poll {
        let poll = self.follower.poll(&mut self.target);
        if poll == Poll::Moved {
            self.target_rel = relative_to_hierarchy(&self.target.path);
        }
        poll
    }

    /// The follower's last look at the target before the report.
    pub fn refresh(&mut self) {
        self.follower.refresh(&mut self.target);
    }

    /// Reads the target's subtree (its memcg ids, for the kernel filter) and its processes now, which it notes.
    pub fn scan(&mut self) -> Vec<u32> {
        self.subtree = cgroup::subtree(&self.target.path, self.target.version);
        let pids = self.subtree.pids.clone();
        self.note(pids.iter().copied());
        pids
    }

    /// The memcg ids of the subtree at the last scan.
    pub fn memcg_ids(&self) -> &[u64] {
        &self.subtree.ids
    }

    /// Processes of the target (some known only from the sites they made).
    pub fn note(&mut self, pids: impl IntoIterator<Item = u32>) {
        let t = self.elapsed();
        for pid in pids.into_iter().filter(|&p| p != 0) {
            self.first_seen.entry(pid).or_insert(t);
        }
    }

    pub fn owns(&self, pid: u32) -> bool {
        self.first_seen.contains_key(&pid)
    }

    /// One interval's sites of the target: kept for the early picture and the flight recorder, and sampled with
    /// the memory files and the processes and tasks of this interval's `scan`.
    pub fn observe(&mut self, raw: &RawSites) {
        let t = self.elapsed();
        self.early.offer(self.intervals, t, raw);
        self.flight.record(t, raw);
        let subtree = std::mem::take(&mut self.subtree);
        self.sample_with(raw, &subtree);
        self.subtree = subtree;
        self.intervals += 1;
    }

    /// Reads the memory files and the processes' RSS, with what the sites held at the same moment.
    pub fn sample(&mut self, raw: &[(SiteKey, SiteCounters)]) {
        self.sample_with(raw, &cgroup::subtree(&self.target.path, self.target.version));
    }

    fn sample_with(&mut self, raw: &[(SiteKey, SiteCounters)], subtree: &cgroup::Subtree) {
        match memory::read_snapshot(&self.target, subtree.tasks) {
            Ok(snap) => {
                self.limit = snap.limit;
                let rss = memory::processes_rss(&subtree.pids);
                self.samples.push(sample_of(self.elapsed(), &snap, &rss, site_totals(raw)));
            }
            Err(e) => tracing::warn!("cannot read the memory files of {}: {e:#}", self.target.path.display()),
        }
    }

    /// Whether the target's cgroup is still there to be read.
    pub fn exists(&self) -> bool {
        self.target.path.join("cgroup.procs").exists()
    }

    /// Whether an OOM kill the kernel reported is the target's.
    pub fn is_kill_of(&self, notice: &OomNotice) -> bool {
        oom::belongs_to_target(notice, &self.subtree.ids, |pid| self.owns(pid), &self.target_rel)
    }

    /// Records an OOM kill of the target with the sites before it: `raw` as the counters stood when it was
    /// reported, `held` the runtimes' own heap sites of the victim; `top` sites are kept.
    pub fn record_kill(
        &mut self,
        reader: &mut SiteReader,
        probes: &Probes,
        notice: OomNotice,
        mut raw: RawSites,
        held: Vec<report::Site>,
        top: usize,
    ) -> Result<()> {
        reader.name_victim(notice.victim_pid, &notice.victim_comm);
        let t = notice.ktime_ns.saturating_sub(self.start_ktime_ns) as f64 / 1e9;
        // The flight recorder settles earlier victims' OOM frees itself (up to the last interval before this
        // kill): it reads the counters as the kernel has them.
        let mut grew_before_kill = Vec::new();
        for span in flight::SPANS {
            let Some((covered, delta)) = self.flight.growth(t, span, &raw) else { continue };
            let mut grown = reader.build_sites(probes, &delta, Outstanding::BeforeOomKill, usize::MAX)?;
            grown.retain(|s| s.outstanding_bytes > 0);
            grown.truncate(FLIGHT_SITES);
            grew_before_kill.push(report::GrowthBeforeKill { seconds: span, covered_seconds: covered, sites: grown });
        }
        let earlier: Vec<u32> = self.oom_kills.iter().map(|k| k.pid).collect();
        oom::settle_earlier_victims(&mut raw, &earlier);
        let mut sites = reader.build_sites(probes, &raw, Outstanding::BeforeOomKill, top)?;
        if !held.is_empty() {
            sites.extend(held);
            sites.sort_by_key(|s| std::cmp::Reverse(s.outstanding_bytes));
            sites.truncate(top);
        }
        self.oom_kills.push(report::OomKill {
            t,
            pid: notice.victim_pid,
            comm: notice.victim_comm,
            anon_rss_bytes: notice.anon_rss_bytes,
            sites_before_kill: sites,
            trigger_pid: notice.trigger_pid,
            trigger_comm: notice.trigger_comm,
            rss_bytes: notice.rss_bytes,
            grew_before_kill,
            life: self.oom_kills.len() as u32 + 1,
        });
        Ok(())
    }

    /// One record of the exit ring buffer, of one of the target's processes.
    pub fn exit_event(&mut self, bytes: &[u8]) {
        let Some(exit) = exits::decode(bytes, self.start_ktime_ns) else { return };
        if self.exits.len() < exits::MAX_EXITS {
            self.exits.push(exit);
        } else {
            self.exits_over += 1;
        }
    }

    /// The history so far, kept for more.
    pub fn history(&self) -> History {
        History { samples: self.samples.clone(), oom_kills: self.oom_kills.clone(), exits: self.exits.clone() }
    }

    /// The history, moved out at the window's end.
    pub fn take_history(&mut self) -> History {
        History {
            samples: std::mem::take(&mut self.samples),
            oom_kills: std::mem::take(&mut self.oom_kills),
            exits: std::mem::take(&mut self.exits),
        }
    }

    /// A rolling window: the samples, kills and deaths older than `seconds` go (the kills beyond `max_kills` too).
    pub fn trim(&mut self, seconds: f64, max_kills: usize) {
        let horizon = self.elapsed() - seconds;
        self.samples.retain(|s| s.t >= horizon);
        self.oom_kills.retain(|k| k.t >= horizon);
        let over = self.oom_kills.len().saturating_sub(max_kills);
        self.oom_kills.drain(..over);
        self.exits.retain(|e| e.t >= horizon);
    }
}

fn sample_of(t: f64, s: &MemorySnapshot, rss: &memory::ProcessesRss, sites: report::SiteTotals) -> report::Sample {
    report::Sample {
        t,
        usage: s.usage,
        anon: s.anon,
        file: s.file,
        slab: s.slab,
        kernel: s.kernel,
        pids: s.pids,
        limit: s.limit,
        kernel_stack: s.kernel_stack,
        pagetables: s.pagetables,
        sock: s.sock,
        shmem: s.shmem,
        oom_kill: s.oom_kills,
        oom: s.oom_events,
        failcnt: s.failcnt,
        processes: Some(rss.processes),
        rss: Some(rss.rss),
        rss_anon: Some(rss.rss_anon),
        main_process: rss.main.as_ref().map(|(pid, comm, rss_anon, rss)| report::ProcessRss {
            pid: *pid,
            comm: comm.clone(),
            rss_anon: *rss_anon,
            rss: *rss,
        }),
        sites: Some(sites),
    }
}

/// What the sites hold now, by kind (every free counted, an OOM victim's too: the memory files have lost it too).
fn site_totals(raw: &[(SiteKey, SiteCounters)]) -> report::SiteTotals {
    let mut t = report::SiteTotals::default();
    for (key, c) in raw {
        let held = (i128::from(c.alloc_bytes) - i128::from(c.free_bytes) - i128::from(c.oom_freed_bytes))
            .clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        let slot = match key.kind {
            kind::ANON => &mut t.anon,
            kind::SLAB => &mut t.slab,
            kind::PAGE => &mut t.page,
            kind::PERCPU => &mut t.percpu,
            kind::HEAP => &mut t.heap,
            _ => &mut t.other,
        };
        *slot = slot.saturating_add(held);
        t.allocated_bytes = t.allocated_bytes.saturating_add(c.alloc_bytes);
    }
    t
}

/// `/sys/fs/cgroup/memory/a/b` -> `a/b`: the mount point is the first directory holding `cgroup.procs`'s root.
fn relative_to_hierarchy(path: &Path) -> PathBuf {
    let mut root = path;
    while let Some(parent) = root.parent() {
        if !parent.join("cgroup.procs").exists() {
            break;
        }
        root = parent;
    }
    path.strip_prefix(root).map(PathBuf::from).unwrap_or_default()
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
    fn site_totals_by_kind() {
        let key = |kind| SiteKey { kind, ..Default::default() };
        let c = |alloc, free, oom| SiteCounters {
            alloc_bytes: alloc,
            free_bytes: free,
            oom_freed_bytes: oom,
            ..Default::default()
        };
        let t = site_totals(&[
            (key(kind::ANON), c(1000, 100, 400)),
            (key(kind::ANON), c(50, 0, 0)),
            (key(kind::SLAB), c(10, 30, 0)),
            (key(kind::PAGE), c(4096, 0, 0)),
            (key(99), c(7, 0, 0)),
        ]);
        assert_eq!((t.anon, t.slab, t.page, t.percpu, t.other), (550, -20, 4096, 0, 7));
        assert_eq!(t.allocated_bytes, 1000 + 50 + 10 + 4096 + 7);
    }

    #[test]
    fn a_rolling_window_drops_what_is_older_than_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target { path: dir.path().into(), id: 1, version: cgroup::CgroupVersion::V1, container: None };
        let mut w = Window::new(target);
        // The window began 100 s ago.
        w.start -= std::time::Duration::from_secs(100);
        w.samples = [10.0, 60.0, 95.0].map(|t| report::Sample { t, ..Default::default() }).to_vec();
        let kill = |t| report::OomKill { t, ..Default::default() };
        w.oom_kills = vec![kill(20.0), kill(70.0), kill(80.0), kill(90.0)];
        w.trim(50.0, 2);
        assert_eq!(w.samples.iter().map(|s| s.t).collect::<Vec<_>>(), [60.0, 95.0]);
        assert_eq!(w.oom_kills.iter().map(|k| k.t).collect::<Vec<_>>(), [80.0, 90.0], "the newest two of the window");
    }
}
