//! A language runtime's own heap profiler, asked from a thread of its own every interval for the live objects of
//! each of the target's processes that runs the runtime: V8's sampling heap profiler (`--node-heap`), JFR's
//! old-object sampler (`--jvm-heap`). A runtime's objects are first touched by its collector as it promotes them,
//! so page faults never name the code that keeps them; its profiler does.
//!
//! The thread keeps one session per process, opened once (a process whose profiler does not start is not tried
//! again, unless it could not start it yet: [`NotYet`]), and closes every session at the end. A process busy in a long collection answers late: the event loop
//! never waits for it.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::mpsc,
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::profile_sites::{Held, ProfileSites};
use crate::report::{Frame, Site};

/// One stack of live objects: the runtime's frames leaf first, the bytes and objects they stand for.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub frames: Vec<Frame>,
    pub bytes: f64,
    pub objects: f64,
}

/// report.json: one process whose runtime's heap was profiled, with what its runtime's profiler adds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapStats<X> {
    pub pid: u32,
    /// Profiles taken.
    pub profiles: u64,
    #[serde(flatten)]
    pub runtime: X,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl<X: Default> HeapStats<X> {
    fn failed(pid: u32, why: String) -> Self {
        HeapStats { pid, last_error: Some(why), ..Default::default() }
    }

    /// One ask for a profile, answered or not.
    fn profiled(&mut self, error: Option<String>) {
        self.profiles += u64::from(error.is_none());
        self.last_error = error;
    }
}

/// One process's session with its runtime's profiler.
pub trait Profiler: Sized + 'static {
    /// What report.json says of each process profiled beside its pid, profiles and last error.
    type Stats: Clone + Default + Send + 'static;
    /// The profiling thread's name.
    const THREAD: &'static str;
    /// Whether process `pid` runs this runtime.
    fn runs_in(pid: u32) -> bool;
    /// Why the process cannot be asked yet (it is looked at again next interval), if it cannot.
    fn not_yet(_pid: u32) -> Option<&'static str> {
        None
    }
    /// Starts the profiler; an error that is [`NotYet`] is tried again next interval.
    fn open(pid: u32) -> Result<Self>;
    /// The live objects now.
    fn profile(&mut self) -> Result<Vec<Record>>;
    /// Stops the profiler, undoing what `open` started in the process.
    fn close(&mut self);
    fn stats(&mut self) -> &mut HeapStats<Self::Stats>;
}

/// A profiler the process cannot start yet (a JVM registers JFR's commands late in its start): opening is tried
/// again next interval, up to [`OPEN_TRIES`] times.
#[derive(Debug)]
pub struct NotYet(pub String);

impl std::fmt::Display for NotYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotYet {}

/// How many intervals a process that cannot start its profiler yet is tried.
const OPEN_TRIES: u32 = 30;

enum Ask {
    /// The target's processes now: new ones get a session, every session a fresh profile.
    Profile(Vec<u32>),
    Stop,
}

enum Told<S> {
    Profile(u32, Vec<Record>),
    Stats(S),
}

/// The profiling thread and the last profile of each process.
pub struct RuntimeHeap<P: Profiler> {
    asks: mpsc::Sender<Ask>,
    told: mpsc::Receiver<Told<HeapStats<P::Stats>>>,
    thread: Option<JoinHandle<()>>,
    pub(super) profiles: BTreeMap<u32, Vec<Record>>,
    stats: BTreeMap<u32, HeapStats<P::Stats>>,
}

impl<P: Profiler> RuntimeHeap<P> {
    pub fn start() -> Result<Self> {
        let (asks, rx) = mpsc::channel();
        let (tx, told) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(P::THREAD.into())
            .spawn(move || profile_loop::<P>(rx, tx))
            .with_context(|| format!("cannot start the {} thread", P::THREAD))?;
        Ok(RuntimeHeap { asks, told, thread: Some(thread), profiles: BTreeMap::new(), stats: BTreeMap::new() })
    }

