//! `leaktrace diff <run-a> <run-b>`: two runs' report.json side by side (before and after a fix, say): verdict,
//! growth, OOM kills, and the sites whose outstanding bytes changed most, plus `flamegraph-diff.svg` (width = run
//! B, red = more than in A, blue = less).
//!
//! Sites are matched across runs by kind, slab cache and function names: addresses move between runs (ASLR), so
//! a frame without a symbol matches any unnamed frame of the same module.
use std::{collections::BTreeMap, fmt::Write, path::Path};

use anyhow::{Context, Result};

use super::{
    flamegraph::{self, differential_folded},
    folded::folded,
    human_bytes, signed, target_name,
};
use crate::{
    attribution::growth,
    report::{Report, Site},
    sites::app_frame,
};

/// How many changed sites the text lists.
const LISTED: usize = 15;

/// Reads both runs, prints the comparison and writes `diff.txt` and `flamegraph-diff.svg` into `out`.
pub fn run(a: &Path, b: &Path, out: Option<&Path>) -> Result<()> {
    let ra = read_run(a)?;
    let rb = read_run(b)?;
    let dir = crate::output::prepare(Some(out.unwrap_or(Path::new("."))))?;
    let text = compare(&ra, &rb, &a.display().to_string(), &b.display().to_string());
    let svg = diff_svg(&ra, &rb)?;
    crate::output::write_atomic(&dir, "diff.txt", text.as_bytes())?;
    crate::output::write_atomic(&dir, "flamegraph-diff.svg", &svg)?;
    print!("{text}");
    println!("wrote {} and {}", dir.join("diff.txt").display(), dir.join("flamegraph-diff.svg").display());
    Ok(())
}

fn read_run(dir: &Path) -> Result<Report> {
    let path = if dir.is_dir() { dir.join("report.json") } else { dir.to_path_buf() };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (give a leaktrace output directory)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a leaktrace report.json", path.display()))
}

/// The differential flame graph from run A to run B.
pub fn diff_svg(a: &Report, b: &Report) -> Result<Vec<u8>> {
    let title = format!("leaktrace diff: {} -> {}", target_name(a), target_name(b));
    let subtitle = format!(
        "A {} ({:.1} s), B {} ({:.1} s); width = B, red = more than in A, blue = less",
        a.window.start, a.window.seconds, b.window.start, b.window.seconds
    );
    flamegraph::svg(
        &differential_folded(&anonymous(&folded(&a.sites)), &anonymous(&folded(&b.sites)))?,
        &title,
        &subtitle,
    )
}

/// Folded stacks with unnamed frames (`0x...` addresses) reduced to `0x?`, so the two runs' stacks line up.
fn anonymous(folded: &str) -> String {
    folded
        .lines()
        .map(|line| {
            let (stack, weight) = line.rsplit_once(' ').unwrap_or((line, ""));
            let frames: Vec<&str> = stack.split(';').map(|f| if f.starts_with("0x") { "0x?" } else { f }).collect();
            format!("{} {weight}\n", frames.join(";"))
        })
        .collect()
}

/// What identifies a site across runs.
fn identity(site: &Site) -> String {
    let frames: Vec<String> = site
        .frames
        .iter()
        .map(|f| match &f.symbol {
            Some(s) => s.clone(),
            None => format!("{}+?", f.module.as_deref().unwrap_or("?")),
        })
        .collect();
    format!("{}:{}:{}", site.kind, site.slab_cache.as_deref().unwrap_or(""), frames.join(";"))
}

/// The comparison as text.
pub fn compare(a: &Report, b: &Report, name_a: &str, name_b: &str) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_compare(&mut out, a, b, name_a, name_b);
    out
}

