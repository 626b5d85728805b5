//! `--node-heap`: the live JavaScript objects of every Node.js process of the target, by the function that
//! allocated them, from V8's sampling heap profiler. A JS object's pages are first touched by V8's collector as
//! it promotes the object, so page faults never name the JS function that holds the memory; the profiler does, as
//! Chrome DevTools' "Allocation sampling" shows it.
//!
//! The profiler is reached through the process's inspector: SIGUSR1 makes node open it on 127.0.0.1:9229 of its
//! own network namespace (one already open, `--inspect`, is used as it is), a websocket session there starts
//! sampling, and every interval the profile is fetched. At the end sampling stops and an inspector leaktrace opened
//! is closed again (`process._debugEnd()`); should leaktrace die first, its session's end stops the sampling.
use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use super::{
    go_heap::sampled_count,
    runtime_heap::{HeapStats, Profiler, Record, RuntimeHeap},
};
use crate::{
    report::Frame,
    stacks::{maps::exe_file, runtime::JS_MODULE},
};

/// Bytes between samples: V8's default, as DevTools uses it.
const SAMPLING_INTERVAL: u64 = 32 << 10;
/// How long node may take to open its inspector after SIGUSR1.
const OPEN_WAIT: Duration = Duration::from_secs(3);
/// How long one request may take to be answered.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The inspector's port unless `--inspect=<port>` chose another.
const DEFAULT_PORT: u16 = 9229;

/// report.json `collection.node_heaps[]`: one Node.js process profiled.
pub type NodeHeapStats = HeapStats<Inspected>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inspected {
    /// "opened" (by SIGUSR1, closed again at the end) or "already-open".
    pub inspector: String,
}

/// The profiling thread of `--node-heap`.
pub type NodeHeap = RuntimeHeap<Inspector>;

/// One process's inspector session.
pub struct Inspector {
    ws: WebSocket<TcpStream>,
    /// Where the inspector listens, in the process's network namespace.
    addr: SocketAddrV4,
    next_id: u64,
    stats: NodeHeapStats,
}

impl Profiler for Inspector {
    type Stats = Inspected;
    const THREAD: &'static str = "node-heap";

    fn runs_in(pid: u32) -> bool {
        is_node(pid)
    }

    /// node installs its SIGUSR1 handler as it starts: one that does not catch it yet is looked at again.
    fn not_yet(pid: u32) -> Option<&'static str> {
        (!catches_sigusr1(pid))
            .then_some("node does not catch SIGUSR1 (starting, no inspector, or --disable-sigusr1): not signalled")
    }

    fn open(pid: u32) -> Result<Self> {
        Inspector::start(pid)
    }

    fn profile(&mut self) -> Result<Vec<Record>> {
        let mut result = self.call("HeapProfiler.getSamplingProfile", json!({}))?;
        let profile: Profile =
            serde_json::from_value(result["profile"].take()).context("an unexpected sampling heap profile")?;
        Ok(records(&profile))
    }

    /// Stops sampling; closes the inspector if it was leaktrace that opened it.
    fn close(&mut self) {
        if let Err(e) = self.call("HeapProfiler.stopSampling", json!({})) {
            self.stats.last_error = Some(format!("{e:#}"));
        }
        if self.stats.runtime.inspector != "opened" {
            let _ = self.ws.close(None);
            let _ = self.ws.flush();
            return;
        }
        // On node's next turn, once this command is answered: ending the inspector from inside the handler of one
        // of its own sessions tears the session down while it is still in use. Then the session is left for node
        // to end: node 20 crashed (SIGSEGV, 1 run in 5 on a busy machine) when leaktrace closed it while the
        // inspector was being torn down.
        let end = json!({ "expression": "setImmediate(() => process._debugEnd())" });
        match self.call("Runtime.evaluate", end) {
            Ok(_) => self.until_hung_up(),
            Err(e) => self.stats.last_error = Some(format!("{e:#}")),
        }
        // Closed again before leaktrace says it is done.
        let since = Instant::now();
        while listening(self.stats.pid).contains(&self.addr) && since.elapsed() < ANSWER_WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stats(&mut self) -> &mut NodeHeapStats {
        &mut self.stats
    }
}

/// Whether process `pid` runs node: its executable is named `node` or `nodejs`.
fn is_node(pid: u32) -> bool {
    exe_file(pid).is_some()
        && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| {
            p.file_name().is_some_and(|n| n == "node" || n == "nodejs" || n.to_string_lossy().starts_with("node-"))
        })
}

