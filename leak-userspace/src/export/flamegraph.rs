//! Flame graphs (inferno) of outstanding bytes: `flamegraph.svg` for the window, `flamegraph-oom-<n>.svg` for what
//! was held just before each OOM kill, and `flamegraph-growth.svg`, a differential graph of what grew between
//! about a third into the window (`sites_early`) and its end (red grew, blue shrank).
//!
//! The root frame of every stack is the kind of memory (`[anon]`, `[slab:<cache>]`, `[page]`, ...), each kind in a
//! color of its own; the frames above it use inferno's memory palette.
use std::path::Path;

use anyhow::{Context, Result};
use inferno::{
    differential,
    flamegraph::{self, color::PaletteMap, Options, Palette},
};

use super::{folded::folded, human_bytes, target_name, xml_escape};
use crate::report::{Report, Site};

const KIND_COLORS: [(&str, (u8, u8, u8)); 6] = [
    ("[anon", (230, 120, 40)),
    ("[heap", (220, 170, 30)),
    ("[slab", (150, 100, 210)),
    ("[page", (60, 130, 220)),
    ("[percpu", (200, 70, 150)),
    ("[other", (150, 150, 150)),
];

/// A flame graph of folded stacks (`root;...;leaf bytes` lines, or `... before after` for a differential graph).
pub fn svg(folded: &str, title: &str, subtitle: &str) -> Result<Vec<u8>> {
    // Widths are the last count of each line (the "after" of a differential line): with none above zero (e.g.
    // everything that was early in the window is freed by the end) inferno has nothing to draw and refuses.
    let drawn =
        folded.lines().any(|l| l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()).is_some_and(|n| n > 0.0));
    if !drawn {
        return Ok(empty(title, subtitle));
    }
    // Kind roots get fixed colors; inferno fills the map with its picks for every other frame.
    let mut kinds = PaletteMap::default();
    for line in folded.lines() {
        let root = line.split([';', ' ']).next().unwrap_or_default();
        if let Some((_, (r, g, b))) = KIND_COLORS.iter().find(|(prefix, _)| root.starts_with(prefix)) {
            kinds.insert(root, flamegraph::color::Color { r: *r, g: *g, b: *b });
        }
    }
    let mut opts = Options::default();
    opts.colors = Palette::Basic(flamegraph::color::BasicPalette::Mem);
    opts.count_name = "bytes".into();
    opts.title = title.into();
    opts.subtitle = Some(subtitle.into());
    opts.palette_map = Some(&mut kinds);
    let mut out = Vec::new();
    flamegraph::from_lines(&mut opts, folded.lines(), &mut out).context("cannot draw the flame graph")?;
    Ok(out)
}

/// The differential folded lines `stack before after` of two folded texts.
pub fn differential_folded(before: &str, after: &str) -> Result<String> {
    let mut out = Vec::new();
    differential::from_readers(differential::Options::default(), before.as_bytes(), after.as_bytes(), &mut out)
        .context("cannot fold the two profiles together")?;
    String::from_utf8(out).context("differential folding produced non-UTF-8 text")
}

/// An SVG saying there is nothing to draw (inferno refuses empty input).
fn empty(title: &str, subtitle: &str) -> Vec<u8> {
    format!(
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            "\n",
            r#"<svg version="1.1" width="1200" height="90" xmlns="http://www.w3.org/2000/svg">"#,
            r##"<rect x="0" y="0" width="100%" height="100%" fill="#eeeeee"/>"##,
            r#"<text x="600" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>"#,
            r#"<text x="600" y="48" text-anchor="middle" font-family="Verdana" font-size="12">{}</text>"#,
            r#"<text x="600" y="74" text-anchor="middle" font-family="Verdana" font-size="12">"#,
            "no outstanding allocations recorded</text></svg>\n"
        ),
        xml_escape(title),
        xml_escape(subtitle)
    )
    .into_bytes()
}

fn window(report: &Report) -> String {
    format!("{} .. {} ({:.1} s)", report.window.start, report.window.end, report.window.seconds)
}

fn total(sites: &[Site]) -> String {
    human_bytes(sites.iter().map(|s| s.outstanding_bytes.max(0)).sum())
}

/// The window's flame graph: of the sites the outputs lead with (the last kill's when the end is empty).
pub fn window_svg(report: &Report) -> Result<Vec<u8>> {
    match super::lead_sites(report) {
        (_, Some(n)) => kill_svg(report, n, " (the workload died)"),
        (sites, None) => {
            let title = format!("leaktrace: {}: outstanding memory by call site", target_name(report));
            let subtitle = format!("{}, {} outstanding; root frame = kind of memory", window(report), total(&sites));
            svg(&folded(&sites), &title, &subtitle)
        }
    }
}

/// What grew from `sites_early` to the end of the window.
pub fn growth_svg(report: &Report) -> Result<Vec<u8>> {
    let (since, before) = match &report.sites_early {
        Some(early) => (format!("t={:.1} s", early.t), folded(&early.sites)),
        None => ("the start (window too short for an early picture)".to_string(), String::new()),
    };
    let title = format!("leaktrace: {}: growth since {since}", target_name(report));
    let subtitle = format!("{}; width = outstanding at the end, red = grew, blue = shrank", window(report));
    svg(&differential_folded(&before, &folded(&report.sites))?, &title, &subtitle)
}

/// What was held just before OOM kill number `n` (1-based).
pub fn oom_svg(report: &Report, n: usize) -> Result<Vec<u8>> {
    kill_svg(report, n, "")
}

