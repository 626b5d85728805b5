//! The kernel's sites as userspace keeps them, for every window read from one set of probes (a trace's one
//! target, or each container of the agent): the counters read with their user stacks unwound, the sites of exited
//! processes retired from the kernel map, each process's mappings cached while it lives, and the sites built and
//! symbolized for a report.
use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::Result;
use leak_common::{counter, SiteCounters, SiteKey, USTACK_UNWOUND_BIT};

use super::retire;
use crate::{
    probes::Probes,
    report,
    sites::{self, Outstanding, StackSource},
    stacks::{symbolize::Symbolizer, UnwindStats, UserStacks},
};

pub type RawSites = Vec<(SiteKey, SiteCounters)>;

pub struct SiteReader {
    known_pids: BTreeSet<u32>,
    /// The first mapping of each process when its mappings were cached: an exec (even of the same file)
    /// replaces every mapping, and this line with them.
    first_mappings: HashMap<u32, String>,
    comms: HashMap<u32, String>,
    /// Exited processes no site referred to at the last interval (`forget_unreferenced`).
    unreferenced: BTreeSet<u32>,
    /// Processes whose retired sites are not kept (`release`), until they are forgotten.
    released: HashSet<u32>,
    symbolizer: Symbolizer,
    /// Sites of exited processes and freed sampled allocations, taken out of the kernel map so it does not fill up.
    retired: retire::Retired,
    /// The user stacks of sampled allocations, unwound.
    ustacks: UserStacks,
}

impl SiteReader {
    pub fn new(ustacks: UserStacks) -> Self {
        SiteReader {
            known_pids: BTreeSet::new(),
            first_mappings: HashMap::new(),
            comms: HashMap::new(),
            unreferenced: BTreeSet::new(),
            released: HashSet::new(),
            symbolizer: Symbolizer::new(),
            retired: retire::Retired::default(),
            ustacks,
        }
    }

