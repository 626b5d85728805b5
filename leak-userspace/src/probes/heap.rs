//! `--heap`: the allocator uprobes, attached to one process at a time (a uprobe of one process never fires in
//! another, so the rest of the host pays nothing), and what they cost.
use std::{
    collections::HashMap as StdHashMap,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{HashMap, MapData, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope},
        RawTracePoint, UProbe,
    },
};
use leak_common::{HeapKey, LiveAlloc};

use super::{
    allocator::{self, Allocator},
    Discovery, Probes,
};

/// The programs that tell userspace of a new process or program in the target, and their events.
const SPAWN_PROGRAMS: &[(&str, &str)] =
    &[("lt_heap_fork", "sched_process_fork"), ("lt_heap_exec", "sched_process_exec")];

/// The probes attached to one process, owned here rather than by their programs so that they can be closed
/// together (see [`Reaper`]).
#[derive(Default)]
pub struct Attached {
    links: Vec<UProbeLink>,
}

/// Closing a uprobe's perf event waits for an RCU-tasks grace period (~0.1 s measured here), and a process has
/// some 17 of them: closed one after the other, every exit, exec or detach of a traced process would stall the
/// event loop for two seconds, and leaktrace's own exit as long per process. Closes made at the same time share a
/// grace period, so the links are dropped on threads of their own, all at once.
#[derive(Default)]
pub struct Reaper {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Reaper {
    /// At most this many closing threads at a time; more links share them.
    const MAX_THREADS: usize = 64;

    fn release(&mut self, mut links: Vec<UProbeLink>) {
        self.threads.retain(|t| !t.is_finished());
        let room = Self::MAX_THREADS.saturating_sub(self.threads.len()).max(1);
        let chunk = links.len().div_ceil(room).max(1);
        while !links.is_empty() {
            let batch: Vec<UProbeLink> = links.drain(..chunk.min(links.len())).collect();
            // A thread that cannot be made (a thread limit) closes nothing: the batch is dropped here, slowly.
            if let Ok(t) = std::thread::Builder::new().name("lt-uprobe-close".into()).spawn(move || drop(batch)) {
                self.threads.push(t);
            }
        }
    }

