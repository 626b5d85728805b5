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
    traced_with(name, cmd, &[], runtime, location, advice)
}

fn traced_with(
    name: &str,
    cmd: Command,
    leaktrace_args: &[&str],
    runtime: &str,
    location: &str,
    advice: &str,
) -> Result<Traced> {
    let run = trace_command(name, cmd, Some(1 << 30), 9, leaktrace_args, &[])?;
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

/// SessionBuffers in `mode` at 40 sessions of 256 KiB a second, or as `more` arguments say.
fn java(mode: &str, more: &[&str]) -> Command {
    let mut java = Command::new("java");
    java.args(["-Xmx512m", &workload("SessionBuffers.java"), mode]);
    java.args(if more.is_empty() { &["40", "7", "120"] } else { more });
    java
}

#[test]
fn java_heap_leak_is_managed_heap() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    traced_as("java-heap", java("heap", &[]), "jvm", "managed-heap", "--jvm-heap").map(drop)
}

#[test]
fn java_direct_buffers_are_off_heap() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    traced_as("java-direct", java("direct", &[]), "jvm", "off-heap", "-XX:MaxDirectMemorySize=").map(drop)
}

/// Asked for a perf map, the JVM names its compiled methods: the site's frames then name the Java code that keeps
/// the buffers, and its label is that code, not the JVM's `Unsafe_SetMemory0`.
#[test]
fn java_methods_are_named_with_jvm_perfmap() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    // A service's rate (2000 sessions of 8 KiB a second): its methods get compiled within the first second.
    let java = java("direct", &["2000", "7", "120", "8"]);
    let run = traced_with("java-perfmap", java, &["--jvm-perfmap"], "jvm", "off-heap", "MaxDirectMemorySize")?;
    let c = &run.report["collection"]["jvm_perfmaps"];
    ensure!(items(c).iter().any(|j| j["written"].as_u64() > Some(0)), "no JVM wrote a perf map: {c}");
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    ensure!(stderr.contains("--jvm-perfmap: JVM pid"), "leaktrace did not say it asked the JVM:\n{stderr}");
    // HotSpot names a method with its return type: `void SessionBuffers.handleRequest(boolean, int)`. Code that
    // lived between two asks (a method's first compilation, replaced within a second) stays unnamed: most of the
    // leak, not all of it, is named.
    let anon: Vec<&Value> = items(&run.report["sites"]).iter().filter(|s| s["kind"] == "anon").take(5).collect();
    let java = |s: &Value| s["label"].as_str().is_some_and(|l| l.contains(" SessionBuffers."));
    let held = |keep: &dyn Fn(&Value) -> bool| -> u64 {
        anon.iter().filter(|s| keep(s)).filter_map(|s| s["outstanding_bytes"].as_u64()).sum()
    };
    let (named, all) = (held(&java), held(&|_| true));
    for s in &anon {
        let frames: Vec<&str> =
            items(&s["frames"]).iter().filter_map(|f| f["symbol"].as_str().or(f["address"].as_str())).collect();
        eprintln!("java-perfmap anon site {} {}:\n  {}", s["outstanding_bytes"], s["label"], frames.join("\n  "));
    }
    ensure!(
        named * 2 > all,
        "sites labelled with the Java code hold {named} of the top anon sites' {all} bytes:\n{}",
        summarize(&run.report)
    );
    Ok(())
}

/// A JVM is never harmed by being asked: under -Xrs its attach listener starts with it (a SIGQUIT would kill it,
/// and it gets none); with -Xrs and the attach mechanism disabled it is not asked; with the mechanism disabled
/// alone it gets one SIGQUIT (its thread dump goes to its output once), never one per ask.
#[test]
fn jvms_are_not_harmed_by_being_asked_for_a_perf_map() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let cases: [(&[&str], Option<&str>); 3] = [
        (&["-Xrs"], None),
        (&["-Xrs", "-XX:+DisableAttachMechanism"], Some("does not handle SIGQUIT")),
        (&["-XX:+DisableAttachMechanism"], Some("did not start")),
    ];
    for (flags, refused) in cases {
        let mut java = Command::new("java");
        java.args(flags).args(["-Xmx512m", &workload("SessionBuffers.java"), "direct", "40", "7", "120"]);
        java.stdout(std::process::Stdio::piped());
        let mut run = trace_command("java-asked", java, Some(1 << 30), 7, &["--jvm-perfmap"], &[])?;
        ensure!(run.workload.try_wait()?.is_none(), "{flags:?}: the JVM died: {:?}", run.workload.try_wait());
        let asked = &run.report["collection"]["jvm_perfmaps"];
        let j = items(asked).first().cloned().unwrap_or_default();
        let error = j["last_error"].as_str().unwrap_or_default();
        let answered = match refused {
            None => j["written"].as_u64() > Some(0),
            Some(why) => j["written"] == 0 && j["requests"].as_u64() > Some(1) && error.contains(why),
        };
        ensure!(answered, "{flags:?}: {asked}");
        let _ = run.workload.kill();
        let out = run.workload.wait_with_output()?;
        let dumps = String::from_utf8_lossy(&out.stdout).matches("Full thread dump").count();
        ensure!(dumps <= 1, "{flags:?}: {dumps} thread dumps in the JVM's output");
    }
    Ok(())
}

