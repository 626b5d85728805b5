//! The raw site counters as they stood about a third into the window: the "before" of the growth flame graph.
//! The window's length is known only when it ends (Ctrl-C), so counters are kept at ticks 1, 2, 4, 8, ... (the
//! last three of them), and the one taken nearest a third of the window's seconds is used: bounded memory, and
//! within the first half of the window.
use leak_common::{SiteCounters, SiteKey};

pub type RawSites = Vec<(SiteKey, SiteCounters)>;

/// How many power-of-two snapshots are kept: with three, one lies between a quarter and a half of any window.
const KEPT: usize = 3;

#[derive(Default)]
pub struct EarlySites {
    kept: Vec<(u64, f64, RawSites)>,
}

impl EarlySites {
    /// Keeps `raw` (read at `tick`, `t` seconds into the window) when `tick` is a power of two.
    pub fn offer(&mut self, tick: u64, t: f64, raw: &RawSites) {
        if !tick.is_power_of_two() {
            return;
        }
        if self.kept.len() == KEPT {
            self.kept.remove(0);
        }
        self.kept.push((tick, t, raw.clone()));
    }

    /// The snapshot taken nearest a third of a window of `seconds`: its time and counters.
    pub fn pick(&self, seconds: f64) -> Option<(f64, &RawSites)> {
        let third = seconds / 3.0;
        self.kept.iter().min_by(|a, b| (a.1 - third).abs().total_cmp(&(b.1 - third).abs())).map(|(_, t, raw)| (*t, raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(n: u64) -> RawSites {
        let counters = SiteCounters { alloc_bytes: n, ..Default::default() };
        vec![(SiteKey::default(), counters)]
    }

    #[test]
    fn keeps_powers_of_two_and_picks_nearest_third() {
        let mut early = EarlySites::default();
        for tick in 0..=30 {
            early.offer(tick, tick as f64 / 2.0, &raw(tick));
        }
        assert_eq!(early.kept.iter().map(|k| k.0).collect::<Vec<_>>(), [4, 8, 16]);
        // 15 s: a third is 5 s, nearest kept is tick 8 at 4 s.
        let (t, counters) = early.pick(15.0).unwrap();
        assert_eq!((t, counters[0].1.alloc_bytes), (4.0, 8));
        // A short window of 3 ticks only saw ticks 1 and 2.
        let mut short = EarlySites::default();
        for tick in 0..3 {
            short.offer(tick, tick as f64, &raw(tick));
        }
        assert_eq!(short.pick(3.0).unwrap().0, 1.0);
        assert!(EarlySites::default().pick(10.0).is_none());
    }
}
