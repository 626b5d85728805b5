//! A window's report: every site and figure with the window's history, the attribution against its memory
//! samples, the growth analysis and the verdict.
use std::collections::HashMap;

use anyhow::Result;
use leak_common::{counter, exit_count};

use super::{
    exits, jvm_heap, node_heap,
    site_reader::{RawSites, SiteReader},
    window::{History, Window},
};
use crate::{attribution, probes::Discovery, probes::Probes, report, sites::Outstanding, verdict};

/// What every report of one set of probes says of the kernel and the sampling.
pub struct TraceInfo {
    release: String,
    modes: Vec<String>,
    degraded: Vec<String>,
    sample_rate_shift: u32,
}

impl TraceInfo {
    pub fn new(discovery: &Discovery) -> Self {
        TraceInfo {
            release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            modes: discovery.modes.clone(),
            degraded: discovery.degraded.clone(),
            sample_rate_shift: discovery.config.sample_rate_shift,
        }
    }
}

/// What a trace adds to its window's report beyond the kernel's sites.
#[derive(Default)]
pub struct Extras {
    /// The runtimes' own heap sites (Go's, V8's, the JVM's).
    pub sites: Vec<report::Site>,
    /// `collection.heap`, with `--heap`.
    pub heap: Option<report::HeapCollection>,
    pub jvm_perfmaps: Vec<crate::stacks::jvm_perfmap::JvmPerfMapStats>,
    pub node_heaps: Vec<node_heap::NodeHeapStats>,
    pub jvm_heaps: Vec<jvm_heap::JvmHeapStats>,
}

/// The report of `window` from its sites `raw` and `history`, with `max_sites` sites at most (the sites left out
/// are counted in `collection.sites_left_out`).
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    window: &Window,
    reader: &mut SiteReader,
    probes: &Probes,
    info: &TraceInfo,
    raw: &RawSites,
    mut history: History,
    extras: Extras,
    max_sites: usize,
) -> Result<report::Report> {
    let mut sites = reader.build_sites(probes, raw, Outstanding::Live, usize::MAX)?;
    sites.extend(extras.sites);
    sites.sort_by_key(|s| std::cmp::Reverse(s.outstanding_bytes));
    let c = probes.counters()?;
    let end = time::OffsetDateTime::now_utc();
    let usage = resource_usage();
    let programs = probes.program_stats();
    let attribution = attribution::attribute(&history.samples, &sites);
    let sites_left_out = sites.len().saturating_sub(max_sites) as u64;
    sites.truncate(max_sites);
    let elapsed = window.elapsed();
    let sites_early = match window.early.pick(elapsed) {
        Some((t, raw)) => {
            Some(report::EarlySites { t, sites: reader.build_sites(probes, raw, Outstanding::Live, max_sites)? })
        }
        None => None,
    };
    let victims: Vec<(f64, u32)> = history.oom_kills.iter().map(|k| (k.t, k.pid)).collect();
    exits::mark_oom_kills(&mut history.exits, &victims);
    let kill_times: Vec<f64> = victims.iter().map(|v| v.0).collect();
    let life_ends = verdict::growth::life_ends(&kill_times, &history.exits, &history.samples);
    let restarts = count_restarts(&victims, &window.first_seen);
    let growth = verdict::growth::analyse(&history.samples, &life_ends, window.limit, restarts);
    let exit_counts = probes.exit_counts()?;
    let target = &window.target;
    let mut report = report::Report {
        schema: report::SCHEMA.to_string(),
        target: report::TargetInfo {
            cgroup_path: target.path.display().to_string(),
            cgroup_id: target.id,
            cgroup_version: target.version.number(),
            container: target.container.clone(),
            cgroups: window.follower.cgroups().to_vec(),
        },
        kernel: report::KernelInfo {
            release: info.release.clone(),
            modes: info.modes.clone(),
            degraded: info.degraded.clone(),
        },
        window: report::Window {
            start: rfc3339(window.start_wall),
            end: rfc3339(end),
            seconds: elapsed,
            ended_by: String::new(),
        },
        memory: report::Memory { limit_bytes: window.limit, samples: history.samples },
        attribution,
        sites,
        oom_kills: history.oom_kills,
        exits: history.exits,
        sites_early,
        verdict: report::Verdict {
            class: "inconclusive".into(),
            confidence: 0.0,
            evidence: Vec::new(),
            ..Default::default()
        },
        growth,
        collection: report::Collection {
            stack_collisions_kernel: c[counter::KSTACK_COLLISION as usize],
            stack_collisions_user: c[counter::USTACK_COLLISION as usize],
            stack_errors: c[counter::STACK_ERROR as usize],
            live_map_full: c[counter::LIVE_MAP_FULL as usize],
            site_map_full: c[counter::SITE_MAP_FULL as usize],
            ringbuf_drops: c[counter::RINGBUF_DROP as usize],
            implicit_frees: c[counter::IMPLICIT_FREE as usize],
            anon_charge_unmatched_pages: c[counter::ANON_CHARGE_UNMATCHED as usize],
            alloc_events: c[counter::ALLOC_EVENTS as usize],
            free_events: c[counter::FREE_EVENTS as usize],
            oom_events: c[counter::OOM_EVENTS as usize],
            collapsed_into_huge_pages: c[counter::COLLAPSED as usize],
            kernel_stacks_reused: c[counter::KSTACK_REUSED as usize],
            kernel_stack_rechecks_changed: c[counter::KSTACK_CHANGED as usize],
            recursion_misses: programs.iter().map(|p| p.recursion_misses).sum(),
            intervals: window.intervals,
            tracer_cpu_seconds: usage.0,
            tracer_peak_rss_bytes: usage.1,
            programs,
            retired_sites_dropped: reader.retired_dropped(),
            sites_left_out,
            unwind: reader.unwind_stats(&c),
            exits_unrecorded: exit_counts[exit_count::UNRECORDED as usize] + window.exits_over,
            exits_dropped: exit_counts[exit_count::DROPPED as usize],
            heap: extras.heap,
            jvm_perfmaps: extras.jvm_perfmaps,
            node_heaps: extras.node_heaps,
            jvm_heaps: extras.jvm_heaps,
        },
        sampling: report::Sampling::from_shift(info.sample_rate_shift, c[counter::ALLOC_EVENTS as usize]),
    };
    report.verdict = verdict::judge(&report);
    Ok(report)
}

