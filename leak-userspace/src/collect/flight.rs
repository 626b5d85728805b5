//! The flight recorder: per-site cumulative counters kept in a bounded ring, one frame a second over the last
//! minute, so that at an OOM kill the sites that grew in the 10, 30 and 60 seconds before it can be told apart
//! from the ones that merely hold old memory.
use std::collections::{HashMap, VecDeque};

use leak_common::{SiteCounters, SiteKey};

/// The spans reported before each kill.
pub const SPANS: [f64; 3] = [10.0, 30.0, 60.0];
/// One frame per this many seconds at most: finer steps add memory, not precision the spans need.
const STEP: f64 = 1.0;

type Frame = (f64, HashMap<SiteKey, SiteCounters>);

#[derive(Default)]
pub struct FlightRecorder {
    frames: VecDeque<Frame>,
    /// The last interval's counters, whatever the step: the OOM frees of earlier kills are counted up to it.
    latest: Option<Frame>,
}

impl FlightRecorder {
    /// Records the counters as they stand at `t` (seconds since the window's start). Frames older than the longest
    /// span are dropped, keeping one at or before it so that span stays covered; so the ring holds at most
    /// `SPANS.max / STEP + 2` frames.
    pub fn record(&mut self, t: f64, raw: &[(SiteKey, SiteCounters)]) {
        let frame: Frame = (t, raw.iter().copied().collect());
        if self.frames.back().is_some_and(|(last, _)| t - last < STEP) {
            self.latest = Some(frame);
            return;
        }
        self.frames.push_back(frame.clone());
        self.latest = Some(frame);
        let horizon = t - SPANS[SPANS.len() - 1];
        while self.frames.len() > 1 && self.frames[1].0 <= horizon {
            self.frames.pop_front();
        }
    }

    /// The growth of every site between the newest frame at or before `now - span` (the oldest frame when the
    /// trace is younger than that) and `current`, with the seconds actually covered. `now` is an OOM kill: the
    /// victim's own frees (made after it) are left out, earlier victims' frees count up to the last interval
    /// before the kill, as `free_*` (what `Outstanding::BeforeOomKill` reads); `oom_freed_*` come back zero.
    pub fn growth(
        &self,
        now: f64,
        span: f64,
        current: &[(SiteKey, SiteCounters)],
    ) -> Option<(f64, Vec<(SiteKey, SiteCounters)>)> {
        let (t, base) = self.frames.iter().rev().find(|(t, _)| *t <= now - span).or_else(|| self.frames.front())?;
        let before_kill = self.latest.as_ref().filter(|(lt, _)| *lt <= now).map(|(_, m)| m);
        let delta = current
            .iter()
            .map(|(key, cur)| {
                let old = base.get(key).copied().unwrap_or_default();
                let mut d = cur.since(&old);
                let earlier = before_kill.and_then(|m| m.get(key)).map(|l| l.since(&old)).unwrap_or_default();
                d.free_bytes = d.free_bytes.saturating_add(earlier.oom_freed_bytes);
                d.free_count = d.free_count.saturating_add(earlier.oom_freed_count);
                d.oom_freed_bytes = 0;
                d.oom_freed_count = 0;
                (*key, d)
            })
            .filter(|(_, d)| d.alloc_count > 0 || d.free_count > 0)
            .collect();
        Some(((now - t).max(0.0), delta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32) -> SiteKey {
        SiteKey { tgid, kstack: 1, ustack: 2, ..Default::default() }
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
    fn earlier_victims_frees_count_and_this_victims_do_not() {
        let mut fr = FlightRecorder::default();
        let c = |alloc: u64, oom: u64| SiteCounters {
            alloc_bytes: alloc,
            alloc_count: 1,
            oom_freed_bytes: oom,
            oom_freed_count: oom / 4096,
            ..Default::default()
        };
        fr.record(0.0, &[(key(1), c(0, 0))]);
        // A first life took 40 KiB and was killed at 1.5 s; the frame at 2.2 s (not kept in the ring: too soon
        // after 2.0) still holds its OOM frees.
        fr.record(1.0, &[(key(1), c(40960, 0))]);
        fr.record(2.0, &[(key(1), c(40960, 40960))]);
        fr.record(2.2, &[(key(1), c(45056, 40960))]);
        // Second kill at 3.0: the counters read after it already hold the second victim's frees.
        let now = [(key(1), c(81920, 81920))];
        let (_, d) = fr.growth(3.0, 10.0, &now).unwrap();
        assert_eq!(d[0].1.alloc_bytes - d[0].1.free_bytes, 40960, "the second life's 40 KiB");
        assert_eq!(d[0].1.oom_freed_bytes, 0);
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