    /// Once an interval: asks for fresh profiles of the target's processes, takes those that came.
    pub fn offer(&mut self, pids: Vec<u32>) {
        let _ = self.asks.send(Ask::Profile(pids));
        self.take();
    }

    fn take(&mut self) {
        while let Ok(t) = self.told.try_recv() {
            match t {
                Told::Profile(pid, records) => {
                    self.profiles.insert(pid, records);
                }
                Told::Stats(s) => {
                    self.stats.insert(s.pid, s);
                }
            }
        }
    }

    /// Takes the last profiles, stops the profilers; returns what each process gave.
    pub fn stop(&mut self, pids: Vec<u32>) -> Vec<HeapStats<P::Stats>> {
        let _ = self.asks.send(Ask::Profile(pids));
        let _ = self.asks.send(Ask::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.take();
        self.stats.values().cloned().collect()
    }

    /// The `heap` sites of the last profiles (of `victim`'s only, as it stood before its OOM kill, when given),
    /// merged by function. A process gone holds nothing any more: its sites keep what they allocated.
    pub fn sites(&self, comms: &HashMap<u32, String>, victim: Option<u32>) -> Vec<Site> {
        let mut sites = ProfileSites::new(comms);
        for (&pid, records) in self.profiles.iter().filter(|(&pid, _)| victim.is_none_or(|v| v == pid)) {
            let alive = victim.is_some() || Path::new(&format!("/proc/{pid}")).exists();
            for r in records {
                // A profile holds live objects only: what they allocated is what they hold.
                let (bytes, objects) = (r.bytes, r.objects);
                let held =
                    Held { inuse_bytes: bytes, inuse_objects: objects, alloc_bytes: bytes, alloc_objects: objects };
                sites.add(pid, alive, &r.frames, held);
            }
        }
        sites.into_sites()
    }
}

impl<P: Profiler> Drop for RuntimeHeap<P> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop(Vec::new());
        }
    }
}

fn profile_loop<P: Profiler>(asks: mpsc::Receiver<Ask>, told: mpsc::Sender<Told<HeapStats<P::Stats>>>) {
    let mut sessions: BTreeMap<u32, P> = BTreeMap::new();
    // Each process is opened once (a profiler that does not start is not asked again), or tried a few times when
    // it could not be yet.
    let mut tried: HashMap<u32, u32> = HashMap::new();
    let mut stop = false;
    while let Ok(ask) = asks.recv() {
        // Asks that queued up while a slow process answered are one ask: the latest processes, once.
        let mut pids = Vec::new();
        for ask in std::iter::once(ask).chain(asks.try_iter()) {
            match ask {
                Ask::Profile(p) => pids = p,
                Ask::Stop => stop = true,
            }
        }
        for pid in pids {
            if sessions.contains_key(&pid) || tried.get(&pid) >= Some(&OPEN_TRIES) || !P::runs_in(pid) {
                continue;
            }
            if let Some(why) = P::not_yet(pid) {
                let _ = told.send(Told::Stats(HeapStats::failed(pid, why.into())));
                continue;
            }
            let tries = tried.entry(pid).or_default();
            match P::open(pid) {
                Ok(s) => drop(sessions.insert(pid, s)),
                Err(e) => {
                    *tries = if e.downcast_ref::<NotYet>().is_some() { *tries + 1 } else { OPEN_TRIES };
                    let _ = told.send(Told::Stats(HeapStats::failed(pid, format!("{e:#}"))));
                }
            }
        }
        let mut gone = Vec::new();
        for (&pid, s) in sessions.iter_mut() {
            match s.profile() {
                Ok(records) => {
                    s.stats().profiled(None);
                    let _ = told.send(Told::Profile(pid, records));
                }
                Err(e) => {
                    s.stats().profiled(Some(format!("{e:#}")));
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        gone.push(pid);
                    }
                }
            }
            let _ = told.send(Told::Stats(s.stats().clone()));
        }
        gone.iter().for_each(|pid| drop(sessions.remove(pid)));
        if stop {
            break;
        }
    }
    for (_, mut s) in sessions {
        s.close();
        let _ = told.send(Told::Stats(s.stats().clone()));
    }
}