/// Kills (`t`, victim pid) after which the workload ran again: a later kill took another process, or a process
/// that no kill took was first seen after it. Victims are never their own restart, even when the tracer learned
/// of them only after their death (from the sites they left).
fn count_restarts(kills: &[(f64, u32)], first_seen: &HashMap<u32, f64>) -> u32 {
    let victim = |pid: u32| kills.iter().any(|k| k.1 == pid);
    kills
        .iter()
        .enumerate()
        .filter(|&(i, &(t, pid))| {
            kills[i + 1..].iter().any(|k| k.1 != pid) || first_seen.iter().any(|(&p, &seen)| seen > t && !victim(p))
        })
        .count() as u32
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The tracer's own CPU seconds and peak RSS in bytes.
pub fn resource_usage() -> (f64, u64) {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss as u64 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_new_processes_after_a_kill() {
        // pid 1: the shell loop; 10, 11, 12: the relaunched workload, each learned just after its own death.
        let seen = HashMap::from([(1, 0.0), (10, 2.1), (11, 4.1), (12, 6.1)]);
        assert_eq!(count_restarts(&[], &seen), 0);
        assert_eq!(count_restarts(&[(2.0, 10), (4.0, 11), (6.0, 12)], &seen), 2, "nothing ran after the last kill");
        let later = HashMap::from([(1, 0.0), (10, 2.1), (13, 9.0)]);
        assert_eq!(count_restarts(&[(2.0, 10)], &later), 1, "pid 13 came after the kill");
        let one = HashMap::from([(1, 0.0), (10, 2.1)]);
        assert_eq!(count_restarts(&[(2.0, 10), (2.01, 10)], &one), 0, "the same victim reported twice");
    }

    #[test]
    fn resource_usage_is_positive() {
        let (_, rss) = resource_usage();
        assert!(rss > 0);
    }
}
