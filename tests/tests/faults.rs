//! Reliability and safety: the real binary under faults (workloads exiting, the cgroup removed, OOM storms, process
//! storms, full maps, a second instance), stop signals at every phase, SIGKILL, bad input and its privileges.
//! leaktrace runs as root on production hosts during incidents: it must end with complete outputs or one `error:`
//! line, never harm the workload, never leave anything attached.
use std::{
    collections::HashSet,
    ffi::OsStr,
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use leaktrace_e2e::{
    assert_nothing_attached, bpf_object_ids, build_workload, describe, has_frame, held_bpf_objects, items,
    leaktrace_bin, read_report, require_root, run_leaktrace, serial, summarize, wait_timeout, Leaktrace, Memcg,
    SCENARIO_SAMPLE_BYTES,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// leaktrace with these arguments on `memcg`, writing into `out`; returns once attached.
fn start(memcg: &Memcg, out: &Path, extra: &[&str]) -> Result<Leaktrace> {
    let mut args = vec![OsStr::new("--cgroup"), memcg.path().as_os_str(), OsStr::new("--output"), out.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    let mut trace = Leaktrace::spawn(&args)?;
    trace.wait_attached(Duration::from_secs(15))?;
    Ok(trace)
}

fn signal(trace: &Leaktrace, sig: i32) {
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(trace.pid() as libc::pid_t, sig) };
}

/// Waits for a successful exit, checks nothing stayed attached and that the outputs are complete and private.
fn finished(trace: &mut Leaktrace, dir: &Path, timeout: Duration) -> Result<(Output, Value)> {
    let out = trace.wait(timeout)?;
    ensure!(out.status.success(), "leaktrace failed: {}", describe(&out));
    assert_nothing_attached()?;
    check_outputs(dir)?;
    let report = read_report(dir)?;
    eprintln!("ended_by {}; collection {}", report["window"]["ended_by"], report["collection"]);
    Ok((out, report))
}

/// Every output is there, 0600 in a 0700 directory, with no temporary file left over.
fn check_outputs(dir: &Path) -> Result<()> {
    let mode = |p: &Path| fs::symlink_metadata(p).map(|m| m.permissions().mode() & 0o777);
    ensure!(mode(dir)? == 0o700, "{} has mode {:o}", dir.display(), mode(dir)?);
    let names: Vec<String> = fs::read_dir(dir)?.flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    for name in ["report.json", "stacks.folded"] {
        ensure!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
    for name in &names {
        let path = dir.join(name);
        ensure!(!name.starts_with('.'), "leftover temporary file {name}");
        ensure!(fs::symlink_metadata(&path)?.is_file(), "{name} is not a regular file");
        ensure!(mode(&path)? == 0o600, "{name} has mode {:o}", mode(&path)?);
    }
    Ok(())
}

fn spawn_workload(memcg: &Memcg, name: &str, args: &[&str]) -> Result<std::process::Child> {
    let mut cmd = Command::new(build_workload(name)?);
    cmd.args(args);
    memcg.spawn_in(cmd)
}

fn shell_in(memcg: &Memcg, script: &str) -> Result<std::process::Child> {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    memcg.spawn_in(cmd)
}

fn pids_of_sites(report: &Value) -> HashSet<u64> {
    items(&report["sites"]).iter().flat_map(|s| items(&s["pids"])).filter_map(Value::as_u64).collect()
}

#[test]
fn workload_exiting_mid_trace_is_still_reported() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let memcg = Memcg::create("f-exit", Some(512 * MIB))?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let mut trace = start(&memcg, &out, &["--duration", "5"])?;
    // 8 MiB/s for 2 s, then it exits: the trace goes on without it.
    let mut workload = spawn_workload(&memcg, "heap_leak", &["8", "2", "0"])?;
    let pid = workload.id();
    ensure!(wait_timeout(&mut workload, Duration::from_secs(10))?.is_some_and(|s| s.success()), "workload failed");
    let (_, report) = finished(&mut trace, &out, Duration::from_secs(30))?;
    ensure!(report["window"]["ended_by"] == "duration elapsed", "ended by {}", report["window"]["ended_by"]);
    let site = items(&report["sites"])
        .iter()
        .find(|s| has_frame(s, false, "leak_heap_blocks"))
        .with_context(|| format!("the exited workload's site is not symbolized:\n{}", summarize(&report)))?;
    ensure!(items(&site["pids"]).contains(&Value::from(pid)), "site pids {} lack {pid}", site["pids"]);
    ensure!(site["alloc_bytes"].as_u64() >= Some(8 * MIB), "alloc_bytes {} < 8 MiB", site["alloc_bytes"]);
    Ok(())
}

#[test]
fn removing_the_cgroup_ends_the_trace_with_a_report() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let memcg = Memcg::create("f-rmdir", Some(512 * MIB))?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let mut trace = start(&memcg, &out, &["--duration", "120", "--interval", "0.5"])?;
    spawn_workload(&memcg, "heap_leak", &["8", "60", "60"])?;
    thread::sleep(Duration::from_secs(3));
    let removed = Instant::now();
    memcg.remove()?;
    let (_, report) = finished(&mut trace, &out, Duration::from_secs(20))?;
    let took = removed.elapsed();
    eprintln!("leaktrace ended {took:?} after the cgroup was removed");
    ensure!(took < Duration::from_secs(10), "leaktrace took {took:?} to notice the cgroup was removed");
    ensure!(
        report["window"]["ended_by"] == "the target cgroup was removed",
        "ended by {}",
        report["window"]["ended_by"]
    );
    ensure!(items(&report["memory"]["samples"]).len() >= 3, "samples: {}", report["memory"]["samples"]);
    ensure!(
        items(&report["sites"]).iter().any(|s| has_frame(s, false, "leak_heap_blocks")),
        "what was captured before the removal is missing:\n{}",
        summarize(&report)
    );
    Ok(())
}

#[test]
fn every_kill_of_an_oom_storm_is_recorded() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let exe = build_workload("oom_leak")?;
    let memcg = Memcg::create("f-oomstorm", Some(24 * MIB))?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let before = memcg.oom_kills()?;
    let mut trace = start(&memcg, &out, &["--duration", "120"])?;
    // A crash loop: each run hits the 24 MiB limit within half a second and is killed, and is started again by this
    // test, which stands for the restart policy's supervisor outside the limit (a supervising shell inside it can
    // be the OOM killer's pick while a victim is still being reaped).
    let started = Instant::now();
    for _ in 0..15 {
        let mut cmd = Command::new(&exe);
        cmd.args(["96", "20"]);
        let mut run = memcg.spawn_in(cmd)?;
        ensure!(wait_timeout(&mut run, Duration::from_secs(20))?.is_some(), "a run of the crash loop did not end");
    }
    let storm = started.elapsed();
    thread::sleep(Duration::from_millis(1500));
    signal(&trace, libc::SIGINT);
    let (_, report) = finished(&mut trace, &out, Duration::from_secs(60))?;
    let kernel_kills = memcg.oom_kills()? - before;
    let kills = items(&report["oom_kills"]);
    eprintln!(
        "{} kills in {storm:?} ({:.0}/min); kernel counted {kernel_kills}",
        kills.len(),
        kills.len() as f64 * 60.0 / storm.as_secs_f64()
    );
    ensure!(kernel_kills >= 10, "only {kernel_kills} OOM kills: no storm");
    ensure!(kills.len() as u64 == kernel_kills, "report has {} kills, kernel counted {kernel_kills}", kills.len());
    let pids: HashSet<u64> = kills.iter().filter_map(|k| k["pid"].as_u64()).collect();
    ensure!(pids.len() == kills.len(), "duplicate or missing victim pids: {}", report["oom_kills"]);
    ensure!(kills.iter().all(|k| k["comm"] == "oom_leak"), "victims: {}", report["oom_kills"]);
    ensure!(report["collection"]["ringbuf_drops"] == 0, "ring buffer drops: {}", report["collection"]);
    Ok(())
}

