//! The exports of real traces, opened by their real consumers: profile.pb.gz by `go tool pprof`, every SVG by an XML
//! parser, report.html by headless Chromium (rendered, no console errors, screenshot taken), and `leaktrace diff`
//! on two real runs, one of them ended by Ctrl-C. `cargo xtask bootstrap` installs go and chromium.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use leaktrace_e2e::{
    assert_nothing_attached, build_workload, describe, items, read_report, require_root, run_leaktrace, serial,
    summarize, wait_timeout, Leaktrace, Memcg,
};
use quick_xml::{events::Event, Reader};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// One finished trace; the memcg (and the workload in it) goes on drop.
struct Run {
    dir: tempfile::TempDir,
    report: Value,
    _workload: Child,
    _memcg: Memcg,
}

/// How a trace ends.
enum End {
    Duration(u32),
    /// Ctrl-C after this long: the outputs must be written all the same.
    Interrupt(Duration),
}

fn trace(workload: &str, args: &[&str], limit: u64, end: End) -> Result<Run> {
    let exe = build_workload(workload)?;
    let memcg = Memcg::create(&format!("exports-{workload}"), Some(limit))?;
    let dir = tempfile::tempdir()?;
    let seconds = match end {
        End::Duration(s) => s,
        End::Interrupt(_) => 120,
    };
    let mut leaktrace = Leaktrace::trace(&memcg, seconds, dir.path())?;
    let mut cmd = Command::new(&exe);
    cmd.args(args).stderr(Stdio::null());
    let child = memcg.spawn_in(cmd)?;
    if let End::Interrupt(after) = end {
        std::thread::sleep(after);
        // The leaktrace child is the only process whose pid the harness gives out: signal it through /proc.
        signal_leaktrace(&memcg, libc::SIGINT)?;
    }
    let out = leaktrace.wait(Duration::from_secs(u64::from(seconds.min(30)) + 30))?;
    ensure!(out.status.success(), "leaktrace failed: {}", describe(&out));
    assert_nothing_attached()?;
    let report = read_report(dir.path())?;
    eprintln!("{workload}: {}", summarize(&report));
    Ok(Run { dir, report, _workload: child, _memcg: memcg })
}

/// Sends `sig` to the leaktrace process tracing `memcg` (found by its command line).
fn signal_leaktrace(memcg: &Memcg, sig: libc::c_int) -> Result<()> {
    let wanted = memcg.path().to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().is_some_and(|a| a.ends_with("leaktrace")) && args.contains(&wanted) {
            // SAFETY: plain syscall on a process this test started.
            unsafe { libc::kill(pid, sig) };
            return Ok(());
        }
    }
    bail!("no leaktrace process traces {wanted}")
}

/// Every output a run must leave, whatever ended it.
fn assert_every_file(run: &Run) -> Result<()> {
    let mut want: Vec<String> =
        ["report.json", "stacks.folded", "profile.pb.gz", "flamegraph.svg", "flamegraph-growth.svg", "report.html"]
            .map(String::from)
            .to_vec();
    want.extend((1..=items(&run.report["oom_kills"]).len()).map(|n| format!("flamegraph-oom-{n}.svg")));
    let have: BTreeSet<String> =
        std::fs::read_dir(run.dir.path())?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    for name in &want {
        ensure!(have.contains(name), "{name} missing from the outputs: {have:?}");
    }
    Ok(())
}

/// Runs a tool with a time limit and returns its output.
fn run_tool(cmd: &mut Command, what: &str, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {what} (cargo xtask bootstrap installs it)"))?;
    // Drained by threads, so a chatty tool never blocks on a full pipe while the time limit runs.
    let stdout = child.stdout.take().context("piped")?;
    let stderr = child.stderr.take().context("piped")?;
    let readers = [drain(stdout), drain(stderr)];
    if wait_timeout(&mut child, timeout)?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{what} did not finish within {timeout:?}");
    }
    let status = child.wait()?;
    let [out, err] = readers.map(|r| r.join().unwrap_or_default());
    Ok(Output { status, stdout: out, stderr: err })
}

fn drain(mut from: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        buf
    })
}

