//! How much of each process's stack its samples copy. The copy is the costliest part of a kept event (some 4 us
//! for the default 16 KiB), and most processes' walks end within a KiB or two of the stack pointer. After a
//! program's first `LEARN` samples, the copy of each of its processes is cut to the deepest of their walks and a
//! chunk more (the programs' `USTACK_CHUNKS`). A walk that runs out of a cut copy sets the program's processes
//! back to the full copy to learn again, and its next cut is longer: a deeper path costs one truncated sample,
//! counted in `collection.unwind`.
//!
//! A program is an executable file: its processes are learned from together, and a new one starts from what the
//! others taught. Fifty replicas started at once, or a container restarted after its OOM kill, would otherwise
//! each send their first samples with the full copy, a burst that overflows the sample ring.
use std::{collections::HashMap, os::unix::fs::MetadataExt};

use aya::maps::{HashMap as BpfHashMap, MapData};
use leak_common::{StackSample, USTACK_CHUNK};

/// Samples a program's copy is learned from.
const LEARN: u32 = 64;
/// Programs remembered once none of their processes lives (for the next one to start from).
const PROGRAMS_KEPT: usize = 4096;

/// What one program's samples have shown.
#[derive(Debug, Default)]
struct Learning {
    samples: u32,
    /// The most chunks a walk read, from the chunk of its stack pointer up.
    needed: u32,
    /// The chunks its copy is cut to, if it is.
    cut: Option<u32>,
}

/// A change to make to a process's entry in `USTACK_CHUNKS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Cut(u32),
    Full,
}

impl Learning {
    /// One walk that read `needed` chunks (`ran_out`: it needed more than its copy held) of a process whose full
    /// copy is `full` chunks.
    fn observe(&mut self, needed: u32, ran_out: bool, full: u32) -> Option<Change> {
        self.needed = self.needed.max(needed);
        if ran_out {
            self.samples = 0;
            // The cut was too short: the next one is longer, however deep the next samples go, so a process
            // whose deep paths are rare is restored at most once a chunk.
            let cut = self.cut.take()?;
            self.needed = self.needed.max(cut + 1);
            return Some(Change::Full);
        }
        if self.cut.is_some() {
            return None;
        }
        self.samples += 1;
        let cut = self.needed + 1;
        (self.samples >= LEARN && cut < full).then(|| {
            self.cut = Some(cut);
            Change::Cut(cut)
        })
    }
}

/// `collection.unwind.copy_cuts` and `copy_restores`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CopyCounts {
    pub cuts: u64,
    pub restores: u64,
}

/// Who is learned from together: an executable (its device and inode), or a process alone whose executable could
/// not be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Program {
    Exe(u64, u64),
    Alone(u32),
}

impl Program {
    fn of(tgid: u32) -> Program {
        match std::fs::metadata(format!("/proc/{tgid}/exe")) {
            Ok(m) => Program::Exe(m.dev(), m.ino()),
            Err(_) => Program::Alone(tgid),
        }
    }
}

#[derive(Debug, Default)]
struct Learned {
    learning: Learning,
    /// Its processes alive, whose entries follow the program's cut.
    tgids: Vec<u32>,
}

/// The learned copy sizes, and the programs' table of them (none: nothing is cut, as in unit tests).
pub struct CopySizes {
    map: Option<BpfHashMap<MapData, u32, u32>>,
    full: u32,
    programs: HashMap<Program, Learned>,
    processes: HashMap<u32, Program>,
    pub counts: CopyCounts,
}

impl CopySizes {
    /// `full`: the chunks of `--user-stack-bytes`.
    pub fn new(map: Option<BpfHashMap<MapData, u32, u32>>, full: u32) -> Self {
        CopySizes { map, full, programs: HashMap::new(), processes: HashMap::new(), counts: CopyCounts::default() }
    }

    /// The program of `tgid`; a process met for the first time gets its program's cut, if it has one.
    fn program_of(&mut self, tgid: u32, of: impl FnOnce(u32) -> Program) -> Program {
        if let Some(&program) = self.processes.get(&tgid) {
            return program;
        }
        let program = of(tgid);
        self.processes.insert(tgid, program);
        let learned = self.programs.entry(program).or_default();
        learned.tgids.push(tgid);
        if let Some(chunks) = learned.learning.cut {
            self.counts.cuts += 1;
            if let Some(map) = &mut self.map {
                let _ = map.insert(tgid, chunks, 0);
            }
        }
        program
    }

    /// Learns from one walk of `sample` that read `depth` bytes above its stack pointer. The kernel side copies
    /// whole chunks from the stack pointer's chunk up (the queue drops what lies below the stack pointer).
    pub fn observe(&mut self, sample: &StackSample, depth: u64, ran_out: bool) {
        let from_base = sample.sp % USTACK_CHUNK as u64 + depth;
        let needed = from_base.div_ceil(USTACK_CHUNK as u64).min(u64::from(self.full)) as u32;
        self.observe_in(sample.tgid, needed, ran_out, Program::of);
    }

