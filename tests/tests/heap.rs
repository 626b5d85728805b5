//! `--heap` end to end: the allocator probed in every process of the target, on ordinary programs (tests/workloads,
//! -O2 -g, calls through libc). Each leaking workload must have its holder as the top `heap` site, whoever first
//! touched the pages; a busy heap that keeps nothing shows no heap site; a process the probes would slow down
//! past the budget is detached and the report says so; a SIGKILL of leaktrace leaves no uprobe behind.
//!
//! `cargo xtask test --test heap -- --nocapture` prints each report's top anon site (the toucher) beside its top
//! heap site (the holder).
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use leaktrace_e2e::{
    build_workload, items, require_root, scenario_test,
    scenarios::{self, Scenario, HEAP_HOLDER, SESSION_CACHE, SESSION_STORE},
    serial, summarize, trace_workload_with, Leaktrace, Memcg,
};
use serde_json::Value;

/// The request loop whose freed render buffer the allocator hands to the leaking session cache.
#[test]
fn holder_of_reused_heap_memory_is_named_not_the_toucher() -> Result<()> {
    scenario_test(&HEAP_HOLDER, &[], |report| {
        let anon = items(&report["sites"]).iter().find(|s| s["kind"] == "anon").and_then(|s| s["label"].as_str());
        ensure!(anon == Some("render_response"), "the pages' first toucher should be render_response: {anon:?}");
        let evidence = report["verdict"]["evidence"].to_string();
        ensure!(evidence.contains("first touched by render_response"), "the verdict joins both views: {evidence}");
        Ok(())
    })
}

