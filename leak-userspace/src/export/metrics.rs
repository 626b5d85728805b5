//! Prometheus metrics of a report (`--listen`'s `/metrics`): the memory by category and how fast it grows, the
//! verdict, the deaths, the top sites and the tracer's own cost, each series labelled with what was traced.
//! Rendered anew from a snapshot at every scrape, in the OpenMetrics text format (which Prometheus asks for).
use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    report::{Report, Site},
    sites::site_name,
};

/// The content type of what `render` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Sites exported at most: a site's function is a label, and series must stay few.
pub const MAX_SITES: usize = 10;

type Labels = Vec<(&'static str, String)>;
type GaugeF = Gauge<f64, AtomicU64>;

/// The report's figures as Prometheus text, with `target` (e.g. the cgroup and container) on every series.
pub fn render(report: &Report, target: &[(&'static str, String)], sites: usize) -> String {
    let mut registry = Registry::default();
    let with = |extra: &[(&'static str, &str)]| -> Labels {
        let mut l: Labels = target.to_vec();
        l.extend(extra.iter().map(|&(k, v)| (k, v.to_string())));
        l
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str, values: Vec<(Labels, f64)>| {
        let family = Family::<Labels, GaugeF>::default();
        for (labels, v) in values {
            family.get_or_create(&labels).set(v);
        }
        registry.register(name, help, family);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, values: Vec<(Labels, f64)>| {
        let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (labels, v) in values {
            family.get_or_create(&labels).inc_by(v);
        }
        registry.register(name, help, family);
    };

    let last = report.memory.samples.last();
    let categories = last.map(|s| {
        [
            ("usage", Some(s.usage)),
            ("anon", s.anon),
            ("file", s.file),
            ("slab", s.slab),
            ("kernel", s.kernel),
            ("kernel_stack", s.kernel_stack),
            ("pagetables", s.pagetables),
            ("sock", s.sock),
            ("shmem", s.shmem),
        ]
    });
    let memory =
        categories.into_iter().flatten().filter_map(|(c, v)| Some((with(&[("category", c)]), v? as f64))).collect();
    gauge(&mut registry, "leaktrace_memory_bytes", "The cgroup's memory by category (memory.stat), last read", memory);
    let limit = report.memory.limit_bytes.map(|l| (with(&[]), l as f64)).into_iter().collect();
    gauge(&mut registry, "leaktrace_memory_limit_bytes", "The cgroup's memory limit in effect", limit);
    let growth = report
        .growth
        .trends
        .iter()
        .filter(|t| t.unit == "bytes")
        .map(|t| (with(&[("category", &t.name)]), t.rate_per_hour / 3600.0))
        .collect();
    gauge(
        &mut registry,
        "leaktrace_memory_growth_bytes_per_second",
        "Robust growth rate of each category after the warm-up (the trends the verdict is argued from)",
        growth,
    );

    let v = &report.verdict;
    let info = vec![(
        with(&[
            ("class", &v.class),
            ("location", v.location.as_deref().unwrap_or("")),
            ("runtime", v.runtime.as_deref().unwrap_or("")),
        ]),
        1.0,
    )];
    gauge(&mut registry, "leaktrace_verdict_info", "The verdict so far: its class, where the memory lives", info);
    let confidence = vec![(with(&[("class", &v.class)]), v.confidence)];
    gauge(&mut registry, "leaktrace_verdict_confidence", "How sure the verdict is, 0 to 1", confidence);

    counter(
        &mut registry,
        "leaktrace_oom_kills",
        "OOM kills of the target's processes",
        vec![(with(&[]), report.oom_kills.len() as f64)],
    );
    let mut causes: std::collections::BTreeMap<&str, u64> = Default::default();
    for e in &report.exits {
        *causes.entry(&e.cause).or_default() += 1;
    }
    let deaths = causes.into_iter().map(|(c, n)| (with(&[("cause", c)]), n as f64)).collect();
    counter(
        &mut registry,
        "leaktrace_deaths",
        "Deaths of the target's processes by cause (oom-kill, signal, exit)",
        deaths,
    );

    let top = report.sites.iter().filter(|s| s.outstanding_bytes > 0).take(sites.min(MAX_SITES));
    let sites = top
        .enumerate()
        .map(|(i, s)| {
            let rank = (i + 1).to_string();
            (with(&[("rank", &rank), ("function", &site_function(s)), ("kind", &s.kind)]), s.outstanding_bytes as f64)
        })
        .collect();
    gauge(
        &mut registry,
        "leaktrace_site_outstanding_bytes",
        "Bytes the top allocation sites hold now (estimates when sampled), named by their first application frame",
        sites,
    );

    let c = &report.collection;
    gauge(
        &mut registry,
        "leaktrace_window_seconds",
        "How long the trace has run",
        vec![(with(&[]), report.window.seconds)],
    );
    counter(
        &mut registry,
        "leaktrace_tracer_cpu_seconds",
        "CPU time leaktrace has used",
        vec![(with(&[]), c.tracer_cpu_seconds)],
    );
    gauge(
        &mut registry,
        "leaktrace_tracer_peak_resident_bytes",
        "leaktrace's peak resident memory",
        vec![(with(&[]), c.tracer_peak_rss_bytes as f64)],
    );
    let dropped = c.live_map_full + c.site_map_full + c.ringbuf_drops + c.unwind.lost_ring_full + c.unwind.lost_nested;
    counter(
        &mut registry,
        "leaktrace_events_dropped",
        "Events seen but not kept (full maps and ring buffers)",
        vec![(with(&[]), dropped as f64)],
    );
    counter(
        &mut registry,
        "leaktrace_events_kept",
        "Allocations kept and their frees matched",
        vec![(with(&[]), (c.alloc_events + c.free_events) as f64)],
    );

    let mut out = String::new();
    // Writing into a String cannot fail.
    encode(&mut out, &registry).expect("metrics into memory");
    out
}

/// The labels that say what was traced: the cgroup, and the container's name and image (empty when none).
pub fn target_labels(report: &Report) -> Vec<(&'static str, String)> {
    let c = report.target.container.as_ref();
    vec![
        ("cgroup", report.target.cgroup_path.clone()),
        ("container", c.map(|c| c.name.clone()).unwrap_or_default()),
        ("image", c.and_then(|c| c.image.clone()).unwrap_or_default()),
    ]
}

/// What names a site in a label: its name (`sites::site_name`), else its slab cache.
fn site_function(site: &Site) -> String {
    site_name(site).or_else(|| site.slab_cache.clone()).unwrap_or_else(|| "[unknown]".into())
}

#[cfg(test)]
mod tests;