    fn observe_in(&mut self, tgid: u32, needed: u32, ran_out: bool, of: impl FnOnce(u32) -> Program) {
        let program = self.program_of(tgid, of);
        let Some(learned) = self.programs.get_mut(&program) else { return };
        let Some(change) = learned.learning.observe(needed, ran_out, self.full) else { return };
        match change {
            Change::Cut(chunks) => {
                self.counts.cuts += learned.tgids.len() as u64;
                if let Some(map) = &mut self.map {
                    for &tgid in &learned.tgids {
                        let _ = map.insert(tgid, chunks, 0);
                    }
                }
            }
            Change::Full => {
                self.counts.restores += 1;
                if let Some(map) = &mut self.map {
                    for tgid in &learned.tgids {
                        let _ = map.remove(tgid);
                    }
                }
            }
        }
    }

    /// Forgets the processes `alive` says are gone (their programs' learning stays for the next ones).
    pub fn prune(&mut self, alive: impl Fn(u32) -> bool) {
        let (map, programs) = (&mut self.map, &mut self.programs);
        self.processes.retain(|&tgid, program| {
            if alive(tgid) {
                return true;
            }
            if let Some(learned) = programs.get_mut(program) {
                learned.tgids.retain(|&t| t != tgid);
                if let (Some(map), Some(_)) = (map.as_mut(), learned.learning.cut) {
                    let _ = map.remove(&tgid);
                }
            }
            false
        });
        self.programs.retain(|p, learned| !learned.tgids.is_empty() || matches!(p, Program::Exe(..)));
        if self.programs.len() > PROGRAMS_KEPT {
            self.programs.retain(|_, learned| !learned.tgids.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_cut_after_its_learning_samples_to_the_deepest_walk_and_a_chunk_more() {
        let mut l = Learning::default();
        for i in 0..LEARN - 1 {
            assert_eq!(l.observe(if i == 7 { 2 } else { 1 }, false, 4), None);
        }
        assert_eq!(l.observe(1, false, 4), Some(Change::Cut(3)));
        assert_eq!(l.observe(3, false, 4), None, "cut once");
    }

    #[test]
    fn a_walk_that_runs_out_of_a_cut_copy_restores_the_full_copy_and_the_next_cut_is_longer() {
        let mut l = Learning::default();
        (0..LEARN).for_each(|_| {
            l.observe(1, false, 8);
        });
        assert_eq!(l.cut, Some(2));
        assert_eq!(l.observe(2, true, 8), Some(Change::Full));
        assert_eq!(l.observe(2, true, 8), None, "already full");
        // The next samples are shallow again, but 2 chunks proved too short.
        (0..LEARN - 1).for_each(|_| assert_eq!(l.observe(1, false, 8), None));
        assert_eq!(l.observe(1, false, 8), Some(Change::Cut(4)));
        // A deeper walk the full copy shows is learned: no cut would hold it.
        assert_eq!(l.observe(4, true, 8), Some(Change::Full));
        (0..LEARN).for_each(|_| {
            l.observe(7, false, 8);
        });
        assert_eq!(l.cut, None);
    }

    #[test]
    fn no_cut_is_made_that_would_not_be_smaller_than_the_full_copy() {
        let mut l = Learning::default();
        (0..LEARN * 2).for_each(|_| assert_eq!(l.observe(3, false, 4), None));
        assert_eq!(l.cut, None);
    }

    #[test]
    fn the_chunks_needed_count_from_the_stack_pointers_chunk() {
        let mut sizes = CopySizes::new(None, 4);
        let sample = StackSample { tgid: 7, sp: 0x7fff_0f00, base: 0x7fff_0000, ..Default::default() };
        // 0xf00 + 0x200 bytes reach into the second chunk: a cut of 3 after learning.
        (0..LEARN).for_each(|_| sizes.observe(&sample, 0x200, false));
        let program = sizes.processes[&7];
        assert_eq!(sizes.programs[&program].learning.cut, Some(3));
        assert_eq!(sizes.counts, CopyCounts { cuts: 1, restores: 0 });
        sizes.observe(&sample, 0x3000, true);
        assert_eq!(sizes.counts, CopyCounts { cuts: 1, restores: 1 });
        sizes.prune(|_| false);
        assert!(sizes.processes.is_empty());
    }

    #[test]
    fn the_processes_of_one_program_learn_together_and_a_new_one_starts_cut() {
        let mut sizes = CopySizes::new(None, 8);
        let exe = |_| Program::Exe(1, 42);
        // Two replicas' samples interleaved: the program's 64th sample cuts both.
        for i in 0..LEARN {
            sizes.observe_in(100 + i % 2, 1, false, exe);
        }
        assert_eq!(sizes.programs[&Program::Exe(1, 42)].learning.cut, Some(2));
        assert_eq!(sizes.counts.cuts, 2);
        // A third replica (or the restart of one) is cut from its first sample; another program is not.
        sizes.observe_in(102, 1, false, exe);
        assert_eq!(sizes.counts.cuts, 3);
        sizes.observe_in(200, 1, false, |_| Program::Exe(1, 43));
        assert_eq!(sizes.counts.cuts, 3);
        // One replica's walk running out sets the whole program back to the full copy.
        sizes.observe_in(101, 2, true, exe);
        assert_eq!(sizes.counts.restores, 1);
        assert_eq!(sizes.programs[&Program::Exe(1, 42)].learning.cut, None);
        // The replicas go; what their program learned stays for the next.
        sizes.prune(|tgid| tgid == 200);
        assert_eq!(sizes.processes.len(), 1);
        assert!(sizes.programs[&Program::Exe(1, 42)].tgids.is_empty());
    }
}