#[test]
fn thousands_of_short_lived_processes() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let memcg = Memcg::create("f-forks", Some(512 * MIB))?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    // A process here allocates ~1 MiB in all: at the default rate most would leave no sample, and this test is about
    // following thousands of pids, so it samples as finely as the scenarios do.
    let rate = ["--sample-bytes", SCENARIO_SAMPLE_BYTES];
    let mut trace = start(&memcg, &out, &[&["--duration", "120", "--interval", "0.2"][..], &rate].concat())?;
    let started = Instant::now();
    // Each process lives long enough for some to be caught by a scan (and symbolized) and most not.
    let mut storm = shell_in(&memcg, "for i in $(seq 2000); do /bin/true; done")?;
    ensure!(wait_timeout(&mut storm, Duration::from_secs(90))?.is_some_and(|s| s.success()), "the storm failed");
    eprintln!("2000 processes in {:?}", started.elapsed());
    signal(&trace, libc::SIGTERM);
    let (out_, report) = finished(&mut trace, &out, Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&out_.stderr);
    ensure!(!stderr.contains("Too many open files"), "descriptors ran out: {stderr}");
    let pids = pids_of_sites(&report);
    let c = &report["collection"];
    eprintln!(
        "{} distinct pids in sites; tracer peak RSS {} MiB",
        pids.len(),
        c["tracer_peak_rss_bytes"].as_u64().unwrap_or(0) >> 20
    );
    ensure!(pids.len() >= 1000, "only {} of 2000 processes seen in sites", pids.len());
    ensure!(c["tracer_peak_rss_bytes"].as_u64() < Some(400 * MIB), "tracer peak RSS {}", c["tracer_peak_rss_bytes"]);
    // Whatever the maps could not hold is said, in report.json and on the terminal.
    if c["site_map_full"].as_u64() > Some(0) {
        ensure!(String::from_utf8_lossy(&out_.stdout).contains("site_map_full"), "site_map_full not shown");
    }
    Ok(())
}