/// Whether `pid` catches SIGUSR1 (`SigCgt`): node does when it has an inspector, and a process that does not
/// would be killed by it.
fn catches_sigusr1(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim);
    caught.and_then(|m| u64::from_str_radix(m, 16).ok()).is_some_and(|m| m & 1 << (libc::SIGUSR1 - 1) != 0)
}

impl Inspector {
    fn start(pid: u32) -> Result<Inspector> {
        let before = listening(pid);
        let (addr, inspector) = match before.iter().find(|a| a.port() == DEFAULT_PORT) {
            Some(&a) => (a, "already-open"),
            None => {
                // SAFETY: kill has no memory preconditions; node catches SIGUSR1 (checked before).
                if unsafe { libc::kill(pid as i32, libc::SIGUSR1) } != 0 {
                    bail!("cannot signal pid {pid}: {}", std::io::Error::last_os_error());
                }
                let since = Instant::now();
                loop {
                    if let Some(a) = listening(pid).into_iter().find(|a| !before.contains(a)) {
                        break (a, "opened");
                    }
                    if since.elapsed() > OPEN_WAIT {
                        bail!("node opened no inspector within {} s of SIGUSR1", OPEN_WAIT.as_secs());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let stats = HeapStats { pid, runtime: Inspected { inspector: inspector.into() }, ..Default::default() };
        let url = debugger_url(pid, addr)?;
        let (ws, _) = tungstenite::client(url.as_str(), connect_in(pid, addr)?)
            .map_err(|e| anyhow::anyhow!("the inspector's websocket at {url}: {e}"))?;
        let mut s = Inspector { ws, addr, next_id: 1, stats };
        s.call("HeapProfiler.enable", json!({}))?;
        s.call("HeapProfiler.startSampling", json!({ "samplingInterval": SAMPLING_INTERVAL }))?;
        Ok(s)
    }

    /// Waits for node to end the session (its Close frame, which tungstenite answers) and the connection.
    fn until_hung_up(&mut self) {
        let since = Instant::now();
        while since.elapsed() < ANSWER_WAIT && self.ws.read().is_ok() {}
    }

    /// Sends one command and waits for its answer (events on the way are skipped).
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(text)).with_context(|| format!("{method}: cannot send"))?;
        loop {
            let message = self.ws.read().with_context(|| format!("{method}: no answer"))?;
            let Message::Text(text) = message else { continue };
            let mut de = serde_json::Deserializer::from_str(text.as_str());
            // A profile nests two levels a frame, and V8 keeps 128 frames: past serde_json's default limit.
            de.disable_recursion_limit();
            let mut answer = Value::deserialize(&mut de).with_context(|| format!("{method}: not JSON"))?;
            if answer["id"] != id {
                continue;
            }
            if let Some(e) = answer.get("error") {
                bail!("{method}: {}", e["message"].as_str().unwrap_or("failed"));
            }
            return Ok(answer["result"].take());
        }
    }
}

/// The listening IPv4 sockets of `pid`, as its own network namespace's `/proc/<pid>/net/tcp` lists them.
fn listening(pid: u32) -> Vec<SocketAddrV4> {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    parse_listening(&tcp, &inodes)
}

/// `/proc/net/tcp` lines in state LISTEN (0A) whose socket is among `inodes`.
fn parse_listening(tcp: &str, inodes: &HashSet<u64>) -> Vec<SocketAddrV4> {
    tcp.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&"0A") || !inodes.contains(&f.get(9)?.parse().ok()?) {
                return None;
            }
            let (ip, port) = f.get(1)?.split_once(':')?;
            // The address is printed as the kernel holds it, in network order read as a host (little-endian) word.
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes());
            let ip = if ip.is_unspecified() { Ipv4Addr::LOCALHOST } else { ip };
            Some(SocketAddrV4::new(ip, u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}

/// A TCP connection to `addr` in the network namespace of `pid` (a container's loopback is its own), made on a
/// thread that enters it: a socket stays in the namespace it was made in.
fn connect_in(pid: u32, addr: SocketAddrV4) -> Result<TcpStream> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).context("its network namespace")?;
    let stream = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a valid namespace fd changes only this short-lived thread's namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("cannot enter its network namespace: {}", std::io::Error::last_os_error());
                }
                TcpStream::connect_timeout(&SocketAddr::V4(addr), ANSWER_WAIT)
                    .with_context(|| format!("cannot connect to its inspector at {addr}"))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))?
    })?;
    stream.set_read_timeout(Some(ANSWER_WAIT))?;
    stream.set_write_timeout(Some(ANSWER_WAIT))?;
    Ok(stream)
}

