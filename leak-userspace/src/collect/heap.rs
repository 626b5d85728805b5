//! `--heap` over a session: attaching the allocator probes to every process of the target as it appears,
//! measuring what they cost each one, taking them off a process they would slow down past the budget, and
//! settling the heap of processes that are gone or no longer traced.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use leak_common::{counter, kind, SiteCounters, SiteKey};

use super::go_heap::{self, GoHeap};
use crate::{
    probes::{allocator, Probes},
    report::{HeapCollection, HeapProcess},
    stacks::maps::{exe_file, file_id},
};

const GO_NOTE: &str =
    "Go allocates from its own heap, not through malloc: its runtime's sampled heap profile is read every interval";

/// Below this estimated cost (a share of one CPU) a process is never detached, whatever its share: a process
/// that barely runs is not slowed down in any way anyone would notice, and its CPU time is too coarse (10 ms
/// ticks) to divide by.
const MIN_COST_CPU: f64 = 0.01;

/// The shortest span over which a process's cost is judged.
const MIN_LOOK: f64 = 0.5;

/// How long a spawned process is waited for to map its allocator before it is declared not traceable.
const SPAWN_WAIT: Duration = Duration::from_secs(1);

/// Processes whose probing is announced on the terminal; later ones only go into the report.
const ANNOUNCED: usize = 8;

pub struct HeapTracer {
    /// The most of a process's CPU time the probes may take (a fraction).
    budget: f64,
    hit_ns: f64,
    procs: BTreeMap<u32, Traced>,
    /// Processes reported by the kernel as just spawned, waiting for their allocator to be mapped, since when.
    pending: Vec<(u32, Instant)>,
    /// Lines for the terminal, taken by the session.
    notices: Vec<String>,
    announced: usize,
    /// Go processes: no allocator to probe, their runtime's own heap profile instead.
    go: GoHeap,
}

struct Traced {
    report: HeapProcess,
    /// The executable's file (device, inode): another after an exec.
    exe_file: Option<(u64, u64)>,
    /// The allocator's file (device, inode) as probed.
    allocator_file: Option<(u64, u64)>,
    /// Not probed for want of an allocator: the executable files it mapped then. Tried again once they change (a
    /// process seen between its exec and the dynamic linker's mapping of libc, or one that loads an allocator).
    unprobed_objects: Option<Vec<String>>,
    /// At the last look: seconds since the start, probe hits, CPU seconds of the process.
    last: Option<(f64, u64, f64)>,
    /// Still probed (not gone, detached or failed).
    attached: bool,
}

impl HeapTracer {
    pub fn new(budget_percent: f64, hit_ns: f64) -> Self {
        let notices = vec![format!(
            "--heap: a probe hit costs {hit_ns:.0} ns here; processes whose probes would take over {budget_percent} % of their CPU time are detached"
        )];
        HeapTracer {
            budget: budget_percent / 100.0,
            hit_ns,
            procs: BTreeMap::new(),
            pending: Vec::new(),
            notices,
            announced: 0,
            go: GoHeap::default(),
        }
    }

    /// Lines worth showing on the terminal since the last call.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// A process of the target was just made or ran another program (the kernel's `SPAWNS`): probed at once, or
    /// as soon as its allocator is mapped (the dynamic linker maps libc after the exec).
    pub fn spawned(&mut self, pid: u32) {
        if !self.pending.iter().any(|(p, _)| *p == pid) {
            self.pending.push((pid, Instant::now()));
        }
    }

    /// Tries the processes waiting since their spawn; called often (every user stack drain).
    pub fn retry(&mut self, probes: &mut Probes, t: f64) {
        for (pid, since) in std::mem::take(&mut self.pending) {
            if !self.offer(probes, pid, t, since.elapsed() >= SPAWN_WAIT) {
                self.pending.push((pid, since));
            }
        }
    }

    /// Probes process `pid` if it is new or runs another program since it was probed. Returns false when it
    /// should be tried again (its allocator is not mapped yet), which only a `last` try never does.
    fn offer(&mut self, probes: &mut Probes, pid: u32, t: f64, last: bool) -> bool {
        let Some(exe_file) = exe_file(pid) else { return true };
        if self.settled(pid, exe_file) {
            return true;
        }
        let found = allocator::find(pid);
        if let (Some(p), Ok(a)) = (self.procs.get_mut(&pid), &found) {
            // An exec into a program with the same allocator file: the probes, bound to that file and to this
            // process, go on working in the new program.
            if p.attached && p.allocator_file.is_some() && p.allocator_file == file_id(&a.host_path) {
                p.exe_file = Some(exe_file);
                p.report.comm = comm(pid);
                return true;
            }
        }
        if found.is_err() && !last {
            return false;
        }
        if let Some(p) = self.procs.get_mut(&pid).filter(|p| p.attached) {
            probes.detach_heap(pid);
            p.attached = false;
        }
        self.attach(probes, pid, t, exe_file, found);
        true
    }