#[test]
fn full_maps_keep_working_and_say_what_was_dropped() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let memcg = Memcg::create("f-full", Some(512 * MIB))?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    // LIVE holds 1024 allocations (4 MiB of pages) and STACKS 64 stacks; the workload leaks 24 MiB.
    let mut trace =
        start(&memcg, &out, &["--duration", "5", "--record-all", "--max-tracked", "1024", "--stack-entries", "64"])?;
    spawn_workload(&memcg, "heap_leak", &["8", "3", "60"])?;
    let (output, report) = finished(&mut trace, &out, Duration::from_secs(30))?;
    let c = &report["collection"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    ensure!(n("live_map_full") > 0, "LIVE never filled: {c}");
    ensure!(
        n("stack_collisions_kernel") + n("stack_collisions_user") + n("stack_errors") > 0,
        "STACKS never filled: {c}"
    );
    ensure!(n("alloc_events") > 1000, "tracing stopped: {c}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        stdout.contains("not seen by the tracer") && stdout.contains("live_map_full"),
        "losses not shown: {stdout}"
    );
    ensure!(!items(&report["sites"]).is_empty(), "no sites");
    Ok(())
}

#[test]
fn two_instances_on_different_cgroups_stay_apart() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let (heap, pipe) = (Memcg::create("f-two-heap", Some(512 * MIB))?, Memcg::create("f-two-pipe", Some(512 * MIB))?);
    let dir = tempfile::tempdir()?;
    let (heap_out, pipe_out) = (dir.path().join("heap"), dir.path().join("pipe"));
    let mut heap_trace = start(&heap, &heap_out, &["--duration", "6"])?;
    let mut pipe_trace = start(&pipe, &pipe_out, &["--duration", "6"])?;
    let heap_pid = spawn_workload(&heap, "heap_leak", &["8", "4", "60"])?.id();
    let pipe_pid = spawn_workload(&pipe, "pipe_leak", &["200", "4", "60", "pipes"])?.id();
    let (_, heap_report) = finished(&mut heap_trace, &heap_out, Duration::from_secs(30))?;
    let (_, pipe_report) = finished(&mut pipe_trace, &pipe_out, Duration::from_secs(30))?;
    for (report, own, other, frame) in
        [(&heap_report, heap_pid, pipe_pid, "leak_heap_blocks"), (&pipe_report, pipe_pid, heap_pid, "leak_pipes")]
    {
        let pids = pids_of_sites(report);
        ensure!(pids.contains(&u64::from(own)), "own workload {own} missing: {pids:?}");
        ensure!(!pids.contains(&u64::from(other)), "the other cgroup's workload {other} leaked in: {pids:?}");
        ensure!(
            items(&report["sites"]).iter().any(|s| has_frame(s, false, frame)),
            "{frame} missing:\n{}",
            summarize(report)
        );
    }
    Ok(())
}

