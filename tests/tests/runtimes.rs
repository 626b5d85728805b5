//! Language runtimes as they come from Debian (python3, nodejs, OpenJDK 17's JRE, golang-go), each running a
//! service that leaks from a named function while its per-request scratch memory is garbage: `verdict.runtime`
//! names the runtime, and `verdict.location` tells the runtime's managed heap from the native memory beside it
//! (a Java direct buffer, a Node Buffer), with the runtime's own bound in the recommendations.
//!
//! `cargo xtask test --test runtimes -- --nocapture` prints each report's verdict.
use std::process::Command;

use anyhow::{ensure, Result};
use leaktrace_e2e::{build_workload, items, require_root, serial, summarize, trace_command, Traced};
use serde_json::Value;

fn workload(file: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads").join(file).display().to_string()
}

/// Traces `cmd` under a 1 GiB limit for 9 s and checks the verdict's runtime, location and runtime advice.
fn traced_as(name: &str, cmd: Command, runtime: &str, location: &str, advice: &str) -> Result<Traced> {
    let run = trace_command(name, cmd, Some(1 << 30), 9, &[], &[])?;
    let v = &run.report["verdict"];
    eprintln!("{name}: {v}");
    ensure!(v["class"] == "heap-leak", "not a heap leak:\n{}", summarize(&run.report));
    ensure!(v["runtime"] == runtime, "verdict.runtime {} is not {runtime}:\n{}", v["runtime"], summarize(&run.report));
    ensure!(
        v["location"] == location,
        "verdict.location {} is not {location}:\n{}",
        v["location"],
        summarize(&run.report)
    );
    let said = items(&v["recommendations"]).iter().filter_map(Value::as_str).any(|r| r.contains(advice));
    ensure!(said, "no recommendation with {advice:?}: {}", v["recommendations"]);
    Ok(run)
}

fn java(mode: &str) -> Command {
    let mut java = Command::new("java");
    java.args(["-Xmx512m", &workload("SessionBuffers.java"), mode, "40", "7", "120"]);
    java
}

#[test]
fn java_heap_leak_is_managed_heap() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    traced_as("java-heap", java("heap"), "jvm", "managed-heap", "-XX:+HeapDumpOnOutOfMemoryError").map(drop)
}

#[test]
fn java_direct_buffers_are_off_heap() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    traced_as("java-direct", java("direct"), "jvm", "off-heap", "-XX:MaxDirectMemorySize=").map(drop)
}

fn node(mode: &str, rate: &str) -> (Command, tempfile::TempDir) {
    let mut node = Command::new("node");
    // node writes its perf map's isolate log into its working directory: a scratch one.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    node.current_dir(scratch.path()).arg("--perf-basic-prof").arg(workload("response_cache.js"));
    node.args([rate, "7", "120", mode]);
    (node, scratch)
}

#[test]
fn node_buffers_are_off_heap_and_objects_managed_heap() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    for (mode, rate, location) in [("buffers", "160", "off-heap"), ("objects", "20", "managed-heap")] {
        let (cmd, _scratch) = node(mode, rate);
        let run = traced_as(&format!("node-{mode}"), cmd, "node", location, "--max-old-space-size=768")?;
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", run.workload.id()));
    }
    Ok(())
}

#[test]
fn python_objects_are_managed_heap() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let mut py = Command::new("/usr/bin/python3");
    py.args([&workload("session_store.py"), "40", "7", "120"]);
    traced_as("python", py, "python", "managed-heap", "tracemalloc").map(drop)
}

#[test]
fn go_heap_leak_is_managed_heap_in_the_leaking_function() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let mut go = Command::new(build_workload("store_sessions")?);
    go.args(["40", "7", "120"]);
    let run = traced_as("go", go, "go", "managed-heap", "GOMEMLIMIT=921MiB")?;
    let top = items(&run.report["sites"]).iter().find(|s| s["kind"] == "anon");
    let label = top.and_then(|s| s["label"].as_str()).unwrap_or_default();
    ensure!(label.contains("leakIntoStore"), "the top anon site is {label:?}:\n{}", summarize(&run.report));
    Ok(())
}
