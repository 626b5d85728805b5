//! Collection: every interval, follow the target's subtree and processes, sample its memory files; at each OOM
//! kill, take the picture of the sites before the SIGKILL and of what grew in the last minute (the flight
//! recorder); at the end, assemble the report.
pub mod early;
pub mod exits;
pub mod flight;
mod go_heap;
pub mod heap;
pub mod jvm_heap;
pub mod node_heap;
pub mod oom;
mod profile_sites;
mod retire;
pub mod runtime_heap;

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    time::Instant,
};

use anyhow::Result;
use leak_common::{counter, exit_count, kind, SiteCounters, SiteKey, USTACK_UNWOUND_BIT};

use crate::{
    attribution,
    cgroup::{self, Follower, Poll, Target},
    memory::{self, MemorySnapshot},
    probes::{Discovery, Probes},
    report,
    sites::{self, Outstanding, StackSource},
    stacks::{symbolize::Symbolizer, UserStacks},
    verdict,
};
use flight::FlightRecorder;

/// How many sites report.json keeps (largest outstanding first); attribution counts every site.
const REPORT_SITES: usize = 500;
/// How many grown sites each flight-recorder span of an OOM kill keeps.
const FLIGHT_SITES: usize = 10;

pub struct Collector {
    target: Target,
    /// Moves `target` to a restarted container's new cgroup.
    follower: Follower,
    /// The target relative to its hierarchy's root, as /proc/<pid>/cgroup names it.
    target_rel: PathBuf,
    release: String,
    modes: Vec<String>,
    degraded: Vec<String>,
    sample_rate_shift: u32,
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
    exits: Vec<report::Exit>,
    /// Deaths past `exits::MAX_EXITS`, counted only.
    exits_over: u64,
    intervals: u64,
    early: early::EarlySites,
    flight: FlightRecorder,
    /// When each process was first seen (seconds since the start): a process new after a kill is a restart.
    first_seen: HashMap<u32, f64>,
    /// Sites of exited processes and freed sampled allocations, taken out of the kernel map so it does not fill up.
    retired: retire::Retired,
    /// The user stacks of sampled allocations, unwound.
    ustacks: UserStacks,
    /// `--heap`: the allocator probes of the target's processes.
    heap: Option<heap::HeapTracer>,
    /// `--node-heap`: V8's sampling heap profiles of the target's node processes.
    node: Option<node_heap::NodeHeap>,
    /// `--jvm-heap`: JFR's old-object samples of the target's JVMs.
    jvm: Option<jvm_heap::JvmHeap>,
}

impl Collector {
    pub fn new(
        target: Target,
        discovery: &Discovery,
        top: usize,
        ustacks: UserStacks,
        heap: Option<heap::HeapTracer>,
    ) -> Self {
        let target_rel = relative_to_hierarchy(&target.path);
        Collector {
            follower: Follower::new(&target),
            target,
            target_rel,
            release: read_release(),
            modes: discovery.modes.clone(),
            degraded: discovery.degraded.clone(),
            sample_rate_shift: discovery.config.sample_rate_shift,
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
            exits: Vec::new(),
            exits_over: 0,
            intervals: 0,
            early: early::EarlySites::default(),
            flight: FlightRecorder::default(),
            first_seen: HashMap::new(),
            retired: retire::Retired::default(),
            ustacks,
            heap,
            node: None,
            jvm: None,
        }
    }

    /// `--node-heap`: the target's node processes are profiled from the next interval on.
    pub fn profile_node_heaps(&mut self, node: node_heap::NodeHeap) {
        self.node = Some(node);
    }

    /// `--jvm-heap`: the target's JVMs are sampled from the next interval on.
    pub fn profile_jvm_heaps(&mut self, jvm: jvm_heap::JvmHeap) {
        self.jvm = Some(jvm);
    }

    /// The `heap` sites the runtimes' own profiles give (Go's, V8's, the JVM's), of `victim` only when given.
    fn runtime_heap_sites(&mut self, victim: Option<u32>) -> Vec<report::Site> {
        let mut sites = Vec::new();
        if let Some(h) = &mut self.heap {
            sites.extend(h.go().sites(&mut self.symbolizer, &self.comms, victim));
        }
        if let Some(n) = &self.node {
            sites.extend(n.sites(&self.comms, victim));
        }
        if let Some(j) = &self.jvm {
            sites.extend(j.sites(&self.comms, victim));
        }
        sites
    }

