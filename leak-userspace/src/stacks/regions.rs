//! What kind of memory a user address lies in, told from the process's mappings: report.json `sites[].region`.
//! It says whether the function that first touched a page may not be the one holding it: malloc hands a freed
//! block of its heap to whoever asks next, so the pages of the brk heap and of glibc's arenas change hands; an
//! mmap'd block's pages (malloc's largest allocations among them) and a stack's do not.
use std::time::{Duration, Instant};

use super::maps::{self, Mapping};

/// glibc's HEAP_MAX_SIZE on 64-bit (twice the largest mmap threshold, 32 MiB): a thread arena's heap is the start
/// of a reservation of this size and alignment, mapped without access and made read-write as the heap grows.
const ARENA_RESERVATION: u64 = 64 << 20;

/// A process's mappings are read again for an address they do not hold (a heap grown, a block mapped since) at
/// most this often, and no sooner than this many times the last read's duration after it: a process with
/// thousands of mappings is read less often than a small one.
const REREAD_MIN: Duration = Duration::from_millis(10);
const REREAD_COST_FACTOR: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// The main arena's heap, grown by brk: `[heap]`.
    BrkHeap,
    /// The heap of a glibc thread arena: anonymous memory at the start of a 64 MiB aligned reservation.
    MallocArena,
    /// The main thread's `[stack]`, or an anonymous mapping right above a guard page (how glibc maps a thread's
    /// stack: any other memory laid out so counts as one too).
    ThreadStack,
    /// Other anonymous memory: mmap'd blocks (malloc's above its mmap threshold), other allocators' chunks.
    Mmap,
    /// Copied pages of a private file mapping (a library's data written), shared memory.
    File,
}

impl RegionKind {
    /// How many kinds there are (codes run from 1 to this).
    pub const COUNT: usize = Self::ALL.len();

    const ALL: [RegionKind; 5] =
        [RegionKind::BrkHeap, RegionKind::MallocArena, RegionKind::ThreadStack, RegionKind::Mmap, RegionKind::File];

    /// Its name in report.json.
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::BrkHeap => "brk-heap",
            RegionKind::MallocArena => "malloc-arena",
            RegionKind::ThreadStack => "thread-stack",
            RegionKind::Mmap => "mmap",
            RegionKind::File => "file",
        }
    }

    /// A small number, never 0 (which stands for "unknown" where a kind is packed into an id).
    pub fn code(self) -> u32 {
        Self::ALL.iter().position(|&k| k == self).map_or(0, |i| i as u32 + 1)
    }

    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.get(code.checked_sub(1)? as usize).copied()
    }
}

/// The mappings of a process as last read.
pub struct RegionMap {
    /// Every mapping, in address order.
    mappings: Vec<Mapping>,
    read_at: Instant,
    took: Duration,
}

impl RegionMap {
    /// Reads `/proc/<pid>/maps`; `None` when the process is gone.
    pub fn read(pid: u32) -> Option<Self> {
        let start = Instant::now();
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        Some(RegionMap { mappings: maps::parse(&text), read_at: Instant::now(), took: start.elapsed() })
    }

    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// Whether reading the mappings again is due, for an address they do not hold.
    pub fn may_reread(&self) -> bool {
        self.read_at.elapsed() >= REREAD_MIN.max(self.took * REREAD_COST_FACTOR)
    }

    /// The kind of memory at `addr`; `None` when no mapping holds it, or one without access does (a page faulted
    /// there lies in memory made accessible since: an arena's heap grows into its reservation so).
    pub fn kind(&self, addr: u64) -> Option<RegionKind> {
        let i = self.mappings.partition_point(|m| m.start <= addr).checked_sub(1)?;
        let m = &self.mappings[i];
        if addr >= m.end || m.no_access {
            return None;
        }
        Some(match m.path.as_deref() {
            Some("[heap]") => RegionKind::BrkHeap,
            Some("[stack]") => RegionKind::ThreadStack,
            // Named anonymous memory (PR_SET_VMA_ANON_NAME): glibc names its own with `glibc.mem.decorate_maps`.
            Some(name) if name.starts_with("[anon:") => {
                if name.contains("glibc: malloc arena") {
                    RegionKind::MallocArena
                } else if name.contains("stack") {
                    RegionKind::ThreadStack
                } else {
                    self.anonymous(i, addr)
                }
            }
            Some(_) => RegionKind::File,
            None => self.anonymous(i, addr),
        })
    }

    /// Anonymous memory, told apart by its layout. An arena's heap is read-write from the 64 MiB boundary below
    /// `addr` (its start may have merged with memory mapped right below it) up to where its reservation's
    /// no-access rest begins, which ends at the next boundary (or the heap fills the whole reservation). A thread
    /// stack lies right above its no-access guard page.
    fn anonymous(&self, i: usize, addr: u64) -> RegionKind {
        let m = &self.mappings[i];
        let anonymous_reserve = |n: &Mapping| n.no_access && n.path.is_none();
        let boundary = addr & !(ARENA_RESERVATION - 1);
        let reservation_end = boundary + ARENA_RESERVATION;
        let rest = self.mappings.get(i + 1).filter(|n| anonymous_reserve(n) && n.start == m.end);
        let arena = m.start <= boundary && (m.end == reservation_end || rest.is_some_and(|n| n.end == reservation_end));
        let guard =
            i.checked_sub(1).map(|j| &self.mappings[j]).is_some_and(|g| anonymous_reserve(g) && g.end == m.start);
        if arena {
            RegionKind::MallocArena
        } else if guard {
            RegionKind::ThreadStack
        } else {
            RegionKind::Mmap
        }
    }
}

