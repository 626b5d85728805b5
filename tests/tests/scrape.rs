//! `--listen` on a real trace of an ordinary leaking service, read by its real consumers: Debian's Prometheus
//! scrapes `/metrics` (the test asks Prometheus's HTTP API for the verdict and the top site's function), and
//! `go tool pprof` fetches `/pprof/heap` over HTTP. `cargo xtask bootstrap` installs prometheus and go.
use std::{
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use leaktrace_e2e::{
    app_label, assert_nothing_attached, build_workload, describe, items,
    prometheus::{free_port, get, pprof_top, query, start_prometheus},
    read_report, require_root, serial, Leaktrace, Memcg,
};

/// A leak of 256 KiB session records at 4 MiB/s (tests/workloads/session_heap.c), traced with `--listen` while
/// Prometheus scrapes it: the verdict and the top site's function reach Prometheus as series of the cgroup, the
/// profile fetched over HTTP names the function, and the report written at the end agrees.
#[test]
fn prometheus_scrapes_the_verdict_and_pprof_fetches_the_profile() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let exe = build_workload("session_heap")?;
    let memcg = Memcg::create("scrape", Some(512 << 20))?;
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut trace = Leaktrace::trace_with(&memcg, 120, &dir.path().join("out"), &["--listen", &listen], &[])?;
    let (_prometheus, prometheus) = start_prometheus(dir.path(), &listen)?;
    let mut cmd = Command::new(&exe);
    cmd.args(["4", "60", "120"]).stderr(Stdio::null());
    let _workload = memcg.spawn_in(cmd)?;

    // The verdict needs a trend: a few seconds of growth after the warm-up.
    let cgroup = memcg.path().display().to_string();
    let selector = format!("{{cgroup=\"{cgroup}\"}}");
    let begun = Instant::now();
    let (verdict, top) = loop {
        let verdict = query(&prometheus, &format!("leaktrace_verdict_info{selector}"))?;
        let top = query(&prometheus, &format!("leaktrace_site_outstanding_bytes{{cgroup=\"{cgroup}\",rank=\"1\"}}"))?;
        let class = verdict.first().and_then(|v| v["metric"]["class"].as_str()).unwrap_or("");
        if class == "heap-leak" && !top.is_empty() {
            break (verdict, top);
        }
        if begun.elapsed() > Duration::from_secs(45) {
            bail!("after 45 s Prometheus has verdict {verdict:?} and top site {top:?}");
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let function = top[0]["metric"]["function"].as_str().unwrap_or("").to_string();
    eprintln!("prometheus: verdict {}\nprometheus: top site {}", verdict[0], top[0]);
    ensure!(function == "fill_record", "the top site's function in Prometheus is {function:?}, not fill_record");
    let confidence = query(&prometheus, &format!("leaktrace_verdict_confidence{selector}"))?;
    let confidence: f64 = confidence.first().and_then(|v| v["value"][1].as_str()?.parse().ok()).unwrap_or(0.0);
    ensure!(confidence >= 0.5, "confidence {confidence} in Prometheus");
    let anon = query(&prometheus, &format!("leaktrace_memory_bytes{{cgroup=\"{cgroup}\",category=\"anon\"}}"))?;
    ensure!(anon.len() == 1, "one anon series, not {anon:?}");
    let up = query(&prometheus, "up{job=\"leaktrace\"}")?;
    ensure!(up.first().is_some_and(|v| v["value"][1] == "1"), "the scrape is not up: {up:?}");

    // go tool pprof fetches the profile over HTTP, as it would from any pprof endpoint.
    let top_text = pprof_top(&format!("http://{listen}/pprof/heap"))?;
    ensure!(top_text.lines().any(|l| l.contains("fill_record")), "go tool pprof -top does not show fill_record");

    let (status, body) = get(&listen, "/nowhere")?;
    ensure!(status == 404, "an unknown path answered {status}: {}", String::from_utf8_lossy(&body));

    trace.interrupt();
    let done = trace.wait(Duration::from_secs(60))?;
    ensure!(done.status.success(), "leaktrace failed: {}", describe(&done));
    assert_nothing_attached()?;
    ensure!(TcpStream::connect(&listen).is_err(), "{listen} still listens after the trace ended");
    let report = read_report(&dir.path().join("out"))?;
    let last_top = items(&report["sites"]).iter().find(|s| s["kind"] == "anon").context("no anon site")?;
    ensure!(app_label(last_top) == Some("fill_record"), "the report's top anon site is {:?}", app_label(last_top));
    Ok(())
}