    /// A process of the target spawned (`SPAWNS`): probed for `--heap` at once.
    pub fn spawned(&mut self, probes: &mut Probes, bytes: &[u8]) {
        let (Some(h), Ok(pid)) = (&mut self.heap, <[u8; 4]>::try_from(bytes).map(u32::from_ne_bytes)) else { return };
        h.spawned(pid);
        h.retry(probes, self.start.elapsed().as_secs_f64());
    }

    /// Spawned processes whose allocator was not mapped yet are tried again.
    pub fn retry_spawned(&mut self, probes: &mut Probes) {
        if let Some(h) = &mut self.heap {
            h.retry(probes, self.start.elapsed().as_secs_f64());
        }
    }

    /// Lines for the terminal from the last intervals (heap probes detached, say).
    pub fn take_notices(&mut self) -> Vec<String> {
        self.heap.as_mut().map(|h| h.take_notices()).unwrap_or_default()
    }

    /// The user stack sample ring buffer's fd (none with frame-pointer stacks), for the event loop.
    pub fn user_stacks_fd(&self) -> Option<std::os::fd::RawFd> {
        self.ustacks.fd()
    }

    /// Unwinds the user stack samples that arrived.
    pub fn drain_user_stacks(&mut self) {
        self.ustacks.drain();
    }

    /// The kernel's sites as they are (a sampled allocation's under its sample token), every token's sample
    /// unwound: the map is read before the samples are drained, as a sample is sent before its allocation is
    /// counted.
    fn kernel_sites(&mut self, probes: &Probes) -> Result<Vec<(SiteKey, SiteCounters)>> {
        let mut raw = probes.sites()?;
        self.ustacks.drain();
        if let Some(h) = &self.heap {
            let victims: Vec<u32> = self.oom_kills.iter().map(|k| k.pid).collect();
            heap::settle(&mut raw, |tgid| h.covers(tgid), &victims);
        }
        Ok(raw)
    }