/// A scenario of the unwinding tests under `--heap`: the same leaking function, now as the holder.
fn held_by(scenario: &Scenario, chain: &'static [&'static [&'static str]]) -> Result<()> {
    held_by_in(scenario, chain, "libc.so")
}

/// `held_by`, the allocator probed being the object named `allocator`.
fn held_by_in(scenario: &Scenario, chain: &'static [&'static [&'static str]], allocator: &str) -> Result<()> {
    let heap = Scenario { leaktrace_args: &["--heap"], check: |_| Ok(None), ..*scenario };
    scenario_test(&heap, &[], |report| {
        scenarios::check_heap_holder(report, chain)?;
        let probed: Vec<&str> =
            items(&report["collection"]["heap"]["processes"]).iter().filter_map(|p| p["allocator"].as_str()).collect();
        ensure!(probed.iter().any(|a| a.contains(allocator)), "{allocator} was not probed: {probed:?}");
        Ok(())
    })
}

#[test]
fn cxx_method_leaking_through_new_holds_the_heap() -> Result<()> {
    held_by(&SESSION_STORE, &[&["SessionStore::remember"], &["handle_request"], &["main"]])
}

#[test]
fn leak_inside_a_shared_library_holds_the_heap() -> Result<()> {
    held_by(&SESSION_CACHE, &[&["cache_store"], &["handle_request"], &["main"]])
}

#[test]
fn four_threads_leaking_from_their_arenas() -> Result<()> {
    let threads = Scenario { name: "thread-arenas", workload: "thread_arenas", ..HEAP_HOLDER };
    held_by(&threads, &[&["keep_result"], &["run_job"]])
}

/// jemalloc linked in: its malloc is the one the program binds to, and the one probed.
#[test]
fn program_linked_with_jemalloc() -> Result<()> {
    let jemalloc = Scenario { name: "jemalloc", workload: "render_sessions_jemalloc", ..HEAP_HOLDER };
    held_by_in(&jemalloc, &[&["remember_session"], &["handle_request"], &["main"]], "libjemalloc")
}

/// OOM-killed under `--heap`: the flight recorder's picture before the kill has the holder as a heap site, the
/// victim's heap is settled at its death (freed by the kill), and every export shows it under a `[heap]` root.
#[test]
fn heap_before_the_oom_kill_in_every_export() -> Result<()> {
    let oom = Scenario {
        name: "heap-oom",
        args: &["16", "30", "120"],
        check: |report| {
            let kill =
                items(&report["oom_kills"]).first().with_context(|| format!("no kill:\n{}", summarize(report)))?;
            let before = items(&kill["sites_before_kill"]);
            let heap = before.iter().find(|s| s["kind"] == "heap").context("no heap site before the kill")?;
            ensure!(heap["label"] == "remember_session", "held before the kill: {heap}");
            let grew = items(&kill["grew_before_kill"]).first().context("no flight recorder span")?;
            ensure!(
                items(&grew["sites"]).iter().any(|s| s["kind"] == "heap"),
                "no heap growth before the kill: {grew}"
            );
            let after: i64 = items(&report["sites"])
                .iter()
                .filter(|s| s["kind"] == "heap")
                .filter_map(|s| s["outstanding_bytes"].as_i64())
                .sum();
            ensure!(after < 1 << 20, "the victim's heap ({after} bytes) outlived it");
            Ok(None)
        },
        ..scenarios::OOM_KILL
    };
    let oom = Scenario { workload: "render_sessions", leaktrace_args: &["--heap"], ..oom };
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let run = leaktrace_e2e::run_scenario(&oom, &[])?;
    let dir = run.output_dir();
    let folded = std::fs::read_to_string(dir.join("stacks.folded"))?;
    ensure!(
        folded.lines().any(|l| l.starts_with("[heap]") && l.contains("remember_session")),
        "stacks.folded:\n{folded}"
    );
    let svg = std::fs::read_to_string(dir.join("flamegraph.svg"))?;
    ensure!(svg.contains("[heap]"), "no [heap] root in flamegraph.svg");
    Ok(())
}

/// Processes that fork, exec and exit mid-trace: a shell runs one leaking life to its end, then execs a second.
/// Both lives are probed as they start (the second in the shell's process, after its exec), the first one's heap
/// is settled at its exit, and each keeps running to its own end.
#[test]
fn lives_that_fork_exec_and_exit_mid_trace() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let exe = build_workload("render_sessions")?;
    let mut sh = std::process::Command::new("sh");
    let script = format!("{0} 8 2 0 && exec {0} 8 5 120", exe.display());
    sh.args(["-c", &script]);
    let run = leaktrace_e2e::trace_command("heap-lives", sh, Some(512 << 20), 10, &["--heap"], &[])?;
    let r = &run.report;
    let lives: Vec<&Value> =
        items(&r["collection"]["heap"]["processes"]).iter().filter(|p| p["comm"] == "render_sessions").collect();
    let states: Vec<&str> = lives.iter().filter_map(|p| p["state"].as_str()).collect();
    ensure!(states.contains(&"exited") && states.contains(&"traced"), "both lives probed: {lives:?}");
    ensure!(lives.iter().all(|p| p["attached_at"].as_f64() < Some(4.0)), "a life was probed late: {lives:?}");
    // The verdict is about the lives' sawtooth; the sites must hold the living one's heap only.
    let top = items(&r["sites"]).iter().find(|s| s["kind"] == "heap").context("no heap site")?;
    ensure!(top["label"] == "remember_session", "top heap site: {top}");
    let coverage = r["attribution"]["heap"]["coverage"].as_f64();
    ensure!(coverage.is_some_and(|c| (0.7..=1.5).contains(&c)), "heap coverage {coverage:?}:\n{}", summarize(r));
    Ok(())
}

/// A process the tracer finds between its exec and the dynamic linker's mapping of libc (held there, stopped
/// under ptrace at the exec, past the wait for a spawned process): reported as not traced first, then probed once
/// it maps its allocator, and its holder named.
#[test]
fn process_met_before_its_allocator_is_mapped_is_probed_once_it_is() -> Result<()> {
    use std::os::unix::process::CommandExt;
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let memcg = Memcg::create("heap-late-libc", Some(512 << 20))?;
    let mut cmd = std::process::Command::new(build_workload("render_sessions")?);
    cmd.args(["8", "7", "120"]);
    // SAFETY: a raw syscall between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut workload = memcg.spawn_in(cmd)?;
    let pid = workload.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: waits for our own child's stop at its exec (SIGTRAP).
    let stopped = unsafe { libc::waitpid(pid, &mut status, 0) } == pid && libc::WIFSTOPPED(status);
    ensure!(stopped, "the workload did not stop at its exec (status {status:#x})");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    ensure!(!maps.contains("libc.so"), "libc is mapped at the exec stop already:\n{maps}");
    let dir = tempfile::tempdir()?;
    let mut trace = Leaktrace::trace_with(&memcg, 9, dir.path(), &["--heap"], &[])?;
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: lets our own tracee go on.
    ensure!(unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) } == 0, "cannot release the workload");
    let out = trace.wait(Duration::from_secs(40))?;
    ensure!(out.status.success(), "leaktrace failed: {}", leaktrace_e2e::describe(&out));
    leaktrace_e2e::assert_nothing_attached()?;
    let r = leaktrace_e2e::read_report(dir.path())?;
    eprintln!("{}\n{}", r["collection"]["heap"], summarize(&r));
    let p = heap_process(&r, "render_sessions")?;
    ensure!(p["state"] == "traced", "never probed once libc was mapped: {p}");
    ensure!(p["attached_at"].as_f64().is_some_and(|t| t > 2.0), "probed before it was released: {p}");
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(said.contains("is not heap-traced") && said.contains("heap probes on pid"), "the terminal:\n{said}");
    let top = items(&r["sites"]).iter().find(|s| s["kind"] == "heap").context("no heap site")?;
    ensure!(top["label"] == "remember_session", "top heap site: {top}");
    ensure!(workload.try_wait()?.is_none(), "the workload did not survive");
    let _ = workload.kill();
    let _ = workload.wait();
    Ok(())
}