fn node(mode: &str, rate: &str, secs: &str, flags: &[&str]) -> (Command, tempfile::TempDir) {
    let mut node = Command::new("node");
    // node writes its perf map's isolate log into its working directory: a scratch one.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    node.current_dir(scratch.path()).arg("--perf-basic-prof").args(flags).arg(workload("response_cache.js"));
    node.args([rate, secs, "120", mode]);
    (node, scratch)
}

#[test]
fn node_buffers_are_off_heap_and_objects_managed_heap() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    for (mode, rate, location) in [("buffers", "160", "off-heap"), ("objects", "20", "managed-heap")] {
        let (cmd, _scratch) = node(mode, rate, "7", &[]);
        let run = traced_as(&format!("node-{mode}"), cmd, "node", location, "--max-old-space-size=768")?;
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", run.workload.id()));
        // A Buffer's bytes are filled by the JS function that makes it: its perf-map frame, not V8's fill, labels
        // the site. (An object's pages are touched by V8's collector as it promotes them: no JS frame there.)
        if mode == "buffers" {
            let top = items(&run.report["sites"]).iter().find(|s| s["kind"] == "anon").cloned().unwrap_or_default();
            let label = top["label"].as_str().unwrap_or_default();
            ensure!(
                label.contains("cacheResponseBuffer"),
                "the top anon site is {label:?}:\n{}",
                summarize(&run.report)
            );
        }
    }
    Ok(())
}

/// With --node-heap, V8's sampling heap profiler names the JS function whose objects stay (no page fault does:
/// V8's collector touches their pages), and a Buffer leak, outside V8's heap, stays off-heap. The inspector
/// leaktrace opened is closed again and node runs on.
#[test]
fn node_heap_names_the_js_function_holding_objects() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    for (mode, rate, location) in [("objects", "20", "managed-heap"), ("buffers", "160", "off-heap")] {
        let (cmd, _scratch) = node(mode, rate, "7", &[]);
        let name = format!("node-heap-{mode}");
        let mut run = traced_with(&name, cmd, &["--node-heap"], "node", location, "--max-old-space-size=768")?;
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", run.workload.id()));
        let stats = &run.report["collection"]["node_heaps"];
        eprintln!("{name}: collection.node_heaps {stats}");
        let profiled = items(stats).first().cloned().unwrap_or_default();
        ensure!(
            profiled["inspector"] == "opened" && profiled["profiles"].as_u64() > Some(2),
            "node's heap was not profiled: {stats}"
        );
        let (top, frames) = top_heap_site(&name, &run.report);
        if mode == "objects" {
            let label = top["label"].as_str().unwrap_or_default();
            ensure!(label == "cacheResponseObject", "the top heap site is {label:?}:\n{}", summarize(&run.report));
            // Below V8's builtins (`padEnd`), the function and its caller.
            let at = frames.iter().position(|f| f == "cacheResponseObject:16");
            ensure!(
                at.and_then(|i| frames.get(i + 1)).is_some_and(|f| f.starts_with("handleRequest:")),
                "the top heap site's frames are {frames:?}"
            );
        }
        ensure!(run.workload.try_wait()?.is_none(), "node did not run on after the trace");
        let tcp = std::fs::read_to_string(format!("/proc/{}/net/tcp", run.workload.id()))?;
        ensure!(
            !tcp.lines()
                .any(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(":240D")) && l.contains(" 0A ")),
            "node's inspector still listens after the trace:\n{tcp}"
        );
    }
    Ok(())
}