/// A stop signal while attaching, while tracing, and a volley of them while the outputs are written: every time the
/// outputs are complete and say how the window ended.
#[test]
fn stop_signals_at_every_phase_leave_complete_outputs() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let memcg = Memcg::create("f-signals", Some(512 * MIB))?;
    spawn_workload(&memcg, "heap_leak", &["2", "60", "60"])?;
    let dir = tempfile::tempdir()?;

    // While attaching: the output directory appears after the handlers are in place and before discovery.
    let out = dir.path().join("attach");
    let args = [OsStr::new("--cgroup"), memcg.path().as_os_str(), OsStr::new("--output"), out.as_os_str()];
    let mut trace = Leaktrace::spawn(&args)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    signal(&trace, libc::SIGINT);
    let (_, report) = finished(&mut trace, &out, Duration::from_secs(30))?;
    ensure!(report["window"]["ended_by"] == "interrupted (SIGINT) while attaching", "{}", report["window"]);

    // While tracing.
    let out = dir.path().join("tracing");
    let mut trace = start(&memcg, &out, &[])?;
    thread::sleep(Duration::from_secs(2));
    signal(&trace, libc::SIGTERM);
    let (_, report) = finished(&mut trace, &out, Duration::from_secs(30))?;
    ensure!(report["window"]["ended_by"] == "terminated (SIGTERM)", "{}", report["window"]);
    ensure!(report["window"]["seconds"].as_f64() >= Some(2.0), "{}", report["window"]);

    // While writing: SIGINT ends the window, then SIGINT and SIGTERM keep coming every few milliseconds until the
    // exit, through the final read of the maps, symbolization and writing.
    let out = dir.path().join("writing");
    let mut trace = start(&memcg, &out, &[])?;
    thread::sleep(Duration::from_secs(2));
    let pid = trace.pid() as libc::pid_t;
    let volley = thread::spawn(move || {
        let mut sent = 0;
        // SAFETY: plain syscalls; kill(pid, 0) only checks that the process still exists.
        while unsafe { libc::kill(pid, 0) } == 0 && sent < 5000 {
            unsafe { libc::kill(pid, if sent % 2 == 0 { libc::SIGINT } else { libc::SIGTERM }) };
            sent += 1;
            thread::sleep(Duration::from_millis(2));
        }
        sent
    });
    let (_, report) = finished(&mut trace, &out, Duration::from_secs(30))?;
    eprintln!("{} signals sent while stopping", volley.join().unwrap_or(0));
    // The first of them to reach the event loop names the ending.
    let ended_by = &report["window"]["ended_by"];
    ensure!(ended_by == "interrupted (SIGINT)" || ended_by == "terminated (SIGTERM)", "{}", report["window"]);
    ensure!(!items(&report["sites"]).is_empty(), "no sites after a 2 s trace of a leak");
    Ok(())
}

