//! Prometheus metrics of reports (`--listen`'s and the agent's `/metrics`): the memory by category and how fast it grows, the
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

pub type Labels = Vec<(&'static str, String)>;
/// A family's series: labels and value.
type Series = Vec<(Labels, f64)>;
type GaugeF = Gauge<f64, AtomicU64>;

/// The tracer's own figures, on series of their own.
#[derive(Default)]
pub struct Tracer {
    /// What every series of the tracer carries: a trace's target, nothing for the agent.
    pub labels: Labels,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    /// Kernel memory of its BPF maps.
    pub map_bytes: u64,
    pub dropped: u64,
    pub kept: u64,
    /// Allocations thinned out while the user stack ring was filling (`collection.unwind.thinned`).
    pub thinned: u64,
    /// The agent's: how many containers it traces, and what the sites of processes of none of them hold.
    pub containers: Option<usize>,
    pub unassigned_bytes: Option<i64>,
}

impl Tracer {
    /// The tracer's figures as a report's `collection` has them.
    pub fn of(c: &crate::report::Collection, labels: Labels) -> Self {
        Tracer {
            labels,
            cpu_seconds: c.tracer_cpu_seconds,
            peak_rss_bytes: c.tracer_peak_rss_bytes,
            map_bytes: crate::probes::map_bytes(),
            dropped: c.live_map_full
                + c.site_map_full
                + c.ringbuf_drops
                + c.unwind.lost_ring_full
                + c.unwind.lost_nested,
            kept: c.alloc_events + c.free_events,
            thinned: c.unwind.thinned,
            containers: None,
            unassigned_bytes: None,
        }
    }
}

/// One trace's report as Prometheus text: its series labelled with its target, the tracer's too.
pub fn render_trace(report: &Report) -> String {
    let labels = target_labels(report);
    render(&[(report, labels.clone())], &Tracer::of(&report.collection, labels), MAX_SITES)
}

/// The reports' figures as Prometheus text, each report's series with its labels (e.g. the cgroup and container),
/// then the tracer's own; `sites` top sites per report.
pub fn render(targets: &[(&Report, Labels)], tracer: &Tracer, sites: usize) -> String {
    let mut registry = Registry::default();
    let with = |target: &Labels, extra: &[(&'static str, &str)]| -> Labels {
        let mut l = target.clone();
        l.extend(extra.iter().map(|&(k, v)| (k, v.to_string())));
        l
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str, values: Series| {
        let family = Family::<Labels, GaugeF>::default();
        for (labels, v) in values {
            family.get_or_create(&labels).set(v);
        }
        registry.register(name, help, family);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, values: Series| {
        let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (labels, v) in values {
            family.get_or_create(&labels).inc_by(v);
        }
        registry.register(name, help, family);
    };
    // Each family's series, one or more per report.
    let each =
        |f: &dyn Fn(&Report, &Labels) -> Series| -> Series { targets.iter().flat_map(|(r, l)| f(r, l)).collect() };

    let memory = each(&|report, target| {
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
        categories
            .into_iter()
            .flatten()
            .filter_map(|(c, v)| Some((with(target, &[("category", c)]), v? as f64)))
            .collect()
    });
    gauge(&mut registry, "leaktrace_memory_bytes", "The cgroup's memory by category (memory.stat), last read", memory);
    let limit =
        each(&|report, target| report.memory.limit_bytes.map(|l| (with(target, &[]), l as f64)).into_iter().collect());
    gauge(&mut registry, "leaktrace_memory_limit_bytes", "The cgroup's memory limit in effect", limit);
    let growth = each(&|report, target| {
        report
            .growth
            .trends
            .iter()
            .filter(|t| t.unit == "bytes")
            .map(|t| (with(target, &[("category", &t.name)]), t.rate_per_hour / 3600.0))
            .collect()
    });
    gauge(
        &mut registry,
        "leaktrace_memory_growth_bytes_per_second",
        "Robust growth rate of each category after the warm-up (the trends the verdict is argued from)",
        growth,
    );

    let info = each(&|report, target| {
        let v = &report.verdict;
        let labels = [
            ("class", v.class.as_str()),
            ("location", v.location.as_deref().unwrap_or("")),
            ("runtime", v.runtime.as_deref().unwrap_or("")),
        ];
        vec![(with(target, &labels), 1.0)]
    });
    gauge(&mut registry, "leaktrace_verdict_info", "The verdict so far: its class, where the memory lives", info);
    let confidence =
        each(&|report, target| vec![(with(target, &[("class", &report.verdict.class)]), report.verdict.confidence)]);
    gauge(&mut registry, "leaktrace_verdict_confidence", "How sure the verdict is, 0 to 1", confidence);

    let kills = each(&|report, target| vec![(with(target, &[]), report.oom_kills.len() as f64)]);
    counter(&mut registry, "leaktrace_oom_kills", "OOM kills of the target's processes", kills);
    let deaths = each(&|report, target| {
        let mut causes: std::collections::BTreeMap<&str, u64> = Default::default();
        for e in &report.exits {
            *causes.entry(&e.cause).or_default() += 1;
        }
        causes.into_iter().map(|(c, n)| (with(target, &[("cause", c)]), n as f64)).collect()
    });
    counter(
        &mut registry,
        "leaktrace_deaths",
        "Deaths of the target's processes by cause (oom-kill, signal, exit)",
        deaths,
    );

    let top = each(&|report, target| {
        let top = report.sites.iter().filter(|s| s.outstanding_bytes > 0).take(sites.min(MAX_SITES));
        top.enumerate()
            .map(|(i, s)| {
                let rank = (i + 1).to_string();
                let labels = [("rank", rank.as_str()), ("function", &site_function(s)), ("kind", &s.kind)];
                (with(target, &labels), s.outstanding_bytes as f64)
            })
            .collect()
    });
    gauge(
        &mut registry,
        "leaktrace_site_outstanding_bytes",
        "Bytes the top allocation sites hold now (estimates when sampled), named by their first application frame",
        top,
    );
    let left_out = each(&|report, target| vec![(with(target, &[]), report.collection.sites_left_out as f64)]);
    gauge(&mut registry, "leaktrace_sites_left_out", "Sites beyond the report's bound, counted only", left_out);
    let seconds = each(&|report, target| vec![(with(target, &[]), report.window.seconds)]);
    gauge(&mut registry, "leaktrace_window_seconds", "How many seconds of history the report covers", seconds);

    let own = |v: f64| vec![(tracer.labels.clone(), v)];
    counter(&mut registry, "leaktrace_tracer_cpu_seconds", "CPU time leaktrace has used", own(tracer.cpu_seconds));
    gauge(
        &mut registry,
        "leaktrace_tracer_peak_resident_bytes",
        "leaktrace's peak resident memory",
        own(tracer.peak_rss_bytes as f64),
    );
    gauge(
        &mut registry,
        "leaktrace_tracer_map_bytes",
        "Kernel memory of leaktrace's BPF maps",
        own(tracer.map_bytes as f64),
    );
    counter(
        &mut registry,
        "leaktrace_events_dropped",
        "Events seen but not kept (full maps and ring buffers)",
        own(tracer.dropped as f64),
    );
    counter(
        &mut registry,
        "leaktrace_events_kept",
        "Allocations kept and their frees matched",
        own(tracer.kept as f64),
    );
    counter(
        &mut registry,
        "leaktrace_allocations_thinned",
        "Allocations the sampling kept and a further coin left out while the user stack ring was filling (the others kept meanwhile weigh as much more)",
        own(tracer.thinned as f64),
    );
    if let Some(n) = tracer.containers {
        gauge(&mut registry, "leaktrace_containers", "Containers the agent traces", own(n as f64));
    }
    if let Some(bytes) = tracer.unassigned_bytes {
        gauge(
            &mut registry,
            "leaktrace_unassigned_bytes",
            "What the sites of processes the agent could place in no container hold (they came and went between two scans)",
            own(bytes as f64),
        );
    }

    let mut out = String::new();
    // Writing into a String cannot fail.
    encode(&mut out, &registry).expect("metrics into memory");
    out
}

/// The labels that say what was traced: the cgroup, and the container's name, id (its first 12 digits: a
/// container known only by its cgroup has no name), image, pod and namespace (empty when none).
pub fn target_labels(report: &Report) -> Labels {
    let c = report.target.container.as_ref();
    let field = |f: fn(&crate::report::Container) -> Option<&String>| c.and_then(f).cloned().unwrap_or_default();
    vec![
        ("cgroup", report.target.cgroup_path.clone()),
        ("container", field(|c| Some(&c.name))),
        ("container_id", c.map(|c| crate::cgroup::short_id(&c.id)).unwrap_or_default()),
        ("image", field(|c| c.image.as_ref())),
        ("pod", field(|c| c.pod.as_ref())),
        ("namespace", field(|c| c.namespace.as_ref())),
    ]
}

/// What names a site in a label: its name (`sites::site_name`), else its slab cache.
fn site_function(site: &Site) -> String {
    site_name(site).or_else(|| site.slab_cache.clone()).unwrap_or_else(|| "[unknown]".into())
}

#[cfg(test)]
mod tests;