/// `--jvm-heap`: JFR's old-object sampler names the Java method whose arrays stay (page faults name the
/// collector's promotion). The JVM runs on, with no leaktrace recording left in it and no dump left in its /tmp.
#[test]
fn jvm_heap_names_the_java_method_holding_objects() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let mut run = traced_with(
        "java-jvm-heap",
        java("heap", &[]),
        &["--jvm-heap"],
        "jvm",
        "managed-heap",
        "-XX:+HeapDumpOnOutOfMemoryError",
    )?;
    let pid = run.workload.id();
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    let stats = &run.report["collection"]["jvm_heaps"];
    eprintln!("java-jvm-heap: collection.jvm_heaps {stats}");
    let sampled = items(stats).first().cloned().unwrap_or_default();
    ensure!(sampled["profiles"].as_u64() > Some(2) && sampled["samples"].as_u64() > Some(10), "not sampled: {stats}");
    let (top, frames) = top_heap_site("java-jvm-heap", &run.report);
    let label = top["label"].as_str().unwrap_or_default();
    ensure!(
        label == "SessionBuffers.rememberSession(boolean, int)",
        "the top heap site is {label:?}:\n{}",
        summarize(&run.report)
    );
    ensure!(
        frames.get(1).is_some_and(|f| f.starts_with("SessionBuffers.handleRequest(boolean, int):")),
        "the top heap site's frames are {frames:?}"
    );
    let said = items(&run.report["verdict"]["evidence"])
        .iter()
        .filter_map(Value::as_str)
        .any(|e| e.contains("the objects that stay are held by SessionBuffers.rememberSession"));
    ensure!(said, "the evidence does not name the holder: {}", run.report["verdict"]["evidence"]);
    ensure!(run.workload.try_wait()?.is_none(), "the JVM did not run on after the trace");
    let check = jcmd(pid, "JFR.check")?;
    ensure!(!check.contains("leaktrace"), "a leaktrace recording is left in the JVM:\n{check}");
    let dumps: Vec<_> =
        std::fs::read_dir("/tmp")?.flatten().filter(|e| e.file_name() == *format!("leaktrace-{pid}.jfr")).collect();
    ensure!(dumps.is_empty(), "a dump is left in /tmp");
    Ok(())
}

/// The report's largest heap site, and its frames as `symbol:line`.
fn top_heap_site(name: &str, report: &Value) -> (Value, Vec<String>) {
    let top = items(&report["sites"]).iter().find(|s| s["kind"] == "heap").cloned().unwrap_or_default();
    let frames: Vec<String> = items(&top["frames"])
        .iter()
        .map(|f| format!("{}:{}", f["symbol"].as_str().unwrap_or("?"), f["line"]))
        .collect();
    eprintln!("{name}: top heap site {} {frames:?}", top["outstanding_bytes"]);
    (top, frames)
}

/// One diagnostic command through the JVM's attach listener (started by the trace), as jcmd sends it.
fn jcmd(pid: u32, command: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(format!("/tmp/.java_pid{pid}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(format!("1\0jcmd\0{command}\0\0\0").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A runtime that stops itself at its own heap bound (V8 aborts at --max-old-space-size, the JVM's main thread
/// dies of OutOfMemoryError at -Xmx) under a limit it never reaches: a heap leak whose death is the managed heap's.
#[test]
fn runtimes_stopping_themselves_at_their_heap_bound_die_of_memory() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    // About 8 MiB of objects (10 MiB of arrays) a second: V8 and the JVM give up at 96 MiB some 10 s in, 15 s on
    // a busy machine (seen in CI): the trace lasts 24 s.
    let (node, _scratch) = node("objects", "8", "30", &["--max-old-space-size=96"]);
    let mut java = Command::new("java");
    java.args(["-Xmx96m", &workload("SessionBuffers.java"), "heap", "40", "30", "120"]);
    for (name, cmd, how, death, advice) in [
        ("node-bound", node, "V8 aborts when its heap reaches", "by SIGABRT", "--heapsnapshot-near-heap-limit=1"),
        ("java-bound", java, "the JVM throws OutOfMemoryError", "by exit status 1", "-XX:+HeapDumpOnOutOfMemoryError"),
    ] {
        let run = trace_command(name, cmd, Some(1 << 30), 24, &[], &[])?;
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", run.workload.id()));
        let v = &run.report["verdict"];
        eprintln!("{name}: {v}");
        let said = |what: &str| items(&v["evidence"]).iter().filter_map(Value::as_str).any(|e| e.contains(what));
        ensure!(
            v["class"] == "heap-leak" && v["location"] == "managed-heap" && said(how) && said(death),
            "{name}: not the managed heap's death {death}:\n{}",
            summarize(&run.report)
        );
        let advised = items(&v["recommendations"]).iter().filter_map(Value::as_str).any(|r| r.contains(advice));
        ensure!(advised, "{name}: no {advice} in the recommendations:\n{}", summarize(&run.report));
    }
    Ok(())
}

/// The Python service's top anon site is its leaking function, read from the interpreter's own frames:
/// `remember` at the line that makes the payload, called from `handle_request`, with the interpreter's frames
/// in between where they run. Debian's python3 (a static interpreter) always; the other CPython versions this
/// machine has (pyenv's, with a shared libpython) too, so each layout the programs walk is tried for real.
#[test]
fn python_objects_are_managed_heap_in_the_leaking_function() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let mut pythons = vec!["/usr/bin/python3".to_string()];
    let pyenv = std::path::Path::new("/root/.pyenv/versions");
    for minor in 9..=13 {
        let found = std::fs::read_dir(pyenv).into_iter().flatten().flatten().find_map(|d| {
            let bin = d.path().join(format!("bin/python3.{minor}"));
            (d.file_name().to_string_lossy().starts_with(&format!("3.{minor}.")) && bin.exists()).then_some(bin)
        });
        pythons.extend(found.map(|b| b.display().to_string()));
    }
    for python in pythons {
        let mut py = Command::new(&python);
        py.args([&workload("session_store.py"), "40", "7", "120"]);
        let name = format!("python{}", python.rsplit("python").next().unwrap_or_default());
        let run = traced_as(&name, py, "python", "managed-heap", "tracemalloc")?;
        let top = items(&run.report["sites"]).iter().find(|s| s["kind"] == "anon");
        let frames: Vec<String> = top.map_or(vec![], |s| {
            items(&s["frames"])
                .iter()
                .filter(|f| f["unwind"] == "python")
                .map(|f| format!("{}:{}", f["symbol"], f["line"]))
                .collect()
        });
        eprintln!(
            "{python}: top anon site {} python frames {frames:?}",
            top.map_or(Value::Null, |s| s["outstanding_bytes"].clone())
        );
        let label = top.and_then(|s| s["label"].as_str()).unwrap_or_default();
        ensure!(label == "remember", "{python}: the top anon site is {label:?}:\n{}", summarize(&run.report));
        ensure!(
            frames.first().map(String::as_str) == Some("\"remember\":11")
                && frames.get(1).is_some_and(|f| f.starts_with("\"handle_request\":")),
            "{python}: the top site's Python frames are {frames:?}"
        );
        let python_stats = &run.report["collection"]["unwind"]["python"];
        ensure!(python_stats["samples"].as_u64() > Some(0), "{python}: {python_stats}");
    }
    Ok(())
}

/// The Go service at 40 sessions of 256 KiB a second for 7 s.
fn store_sessions() -> Result<Command> {
    let mut go = Command::new(build_workload("store_sessions")?);
    go.args(["40", "7", "120"]);
    Ok(go)
}

#[test]
fn go_heap_leak_is_managed_heap_in_the_leaking_function() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let go = store_sessions()?;
    let run = traced_as("go", go, "go", "managed-heap", "GOMEMLIMIT=921MiB")?;
    let top = items(&run.report["sites"]).iter().find(|s| s["kind"] == "anon");
    let label = top.and_then(|s| s["label"].as_str()).unwrap_or_default();
    ensure!(label.contains("leakIntoStore"), "the top anon site is {label:?}:\n{}", summarize(&run.report));
    Ok(())
}