#[test]
fn sigkill_leaves_nothing_attached() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let memcg = Memcg::create("f-sigkill", None)?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let mut trace = start(&memcg, &out, &[])?;
    let (progs, links, maps) = held_bpf_objects(trace.pid());
    eprintln!("held: {} programs, {} links, {} maps", progs.len(), links.len(), maps.len());
    ensure!(progs.len() >= 6 && links.len() == progs.len() && !maps.is_empty(), "not attached? {progs:?} {links:?}");
    ensure!(bpf_object_ids("link")?.is_superset(&links), "bpftool does not list the links");
    signal(&trace, libc::SIGKILL);
    let out_ = trace.wait(Duration::from_secs(10))?;
    ensure!(out_.status.code().is_none(), "not killed: {}", describe(&out_));
    // The kernel frees programs, links and maps a moment after the last descriptor closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = (
            bpf_object_ids("prog")?.intersection(&progs).count(),
            bpf_object_ids("link")?.intersection(&links).count(),
            bpf_object_ids("map")?.intersection(&maps).count(),
        );
        if left == (0, 0, 0) {
            break;
        }
        ensure!(Instant::now() < deadline, "left in the kernel after SIGKILL (programs, links, maps): {left:?}");
        thread::sleep(Duration::from_millis(100));
    }
    assert_nothing_attached()?;
    // Nothing torn: a killed run writes nothing at all.
    ensure!(!out.join("report.json").exists(), "a report.json appeared after SIGKILL");
    Ok(())
}

/// Bad targets and options: one `error:` line, non-zero exit, within seconds. Runs without root too (as root the
/// target is resolved after the privilege check, which passes).
#[test]
fn bad_input_fails_fast_with_one_error_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let out = out.to_str().context("temp path is not UTF-8")?;
    let huge = "a/".repeat(60_000);
    let targets = [
        "",
        "   ",
        "\u{1}\u{1b}[2J",
        "docker/a\nb",
        "../../etc",
        "docker/../../../etc",
        "/sys/fs/cgroup/memory/../../../etc",
        "/etc/passwd",
        "/proc/self/root/etc",
        "/dev/null",
        "99999999999999999999999999",
        "-1",
        "0",
        "%s%n%x",
        huge.as_str(),
    ];
    for target in targets {
        expect_error(&["--cgroup", target, "--duration", "1", "--output", out], None)?;
    }
    for args in [
        &["--cgroup", "/sys/fs/cgroup/memory", "--duration", "-1"][..],
        &["--cgroup", "/sys/fs/cgroup/memory", "--duration", "nan"],
        &["--cgroup", "/sys/fs/cgroup/memory", "--interval", "0"],
        &["--cgroup", "/sys/fs/cgroup/memory", "--max-tracked", "1"],
        &["--cgroup", "/sys/fs/cgroup/memory", "--stack-entries", "99999999999"],
        &["--cgroup", "/sys/fs/cgroup/memory", "--heap", "--heap-budget", "0"],
        &["--cgroup", "/sys/fs/cgroup/memory", "--heap", "--heap-budget", "150"],
        &["--cgroup", "/sys/fs/cgroup/memory", "--heap-budget", "10"],
        &["--no-such-option"],
        &[],
    ] {
        expect_error(args, None)?;
    }
    ensure!(!Path::new(out).exists(), "a failed run created its output directory");
    Ok(())
}

