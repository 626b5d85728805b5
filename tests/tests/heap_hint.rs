//! Without `--heap`: the top anon site says what memory its pages lie in (`sites[].region`, from the page
//! faults' addresses), and when that is a malloc heap the verdict says the holder may be another function and
//! gives the `--heap` command that names it. Pages of plain mmap'd blocks get no such line.
//!
//! `cargo xtask test --test heap_hint -- --nocapture` prints each report's top anon site with its region.
use anyhow::{ensure, Context, Result};
use leaktrace_e2e::{
    app_label, items, scenario_test,
    scenarios::{Scenario, HEAP_HOLDER, HEAP_LEAK},
    summarize,
};
use serde_json::Value;

/// The top anon site, with what the report says of it.
fn top_anon(report: &Value) -> Result<&Value> {
    let site = items(&report["sites"])
        .iter()
        .find(|s| s["kind"] == "anon")
        .with_context(|| format!("no anon site:\n{}", summarize(report)))?;
    eprintln!(
        "top anon site: {:?} in {}; regions of the samples: {}",
        app_label(site),
        site["region"],
        report["collection"]["unwind"]["regions"]
    );
    Ok(site)
}

/// The verdict's hint, if any: the evidence line and recommendation that give the `--heap` command.
fn hints(report: &Value) -> Vec<String> {
    let verdict = &report["verdict"];
    items(&verdict["evidence"])
        .iter()
        .chain(items(&verdict["recommendations"]))
        .filter_map(Value::as_str)
        .filter(|l| l.contains("--heap"))
        .map(String::from)
        .collect()
}

/// A leak in a malloc heap (`label` first touches its pages in `region`): the verdict asks for `--heap`, with the
/// cgroup that was traced.
fn hinted(scenario: &Scenario, label: &str, region: &str) -> Result<()> {
    let plain = Scenario { leaktrace_args: &[], check: |_| Ok(None), ..*scenario };
    scenario_test(&plain, &[], |report| {
        ensure!(report["kernel"]["modes"].to_string().contains("fault-address"), "{}", report["kernel"]);
        let top = top_anon(report)?;
        ensure!(app_label(top) == Some(label), "the top anon site is not {label}:\n{}", summarize(report));
        ensure!(
            top["region"] == region,
            "{label}'s pages lie in {}, not {region}:\n{}",
            top["region"],
            summarize(report)
        );
        let command =
            format!("run `leaktrace --cgroup {} --heap`", report["target"]["cgroup_path"].as_str().unwrap_or("?"));
        let hints = hints(report);
        ensure!(
            hints.iter().any(|l| l.contains(&command) && l.contains(&format!("{label} first touched them"))),
            "no evidence line gives {command}: {hints:#?}\n{}",
            summarize(report)
        );
        ensure!(hints.len() == 2, "an evidence line and a recommendation: {hints:#?}");
        Ok(())
    })
}

/// The request loop whose freed render buffers glibc hands to the leaking session cache, in the brk heap.
#[test]
fn pages_of_the_brk_heap_ask_for_heap() -> Result<()> {
    hinted(&HEAP_HOLDER, "render_response", "brk-heap")
}

/// Four threads leaking from their own glibc arenas.
#[test]
fn pages_of_thread_arenas_ask_for_heap() -> Result<()> {
    hinted(&Scenario { name: "thread-arenas", workload: "thread_arenas", ..HEAP_HOLDER }, "keep_result", "malloc-arena")
}

/// 256 KiB blocks, above glibc's mmap threshold, each mmap'd: their pages change no hands, no `--heap` asked.
#[test]
fn pages_of_mmapped_blocks_ask_for_nothing() -> Result<()> {
    scenario_test(&HEAP_LEAK, &[], |report| {
        let top = top_anon(report)?;
        ensure!(top["region"] == "mmap", "the blocks' pages lie in {}:\n{}", top["region"], summarize(report));
        ensure!(hints(report).is_empty(), "{:#?}", hints(report));
        Ok(())
    })
}