fn pprof(args: &[&str], profile: &Path) -> Result<String> {
    let out = run_tool(
        Command::new("go").args(["tool", "pprof"]).args(args).arg(profile),
        "go tool pprof",
        Duration::from_secs(60),
    )?;
    ensure!(out.status.success(), "go tool pprof {args:?} failed: {}", describe(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `go tool pprof -raw`: the four values of every sample, summed.
fn raw_totals(raw: &str) -> Result<[i64; 4]> {
    let samples = raw.split("\nSamples:\n").nth(1).context("no Samples section")?;
    let samples = samples.split("\nLocations").next().unwrap_or(samples);
    let mut totals = [0i64; 4];
    for line in samples.lines() {
        let Some((values, _)) = line.split_once(':') else { continue };
        let v: Vec<i64> = values.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if v.len() == 4 && values.split_whitespace().count() == 4 {
            for (t, x) in totals.iter_mut().zip(v) {
                *t += x;
            }
        }
    }
    Ok(totals)
}

fn sum(report: &Value, key: &str) -> i64 {
    items(&report["sites"]).iter().map(|s| s[key].as_i64().unwrap_or(0)).sum()
}

/// go tool pprof reads the profile, finds the leaking function and the kernel frames, and its totals are the
/// report's.
fn check_pprof(run: &Run, leak_fn: &str) -> Result<()> {
    let profile = run.dir.path().join("profile.pb.gz");
    let top = pprof(&["-top", "-sample_index=inuse_space", "-nodecount=60"], &profile)?;
    for needle in ["Type: inuse_space", leak_fn, "asm_exc_page_fault", "handle_mm_fault"] {
        ensure!(top.contains(needle), "go tool pprof -top misses {needle}:\n{top}");
    }
    let raw = pprof(&["-raw"], &profile)?;
    let totals = raw_totals(&raw)?;
    let want = [
        sum(&run.report, "alloc_count"),
        sum(&run.report, "alloc_bytes"),
        sum(&run.report, "outstanding_allocs"),
        sum(&run.report, "outstanding_bytes"),
    ];
    ensure!(totals == want, "pprof sample totals {totals:?} != report.json totals {want:?}");
    ensure!(raw.contains("kind:[anon]") && raw.contains("comm:["), "labels missing:\n{}", &raw[..raw.len().min(3000)]);
    check_inlined(&run.report, &raw)?;
    let mappings = raw.split("\nMappings\n").nth(1).context("no Mappings section")?;
    let kernel = mappings.lines().find(|l| l.contains("[kernel.kallsyms]")).context("no kernel mapping")?;
    ensure!(
        kernel.split_whitespace().any(|w| w.len() == 40 && w.chars().all(|c| c.is_ascii_hexdigit())),
        "kernel mapping without build id: {kernel}"
    );
    eprintln!(
        "pprof: totals {totals:?} match report.json; top:\n{}",
        top.lines().take(16).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

/// Functions the symbolizer reported as inlined (consecutive frames at one address) are one location in pprof: the
/// inner function's line followed by the outer's.
fn check_inlined(report: &Value, raw: &str) -> Result<()> {
    let inlined = items(&report["sites"]).iter().find_map(|site| {
        items(&site["frames"]).windows(2).find_map(|w| {
            let same = w[0]["address"] == w[1]["address"] && w[0]["symbol"] != w[1]["symbol"];
            same.then(|| Some((w[0]["symbol"].as_str()?, w[1]["symbol"].as_str()?))).flatten()
        })
    });
    let Some((inner, outer)) = inlined else {
        eprintln!("no inlined frames in this report: pprof's inline lines not checked");
        return Ok(());
    };
    let locations = raw.split("\nLocations\n").nth(1).context("no Locations section")?;
    let lines: Vec<&str> = locations.lines().collect();
    let found = lines.windows(2).any(|w| {
        w[0].contains(&format!(" {inner} "))
            && w[1].starts_with(char::is_whitespace)
            && w[1].trim_start().starts_with(&format!("{outer} "))
    });
    ensure!(found, "pprof does not show {inner} inlined into {outer}:\n{locations}");
    eprintln!("pprof shows {inner} inlined into {outer}");
    Ok(())
}

/// Parses `svg` as XML to the end; returns its text content.
fn svg_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = Reader::from_reader(bytes.as_slice());
    let mut buf = Vec::new();
    let mut text = String::new();
    let mut root = None;
    loop {
        match reader.read_event_into(&mut buf).with_context(|| format!("{} is not well-formed XML", path.display()))? {
            Event::Eof => break,
            Event::Start(e) if root.is_none() => root = Some(String::from_utf8_lossy(e.name().as_ref()).into_owned()),
            Event::Text(t) => text.push_str(&t.decode()?),
            Event::End(_) => text.push('\n'),
            _ => {}
        }
        buf.clear();
    }
    ensure!(root.as_deref() == Some("svg"), "{}: root element {root:?}", path.display());
    Ok(text)
}

fn check_svgs(run: &Run, leak_fn: &str) -> Result<()> {
    let memcg = run.report["target"]["cgroup_path"].as_str().unwrap_or_default();
    let mut checked = 0;
    for entry in std::fs::read_dir(run.dir.path())?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "svg") {
            let text = svg_text(&entry.path())?;
            ensure!(text.contains(memcg), "{} does not name {memcg}", entry.path().display());
            checked += 1;
        }
    }
    let window = svg_text(&run.dir.path().join("flamegraph.svg"))?;
    ensure!(
        window.contains("outstanding memory by call site") && window.contains(leak_fn),
        "flamegraph.svg:\n{window}"
    );
    let growth = svg_text(&run.dir.path().join("flamegraph-growth.svg"))?;
    ensure!(growth.contains("growth since") && growth.contains(leak_fn), "flamegraph-growth.svg:\n{growth}");
    eprintln!("{checked} SVG files parsed");
    Ok(())
}

/// Headless Chromium on a local file; `mode` is `--dump-dom` or `--screenshot=<png>`. Returns stdout and the
/// page's console messages (Chromium logs each one, errors included, as an `INFO:CONSOLE` line).
fn chromium(page: &Path, mode: &str) -> Result<(String, Vec<String>)> {
    let profile = tempfile::tempdir()?;
    let out = run_tool(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1280,2200",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(mode)
            .arg(format!("file://{}", page.display())),
        "chromium",
        Duration::from_secs(60),
    )?;
    ensure!(out.status.success(), "chromium failed: {}", describe(&out));
    let console =
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(String::from).collect();
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), console))
}

