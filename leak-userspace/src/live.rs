//! The live view while tracing, refreshed every interval: usage against the limit, how anon/file/slab move, the top
//! sites, OOM kills so far, what the tracer sees per second and what it loses. On a terminal it redraws a few lines
//! in place on stderr; otherwise (a log file, a pipe) it prints one plain line per interval. `--quiet` turns it off.
use std::io::{IsTerminal, Write};
use std::time::Instant;

use leak_common::counter;

use crate::{
    collect::Collector,
    export::{clamp, human_bytes, summary::site_line},
    probes::Probes,
    report::{Sample, Site},
};

/// Growth rates are measured over about this many seconds of samples: long enough to smooth one interval's noise.
const TREND_SECS: f64 = 10.0;
/// Sites shown on a terminal (a plain line shows the first only).
const SCREEN_SITES: usize = 3;

pub struct Live {
    style: Style,
    /// When the event counters were last read, and their total then.
    last_events: Option<(Instant, u64)>,
    /// Follower notes already printed.
    notes_shown: usize,
    /// Decimals of `t=`: one when the interval is under a second, so consecutive lines do not repeat a time.
    decimals: usize,
}

enum Style {
    Off,
    Lines,
    /// Lines drawn last time, to erase before redrawing.
    Screen(usize),
}

/// What one refresh shows.
#[derive(Debug, Default)]
struct View<'a> {
    t: f64,
    decimals: usize,
    usage: Option<u64>,
    limit: Option<u64>,
    /// (name, latest value, bytes per second over the trend window).
    trend: Vec<(&'static str, Option<u64>, Option<f64>)>,
    sites: &'a [Site],
    oom_kills: usize,
    restarts: usize,
    events_per_sec: Option<f64>,
    lost: u64,
}

impl Live {
    pub fn new(quiet: bool, interval: f64) -> Self {
        let style = match (quiet, std::io::stderr().is_terminal()) {
            (true, _) => Style::Off,
            (false, true) => Style::Screen(0),
            (false, false) => Style::Lines,
        };
        Live { style, last_events: None, notes_shown: 0, decimals: usize::from(interval < 1.0) }
    }

    /// One refresh, after the collector's tick. Failing to read a map only leaves a figure out.
    pub fn show(&mut self, collector: &mut Collector, probes: &Probes) {
        if matches!(self.style, Style::Off) {
            return;
        }
        let wanted = if matches!(self.style, Style::Screen(_)) { SCREEN_SITES } else { 1 };
        let sites = collector.top_sites(probes, wanted).unwrap_or_default();
        let counters = probes.counters().ok();
        let events = counters.map(|c| c[counter::ALLOC_EVENTS as usize] + c[counter::FREE_EVENTS as usize]);
        let now = Instant::now();
        let events_per_sec = match (self.last_events, events) {
            (Some((then, before)), Some(total)) if now > then => {
                Some(total.saturating_sub(before) as f64 / (now - then).as_secs_f64())
            }
            _ => None,
        };
        if let Some(total) = events {
            self.last_events = Some((now, total));
        }
        let lost = counters.map_or(0, |c| {
            [counter::RINGBUF_DROP, counter::LIVE_MAP_FULL, counter::SITE_MAP_FULL].iter().map(|&i| c[i as usize]).sum()
        });
        let samples = collector.window().samples();
        let last = samples.last();
        let view = View {
            t: last.map_or(0.0, |s| s.t),
            decimals: self.decimals,
            usage: last.map(|s| s.usage),
            limit: collector.window().limit(),
            trend: vec![
                ("anon", last.and_then(|s| s.anon), rate(samples, |s| s.anon)),
                ("file", last.and_then(|s| s.file), rate(samples, |s| s.file)),
                ("slab", last.and_then(|s| s.slab), rate(samples, |s| s.slab)),
            ],
            sites: &sites,
            oom_kills: collector.window().oom_kills().len(),
            restarts: collector.follower().cgroups().len() - 1,
            events_per_sec,
            lost,
        };
        let notes = &collector.follower().notes()[self.notes_shown..];
        self.notes_shown += notes.len();
        let mut err = std::io::stderr().lock();
        // The terminal may be gone (a closed ssh session): the trace goes on regardless.
        let _ = match &mut self.style {
            Style::Off => Ok(()),
            Style::Lines => {
                let mut lines = notes.iter().map(|n| format!("leaktrace: {n}")).chain([plain_line(&view)]);
                lines.try_for_each(|l| writeln!(err, "{l}"))
            }
            Style::Screen(drawn) => {
                let erase = if *drawn > 0 { format!("\x1b[{drawn}A\x1b[J") } else { String::new() };
                // A wrapped line would take two rows and the next erase would miss one.
                let width = terminal_width().unwrap_or(usize::MAX);
                let block: Vec<String> =
                    screen_lines(&view).into_iter().map(|l| l.chars().take(width).collect()).collect();
                *drawn = block.len();
                let lines: Vec<String> = notes.iter().map(|n| format!("leaktrace: {n}")).chain(block).collect();
                writeln!(err, "{erase}{}", lines.join("\n"))
            }
        };
    }
}

/// Columns of the terminal on stderr.
fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills a winsize, which zeroed is a valid value of.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// Bytes per second of `field` from about `TREND_SECS` ago to the latest sample.
fn rate(samples: &[Sample], field: impl Fn(&Sample) -> Option<u64>) -> Option<f64> {
    let last = samples.last()?;
    let from = samples.iter().find(|s| last.t - s.t <= TREND_SECS)?;
    let dt = last.t - from.t;
    let delta = field(last)? as f64 - field(from)? as f64;
    (dt > 0.0).then(|| delta / dt)
}

