//! `report.html`: one self-contained page for the developer the evidence goes to: the verdict and its evidence,
//! memory over time against the limit with OOM kills marked (inline SVG), the top sites with their full stacks
//! behind `<details>`, the OOM kills, and the flame graphs (inferno's interactive SVG in a `data:` frame).
//! Nothing is fetched: the page's Content-Security-Policy forbids any network access.
use std::fmt::Write;

use anyhow::Result;
use base64::Engine;

use super::{clamp, human_bytes, summary::losses, target_name, xml_escape as esc};
use crate::{
    report::{Report, Sample, Site},
    sites::app_frame,
};

const TEMPLATE: &str = include_str!("report.html");
/// How many sites the table shows; report.json keeps more.
const TABLE_SITES: usize = 25;

/// The page, given the window's and the growth flame graphs (SVG bytes).
pub fn render(report: &Report, flamegraph: &[u8], growth: &[u8]) -> String {
    let mut body = String::new();
    // Writing into a String cannot fail.
    let _ = write_body(&mut body, report, flamegraph, growth);
    let title = format!("leaktrace: {}", target_name(report));
    TEMPLATE.replacen("{{title}}", &esc(&title), 1).replacen("{{body}}", &body, 1)
}

/// Writes `report.html` into `dir` atomically, mode 0600.
pub fn write_html(dir: &std::path::Path, report: &Report, flamegraph: &[u8], growth: &[u8]) -> Result<()> {
    crate::output::write_atomic(dir, "report.html", render(report, flamegraph, growth).as_bytes())
}

