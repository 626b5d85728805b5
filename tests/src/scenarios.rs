//! The end-to-end leak scenarios and what their reports must show, shared by the host e2e tests (tests/e2e.rs) and
//! the guest kernels of `cargo xtask vm-test`, so every kernel is held to the same checks.
use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::{has_frame, items, summarize};

const MIB: u64 = 1 << 20;

/// A workload run in a fresh memcg with a limit while leaktrace traces it for `seconds`.
pub struct Scenario {
    pub name: &'static str,
    /// tests/workloads/<workload>.c
    pub workload: &'static str,
    pub args: &'static [&'static str],
    pub limit_bytes: u64,
    pub seconds: u32,
    /// Checks the report; returns the coverage the scenario is judged by (if any).
    pub check: fn(&Value) -> Result<Option<f64>>,
    /// The workload must have been OOM-killed (checked by the caller, who knows how it ended).
    pub expect_oom_kill: bool,
}

/// 8 MiB/s for 7 s, then held until the memcg is removed.
pub const HEAP_LEAK: Scenario = Scenario {
    name: "heap-leak",
    workload: "heap_leak",
    args: &["8", "7", "120"],
    limit_bytes: 512 * MIB,
    seconds: 8,
    check: check_heap_leak,
    expect_oom_kill: false,
};

pub const PIPE_LEAK: Scenario = Scenario {
    name: "pipe-leak",
    workload: "pipe_leak",
    args: &["200", "8", "120", "pipes"],
    limit_bytes: 512 * MIB,
    seconds: 10,
    check: check_pipe_leak,
    expect_oom_kill: false,
};

/// 16 MiB/s against a 48 MiB limit: killed after ~3 s; the workload gives up by itself after 30 s.
pub const OOM_KILL: Scenario = Scenario {
    name: "oom-kill",
    workload: "oom_leak",
    args: &["16", "30"],
    limit_bytes: 48 * MIB,
    seconds: 10,
    check: check_oom_kill,
    expect_oom_kill: true,
};

pub const ALL: &[&Scenario] = &[&HEAP_LEAK, &PIPE_LEAK, &OOM_KILL];

/// The top site is anon memory of the leaking function, and the anon sites explain >= 80% of the anon growth.
pub fn check_heap_leak(report: &Value) -> Result<Option<f64>> {
    let top = items(&report["sites"]).first().context("no sites in the report")?;
    ensure!(top["kind"] == "anon", "the top site is not anon:\n{}", summarize(report));
    ensure!(has_frame(top, false, "leak_heap_blocks"), "the top site misses leak_heap_blocks:\n{}", summarize(report));
    let coverage = report["attribution"]["anon"]["coverage"].as_f64();
    ensure!(
        coverage.is_some_and(|c| c >= 0.8),
        "anon coverage {coverage:?} < 0.8 (attribution {}):\n{}",
        report["attribution"]["anon"],
        summarize(report)
    );
    Ok(coverage)
}

/// A slab/page site names leak_pipes in user space and a pipe syscall path in the kernel, and the kernel memory the
/// cgroup gained (slab, or kmem on v1) is what the slab and kernel-page sites hold.
pub fn check_pipe_leak(report: &Value) -> Result<Option<f64>> {
    let found = items(&report["sites"]).iter().any(|site| {
        matches!(site["kind"].as_str(), Some("slab" | "page"))
            && has_frame(site, false, "leak_pipes")
            && has_frame(site, true, "pipe")
    });
    ensure!(
        found,
        "no slab/page site with leak_pipes in user space and a pipe syscall path in the kernel:\n{}",
        summarize(report)
    );
    let coverage = report["attribution"]["slab"]["coverage"].as_f64();
    ensure!(
        coverage.is_some_and(|c| (0.7..=1.5).contains(&c)),
        "kernel-memory coverage {coverage:?} outside 0.7..1.5:\n{}",
        summarize(report)
    );
    Ok(coverage)
}

/// The kill is in the report, and a site recorded before it names the function that grew until killed. Which pid
/// was killed is checked by the caller against the workload it started.
pub fn check_oom_kill(report: &Value) -> Result<Option<f64>> {
    let kill = items(&report["oom_kills"])
        .first()
        .with_context(|| format!("no oom_kills in the report:\n{}", summarize(report)))?;
    ensure!(
        items(&kill["sites_before_kill"]).iter().any(|site| has_frame(site, false, "grow_until_killed")),
        "no site before the kill names grow_until_killed: {}",
        kill["sites_before_kill"]
    );
    Ok(None)
}

/// The pid of the first OOM kill in the report.
pub fn first_oom_pid(report: &Value) -> Option<u64> {
    items(&report["oom_kills"]).first().and_then(|k| k["pid"].as_u64())
}
