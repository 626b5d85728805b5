//! Prometheus and HTTP for the tests of `--listen` and the agent: Debian's Prometheus on a loopback port of its
//! own, its HTTP query API, and plain GETs.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::items;

/// A child killed and reaped when dropped, on every path out of the test.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A GET over HTTP/1.0 (so the answer is neither chunked nor kept alive): the status and the body.
pub fn get(addr: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").context("no end of the response head")?;
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status")?;
    Ok((status, out[end + 4..].to_vec()))
}

/// Percent-encodes a PromQL query for a URL.
pub fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prometheus's answer to an instant query: its result vector.
pub fn query(prometheus: &str, promql: &str) -> Result<Vec<Value>> {
    let (status, body) = get(prometheus, &format!("/api/v1/query?query={}", encode(promql)))?;
    ensure!(status == 200, "query {promql}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body)?;
    Ok(items(&v["data"]["result"]).to_vec())
}

/// Debian's Prometheus, scraping `target` every second, its data in `dir`; returns once it is ready.
pub fn start_prometheus(dir: &Path, target: &str) -> Result<(Reaped, String)> {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: leaktrace\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start prometheus (apt-get install prometheus, or cargo xtask bootstrap)")?;
    let prometheus = Reaped(child);
    let begun = Instant::now();
    while !get(&addr, "/-/ready").is_ok_and(|(s, _)| s == 200) {
        ensure!(begun.elapsed() < Duration::from_secs(30), "prometheus was not ready within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((prometheus, addr))
}

/// `go tool pprof -top` of the profile at `url`, fetched over HTTP as pprof fetches any profile.
pub fn pprof_top(url: &str) -> Result<String> {
    let home = tempfile::tempdir()?;
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-timeout", "30", url])
        .env("PPROF_TMPDIR", home.path())
        .env("HOME", home.path())
        .output()
        .context("cannot run go tool pprof")?;
    ensure!(out.status.success(), "go tool pprof failed: {}", String::from_utf8_lossy(&out.stderr));
    let top = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("go tool pprof -top {url}:\n{top}");
    Ok(top)
}
