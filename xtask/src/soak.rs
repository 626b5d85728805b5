//! `cargo xtask soak`: traces a churning cgroup for minutes (outside CI) and prints, every interval, the tracer's
//! RSS and open descriptors and how many entries its kernel maps hold, so unbounded growth on either side shows.
//! The cgroup runs a slow heap leak (outstanding allocations that LIVE must hold), 1 MiB blocks allocated and
//! freed (map churn) and a loop of short-lived processes (per-process state in the tracer and in SITES).
use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use leaktrace_e2e::{build_workload, describe, read_report, Leaktrace, Memcg};
use serde_json::Value;

/// The kernel maps worth counting (arrays are always full and a ring buffer cannot be dumped).
const COUNTED_MAPS: &[&str] = &["LIVE", "SITES", "STACKS", "MEMCGS", "CACHE_NAMES", "VICTIMS"];

pub fn run(leaktrace: &std::path::Path, minutes: f64, every: Duration) -> Result<()> {
    ensure!(crate::bootstrap::is_root(), "the soak loads eBPF programs and makes cgroups: run it as root");
    let seconds = (minutes * 60.0).round() as u64;
    // The e2e helpers start the binary named here.
    std::env::set_var("LEAKTRACE_BIN", leaktrace);
    let memcg = Memcg::create("soak", Some(512 << 20))?;
    let dir = tempfile::tempdir()?;
    let mut trace = Leaktrace::spawn(&[
        OsStr::new("--cgroup"),
        memcg.path().as_os_str(),
        OsStr::new("--duration"),
        OsStr::new(&seconds.to_string()),
        OsStr::new("--output"),
        dir.path().as_os_str(),
    ])?;
    trace.wait_attached(Duration::from_secs(10))?;
    let pid = trace.pid();
    let mut leak = Command::new(build_workload("heap_leak")?);
    leak.args(["0.1", &seconds.to_string(), "30"]);
    let mut churn = Command::new(build_workload("churn")?);
    churn.args(["20", &seconds.to_string(), "0"]);
    let mut spawner = Command::new("sh");
    // ~20 processes a second, each allocating a little before it exits.
    spawner.args(["-c", "while :; do head -c 300000 /dev/zero | tail -c 1 >/dev/null; sleep 0.05; done"]);
    let _workloads = [memcg.spawn_in(leak)?, memcg.spawn_in(churn)?, memcg.spawn_in(spawner)?];

    println!("{:>6} {:>9} {:>5} {}", "t(s)", "rss(MiB)", "fds", COUNTED_MAPS.join(" "));
    let start = Instant::now();
    let mut rows = Vec::new();
    while start.elapsed().as_secs() < seconds {
        thread::sleep(every.min(Duration::from_secs(seconds.saturating_sub(start.elapsed().as_secs()).max(1))));
        let Some(rss) = rss_kib(pid) else { break };
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        let entries = map_entries(pid)?;
        let counts: Vec<String> =
            COUNTED_MAPS.iter().map(|m| entries.get(*m).map_or("-".into(), u64::to_string)).collect();
        println!("{:>6} {:>9.1} {:>5} {}", start.elapsed().as_secs(), rss as f64 / 1024.0, fds, counts.join(" "));
        rows.push((start.elapsed().as_secs(), rss));
    }
    let out = trace.wait(Duration::from_secs(120))?;
    ensure!(out.status.success(), "leaktrace failed: {}", describe(&out));
    let report = read_report(dir.path())?;
    println!("report.json collection: {}", report["collection"]);
    println!("sites in report: {}", report["sites"].as_array().map_or(0, Vec::len));
    verdict(&rows)
}

/// RSS must level off: the last reading may exceed the one at a quarter of the run by at most a half.
fn verdict(rows: &[(u64, u64)]) -> Result<()> {
    let (Some(&(_, early)), Some(&(_, last))) = (rows.get(rows.len() / 4), rows.last()) else {
        bail!("no readings: leaktrace ended early")
    };
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0);
    println!(
        "tracer RSS: {:.1} MiB at a quarter of the run, {:.1} MiB at the end, {:.1} MiB at most",
        early as f64 / 1024.0,
        last as f64 / 1024.0,
        max as f64 / 1024.0
    );
    ensure!(last <= early + early / 2, "the tracer's RSS kept growing ({early} KiB -> {last} KiB)");
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Entries of each counted map the process holds, by map name.
fn map_entries(pid: u32) -> Result<BTreeMap<String, u64>> {
    let mut ids: Vec<u64> = fs::read_dir(format!("/proc/{pid}/fdinfo"))?
        .flatten()
        .filter_map(|fd| fs::read_to_string(fd.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("map_id:"))?.trim().parse().ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = BTreeMap::new();
    for id in ids {
        // A map can go between the two reads when the trace ends: it is then left out.
        let Ok(show) = bpftool(&["map", "show", "id", &id.to_string()]) else { continue };
        let Some(name) = show["name"].as_str().filter(|n| COUNTED_MAPS.contains(n)) else { continue };
        let Ok(dump) = bpftool(&["map", "dump", "id", &id.to_string()]) else { continue };
        out.insert(name.to_string(), dump.as_array().map_or(0, |a| a.len() as u64));
    }
    Ok(out)
}

fn bpftool(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool").arg("-j").args(args).output().context("cannot run bpftool")?;
    ensure!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {args:?} printed no JSON"))
}