/// The websocket URL of the process's inspector target, from its `/json/list`.
fn debugger_url(pid: u32, addr: SocketAddrV4) -> Result<String> {
    let mut stream = connect_in(pid, addr)?;
    write!(stream, "GET /json/list HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let body = read_http_body(&mut stream).context("the inspector's /json/list")?;
    let targets: Vec<Value> = serde_json::from_slice(&body).context("the inspector's /json/list is no JSON list")?;
    targets
        .iter()
        .find_map(|t| t["webSocketDebuggerUrl"].as_str())
        .map(str::to_string)
        .context("the inspector lists no target")
}

/// The body of one HTTP response, by its Content-Length: the inspector keeps the connection open after it.
fn read_http_body(stream: &mut impl Read) -> Result<Vec<u8>> {
    const MAX: usize = 1 << 20;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = response.parse(&raw)? {
            if response.code != Some(200) {
                bail!("answered HTTP {}", response.code.unwrap_or(0));
            }
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .context("no Content-Length")?;
            if raw.len() >= head + length {
                return Ok(raw[head..head + length].to_vec());
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || raw.len() > MAX {
            bail!("the answer ended after {} bytes", raw.len());
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    head: ProfileNode,
    #[serde(default)]
    samples: Vec<ProfileSample>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileNode {
    call_frame: CallFrame,
    self_size: f64,
    id: u64,
    #[serde(default)]
    children: Vec<ProfileNode>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallFrame {
    function_name: String,
    url: String,
    /// 0-based; -1 when unknown.
    line_number: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileSample {
    size: f64,
    node_id: u64,
}

/// The profile's stacks of live objects. A node's `selfSize` is V8's estimate of the live bytes allocated there
/// (each sample scaled by its chance of being taken); its objects are estimated the same way from its samples.
fn records(profile: &Profile) -> Vec<Record> {
    let mut objects: HashMap<u64, f64> = HashMap::new();
    for s in &profile.samples {
        *objects.entry(s.node_id).or_default() += sampled_count(s.size, SAMPLING_INTERVAL);
    }
    let mut out = Vec::new();
    let mut path = Vec::new();
    walk(&profile.head, &mut path, &objects, &mut out);
    out
}

fn walk<'a>(node: &'a ProfileNode, path: &mut Vec<&'a CallFrame>, objects: &HashMap<u64, f64>, out: &mut Vec<Record>) {
    // The root is no frame.
    let root = path.is_empty() && node.call_frame.function_name == "(root)";
    if !root {
        path.push(&node.call_frame);
    }
    if node.self_size > 0.0 && !path.is_empty() {
        let frames = path.iter().map(|f| frame(f)).rev().collect();
        out.push(Record { frames, bytes: node.self_size, objects: objects.get(&node.id).copied().unwrap_or(0.0) });
    }
    for child in &node.children {
        walk(child, path, objects, out);
    }
    if !root {
        path.pop();
    }
}

/// A report frame of a JS function: its name (or `(anonymous)`), script and line. V8's pseudo-frames (`(V8
/// API)`, `(GC)`, `(BYTECODE_COMPILER)`) keep their names. Its address stands for the function (a hash of where
/// it is), so that two functions in a row never look like one inlined into the other in pprof's locations.
fn frame(f: &CallFrame) -> Frame {
    use std::hash::{Hash, Hasher};
    let name = if f.function_name.is_empty() { "(anonymous)" } else { &f.function_name };
    let mut h = std::hash::DefaultHasher::new();
    (name, &f.url, f.line_number).hash(&mut h);
    Frame {
        symbol: Some(name.to_string()),
        module: Some(JS_MODULE.to_string()),
        address: format!("{:#x}", h.finish() >> 16),
        file: (!f.url.is_empty()).then(|| f.url.clone()),
        line: u32::try_from(f.line_number + 1).ok().filter(|&l| l > 0),
        kernel: false,
        unwind: Some("profile".to_string()),
    }
}

#[cfg(test)]
mod tests;
