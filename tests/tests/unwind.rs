//! End to end on the ordinary workloads (tests/workloads: calls through libc, a leaf that touches the pages, a
//! shared library, C++ and Rust, all built -O2 -g without frame pointers): the top site of the leak's kind must name
//! the leaking function and carry the user call chain from it down to main intact, as only an unwinder that does
//! not rely on frame pointers gets it. All but the node one are VM scenarios too (tests/src/scenarios.rs).
//!
//! `cargo xtask test --test unwind -- --nocapture` prints each report's top sites with their frames.
use anyhow::Result;
use leaktrace_e2e::{
    scenario_test,
    scenarios::{RETAIN_BLOCKS, SESSION_CACHE, SESSION_HEAP, SESSION_OOM, SESSION_STORE, UPSTREAM_PIPES},
};

#[test]
fn heap_leak_touched_in_a_leaf_names_the_whole_call_chain() -> Result<()> {
    scenario_test(&SESSION_HEAP, &[], |_| Ok(()))
}

#[test]
fn oom_victim_stacks_unwind_after_its_death() -> Result<()> {
    scenario_test(&SESSION_OOM, &[], |_| Ok(()))
}

#[test]
fn pipes_leaked_through_libc_name_the_caller_chain() -> Result<()> {
    scenario_test(&UPSTREAM_PIPES, &[], |_| Ok(()))
}

#[test]
fn heap_leak_in_a_shared_library_names_its_callers() -> Result<()> {
    scenario_test(&SESSION_CACHE, &[], |_| Ok(()))
}

#[test]
fn cxx_method_leaking_through_operator_new_is_named() -> Result<()> {
    scenario_test(&SESSION_STORE, &[], |_| Ok(()))
}

#[test]
fn rust_vec_leak_is_named_with_demangled_frames() -> Result<()> {
    scenario_test(&RETAIN_BLOCKS, &[], |_| Ok(()))
}

/// JavaScript through V8's JIT: the memory is touched by a V8 builtin, and the JS functions above it are named
/// from the perf map node writes with --perf-basic-prof (read through the process's root), found by the frame
/// pointers V8 keeps in JIT code.
#[test]
fn node_jit_frames_are_named_from_the_perf_map() -> Result<()> {
    use anyhow::{ensure, Context};
    use leaktrace_e2e::{items, require_root, serial, trace_command};
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/response_cache.js");
    let mut node = std::process::Command::new("node");
    // node writes an isolate log beside the perf map into its working directory: a scratch one, not the tree.
    let scratch = tempfile::tempdir()?;
    node.current_dir(scratch.path()).arg("--perf-basic-prof").arg(&script).args(["160", "7", "120"]);
    let run = trace_command("node", node, Some(1 << 30), 9, &[], &[])?;
    let jit_frames = |site: &serde_json::Value| -> Vec<String> {
        items(&site["frames"])
            .iter()
            .filter(|f| f["unwind"] == "jit" && f["module"] == "[jit]")
            .filter_map(|f| f["symbol"].as_str().map(str::to_string))
            .collect()
    };
    let top = items(&run.report["sites"]).iter().find(|s| s["kind"] == "anon").cloned().context("no anon site")?;
    let named = jit_frames(&top);
    let at = |name: &str| named.iter().position(|n| n.contains(name));
    ensure!(
        at("cacheResponseBuffer").is_some() && at("cacheResponseBuffer") < at("handleRequest"),
        "the top anon site's JIT frames miss cacheResponseBuffer <- handleRequest: {named:?}\n{}",
        leaktrace_e2e::summarize(&run.report)
    );
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", run.workload.id()));
    Ok(())
}

/// Kept allocations of one kernel path reuse the kernel stack walked last on it (`collection.kernel_stacks_reused`):
/// on the libc pipe leak (pipe2, write and close from ordinary C), each site that holds a tenth of the kernel memory
/// or more names kernel and user function chains that a run walking every kernel stack names too, and the other
/// way round.
#[test]
fn reused_kernel_stacks_name_the_frames_a_walk_names() -> Result<()> {
    use anyhow::ensure;
    use leaktrace_e2e::{items, require_root, serial, trace_workload_with};
    use std::collections::BTreeSet;
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let s = &UPSTREAM_PIPES;
    // (chains of the sites holding a tenth of the kernel memory, chains of every kernel site, collection)
    let run = |env: &[(&str, &str)]| -> Result<(BTreeSet<String>, BTreeSet<String>, serde_json::Value)> {
        let run = trace_workload_with(s.workload, s.args, Some(s.limit_bytes), s.seconds, &[], env)?;
        let sites: Vec<&serde_json::Value> = items(&run.report["sites"])
            .iter()
            .filter(|s| matches!(s["kind"].as_str(), Some("slab" | "page")))
            .collect();
        let bytes = |s: &serde_json::Value| s["outstanding_bytes"].as_f64().unwrap_or(0.0);
        let total: f64 = sites.iter().map(|s| bytes(s)).sum();
        let chain = |s: &serde_json::Value| {
            let names: Vec<&str> = items(&s["frames"]).iter().filter_map(|f| f["symbol"].as_str()).collect();
            format!("{} {}: {}", s["kind"], s["slab_cache"], names.join(" <- "))
        };
        let top = sites.iter().filter(|s| bytes(s) >= total / 10.0).map(|s| chain(s)).collect();
        Ok((top, sites.iter().map(|s| chain(s)).collect(), run.report["collection"].clone()))
    };
    let (reused_top, reused_all, collection) = run(&[])?;
    let (walked_top, walked_all, _) = run(&[("LEAKTRACE_KSTACK_REUSE", "off")])?;
    eprintln!("reused: {reused_top:#?}\nwalked: {walked_top:#?}");
    ensure!(collection["kernel_stacks_reused"].as_u64() > Some(0), "no kernel stack was reused: {collection}");
    ensure!(!reused_top.is_empty(), "no kernel site holds a tenth of the kernel memory");
    // Which sites pass the tenth differs between two sampled runs; their chains must not.
    ensure!(reused_top.is_subset(&walked_all), "reuse named chains no walk named: {reused_top:#?}");
    ensure!(walked_top.is_subset(&reused_all), "walks named chains reuse did not: {walked_top:#?}");
    Ok(())
}
