//! Keeps the kernel's site map from filling up with processes that are gone. SITES is keyed by process, so a
//! cgroup that runs many short-lived processes (shell scripts, cron jobs, crash loops) would fill it within
//! seconds, and every allocation after that would be dropped. Each interval, the sites of exited processes that
//! hold nothing any more move to userspace (their totals are kept for the report) and leave the kernel map.
//! A site that still holds memory stays in the kernel: a later free must find it there to be credited.
//! Userspace keeps at most [`MAX_RETIRED`] of them, so neither the tracer's memory nor the time to build the final
//! report grows without end on a cgroup that never stops starting processes.
use std::{
    cmp::Reverse,
    collections::{HashMap, HashSet},
};

use anyhow::Result;
use leak_common::{SiteCounters, SiteKey};

use crate::probes::Probes;

/// Retired sites kept with their own stacks and process. Past this, the half that allocated least is dropped: they
/// hold nothing, their process is gone, and the report ranks sites by what they hold. report.json counts them.
const MAX_RETIRED: usize = 32_768;

#[derive(Default)]
pub struct Retired {
    sites: HashMap<SiteKey, SiteCounters>,
    dropped: u64,
}

impl Retired {
    /// Moves fully freed sites out of the kernel map: those of processes for which `alive` is false, and those
    /// of single sampled allocations (their sample token is never used again). They are kept under the key
    /// `canonical` gives them. Returns the kernel keys removed.
    pub fn retire(
        &mut self,
        probes: &mut Probes,
        raw: &[(SiteKey, SiteCounters)],
        canonical: impl Fn(&SiteKey) -> SiteKey,
        alive: impl Fn(u32) -> bool,
    ) -> Result<Vec<SiteKey>> {
        let done = retirable(raw, alive);
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<SiteKey> = done.iter().map(|(k, _)| *k).collect();
        probes.remove_sites(&keys)?;
        for (key, c) in &done {
            self.sites.entry(canonical(key)).or_default().accumulate(c);
        }
        if self.sites.len() > MAX_RETIRED {
            self.shrink(MAX_RETIRED / 2);
        }
        Ok(keys)
    }

    /// Keeps the `keep` retired sites that allocated most.
    fn shrink(&mut self, keep: usize) {
        let mut all: Vec<(SiteKey, SiteCounters)> = self.sites.drain().collect();
        all.sort_unstable_by_key(|(key, c)| (Reverse(c.alloc_bytes), *key));
        self.dropped += all.len().saturating_sub(keep) as u64;
        all.truncate(keep);
        self.sites = all.into_iter().collect();
    }

    /// Retired sites dropped to stay within [`MAX_RETIRED`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Drops the retired sites of `tgids`: no report will sum them again.
    pub fn forget(&mut self, tgids: &HashSet<u32>) {
        self.sites.retain(|key, _| !tgids.contains(&key.tgid));
    }

    /// The processes the retired sites belong to.
    pub fn tgids(&self) -> impl Iterator<Item = u32> + '_ {
        self.sites.keys().map(|k| k.tgid)
    }

    /// The kernel's sites with the retired ones added back (summed when a key is in both, e.g. a reused pid).
    pub fn merged(&self, raw: Vec<(SiteKey, SiteCounters)>) -> Vec<(SiteKey, SiteCounters)> {
        let mut all: HashMap<SiteKey, SiteCounters> = self.sites.clone();
        for (key, c) in raw {
            all.entry(key).or_default().accumulate(&c);
        }
        all.into_iter().collect()
    }
}

fn retirable(raw: &[(SiteKey, SiteCounters)], alive: impl Fn(u32) -> bool) -> Vec<(SiteKey, SiteCounters)> {
    raw.iter().filter(|(key, c)| c.all_freed() && (key.usample != 0 || !alive(key.tgid))).copied().collect()
}

/// Whether a process (thread group) still exists.
pub fn process_alive(tgid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tgid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32) -> SiteKey {
        SiteKey { tgid, kstack: 1, ustack: 2, ..Default::default() }
    }

    fn counters(alloc: u64, free: u64) -> SiteCounters {
        SiteCounters {
            alloc_bytes: alloc * 10,
            alloc_count: alloc,
            free_bytes: free * 10,
            free_count: free,
            ..Default::default()
        }
    }

    #[test]
    fn merged_sums_retired_and_live_totals() {
        let mut retired = Retired::default();
        retired.sites.insert(key(1), counters(3, 3));
        retired.sites.insert(key(2), counters(1, 1));
        let mut all = retired.merged(vec![(key(1), counters(2, 1)), (key(3), counters(5, 0))]);
        all.sort_by_key(|(k, _)| k.tgid);
        assert_eq!(all, vec![(key(1), counters(5, 4)), (key(2), counters(1, 1)), (key(3), counters(5, 0))]);
    }

    #[test]
    fn shrinking_keeps_the_sites_that_allocated_most() {
        let mut retired = Retired::default();
        for tgid in 1..=10 {
            retired.sites.insert(key(tgid), counters(u64::from(tgid), u64::from(tgid)));
        }
        retired.shrink(3);
        let mut kept: Vec<u32> = retired.sites.keys().map(|k| k.tgid).collect();
        kept.sort_unstable();
        assert_eq!((kept, retired.dropped()), (vec![8, 9, 10], 7));
    }

    #[test]
    fn only_exited_and_fully_freed_sites_are_candidates() {
        let raw = [(key(1), counters(2, 2)), (key(2), counters(2, 1)), (key(3), counters(4, 4))];
        let done: Vec<u32> = retirable(&raw, |tgid| tgid == 3).iter().map(|(k, _)| k.tgid).collect();
        assert_eq!(done, vec![1]);
        // A sampled allocation's own site goes once freed, its process alive or not.
        let sampled = |usample| SiteKey { usample, ..key(3) };
        let raw = [(sampled(7), counters(1, 1)), (sampled(8), counters(1, 0))];
        let done: Vec<u64> = retirable(&raw, |_| true).iter().map(|(k, _)| k.usample).collect();
        assert_eq!(done, vec![7]);
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn a_removed_containers_processes_leave_the_retired_sites() {
        let mut retired = Retired::default();
        for tgid in 1..=4 {
            retired.sites.insert(key(tgid), counters(1, 1));
        }
        retired.forget(&HashSet::from([2, 4, 9]));
        let mut left: Vec<u32> = retired.tgids().collect();
        left.sort_unstable();
        assert_eq!((left, retired.dropped()), (vec![1, 3], 0));
    }
}
