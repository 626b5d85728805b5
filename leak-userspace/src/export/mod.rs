//! Outputs derived from a report: folded stacks, flame graphs, the pprof profile, the HTML report (for the
//! developer the evidence goes to), the terminal summary and Prometheus metrics.
mod buildid;
pub mod diff;
pub mod flamegraph;
pub mod folded;
pub mod html;
pub mod metrics;
pub mod pprof;
pub mod summary;

use std::borrow::Cow;

use crate::{
    attribution::growth,
    report::{Coverage, Frame, Report, Sample, Site},
};

/// The sites the outputs lead with, and the OOM kill they are of (1-based; `None`: the end of the window). When the
/// workload died at its last kill and the end holds (almost) nothing, an empty end state would hide the incident:
/// the outputs show what the victim held just before that kill, each stack under a root frame that says so.
pub fn lead_sites(report: &Report) -> (Cow<'_, [Site]>, Option<usize>) {
    let held = |sites: &[Site]| sites.iter().map(|s| s.outstanding_bytes.max(0)).sum::<i64>();
    let Some(kill) = report.oom_kills.last().filter(|k| held(&report.sites) * 10 < held(&k.sites_before_kill)) else {
        return (Cow::Borrowed(&report.sites), None);
    };
    let n = report.oom_kills.len();
    let marker =
        Frame { symbol: Some(format!("[held before OOM kill {n} at t={:.1} s]", kill.t)), ..Frame::unknown(0, false) };
    let sites = kill.sites_before_kill.iter().cloned().map(|mut s| {
        s.frames.push(marker.clone());
        s
    });
    (Cow::Owned(sites.collect()), Some(n))
}

/// Growth below which a coverage ratio says nothing: a few pages of noise against a few KiB make "12800%".
const MIN_COVERAGE_GROWTH: i64 = 1 << 20;

/// A coverage as a percentage; "n/a" without growth, or over a growth too small to measure sites against.
pub fn coverage_ratio(c: &Coverage) -> String {
    match c.coverage {
        Some(r) if c.growth_bytes >= MIN_COVERAGE_GROWTH => format!("{:.0}%", r * 100.0),
        _ => "n/a".to_string(),
    }
}

/// What was traced, for titles: the container's name when there is one, else the cgroup path.
pub fn target_name(report: &Report) -> String {
    match &report.target.container {
        Some(c) => format!("{} container {}", c.runtime, c.name),
        None => report.target.cgroup_path.clone(),
    }
}

/// A byte count from the kernel's u64 counters as the i64 that growth arithmetic and pprof use.
pub fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Each category's growth over the window (first sample to last), as "usage +70.0 MiB", "slab n/a", ...
pub fn growth_words(samples: &[Sample]) -> Vec<String> {
    [
        ("usage", growth(samples, |x| Some(x.usage))),
        ("anon", growth(samples, |x| x.anon)),
        ("file", growth(samples, |x| x.file)),
        ("slab", growth(samples, |x| x.slab)),
        ("kernel", growth(samples, |x| x.kernel)),
    ]
    .into_iter()
    .map(|(name, g)| format!("{name} {}", g.map_or("n/a".to_string(), signed)))
    .collect()
}

/// Text made safe inside XML/HTML text and attribute values.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes for people: binary units, one decimal, sign kept (growth can be negative).
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let sign = if n < 0 { "-" } else { "" };
    let mut v = n.unsigned_abs() as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{sign}{v} B")
    } else {
        format!("{sign}{v:.1} {}", UNITS[unit])
    }
}

/// Bytes with a `+` for growth.
pub fn signed(n: i64) -> String {
    if n > 0 {
        format!("+{}", human_bytes(n))
    } else {
        human_bytes(n)
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn coverage_of_a_tiny_growth_is_not_a_ratio() {
        let c = |growth_bytes, coverage| super::Coverage {
            growth_bytes,
            attributed_bytes: 0,
            coverage,
            unexplained_bytes: 0,
        };
        assert_eq!(super::coverage_ratio(&c(8192, Some(128.0))), "n/a");
        assert_eq!(super::coverage_ratio(&c(64 << 20, Some(0.97))), "97%");
        assert_eq!(super::coverage_ratio(&c(0, None)), "n/a");
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(-(3 << 30)), "-3.0 GiB");
        assert_eq!(human_bytes(i64::MIN), "-8192.0 PiB");
    }
}
