//! Robust trends of the memory series: Theil-Sen slopes (the median of the slopes between every pair of samples)
//! with Kendall's tau for steadiness, computed only between samples of the same life, so that neither noise, a
//! single spike nor the drop of a death bends them. A life ends at every OOM kill and at every other death of the
//! main process (a crash, an external kill, a runtime stopping itself at its own limit); samples of a cgroup with no
//! process left are no life's. The first 10 % of the window (at most a minute) is warm-up: start-up allocations are
//! not a trend.
use std::collections::HashMap;

use crate::report::{Exit, Growth, Sample, Trend};

/// Warm-up: this share of the window, at most `MAX_WARMUP` seconds.
const WARMUP_SHARE: f64 = 0.1;
const MAX_WARMUP: f64 = 60.0;
/// Pairs grow with the square of the points: longer series are thinned evenly to this many.
const MAX_POINTS: usize = 400;
/// A life with fewer samples shows no trend: a workload killed within a few intervals of its start is building
/// its working set, and two points make a line out of anything.
const MIN_LIFE_POINTS: usize = 4;
/// Usage above this share of the limit is "near the limit".
pub const NEAR_LIMIT: f64 = 0.8;

/// A robust line through a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Units per second.
    pub slope: f64,
    /// Kendall's tau, -1..1.
    pub tau: f64,
    /// Seconds covered by the lives the pairs came from.
    pub span: f64,
}

/// Theil-Sen slope and Kendall's tau over `(t, value, life)` points; pairs only within a life of at least
/// `MIN_LIFE_POINTS` points. `None` when no such life exists.
pub fn fit(points: &[(f64, f64, u32)]) -> Option<Fit> {
    let mut per_life: HashMap<u32, usize> = HashMap::new();
    for p in points {
        *per_life.entry(p.2).or_default() += 1;
    }
    let long: Vec<(f64, f64, u32)> = points.iter().filter(|p| per_life[&p.2] >= MIN_LIFE_POINTS).copied().collect();
    let step = long.len().div_ceil(MAX_POINTS).max(1);
    let pts: Vec<(f64, f64, u32)> = long.iter().step_by(step).copied().collect();
    let mut slopes = Vec::new();
    let mut concordance = 0i64;
    for (i, &(t0, v0, life0)) in pts.iter().enumerate() {
        for &(t1, v1, life1) in &pts[i + 1..] {
            if life1 != life0 || t1 <= t0 {
                continue;
            }
            slopes.push((v1 - v0) / (t1 - t0));
            concordance += match v1.partial_cmp(&v0) {
                Some(std::cmp::Ordering::Greater) => 1,
                Some(std::cmp::Ordering::Less) => -1,
                _ => 0,
            };
        }
    }
    if slopes.is_empty() {
        return None;
    }
    let pairs = slopes.len();
    slopes.sort_by(f64::total_cmp);
    let slope = if pairs % 2 == 1 { slopes[pairs / 2] } else { (slopes[pairs / 2 - 1] + slopes[pairs / 2]) / 2.0 };
    let mut bounds: HashMap<u32, (f64, f64)> = HashMap::new();
    for &(t, _, life) in &pts {
        let b = bounds.entry(life).or_insert((t, t));
        *b = (b.0.min(t), b.1.max(t));
    }
    let span = bounds.values().map(|(lo, hi)| hi - lo).sum();
    Some(Fit { slope, tau: concordance as f64 / pairs as f64, span })
}

/// The life a moment belongs to: 0 before the first end of a life, 1 after it, ...
pub fn life_at(t: f64, life_ends: &[f64]) -> u32 {
    life_ends.iter().filter(|&&k| k < t).count() as u32
}

/// Where lives end, in order: the OOM kills, and the deaths in `exits` of a process that was the main process (the
/// largest by RssAnon) of some sample. Deaths of helpers and short-lived children end no life.
pub fn life_ends(kill_times: &[f64], exits: &[Exit], samples: &[Sample]) -> Vec<f64> {
    let main = |pid: u32| samples.iter().any(|s| s.main_process.as_ref().is_some_and(|m| m.pid == pid));
    let mut ends: Vec<f64> = kill_times.to_vec();
    ends.extend(exits.iter().filter(|e| e.cause != "oom-kill" && main(e.pid)).map(|e| e.t));
    ends.sort_by(f64::total_cmp);
    ends
}

/// The categories the verdict looks at, by name, with the unit of their trend.
pub const CATEGORIES: &[(&str, &str)] = &[
    ("usage", "bytes"),
    ("anon", "bytes"),
    ("file", "bytes"),
    ("kernel", "bytes"),
    ("kernel_stack", "bytes"),
    ("sock", "bytes"),
    ("shmem", "bytes"),
    ("rss_anon", "bytes"),
    ("tasks", "tasks"),
    ("kernel_sites", "bytes"),
];