fn check_html(run: &Run, leak_fn: &str) -> Result<()> {
    // The console check must be able to fail: a page with an error has to show up in it.
    let broken = run.dir.path().join("broken.html");
    std::fs::write(&broken, "<html><body><script>undefined_function_here()</script></body></html>")?;
    let (_, console) = chromium(&broken, "--dump-dom")?;
    ensure!(console.iter().any(|l| l.contains("undefined_function_here")), "console errors are not seen: {console:?}");
    std::fs::remove_file(&broken)?;

    let page = run.dir.path().join("report.html");
    let (dom, console) = chromium(&page, "--dump-dom")?;
    ensure!(console.is_empty(), "report.html logged to the console:\n{}", console.join("\n"));
    for needle in ["Verdict:", leak_fn, "Top sites by outstanding bytes", "<polyline", "data:image/svg+xml;base64,"] {
        ensure!(dom.contains(needle), "the rendered report.html misses {needle:?}");
    }
    let shot = screenshot_path();
    let (_, console) = chromium(&page, &format!("--screenshot={}", shot.display()))?;
    ensure!(console.is_empty(), "report.html logged to the console:\n{}", console.join("\n"));
    let png = std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    ensure!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "screenshot of {} bytes", png.len());
    eprintln!("report.html rendered without console messages; screenshot: {}", shot.display());
    Ok(())
}

/// Kept after the test for people to look at.
fn screenshot_path() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-exports");
    let _ = std::fs::create_dir_all(&dir);
    dir.join("report.png")
}

#[test]
fn exports_open_in_pprof_xml_and_chromium_and_diff_compares_runs() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    // 8 MiB/s for 6 s, then held.
    let leak = trace("heap_leak", &["8", "6", "120"], 512 * MIB, End::Duration(7))?;
    assert_every_file(&leak)?;
    ensure!(!leak.report["sites_early"].is_null(), "no early picture of the sites in a 7 s window");
    check_pprof(&leak, "leak_heap_blocks")?;
    check_svgs(&leak, "leak_heap_blocks")?;
    check_html(&leak, "leak_heap_blocks")?;

    // "After the fix": an eighth of the leak, and the trace ended by Ctrl-C.
    let fixed = trace("heap_leak", &["1", "6", "120"], 512 * MIB, End::Interrupt(Duration::from_secs(6)))?;
    assert_every_file(&fixed)?;
    check_svgs(&fixed, "leak_heap_blocks")?;

    let out_dir = tempfile::tempdir()?;
    let out = run_leaktrace(
        &[
            "diff",
            &leak.dir.path().to_string_lossy(),
            &fixed.dir.path().to_string_lossy(),
            "--output",
            &out_dir.path().to_string_lossy(),
        ],
        Duration::from_secs(30),
    )?;
    ensure!(out.status.success(), "leaktrace diff failed: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let heap = text.lines().find(|l| l.contains("leak_heap_blocks") || l.contains("touched_block"));
    ensure!(
        heap.is_some_and(|l| l.trim_start().starts_with('-') && l.contains("MiB")),
        "the diff does not show the heap site shrinking:\n{text}"
    );
    ensure!(std::fs::read_to_string(out_dir.path().join("diff.txt"))? == text.split("wrote ").next().unwrap_or(""));
    let svg = svg_text(&out_dir.path().join("flamegraph-diff.svg"))?;
    ensure!(svg.contains("leaktrace diff:") && svg.contains("leak_heap_blocks"), "flamegraph-diff.svg:\n{svg}");
    eprintln!("{text}");

    let out = run_leaktrace(&["diff", "/nonexistent-a", "/nonexistent-b"], Duration::from_secs(30))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.starts_with("error: cannot read"), "bad diff input: {}", describe(&out));
    Ok(())
}