#[cfg(test)]
impl RegionMap {
    pub fn parse(text: &str) -> Self {
        RegionMap { mappings: maps::parse(text), read_at: Instant::now(), took: Duration::ZERO }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of a glibc program with threads (render_sessions's, with two worker threads and their arenas).
    const MAPS: &str = "\
55c0d4e00000-55c0d4e01000 r--p 00000000 fe:01 1234 /usr/bin/render
55c0d4e01000-55c0d4e02000 r-xp 00001000 fe:01 1234 /usr/bin/render
55c0d4e03000-55c0d4e04000 rw-p 00002000 fe:01 1234 /usr/bin/render
55c0d5a00000-55c0d5c00000 rw-p 00000000 00:00 0 [heap]
7f1e34000000-7f1e34a21000 rw-p 00000000 00:00 0
7f1e34a21000-7f1e38000000 ---p 00000000 00:00 0
7f1e38000000-7f1e3c000000 rw-p 00000000 00:00 0
7f1e3c000000-7f1e3c001000 ---p 00000000 00:00 0
7f1e3c001000-7f1e3c801000 rw-p 00000000 00:00 0
7f1e3c801000-7f1e3c802000 ---p 00000000 00:00 0
7f1e3c802000-7f1e3d002000 rw-p 00000000 00:00 0
7f1e3d100000-7f1e3d500000 rw-p 00000000 00:00 0
7f1e3ff00000-7f1e40200000 rw-p 00000000 00:00 0
7f1e40200000-7f1e44000000 ---p 00000000 00:00 0
7f1e44100000-7f1e44200000 rw-p 00000000 00:00 0 [anon: glibc: malloc arena]
7f1e44300000-7f1e44400000 rw-p 00000000 00:00 0 [anon: glibc: pthread stack: 42]
7f1e44500000-7f1e44521000 rw-p 00000000 00:00 0 [anon: glibc: malloc]
7f1e45000000-7f1e45100000 r--p 00000000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e45200000-7f1e45202000 rw-s 00000000 00:01 77 /memfd:shared (deleted)
7ffd1c500000-7ffd1c521000 rw-p 00000000 00:00 0 [stack]
";

    fn kind(addr: u64) -> Option<&'static str> {
        RegionMap::parse(MAPS).kind(addr).map(RegionKind::name)
    }

    #[test]
    fn every_kind_of_memory_is_told_by_its_mapping() {
        assert_eq!(kind(0x55c0d5b00000), Some("brk-heap"));
        assert_eq!(kind(0x7f1e34010000), Some("malloc-arena"), "a heap at its reservation's start, the rest ---p");
        assert_eq!(kind(0x7f1e39000000), Some("malloc-arena"), "a heap filling its reservation, above another's");
        assert_eq!(kind(0x7f1e40100000), Some("malloc-arena"), "a heap merged with a block mapped right below it");
        assert_eq!(kind(0x7f1e3ff80000), Some("mmap"), "the block merged with that heap");
        assert_eq!(kind(0x7f1e3c002000), Some("thread-stack"), "right above its guard page");
        assert_eq!(kind(0x7f1e3c900000), Some("thread-stack"), "a stack whose guard lies on another stack");
        assert_eq!(kind(0x7f1e3d200000), Some("mmap"), "a block of its own");
        assert_eq!(kind(0x7f1e44150000), Some("malloc-arena"), "named by glibc");
        assert_eq!(kind(0x7f1e44350000), Some("thread-stack"), "named by glibc");
        assert_eq!(kind(0x7f1e44510000), Some("mmap"), "malloc's mmap'd block, named by glibc");
        assert_eq!(kind(0x55c0d4e03100), Some("file"), "a written page of the program's data");
        assert_eq!(kind(0x7f1e45200100), Some("file"), "shared memory");
        assert_eq!(kind(0x7ffd1c510000), Some("thread-stack"), "the main thread's");
        assert_eq!(kind(0x55c0d5c00000), None, "past the heap's end as read: the heap grew since");
        assert_eq!(kind(0x7f1e34b00000), None, "in an arena's reservation as read: the heap grew since");
        assert_eq!(kind(0x1000), None);
    }

    #[test]
    fn kinds_round_trip_through_their_codes() {
        for k in RegionKind::ALL {
            assert_ne!(k.code(), 0);
            assert_eq!(RegionKind::from_code(k.code()), Some(k));
        }
        assert_eq!(RegionKind::from_code(0), None);
        assert_eq!(RegionKind::from_code(6), None);
    }
}