    /// Whether process `pid`, running the executable file `exe`, was probed as it is now, or found to have no
    /// allocator among the objects it still maps.
    fn settled(&self, pid: u32, exe: (u64, u64)) -> bool {
        self.procs.get(&pid).is_some_and(|p| {
            p.exe_file == Some(exe)
                && p.unprobed_objects.as_ref().is_none_or(|was| allocator::objects(pid).is_ok_and(|now| now == *was))
        })
    }

    /// One interval at `t`: probes every new process among `pids`, checks what each costs, and lets go of
    /// processes that are gone, and of their blocks in the kernel's table.
    pub fn tick(&mut self, probes: &mut Probes, pids: &[u32], t: f64) {
        // A process first seen here (spawned before the tracer, or its spawn not read yet) may be between its exec
        // and the dynamic linker's mapping of its allocator: it waits as a spawned one does.
        for &pid in pids {
            if exe_file(pid).is_some_and(|exe| !self.settled(pid, exe)) {
                self.spawned(pid);
            }
        }
        self.retry(probes, t);
        self.go.read_all();
        for (&pid, p) in self.procs.iter_mut() {
            if let Some(error) = self.go.last_error(pid) {
                p.report.note = Some(error.map_or(GO_NOTE.into(), |e| format!("{GO_NOTE}; the last read failed: {e}")));
            }
        }
        let hits = probes.heap_hits().unwrap_or_default();
        let mut ended = Vec::new();
        for (&pid, p) in self.procs.iter_mut().filter(|(_, p)| p.attached) {
            let n = hits.get(&pid).copied().unwrap_or(p.report.hits);
            p.report.hits = n;
            let Some(cpu) = cpu_seconds(pid) else {
                probes.detach_heap(pid);
                p.attached = false;
                p.report.state = "exited".into();
                ended.push(pid);
                continue;
            };
            if let Some((t0, n0, cpu0)) = p.last {
                let dt = t - t0;
                // Looks closer together (the loop's first ticks, a restart followed at once) say nothing: CPU
                // time comes in 10 ms ticks.
                if dt < MIN_LOOK {
                    continue;
                }
                let cost = n.saturating_sub(n0) as f64 * self.hit_ns * 1e-9 / dt;
                // The probes' time is part of the process's: a share over 1 is the estimate's error.
                let share = (cost * dt / (cpu - cpu0).max(1e-3)).min(1.0);
                let rate = n.saturating_sub(n0) as f64 / dt;
                p.report.hits_per_second.get_or_insert(rate);
                p.report.cost_cpu = p.report.cost_cpu.max(cost);
                if cost >= MIN_COST_CPU && share > self.budget {
                    probes.detach_heap(pid);
                    p.attached = false;
                    p.report.state = "over-budget".into();
                    p.report.detached_at = Some(t);
                    let why = format!(
                        "{:.0} probe hits/s would take about {:.0} % of its CPU time ({:.2} CPU), over the --heap-budget of {:.0} %",
                        rate,
                        share * 100.0,
                        cost,
                        self.budget * 100.0
                    );
                    self.notices.push(format!("heap probes detached from pid {pid} ({}): {why}", p.report.comm));
                    p.report.note = Some(why);
                    ended.push(pid);
                    continue;
                }
            }
            p.last = Some((t, n, cpu));
        }
        if !ended.is_empty() {
            let _ = probes.forget_heap_blocks(&ended);
        }
    }

    /// Probes process `pid` with the allocator found for it, and records how that went.
    fn attach(
        &mut self,
        probes: &mut Probes,
        pid: u32,
        t: f64,
        exe_file: (u64, u64),
        found: Result<allocator::Allocator>,
    ) {
        let mut report =
            HeapProcess { pid, comm: comm(pid), attached_at: t, state: "traced".into(), ..Default::default() };
        let mut allocator_file = None;
        let unprobed_objects = found.is_err().then(|| allocator::objects(pid).ok()).flatten();
        match found.and_then(|a| probes.attach_heap(pid, &a).map(|n| (a, n))) {
            Ok((a, n)) => {
                allocator_file = file_id(&a.host_path);
                report.allocator = Some(a.path);
                report.probes = n as u32;
            }
            Err(e) => {
                report.state = "not-traced".into();
                report.note = Some(format!("{e:#}"));
            }
        }
        // A Go program's own heap is in its profile; the probes, on libc when it links it (cgo), see C's.
        if let Some(sym) = go_heap::Symbols::find(pid) {
            self.go.add(pid, sym);
            if report.allocator.is_none() {
                report.state = "go-profile".into();
            }
            report.note = Some(GO_NOTE.into());
        }
        let attached = report.allocator.is_some();
        if self.announced < ANNOUNCED {
            self.announced += 1;
            self.notices.push(match (&report.allocator, &report.note) {
                (Some(a), Some(note)) => format!(
                    "heap probes on pid {pid} ({}): {} probes in {a} for C's heap; {note}",
                    report.comm, report.probes
                ),
                (Some(a), _) => format!("heap probes on pid {pid} ({}): {} probes in {a}", report.comm, report.probes),
                (None, Some(note)) if report.state == "go-profile" => format!("pid {pid} ({}): {note}", report.comm),
                (None, note) => {
                    format!("pid {pid} ({}) is not heap-traced: {}", report.comm, note.as_deref().unwrap_or(""))
                }
            });
        }
        self.procs.insert(
            pid,
            Traced { report, exe_file: Some(exe_file), allocator_file, unprobed_objects, last: None, attached },
        );
    }