    /// Returns once every released link is closed.
    fn wait(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Probes {
    /// Loads the `--heap` programs (attached later, process by process), and attaches those that report new
    /// processes where this kernel has their events.
    pub(super) fn load_heap(&mut self, discovery: &mut Discovery) -> Result<()> {
        for name in allocator::programs() {
            let prog = self.uprobe(name)?;
            prog.load().map_err(|e| anyhow!("the kernel refused program {name}: {e}"))?;
        }
        for (program, event) in SPAWN_PROGRAMS {
            if !discovery.has_event("sched", event) {
                discovery
                    .degraded
                    .push(format!("no sched:{event}: the processes it reports are heap-probed at the next interval"));
                continue;
            }
            let prog: &mut RawTracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
                .try_into()?;
            prog.load().map_err(|e| anyhow!("the kernel refused program {program}: {e}"))?;
            prog.attach(event).map_err(|e| anyhow!("attaching to sched:{event} failed: {e}"))?;
            self.attached.push(program);
        }
        self.heap_enabled = true;
        Ok(())
    }

    /// The ring buffer of spawned processes (`--heap`), handed out once to the event loop.
    pub fn take_spawns(&mut self) -> Result<RingBuf<MapData>> {
        self.take_ring("SPAWNS")
    }

    pub fn heap_enabled(&self) -> bool {
        self.heap_enabled
    }

    fn uprobe(&mut self, name: &str) -> Result<&mut UProbe> {
        let prog = self.ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
        prog.try_into().map_err(|e| anyhow!("program {name}: {e}"))
    }

    /// Attaches the allocator probes of `alloc` to process `pid` (entered in `HEAP_PROCS` first, so that no hit
    /// goes uncounted). All or nothing: a probe that fails takes the others back. Returns the probes attached.
    pub fn attach_heap(&mut self, pid: u32, alloc: &Allocator) -> Result<usize> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0")?);
        self.heap_procs()?.insert(pid, 0, 0).context("the table of heap-traced processes is full")?;
        let mut attached = Attached::default();
        let result = (|| -> Result<()> {
            for probe in &alloc.probes {
                let mut points = vec![probe.entry.program];
                if probe.entry.returns {
                    points.push(allocator::RETURN_PROGRAM);
                }
                for program in points {
                    let prog = self.uprobe(program)?;
                    let id = prog
                        .attach(UProbeAttachLocation::AbsoluteOffset(probe.offset), &alloc.host_path, scope)
                        .map_err(|e| anyhow!("{}:{}: {e}", alloc.path, probe.symbol))?;
                    attached.links.push(prog.take_link(id)?);
                }
            }
            Ok(())
        })();
        let n = attached.links.len();
        self.heap_links.insert(pid, attached);
        if let Err(e) = result {
            self.detach_heap(pid);
            return Err(e);
        }
        Ok(n)
    }

    /// Takes process `pid`'s probes off (whatever state it is in) and its entry out of `HEAP_PROCS`.
    pub fn detach_heap(&mut self, pid: u32) {
        if let Some(attached) = self.heap_links.remove(&pid) {
            self.reaper.release(attached.links);
        }
        if let Ok(mut procs) = self.heap_procs() {
            let _ = procs.remove(&pid);
        }
    }

    /// Closes every heap probe, all at once, and returns when they are gone.
    pub(super) fn detach_all_heap(&mut self) {
        let links: Vec<UProbeLink> = self.heap_links.drain().flat_map(|(_, a)| a.links).collect();
        self.reaper.release(links);
        self.reaper.wait();
    }

    /// Probe hits so far of every traced process.
    pub fn heap_hits(&self) -> Result<StdHashMap<u32, u64>> {
        let map: HashMap<&MapData, u32, u64> = HashMap::try_from(self.map("HEAP_PROCS")?)?;
        Ok(map.iter().filter_map(|r| r.ok()).collect())
    }

    fn heap_procs(&mut self) -> Result<HashMap<&mut MapData, u32, u64>> {
        Ok(HashMap::try_from(self.map_mut("HEAP_PROCS")?)?)
    }

    /// Drops the outstanding heap blocks of processes that are gone: their memory went with them, and their
    /// entries would fill the table.
    pub fn forget_heap_blocks(&mut self, tgids: &[u32]) -> Result<usize> {
        let mut map: HashMap<&mut MapData, HeapKey, LiveAlloc> = HashMap::try_from(self.map_mut("HEAP_LIVE")?)?;
        let gone: Vec<HeapKey> = map.keys().filter_map(|k| k.ok()).filter(|k| tgids.contains(&k.tgid)).collect();
        for key in &gone {
            let _ = map.remove(key);
        }
        Ok(gone.len())
    }

    /// What one probe hit costs on this machine and kernel: this process's own `malloc` and `free`, timed bare
    /// and then with the entry, return and free probes attached (the programs return at once: this process is
    /// not traced). The trap into the kernel and back is most of the cost of a hit.
    pub fn measure_heap_hit(&mut self) -> Result<Duration> {
        // Some 50 ms of traps at this machine's ~4 us a hit: enough to measure microseconds, and the start waits.
        const CALLS: u32 = 4_000;
        let me = std::process::id();
        let alloc = allocator::find(me).context("cannot find this process's own allocator")?;
        let pair = || {
            let start = Instant::now();
            for i in 0..CALLS {
                // SAFETY: a block allocated and freed at once; black_box keeps the pair from being optimised out.
                unsafe { libc::free(std::hint::black_box(libc::malloc(32 + (i as usize & 7)))) };
            }
            start.elapsed()
        };
        let bare = pair().min(pair());
        let only = |name: &str| Allocator {
            probes: alloc.probes.iter().filter(|p| p.symbol == name).cloned().collect(),
            ..alloc.clone()
        };
        let mut probes = only("malloc");
        probes.probes.extend(only("free").probes);
        self.attach_heap(me, &probes)?;
        // Not entered in HEAP_PROCS: the programs return at their first lookup, as for an untraced call.
        self.heap_procs()?.remove(&me).ok();
        let probed = pair().min(pair());
        self.detach_heap(me);
        self.reaper.wait();
        // Three hits a pair: malloc's entry and return, free's entry.
        Ok(probed.saturating_sub(bare) / (3 * CALLS))
    }
}
