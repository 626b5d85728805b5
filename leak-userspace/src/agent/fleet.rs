//! The containers the agent traces, each in a rolling window of its own, all read from one set of probes: the
//! kernel filter holds every container's subtree, and each site goes to the container of the process that made
//! it. A container that goes leaves its last report behind for a while (a killed container's evidence).
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::containers;
use crate::{
    cgroup::{self, CgroupVersion, Target},
    collect::{
        assemble::{self, Extras, TraceInfo},
        exits, oom,
        site_reader::{self, RawSites, SiteReader},
        window::Window,
    },
    probes::Probes,
    report::{Container, Report},
};

/// How long, and how many, reports of containers that went are kept.
const GONE_FOR: Duration = Duration::from_secs(15 * 60);
const GONE_KEPT: usize = 64;
/// OOM kills kept per window (a crash-looping container's picture of each kill is bounded).
const KILLS_KEPT: usize = 16;
/// Sites kept in each OOM kill's picture.
const KILL_SITES: usize = 10;

/// What the agent keeps per container, and for how long.
pub struct Settings {
    /// Seconds of history each report covers.
    pub window: f64,
    /// Sites each report keeps (the rest are counted).
    pub max_sites: usize,
}

pub struct Watched {
    pub key: String,
    pub window: Window,
}

/// A report of a container that is gone.
pub struct Gone {
    pub key: String,
    pub at: Instant,
    pub report: Report,
}

/// Containers picked up and let go by one `track`.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

pub struct Fleet {
    reader: SiteReader,
    info: TraceInfo,
    settings: Settings,
    version: CgroupVersion,
    memory_root: PathBuf,
    /// By memcg id (the cgroup directory's inode).
    watched: BTreeMap<u64, Watched>,
    /// The container (memcg id) each process was seen in.
    owner: HashMap<u32, u64>,
    /// The kernel filter as last set.
    memcg_ids: Vec<u64>,
    gone: VecDeque<Gone>,
    /// What the sites of processes of no known container held at the last interval (they lived and went between
    /// two scans).
    unassigned_bytes: i64,
}

