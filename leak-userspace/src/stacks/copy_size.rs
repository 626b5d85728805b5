//! How much of each process's stack its samples copy. The copy is the costliest part of a kept event (some 4 us
//! for the default 16 KiB), and most processes' walks end within a KiB or two of the stack pointer. After a
//! process's first `LEARN` samples, its copy is cut to the deepest of their walks and a chunk more (the programs'
//! `USTACK_CHUNKS`). A walk that runs out of a cut copy sets the process back to the full copy to learn again, and
//! its next cut is longer: a deeper path costs one truncated sample, counted in `collection.unwind`.
use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData};
use leak_common::{StackSample, USTACK_CHUNK};

/// Samples a process's copy is learned from.
const LEARN: u32 = 64;

/// What one process's samples have shown.
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

/// The learned copy sizes, and the programs' table of them (none: nothing is cut, as in unit tests).
pub struct CopySizes {
    map: Option<BpfHashMap<MapData, u32, u32>>,
    full: u32,
    processes: HashMap<u32, Learning>,
    pub counts: CopyCounts,
}

impl CopySizes {
    /// `full`: the chunks of `--user-stack-bytes`.
    pub fn new(map: Option<BpfHashMap<MapData, u32, u32>>, full: u32) -> Self {
        CopySizes { map, full, processes: HashMap::new(), counts: CopyCounts::default() }
    }

    /// Learns from one walk of `sample` that read `depth` bytes above its stack pointer.
    pub fn observe(&mut self, sample: &StackSample, depth: u64, ran_out: bool) {
        let from_base = sample.sp.saturating_sub(sample.base) + depth;
        let needed = from_base.div_ceil(USTACK_CHUNK as u64).min(u64::from(self.full)) as u32;
        let learning = self.processes.entry(sample.tgid).or_default();
        let Some(change) = learning.observe(needed, ran_out, self.full) else { return };
        match change {
            Change::Cut(chunks) => {
                self.counts.cuts += 1;
                if let Some(map) = &mut self.map {
                    let _ = map.insert(sample.tgid, chunks, 0);
                }
            }
            Change::Full => {
                self.counts.restores += 1;
                if let Some(map) = &mut self.map {
                    let _ = map.remove(&sample.tgid);
                }
            }
        }
    }

    /// Forgets the processes `alive` says are gone.
    pub fn prune(&mut self, alive: impl Fn(u32) -> bool) {
        let map = &mut self.map;
        self.processes.retain(|&pid, learning| {
            let keep = alive(pid);
            if !keep && learning.cut.is_some() {
                if let Some(map) = map {
                    let _ = map.remove(&pid);
                }
            }
            keep
        });
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
        assert_eq!(sizes.processes[&7].cut, Some(3));
        assert_eq!(sizes.counts, CopyCounts { cuts: 1, restores: 0 });
        sizes.observe(&sample, 0x3000, true);
        assert_eq!(sizes.counts, CopyCounts { cuts: 1, restores: 1 });
        sizes.prune(|_| false);
        assert!(sizes.processes.is_empty());
    }
}
