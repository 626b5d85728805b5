//! End to end: the real leaktrace binary traces real C workloads in memcgs made for each test, and report.json must
//! name the functions that leak. Privileged tests skip without root (and fail under CI=true); each one also checks
//! that leaktrace left no program in the kernel.
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use leaktrace_e2e::{
    assert_nothing_attached, build_workload, describe, items, read_report, require_root, run_leaktrace, scenario_test,
    scenarios, serial, summarize, trace_workload_with,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

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
    scenario_test(&scenarios::HEAP_LEAK, &[], ensure_sampled)
}

#[test]
fn kernel_objects_held_by_leaked_pipes_are_traced_to_the_syscall() -> Result<()> {
    scenario_test(&scenarios::PIPE_LEAK, &[], ensure_sampled)
}

#[test]
fn oom_kill_is_recorded_with_what_the_victim_held() -> Result<()> {
    scenario_test(&scenarios::OOM_KILL, &[], |_| Ok(()))
}

/// Sampled mode tells anon pages by their gfp flags (as kernels before the memcg tracepoints must); --record-all
/// by the memcg's anon charge where the kernel has it. Both must attribute the heap leak alike.
#[test]
fn heap_leak_is_attributed_by_memcg_charges_when_recording_all() -> Result<()> {
    scenario_test(&scenarios::HEAP_LEAK, &["--record-all"], |report| {
        let modes = &report["kernel"]["modes"];
        let event = "events/memcg/mod_memcg_lruvec_state";
        let charges = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .any(|t| std::path::Path::new(t).join(event).exists());
        let want = if charges { "memcg-anon-charges" } else { "gfp-anon" };
        ensure!(items(modes).iter().any(|m| m == want), "modes {modes} lack {want}");
        ensure!(report["sampling"]["mode"] == "all", "sampled: {}", report["sampling"]);
        Ok(())
    })
}

#[test]
fn churn_without_growth_is_not_reported_as_outstanding() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    // 100 MiB/s allocated and freed, for longer than the trace: hundreds of MiB pass, none stays. Every event is
    // recorded here: this is the one check of --record-all, whose counts are exact.
    let run = trace_workload_with("churn", &["100", "12", "0"], Some(512 * MIB), 7, &["--record-all"], &[])?;
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

/// A reader that falls behind meets thinning, not loss. A page churner beside the session-heap leak in one cgroup
/// sends ~30,000 samples a second at the scenarios' rate; leaktrace is stopped (SIGSTOP) for 300 ms at a time, as a
/// tracer descheduled on a busy node, so its ring fills. The kept allocations are thinned while it does, and the
/// leak is still attributed (unbiased) with its whole call chain, where a full ring loses the user frames.
#[test]
fn a_reader_behind_thins_the_samples_instead_of_losing_them() -> Result<()> {
    use leaktrace_e2e::{Leaktrace, Memcg};
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let (churn, leak) = (build_workload("bench_churn")?, build_workload(scenarios::SESSION_HEAP.workload)?);
    let mut both = std::process::Command::new("sh");
    let args = scenarios::SESSION_HEAP.args.join(" ");
    both.arg("-c").arg(format!("{} page 9 >/dev/null & exec {} {args}", churn.display(), leak.display()));
    let memcg = Memcg::create("thinning", Some(512 * MIB))?;
    let dir = tempfile::tempdir()?;
    let mut trace = Leaktrace::trace_with(&memcg, 8, dir.path(), &[], &[])?;
    let _workload = memcg.spawn_in(both)?;
    let pid = trace.pid() as libc::pid_t;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: plain syscalls on our own child; it is always continued.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    let out = trace.wait(Duration::from_secs(40))?;
    ensure!(out.status.success(), "leaktrace failed: {}", describe(&out));
    assert_nothing_attached()?;
    let report = read_report(dir.path())?;
    let unwind = &report["collection"]["unwind"];
    eprintln!("{}\n{}", report["collection"], summarize(&report));
    let n = |key: &str| unwind[key].as_u64().unwrap_or(0);
    ensure!(n("thinned") > 0, "nothing thinned: the ring never filled? {unwind}");
    ensure!(n("lost_ring_full") * 100 <= n("samples"), "over 1 % of the samples lost to a full ring: {unwind}");
    (scenarios::SESSION_HEAP.check)(&report)?;
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

/// The README's first command: `leaktrace demo` leaks in a memcg of its own until the OOM killer ends it, names the
/// leaking function before the kill, writes every output and removes its cgroup.
#[test]
fn demo_runs_through_its_oom_kill_and_cleans_up() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("demo");
    let run = run_leaktrace(
        &["demo", "--quiet", "--output", out.to_str().context("temp path is not UTF-8")?],
        Duration::from_secs(90),
    )?;
    ensure!(run.status.success(), "demo failed: {}", describe(&run));
    assert_nothing_attached()?;
    for file in
        ["report.json", "stacks.folded", "flamegraph.svg", "flamegraph-oom-1.svg", "profile.pb.gz", "report.html"]
    {
        ensure!(out.join(file).is_file(), "demo wrote no {file}");
    }
    let report = read_report(&out)?;
    let kill = items(&report["oom_kills"]).first().context("the demo recorded no OOM kill")?;
    let top = items(&kill["sites_before_kill"]).first().context("no sites before the kill")?;
    ensure!(
        leaktrace_e2e::has_frame(top, false, "demo_leak_cache_entries"),
        "the top site before the kill misses demo_leak_cache_entries:\n{}",
        summarize(&report)
    );
    let cgroup = report["target"]["cgroup_path"].as_str().context("no cgroup_path")?;
    ensure!(!std::path::Path::new(cgroup).exists(), "the demo left its cgroup {cgroup}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    ensure!(stderr.contains("report.html"), "the demo does not say what to open: {stderr}");
    Ok(())
}