#[test]
fn each_oom_kill_gets_a_flame_graph_of_what_was_held() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let run = trace("oom_leak", &["16", "30"], 32 * MIB, End::Duration(5))?;
    let kills = items(&run.report["oom_kills"]).len();
    ensure!(kills >= 1, "no OOM kill recorded:\n{}", summarize(&run.report));
    assert_every_file(&run)?;
    let text = svg_text(&run.dir.path().join("flamegraph-oom-1.svg"))?;
    ensure!(
        text.contains("held before OOM kill 1") && text.contains("grow_until_killed"),
        "flamegraph-oom-1.svg:\n{text}"
    );
    let (dom, console) = chromium(&run.dir.path().join("report.html"), "--dump-dom")?;
    ensure!(console.is_empty(), "report.html logged to the console:\n{}", console.join("\n"));
    ensure!(dom.contains("OOM kills") && dom.contains("OOM 1"), "report.html does not show the OOM kill");
    Ok(())
}

#[test]
fn the_demo_report_leads_with_the_kill_and_its_flame_graph() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir()?;
    let out_dir = dir.path().join("demo");
    let out = run_leaktrace(&["demo", "--quiet", "--output", &out_dir.to_string_lossy()], Duration::from_secs(120))?;
    ensure!(out.status.success(), "demo failed: {}", describe(&out));
    let leak_fn = "demo_leak_cache_entries";
    // Nothing is outstanding once the workload is dead: every export carries the kill's picture, and says so.
    let folded = std::fs::read_to_string(out_dir.join("stacks.folded"))?;
    ensure!(folded.contains(leak_fn) && folded.contains("[held_before_OOM_kill_1_at_t="), "stacks.folded:\n{folded}");
    let top = pprof(&["-top"], &out_dir.join("profile.pb.gz"))?;
    ensure!(top.contains(leak_fn) && !top.contains("Total samples = 0"), "pprof -top:\n{top}");
    let svg = out_dir.join("flamegraph.svg");
    let text = svg_text(&svg)?;
    ensure!(text.contains("held before OOM kill 1 (the workload died)") && text.contains(leak_fn), "{text}");
    let summary = String::from_utf8_lossy(&out.stdout);
    ensure!(summary.contains("held just before OOM kill 1"), "summary:\n{summary}");

    let (dom, console) = chromium(&out_dir.join("report.html"), "--dump-dom")?;
    ensure!(console.is_empty(), "report.html logged to the console:\n{}", console.join("\n"));
    let encoded = run_tool(Command::new("base64").arg("-w0").arg(&svg), "base64", Duration::from_secs(10))?;
    let encoded = String::from_utf8_lossy(&encoded.stdout).into_owned();
    let kill_graph = dom.find("Flame graph before OOM kill 1").context("no flame graph of the kill on the page")?;
    let graph_at = dom.find(&encoded).context("flamegraph.svg is not embedded in report.html")?;
    let sites_at = dom.find("Top sites by outstanding bytes").context("no end-state table")?;
    ensure!(kill_graph < graph_at && graph_at < sites_at, "the kill's graph does not lead the page");
    ensure!(dom.find(leak_fn).is_some_and(|at| at < sites_at), "the kill's table does not name {leak_fn} first");
    ensure!(!dom.contains("Flame graph of outstanding memory"), "an empty end state's graph is still shown");
    eprintln!("demo summary:\n{summary}");
    Ok(())
}