/// C++ linked with jemalloc, whose own `operator new` (not libstdc++'s) the program binds to: probed in jemalloc,
/// as a call that may call malloc on the way.
#[test]
fn cxx_with_jemalloc_operator_new() -> Result<()> {
    let jemalloc = Scenario { name: "store-jemalloc", workload: "session_store_jemalloc", ..SESSION_STORE };
    held_by_in(&jemalloc, &[&["SessionStore::remember"], &["handle_request"], &["main"]], "libjemalloc")
}

fn heap_process<'a>(report: &'a Value, comm: &str) -> Result<&'a Value> {
    items(&report["collection"]["heap"]["processes"])
        .iter()
        .find(|p| p["comm"] == comm)
        .with_context(|| format!("{comm} is not in collection.heap: {}", report["collection"]["heap"]))
}

/// Thousands of malloc, realloc and free a second, nothing kept: no heap site holds more than noise, and the
/// process stays probed (a budget of 100 %) with its hits counted.
#[test]
fn busy_heap_that_keeps_nothing_has_no_heap_site() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let run = trace_workload_with(
        "request_churn",
        &["300", "7", "120"],
        Some(256 << 20),
        8,
        &["--heap", "--heap-budget", "100"],
        &[],
    )?;
    let r = &run.report;
    let p = heap_process(r, "request_churn")?;
    ensure!(p["state"] == "traced" && p["hits"].as_u64() > Some(10_000), "the churn was not probed: {p}");
    let held: i64 =
        items(&r["sites"]).iter().filter(|s| s["kind"] == "heap").filter_map(|s| s["outstanding_bytes"].as_i64()).sum();
    ensure!(held.abs() < 2 << 20, "the heap sites hold {held} bytes of a heap that keeps nothing:\n{}", summarize(r));
    Ok(())
}

/// A tight malloc/free loop under the default budget: the probes would take most of its CPU time, so they come
/// off after the first interval; the terminal and the report say so, and the loop then runs at full speed.
#[test]
fn process_over_the_budget_is_detached() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let run = trace_workload_with("bench_churn", &["malloc", "6"], Some(256 << 20), 7, &["--heap"], &[])?;
    let r = &run.report;
    let p = heap_process(r, "bench_churn")?;
    ensure!(p["state"] == "over-budget", "the malloc loop was not detached: {p}");
    ensure!(p["detached_at"].as_f64().is_some_and(|t| t < 4.0), "detached late: {p}");
    ensure!(p["note"].as_str().is_some_and(|n| n.contains("--heap-budget")), "no reason given: {p}");
    let said = String::from_utf8_lossy(&run.output.stderr);
    ensure!(said.contains("heap probes detached from pid"), "the terminal does not say so:\n{said}");
    eprintln!("over budget: {p}");
    Ok(())
}

/// The uprobes are perf events owned by leaktrace's descriptors: a SIGKILL closes them, and with them every
/// probe in the traced process: none is listed by bpftool, and no program stays loaded (a probe left behind would
/// hold its program). The traced process goes on unharmed.
#[test]
fn sigkill_of_leaktrace_leaves_no_uprobe() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let memcg = Memcg::create("heap-kill", Some(256 << 20))?;
    let dir = tempfile::tempdir()?;
    let mut trace = Leaktrace::trace_with(&memcg, 60, dir.path(), &["--heap"], &[])?;
    let mut cmd = std::process::Command::new(build_workload("request_churn")?);
    cmd.args(["200", "30", "0"]);
    let mut workload = memcg.spawn_in(cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while heap_uprobes(Some(trace.pid()))?.is_empty() {
        ensure!(Instant::now() < deadline, "no heap uprobe ever showed up in bpftool perf list");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(trace.pid() as libc::pid_t, libc::SIGKILL) };
    let _ = trace.wait(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = heap_uprobes(None)?;
        if left.is_empty() {
            break;
        }
        ensure!(Instant::now() < deadline, "uprobes left after SIGKILL: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    leaktrace_e2e::assert_nothing_attached()?;
    ensure!(workload.try_wait()?.is_none(), "the traced process did not survive");
    let _ = workload.kill();
    Ok(())
}

/// The heap uprobes (`bpftool perf list`: perf events a process holds, with their program) that process
/// `holder` holds, or any process when `None`.
fn heap_uprobes(holder: Option<u32>) -> Result<Vec<String>> {
    let json = |args: &[&str]| -> Result<Value> {
        let out = std::process::Command::new("bpftool").args(args).output().context("cannot run bpftool")?;
        ensure!(out.status.success(), "bpftool {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    };
    let (perf, progs) = (json(&["-j", "perf", "list"])?, json(&["-j", "prog", "show"])?);
    let name = |id: &Value| items(&progs).iter().find(|p| &p["id"] == id).and_then(|p| p["name"].as_str());
    Ok(items(&perf)
        .iter()
        .filter(|e| holder.is_none_or(|pid| e["pid"].as_u64() == Some(u64::from(pid))))
        .filter_map(|e| Some(format!("{} {} {}", name(&e["prog_id"])?, e["filename"], e["offset"])))
        .filter(|p| p.starts_with("lt_heap"))
        .collect())
}
