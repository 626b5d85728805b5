//! The unwound stacks, each stored once under the index its sites' keys carry, for as long as a process that
//! sampled it is remembered. Addresses are a process's own (ASLR gives each run of a program others), so on a node
//! where containers and processes come and go for days a table that only grew would fill: a stack goes when the
//! last process that sampled it is forgotten (it exited and no site refers to it any more). Indexes run on and
//! wrap far beyond any window instead of being reused at once, so a key left over from a forgotten process finds
//! no stack, never another's.
use std::collections::{HashMap, HashSet};

use super::UserFrame;

/// Distinct stacks held at once; past this, new stacks are refused (the caller counts them, their sites go without
/// user frames).
const MAX_STACKS: usize = 1 << 16;

pub struct StackTable {
    ids: HashMap<Vec<UserFrame>, u32>,
    stacks: HashMap<u32, Stored>,
    /// The stacks each process sampled.
    by_process: HashMap<u32, HashSet<u32>>,
    /// Indexes are below this; the next one given is `next` or the first free one after it.
    wrap: u32,
    next: u32,
}

struct Stored {
    frames: Vec<UserFrame>,
    /// The processes in `by_process` that sampled it.
    holders: u32,
}

impl StackTable {
    /// A table whose indexes are below `wrap` (more than [`MAX_STACKS`]).
    pub fn new(wrap: u32) -> Self {
        assert!(wrap as usize > MAX_STACKS, "indexes must outnumber the stacks held");
        StackTable { ids: HashMap::new(), stacks: HashMap::new(), by_process: HashMap::new(), wrap, next: 0 }
    }

    /// The index of `frames`, sampled by process `tgid`; `None` when the table is full.
    pub fn intern(&mut self, tgid: u32, frames: Vec<UserFrame>) -> Option<u32> {
        let index = match self.ids.get(&frames) {
            Some(&index) => index,
            None if self.stacks.len() >= MAX_STACKS => return None,
            None => {
                let index = self.free_index();
                self.ids.insert(frames.clone(), index);
                self.stacks.insert(index, Stored { frames, holders: 0 });
                index
            }
        };
        if self.by_process.entry(tgid).or_default().insert(index) {
            self.stacks.get_mut(&index).expect("an index in ids is stored").holders += 1;
        }
        Some(index)
    }

    fn free_index(&mut self) -> u32 {
        // Ends: fewer stacks are stored than there are indexes.
        loop {
            let index = self.next;
            self.next = (self.next + 1) % self.wrap;
            if !self.stacks.contains_key(&index) {
                return index;
            }
        }
    }

    pub fn frames(&self, index: u32) -> Option<&[UserFrame]> {
        self.stacks.get(&index).map(|s| s.frames.as_slice())
    }

    /// Drops process `tgid`'s hold on the stacks it sampled; those it held last go.
    pub fn forget_process(&mut self, tgid: u32) {
        for index in self.by_process.remove(&tgid).unwrap_or_default() {
            let Some(stored) = self.stacks.get_mut(&index) else { continue };
            stored.holders -= 1;
            if stored.holders == 0 {
                let gone = self.stacks.remove(&index).expect("just found");
                self.ids.remove(&gone.frames);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.stacks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::Method;

    fn stack(addresses: &[u64]) -> Vec<UserFrame> {
        addresses.iter().map(|&address| UserFrame { address, method: Method::Dwarf }).collect()
    }

    #[test]
    fn a_stack_stays_while_a_process_that_sampled_it_is_remembered() {
        let mut t = StackTable::new(1 << 20);
        let shared = t.intern(1, stack(&[1, 2])).unwrap();
        assert_eq!(t.intern(2, stack(&[1, 2])), Some(shared), "one stack, one index, whoever sampled it");
        assert_eq!(t.intern(1, stack(&[1, 2])), Some(shared));
        let own = t.intern(2, stack(&[3])).unwrap();
        assert_ne!(own, shared);
        t.forget_process(1);
        assert_eq!(t.frames(shared), Some(stack(&[1, 2]).as_slice()), "process 2 holds it still");
        t.forget_process(2);
        assert_eq!((t.frames(shared), t.frames(own), t.len()), (None, None, 0));
        let again = t.intern(3, stack(&[1, 2])).unwrap();
        assert!(again != shared && again != own, "a forgotten stack's index is not given again at once");
        t.forget_process(99);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn indexes_wrap_past_the_stacks_still_held_and_a_full_table_refuses() {
        let wrap = MAX_STACKS as u32 + 2;
        let mut t = StackTable::new(wrap);
        let kept = t.intern(7, stack(&[0])).unwrap();
        for n in 1..wrap as u64 + 5 {
            let index = t.intern(8, stack(&[n])).unwrap();
            assert!(index < wrap && index != kept, "index {index} at stack {n}");
            if n % 2 == 0 {
                t.forget_process(8);
            }
        }
        assert_eq!(t.frames(kept), Some(stack(&[0]).as_slice()));
        t.forget_process(8);
        for n in 0..MAX_STACKS as u64 - 1 {
            t.intern(9, stack(&[1 << 40 | n])).unwrap();
        }
        assert_eq!(t.intern(9, stack(&[1 << 41])), None, "full");
        assert_eq!(t.intern(10, stack(&[0])), Some(kept), "a stack held already is still found");
    }
}