/// Runs leaktrace (through `sh -c` when `shell` is given: a mount namespace set up first) and requires a quick
/// failure with exactly one `error:` line; returns that line.
fn expect_error(args: &[&str], shell: Option<&str>) -> Result<String> {
    let started = Instant::now();
    let out = match shell {
        None => run_leaktrace(args, Duration::from_secs(20))?,
        Some(setup) => {
            let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
            let script = format!("{setup} && exec {} {}", leaktrace_bin()?.display(), quoted.join(" "));
            Command::new("unshare").args(["-m", "sh", "-c", &script]).output()?
        }
    };
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown: String = format!("{args:?}").chars().take(200).collect();
    ensure!(!out.status.success() && out.status.code().is_some(), "{shown}: {}", describe(&out));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    // Progress lines may come first (a full disk is found at the end); clap adds a usage hint after its line.
    ensure!(errors.len() == 1, "{shown}: not one error line: {}", describe(&out));
    ensure!(!stderr.contains("panicked"), "{shown} panicked: {}", describe(&out));
    ensure!(took < Duration::from_secs(10), "{shown} took {took:?}");
    let line: String = errors[0].chars().take(300).collect();
    eprintln!("{shown}: {line}");
    Ok(errors[0].to_string())
}

#[test]
fn refuses_to_run_without_privileges() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let memcg = Memcg::create("f-unpriv", None)?;
    // The binary may sit in a directory the unprivileged user cannot reach: run a world-readable copy.
    let dir = tempfile::tempdir()?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    let bin = dir.path().join("leaktrace");
    fs::copy(leaktrace_bin()?, &bin)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let target = memcg.path().to_str().context("memcg path")?;
    let run = |setpriv: &[&str]| -> Result<Output> {
        Ok(Command::new("setpriv")
            .args(setpriv)
            .arg(&bin)
            .args(["--cgroup", target, "--duration", "1", "--output", "/tmp/leaktrace-f-unpriv-never"])
            .output()?)
    };
    let nobody = run(&["--reuid=65534", "--regid=65534", "--clear-groups"])?;
    let capless = run(&["--bounding-set=-sys_admin,-bpf,-perfmon", "--inh-caps=-all"])?;
    for (out, want) in [(&nobody, "must run as root"), (&capless, "without CAP_BPF and CAP_PERFMON")] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{}", stderr.trim());
        ensure!(!out.status.success() && stderr.starts_with("error:") && stderr.contains(want), "{}", describe(out));
        ensure!(stderr.lines().count() == 1, "more than one line: {}", describe(out));
    }
    ensure!(!Path::new("/tmp/leaktrace-f-unpriv-never").exists(), "an output directory was created");
    Ok(())
}

/// Unwritable, full and symlinked outputs, and a kernel without tracefs or BTF, each in a private mount namespace
/// (`unshare -m`): the host's mounts are never touched.
#[test]
fn bad_outputs_and_missing_kernel_features_fail_cleanly() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let memcg = Memcg::create("f-env", None)?;
    let target = memcg.path().to_str().context("memcg path")?.to_string();
    let dir = tempfile::tempdir()?;
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt)?;
    let m = mnt.display();
    let args = |output: &str| ["--cgroup", &target, "--duration", "1", "--output", output].map(str::to_string);
    let run = |output: &str, setup: &str| {
        let a = args(output);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        expect_error(&a, Some(setup))
    };

    let line = run(&format!("{m}/out"), &format!("mount -t tmpfs -o ro,size=64k none {m}"))?;
    ensure!(line.contains("Read-only file system"), "{line}");

    // Full: the directory can be made (the early write probe passes), the report cannot be written.
    let fill =
        format!("mount -t tmpfs -o size=64k none {m} && mkdir -m 700 {m}/out && (cat /dev/zero > {m}/fill || true)");
    let line = run(&format!("{m}/out"), &fill)?;
    ensure!(line.contains("No space left on device") || line.contains("not writable"), "{line}");

    let line = run(&format!("{m}/out"), &format!("mount -t tmpfs none {m} && ln -s /etc {m}/out"))?;
    ensure!(line.contains("symlink"), "{line}");
    let line = run("/etc/passwd", "true")?;
    ensure!(line.contains("not a directory"), "{line}");

    // No tracefs and no place to mount it: /sys/kernel hidden behind an empty read-only tmpfs.
    let out = format!("{}/out-tracefs", dir.path().display());
    let line = run(&out, "mount -t tmpfs -o ro none /sys/kernel")?;
    ensure!(line.contains("tracefs"), "{line}");
    let line = run(&out, "mount --bind /dev/null /sys/kernel/btf/vmlinux")?;
    ensure!(line.to_lowercase().contains("btf"), "{line}");
    Ok(())
}

