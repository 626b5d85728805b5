//! Collection: every interval, follow the target's subtree and processes, sample its memory files; at each OOM
//! kill, take the picture of the sites before the SIGKILL and of what grew in the last minute (the flight
//! recorder); at the end, assemble the report. The kernel's sites are read by `site_reader`, each target's history
//! kept in a `window`, and reports made by `assemble`; `Collector` is a trace's one window with its helpers.
pub mod assemble;
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
pub mod site_reader;
pub mod window;

use anyhow::Result;

use crate::{
    cgroup::{Follower, Poll, Target},
    probes::{Discovery, Probes},
    report,
    sites::Outstanding,
    stacks::UserStacks,
};
use assemble::{Extras, TraceInfo};
use site_reader::{RawSites, SiteReader};
use window::Window;

/// How many sites report.json keeps (largest outstanding first); attribution counts every site.
const REPORT_SITES: usize = 500;

/// A trace of one target: its window, read from the probes' sites, with the trace's own helpers (`--heap`, the
/// runtimes' heap profilers).
pub struct Collector {
    window: Window,
    reader: SiteReader,
    info: TraceInfo,
    top: usize,
    /// The kernel filter as last set: the target's subtree.
    memcg_ids: Vec<u64>,
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
        Collector {
            window: Window::new(target),
            reader: SiteReader::new(ustacks),
            info: TraceInfo::new(discovery),
            top,
            memcg_ids: Vec::new(),
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
            let (symbolizer, comms) = self.reader.symbolizer_and_comms();
            sites.extend(h.go().sites(symbolizer, comms, victim));
        }
        if let Some(n) = &self.node {
            sites.extend(n.sites(self.reader.comms(), victim));
        }
        if let Some(j) = &self.jvm {
            sites.extend(j.sites(self.reader.comms(), victim));
        }
        sites
    }

    /// A process of the target spawned (`SPAWNS`): probed for `--heap` at once.
    pub fn spawned(&mut self, probes: &mut Probes, bytes: &[u8]) {
        let (Some(h), Ok(pid)) = (&mut self.heap, <[u8; 4]>::try_from(bytes).map(u32::from_ne_bytes)) else { return };
        h.spawned(pid);
        h.retry(probes, self.window.elapsed());
    }

    /// Spawned processes whose allocator was not mapped yet are tried again.
    pub fn retry_spawned(&mut self, probes: &mut Probes) {
        if let Some(h) = &mut self.heap {
            h.retry(probes, self.window.elapsed());
        }
    }

    /// Lines for the terminal from the last intervals (heap probes detached, say).
    pub fn take_notices(&mut self) -> Vec<String> {
        self.heap.as_mut().map(|h| h.take_notices()).unwrap_or_default()
    }

    /// The user stack sample ring buffer's fd (none with frame-pointer stacks), for the event loop.
    pub fn user_stacks_fd(&self) -> Option<std::os::fd::RawFd> {
        self.reader.user_stacks_fd()
    }

    /// Unwinds the user stack samples that arrived.
    pub fn drain_user_stacks(&mut self) {
        self.reader.drain_user_stacks();
    }

    /// The kernel's sites as they are, with `--heap`'s settled against the allocator probes.
    fn kernel_sites(&mut self, probes: &Probes) -> Result<RawSites> {
        let mut raw = self.reader.read(probes)?;
        if let Some(h) = &self.heap {
            let victims: Vec<u32> = self.window.oom_kills().iter().map(|k| k.pid).collect();
            heap::settle(&mut raw, |tgid| h.covers(tgid), &victims);
        }
        Ok(raw)
    }

    /// Every site: the kernel's, each sampled allocation's mapped to its unwound user stack, and the retired ones.
    fn sites(&mut self, probes: &Probes) -> Result<RawSites> {
        let raw = self.kernel_sites(probes)?;
        Ok(self.reader.merged(raw))
    }

    /// The live view's figures: the samples so far, the limit, the kills, what the follower did.
    pub fn window(&self) -> &Window {
        &self.window
    }

    pub fn target(&self) -> &Target {
        self.window.target()
    }

    pub fn follower(&self) -> &Follower {
        self.window.follower()
    }

    /// The `n` sites holding the most now. Only the largest raw sites are symbolized, so this is cheap enough for
    /// every interval.
    pub fn top_sites(&mut self, probes: &Probes, n: usize) -> Result<Vec<report::Site>> {
        let mut raw = self.sites(probes)?;
        raw.sort_unstable_by_key(|(_, c)| {
            std::cmp::Reverse(c.alloc_bytes.saturating_sub(c.free_bytes.saturating_add(c.oom_freed_bytes)))
        });
        raw.truncate(n.saturating_mul(4));
        self.reader.build_sites(probes, &raw, Outstanding::Live, n)
    }

    /// Keeps the kernel filter on the target's current subtree and learns the processes living in it (with
    /// `--heap`, probing their allocators).
    fn follow_subtree(&mut self, probes: &mut Probes) -> Result<()> {
        let pids = self.window.scan();
        if self.window.memcg_ids() != self.memcg_ids {
            probes.set_memcgs(self.window.memcg_ids())?;
            self.memcg_ids = self.window.memcg_ids().to_vec();
        }
        for &pid in &pids {
            self.reader.learn_process(pid);
        }
        self.reader.look_at(&pids);
        if let Some(h) = &mut self.heap {
            h.tick(probes, &pids, self.window.elapsed());
        }
        Ok(())
    }

    /// Between intervals, when a cgroup was made beside the target's: moves to a restarted container's new cgroup
    /// at once, so that its first allocations are traced.
    pub fn follow_now(&mut self, probes: &mut Probes) -> Result<()> {
        if self.window.follow() == Poll::Moved {
            self.follow_subtree(probes)?;
        }
        Ok(())
    }

    /// One interval. Returns why tracing must end once the target is gone (a cgroup removed; a container gone for good).
    pub fn tick(&mut self, probes: &mut Probes) -> Result<Option<String>> {
        match self.window.follow() {
            Poll::Same | Poll::Moved => {}
            Poll::Waiting => return Ok(None),
            Poll::Gone(why) => return Ok(Some(why)),
        }
        self.follow_subtree(probes)?;
        let mut raw = self.kernel_sites(probes)?;
        // Every process of the kernel's sites is the target's: the kernel filter holds only its subtree.
        self.window.note(site_reader::tgids(&raw));
        self.reader.retire(probes, &mut raw)?;
        let raw = self.reader.merged(raw);
        self.window.observe(&raw);
        if self.node.is_some() || self.jvm.is_some() {
            let pids = crate::cgroup::member_pids(&self.target().path);
            if let Some(n) = &mut self.node {
                n.offer(pids.clone());
            }
            if let Some(j) = &mut self.jvm {
                j.offer(pids);
            }
        }
        Ok(None)
    }

    /// Handles one ring buffer record. Returns true when it was an OOM kill of the target.
    pub fn oom_event(&mut self, probes: &Probes, bytes: &[u8]) -> Result<bool> {
        let Some(notice) = oom::decode(bytes) else {
            return Ok(false);
        };
        if !self.window.is_kill_of(&notice) {
            return Ok(false);
        }
        // Read the counters first (and a Go victim's heap profile): what follows (symbolizing) may take a while.
        let raw = self.sites(probes)?;
        if let Some(h) = &mut self.heap {
            h.go().read_one(notice.victim_pid);
        }
        self.reader.name_victim(notice.victim_pid, &notice.victim_comm);
        let held = self.runtime_heap_sites(Some(notice.victim_pid));
        self.window.record_kill(&mut self.reader, probes, notice, raw, held, self.top)?;
        Ok(true)
    }

    /// Handles one record of the exit ring buffer (the kernel side sends only the target's deaths).
    pub fn exit_event(&mut self, bytes: &[u8]) {
        self.window.exit_event(bytes);
    }

    /// The last sample and the final picture of every site, assembled into the report.
    pub fn finish(
        mut self,
        probes: &Probes,
        jvm_perfmaps: Vec<crate::stacks::jvm_perfmap::JvmPerfMapStats>,
    ) -> Result<report::Report> {
        self.window.refresh();
        let raw = self.sites(probes)?;
        if self.window.exists() {
            self.window.sample(&raw);
        }
        // The runtimes' last profiles are taken now, and their profilers stopped.
        let pids = crate::cgroup::member_pids(&self.window.target().path);
        let node_heaps = self.node.as_mut().map(|n| n.stop(pids.clone())).unwrap_or_default();
        let jvm_heaps = self.jvm.as_mut().map(|j| j.stop(pids)).unwrap_or_default();
        if let Some(h) = &mut self.heap {
            h.final_hits(probes);
        }
        let history = self.window.take_history();
        let extras = Extras { jvm_perfmaps, node_heaps, jvm_heaps, ..self.extras(probes)? };
        assemble::assemble(&self.window, &mut self.reader, probes, &self.info, &raw, history, extras, REPORT_SITES)
    }

    /// The report as it would read if the trace ended now, the trace going on: what `--listen` serves.
    pub fn snapshot(&mut self, probes: &Probes) -> Result<report::Report> {
        let raw = self.sites(probes)?;
        let history = self.window.history();
        let extras = self.extras(probes)?;
        assemble::assemble(&self.window, &mut self.reader, probes, &self.info, &raw, history, extras, REPORT_SITES)
    }

    /// The runtimes' heap sites and `--heap`'s figures.
    fn extras(&mut self, probes: &Probes) -> Result<Extras> {
        let heap = match &self.heap {
            Some(h) => Some(h.report(&probes.counters()?)),
            None => None,
        };
        Ok(Extras { sites: self.runtime_heap_sites(None), heap, ..Default::default() })
    }
}
