//! How much of the cgroup's own growth the traced sites explain, over the window and interval by interval.
//!
//! Growth comes from the cgroup's memory files (first sample to last), attributed bytes from the sites' net
//! outstanding bytes (negative sites included: frees of memory older than the trace shrink both sides alike).
//! Coverage is not clamped: above 1.0 means the sites hold more than the cgroup grew, e.g. because memory
//! allocated before the trace was freed during it, or because a site's pages were charged elsewhere. What the
//! sites do not explain is kept as `unexplained_bytes`, never hidden.
use crate::report::{Attribution, Coverage, IntervalCoverage, Sample, Site, SiteTotals};

/// `attributed / growth` when the cgroup grew; no ratio for no growth or an unknown one.
pub fn coverage(growth: Option<i64>, attributed: i64) -> Coverage {
    let ratio = growth.filter(|&g| g > 0).map(|g| attributed as f64 / g as f64);
    let growth_bytes = growth.unwrap_or(0);
    Coverage {
        growth_bytes,
        attributed_bytes: attributed,
        coverage: ratio,
        unexplained_bytes: growth_bytes.saturating_sub(attributed),
    }
}

/// The site kinds that explain the cgroup's kernel-side figure.
///
/// Slab: `slab` growth against the `slab` sites where the cgroup reports slab (cgroup v2). cgroup v1 has no slab
/// key, only `kernel` (memory.kmem.usage_in_bytes: slab plus kernel stacks, page tables, pipe buffers, percpu...);
/// there the growth is `kernel`'s and the attributed side adds the `page` sites (kernel pages charged to the memcg,
/// which that figure holds; slab backing pages are not among them) and the `percpu` sites.
/// `other` sites (page cache, uncharged kernel pages) never count: the cgroup counts them elsewhere or not at all.
const V2_SLAB_KINDS: &[&str] = &["slab"];
const V1_KERNEL_KINDS: &[&str] = &["slab", "page", "percpu"];

/// Anon: `anon` growth against the `anon` sites; the kernel side as [`V1_KERNEL_KINDS`] explains. Per interval the
/// same, from the site totals recorded with the samples.
pub fn attribute(samples: &[Sample], sites: &[Site]) -> Attribution {
    let sum = |kinds: &[&str]| -> i64 {
        sites
            .iter()
            .filter(|s| kinds.contains(&s.kind.as_str()))
            .fold(0i64, |acc, s| acc.saturating_add(s.outstanding_bytes))
    };
    let anon = coverage(growth(samples, |s| s.anon), sum(&["anon"]));
    let slab = match growth(samples, |s| s.slab) {
        Some(g) => coverage(Some(g), sum(V2_SLAB_KINDS)),
        None => coverage(growth(samples, |s| s.kernel), sum(V1_KERNEL_KINDS)),
    };
    // The heap sites are another view of the anon memory (who holds the malloc'd bytes), never added to it.
    let heap = sites.iter().any(|s| s.kind == "heap").then(|| coverage(growth(samples, |s| s.anon), sum(&["heap"])));
    Attribution { anon, slab, heap, intervals: intervals(samples) }
}

/// Each interval between two samples that both carry site totals.
fn intervals(samples: &[Sample]) -> Vec<IntervalCoverage> {
    samples
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (w[0].sites?, w[1].sites?);
            let delta = |k: fn(&SiteTotals) -> i64| k(&b).saturating_sub(k(&a));
            let anon = coverage(growth(w, |s| s.anon), delta(|t| t.anon));
            let slab = match growth(w, |s| s.slab) {
                Some(g) => coverage(Some(g), delta(|t| t.slab)),
                None => coverage(growth(w, |s| s.kernel), delta(|t| t.slab + t.page + t.percpu)),
            };
            Some(IntervalCoverage { t0: w[0].t, t1: w[1].t, anon, slab })
        })
        .collect()
}