fn write_body(out: &mut String, r: &Report, flamegraph: &[u8], growth_svg: &[u8]) -> std::fmt::Result {
    writeln!(out, "<h1>leaktrace: {}</h1>", esc(&target_name(r)))?;
    let limit = r.memory.limit_bytes.map_or("none".to_string(), |l| human_bytes(clamp(l)));
    writeln!(
        out,
        r#"<p class="meta">cgroup <code>{}</code> (v{}, id {}) &middot; {} to {} ({:.1} s, {} samples) &middot; limit {} &middot; kernel {} ({})</p>"#,
        esc(&r.target.cgroup_path),
        r.target.cgroup_version,
        r.target.cgroup_id,
        esc(&r.window.start),
        esc(&r.window.end),
        r.window.seconds,
        r.memory.samples.len(),
        limit,
        esc(&r.kernel.release),
        esc(&r.kernel.modes.join(", "))
    )?;

    let tone = match r.verdict.class.as_str() {
        "no-leak" => "ok",
        "inconclusive" | "not-memory" => "",
        _ => "leak",
    };
    writeln!(out, r#"<div class="verdict {tone}"><div class="class">Verdict: {}</div>"#, esc(&r.verdict.class))?;
    writeln!(out, "<div>confidence {:.2}</div><ul>", r.verdict.confidence)?;
    for line in &r.verdict.evidence {
        writeln!(out, "<li>{}</li>", esc(line))?;
    }
    let (lead, kill) = super::lead_sites(r);
    if let Some(top) = lead.first() {
        let func = app_frame(top).map_or("?", |f| f.label());
        let when = kill.map_or(String::new(), |n| format!(" just before OOM kill {n}"));
        writeln!(
            out,
            "<li>largest site{when}: <code>{}</code> holds {} ({})</li>",
            esc(func),
            human_bytes(top.outstanding_bytes),
            esc(&kind_label(top))
        )?;
    }
    writeln!(out, "</ul>")?;
    if !r.verdict.recommendations.is_empty() {
        writeln!(out, r#"<div class="class">What to do</div><ul class="recommendations">"#)?;
        for line in &r.verdict.recommendations {
            writeln!(out, "<li>{}</li>", esc(line))?;
        }
        writeln!(out, "</ul>")?;
    }
    writeln!(out, "</div>")?;

    let growths = super::growth_words(&r.memory.samples);
    writeln!(out, "<h2>Memory over time</h2><p>Growth over the window: {}.", growths.join(", "))?;
    for (name, c) in [("anon", &r.attribution.anon), ("slab/kernel", &r.attribution.slab)] {
        let ratio = super::coverage_ratio(c);
        write!(out, " Attributed {name}: {} ({ratio}).", human_bytes(c.attributed_bytes))?;
    }
    writeln!(out, "</p>")?;
    out.push_str(&chart(r));

    if let Some(n) = kill {
        writeln!(
            out,
            "<h2>Held just before OOM kill {n}</h2><p class=\"meta\">The workload died: nothing is outstanding at \
             the end, so this report leads with what the victim held.</p>"
        )?;
        sites_table(out, &lead, TABLE_SITES)?;
        writeln!(out, "<h2>Flame graph before OOM kill {n}</h2>")?;
        frame(out, flamegraph, "flame graph before the OOM kill")?;
    }
    writeln!(out, "<h2>Top sites by outstanding bytes</h2>")?;
    sites_table(out, &r.sites, TABLE_SITES)?;
    if r.sites.len() > TABLE_SITES {
        writeln!(out, "<p class=\"meta\">{} more sites in report.json.</p>", r.sites.len() - TABLE_SITES)?;
    }

    if !r.oom_kills.is_empty() {
        writeln!(out, "<h2>OOM kills</h2>")?;
        for (i, k) in r.oom_kills.iter().enumerate() {
            write!(out, "<h3>{}. t={:.1} s: victim {} (pid {})", i + 1, k.t, esc(&k.comm), k.pid)?;
            if k.trigger_pid != k.pid {
                write!(out, ", triggered by {} (pid {})", esc(&k.trigger_comm), k.trigger_pid)?;
            }
            if let Some(rss) = k.anon_rss_bytes {
                write!(out, ", anon rss {}", human_bytes(clamp(rss)))?;
            }
            writeln!(
                out,
                "</h3><p class=\"meta\">What was held just before the kill (flamegraph-oom-{}.svg):</p>",
                i + 1
            )?;
            sites_table(out, &k.sites_before_kill, TABLE_SITES)?;
        }
    }

    // Not behind <details>: inferno's script sizes the graph to its frame when it loads, and a closed frame has
    // no width. An empty end state has no graph to show: the kill's stands first instead.
    if kill.is_none() {
        writeln!(out, "<h2>Flame graph of outstanding memory</h2>")?;
        frame(out, flamegraph, "flame graph of outstanding memory")?;
        writeln!(out, "<h2>What grew since early in the window</h2>")?;
        frame(out, growth_svg, "growth flame graph")?;
    }

    let lost = losses(&r.collection);
    writeln!(out, "<h2>Collection</h2><p>")?;
    if !lost.is_empty() {
        writeln!(
            out,
            "<span class=\"lost\">Not seen by the tracer (results may be incomplete): {}.</span><br>",
            esc(&lost.join(", "))
        )?;
    }
    let c = &r.collection;
    writeln!(
        out,
        "{} allocation and {} free events over {} intervals; tracer CPU {:.2} s, peak RSS {}.</p>",
        c.alloc_events,
        c.free_events,
        c.intervals,
        c.tracer_cpu_seconds,
        human_bytes(clamp(c.tracer_peak_rss_bytes))
    )
}

fn kind_label(site: &Site) -> String {
    match &site.slab_cache {
        Some(cache) => format!("{}:{}", site.kind, cache),
        None => site.kind.clone(),
    }
}

fn sites_table(out: &mut String, sites: &[Site], max: usize) -> std::fmt::Result {
    if sites.is_empty() {
        return writeln!(out, "<p>No allocation sites recorded.</p>");
    }
    writeln!(
        out,
        r#"<table><tr><th>#</th><th>kind</th><th class="num">outstanding</th><th class="num">objects</th><th class="num">allocated</th><th>site (full stack on click)</th><th>processes</th></tr>"#
    )?;
    for (i, site) in sites.iter().take(max).enumerate() {
        let func = app_frame(site).map_or("?", |f| f.label());
        writeln!(
            out,
            r#"<tr><td class="num">{}</td><td><span class="kind kind-{}">{}</span></td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td><details><summary><code>{}</code></summary><ol class="frames">"#,
            i + 1,
            esc(&site.kind),
            esc(&kind_label(site)),
            human_bytes(site.outstanding_bytes),
            site.outstanding_allocs,
            human_bytes(clamp(site.alloc_bytes)),
            esc(func)
        )?;
        for f in &site.frames {
            let class = if f.kernel { " class=\"kernel\"" } else { "" };
            write!(out, "<li{class}>{}", esc(f.label()))?;
            let mut place = Vec::new();
            if let Some(file) = &f.file {
                place.push(match f.line {
                    Some(line) => format!("{file}:{line}"),
                    None => file.clone(),
                });
            }
            place.push(format!("{} {}", f.module.as_deref().unwrap_or("?"), f.address));
            writeln!(out, " <span class=\"where\">{}</span></li>", esc(&place.join(" \u{b7} ")))?;
        }
        let pids: Vec<String> = site.pids.iter().map(u32::to_string).collect();
        writeln!(
            out,
            "</ol></details></td><td>{} <span class=\"meta\">{}</span></td></tr>",
            esc(&site.comms.join(", ")),
            pids.join(" ")
        )?;
    }
    writeln!(out, "</table>")
}

/// An inferno SVG in a frame of its own, so its script runs in its own document (it assumes it is the root).
fn frame(out: &mut String, svg: &[u8], title: &str) -> std::fmt::Result {
    // inferno writes the image's height on the root element; 600 when it cannot be read.
    let height = String::from_utf8_lossy(&svg[..svg.len().min(2000)])
        .split("height=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next()?.parse::<u32>().ok())
        .unwrap_or(600);
    let data = base64::engine::general_purpose::STANDARD.encode(svg);
    writeln!(
        out,
        r#"<iframe class="flame" title="{}" height="{}" src="data:image/svg+xml;base64,{data}"></iframe>"#,
        esc(title),
        height + 20
    )
}

/// Plot area of the memory chart, in SVG user units.
const W: f64 = 960.0;
const H: f64 = 300.0;
const LEFT: f64 = 80.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;
const RIGHT: f64 = 200.0;

type Series = (&'static str, &'static str, fn(&Sample) -> Option<u64>);
const SERIES: [Series; 4] = [
    ("usage", "#1d1d1f", |s| Some(s.usage)),
    ("anon", "#e67828", |s| s.anon),
    ("file", "#2e8b57", |s| s.file),
    ("slab", "#9664d2", |s| s.slab),
];

/// Usage, anon, file and slab over the window against the limit, OOM kills as red lines.
fn chart(r: &Report) -> String {
    let samples = &r.memory.samples;
    if samples.is_empty() {
        return "<p>No memory samples were taken.</p>\n".to_string();
    }
    let t_max = samples.iter().map(|s| s.t).fold(r.window.seconds, f64::max).max(1e-3);
    let data_max = samples.iter().flat_map(|s| SERIES.iter().filter_map(|(_, _, f)| f(s))).max().unwrap_or(0);
    // A limit far above the data would flatten every line: then it is named instead of drawn.
    let limit_drawn = r.memory.limit_bytes.filter(|&l| l <= data_max.saturating_mul(4));
    let y_max = (limit_drawn.unwrap_or(0).max(data_max) as f64 * 1.05).max(1.0);
    let x = |t: f64| LEFT + (W - LEFT - RIGHT) * t / t_max;
    let y = |v: u64| TOP + (H - TOP - BOTTOM) * (1.0 - v as f64 / y_max);

    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="memory over time" font-family="sans-serif" font-size="11">"#
    );
    for i in 0..=4 {
        let v = (y_max / 1.05 * f64::from(i) / 4.0) as u64;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            human_bytes(clamp(v)),
            yy = y(v)
        );
        let t = t_max * f64::from(i) / 4.0;
        let _ = write!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.1} s</text>"#, x(t), H - BOTTOM + 16.0);
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds into the window</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0
    );
    let mut legend = Vec::new();
    if let Some(limit) = limit_drawn {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#d0342c" stroke-dasharray="6 4"/>"##,
            W - RIGHT,
            yy = y(limit)
        );
        legend.push(("#d0342c".to_string(), format!("limit {}", human_bytes(clamp(limit)))));
    } else if let Some(limit) = r.memory.limit_bytes {
        legend.push(("#d0342c".to_string(), format!("limit {} (off scale)", human_bytes(clamp(limit)))));
    }
    for (name, color, field) in SERIES {
        let points: Vec<String> =
            samples.iter().filter_map(|s| field(s).map(|v| format!("{:.1},{:.1}", x(s.t), y(v)))).collect();
        if points.is_empty() {
            continue;
        }
        let _ =
            write!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, points.join(" "));
        legend.push((color.to_string(), name.to_string()));
    }
    for (i, k) in r.oom_kills.iter().enumerate() {
        let _ = write!(
            svg,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{}" stroke="#d0342c" stroke-width="2"><title>OOM kill {}: {} (pid {}) at {:.1} s</title></line><text x="{:.1}" y="{}" fill="#d0342c">OOM {}</text>"##,
            H - BOTTOM,
            i + 1,
            esc(&k.comm),
            k.pid,
            k.t,
            x(k.t) + 3.0,
            TOP + 12.0 + 12.0 * (i % 3) as f64,
            i + 1,
            xx = x(k.t)
        );
    }
    for (i, (color, name)) in legend.iter().enumerate() {
        let ly = TOP + 8.0 + 18.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 12.0,
            W - RIGHT + 32.0,
            W - RIGHT + 38.0,
            ly + 4.0,
            esc(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{export::flamegraph::tests::xml_texts, report::tests::sample_report};

    fn page() -> String {
        let r = sample_report();
        render(&r, b"<svg height=\"321\"></svg>", b"<svg></svg>")
    }

    #[test]
    fn verdict_sites_stacks_and_oom_kills_shown() {
        let html = page();
        for needle in [
            "<title>leaktrace: docker container leaky</title>",
            "Verdict: inconclusive",
            "largest site: <code>grow_cache</code> holds 64.0 MiB (anon)",
            "<details><summary><code>grow_cache</code></summary>",
            r#"<li class="kernel">clear_page_erms"#,
            "kind kind-slab\">slab:kmalloc-256",
            "1. t=9.5 s: victim leaker (pid 42), triggered by worker (pid 43)",
            "ringbuf_drops 3",
        ] {
            assert!(html.contains(needle), "missing {needle:?}");
        }
    }

    #[test]
    fn self_contained() {
        let html = page();
        for forbidden in ["http://", "https://", "<script src", "<link", "@import", "url("] {
            // The only URLs are SVG namespaces inside inline SVG and the data: frames.
            let hits = html.matches(forbidden).count();
            let allowed = if forbidden == "http://" { html.matches("http://www.w3.org/2000/svg").count() } else { 0 };
            assert_eq!(hits, allowed, "{forbidden}");
        }
        assert!(html.contains("default-src 'none'"));
        assert!(html.contains(r#"height="341" src="data:image/svg+xml;base64,PHN2ZyBoZWlnaHQ9IjMyMSI+PC9zdmc+""#));
    }

    #[test]
    fn chart_is_valid_svg_with_limit_oom_and_series() {
        let r = sample_report();
        let svg = chart(&r);
        let texts = xml_texts(svg.as_bytes()).join("|");
        assert!(texts.contains("limit 128.0 MiB") && texts.contains("OOM 1"), "{texts}");
        for name in ["usage", "anon", "file"] {
            assert!(texts.contains(&format!("|{name}|")), "legend misses {name}: {texts}");
        }
        assert!(!texts.contains("|slab|"), "slab is null in every sample: no line");
        assert_eq!(svg.matches("<polyline").count(), 3);
    }

    #[test]
    fn far_limit_named_not_drawn_and_no_samples_handled() {
        let mut r = sample_report();
        r.memory.limit_bytes = Some(1 << 40);
        assert!(chart(&r).contains("limit 1.0 TiB (off scale)"));
        r.memory.samples.clear();
        assert!(chart(&r).contains("No memory samples"));
        r.sites.clear();
        r.oom_kills.clear();
        let html = render(&r, b"", b"");
        assert!(html.contains("No allocation sites recorded."));
    }

    #[test]
    fn hostile_names_escaped() {
        let mut r = sample_report();
        r.sites[0].frames[2].symbol = Some("<script>alert(1)</script>".into());
        r.oom_kills[0].comm = "a\"b<c".into();
        let html = render(&r, b"", b"");
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("a\"b<c"));
    }
}
