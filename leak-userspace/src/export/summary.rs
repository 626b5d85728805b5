//! The short text printed on the terminal when a trace ends: the verdict and its strongest evidence first, then
//! what grew, who holds it, what grew before each OOM kill, and what was lost.
use std::fmt::Write;

use super::{clamp, human_bytes, signed};
use crate::{
    report::{Collection, Coverage, Report, Site},
    sites::app_frame,
};

const TOP_SITES: usize = 10;
/// Evidence lines shown under the verdict (report.json has them all).
const TOP_EVIDENCE: usize = 4;

pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_summary(&mut out, report);
    out
}

fn write_summary(out: &mut String, r: &Report) -> std::fmt::Result {
    let t = &r.target;
    write!(out, "leaktrace: {} (cgroup v{}, id {})", t.cgroup_path, t.cgroup_version, t.cgroup_id)?;
    if let Some(c) = &t.container {
        let short_id: String = c.id.chars().take(12).collect();
        // Containers found only by their cgroup's name have no name.
        let name = if c.name.is_empty() { String::new() } else { format!("{} ", c.name) };
        write!(out, ", {} container {name}({short_id})", c.runtime)?;
        if let Some(restarts) = c.restart_count.filter(|&n| n > 0) {
            write!(out, ", restarted {restarts} times")?;
        }
    }
    writeln!(out)?;
    writeln!(out, "verdict: {} (confidence {:.2})", r.verdict.class, r.verdict.confidence)?;
    for line in r.verdict.evidence.iter().take(TOP_EVIDENCE) {
        writeln!(out, "  - {line}")?;
    }
    for line in &r.verdict.recommendations {
        writeln!(out, "  > {line}")?;
    }
    let limit = r.memory.limit_bytes.map_or("none".to_string(), |l| human_bytes(clamp(l)));
    writeln!(
        out,
        "window: {} .. {} ({:.1} s, {} samples), limit {limit}",
        r.window.start,
        r.window.end,
        r.window.seconds,
        r.memory.samples.len()
    )?;

    let growths = super::growth_words(&r.memory.samples);
    writeln!(out, "growth: {}", growths.join(", "))?;
    write!(out, "attributed: anon {}, slab/kernel {}", coverage(&r.attribution.anon), coverage(&r.attribution.slab))?;
    match &r.attribution.heap {
        Some(heap) => writeln!(out, "; the malloc'd heap (--heap) holds {}", coverage(heap))?,
        None => writeln!(out)?,
    }

    let (lead, kill) = super::lead_sites(r);
    if lead.is_empty() {
        writeln!(out, "no allocation sites recorded")?;
    } else {
        match kill {
            Some(n) => {
                writeln!(out, "held just before OOM kill {n} (the workload died: nothing is outstanding at the end):")?
            }
            None => writeln!(out, "top sites by outstanding bytes:")?,
        }
        for (i, site) in lead.iter().take(TOP_SITES).enumerate() {
            writeln!(out, "{:>3}. {}", i + 1, site_line(site))?;
        }
    }

    if !r.oom_kills.is_empty() {
        writeln!(out, "OOM kills: {}", r.oom_kills.len())?;
        for k in &r.oom_kills {
            write!(out, "  t={:.1}s victim pid {} ({})", k.t, k.pid, k.comm)?;
            if k.trigger_pid != k.pid {
                write!(out, ", triggered by pid {} ({})", k.trigger_pid, k.trigger_comm)?;
            }
            if let Some(rss) = k.anon_rss_bytes {
                write!(out, ", anon rss {}", human_bytes(clamp(rss)))?;
            }
            writeln!(out)?;
            if let Some(top) = k.sites_before_kill.first() {
                writeln!(out, "     top site before the kill: {}", site_line(top))?;
            }
            // Spans that the trace's start cut to the same length show once.
            let mut shown = f64::NAN;
            for g in &k.grew_before_kill {
                if g.covered_seconds == shown {
                    continue;
                }
                shown = g.covered_seconds;
                if let Some(top) = g.sites.first() {
                    writeln!(out, "     grew most in the last {:.0} s: {}", g.covered_seconds, site_line(top))?;
                }
            }
        }
    }

    let lost = losses(&r.collection);
    if !lost.is_empty() {
        writeln!(out, "not seen by the tracer (results may be incomplete): {}", lost.join(", "))?;
    }
    Ok(())
}

pub(crate) fn site_line(site: &Site) -> String {
    let kind = match &site.slab_cache {
        Some(cache) => format!("{}:{}", site.kind, cache),
        None => site.kind.clone(),
    };
    let func = app_frame(site).map_or("?".to_string(), |f| match (crate::stacks::runtime::source_file(f), f.line) {
        // A Python or JS function with where it runs: `remember (session_store.py:12)`.
        (Some(file), Some(l)) => format!("{} ({}:{l})", f.label(), file.rsplit('/').next().unwrap_or(file)),
        _ => f.label().to_string(),
    });
    let mut line = format!("{kind:<18} {:>10}  {func}", human_bytes(site.outstanding_bytes));
    if !site.comms.is_empty() {
        let _ = write!(line, "  [{}]", site.comms.join(","));
    }
    line
}

