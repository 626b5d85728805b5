//! End to end: the real leaktrace binary traces real C workloads in memcgs made for each test, and report.json must
//! name the functions that leak. Privileged tests skip without root (and fail under CI=true); each one also checks
//! that leaktrace left no program in the kernel.
use std::{
    os::unix::process::ExitStatusExt,
    process::{Child, Command},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use leaktrace_e2e::{
    assert_nothing_attached, build_workload, describe, has_frame, items, read_report, require_root, run_leaktrace,
    serial, summarize, wait_timeout, Leaktrace, Memcg,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A finished trace of one workload. The memcg (and so the workload, if still running) goes when this is dropped.
struct Traced {
    report: Value,
    workload: Child,
    _memcg: Memcg,
    _dir: tempfile::TempDir,
}

/// Attaches leaktrace to a fresh memcg, starts `workload args` in it, traces for `seconds` and reads the report.
fn trace_workload(workload: &str, args: &[&str], limit: Option<u64>, seconds: u32) -> Result<Traced> {
    trace_workload_with(workload, args, limit, seconds, &[])
}

/// As `trace_workload`, with more leaktrace arguments.
fn trace_workload_with(
    workload: &str,
    args: &[&str],
    limit: Option<u64>,
    seconds: u32,
    leaktrace_args: &[&str],
) -> Result<Traced> {
    let exe = build_workload(workload)?;
    let memcg = Memcg::create(workload, limit)?;
    let dir = tempfile::tempdir()?;
    let mut trace = Leaktrace::trace_with(&memcg, seconds, dir.path(), leaktrace_args)?;
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    let workload = memcg.spawn_in(cmd)?;
    let out = trace.wait(Duration::from_secs(u64::from(seconds) + 30))?;
    ensure!(out.status.success(), "leaktrace failed: {}", describe(&out));
    assert_nothing_attached()?;
    let report = read_report(dir.path())?;
    // Shown with --nocapture (and in CI logs on failure): the figures the issue notes quote.
    eprintln!("{}: {}\n{}", exe.display(), report["collection"], summarize(&report));
    Ok(Traced { report, workload, _memcg: memcg, _dir: dir })
}

/// The default mode samples: the allocations it kept are a small share of those its scaled counts estimate, and
/// the figures the test then checks are estimates.
fn ensure_sampled(report: &Value) -> Result<()> {
    let sampling = &report["sampling"];
    ensure!(sampling["mode"] == "bytes" && sampling["rate_bytes"].as_u64().is_some(), "not sampled: {sampling}");
    let kept = sampling["kept_allocs"].as_u64().context("no sampling.kept_allocs")?;
    let estimated: u64 = items(&report["sites"]).iter().filter_map(|s| s["alloc_count"].as_u64()).sum();
    ensure!(kept > 0 && kept * 4 < estimated, "kept {kept} allocations of an estimated {estimated}: no sampling?");
    Ok(())
}

#[test]
fn heap_leak_is_attributed_to_the_leaking_function() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    // 8 MiB/s for 7 s, then held until the memcg is removed.
    let run = trace_workload("heap_leak", &["8", "7", "120"], Some(512 * MIB), 8)?;
    let report = &run.report;
    ensure_sampled(report)?;
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
    Ok(())
}

#[test]
fn kernel_objects_held_by_leaked_pipes_are_traced_to_the_syscall() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let run = trace_workload("pipe_leak", &["200", "8", "120", "pipes"], Some(512 * MIB), 10)?;
    let report = &run.report;
    ensure_sampled(report)?;
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
    // The kernel memory the cgroup gained (slab, or kmem on v1) is what the slab and kernel-page sites hold.
    let coverage = report["attribution"]["slab"]["coverage"].as_f64();
    ensure!(
        coverage.is_some_and(|c| (0.7..=1.5).contains(&c)),
        "kernel-memory coverage {coverage:?} outside 0.7..1.5:\n{}",
        summarize(report)
    );
    Ok(())
}

#[test]
fn oom_kill_is_recorded_with_what_the_victim_held() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    // 16 MiB/s against a 48 MiB limit: killed after ~3 s; the workload gives up by itself after 30 s.
    let mut run = trace_workload("oom_leak", &["16", "30"], Some(48 * MIB), 10)?;
    let pid = run.workload.id();
    let status = wait_timeout(&mut run.workload, Duration::from_secs(30))?.context("the workload was never killed")?;
    ensure!(status.signal() == Some(libc::SIGKILL), "the workload ended with {status}, not SIGKILL");
    let report = &run.report;
    let kill = items(&report["oom_kills"])
        .first()
        .with_context(|| format!("no oom_kills in the report:\n{}", summarize(report)))?;
    ensure!(kill["pid"] == pid, "oom_kills[0] is {kill}, not the workload (pid {pid})");
    ensure!(
        items(&kill["sites_before_kill"]).iter().any(|site| has_frame(site, false, "grow_until_killed")),
        "no site before the kill names grow_until_killed: {}",
        kill["sites_before_kill"]
    );
    Ok(())
}

#[test]
fn churn_without_growth_is_not_reported_as_outstanding() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    // 100 MiB/s allocated and freed, for longer than the trace: hundreds of MiB pass, none stays. Every event is
    // recorded here: this is the one check of --record-all, whose counts are exact.
    let run = trace_workload_with("churn", &["100", "12", "0"], Some(512 * MIB), 7, &["--record-all"])?;
    let report = &run.report;
    ensure!(report["sampling"]["mode"] == "all", "--record-all did not record all: {}", report["sampling"]);
    let kept = report["sampling"]["kept_allocs"].as_u64().unwrap_or(0);
    let counted: u64 = items(&report["sites"]).iter().filter_map(|s| s["alloc_count"].as_u64()).sum();
    ensure!(kept >= counted, "sites count {counted} allocations, more than the {kept} recorded");
    let sites = items(&report["sites"]);
    let allocated: u64 = sites.iter().filter_map(|s| s["alloc_bytes"].as_u64()).sum();
    ensure!(
        allocated > 100 * MIB,
        "only {allocated} bytes allocated in total: was the churn traced?\n{}",
        summarize(report)
    );
    let held: Vec<&Value> =
        sites.iter().filter(|s| s["outstanding_bytes"].as_i64().is_some_and(|b| b > (4 * MIB) as i64)).collect();
    ensure!(held.is_empty(), "sites with > 4 MiB outstanding under pure churn:\n{}", summarize(report));
    Ok(())
}

/// Bad targets fail with a one-line `error:` and no panic; this needs no root (the target is resolved first).
#[test]
fn unknown_targets_are_rejected_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("out");
    let output = output.to_str().context("temp path is not UTF-8")?;
    for target in ["/nonexistent/x", "999999999999"] {
        let out = run_leaktrace(&["--cgroup", target, "--duration", "1", "--output", output], Duration::from_secs(30))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "--cgroup {target} succeeded: {}", describe(&out));
        ensure!(
            stderr.starts_with("error:"),
            "--cgroup {target}: stderr does not start with `error:`: {}",
            describe(&out)
        );
        ensure!(!stderr.contains("panicked"), "--cgroup {target} panicked: {}", describe(&out));
    }
    Ok(())
}