/// Last minus first of a sample field, when both ends report it.
pub fn growth(samples: &[Sample], field: impl Fn(&Sample) -> Option<u64>) -> Option<i64> {
    let first = field(samples.first()?)?;
    let last = field(samples.last()?)?;
    Some((i128::from(last) - i128::from(first)).clamp(i64::MIN.into(), i64::MAX.into()) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::site;

    fn sample(anon: Option<u64>, slab: Option<u64>, kernel: Option<u64>) -> Sample {
        Sample { anon, slab, kernel, ..Default::default() }
    }

    fn cov(growth_bytes: i64, attributed_bytes: i64, coverage: Option<f64>) -> Coverage {
        Coverage { growth_bytes, attributed_bytes, coverage, unexplained_bytes: growth_bytes - attributed_bytes }
    }

    #[test]
    fn coverage_ratio_and_edge_cases() {
        assert_eq!(coverage(Some(100), 50).coverage, Some(0.5));
        assert_eq!(coverage(Some(100), 50).unexplained_bytes, 50);
        assert_eq!(coverage(Some(100), 250).coverage, Some(2.5), "not clamped");
        assert_eq!(coverage(Some(100), 250).unexplained_bytes, -150);
        assert_eq!(coverage(Some(0), 50).coverage, None);
        assert_eq!(coverage(Some(-10), 50), cov(-10, 50, None));
        assert_eq!(coverage(None, 7), cov(0, 7, None));
    }

    #[test]
    fn v2_uses_slab_and_slab_sites_only() {
        let samples = [sample(Some(100), Some(1000), Some(5000)), sample(Some(4196), Some(3000), Some(9000))];
        let sites = [
            site("anon", 2048, vec![]),
            site("anon", 2048, vec![]),
            site("slab", 1000, vec![]),
            site("page", 9999, vec![]),
            site("percpu", 64, vec![]),
        ];
        let a = attribute(&samples, &sites);
        assert_eq!(a.anon, cov(4096, 4096, Some(1.0)));
        assert_eq!(a.slab, cov(2000, 1000, Some(0.5)));
        assert!(a.intervals.is_empty(), "no site totals in these samples");
    }

    #[test]
    fn v1_falls_back_to_kernel_with_pages_and_percpu() {
        let samples = [sample(None, None, Some(1000)), sample(None, None, Some(2000))];
        let sites = [
            site("slab", 300, vec![]),
            site("percpu", 200, vec![]),
            site("page", 100, vec![]),
            site("other", 9999, vec![]),
        ];
        let a = attribute(&samples, &sites);
        assert_eq!(a.slab, cov(1000, 600, Some(0.6)));
        assert_eq!(a.anon, cov(0, 0, None), "no anon key");
    }

    #[test]
    fn negative_sites_count_and_shrinking_has_no_ratio() {
        let samples = [sample(Some(5000), None, None), sample(Some(1000), None, None)];
        let a = attribute(&samples, &[site("anon", 100, vec![]), site("anon", -300, vec![])]);
        assert_eq!(a.anon, cov(-4000, -200, None));
    }

    #[test]
    fn no_samples_or_one() {
        let a = attribute(&[], &[site("anon", 100, vec![])]);
        assert_eq!(a.anon.coverage, None);
        assert_eq!(a.anon.growth_bytes, 0);
        let a = attribute(&[sample(Some(5), Some(5), None)], &[]);
        assert_eq!((a.anon.growth_bytes, a.slab.growth_bytes), (0, 0));
        assert!(a.intervals.is_empty());
    }

    #[test]
    fn per_interval_reconciliation_shows_the_residue() {
        let at = |t: f64, anon: u64, kernel: u64, sites_anon: i64, page: i64| Sample {
            t,
            anon: Some(anon),
            kernel: Some(kernel),
            sites: Some(SiteTotals { anon: sites_anon, page, slab: 10, ..Default::default() }),
            ..Default::default()
        };
        // Interval 1: anon +1000, sites +1000. Interval 2: anon +1000, sites +400: 600 unexplained.
        // Interval 3: anon shrinks: no ratio. v1 kernel side: page + slab + percpu deltas.
        let samples = [
            at(0.0, 0, 0, 0, 0),
            at(1.0, 1000, 500, 1000, 500),
            at(2.0, 2000, 500, 1400, 500),
            at(3.0, 1500, 800, 900, 600),
        ];
        let a = attribute(&samples, &[]);
        assert_eq!(a.intervals.len(), 3);
        assert_eq!((a.intervals[0].t0, a.intervals[0].t1), (0.0, 1.0));
        assert_eq!(a.intervals[0].anon, cov(1000, 1000, Some(1.0)));
        assert_eq!(a.intervals[1].anon, cov(1000, 400, Some(0.4)));
        assert_eq!(a.intervals[2].anon, cov(-500, -500, None));
        assert_eq!(a.intervals[0].slab, cov(500, 500, Some(1.0)));
        assert_eq!(a.intervals[2].slab, cov(300, 100, Some(1.0 / 3.0)));
        // An interval whose end has no totals (the probes could not be read) is skipped, not invented.
        let mut gap = samples.to_vec();
        gap[2].sites = None;
        assert_eq!(attribute(&gap, &[]).intervals.len(), 1);
    }
}
