//! The end-to-end leak scenarios and what their reports must show, shared by the host e2e tests (tests/e2e.rs) and
//! the guest kernels of `cargo xtask vm-test`, so every kernel is held to the same checks.
use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;

use crate::{app_label, describe_site, ensure_user_chain, has_frame, items, names_function, summarize};

const MIB: u64 = 1 << 20;

/// A workload run in a fresh memcg with a limit while leaktrace traces it for `seconds`.
pub struct Scenario {
    pub name: &'static str,
    /// tests/workloads/<workload>.c
    pub workload: &'static str,
    pub args: &'static [&'static str],
    /// More leaktrace arguments (e.g. `--heap`).
    pub leaktrace_args: &'static [&'static str],
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
    leaktrace_args: &[],
    limit_bytes: 512 * MIB,
    seconds: 8,
    check: check_heap_leak,
    expect_oom_kill: false,
};

pub const PIPE_LEAK: Scenario = Scenario {
    name: "pipe-leak",
    workload: "pipe_leak",
    args: &["200", "8", "120", "pipes"],
    leaktrace_args: &[],
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
    leaktrace_args: &[],
    limit_bytes: 48 * MIB,
    seconds: 10,
    check: check_oom_kill,
    expect_oom_kill: true,
};

/// The ordinary workloads (tests/workloads: calls through libc, -O2 -g, no frame pointers). Their checks demand the
/// whole user call chain from the leaking function to main, which a frame-pointer walk loses.
///
/// session_heap: 8 MiB/s of 256 KiB session records for 7 s (as heap_leak), their pages written by the leaf
/// fill_record.
pub const SESSION_HEAP: Scenario = Scenario {
    name: "session-heap",
    workload: "session_heap",
    check: |report| {
        check_heap_chain(report, &[&["fill_record"], &["remember_session"], &["handle_request"], &["main"]])
    },
    ..HEAP_LEAK
};

/// upstream_pipes: 200 pipes/s made by libc's pipe2 and written by its write, for 8 s (traced for 10).
pub const UPSTREAM_PIPES: Scenario = Scenario {
    name: "upstream-pipes",
    workload: "upstream_pipes",
    check: |report| check_kernel_chain(report, &[&["call_upstream"], &["handle_request"], &["main"]]),
    ..PIPE_LEAK
};

/// session_cache: the heap leak inside libsessioncache.so (cache_store).
pub const SESSION_CACHE: Scenario = Scenario {
    name: "session-cache",
    workload: "session_cache",
    check: |report| check_heap_chain(report, &[&["cache_store"], &["handle_request"], &["main"]]),
    ..SESSION_HEAP
};

/// session_heap at 16 MiB/s against a 48 MiB limit: OOM-killed after ~3 s. The sites held before the kill are
/// unwound and symbolized from the victim's cached mappings, the victim being gone by then.
pub const SESSION_OOM: Scenario = Scenario {
    name: "session-oom",
    workload: "session_heap",
    args: &["16", "30", "120"],
    check: |report| {
        let kill = items(&report["oom_kills"])
            .first()
            .with_context(|| format!("no oom_kills in the report:\n{}", summarize(report)))?;
        let sites = items(&kill["sites_before_kill"]);
        let top = sites.iter().find(|s| s["kind"] == "anon").context("no anon site before the kill")?;
        ensure_user_chain(top, &[&["fill_record"], &["remember_session"], &["handle_request"], &["main"]])?;
        Ok(None)
    },
    ..OOM_KILL
};

/// session_store: C++, operator new and std::vector inside SessionStore::remember.
pub const SESSION_STORE: Scenario = Scenario {
    name: "session-store",
    workload: "session_store",
    check: |report| check_heap_chain(report, &[&["SessionStore::remember"], &["handle_request"], &["main"]]),
    ..SESSION_HEAP
};

/// retain_blocks: Rust, `vec![..]` pushed into a long-lived Vec by retain_block.
pub const RETAIN_BLOCKS: Scenario = Scenario {
    name: "retain-blocks",
    workload: "retain_blocks",
    check: |report| check_heap_chain(report, &[&["retain_block"], &["handle_request"], &["main"]]),
    ..SESSION_HEAP
};

/// render_sessions under `--heap`: each request's freed 512 KiB render buffer is reused for the session blob that
/// stays, so the pages are first touched by render_response while remember_session holds the bytes.
pub const HEAP_HOLDER: Scenario = Scenario {
    name: "heap-holder",
    workload: "render_sessions",
    leaktrace_args: &["--heap"],
    check: |report| check_heap_holder(report, &[&["remember_session"], &["handle_request"], &["main"]]),
    ..HEAP_LEAK
};