/// With --heap, a Go process (nothing to probe: Go allocates from its own heap) gets `heap` sites from its
/// runtime's sampled heap profile, read from its memory: the top one is the leaking function.
#[test]
fn go_heap_sites_come_from_the_runtimes_own_profile() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let go = store_sessions()?;
    let run = traced_with("go-heap", go, &["--heap"], "go", "managed-heap", "GOMEMLIMIT=")?;
    let procs = &run.report["collection"]["heap"]["processes"];
    let read =
        |p: &Value| p["note"].as_str().is_some_and(|n| n.contains("heap profile is read") && !n.contains("failed"));
    ensure!(items(procs).iter().any(read), "no Go process's profile read: {procs}");
    let top = items(&run.report["sites"]).iter().find(|s| s["kind"] == "heap").cloned().unwrap_or_default();
    let label = top["label"].as_str().unwrap_or_default();
    let frames: Vec<&str> = items(&top["frames"]).iter().filter_map(|f| f["symbol"].as_str()).collect();
    eprintln!("go-heap top heap site {} {label}:\n  {}", top["outstanding_bytes"], frames.join("\n  "));
    ensure!(label.contains("leakIntoStore"), "the top heap site is {label:?}:\n{}", summarize(&run.report));
    let coverage = &run.report["attribution"]["heap"];
    eprintln!("go-heap attribution.heap: {coverage}");
    ensure!(coverage["attributed_bytes"].as_i64() > Some(0), "attribution.heap: {coverage}");
    // OOM-killed under a 48 MiB limit (~5 s in): the profile read at the kill names the holder before the kill.
    let go = store_sessions()?;
    let run = trace_command("go-heap-oom", go, Some(48 << 20), 8, &["--heap"], &[])?;
    let kill = items(&run.report["oom_kills"]).first().cloned().unwrap_or_default();
    let before = items(&kill["sites_before_kill"]).iter().find(|s| s["kind"] == "heap").cloned().unwrap_or_default();
    eprintln!("go-heap-oom: heap site before the kill {} {}", before["outstanding_bytes"], before["label"]);
    ensure!(
        before["label"].as_str().is_some_and(|l| l.contains("leakIntoStore")),
        "no heap site before the kill names leakIntoStore:\n{}",
        summarize(&run.report)
    );
    Ok(())
}
