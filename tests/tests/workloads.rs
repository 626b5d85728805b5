//! The e2e workloads do what the e2e tests assume, checked against the memcg's own accounting (no leaktrace).
//! Privileged: they need a memcg.
use std::{os::unix::process::ExitStatusExt, process::Command, thread, time::Duration};

use anyhow::{ensure, Context, Result};
use leaktrace_e2e::{build_workload, require_root, wait_timeout, Memcg};

const MIB: u64 = 1 << 20;

fn start(memcg: &Memcg, workload: &str, args: &[&str]) -> Result<std::process::Child> {
    let mut cmd = Command::new(build_workload(workload)?);
    cmd.args(args);
    memcg.spawn_in(cmd)
}

#[test]
fn heap_leak_grows_the_memcg_at_its_rate() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let memcg = Memcg::create("wl-heap", Some(256 * MIB))?;
    let mut child = start(&memcg, "heap_leak", &["32", "1", "30"])?;
    thread::sleep(Duration::from_millis(1500));
    let usage = memcg.usage()?;
    ensure!((28 * MIB..64 * MIB).contains(&usage), "usage {} MiB after leaking 32 MiB", usage / MIB);
    ensure!(memcg.pids() == [child.id()], "the workload is not (alone) in the memcg: {:?}", memcg.pids());
    child.kill()?;
    child.wait()?;
    Ok(())
}

#[test]
fn oom_leak_is_killed_by_a_48_mib_limit() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let memcg = Memcg::create("wl-oom", Some(48 * MIB))?;
    let mut child = start(&memcg, "oom_leak", &["32", "20"])?;
    let status = wait_timeout(&mut child, Duration::from_secs(25))?.context("oom_leak still runs")?;
    ensure!(status.signal() == Some(libc::SIGKILL), "oom_leak ended with {status}");
    Ok(())
}

#[test]
fn churn_keeps_usage_flat() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let memcg = Memcg::create("wl-churn", Some(256 * MIB))?;
    let mut child = start(&memcg, "churn", &["200", "2"])?;
    let mut peak = 0;
    while wait_timeout(&mut child, Duration::from_millis(100))?.is_none() {
        peak = peak.max(memcg.usage()?);
    }
    ensure!(peak < 16 * MIB, "usage peaked at {} MiB while churning 1 MiB blocks", peak / MIB);
    Ok(())
}

#[test]
fn pipe_leak_keeps_its_descriptors_open() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    for mode in ["pipes", "sockets"] {
        let memcg = Memcg::create("wl-pipe", Some(256 * MIB))?;
        let mut child = start(&memcg, "pipe_leak", &["400", "1", "30", mode])?;
        thread::sleep(Duration::from_millis(1500));
        let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id()))?.count();
        ensure!(fds > 600, "{mode}: only {fds} descriptors open after leaking ~400 pairs");
        child.kill()?;
        child.wait()?;
    }
    Ok(())
}

/// Dropping a memcg kills what still runs in it (even unwaited children) and removes it.
#[test]
fn memcg_cleans_up_after_itself() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let memcg = Memcg::create("wl-drop", None)?;
    let path = memcg.path().to_path_buf();
    ensure!(memcg.id()? > 1, "a fresh memcg has its own id");
    let _child = start(&memcg, "heap_leak", &["8", "1", "60"])?;
    drop(memcg);
    ensure!(!path.exists(), "{} still exists", path.display());
    Ok(())
}