/// What `cargo xtask vm-test` runs in every guest kernel (each costs 10-20 s per kernel under TCG).
/// The workloads written around the frame-pointer walk (heap_leak, pipe_leak) run on the host only: their ordinary
/// twins (session_heap, upstream_pipes) take the same kernel paths.
pub const ALL: &[&Scenario] =
    &[&OOM_KILL, &SESSION_HEAP, &UPSTREAM_PIPES, &SESSION_CACHE, &SESSION_STORE, &RETAIN_BLOCKS, &HEAP_HOLDER];

/// With `--heap`: the top heap site is labelled with the holder (`chain[0]`) and its user frames hold `chain`, the
/// heap sites explain 70..150 % of the anon growth (sampled), and the verdict names the holder.
pub fn check_heap_holder(report: &Value, chain: &[&[&str]]) -> Result<Option<f64>> {
    let label = app_label(top_site_of(report, "heap", chain)?);
    // Shown with --nocapture: the two views side by side, as the issue note quotes them.
    let anon = items(&report["sites"]).iter().find(|s| s["kind"] == "anon").and_then(app_label);
    eprintln!("top anon site (first touched by): {anon:?}; top heap site (held by): {label:?}");
    let evidence = report["verdict"]["evidence"].to_string();
    ensure!(
        chain[0].iter().any(|f| evidence.contains(&format!("held by {f}"))),
        "the verdict does not name the holder: {evidence}"
    );
    let coverage = report["attribution"]["heap"]["coverage"].as_f64();
    ensure!(
        coverage.is_some_and(|c| (0.7..=1.5).contains(&c)),
        "heap coverage {coverage:?} outside 0.7..1.5 ({}):\n{}",
        report["attribution"]["heap"],
        summarize(report)
    );
    Ok(coverage)
}

/// The top site is anon memory of the leaking function, and the anon sites explain >= 80% of the anon growth.
pub fn check_heap_leak(report: &Value) -> Result<Option<f64>> {
    let top = items(&report["sites"]).first().context("no sites in the report")?;
    ensure!(top["kind"] == "anon", "the top site is not anon:\n{}", summarize(report));
    ensure!(has_frame(top, false, "leak_heap_blocks"), "the top site misses leak_heap_blocks:\n{}", summarize(report));
    anon_coverage(report)
}

/// The anon sites explain >= 80% of the anon growth: the coverage.
fn anon_coverage(report: &Value) -> Result<Option<f64>> {
    let coverage = report["attribution"]["anon"]["coverage"].as_f64();
    ensure!(
        coverage.is_some_and(|c| c >= 0.8),
        "anon coverage {coverage:?} < 0.8 (attribution {}):\n{}",
        report["attribution"]["anon"],
        summarize(report)
    );
    Ok(coverage)
}

/// The top anon site is labelled with the leaking function (`chain[0]`, not malloc or memset) and its user frames
/// hold `chain` leaf to root (crate::ensure_user_chain), and the anon sites explain >= 80% of the anon growth.
pub fn check_heap_chain(report: &Value, chain: &[&[&str]]) -> Result<Option<f64>> {
    top_site_of(report, "anon", chain)?;
    anon_coverage(report)
}

/// The largest site of `kind`, which must be labelled with `chain[0]` (not malloc or memset) and hold `chain` in
/// its user frames, leaf to root (crate::ensure_user_chain).
fn top_site_of<'a>(report: &'a Value, kind: &str, chain: &[&[&str]]) -> Result<&'a Value> {
    let top = items(&report["sites"])
        .iter()
        .find(|s| s["kind"] == kind)
        .with_context(|| format!("no {kind} site:\n{}", summarize(report)))?;
    let label = app_label(top);
    ensure!(
        label.is_some_and(|l| chain[0].iter().any(|f| names_function(l, f))),
        "the top {kind} site is labelled {label:?}, not {}: {}\n{}",
        chain[0].join(" or "),
        describe_site(top),
        summarize(report)
    );
    ensure_user_chain(top, chain).map_err(|e| anyhow!("{e}\n{}", summarize(report)))?;
    Ok(top)
}

/// The top slab/page site of the pipes (a pipe syscall path in the kernel) has user frames that hold `chain` leaf
/// to root, and the kernel memory the cgroup gained is what the slab and kernel-page sites hold.
pub fn check_kernel_chain(report: &Value, chain: &[&[&str]]) -> Result<Option<f64>> {
    let top = items(&report["sites"])
        .iter()
        .find(|s| matches!(s["kind"].as_str(), Some("slab" | "page")) && has_frame(s, true, "pipe"))
        .with_context(|| format!("no slab or page site with a pipe syscall path:\n{}", summarize(report)))?;
    ensure_user_chain(top, chain).map_err(|e| anyhow!("{e}\n{}", summarize(report)))?;
    kernel_coverage(report)
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
    kernel_coverage(report)
}

/// The kernel memory the cgroup gained (slab, or kmem on v1) is what the slab and kernel-page sites hold, within
/// 0.7..1.5: the coverage.
fn kernel_coverage(report: &Value) -> Result<Option<f64>> {
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