    /// The Go processes' own heap profiles.
    pub fn go(&mut self) -> &mut GoHeap {
        &mut self.go
    }

    /// Whether process `tgid`'s heap is traced now (its sites' frees are still seen).
    pub fn covers(&self, tgid: u32) -> bool {
        self.procs.get(&tgid).is_some_and(|p| p.attached)
    }

    /// The last hit counts of the processes still probed, read when the session ends.
    pub fn final_hits(&mut self, probes: &Probes) {
        let hits = probes.heap_hits().unwrap_or_default();
        for (pid, p) in self.procs.iter_mut().filter(|(_, p)| p.attached) {
            p.report.hits = hits.get(pid).copied().unwrap_or(p.report.hits);
        }
    }

    /// `collection.heap`, with the kernel side's counters.
    pub fn report(&self, counters: &[u64]) -> HeapCollection {
        HeapCollection {
            hit_cost_ns: self.hit_ns,
            budget_percent: self.budget * 100.0,
            processes: self.procs.values().map(|p| p.report.clone()).collect(),
            calls_lost: counters[counter::HEAP_CALLS_FULL as usize],
            unmatched_returns: counters[counter::HEAP_UNMATCHED_RETURN as usize],
        }
    }
}

/// The heap sites of processes whose heap is no longer traced (gone, or detached) are settled: what they still
/// held went with the process (an OOM victim's counted as freed by the kill), or can no longer be followed.
pub fn settle(raw: &mut [(SiteKey, SiteCounters)], traced: impl Fn(u32) -> bool, victims: &[u32]) {
    for (key, c) in raw.iter_mut().filter(|(k, _)| k.kind == kind::HEAP) {
        if traced(key.tgid) {
            continue;
        }
        let bytes = c.alloc_bytes.saturating_sub(c.free_bytes.saturating_add(c.oom_freed_bytes));
        let count = c.alloc_count.saturating_sub(c.free_count.saturating_add(c.oom_freed_count));
        if victims.contains(&key.tgid) {
            c.oom_freed_bytes += bytes;
            c.oom_freed_count += count;
        } else {
            c.free_bytes += bytes;
            c.free_count += count;
        }
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_string()
}

/// User and system CPU seconds of a process so far; `None` once it is gone (or a zombie: its memory is freed).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_seconds(&stat, clock_ticks())
}

fn parse_cpu_seconds(stat: &str, ticks: f64) -> Option<f64> {
    // The command may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_site(tgid: u32, alloc: u64, free: u64) -> (SiteKey, SiteCounters) {
        let key = SiteKey { tgid, kind: kind::HEAP, ..Default::default() };
        (
            key,
            SiteCounters {
                alloc_bytes: alloc * 100,
                alloc_count: alloc,
                free_bytes: free * 100,
                free_count: free,
                ..Default::default()
            },
        )
    }

    #[test]
    fn heap_of_processes_no_longer_traced_is_settled() {
        let mut raw = vec![heap_site(1, 10, 4), heap_site(2, 10, 4), heap_site(3, 5, 0)];
        raw.push((SiteKey { tgid: 2, kind: kind::ANON, ..Default::default() }, raw[1].1));
        settle(&mut raw, |tgid| tgid == 1, &[3]);
        assert!(!raw[0].1.all_freed(), "a traced process keeps its heap");
        assert_eq!((raw[1].1.free_bytes, raw[1].1.free_count, raw[1].1.oom_freed_bytes), (1000, 10, 0));
        assert_eq!((raw[2].1.oom_freed_bytes, raw[2].1.oom_freed_count, raw[2].1.free_bytes), (500, 5, 0));
        assert!(raw[1].1.all_freed() && raw[2].1.all_freed());
        assert!(!raw[3].1.all_freed(), "anon sites are the kernel's business");
    }

    #[test]
    fn cpu_seconds_from_stat() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 12345 0 0";
        assert_eq!(parse_cpu_seconds(stat, 100.0), Some(3.0));
        assert_eq!(parse_cpu_seconds("1 (z) Z 1 1 1 0 -1 0 0 0 0 0 5 5", 100.0), None, "a zombie's memory is gone");
        assert_eq!(parse_cpu_seconds("garbage", 100.0), None);
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