impl Fleet {
    pub fn new(reader: SiteReader, info: TraceInfo, settings: Settings, layout: &cgroup::CgroupLayout) -> Self {
        Fleet {
            reader,
            info,
            settings,
            version: layout.version,
            memory_root: layout.memory_root.clone(),
            watched: BTreeMap::new(),
            owner: HashMap::new(),
            memcg_ids: Vec::new(),
            gone: VecDeque::new(),
            unassigned_bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.watched.len()
    }

    pub fn unassigned_bytes(&self) -> i64 {
        self.unassigned_bytes
    }

    /// The user stack sample ring buffer's fd, for the event loop.
    pub fn user_stacks_fd(&self) -> Option<std::os::fd::RawFd> {
        self.reader.user_stacks_fd()
    }

    pub fn drain_user_stacks(&mut self) {
        self.reader.drain_user_stacks();
    }

    /// Picks up the containers `found` now that are not traced yet, and lets go of the traced ones whose cgroup
    /// went (their last report is kept).
    pub fn track(&mut self, probes: &mut Probes, found: Vec<(PathBuf, Container)>) -> Result<Changes> {
        let mut changes = Changes::default();
        let left: Vec<u64> = self.watched.iter().filter(|(_, w)| !w.window.exists()).map(|(&id, _)| id).collect();
        if !left.is_empty() {
            let mut parts = self.read(probes)?;
            for id in left {
                let Some(mut w) = self.watched.remove(&id) else { continue };
                let raw = parts.remove(&id).unwrap_or_default();
                let history = w.window.take_history();
                let mut report = assemble::assemble(
                    &w.window,
                    &mut self.reader,
                    probes,
                    &self.info,
                    &raw,
                    history,
                    Extras::default(),
                    self.settings.max_sites,
                )?;
                report.window.ended_by = "the container's cgroup was removed".into();
                changes.removed.push(w.key.clone());
                self.gone.push_back(Gone { key: w.key, at: Instant::now(), report });
                self.reader.drain_user_stacks();
            }
            let (kept, left): (HashMap<u32, u64>, HashMap<u32, u64>) =
                std::mem::take(&mut self.owner).into_iter().partition(|(_, id)| self.watched.contains_key(id));
            self.owner = kept;
            self.reader.release(left.into_keys());
        }
        while self.gone.len() > GONE_KEPT || self.gone.front().is_some_and(|g| g.at.elapsed() > GONE_FOR) {
            self.gone.pop_front();
        }
        for (dir, container) in found {
            let Ok(mut target) = Target::from_dir(&dir, self.version) else { continue };
            if self.watched.contains_key(&target.id) {
                continue;
            }
            let key = containers::key(&container);
            target.container = Some(container);
            changes.added.push(key.clone());
            self.watched.insert(target.id, Watched { key, window: Window::new(target) });
        }
        Ok(changes)
    }

    /// Keeps the kernel filter on every container's subtree and learns the processes living in them.
    fn scan(&mut self, probes: &mut Probes) -> Result<()> {
        let mut ids = Vec::new();
        let mut all = Vec::new();
        for (&id, w) in &mut self.watched {
            let pids = w.window.scan();
            ids.extend_from_slice(w.window.memcg_ids());
            for &pid in &pids {
                self.owner.insert(pid, id);
            }
            all.extend(pids);
        }
        ids.sort_unstable();
        ids.dedup();
        if ids != self.memcg_ids {
            probes.set_memcgs(&ids)?;
            self.memcg_ids = ids;
        }
        for &pid in &all {
            self.reader.learn_process(pid);
        }
        self.reader.look_at(&all);
        Ok(())
    }

    /// One interval: every container's sites and memory files, each window rolled on.
    pub fn tick(&mut self, probes: &mut Probes) -> Result<()> {
        self.scan(probes)?;
        let mut raw = self.reader.read(probes)?;
        self.reader.retire(probes, &mut raw)?;
        let raw = self.reader.merged(raw);
        let mut parts = self.partition(raw);
        for (&id, w) in &mut self.watched {
            let part = parts.remove(&id).unwrap_or_default();
            w.window.note(site_reader::tgids(&part));
            w.window.observe(&part);
            w.window.trim(self.settings.window, KILLS_KEPT);
            // Reading fifty containers' memory files takes a while on a busy node.
            self.reader.drain_user_stacks();
        }
        // The processes of no container and no site are forgotten, so the table stays as large as what lives.
        if self.owner.len() > 4 * self.reader.comms().len().max(1024) {
            self.owner.retain(|&pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
        }
        Ok(())
    }

    /// The sites now, by container.
    fn read(&mut self, probes: &Probes) -> Result<BTreeMap<u64, RawSites>> {
        let raw = self.reader.read(probes)?;
        let raw = self.reader.merged(raw);
        Ok(self.partition(raw))
    }

    /// Each site to the container of its process: known from a scan, else from the process's cgroup file while it
    /// lives. What is left (processes that came and went between two scans) is counted.
    fn partition(&mut self, raw: RawSites) -> BTreeMap<u64, RawSites> {
        let mut parts: BTreeMap<u64, RawSites> = BTreeMap::new();
        let mut unassigned = 0i64;
        for (key, c) in raw {
            let owner = match self.owner.get(&key.tgid) {
                Some(&id) => Some(id),
                None => {
                    let found = self.container_of(key.tgid);
                    if let Some(id) = found {
                        self.owner.insert(key.tgid, id);
                    }
                    found
                }
            };
            match owner {
                Some(id) => parts.entry(id).or_default().push((key, c)),
                None => unassigned += c.alloc_bytes as i64 - c.free_bytes as i64 - c.oom_freed_bytes as i64,
            }
        }
        self.unassigned_bytes = unassigned;
        parts
    }

    /// The traced container a living process is in, from its cgroup file.
    fn container_of(&self, pid: u32) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let dir = self.memory_root.join(cgroup::memcg_of(&text, self.version)?.trim_start_matches('/'));
        self.watched.iter().find(|(_, w)| dir.starts_with(&w.window.target().path)).map(|(&id, _)| id)
    }

    /// One record of the OOM ring buffer. Returns the key of the container whose process was killed.
    pub fn oom_event(&mut self, probes: &Probes, bytes: &[u8]) -> Result<Option<String>> {
        let Some(notice) = oom::decode(bytes) else { return Ok(None) };
        let Some(id) = self.watched.iter().find(|(_, w)| w.window.is_kill_of(&notice)).map(|(&id, _)| id) else {
            return Ok(None);
        };
        self.owner.insert(notice.victim_pid, id);
        let raw = self.read(probes)?.remove(&id).unwrap_or_default();
        let Some(w) = self.watched.get_mut(&id) else { return Ok(None) };
        w.window.record_kill(&mut self.reader, probes, notice, raw, Vec::new(), KILL_SITES)?;
        Ok(Some(w.key.clone()))
    }

    /// One record of the exit ring buffer: a death in some container.
    pub fn exit_event(&mut self, bytes: &[u8]) {
        let Some(exit) = exits::decode(bytes, 0) else { return };
        let id = self.owner.get(&exit.pid).copied();
        if let Some(w) = id.and_then(|id| self.watched.get_mut(&id)) {
            w.window.exit_event(bytes);
        }
    }

    /// The report of every traced container as it stands.
    pub fn live_reports(&mut self, probes: &Probes) -> Result<Vec<(String, Report)>> {
        let _held = probes.hold_figures();
        let mut parts = self.read(probes)?;
        let mut out = Vec::with_capacity(self.watched.len());
        for (id, w) in &self.watched {
            let raw = parts.remove(id).unwrap_or_default();
            let (reader, info, max) = (&mut self.reader, &self.info, self.settings.max_sites);
            let report =
                assemble::assemble(&w.window, reader, probes, info, &raw, w.window.history(), Extras::default(), max)?;
            out.push((w.key.clone(), report));
            // A scrape assembles fifty reports in about a second: the samples queued meanwhile are unwound as it
            // goes, or the queue fills and the kernel's ring loses the rest.
            reader.drain_user_stacks();
        }
        Ok(out)
    }

    /// The report of the container `key`: as it stands while it is traced, else its last one once it went.
    pub fn report_of(&mut self, probes: &Probes, key: &str) -> Result<Option<Report>> {
        let Some(id) = self.watched.iter().find(|(_, w)| w.key == key).map(|(&id, _)| id) else {
            return Ok(self.gone.iter().rev().find(|g| g.key == key).map(|g| g.report.clone()));
        };
        let raw = self.read(probes)?.remove(&id).unwrap_or_default();
        let w = &self.watched[&id];
        let (reader, info, max) = (&mut self.reader, &self.info, self.settings.max_sites);
        Ok(Some(assemble::assemble(&w.window, reader, probes, info, &raw, w.window.history(), Extras::default(), max)?))
    }

    /// The keys of the containers traced now, and of those gone whose reports are kept.
    pub fn keys(&self) -> (Vec<&str>, Vec<&str>) {
        (self.watched.values().map(|w| w.key.as_str()).collect(), self.gone.iter().map(|g| g.key.as_str()).collect())
    }

    /// The reports of containers that went since `since`, for `--output-dir`.
    pub fn gone_since(&self, since: Instant) -> impl Iterator<Item = &Gone> {
        self.gone.iter().filter(move |g| g.at >= since)
    }
}
