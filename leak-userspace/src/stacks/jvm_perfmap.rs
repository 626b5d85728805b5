//! `--jvm-perfmap`: asks every JVM of the target for a perf map of its compiled code, as `jcmd <pid>
//! Compiler.perfmap` does, through HotSpot's attach protocol ([`crate::jvm_attach`]). The JVM writes
//! `/tmp/perf-<nspid>.map` in its own mount namespace, where [`super::perfmap`] reads it, so JIT frames get Java
//! method names. It is asked
//! again every [`ASK_EVERY`], methods being compiled all along, and once more at the end, before the report's
//! frames are named.
//!
//! The requests run on a thread of their own: a JVM at a safepoint or in a long GC answers late, and the event loop
//! must not wait for it.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{maps::exe_file, perfmap::PerfMap};
use crate::jvm_attach::{is_jvm, Jvm};

/// How often a JVM is asked for a fresh map: writing one takes the JVM a few milliseconds.
const ASK_EVERY: Duration = Duration::from_secs(2);

/// report.json `collection.jvm_perfmaps[]`: one JVM that was asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JvmPerfMapStats {
    pub pid: u32,
    pub requests: u64,
    /// Requests the JVM answered with a written map.
    pub written: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct Outcome {
    pid: u32,
    result: Result<()>,
    /// The map did not exist before the first request: it is leaktrace's to remove at the end.
    made: Option<PathBuf>,
}

/// The asking thread and what it reported.
pub struct JvmPerfMaps {
    /// The target's processes, and whether to ask their JVMs now whenever they were last asked.
    pids: Option<mpsc::Sender<(Vec<u32>, bool)>>,
    outcomes: mpsc::Receiver<Outcome>,
    thread: Option<JoinHandle<()>>,
    stats: BTreeMap<u32, JvmPerfMapStats>,
    made: Vec<PathBuf>,
}

impl JvmPerfMaps {
    pub fn start() -> Result<Self> {
        let (pids, rx) = mpsc::channel::<(Vec<u32>, bool)>();
        let (tx, outcomes) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("jvm-perfmap".into())
            .spawn(move || {
                let mut last: HashMap<u32, Instant> = HashMap::new();
                let mut seen = HashSet::new();
                // Each JVM gets one SIGQUIT at most: one whose listener does not start (attach disabled) would
                // print a thread dump into the service's log at every ask.
                let mut signalled = HashSet::new();
                // Whether each process's executable (device, inode) is a JVM: its maps are read once per program
                // it runs, not at every interval (an entry-point script that execs java is another program).
                let mut jvms: HashMap<u32, ((u64, u64), bool)> = HashMap::new();
                while let Ok((pids, now)) = rx.recv() {
                    for pid in pids {
                        let Some(exe) = exe_file(pid) else { continue };
                        let jvm = match jvms.get(&pid) {
                            Some(&(seen, jvm)) if seen == exe => jvm,
                            _ => {
                                let jvm = is_jvm(pid);
                                jvms.insert(pid, (exe, jvm));
                                jvm
                            }
                        };
                        if !jvm || (!now && last.get(&pid).is_some_and(|t| t.elapsed() < ASK_EVERY)) {
                            continue;
                        }
                        last.insert(pid, Instant::now());
                        let path = PerfMap::path(pid);
                        let made = (seen.insert(pid) && !path.exists()).then(|| path.clone());
                        let result = ask(pid, &path, &mut signalled);
                        if tx.send(Outcome { pid, result, made }).is_err() {
                            return;
                        }
                    }
                }
            })
            .context("cannot start the thread that asks JVMs for perf maps")?;
        Ok(JvmPerfMaps { pids: Some(pids), outcomes, thread: Some(thread), stats: BTreeMap::new(), made: Vec::new() })
    }

    /// Offers the target's processes (each interval); returns what to tell the user about answers since.
    pub fn offer(&mut self, pids: Vec<u32>) -> Vec<String> {
        if let Some(tx) = &self.pids {
            // The thread takes the newest list when it is done with the last one; a backlog would only repeat it.
            let _ = tx.send((pids, false));
        }
        self.take_outcomes()
    }

    fn take_outcomes(&mut self) -> Vec<String> {
        let mut notices = Vec::new();
        while let Ok(o) = self.outcomes.try_recv() {
            let s = self.stats.entry(o.pid).or_insert_with(|| JvmPerfMapStats { pid: o.pid, ..Default::default() });
            s.requests += 1;
            self.made.extend(o.made);
            match o.result {
                Ok(()) => {
                    if s.written == 0 && self.pids.is_some() {
                        notices.push(format!(
                            "--jvm-perfmap: JVM pid {} wrote a perf map of its compiled code (jcmd Compiler.perfmap); \
                             asked again every {} s",
                            o.pid,
                            ASK_EVERY.as_secs()
                        ));
                    }
                    s.written += 1;
                    s.last_error = None;
                }
                Err(e) => {
                    if s.last_error.is_none() {
                        notices.push(format!("--jvm-perfmap: JVM pid {}: {e:#}", o.pid));
                    }
                    s.last_error = Some(format!("{e:#}"));
                }
            }
        }
        notices
    }

    /// Asks the JVMs that answered once more, ends the thread and returns who was asked. The maps stay until this
    /// is dropped: the report's frames are named from them.
    pub fn stop(&mut self) -> Vec<JvmPerfMapStats> {
        if let Some(tx) = self.pids.take() {
            let _ = tx.send((self.stats.values().filter(|s| s.written > 0).map(|s| s.pid).collect(), true));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.take_outcomes();
        self.stats.values().cloned().collect()
    }
}

impl Drop for JvmPerfMaps {
    /// Removes the maps that exist only because they were asked for.
    fn drop(&mut self) {
        self.stop();
        for path in &self.made {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One `jcmd Compiler.perfmap` request to the JVM `pid`, whose map lands at `map`.
fn ask(pid: u32, map: &Path, signalled: &mut HashSet<u32>) -> Result<()> {
    let jvm = Jvm::new(pid)?;
    // A new file, not the old one rewritten in place: the reader then knows to read it from the start.
    let _ = std::fs::remove_file(map);
    jvm.jcmd("Compiler.perfmap", signalled)?;
    if !map.exists() {
        bail!("the JVM answered but wrote no {}", map.display());
    }
    Ok(())
}