fn coverage(c: &Coverage) -> String {
    let ratio = crate::export::coverage_ratio(c);
    format!(
        "{} of {} ({ratio}, unexplained {})",
        human_bytes(c.attributed_bytes),
        signed(c.growth_bytes),
        human_bytes(c.unexplained_bytes)
    )
}

/// The non-zero loss counters, named as in report.json.
pub(super) fn losses(c: &Collection) -> Vec<String> {
    [
        ("stack_collisions_kernel", c.stack_collisions_kernel),
        ("stack_collisions_user", c.stack_collisions_user),
        ("stack_errors", c.stack_errors),
        ("live_map_full", c.live_map_full),
        ("site_map_full", c.site_map_full),
        ("ringbuf_drops", c.ringbuf_drops),
        ("implicit_frees", c.implicit_frees),
        ("anon_charge_unmatched_pages", c.anon_charge_unmatched_pages),
        ("recursion_misses", c.recursion_misses),
        ("retired_sites_dropped", c.retired_sites_dropped),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, n)| format!("{name} {n}"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{frame, sample_report, site};

    #[test]
    fn golden_lines() {
        let text = summary(&sample_report());
        let has = |needle: &str| assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        has("leaktrace: /sys/fs/cgroup/memory/leaky (cgroup v1, id 1234), docker container leaky (abababababab), restarted \
             2 times\n");
        has("(10.0 s, 2 samples), limit 128.0 MiB\n");
        has("growth: usage +70.0 MiB, anon +64.0 MiB, file 0 B, slab n/a, kernel 0 B\n");
        has("attributed: anon 64.0 MiB of +64.0 MiB (100%, unexplained 0 B), slab/kernel 0 B of 0 B (n/a, unexplained 0 B)\n");
        has("  1. anon                 64.0 MiB  grow_cache  [leaker]\n");
        has("  2. slab:kmalloc-256      4.0 KiB  kmem_cache_alloc  [leaker]\n");
        has("OOM kills: 1\n  t=9.5s victim pid 42 (leaker), triggered by pid 43 (worker)\n");
        has("     top site before the kill: anon");
        has("     grew most in the last 10 s: anon                 64.0 MiB  grow_cache  [leaker]\n");
        has("not seen by the tracer (results may be incomplete): ringbuf_drops 3\n");
        assert!(text.contains("restarted 2 times\nverdict: inconclusive (confidence 0.00)\n  - x\nwindow:"), "{text}");
    }

    #[test]
    fn only_ten_sites_and_quiet_when_nothing_lost() {
        let mut r = sample_report();
        r.sites = (0..15).map(|i| site("anon", 1000 - i, vec![frame(Some(&format!("f{i}")), 1, false)])).collect();
        r.collection = Collection::default();
        r.oom_kills.clear();
        let text = summary(&r);
        assert!(text.contains(" 10. anon"));
        assert!(!text.contains(" 11. "));
        assert!(!text.contains("OOM"));
        assert!(!text.contains("not seen"));
    }

    #[test]
    fn container_known_only_by_its_cgroup() {
        let mut r = sample_report();
        let c = r.target.container.as_mut().unwrap();
        (c.runtime, c.name, c.restart_count) = ("containerd".into(), String::new(), None);
        assert!(summary(&r).lines().next().unwrap().ends_with("id 1234), containerd container (abababababab)"));
    }

    #[test]
    fn flight_recorder_spans_cut_to_the_same_length_show_once() {
        let mut r = sample_report();
        let span = r.oom_kills[0].grew_before_kill[0].clone();
        r.oom_kills[0].grew_before_kill = [10.0, 30.0, 60.0]
            .map(|seconds| crate::report::GrowthBeforeKill { seconds, covered_seconds: 9.5, ..span.clone() })
            .to_vec();
        let text = summary(&r);
        assert_eq!(text.matches("grew most in the last 10 s").count(), 1, "{text}");
    }

    #[test]
    fn empty_report_does_not_panic() {
        let mut r = sample_report();
        r.memory.samples.clear();
        r.memory.limit_bytes = None;
        r.sites.clear();
        r.target.container = None;
        let text = summary(&r);
        assert!(text.contains("held just before OOM kill 1 (the workload died"), "{text}");
        r.oom_kills.clear();
        let text = summary(&r);
        assert!(text.contains("growth: usage n/a, anon n/a"), "{text}");
        assert!(text.contains("limit none"));
        assert!(text.contains("no allocation sites recorded"));
    }
}