    /// Caches a process's mappings when it is first seen, and again after it execs, so its stacks symbolize even
    /// after it is killed.
    pub fn learn_process(&mut self, pid: u32) {
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

    /// The processes living in the traced cgroups now: their stacks are unwound from their own mappings.
    pub fn look_at(&mut self, pids: &[u32]) {
        // A pid released and used again by a process of a traced container.
        if !self.released.is_empty() {
            for pid in pids {
                self.released.remove(pid);
            }
        }
        self.ustacks.look_at(pids);
    }

    /// An OOM victim's name as the kernel gave it, for a process that died before it was learned.
    pub fn name_victim(&mut self, pid: u32, comm: &str) {
        self.comms.entry(pid).or_insert_with(|| comm.to_string());
    }

    pub fn comms(&self) -> &HashMap<u32, String> {
        &self.comms
    }

    /// For the Go heap profiles' sites, symbolized here with the processes' names.
    pub fn symbolizer_and_comms(&mut self) -> (&mut Symbolizer, &HashMap<u32, String>) {
        (&mut self.symbolizer, &self.comms)
    }

    /// The user stack sample ring buffer's fd (none with frame-pointer stacks), for the event loop.
    pub fn user_stacks_fd(&self) -> Option<std::os::fd::RawFd> {
        self.ustacks.fd()
    }

    /// Unwinds the user stack samples that arrived.
    pub fn drain_user_stacks(&mut self) {
        self.ustacks.drain_queued();
    }

    /// The kernel's sites as they are (a sampled allocation's under its sample token), every token's sample
    /// unwound: the map is read before the samples are drained, as a sample is sent before its allocation is
    /// counted.
    pub fn read(&mut self, probes: &Probes) -> Result<RawSites> {
        // Drained first as well, so the map walk (tens of ms with thousands of samples held) has the whole ring.
        self.ustacks.drain();
        let raw = probes.sites()?;
        self.ustacks.drain();
        Ok(raw)
    }

    /// Sites read by `read`, each sampled allocation's mapped to its unwound user stack, with the retired ones.
    pub fn merged(&self, raw: RawSites) -> RawSites {
        self.retired.merged(self.ustacks.canonicalize(raw))
    }

    /// One interval's housekeeping on the sites just read: processes known only from their sites are learned
    /// (they allocated and may have left between two scans), and the sites of exited processes and freed samples
    /// leave the kernel map for the retired set.
    pub fn retire(&mut self, probes: &mut Probes, raw: &mut RawSites) -> Result<()> {
        for tgid in tgids(raw) {
            self.learn_process(tgid);
        }
        let ustacks = &self.ustacks;
        let gone = self.retired.retire(probes, raw, |k| ustacks.canonical(k), retire::process_alive)?;
        if !gone.is_empty() {
            if !self.released.is_empty() {
                self.retired.forget(&self.released);
            }
            let gone_set: HashSet<SiteKey> = gone.iter().copied().collect();
            raw.retain(|(key, _)| !gone_set.contains(key));
            self.ustacks.forget(&gone);
        }
        self.ustacks.prune();
        self.ustacks.drain();
        self.forget_unreferenced(raw, retire::process_alive);
        Ok(())
    }

    /// Releases `tgids`, the processes of a container whose last report is built: their sites are dropped once
    /// retired (now or when they leave the kernel map), not kept. Kept, they would keep those processes
    /// referenced, and what is cached for them (their objects, a container's own files) with them, for as long
    /// as the agent runs.
    pub fn release(&mut self, tgids: impl IntoIterator<Item = u32>) {
        self.released.extend(tgids);
        self.retired.forget(&self.released);
    }

    /// Forgets the processes that exited and that no site in `raw` (the kernel's) or the retired set refers to:
    /// over days of containers and processes coming and going, what is cached per process stays as large as
    /// what lives and what is still reported. A process is forgotten at the second such call in a row: it may
    /// have allocated after the map was read and before it died, which the next read shows.
    fn forget_unreferenced(&mut self, raw: &RawSites, alive: impl Fn(u32) -> bool) {
        let mut referenced = tgids(raw);
        referenced.extend(self.retired.tgids());
        let known = self.known_pids.iter().chain(self.comms.keys());
        let unreferenced: BTreeSet<u32> =
            known.copied().filter(|pid| !referenced.contains(pid) && !alive(*pid)).collect();
        let (gone, next): (BTreeSet<u32>, BTreeSet<u32>) =
            unreferenced.into_iter().partition(|pid| self.unreferenced.contains(pid));
        self.unreferenced = next;
        self.ustacks.forget_processes(&gone);
        for pid in gone {
            self.known_pids.remove(&pid);
            self.released.remove(&pid);
            self.first_mappings.remove(&pid);
            self.comms.remove(&pid);
            self.symbolizer.forget_process(pid);
        }
    }

    /// Report sites of `raw`, the `top` largest for `mode`.
    pub fn build_sites(
        &mut self,
        probes: &Probes,
        raw: &[(SiteKey, SiteCounters)],
        mode: Outstanding,
        top: usize,
    ) -> Result<Vec<report::Site>> {
        let stacks = AllStacks { kernel: probes.stacks()?, user: &self.ustacks };
        let caches = probes.cache_names()?;
        let built = sites::build(raw, &stacks, &caches, &self.comms, &mut self.symbolizer, mode, top);
        // Symbolizing new objects takes a while: the samples queued meanwhile are taken before the queue fills
        // (the agent builds many reports in a row).
        self.ustacks.drain_queued();
        Ok(built)
    }

    pub fn retired_dropped(&self) -> u64 {
        self.retired.dropped()
    }

    /// `collection.unwind`, with the kernel side's counters `c`.
    pub fn unwind_stats(&self, c: &[u64]) -> UnwindStats {
        self.ustacks.stats(
            [
                c[counter::USTACK_NO_REGS as usize],
                c[counter::USTACK_UNREADABLE as usize],
                c[counter::USTACK_RINGBUF_DROP as usize],
                c[counter::USTACK_NESTED as usize],
                c[counter::USTACK_THINNED as usize],
            ],
            [c[counter::PY_STACKS as usize], c[counter::PY_NO_THREAD as usize]],
        )
    }
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

/// The processes that made `raw`'s sites.
pub fn tgids(raw: &[(SiteKey, SiteCounters)]) -> BTreeSet<u32> {
    raw.iter().map(|(key, _)| key.tgid).collect()
}

/// The first line of a process's maps, which an exec changes. Read at every interval for every process: a small
/// buffer, as the kernel formats only as many mappings as a read asks room for.
fn first_mapping(pid: u32) -> Option<String> {
    use std::io::BufRead;
    let file = std::fs::File::open(format!("/proc/{pid}/maps")).ok()?;
    let mut line = String::new();
    std::io::BufReader::with_capacity(256, file).read_line(&mut line).ok()?;
    (!line.is_empty()).then_some(line)
}

#[cfg(test)]
mod tests {
    use leak_common::{SiteCounters, SiteKey};

    use super::*;
    use crate::stacks::CopySizes;

    #[test]
    fn exited_processes_no_site_refers_to_are_forgotten() {
        let mut reader = SiteReader::new(UserStacks::new(None, None, CopySizes::new(None, 4)));
        for pid in [10, 11, 12] {
            reader.known_pids.insert(pid);
            reader.comms.insert(pid, format!("p{pid}"));
        }
        reader.name_victim(13, "victim");
        // 10 lives; 11 exited but its site is still in the kernel's map; 12 and 13 exited with nothing left.
        let raw = vec![(SiteKey { tgid: 11, ..Default::default() }, SiteCounters::default())];
        reader.forget_unreferenced(&raw, |pid| pid == 10);
        assert_eq!(reader.known_pids.len(), 3, "one interval later: what the exited made since may not be read yet");
        reader.forget_unreferenced(&raw, |pid| pid == 10);
        assert_eq!(reader.known_pids, BTreeSet::from([10, 11]));
        assert_eq!(reader.comms.keys().copied().collect::<BTreeSet<_>>(), BTreeSet::from([10, 11]));
    }
}