/// A sample's value for a category name of [`CATEGORIES`]. `kernel` falls back to `slab` where the cgroup has no
/// kernel figure.
pub fn value(s: &Sample, name: &str) -> Option<u64> {
    match name {
        "usage" => Some(s.usage),
        "anon" => s.anon,
        "file" => s.file,
        "kernel" => s.kernel.or(s.slab),
        "kernel_stack" => s.kernel_stack,
        "sock" => s.sock,
        "shmem" => s.shmem,
        "rss_anon" => s.rss_anon,
        "tasks" => s.pids,
        // What the traced kernel-side sites hold, charged to the memcg or not (v1 charges no socket buffers).
        "kernel_sites" => s.sites.map(|t| (t.slab + t.page + t.percpu + t.other).max(0) as u64),
        _ => None,
    }
}

/// The warm-up of a window of samples.
pub fn warmup(samples: &[Sample]) -> f64 {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return 0.0 };
    ((last.t - first.t) * WARMUP_SHARE).min(MAX_WARMUP) + first.t
}

/// Trends of every category after the warm-up, with the limit figures. `life_ends`: see [`life_ends`].
pub fn analyse(samples: &[Sample], life_ends: &[f64], limit: Option<u64>, restarts: u32) -> Growth {
    let from = warmup(samples);
    // An empty cgroup after a death holds what no process can grow: its flat tail would outvote the life before.
    let used: Vec<&Sample> = samples.iter().filter(|s| s.t >= from && s.processes != Some(0)).collect();
    let trends = CATEGORIES
        .iter()
        .filter_map(|&(name, unit)| {
            let values: Vec<(f64, u64)> = used.iter().filter_map(|s| Some((s.t, value(s, name)?))).collect();
            let points: Vec<(f64, f64, u32)> =
                values.iter().map(|&(t, v)| (t, v as f64, life_at(t, life_ends))).collect();
            let f = fit(&points)?;
            Some(Trend {
                name: name.into(),
                unit: unit.into(),
                rate_per_hour: f.slope * 3600.0,
                steadiness: f.tau,
                change: f.slope * f.span,
                first: values.first().map(|v| v.1),
                last: values.last().map(|v| v.1),
            })
        })
        .collect::<Vec<_>>();
    let limit = samples.iter().rev().find_map(|s| s.limit).or(limit);
    // The last sample of a life, not the empty cgroup after the last death.
    let last_usage = used.last().copied().or(samples.last()).map(|s| s.usage);
    let near = limit
        .filter(|_| !used.is_empty())
        .map(|l| used.iter().filter(|s| s.usage as f64 > NEAR_LIMIT * l as f64).count() as f64 / used.len() as f64);
    let usage = trends.iter().find(|t| t.name == "usage");
    let time_to_limit = match (limit, last_usage, usage) {
        (Some(l), Some(u), _) if u >= l => Some(0.0),
        (Some(l), Some(u), Some(tr)) if tr.rate_per_hour > 0.0 && tr.steadiness > 0.3 => {
            Some((l - u) as f64 / (tr.rate_per_hour / 3600.0))
        }
        _ => None,
    };
    Growth {
        warmup_seconds: from,
        samples: used.len() as u64,
        lives: life_ends.len() as u32 + 1,
        restarts,
        trends,
        limit_share: limit.zip(last_usage).map(|(l, u)| u as f64 / l as f64),
        near_limit_share: near,
        time_to_limit_seconds: time_to_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize, slope: f64, noise: f64) -> Vec<(f64, f64, u32)> {
        // Deterministic "noise": a fixed pseudo-random sequence.
        let mut x = 12345u64;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = ((x >> 33) as f64 / (1u64 << 31) as f64) - 0.5;
                (i as f64, 100.0 + slope * i as f64 + noise * r, 0)
            })
            .collect()
    }

    #[test]
    fn exact_line() {
        let f = fit(&line(10, 3.0, 0.0)).unwrap();
        assert_eq!(f.slope, 3.0);
        assert_eq!(f.tau, 1.0);
        assert_eq!(f.span, 9.0);
    }

    #[test]
    fn outliers_do_not_bend_the_slope() {
        let mut pts = line(30, 2.0, 0.0);
        pts[5].1 += 10_000.0;
        pts[20].1 -= 10_000.0;
        let f = fit(&pts).unwrap();
        assert!((f.slope - 2.0).abs() < 1e-9, "{f:?}");
        assert!(f.tau > 0.8);
    }

    #[test]
    fn noisy_plateau_has_no_steadiness() {
        let f = fit(&line(60, 0.0, 50.0)).unwrap();
        assert!(f.tau.abs() < 0.2, "{f:?}");
        assert!(f.slope.abs() < 1.0, "{f:?}");
    }

    #[test]
    fn sawtooth_is_fitted_within_lives() {
        // Three lives, each climbing 5/s from 0; pairs across a kill would pull the slope to ~0.
        let pts: Vec<_> = (0..30).map(|i| (i as f64, 5.0 * (i % 10) as f64, i / 10)).collect();
        let f = fit(&pts).unwrap();
        assert_eq!(f.slope, 5.0);
        assert_eq!(f.tau, 1.0);
        assert_eq!(f.span, 27.0);
    }

    #[test]
    fn too_few_points() {
        assert!(fit(&[]).is_none());
        assert!(fit(&[(0.0, 1.0, 0)]).is_none());
        assert!(fit(&[(0.0, 1.0, 0), (1.0, 2.0, 0), (2.0, 3.0, 0)]).is_none(), "three points are no trend");
        let short_lives: Vec<_> = (0..12).map(|i| (i as f64, (i % 3) as f64, i / 3)).collect();
        assert!(fit(&short_lives).is_none(), "lives of three points");
    }

    #[test]
    fn long_series_are_thinned() {
        // A day of one-second samples fits at once.
        let started = std::time::Instant::now();
        let f = fit(&line(86_400, 1.0, 0.0)).unwrap();
        assert_eq!(f.slope, 1.0);
        assert!(started.elapsed().as_secs_f64() < 1.0, "{:?}", started.elapsed());
    }

    #[test]
    fn lives_and_warmup() {
        assert_eq!(life_at(1.0, &[2.0, 5.0]), 0);
        assert_eq!(life_at(3.0, &[2.0, 5.0]), 1);
        assert_eq!(life_at(9.0, &[2.0, 5.0]), 2);
        let s = |t| Sample { t, ..Default::default() };
        assert_eq!(warmup(&[s(0.0), s(10.0)]), 1.0);
        assert_eq!(warmup(&[s(0.0), s(3600.0)]), 60.0);
        assert_eq!(warmup(&[]), 0.0);
    }

    #[test]
    fn deaths_of_the_main_process_end_lives_and_empty_samples_count_for_none() {
        let main = |pid| Some(crate::report::ProcessRss { pid, ..Default::default() });
        // Grows 8 MiB a second for 6 s, stops itself, and the empty cgroup stays at 0 for 6 s more.
        let samples: Vec<Sample> = (0..12)
            .map(|i| Sample {
                t: i as f64,
                anon: Some(if i < 6 { (8 * i) << 20 } else { 0 }),
                processes: Some(u64::from(i < 6)),
                main_process: if i < 6 { main(7) } else { None },
                ..Default::default()
            })
            .collect();
        let exit = |pid, cause: &str| Exit {
            t: 5.5,
            pid,
            comm: "x".into(),
            cause: cause.into(),
            signal: None,
            sender_pid: None,
            sender_comm: None,
            exit_code: Some(1),
            sender_outside: None,
            lived_seconds: Some(5.5),
            core_dumped: false,
        };
        assert_eq!(life_ends(&[], &[exit(7, "exit")], &samples), [5.5]);
        assert!(life_ends(&[], &[exit(8, "exit")], &samples).is_empty(), "not the main process");
        assert_eq!(life_ends(&[3.0], &[exit(7, "oom-kill")], &samples), [3.0], "the kill ends it already");
        let g = analyse(&samples, &[5.5], None, 0);
        let anon = g.trends.iter().find(|t| t.name == "anon").unwrap();
        assert_eq!((anon.rate_per_hour, anon.steadiness, anon.last), (8.0 * 3600.0 * MIB, 1.0, Some(40 << 20)));
        assert_eq!((g.samples, g.lives), (4, 2), "t >= 1.1 and alive: 2, 3, 4, 5");
    }

    const MIB: f64 = 1024.0 * 1024.0;

    #[test]
    fn limit_figures() {
        let s = |t: f64, usage: u64| Sample { t, usage, limit: Some(1000), ..Default::default() };
        let samples: Vec<Sample> = (0..20).map(|i| s(i as f64, 500 + 10 * i)).collect();
        let g = analyse(&samples, &[], None, 0);
        assert_eq!(g.lives, 1);
        assert_eq!(g.samples, 18, "t < 1.9 is warm-up");
        let usage = g.trends.iter().find(|t| t.name == "usage").unwrap();
        assert_eq!(usage.rate_per_hour, 36_000.0);
        assert_eq!(g.limit_share, Some(0.69));
        // 310 bytes left at 10 bytes/s
        assert!((g.time_to_limit_seconds.unwrap() - 31.0).abs() < 1e-9);
        assert!(g.near_limit_share.unwrap() < 0.01);
        assert!(g.trends.iter().all(|t| t.name != "anon"), "no anon in these samples");
    }
}
