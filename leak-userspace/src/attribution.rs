//! How much of the cgroup's own growth the traced sites explain.
//!
//! Growth comes from the cgroup's memory files (first sample to last), attributed bytes from the sites' net
//! outstanding bytes (negative sites included: frees of memory older than the trace shrink both sides alike).
//! Coverage is not clamped: above 1.0 means the sites hold more than the cgroup grew, e.g. because memory
//! allocated before the trace was freed during it, or because a site's pages were charged elsewhere.
use crate::report::{Attribution, Coverage, Sample, Site};

/// `attributed / growth` when the cgroup grew; no ratio for no growth or an unknown one.
pub fn coverage(growth: Option<i64>, attributed: i64) -> Coverage {
    let ratio = growth.filter(|&g| g > 0).map(|g| attributed as f64 / g as f64);
    Coverage { growth_bytes: growth.unwrap_or(0), attributed_bytes: attributed, coverage: ratio }
}

/// Anon: `anon` growth against the `anon` sites.
///
/// Slab: `slab` growth against the `slab` sites where the cgroup reports slab (cgroup v2). cgroup v1 has no slab
/// key, only `kernel` (memory.kmem.usage_in_bytes: slab plus kernel stacks, page tables, pipe buffers, percpu...);
/// there the growth is `kernel`'s and the attributed side adds the `page` sites (kernel pages charged to the memcg,
/// which that figure holds; slab backing pages are not among them) and the `percpu` sites.
/// `other` sites (page cache, uncharged kernel pages) never count: the cgroup counts them elsewhere or not at all.
pub fn attribute(samples: &[Sample], sites: &[Site]) -> Attribution {
    let sum = |kinds: &[&str]| -> i64 {
        sites
            .iter()
            .filter(|s| kinds.contains(&s.kind.as_str()))
            .fold(0i64, |acc, s| acc.saturating_add(s.outstanding_bytes))
    };
    let anon = coverage(growth(samples, |s| s.anon), sum(&["anon"]));
    let slab = match growth(samples, |s| s.slab) {
        Some(g) => coverage(Some(g), sum(&["slab"])),
        None => coverage(growth(samples, |s| s.kernel), sum(&["slab", "page", "percpu"])),
    };
    Attribution { anon, slab }
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
        Sample { t: 0.0, usage: 0, anon, file: None, slab, kernel, pids: None }
    }

    #[test]
    fn coverage_ratio_and_edge_cases() {
        assert_eq!(coverage(Some(100), 50).coverage, Some(0.5));
        assert_eq!(coverage(Some(100), 250).coverage, Some(2.5), "not clamped");
        assert_eq!(coverage(Some(0), 50).coverage, None);
        assert_eq!(coverage(Some(-10), 50), Coverage { growth_bytes: -10, attributed_bytes: 50, coverage: None });
        assert_eq!(coverage(None, 7), Coverage { growth_bytes: 0, attributed_bytes: 7, coverage: None });
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
        assert_eq!(a.anon, Coverage { growth_bytes: 4096, attributed_bytes: 4096, coverage: Some(1.0) });
        assert_eq!(a.slab, Coverage { growth_bytes: 2000, attributed_bytes: 1000, coverage: Some(0.5) });
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
        assert_eq!(a.slab, Coverage { growth_bytes: 1000, attributed_bytes: 600, coverage: Some(0.6) });
        assert_eq!(a.anon, Coverage { growth_bytes: 0, attributed_bytes: 0, coverage: None }, "no anon key");
    }

    #[test]
    fn negative_sites_count_and_shrinking_has_no_ratio() {
        let samples = [sample(Some(5000), None, None), sample(Some(1000), None, None)];
        let a = attribute(&samples, &[site("anon", 100, vec![]), site("anon", -300, vec![])]);
        assert_eq!(a.anon, Coverage { growth_bytes: -4000, attributed_bytes: -200, coverage: None });
    }

    #[test]
    fn no_samples_or_one() {
        let a = attribute(&[], &[site("anon", 100, vec![])]);
        assert_eq!(a.anon.coverage, None);
        assert_eq!(a.anon.growth_bytes, 0);
        let a = attribute(&[sample(Some(5), Some(5), None)], &[]);
        assert_eq!((a.anon.growth_bytes, a.slab.growth_bytes), (0, 0));
    }
}