fn usage_text(v: &View) -> String {
    let usage = v.usage.map_or("n/a".to_string(), bytes);
    match (v.usage, v.limit) {
        (Some(u), Some(l)) if l > 0 => format!("{usage} / {} ({:.0}%)", bytes(l), u as f64 * 100.0 / l as f64),
        _ => format!("{usage} (no limit)"),
    }
}

fn trend_text(v: &View) -> String {
    let parts: Vec<String> = v
        .trend
        .iter()
        .map(|(name, value, rate)| match (value, rate) {
            (Some(value), Some(rate)) => format!("{name} {} ({}/s)", bytes(*value), signed(*rate)),
            (Some(value), None) => format!("{name} {}", bytes(*value)),
            (None, _) => format!("{name} n/a"),
        })
        .collect();
    parts.join("  ")
}

fn tracer_text(v: &View) -> String {
    let rate = v.events_per_sec.map_or("n/a".to_string(), |r| format!("{r:.0}/s"));
    format!("events {rate}, lost {}", v.lost)
}

fn kills_text(v: &View) -> String {
    let mut text = format!("OOM kills {}", v.oom_kills);
    if v.restarts > 0 {
        text += &format!(", restarts followed {}", v.restarts);
    }
    text
}

fn plain_line(v: &View) -> String {
    let mut line = format!(
        "leaktrace: t={:.*}s usage {} | {} | {} | {}",
        v.decimals,
        v.t,
        usage_text(v),
        trend_text(v),
        kills_text(v),
        tracer_text(v)
    );
    if let Some(top) = v.sites.first() {
        line += &format!(" | top: {}", squeeze(&site_line(top)));
    }
    line
}

fn screen_lines(v: &View) -> Vec<String> {
    let mut lines = vec![
        format!("leaktrace  t={:.*}s  usage {}  {}", v.decimals, v.t, usage_text(v), kills_text(v)),
        format!("  {}", trend_text(v)),
        format!("  {}", tracer_text(v)),
    ];
    lines.extend(v.sites.iter().enumerate().map(|(i, s)| format!("  {}. {}", i + 1, site_line(s))));
    lines
}

/// Runs of spaces (column padding) collapsed, for one-line output.
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn bytes(n: u64) -> String {
    human_bytes(clamp(n))
}

fn signed(rate: f64) -> String {
    let text = human_bytes(rate.round() as i64);
    if rate >= 0.5 {
        format!("+{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{frame, site};

    fn sample(t: f64, usage: u64, anon: u64) -> Sample {
        Sample { t, usage, anon: Some(anon), file: Some(1 << 20), pids: Some(1), ..Default::default() }
    }

    #[test]
    fn rate_over_the_trend_window() {
        let samples: Vec<Sample> = (0..=20).map(|i| sample(i as f64, 0, i << 20)).collect();
        // From t=10 to t=20: 10 MiB in 10 s.
        assert_eq!(rate(&samples, |s| s.anon), Some((1 << 20) as f64));
        assert_eq!(rate(&samples, |s| s.slab), None);
        assert_eq!(rate(&samples[..1], |s| s.anon), None);
        assert_eq!(rate(&[], |s| s.anon), None);
    }

    fn view(sites: &[Site]) -> View<'_> {
        View {
            t: 12.2,
            decimals: 0,
            usage: Some(48 << 20),
            limit: Some(64 << 20),
            trend: vec![
                ("anon", Some(40 << 20), Some(8.0 * (1 << 20) as f64)),
                ("file", Some(0), Some(0.0)),
                ("slab", None, None),
            ],
            sites,
            oom_kills: 2,
            restarts: 2,
            events_per_sec: Some(12345.4),
            lost: 0,
        }
    }

    #[test]
    fn plain_line_has_every_figure() {
        let sites = [site("anon", 40 << 20, vec![frame(Some("grow_cache"), 0x5555_0000_2000, false)])];
        let line = plain_line(&view(&sites));
        assert_eq!(
            line,
            "leaktrace: t=12s usage 48.0 MiB / 64.0 MiB (75%) | anon 40.0 MiB (+8.0 MiB/s)  file 0 B (0 B/s)  slab n/a \
             | OOM kills 2, restarts followed 2 | events 12345/s, lost 0 | top: anon 40.0 MiB grow_cache [leaker]"
        );
        assert!(!line.contains('\n'));
        let fine = View { decimals: 1, ..view(&sites) };
        assert!(plain_line(&fine).starts_with("leaktrace: t=12.2s usage"), "an interval under a second");
    }

    #[test]
    fn screen_block_and_missing_figures() {
        let sites = [site("anon", 40 << 20, vec![frame(Some("grow_cache"), 1, false)]), site("slab", 4096, vec![])];
        let lines = screen_lines(&view(&sites));
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(lines[0].starts_with("leaktrace  t=12s  usage 48.0 MiB / 64.0 MiB (75%)  OOM kills 2"), "{lines:?}");
        assert!(lines[4].starts_with("  2. slab"), "{lines:?}");
        let empty = View::default();
        let line = plain_line(&empty);
        assert!(line.contains("usage n/a (no limit)") && line.contains("events n/a, lost 0"), "{line}");
        assert!(!line.contains("top:") && !line.contains("restarts"), "{line}");
    }
}
