//! `verdict.recommendations`: for each class, what to set or where to look, with the figure measured in the window.
use super::{app_frame, runtime::Runtime, signal_name, site_name, Facts};
use crate::{
    export::{clamp, human_bytes},
    report::Sample,
    verdict::growth,
};

/// Headroom over the measured working set in a limit recommendation.
const HEADROOM: f64 = 1.2;
const MIB: u64 = 1 << 20;

impl Facts<'_> {
    pub(super) fn recommendations(&self, class: &str) -> Vec<String> {
        match class {
            "limit-too-low" => self.limit_recommendation().into_iter().collect(),
            "heap-leak" | "kernel-leak" => self.leak_recommendations(class),
            "thread-leak" => self.pids_recommendation().into_iter().collect(),
            "cache-growth" => {
                vec!["page cache is reclaimed before any OOM kill: no limit change is needed; if reclaim at the limit \
                 slows the service, drop what it no longer reads (posix_fadvise POSIX_FADV_DONTNEED, log rotation) \
                 or write the files to a volume outside the container"
                    .into()]
            }
            "shmem-growth" => vec![format!(
                "remove the files the service keeps on its tmpfs (or release its shared memory segments), or bound \
                 the mount (size=); shmem grew {} in the window and counts against the limit until then",
                human_bytes(self.change("shmem") as i64)
            )],
            "not-memory" => self.elsewhere(),
            _ => Vec::new(),
        }
    }

    /// The working set: the highest of the lives' peaks (a plateau's level), in samples of a live cgroup.
    fn working_set(&self) -> Option<u64> {
        let kills: Vec<f64> = self.r.oom_kills.iter().map(|k| k.t).collect();
        let ends = growth::life_ends(&kills, &self.r.exits, &self.r.memory.samples);
        let live = |s: &&Sample| s.processes != Some(0);
        let mut peaks = std::collections::BTreeMap::<u32, u64>::new();
        for s in self.r.memory.samples.iter().filter(live) {
            let peak = peaks.entry(growth::life_at(s.t, &ends)).or_default();
            *peak = (*peak).max(s.usage);
        }
        peaks.into_values().max()
    }

    fn limit_recommendation(&self) -> Option<String> {
        let limit = self.r.memory.limit_bytes?;
        let ws = self.working_set()?;
        let killed = !self.r.oom_kills.is_empty();
        // Killed while building it, the working set was never seen whole: it is at least the limit.
        let (ws, what) = if killed && ws < limit {
            (limit, "at least the limit: each life was killed before its working set was built")
        } else if killed {
            (ws, "the peak of each life before its kill")
        } else {
            (ws, "the plateau's peak")
        };
        let want = ((ws as f64 * HEADROOM) as u64).div_ceil(MIB) * MIB;
        Some(format!(
            "set the memory limit to {} ({want} bytes: docker run --memory={}m, memory.max={want}): the working set is \
             {} ({what}) plus {:.0}% headroom; the limit now is {}{}",
            human_bytes(clamp(want)),
            want / MIB,
            human_bytes(clamp(ws)),
            (HEADROOM - 1.0) * 100.0,
            human_bytes(clamp(limit)),
            if killed { ", so measure again after raising it" } else { "" }
        ))
    }

    fn leak_recommendations(&self, class: &str) -> Vec<String> {
        let category = if class == "heap-leak" { "anon" } else { "kernel" };
        let rate = self.trend(category).map_or(0.0, |t| t.rate_per_hour) / 3600.0;
        let site = self.held_site(class);
        // Pages of a malloc heap may be held by another function than their first toucher: name it first.
        let fix = match (site.and_then(site_name), site.and_then(|s| self.in_malloc_heap(s))) {
            (Some(label), Some(heap)) => format!(
                "run `{}` to name the function that holds the malloc'd memory {label} first touched in {heap}, and \
                 fix the leak there",
                self.trace_again_with("--heap")
            ),
            // The runtime's own code (its collector copying objects, its allocator) touched the pages: the leak
            // is in whatever keeps the objects alive.
            (Some(label), None) if site.and_then(app_frame).is_some_and(crate::stacks::runtime::is_internal) => {
                format!(
                    "find what keeps the runtime's objects alive (their pages were first touched by its own code, \
                     {label}) and fix the leak there"
                )
            }
            (Some(label), None) => format!("fix the leak in {label}"),
            (None, _) => "fix the leak at the top site".into(),
        };
        let (Some(limit), true) = (self.r.memory.limit_bytes, rate > 0.0) else { return vec![fix] };
        // Once killed, the next life starts from nothing: its time to the limit is the whole limit's.
        let left = match self.g.time_to_limit_seconds.filter(|_| self.r.oom_kills.is_empty()) {
            Some(secs) => format!("the limit is reached {} from the last sample", duration(secs)),
            None => {
                format!("each life fills the {} limit in {}", human_bytes(clamp(limit)), duration(limit as f64 / rate))
            }
        };
        vec![format!(
            "{fix}: at {}/s {left}; doubling the limit to {} ({} bytes) only buys {} more per life",
            human_bytes(rate as i64),
            human_bytes(clamp(limit * 2)),
            limit * 2,
            duration(limit as f64 / rate)
        )]
    }

    /// The runtime's own bound on the memory that grows, sized from the limit: past it the runtime fails with an
    /// error that names the pool (and, for a heap, dumps or logs what fills it) instead of being OOM-killed.
    pub(super) fn runtime_recommendation(&self, rt: Runtime, location: &str) -> Option<String> {
        let limit = self.r.memory.limit_bytes?;
        let share = |f: f64, min: u64, max: u64| ((limit as f64 * f) as u64 / MIB).clamp(min, max);
        let heap = share(0.75, 16, u64::MAX);
        Some(match rt {
            Runtime::Jvm => format!(
                "bound the JVM's pools inside the {} limit so that it throws OutOfMemoryError naming the one that \
                 fills instead of being killed: -Xmx{heap}m (75 % of the limit) -XX:MaxMetaspaceSize={}m \
                 -XX:ReservedCodeCacheSize={}m -XX:MaxDirectMemorySize={}m{}",
                human_bytes(clamp(limit)),
                share(0.08, 32, 512),
                share(0.05, 16, 240),
                share(0.10, 8, u64::MAX),
                if location == "managed-heap" {
                    " -XX:+HeapDumpOnOutOfMemoryError (the dump shows who holds the objects)"
                } else {
                    ""
                }
            ),
            Runtime::Node => format!(
                "start node with --max-old-space-size={heap} (75 % of the {} limit): V8 then fails with a heap \
                 out-of-memory error and its stack instead of the kernel killing the process{}",
                human_bytes(clamp(limit)),
                if location == "off-heap" {
                    "; Buffers and ArrayBuffers are outside that bound: release them, or cap what is cached"
                } else {
                    ""
                }
            ),
            Runtime::Go => format!(
                "set GOMEMLIMIT={}MiB (90 % of the {} limit): the collector works harder before the kernel kills; \
                 a leak still fills it, and `go tool pprof` on net/http/pprof's /debug/pprof/heap names the holder",
                share(0.9, 16, u64::MAX),
                human_bytes(clamp(limit))
            ),
            Runtime::Python => "run the service with PYTHONTRACEMALLOC=25 (or python3 -X tracemalloc=25) and compare \
             tracemalloc snapshots: they name the Python line that allocates what stays"
                .into(),
        })
    }

    /// How to name the holder of a growing managed heap where page faults cannot: a JS or Java object's pages are
    /// touched by the collector as it promotes the object, never by the code that keeps it.
    pub(super) fn holder_recommendation(&self, rt: Runtime, location: &str) -> Option<String> {
        let c = &self.r.collection;
        let (flag, how) = match rt {
            Runtime::Node if c.node_heaps.is_empty() => (
                "--node-heap",
                "V8's sampling heap profiler then names the JS functions whose objects stay (it opens node's \
                 inspector on its loopback for the trace)",
            ),
            Runtime::Jvm if c.jvm_heaps.is_empty() => (
                "--jvm-heap",
                "JFR's old-object sampler then names the Java methods whose objects stay (a recording of its own \
                 in the JVM for the trace)",
            ),
            _ => return None,
        };
        (location == "managed-heap").then(|| format!("run `{}`: {how}", self.trace_again_with(flag)))
    }

    /// What makes a runtime that stops at its heap bound say what fills its heap.
    pub(super) fn heap_dump_recommendation(&self, rt: Runtime) -> Option<String> {
        Some(
            match rt {
                Runtime::Node => {
                    "start node with --heapsnapshot-near-heap-limit=1: V8 writes a heap snapshot as its heap nears \
                     the bound, and the snapshot's retainers name what holds the objects"
                }
                Runtime::Jvm => {
                    "start the JVM with -XX:+HeapDumpOnOutOfMemoryError: it writes a heap dump at the \
                     OutOfMemoryError, whose dominator tree names what holds the objects"
                }
                Runtime::Go => {
                    "serve net/http/pprof and fetch /debug/pprof/heap before the bound is reached: its inuse_space \
                     names the allocating functions"
                }
                Runtime::Python => return self.runtime_recommendation(rt, "managed-heap"),
            }
            .into(),
        )
    }

    /// How to get names for the JIT frames of the site that holds the growth, when some have none.
    pub(super) fn jit_names_recommendation(&self, rt: Runtime, class: &str) -> Option<String> {
        let site = self.held_site(class)?;
        let unnamed = site.frames.iter().filter(|f| !f.kernel && f.symbol.is_none() && f.module.is_none()).count();
        let how = match rt {
            _ if unnamed == 0 => return None,
            Runtime::Node => {
                "start node with --perf-basic-prof (or load the linux-perf module in the process): V8 then writes \
                 /tmp/perf-<pid>.map, which leaktrace reads"
            }
            Runtime::Jvm if self.r.collection.jvm_perfmaps.is_empty() => {
                "run leaktrace with --jvm-perfmap: it asks the JVM (JDK 17 or later) for a perf map of its compiled \
                 methods (interpreted ones show as Interpreter)"
            }
            Runtime::Python => {
                "run Python 3.12 or later with -X perf (or PYTHONPERFSUPPORT=1): it then writes a perf map of its \
                 Python functions"
            }
            Runtime::Jvm | Runtime::Go => return None,
        };
        Some(format!(
            "{} has {unnamed} JIT frame{} without a name: {how}",
            site_name(site).unwrap_or_else(|| "the site".into()),
            if unnamed == 1 { "" } else { "s" }
        ))
    }

    fn pids_recommendation(&self) -> Option<String> {
        let tasks = self.trend("tasks")?;
        let base = tasks.first?.max(1);
        let cap = ((base as f64 * 2.0).ceil() as u64).max(base + 16);
        Some(format!(
            "set pids.max to {cap} (docker run --pids-limit={cap}; twice the {base} tasks after warm-up, {} at the \
             end) so the leak fails at thread creation, not at the memory limit, and find the code that starts \
             threads or connections without ending them",
            tasks.last.unwrap_or(0)
        ))
    }

    /// Where to look when memory is not what killed the processes.
    fn elsewhere(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.deaths() {
            let line = match (e.signal, e.sender_pid) {
                (Some(sig), Some(pid)) if pid == e.pid => format!(
                    "{} crashed with {}: get its core dump and backtrace (ulimit -c unlimited, coredumpctl), not a \
                     memory setting",
                    e.comm,
                    signal_name(sig)
                ),
                (Some(sig), Some(pid)) => format!(
                    "ask why pid {pid} ({}) sends {} to {}: a supervisor, a liveness probe or `docker kill` (docker \
                     events, the orchestrator's logs); memory settings need no change",
                    e.sender_comm.as_deref().unwrap_or("?"),
                    signal_name(sig),
                    e.comm
                ),
                (Some(sig), None) => {
                    format!("find who sends {} to {} (auditd, the supervisor's logs)", signal_name(sig), e.comm)
                }
                (None, _) => format!(
                    "read {}'s own logs for why it exits with status {}; memory settings need no change",
                    e.comm,
                    e.exit_code.unwrap_or(0)
                ),
            };
            if !out.contains(&line) {
                out.push(line);
            }
        }
        out
    }
}

/// "42 s", "3.5 min", "2.1 h".
fn duration(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}