/// tracefs unmounted (in a private mount namespace): leaktrace mounts it there and traces normally.
#[test]
fn mounts_tracefs_when_it_is_not_mounted() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let memcg = Memcg::create("f-tracefs", None)?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
         test ! -e /sys/kernel/tracing/events || exit 99; exec {} --cgroup {} --duration 1 --output {}",
        leaktrace_bin()?.display(),
        memcg.path().display(),
        out.display()
    );
    let run = Command::new("unshare").args(["-m", "sh", "-c", &script]).output()?;
    ensure!(run.status.success(), "{}", describe(&run));
    ensure!(Path::new("/sys/kernel/tracing/events").is_dir(), "the host's tracefs went away");
    check_outputs(&out)?;
    assert_nothing_attached()
}

/// A symlink planted where report.json goes is replaced, never followed; the network is never listened on; and a
/// workload whose binary exists only in its own mount namespace (as in a container) is still symbolized, because
/// its files are read through /proc/<pid>, not through the host's paths.
#[test]
fn writes_no_symlink_listens_nowhere_reads_container_files_through_proc() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let memcg = Memcg::create("f-security", Some(512 * MIB))?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    fs::create_dir(&out)?;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o700))?;
    let victim = dir.path().join("victim");
    fs::write(&victim, "untouched")?;
    std::os::unix::fs::symlink(&victim, out.join("report.json"))?;

    let private = dir.path().join("private");
    fs::create_dir(&private)?;
    let mut trace = start(&memcg, &out, &["--duration", "4"])?;
    let script = format!(
        "mount -t tmpfs none {p} && cp {exe} {p}/hidden_leak && exec {p}/hidden_leak 8 2 60",
        p = private.display(),
        exe = build_workload("heap_leak")?.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script]);
    memcg.spawn_in(cmd)?;
    thread::sleep(Duration::from_secs(1));
    let sockets = listening_or_inet_sockets(trace.pid())?;
    ensure!(sockets.is_empty(), "leaktrace has network or listening sockets: {sockets:?}");
    ensure!(fs::read_dir(&private)?.count() == 0, "the hidden binary is visible on the host");

    let (_, report) = finished(&mut trace, &out, Duration::from_secs(30))?;
    ensure!(fs::read_to_string(&victim)? == "untouched", "the symlink was followed");
    ensure!(fs::symlink_metadata(out.join("report.json"))?.is_file(), "report.json is not a regular file");
    ensure!(
        items(&report["sites"]).iter().any(|s| has_frame(s, false, "leak_heap_blocks")),
        "the workload in its own mount namespace was not symbolized:\n{}",
        summarize(&report)
    );
    Ok(())
}

/// The process's sockets that are internet sockets or listening unix sockets, by inode.
fn listening_or_inet_sockets(pid: u32) -> Result<Vec<String>> {
    let inodes: HashSet<u64> = fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect();
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let inode = line.split_whitespace().nth(9).and_then(|i| i.parse().ok());
            if inode.is_some_and(|i| inodes.contains(&i)) {
                found.push(format!("{table}: {line}"));
            }
        }
    }
    // unix: "Num RefCount Protocol Flags Type St Inode Path"; flag 0x10000 (__SO_ACCEPTCON) marks a listener.
    let unix = fs::read_to_string(format!("/proc/{pid}/net/unix"))?;
    for line in unix.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let listening = cols.get(3).and_then(|f| u64::from_str_radix(f, 16).ok()).is_some_and(|f| f & 0x10000 != 0);
        let inode = cols.get(6).and_then(|i| i.parse().ok());
        if listening && inode.is_some_and(|i| inodes.contains(&i)) {
            found.push(format!("unix: {line}"));
        }
    }
    Ok(found)
}
