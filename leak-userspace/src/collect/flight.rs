//! The flight recorder: per-site cumulative counters kept in a bounded ring, one frame a second over the last
//! minute, so that at an OOM kill the sites that grew in the 10, 30 and 60 seconds before it can be told apart
//! from the ones that merely hold old memory.
use std::collections::{HashMap, VecDeque};

use leak_common::{SiteCounters, SiteKey};

/// The spans reported before each kill.
pub const SPANS: [f64; 3] = [10.0, 30.0, 60.0];
/// One frame per this many seconds at most: finer steps add memory, not precision the spans need.
const STEP: f64 = 1.0;

#[derive(Default)]
pub struct FlightRecorder {
    frames: VecDeque<(f64, HashMap<SiteKey, SiteCounters>)>,
}

impl FlightRecorder {
    /// Records the counters as they stand at `t` (seconds since the window's start). Frames older than the longest
    /// span are dropped, keeping one at or before it so that span stays covered; so the ring holds at most
    /// `SPANS.max / STEP + 2` frames.
    pub fn record(&mut self, t: f64, raw: &[(SiteKey, SiteCounters)]) {
        if self.frames.back().is_some_and(|(last, _)| t - last < STEP) {
            return;
        }
        self.frames.push_back((t, raw.iter().copied().collect()));
        let horizon = t - SPANS[SPANS.len() - 1];
        while self.frames.len() > 1 && self.frames[1].0 <= horizon {
            self.frames.pop_front();
        }
    }

    /// The growth of every site between the newest frame at or before `now - span` (the oldest frame when the
    /// trace is younger than that) and `current`, with the seconds actually covered. Frees by an OOM victim are
    /// left out by the caller's choice of counters (`Outstanding::BeforeOomKill` reads `free_*` only).
    pub fn growth(
        &self,
        now: f64,
        span: f64,
        current: &[(SiteKey, SiteCounters)],
    ) -> Option<(f64, Vec<(SiteKey, SiteCounters)>)> {
        let (t, base) = self.frames.iter().rev().find(|(t, _)| *t <= now - span).or_else(|| self.frames.front())?;
        let delta = current
            .iter()
            .map(|(key, cur)| {
                let old = base.get(key).copied().unwrap_or_default();
                (*key, difference(cur, &old))
            })
            .filter(|(_, d)| d.alloc_count > 0 || d.free_count > 0)
            .collect();
        Some(((now - t).max(0.0), delta))
    }
}

fn difference(cur: &SiteCounters, old: &SiteCounters) -> SiteCounters {
    SiteCounters {
        alloc_bytes: cur.alloc_bytes.saturating_sub(old.alloc_bytes),
        alloc_count: cur.alloc_count.saturating_sub(old.alloc_count),
        free_bytes: cur.free_bytes.saturating_sub(old.free_bytes),
        free_count: cur.free_count.saturating_sub(old.free_count),
        oom_freed_bytes: cur.oom_freed_bytes.saturating_sub(old.oom_freed_bytes),
        oom_freed_count: cur.oom_freed_count.saturating_sub(old.oom_freed_count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32) -> SiteKey {
        SiteKey { tgid, kstack: 1, ustack: 2, cache: 0, kind: 0 }
    }

    fn counters(alloc: u64, free: u64) -> SiteCounters {
        SiteCounters {
            alloc_bytes: alloc,
            alloc_count: alloc / 4096,
            free_bytes: free,
            free_count: free / 4096,
            ..Default::default()
        }
    }

    #[test]
    fn growth_over_each_span() {
        let mut fr = FlightRecorder::default();
        // Site 1 grows 4 KiB a second throughout; site 2 held 1 MiB from the start and stopped growing.
        for s in 0..=100u64 {
            fr.record(s as f64, &[(key(1), counters(4096 * s, 0)), (key(2), counters(1 << 20, 0))]);
        }
        let now = [(key(1), counters(4096 * 100, 0)), (key(2), counters(1 << 20, 0))];
        let (covered, d) = fr.growth(100.0, 10.0, &now).unwrap();
        assert_eq!(covered, 10.0);
        assert_eq!(d, vec![(key(1), counters(40960, 0))], "site 2 did not change: left out");
        let (covered, d) = fr.growth(100.0, 60.0, &now).unwrap();
        assert_eq!(covered, 60.0);
        assert_eq!(d[0].1.alloc_bytes, 4096 * 60);
        assert!(fr.frames.len() <= 62, "bounded: {}", fr.frames.len());
    }

    #[test]
    fn young_trace_covers_what_it_has_and_new_sites_count_whole() {
        let mut fr = FlightRecorder::default();
        fr.record(0.0, &[]);
        fr.record(0.5, &[(key(1), counters(4096, 0))]); // too soon after the last frame: skipped
        fr.record(3.0, &[(key(1), counters(8192, 0))]);
        let now = [(key(1), counters(16384, 4096)), (key(3), counters(4096, 0))];
        let (covered, d) = fr.growth(5.0, 30.0, &now).unwrap();
        assert_eq!(covered, 5.0, "only 5 s recorded");
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].1, counters(16384, 4096));
        let (covered, d) = fr.growth(5.0, 2.0, &now).unwrap();
        assert_eq!(covered, 2.0);
        assert_eq!(d[0].1, counters(8192, 4096));
        assert!(FlightRecorder::default().growth(1.0, 10.0, &now).is_none());
    }
}