/// `oom_svg` with `note` after the title's kill number.
fn kill_svg(report: &Report, n: usize, note: &str) -> Result<Vec<u8>> {
    let kill = &report.oom_kills[n - 1];
    let title = format!("leaktrace: {}: held before OOM kill {n}{note}", target_name(report));
    let subtitle = format!(
        "t={:.1} s, victim {} (pid {}), {} outstanding in the top sites",
        kill.t,
        kill.comm,
        kill.pid,
        total(&kill.sites_before_kill)
    );
    svg(&folded(&kill.sites_before_kill), &title, &subtitle)
}

/// The two graphs report.html embeds.
pub struct Written {
    pub window: Vec<u8>,
    pub growth: Vec<u8>,
}

/// Writes `flamegraph.svg`, `flamegraph-growth.svg` and one `flamegraph-oom-<n>.svg` per OOM kill into `dir`.
pub fn write_flamegraphs(dir: &Path, report: &Report) -> Result<Written> {
    let written = Written { window: window_svg(report)?, growth: growth_svg(report)? };
    crate::output::write_atomic(dir, "flamegraph.svg", &written.window)?;
    crate::output::write_atomic(dir, "flamegraph-growth.svg", &written.growth)?;
    for n in 1..=report.oom_kills.len() {
        crate::output::write_atomic(dir, &format!("flamegraph-oom-{n}.svg"), &oom_svg(report, n)?)?;
    }
    Ok(written)
}

#[cfg(test)]
pub(crate) mod tests {
    use quick_xml::{events::Event, Reader};

    use super::*;
    use crate::report::tests::sample_report;

    /// Parses `svg` as XML to the end and returns the text of its elements (entities resolved).
    pub(crate) fn xml_texts(svg: &[u8]) -> Vec<String> {
        let mut reader = Reader::from_reader(svg);
        let mut buf = Vec::new();
        let mut texts = vec![String::new()];
        loop {
            let current = texts.last_mut().unwrap();
            match reader.read_event_into(&mut buf).expect("well-formed XML") {
                Event::Eof => break texts,
                Event::Text(t) => current.push_str(&t.decode().unwrap()),
                Event::GeneralRef(r) => {
                    let name = format!("&{};", r.decode().unwrap());
                    current.push_str(&quick_xml::escape::unescape(&name).expect("known entity"));
                }
                Event::End(_) => texts.push(String::new()),
                _ => {}
            }
            buf.clear();
        }
    }

    #[test]
    fn window_graph_names_target_functions_and_bytes() {
        let mut report = sample_report();
        // Wide enough not to be pruned (inferno drops frames under 0.1% of the width).
        report.sites[1].outstanding_bytes = 32 << 20;
        let svg = window_svg(&report).unwrap();
        let texts = xml_texts(&svg).join("\n");
        assert!(texts.contains("leaktrace: docker container leaky: outstanding memory by call site"), "{texts}");
        assert!(texts.contains("2025-01-01T00:00:00Z"));
        let text = String::from_utf8(svg).unwrap();
        assert!(text.contains("grow_cache (67,108,864 bytes"), "bytes in the tooltips");
        assert!(text.contains("[slab:kmalloc-256]"));
        // The kind roots have their fixed colors.
        assert!(text.contains("rgb(230,120,40)") && text.contains("rgb(150,100,210)"));
    }

    #[test]
    fn growth_graph_is_differential() {
        let report = sample_report();
        let folded =
            differential_folded(&folded(&report.sites_early.as_ref().unwrap().sites), &folded(&report.sites)).unwrap();
        assert!(folded.contains("[anon];main;grow_cache;malloc;clear_page_erms 16777216 67108864"), "{folded}");
        let texts = xml_texts(&growth_svg(&report).unwrap()).join("\n");
        assert!(texts.contains("growth since t=3.0 s"), "{texts}");
    }

    #[test]
    fn growth_graph_of_everything_freed_is_the_empty_graph() {
        let mut r = sample_report();
        for site in &mut r.sites {
            site.outstanding_bytes = 0;
        }
        let svg = growth_svg(&r).unwrap();
        assert!(
            xml_texts(&svg).iter().any(|t| t.contains("no outstanding allocations")),
            "{}",
            String::from_utf8_lossy(&svg)
        );
    }

    #[test]
    fn oom_graph_and_empty_graph_are_valid_svg() {
        let mut report = sample_report();
        let texts = xml_texts(&oom_svg(&report, 1).unwrap()).join("\n");
        assert!(texts.contains("held before OOM kill 1") && texts.contains("victim leaker (pid 42)"), "{texts}");
        report.sites.clear();
        report.target.container = None;
        report.target.cgroup_path = "/sys/fs/cgroup/a&b<c>".into();
        // Nothing outstanding after the kill: the window's graph is the kill's.
        let texts = xml_texts(&window_svg(&report).unwrap()).join("\n");
        assert!(
            texts.contains("held before OOM kill 1 (the workload died)") && texts.contains("grow_cache"),
            "{texts}"
        );
        report.oom_kills.clear();
        let texts = xml_texts(&window_svg(&report).unwrap()).join("\n");
        assert!(texts.contains("/sys/fs/cgroup/a&b<c>") && texts.contains("no outstanding allocations"), "{texts}");
    }

    #[test]
    fn every_file_written() {
        let dir = tempfile::tempdir().unwrap();
        write_flamegraphs(dir.path(), &sample_report()).unwrap();
        for name in ["flamegraph.svg", "flamegraph-growth.svg", "flamegraph-oom-1.svg"] {
            xml_texts(&std::fs::read(dir.path().join(name)).unwrap());
        }
    }
}