fn write_compare(out: &mut String, a: &Report, b: &Report, name_a: &str, name_b: &str) -> std::fmt::Result {
    writeln!(out, "leaktrace diff\n  A: {name_a}\n  B: {name_b}")?;
    let row = |out: &mut String, label: &str, va: String, vb: String| writeln!(out, "{label:<22} {va:<32} {vb}");
    row(out, "", "A".into(), "B".into())?;
    row(out, "target", target_name(a), target_name(b))?;
    row(out, "window", format!("{:.1} s", a.window.seconds), format!("{:.1} s", b.window.seconds))?;
    let verdict = |r: &Report| format!("{} ({:.2})", r.verdict.class, r.verdict.confidence);
    row(out, "verdict", verdict(a), verdict(b))?;
    let g = |r: &Report, f: fn(&crate::report::Sample) -> Option<u64>| {
        growth(&r.memory.samples, f).map_or("n/a".to_string(), signed)
    };
    row(out, "usage growth", g(a, |s| Some(s.usage)), g(b, |s| Some(s.usage)))?;
    row(out, "anon growth", g(a, |s| s.anon), g(b, |s| s.anon))?;
    row(out, "slab growth", g(a, |s| s.slab), g(b, |s| s.slab))?;
    row(out, "file growth", g(a, |s| s.file), g(b, |s| s.file))?;
    row(out, "OOM kills", a.oom_kills.len().to_string(), b.oom_kills.len().to_string())?;
    let held = |r: &Report| human_bytes(r.sites.iter().map(|s| s.outstanding_bytes).sum());
    row(out, "outstanding (sites)", held(a), held(b))?;

    // identity -> (outstanding in A, in B, a site to name it by)
    let mut sites: BTreeMap<String, (i64, i64, &Site)> = BTreeMap::new();
    for s in &a.sites {
        sites.entry(identity(s)).or_insert((0, 0, s)).0 += s.outstanding_bytes;
    }
    for s in &b.sites {
        sites.entry(identity(s)).or_insert((0, 0, s)).1 += s.outstanding_bytes;
    }
    let mut changed: Vec<_> = sites.into_values().filter(|(x, y, _)| x != y).collect();
    changed.sort_by_key(|(x, y, _)| std::cmp::Reverse((y - x).unsigned_abs()));
    if changed.is_empty() {
        return writeln!(out, "no site's outstanding bytes changed");
    }
    writeln!(out, "sites by change in outstanding bytes (B - A):")?;
    writeln!(out, "  {:>11} {:>11} {:>11}  {:<18} site", "change", "A", "B", "kind")?;
    for (x, y, site) in changed.iter().take(LISTED) {
        let kind = match &site.slab_cache {
            Some(c) => format!("{}:{c}", site.kind),
            None => site.kind.clone(),
        };
        let tag = match (*x == 0, *y == 0) {
            (true, _) => "  (only in B)",
            (_, true) => "  (only in A)",
            _ => "",
        };
        let func = app_frame(site).map_or("?", |f| f.label());
        writeln!(
            out,
            "  {:>11} {:>11} {:>11}  {kind:<18} {func}{tag}",
            signed(y - x),
            human_bytes(*x),
            human_bytes(*y)
        )?;
    }
    if changed.len() > LISTED {
        writeln!(out, "  ... {} more changed sites", changed.len() - LISTED)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::flamegraph::tests::xml_texts,
        report::tests::{frame, sample_report, site},
    };

    fn after_fix() -> Report {
        let mut b = sample_report();
        b.sites[0].outstanding_bytes = 1 << 20;
        // The heap site's user frames moved (ASLR) but keep their names.
        for f in &mut b.sites[0].frames {
            f.address = "0x7777".into();
        }
        b.sites.push(site("page", 8192, vec![frame(None, 0x9999, false)]));
        b.oom_kills.clear();
        b.verdict.class = "no-leak".into();
        b
    }

    #[test]
    fn text_lists_changes_largest_first() {
        let text = compare(&sample_report(), &after_fix(), "before", "after");
        let has = |needle: &str| assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        has("  A: before\n  B: after\n");
        has("verdict                inconclusive (0.00)              no-leak (0.00)\n");
        has("OOM kills              1                                0\n");
        has("    -63.0 MiB    64.0 MiB     1.0 MiB  anon               grow_cache\n");
        has("     +8.0 KiB         0 B     8.0 KiB  page               0x9999  (only in B)\n");
        assert!(!text.contains("kmalloc-256"), "unchanged sites are not listed:\n{text}");
        let heap = text.find("grow_cache").unwrap();
        assert!(heap < text.find("0x9999").unwrap(), "largest change first");
    }

    #[test]
    fn identical_runs_have_no_changes() {
        let r = sample_report();
        assert!(compare(&r, &r, "a", "a").ends_with("no site's outstanding bytes changed\n"));
    }

    #[test]
    fn unnamed_frames_match_across_runs() {
        assert_eq!(anonymous("[anon];main;0x5555 10\n[page] 3\n"), "[anon];main;0x? 10\n[page] 3\n");
    }

    #[test]
    fn run_writes_text_and_svg_and_rejects_bad_input() {
        let base = tempfile::tempdir().unwrap();
        let (a, b, out) = (base.path().join("a"), base.path().join("b"), base.path().join("out"));
        for (dir, r) in [(&a, sample_report()), (&b, after_fix())] {
            std::fs::create_dir(dir).unwrap();
            crate::report::write_json(dir, &r).unwrap();
        }
        run(&a, &b, Some(&out)).unwrap();
        assert!(std::fs::read_to_string(out.join("diff.txt")).unwrap().contains("grow_cache"));
        let texts = xml_texts(&std::fs::read(out.join("flamegraph-diff.svg")).unwrap()).join("\n");
        assert!(texts.contains("leaktrace diff: docker container leaky -> docker container leaky"), "{texts}");

        let err = run(&base.path().join("missing"), &b, Some(&out)).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
        std::fs::write(a.join("report.json"), "{}").unwrap();
        let err = run(&a, &b, Some(&out)).unwrap_err();
        assert!(format!("{err:#}").contains("is not a leaktrace report.json"), "{err:#}");
    }
}