    /// Every site: the kernel's, each sampled allocation's mapped to its unwound user stack, and the retired ones.
    fn sites(&mut self, probes: &Probes) -> Result<Vec<(SiteKey, SiteCounters)>> {
        let raw = self.kernel_sites(probes)?;
        Ok(self.retired.merged(self.ustacks.canonicalize(raw)))
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// What the live view shows: the samples so far, the limit, the kills, what the follower did.
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

    /// The `n` sites holding the most now. Only the largest raw sites are symbolized, so this is cheap enough for
    /// every interval.
    pub fn top_sites(&mut self, probes: &Probes, n: usize) -> Result<Vec<report::Site>> {
        let raw = self.kernel_sites(probes)?;
        let mut raw = self.ustacks.canonicalize(raw);
        raw.sort_unstable_by_key(|(_, c)| {
            std::cmp::Reverse(c.alloc_bytes.saturating_sub(c.free_bytes.saturating_add(c.oom_freed_bytes)))
        });
        raw.truncate(n.saturating_mul(4));
        self.build_sites(probes, &raw, Outstanding::Live, n)
    }

    /// Keeps the kernel filter on the target's current subtree and learns the processes living in it (with
    /// `--heap`, probing their allocators).
    fn follow_subtree(&mut self, probes: &mut Probes) -> Result<()> {
        let mut ids = cgroup::subtree_ids(&self.target.path);
        ids.sort_unstable();
        if ids != self.memcg_ids {
            probes.set_memcgs(&ids)?;
            self.memcg_ids = ids;
        }
        let pids = cgroup::member_pids(&self.target.path);
        for &pid in &pids {
            self.learn_process(pid);
        }
        self.ustacks.look_at(&pids);
        if let Some(h) = &mut self.heap {
            h.tick(probes, &pids, self.start.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Between intervals, when a cgroup was made beside the target's: moves to a restarted container's new cgroup
    /// at once, so that its first allocations are traced.
    pub fn follow_now(&mut self, probes: &mut Probes) -> Result<()> {
        if self.follower.poll(&mut self.target) == Poll::Moved {
            self.target_rel = relative_to_hierarchy(&self.target.path);
            self.follow_subtree(probes)?;
        }
        Ok(())
    }

    /// One interval. Returns why tracing must end once the target is gone (a cgroup removed; a container gone for good).
    pub fn tick(&mut self, probes: &mut Probes) -> Result<Option<String>> {
        match self.follower.poll(&mut self.target) {
            Poll::Same => {}
            Poll::Moved => self.target_rel = relative_to_hierarchy(&self.target.path),
            Poll::Waiting => return Ok(None),
            Poll::Gone(why) => return Ok(Some(why)),
        }
        self.follow_subtree(probes)?;
        let mut raw = self.kernel_sites(probes)?;
        // Processes that allocated and left between two scans are known only from the sites they made.
        let tgids: BTreeSet<u32> = raw.iter().map(|(key, _)| key.tgid).collect();
        for tgid in tgids {
            self.learn_process(tgid);
        }
        let ustacks = &self.ustacks;
        let gone = self.retired.retire(probes, &raw, |k| ustacks.canonical(k), retire::process_alive)?;
        if !gone.is_empty() {
            let gone_set: std::collections::HashSet<SiteKey> = gone.iter().copied().collect();
            raw.retain(|(key, _)| !gone_set.contains(key));
            self.ustacks.forget(&gone);
        }
        self.ustacks.prune();
        let raw = self.retired.merged(self.ustacks.canonicalize(raw));
        self.early.offer(self.intervals, self.start.elapsed().as_secs_f64(), &raw);
        self.flight.record(self.start.elapsed().as_secs_f64(), &raw);
        self.sample(&raw);
        if self.node.is_some() || self.jvm.is_some() {
            let pids = cgroup::member_pids(&self.target.path);
            if let Some(n) = &mut self.node {
                n.offer(pids.clone());
            }
            if let Some(j) = &mut self.jvm {
                j.offer(pids);
            }
        }
        self.intervals += 1;
        Ok(None)
    }

    /// Reads the memory files and the processes' RSS, with what the sites held at the same moment.
    fn sample(&mut self, raw: &[(SiteKey, SiteCounters)]) {
        match memory::read_snapshot(&self.target) {
            Ok(snap) => {
                self.limit = snap.limit;
                let t = self.start.elapsed().as_secs_f64();
                let rss = memory::processes_rss(&cgroup::member_pids(&self.target.path));
                self.samples.push(sample_of(t, &snap, &rss, site_totals(raw)));
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
        if new {
            self.first_seen.insert(pid, self.start.elapsed().as_secs_f64());
        }
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
        // Read the counters first (and a Go victim's heap profile): what follows (symbolizing) may take a while.
        let mut raw = self.sites(probes)?;
        if let Some(h) = &mut self.heap {
            h.go().read_one(notice.victim_pid);
        }
        self.comms.entry(notice.victim_pid).or_insert_with(|| notice.victim_comm.clone());
        let t = notice.ktime_ns.saturating_sub(self.start_ktime_ns) as f64 / 1e9;
        // The flight recorder settles earlier victims' OOM frees itself (up to the last interval before this
        // kill): it reads the counters as the kernel has them.
        let mut grew_before_kill = Vec::new();
        for span in flight::SPANS {
            let Some((covered, delta)) = self.flight.growth(t, span, &raw) else { continue };
            let mut grown = self.build_sites(probes, &delta, Outstanding::BeforeOomKill, usize::MAX)?;
            grown.retain(|s| s.outstanding_bytes > 0);
            grown.truncate(FLIGHT_SITES);
            grew_before_kill.push(report::GrowthBeforeKill { seconds: span, covered_seconds: covered, sites: grown });
        }
        let earlier: Vec<u32> = self.oom_kills.iter().map(|k| k.pid).collect();
        oom::settle_earlier_victims(&mut raw, &earlier);
        let mut sites = self.build_sites(probes, &raw, Outstanding::BeforeOomKill, self.top)?;
        let held = self.runtime_heap_sites(Some(notice.victim_pid));
        if !held.is_empty() {
            sites.extend(held);
            sites.sort_by_key(|s| std::cmp::Reverse(s.outstanding_bytes));
            sites.truncate(self.top);
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
        Ok(true)
    }

    /// Handles one record of the exit ring buffer (the kernel side sends only the target's deaths).
    pub fn exit_event(&mut self, bytes: &[u8]) {
        let Some(exit) = exits::decode(bytes, self.start_ktime_ns) else { return };
        if self.exits.len() < exits::MAX_EXITS {
            self.exits.push(exit);
        } else {
            self.exits_over += 1;
        }
    }

    fn build_sites(
        &mut self,
        probes: &Probes,
        raw: &[(leak_common::SiteKey, leak_common::SiteCounters)],
        mode: Outstanding,
        top: usize,
    ) -> Result<Vec<report::Site>> {
        let stacks = AllStacks { kernel: probes.stacks()?, user: &self.ustacks };
        let caches = probes.cache_names()?;
        Ok(sites::build(raw, &stacks, &caches, &self.comms, &mut self.symbolizer, mode, top))
    }

    /// The last sample and the final picture of every site, assembled into the report.
    pub fn finish(
        mut self,
        probes: &Probes,
        jvm_perfmaps: Vec<crate::stacks::jvm_perfmap::JvmPerfMapStats>,
    ) -> Result<report::Report> {
        self.follower.refresh(&mut self.target);
        let raw = self.sites(probes)?;
        if self.target.path.join("cgroup.procs").exists() {
            self.sample(&raw);
        }
        // The runtimes' last profiles are taken now, and their profilers stopped.
        let node_heaps = match &mut self.node {
            Some(n) => n.stop(cgroup::member_pids(&self.target.path)),
            None => Vec::new(),
        };
        let jvm_heaps = match &mut self.jvm {
            Some(j) => j.stop(cgroup::member_pids(&self.target.path)),
            None => Vec::new(),
        };
        if let Some(h) = &mut self.heap {
            h.final_hits(probes);
        }
        let history = History {
            samples: std::mem::take(&mut self.samples),
            oom_kills: std::mem::take(&mut self.oom_kills),
            exits: std::mem::take(&mut self.exits),
        };
        self.assemble(probes, &raw, history, RuntimeStats { jvm_perfmaps, node_heaps, jvm_heaps })
    }

    /// The report as it would read if the trace ended now, the trace going on: what `--listen` serves.
    pub fn snapshot(&mut self, probes: &Probes) -> Result<report::Report> {
        let raw = self.sites(probes)?;
        let history =
            History { samples: self.samples.clone(), oom_kills: self.oom_kills.clone(), exits: self.exits.clone() };
        self.assemble(probes, &raw, history, RuntimeStats::default())
    }

    /// Every site and figure, with the window's `history`, into a report and its verdict.
    fn assemble(
        &mut self,
        probes: &Probes,
        raw: &[(SiteKey, SiteCounters)],
        mut history: History,
        runtimes: RuntimeStats,
    ) -> Result<report::Report> {
        let mut sites = self.build_sites(probes, raw, Outstanding::Live, usize::MAX)?;
        sites.extend(self.runtime_heap_sites(None));
        sites.sort_by_key(|s| std::cmp::Reverse(s.outstanding_bytes));
        let c = probes.counters()?;
        let end = time::OffsetDateTime::now_utc();
        let usage = resource_usage();
        let programs = probes.program_stats();
        let attribution = attribution::attribute(&history.samples, &sites);
        sites.truncate(REPORT_SITES);
        let elapsed = self.start.elapsed().as_secs_f64();
        let early = self.early.pick(elapsed).map(|(t, raw)| (t, raw.clone()));
        let sites_early = match early {
            Some((t, raw)) => {
                Some(report::EarlySites { t, sites: self.build_sites(probes, &raw, Outstanding::Live, REPORT_SITES)? })
            }
            None => None,
        };
        let victims: Vec<(f64, u32)> = history.oom_kills.iter().map(|k| (k.t, k.pid)).collect();
        exits::mark_oom_kills(&mut history.exits, &victims);
        let kill_times: Vec<f64> = victims.iter().map(|v| v.0).collect();
        let life_ends = verdict::growth::life_ends(&kill_times, &history.exits, &history.samples);
        let restarts = count_restarts(&victims, &self.first_seen);
        let growth = verdict::growth::analyse(&history.samples, &life_ends, self.limit, restarts);
        let exit_counts = probes.exit_counts()?;
        let mut report = report::Report {
            schema: report::SCHEMA.to_string(),
            target: report::TargetInfo {
                cgroup_path: self.target.path.display().to_string(),
                cgroup_id: self.target.id,
                cgroup_version: self.target.version.number(),
                container: self.target.container.clone(),
                cgroups: self.follower.cgroups().to_vec(),
            },
            kernel: report::KernelInfo {
                release: self.release.clone(),
                modes: self.modes.clone(),
                degraded: self.degraded.clone(),
            },
            window: report::Window {
                start: rfc3339(self.start_wall),
                end: rfc3339(end),
                seconds: elapsed,
                ended_by: String::new(),
            },
            memory: report::Memory { limit_bytes: self.limit, samples: history.samples },
            attribution,
            sites,
            oom_kills: history.oom_kills,
            exits: history.exits,
            sites_early,
            verdict: report::Verdict {
                class: "inconclusive".into(),
                confidence: 0.0,
                evidence: Vec::new(),
                ..Default::default()
            },
            growth,
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
                collapsed_into_huge_pages: c[counter::COLLAPSED as usize],
                recursion_misses: programs.iter().map(|p| p.recursion_misses).sum(),
                intervals: self.intervals,
                tracer_cpu_seconds: usage.0,
                tracer_peak_rss_bytes: usage.1,
                programs,
                retired_sites_dropped: self.retired.dropped(),
                unwind: self.ustacks.stats(
                    [
                        c[counter::USTACK_NO_REGS as usize],
                        c[counter::USTACK_UNREADABLE as usize],
                        c[counter::USTACK_RINGBUF_DROP as usize],
                        c[counter::USTACK_NESTED as usize],
                    ],
                    [c[counter::PY_STACKS as usize], c[counter::PY_NO_THREAD as usize]],
                ),
                exits_unrecorded: exit_counts[exit_count::UNRECORDED as usize] + self.exits_over,
                exits_dropped: exit_counts[exit_count::DROPPED as usize],
                heap: self.heap.as_ref().map(|h| h.report(&c)),
                jvm_perfmaps: runtimes.jvm_perfmaps,
                node_heaps: runtimes.node_heaps,
                jvm_heaps: runtimes.jvm_heaps,
            },
            sampling: report::Sampling::from_shift(self.sample_rate_shift, c[counter::ALLOC_EVENTS as usize]),
        };
        report.verdict = verdict::judge(&report);
        Ok(report)
    }
}

/// What the window has seen so far: moved into the final report, copied into a snapshot.
struct History {
    samples: Vec<report::Sample>,
    oom_kills: Vec<report::OomKill>,
    exits: Vec<report::Exit>,
}

/// What the runtimes' helpers did (`collection.jvm_perfmaps`, `node_heaps`, `jvm_heaps`): told when they stop.
#[derive(Default)]
struct RuntimeStats {
    jvm_perfmaps: Vec<crate::stacks::jvm_perfmap::JvmPerfMapStats>,
    node_heaps: Vec<node_heap::NodeHeapStats>,
    jvm_heaps: Vec<jvm_heap::JvmHeapStats>,
}

/// The kernel's stack maps and the user stacks unwound here, as one source for building sites.
struct AllStacks<'a> {
    kernel: crate::probes::Stacks<'a>,
    user: &'a UserStacks,
}

impl StackSource for AllStacks<'_> {
    fn stack(&self, id: i32) -> Option<Vec<u64>> {
        (id & USTACK_UNWOUND_BIT == 0).then(|| self.kernel.stack(id)).flatten()
    }

    fn unwound(&self, id: i32) -> Option<Vec<(u64, &'static str)>> {
        Some(self.user.frames(id)?.iter().map(|f| (f.address, f.method.name())).collect())
    }

    fn region(&self, id: i32) -> Option<&'static str> {
        self.user.region(id).map(|r| r.name())
    }

    fn python_frame(&self, address: u64) -> Option<(report::Frame, bool)> {
        self.user.python_frame(address).map(|p| (p.frame(address), p.entry))
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

/// Kills (`t`, victim pid) after which the workload ran again: a later kill took another process, or a process
/// that no kill took was first seen after it. Victims are never their own restart, even when the tracer learned
/// of them only after their death (from the sites they left).
fn count_restarts(kills: &[(f64, u32)], first_seen: &HashMap<u32, f64>) -> u32 {
    let victim = |pid: u32| kills.iter().any(|k| k.1 == pid);
    kills
        .iter()
        .enumerate()
        .filter(|&(i, &(t, pid))| {
            kills[i + 1..].iter().any(|k| k.1 != pid) || first_seen.iter().any(|(&p, &seen)| seen > t && !victim(p))
        })
        .count() as u32
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
    fn restarts_are_new_processes_after_a_kill() {
        // pid 1: the shell loop; 10, 11, 12: the relaunched workload, each learned just after its own death.
        let seen = HashMap::from([(1, 0.0), (10, 2.1), (11, 4.1), (12, 6.1)]);
        assert_eq!(count_restarts(&[], &seen), 0);
        assert_eq!(count_restarts(&[(2.0, 10), (4.0, 11), (6.0, 12)], &seen), 2, "nothing ran after the last kill");
        let later = HashMap::from([(1, 0.0), (10, 2.1), (13, 9.0)]);
        assert_eq!(count_restarts(&[(2.0, 10)], &later), 1, "pid 13 came after the kill");
        let one = HashMap::from([(1, 0.0), (10, 2.1)]);
        assert_eq!(count_restarts(&[(2.0, 10), (2.01, 10)], &one), 0, "the same victim reported twice");
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
    fn resource_usage_is_positive() {
        let (_, rss) = resource_usage();
        assert!(rss > 0);
    }
}
