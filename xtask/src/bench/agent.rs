//! The agent's cost on a node of many containers: 50 containers of the mixed service loop (bench_churn mixed, a
//! pipe round trip, a heap buffer and now and then a mapping per request) and 2 leaking ones (session_heap at
//! 1 MiB/s), each a memcg named as containerd names a container's (its 64-digit id), under `leaktrace agent` and
//! without it, in interleaved rounds; Prometheus's scrapes stand in as a GET of /metrics every 5 s. Then the
//! same containers asleep, for the agent's cost at idle. What it reports: the slowdown of the 50 loops' total
//! throughput, the agent's CPU (share of one core), peak RSS against its target of 64 MiB and 1 MiB per container,
//! kernel map memory, what a scrape takes, and the events dropped.
use std::{
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use leaktrace_e2e::{
    build_workload,
    prometheus::{free_port, get},
    Leaktrace, Memcg,
};
use serde_json::{json, Value};

use super::{map_memory, median, parse_ops, Options};

const CHURNING: usize = 50;
const LEAKING: usize = 2;
/// The containers' ids begin so, for `--select`.
const ID_PREFIX: &str = "be7c0a9e";
const SCRAPE_EVERY: Duration = Duration::from_secs(5);
const IDLE_SECONDS: f64 = 20.0;

/// The agent's share of the bench's results (`agent` in results.json).
pub fn run(opts: &Options, rounds: usize, seconds: f64) -> Result<Value> {
    let churn = build_workload("bench_churn")?;
    let leak = build_workload("session_heap")?;
    let parent = Memcg::create("bench-agent", None)?;
    let containers: Vec<Memcg> =
        (0..CHURNING + LEAKING).map(|i| parent.child(&container_id(i))).collect::<Result<_>>()?;
    let seconds = seconds.max(10.0);
    let mut untraced = Vec::new();
    let mut traced = Vec::new();
    let mut costs = Vec::new();
    for round in 0..rounds {
        // Alternate which goes first, so neither always follows the other.
        for agent in [round % 2 == 1, round % 2 == 0] {
            if agent {
                let mut a = Agent::start(opts)?;
                a.wait_for(CHURNING + LEAKING)?;
                let (ops, cost) = a.during(|| run_all(&containers, &churn, &leak, seconds))?;
                traced.push(ops);
                costs.push(cost);
            } else {
                untraced.push(run_all(&containers, &churn, &leak, seconds)?);
            }
        }
        println!("bench: agent round {}/{rounds} done", round + 1);
    }
    let idle = idle_cost(opts, &containers)?;
    drop(containers);
    drop(parent);
    let ratios: Vec<f64> = untraced.iter().zip(&traced).map(|(u, t)| u / t).collect();
    let field = |f: fn(&Cost) -> f64| median(&costs.iter().map(f).collect::<Vec<_>>());
    Ok(json!({
        "containers": CHURNING + LEAKING,
        "seconds": seconds,
        "rounds": rounds,
        "untraced_ops_per_s": median(&untraced),
        "traced_ops_per_s": median(&traced),
        "slowdown": median(&ratios),
        "slowdown_min": ratios.iter().copied().fold(f64::INFINITY, f64::min),
        "slowdown_max": ratios.iter().copied().fold(0.0, f64::max),
        "cpu_share": field(|c| c.cpu_share),
        "idle_cpu_share": idle.cpu_share,
        "peak_rss_bytes": costs.iter().map(|c| c.peak_rss_bytes).chain([idle.peak_rss_bytes]).max(),
        "rss_target_bytes": (64 + CHURNING + LEAKING) << 20,
        "map_bytes": field(|c| c.map_bytes as f64),
        "scrape_ms": field(|c| c.scrape_ms),
        "dropped": costs.iter().map(|c| c.dropped).sum::<f64>(),
        "drops": summed(costs.iter().map(|c| &c.drops)),
        "thinned": costs.iter().map(|c| c.thinned).sum::<f64>(),
    }))
}

/// Every container's workload at once for `seconds`; returns the churning loops' total operations per second.
fn run_all(containers: &[Memcg], churn: &std::path::Path, leak: &std::path::Path, seconds: f64) -> Result<f64> {
    let secs = seconds.to_string();
    let mut children: Vec<(bool, Child)> = Vec::new();
    for (i, memcg) in containers.iter().enumerate() {
        let churning = i < CHURNING;
        let mut cmd = if churning { Command::new(churn) } else { Command::new(leak) };
        if churning {
            cmd.args(["mixed", &secs]);
        } else {
            cmd.args(["1", &secs, "0"]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        children.push((churning, memcg.spawn_in(cmd)?));
    }
    let mut total = 0.0;
    for (churning, child) in children {
        let out = child.wait_with_output()?;
        if churning {
            let text = String::from_utf8_lossy(&out.stdout);
            total += parse_ops(&text).with_context(|| format!("bench_churn mixed printed {text:?}"))?;
        }
    }
    Ok(total)
}

/// The agent with the containers asleep: its CPU over `IDLE_SECONDS` once it traces them all.
fn idle_cost(opts: &Options, containers: &[Memcg]) -> Result<Cost> {
    let sleepers: Vec<Child> = containers
        .iter()
        .map(|m| {
            let mut cmd = Command::new("sleep");
            cmd.arg("3600");
            m.spawn_in(cmd)
        })
        .collect::<Result<_>>()?;
    let mut a = Agent::start(opts)?;
    a.wait_for(containers.len())?;
    let cost = a.during(|| {
        thread::sleep(Duration::from_secs_f64(IDLE_SECONDS));
        Ok(())
    });
    for mut s in sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
    Ok(cost?.1)
}

struct Cost {
    cpu_share: f64,
    peak_rss_bytes: u64,
    map_bytes: u64,
    scrape_ms: f64,
    dropped: f64,
    drops: Value,
    /// Allocations thinned out while the user stack ring was filling (not lost: the others weigh more).
    thinned: f64,
}

struct Agent {
    trace: Leaktrace,
    listen: String,
}

impl Agent {
    fn start(opts: &Options) -> Result<Agent> {
        std::env::set_var("LEAKTRACE_BIN", &opts.leaktrace);
        let listen = format!("127.0.0.1:{}", free_port()?);
        let select = format!("{ID_PREFIX}*");
        let args = ["agent", "--select", &select, "--listen", &listen, "--interval", "2"];
        let mut trace = Leaktrace::spawn_echoing(&args, false)?;
        trace.wait_attached(Duration::from_secs(30))?;
        Ok(Agent { trace, listen })
    }

    /// Waits until the agent traces `n` containers.
    fn wait_for(&mut self, n: usize) -> Result<()> {
        let begun = Instant::now();
        loop {
            let listing =
                get(&self.listen, "/pprof/").map(|(_, b)| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            if listing.lines().filter(|l| !l.ends_with("(gone)")).count() >= n {
                return Ok(());
            }
            ensure!(begun.elapsed() < Duration::from_secs(20), "the agent traces {listing:?}, not {n} containers");
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `work` while scraping the agent as Prometheus would; then stops the agent. Returns what `work`
    /// returned and what the agent cost meanwhile.
    fn during<T>(&mut self, work: impl FnOnce() -> Result<T> + Send) -> Result<(T, Cost)>
    where
        T: Send,
    {
        let pid = self.trace.pid();
        let map_bytes = map_memory(pid);
        let cpu_before = cpu_seconds(pid)?;
        let begun = Instant::now();
        let listen = self.listen.clone();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (result, scrapes) = thread::scope(|s| {
            let scraper = s.spawn(|| {
                let mut scrapes: Vec<(f64, String)> = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Ok((200, body)) = get(&listen, "/metrics") {
                        scrapes.push((t.elapsed().as_secs_f64() * 1e3, String::from_utf8_lossy(&body).into_owned()));
                    }
                    let next = t + SCRAPE_EVERY;
                    while Instant::now() < next && !done.load(std::sync::atomic::Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(50));
                    }
                }
                scrapes
            });
            let result = work();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (result, scraper.join().unwrap_or_default())
        });
        let result = result?;
        let wall = begun.elapsed().as_secs_f64();
        let cpu_share = (cpu_seconds(pid)? - cpu_before) / wall;
        let peak_rss_bytes = status_kib(pid, "VmHWM")? << 10;
        let drops = self.drops()?;
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let out = self.trace.wait(Duration::from_secs(60))?;
        if !out.status.success() {
            bail!("the agent failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let scrape_ms = median(&scrapes.iter().map(|s| s.0).collect::<Vec<_>>());
        let last = |name: &str| scrapes.last().and_then(|(_, body)| series(body, name)).unwrap_or(0.0);
        let (dropped, thinned) = (last("leaktrace_events_dropped_total"), last("leaktrace_allocations_thinned_total"));
        Ok((result, Cost { cpu_share, peak_rss_bytes, map_bytes, scrape_ms, dropped, drops, thinned }))
    }

    /// What was dropped, by cause (the counters are the agent's, in every container's report).
    fn drops(&self) -> Result<Value> {
        let key = &container_id(0)[..12];
        let (status, body) = get(&self.listen, &format!("/report/{key}.json"))?;
        ensure!(status == 200, "GET /report/{key}.json answered {status}");
        let report: Value = serde_json::from_slice(&body)?;
        let c = &report["collection"];
        Ok(json!({
            "live_map_full": c["live_map_full"],
            "site_map_full": c["site_map_full"],
            "ringbuf_drops": c["ringbuf_drops"],
            "stack_ring_full": c["unwind"]["lost_ring_full"],
            "stack_nested": c["unwind"]["lost_nested"],
        }))
    }
}

/// The causes of drops that happened, as " (cause n, ...)".
fn causes(drops: &Value) -> String {
    let Some(o) = drops.as_object() else { return String::new() };
    let some: Vec<String> =
        o.iter().filter(|(_, v)| v.as_u64() > Some(0)).map(|(k, v)| format!("{} {v}", k.replace('_', " "))).collect();
    if some.is_empty() {
        String::new()
    } else {
        format!(" ({})", some.join(", "))
    }
}

/// Objects of counters, summed key by key.
fn summed<'a>(all: impl Iterator<Item = &'a Value>) -> Value {
    let mut sum = serde_json::Map::new();
    for o in all.filter_map(Value::as_object) {
        for (k, v) in o {
            let was = sum.get(k).and_then(Value::as_u64).unwrap_or(0);
            sum.insert(k.clone(), json!(was + v.as_u64().unwrap_or(0)));
        }
    }
    Value::Object(sum)
}

/// The `i`th container's id.
fn container_id(i: usize) -> String {
    format!("{ID_PREFIX}{i:056x}")
}

/// The value of a series without labels (`name{}`) in a Prometheus exposition.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix("{} ")?.parse().ok())
}

/// A process's user + system CPU seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command (which may hold spaces) start after its closing parenthesis.
    let after = stat.rsplit_once(')').context("no comm in /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11..13).context("short /proc/<pid>/stat")?.iter().filter_map(|f| f.parse::<f64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// A `/proc/<pid>/status` figure in KiB.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// The agent's rows of the bench's markdown.
pub fn markdown(a: &Value) -> String {
    let f = |k: &str| a[k].as_f64().unwrap_or(f64::NAN);
    let mib = |k: &str| f(k) / 1048576.0;
    format!(
        "`leaktrace agent` on {} containers ({CHURNING} running the mixed service loop, {LEAKING} leaking 1 MiB/s), \
         {} rounds of {:.0} s, a scrape of /metrics every {} s:\n\n\
         | figure | measured | target |\n|---|---|---|\n\
         | slowdown of the loops' total throughput | {:.2}x ({:.2}-{:.2}) | as a single trace's |\n\
         | agent CPU, containers busy | {:.1} % of a core | |\n\
         | agent CPU, containers idle | {:.2} % of a core | <= 1 % |\n\
         | agent peak RSS | {:.1} MiB | <= {:.0} MiB |\n\
         | kernel map memory | {:.1} MiB | |\n\
         | one scrape of /metrics | {:.0} ms | |\n\
         | events dropped | {:.0}{} | 0 |\n\
         | allocations thinned out while the user stack ring filled (not lost) | {:.0} | |\n",
        a["containers"],
        a["rounds"],
        f("seconds"),
        SCRAPE_EVERY.as_secs(),
        f("slowdown"),
        f("slowdown_min"),
        f("slowdown_max"),
        f("cpu_share") * 100.0,
        f("idle_cpu_share") * 100.0,
        mib("peak_rss_bytes"),
        mib("rss_target_bytes"),
        mib("map_bytes"),
        f("scrape_ms"),
        f("dropped"),
        causes(&a["drops"]),
        f("thinned"),
    )
}
