//! `cargo xtask bench`: what tracing costs the traced workload. Churn workloads (tests/workloads/bench_churn.c), each
//! in a memcg of its own, run untraced, under leaktrace's default (sampled) mode, under `--record-all`, and under a
//! bpftrace script that does what a user can write today (bench/outstanding.bt). Every round runs every
//! configuration of every workload, so ratios compare runs made under the same machine noise; slowdowns are the
//! median of per-round ratios to the untraced run. A last pass with the kernel's BPF statistics on says where the
//! time goes (run count and ns per program).
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use leaktrace_e2e::{build_workload, read_report, wait_timeout, Leaktrace, Memcg};
use serde_json::{json, Value};

pub struct Options {
    pub quick: bool,
    pub leaktrace: PathBuf,
    /// Where results.json goes.
    pub out_dir: PathBuf,
}

struct Workload {
    name: &'static str,
    /// bench_churn's mode.
    mode: &'static str,
    /// Runs in a memcg of its own while the tracer follows an idle one: the cost every other container pays.
    elsewhere: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload { name: "page churn", mode: "page", elsewhere: false },
    Workload { name: "kernel-object churn", mode: "kobj", elsewhere: false },
    Workload { name: "malloc churn", mode: "malloc", elsewhere: false },
    Workload { name: "mixed service loop", mode: "mixed", elsewhere: false },
    Workload { name: "page churn, other cgroup", mode: "page", elsewhere: true },
    Workload { name: "kernel-object churn, other cgroup", mode: "kobj", elsewhere: true },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tracer {
    Untraced,
    /// leaktrace's programs attached to the same tracepoints, returning at once: what dispatch alone costs.
    Floor,
    Default,
    /// The default mode with frame-pointer user stacks walked in the kernel: the cost before DWARF unwinding.
    DefaultFp,
    RecordAll,
    Bpftrace,
}

impl Tracer {
    const ALL: [Tracer; 6] =
        [Tracer::Untraced, Tracer::Floor, Tracer::Default, Tracer::DefaultFp, Tracer::RecordAll, Tracer::Bpftrace];

    fn name(self) -> &'static str {
        match self {
            Tracer::Untraced => "untraced",
            Tracer::Floor => "floor (programs return at once)",
            Tracer::Default => "leaktrace default",
            Tracer::DefaultFp => "default, frame-pointer stacks",
            Tracer::RecordAll => "leaktrace --record-all",
            Tracer::Bpftrace => "bpftrace script",
        }
    }

    /// Command-line arguments and environment of a leaktrace run.
    fn leaktrace(self) -> Option<(&'static [&'static str], &'static [(&'static str, &'static str)])> {
        match self {
            Tracer::Floor => Some((&[], &[("LEAKTRACE_FLOOR", "1")])),
            Tracer::Default => Some((&[], &[])),
            Tracer::DefaultFp => Some((&[], &[("LEAKTRACE_USER_STACKS", "fp")])),
            Tracer::RecordAll => Some((&["--record-all"], &[])),
            Tracer::Untraced | Tracer::Bpftrace => None,
        }
    }
}

/// What one traced run cost, from the tracer's side.
#[derive(Debug, Clone, Default)]
struct Cost {
    attach_ms: f64,
    map_bytes: u64,
    cpu_seconds: Option<f64>,
    peak_rss_bytes: Option<u64>,
    kept_events_per_s: Option<f64>,
    dropped: Option<u64>,
    recursion_misses: Option<u64>,
    /// (program, runs, run time ns) over the session: counted only with kernel.bpf_stats_enabled=1.
    programs: Vec<(String, u64, u64)>,
}

#[derive(Debug, Default)]
struct Series {
    ops_per_s: Vec<f64>,
    costs: Vec<Cost>,
}

pub fn run(opts: &Options) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs and makes memcgs: run it as root");
    }
    let (rounds, seconds) = if opts.quick { (3, 1.0) } else { (5, 2.0) };
    let exe = build_workload("bench_churn")?;
    let script = repo_bench_dir().join("outstanding.bt");
    let bpftrace = Command::new("bpftrace").arg("--version").output().is_ok_and(|o| o.status.success());
    if !bpftrace {
        println!("bench: bpftrace not found: its column stays empty (apt-get install bpftrace)");
    }
    let memcgs: Vec<Memcg> =
        WORKLOADS.iter().map(|w| Memcg::create(&format!("bench-{}", w.mode), None)).collect::<Result<_>>()?;
    let idle = Memcg::create("bench-idle", None)?;
    let subsys = memory_subsys_index()?;
    let load_before = loadavg();
    let started = Instant::now();
    let mut results: BTreeMap<(usize, Tracer), Series> = BTreeMap::new();
    for round in 0..rounds {
        for (wi, w) in WORKLOADS.iter().enumerate() {
            // Rotate the order each round so no configuration always runs first (or right after a tracer exits).
            for k in 0..Tracer::ALL.len() {
                let tracer = Tracer::ALL[(k + round + wi) % Tracer::ALL.len()];
                if tracer == Tracer::Bpftrace && !bpftrace {
                    continue;
                }
                let target = if w.elsewhere { &idle } else { &memcgs[wi] };
                let ctx = RunCtx { opts, exe: &exe, script: &script, subsys, seconds };
                let (ops, cost) = ctx
                    .measure(w, tracer, target, &memcgs[wi])
                    .with_context(|| format!("{} under {}", w.name, tracer.name()))?;
                let series = results.entry((wi, tracer)).or_default();
                series.ops_per_s.push(ops);
                series.costs.extend(cost);
            }
        }
        println!("bench: round {}/{rounds} done ({:.0} s)", round + 1, started.elapsed().as_secs_f64());
    }
    let profile = if opts.quick { Vec::new() } else { profile_pass(opts, &exe, &memcgs, &idle, seconds)? };
    let load_after = loadavg();
    let report = assemble(&results, &profile, rounds, seconds, [load_before, load_after]);
    let table = markdown(&report);
    println!("\n{table}");
    fs::create_dir_all(&opts.out_dir)?;
    let path = opts.out_dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

pub fn repo_bench_dir() -> PathBuf {
    crate::repo_root().join("bench")
}

struct RunCtx<'a> {
    opts: &'a Options,
    exe: &'a Path,
    script: &'a Path,
    subsys: usize,
    seconds: f64,
}

impl RunCtx<'_> {
    /// One run: tracer up (if any), workload to completion, tracer down. Returns ops/s and the tracer's cost.
    fn measure(&self, w: &Workload, tracer: Tracer, target: &Memcg, home: &Memcg) -> Result<(f64, Option<Cost>)> {
        if let Some((extra, env)) = tracer.leaktrace() {
            let mut t = TracedLeaktrace::start(self.opts, target, extra, env)?;
            let ops = self.workload(w, home)?;
            let cost = t.stop()?;
            return Ok((ops, Some(cost)));
        }
        match tracer {
            Tracer::Untraced => Ok((self.workload(w, home)?, None)),
            _ => {
                let mut b = Bpftrace::start(self.script, self.subsys, target.id()?)?;
                let ops = self.workload(w, home)?;
                let cost = b.stop()?;
                Ok((ops, Some(cost)))
            }
        }
    }

    fn workload(&self, w: &Workload, memcg: &Memcg) -> Result<f64> {
        let mut cmd = Command::new(self.exe);
        cmd.args([w.mode, &self.seconds.to_string()]).stdout(Stdio::piped());
        let child = memcg.spawn_in(cmd)?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("bench_churn {} failed ({}): {text}", w.mode, out.status);
        }
        parse_ops(&text).with_context(|| format!("bench_churn printed {text:?}"))
    }
}

/// "ops <n> seconds <s>" -> n / s.
fn parse_ops(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let (Some("ops"), Some(n), Some("seconds"), Some(s)) = (it.next(), it.next(), it.next(), it.next()) else {
        return None;
    };
    let (n, s): (f64, f64) = (n.parse().ok()?, s.parse().ok()?);
    (s > 0.0).then(|| n / s)
}

struct TracedLeaktrace {
    trace: Leaktrace,
    dir: tempfile::TempDir,
    attach_ms: f64,
    map_bytes: u64,
}

impl TracedLeaktrace {
    fn start(opts: &Options, target: &Memcg, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut args: Vec<String> = vec![
            "--cgroup".into(),
            target.path().display().to_string(),
            "--output".into(),
            dir.path().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        std::env::set_var("LEAKTRACE_BIN", &opts.leaktrace);
        // The child inherits the knobs of this configuration and none of another's.
        for knob in ["LEAKTRACE_FLOOR", "LEAKTRACE_USER_STACKS"] {
            std::env::remove_var(knob);
        }
        for (k, v) in env {
            std::env::set_var(k, v);
        }
        let begun = Instant::now();
        let mut trace = Leaktrace::spawn_echoing(&args, false)?;
        trace.wait_attached(Duration::from_secs(20))?;
        let attach_ms = begun.elapsed().as_secs_f64() * 1e3;
        let map_bytes = map_memory(trace.pid());
        Ok(TracedLeaktrace { trace, dir, attach_ms, map_bytes })
    }

    fn stop(&mut self) -> Result<Cost> {
        self.trace.interrupt();
        let out = self.trace.wait(Duration::from_secs(120))?;
        if !out.status.success() {
            bail!("leaktrace failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let report = read_report(self.dir.path())?;
        let c = &report["collection"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let seconds = report["window"]["seconds"].as_f64().unwrap_or(f64::NAN);
        Ok(Cost {
            attach_ms: self.attach_ms,
            map_bytes: self.map_bytes,
            cpu_seconds: c["tracer_cpu_seconds"].as_f64(),
            peak_rss_bytes: c["tracer_peak_rss_bytes"].as_u64(),
            kept_events_per_s: Some((n("alloc_events") + n("free_events")) as f64 / seconds),
            dropped: Some(dropped(c)),
            recursion_misses: Some(n("recursion_misses")),
            programs: c["programs"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let name = p["program"].as_str().unwrap_or("?").to_string();
                    (name, p["run_count"].as_u64().unwrap_or(0), p["run_time_ns"].as_u64().unwrap_or(0))
                })
                .collect(),
        })
    }
}

/// Events the kernel side saw but could not keep. Stack errors are not among them (the allocation is kept, without
/// that stack: e.g. a user stack while the process exits), and runs the kernel's recursion guard skipped are
/// counted apart: they happen on any event of the machine while any tracing BPF program (anyone's) is preempted or
/// interrupted on that CPU, and most of them concern other cgroups.
fn dropped(collection: &Value) -> u64 {
    let unwind = &collection["unwind"];
    ["live_map_full", "site_map_full", "ringbuf_drops"].iter().map(|k| collection[k].as_u64().unwrap_or(0)).sum::<u64>()
        + ["lost_ring_full", "lost_nested"].iter().map(|k| unwind[k].as_u64().unwrap_or(0)).sum::<u64>()
}

struct Bpftrace {
    child: Child,
    attach_ms: f64,
    map_bytes: u64,
}

impl Bpftrace {
    fn start(script: &Path, subsys: usize, memcg: u64) -> Result<Self> {
        let begun = Instant::now();
        let mut child = Command::new("bpftrace")
            .arg(script)
            .args([subsys.to_string(), memcg.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start bpftrace")?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        // Drained to the end so bpftrace never blocks on a full pipe when it prints its maps at exit.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("Attaching") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("bpftrace did not attach within 60 s");
        }
        // "Attaching N probes..." comes just before the attach calls: give them a moment.
        thread::sleep(Duration::from_millis(300));
        let attach_ms = begun.elapsed().as_secs_f64() * 1e3;
        let map_bytes = map_memory(child.id());
        Ok(Bpftrace { child, attach_ms, map_bytes })
    }

    fn stop(&mut self) -> Result<Cost> {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        if wait_timeout(&mut self.child, Duration::from_secs(60))?.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        Ok(Cost { attach_ms: self.attach_ms, map_bytes: self.map_bytes, ..Cost::default() })
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Kernel memory of the BPF maps a process holds: the `memlock` of each map fd.
fn map_memory(pid: u32) -> u64 {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| fdinfo_field(&info, "memlock"))
        .sum()
}

fn fdinfo_field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
}

/// The memory controller's index in `task->cgroups->subsys[]`: its line in /proc/cgroups (controllers are listed
/// by id).
fn memory_subsys_index() -> Result<usize> {
    let text = fs::read_to_string("/proc/cgroups").context("cannot read /proc/cgroups")?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .position(|l| l.split_whitespace().next() == Some("memory"))
        .context("no memory controller in /proc/cgroups")
}

fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN)
}

/// One program's share of the work in the profiling pass.
#[derive(Debug, Clone)]
struct ProgramStat {
    workload: usize,
    tracer: Tracer,
    program: String,
    runs_per_s: f64,
    ns_per_run: f64,
    /// BPF time per workload operation.
    ns_per_op: f64,
}

/// Runs every workload once more under each leaktrace mode with `kernel.bpf_stats_enabled` on (restored after),
/// taking each program's run count and run time from the report (`collection.programs`).
fn profile_pass(opts: &Options, exe: &Path, memcgs: &[Memcg], idle: &Memcg, seconds: f64) -> Result<Vec<ProgramStat>> {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = fs::read_to_string(SYSCTL).unwrap_or_else(|_| "0".into());
    fs::write(SYSCTL, "1").context("cannot enable BPF statistics")?;
    let ctx = RunCtx { opts, exe, script: Path::new(""), subsys: 0, seconds };
    let result = (|| {
        let mut out = Vec::new();
        for (wi, w) in WORKLOADS.iter().enumerate() {
            for tracer in [Tracer::Default, Tracer::RecordAll] {
                let target = if w.elsewhere { idle } else { &memcgs[wi] };
                let (extra, env) = tracer.leaktrace().expect("a leaktrace mode");
                let mut t = TracedLeaktrace::start(opts, target, extra, env)?;
                let begun = Instant::now();
                let ops = ctx.workload(w, &memcgs[wi])? * seconds;
                let elapsed = begun.elapsed().as_secs_f64();
                // The counts cover the whole session; the workload is nearly all of it.
                for (name, cnt, ns) in t.stop()?.programs {
                    out.push(ProgramStat {
                        workload: wi,
                        tracer,
                        program: name,
                        runs_per_s: cnt as f64 / elapsed,
                        ns_per_run: if cnt == 0 { 0.0 } else { ns as f64 / cnt as f64 },
                        ns_per_op: ns as f64 / ops.max(1.0),
                    });
                }
            }
        }
        Ok(out)
    })();
    let _ = fs::write(SYSCTL, before.trim());
    result
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Per-round slowdowns (untraced ops/s over traced ops/s, runs of the same round paired).
fn slowdowns(untraced: &[f64], traced: &[f64]) -> Vec<f64> {
    untraced.iter().zip(traced).map(|(u, t)| u / t).collect()
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// A target of the issue: `label`, the measured value and the limit it must not exceed.
struct Target {
    label: &'static str,
    workload: Option<usize>,
    tracer: Tracer,
    limit: f64,
    unit: &'static str,
}

const TARGETS: &[Target] = &[
    Target { label: "default: page churn", workload: Some(0), tracer: Tracer::Default, limit: 1.10, unit: "x" },
    Target {
        label: "default: kernel-object churn",
        workload: Some(1),
        tracer: Tracer::Default,
        limit: 1.10,
        unit: "x",
    },
    Target {
        label: "default above the floor: kernel-object churn",
        workload: Some(1),
        tracer: Tracer::Default,
        limit: 0.05,
        unit: "x over floor",
    },
    Target { label: "default: malloc churn", workload: Some(2), tracer: Tracer::Default, limit: 1.01, unit: "x" },
    Target {
        label: "default: page churn, other cgroup",
        workload: Some(4),
        tracer: Tracer::Default,
        limit: 1.02,
        unit: "x",
    },
    Target {
        label: "default: kernel-object churn, other cgroup",
        workload: Some(5),
        tracer: Tracer::Default,
        limit: 1.02,
        unit: "x",
    },
    Target { label: "record-all: page churn", workload: Some(0), tracer: Tracer::RecordAll, limit: 1.6, unit: "x" },
    Target {
        label: "record-all: kernel-object churn",
        workload: Some(1),
        tracer: Tracer::RecordAll,
        limit: 2.5,
        unit: "x",
    },
    Target { label: "start to attached (median)", workload: None, tracer: Tracer::Default, limit: 200.0, unit: "ms" },
    Target { label: "peak RSS (max)", workload: None, tracer: Tracer::Default, limit: 48.0, unit: "MiB" },
    Target { label: "kernel map memory (max)", workload: None, tracer: Tracer::Default, limit: 64.0, unit: "MiB" },
    Target {
        label: "dropped events, default mode (sum)",
        workload: None,
        tracer: Tracer::Default,
        limit: 0.0,
        unit: "",
    },
];

const MIB: f64 = 1048576.0;

fn assemble(
    results: &BTreeMap<(usize, Tracer), Series>,
    profile: &[ProgramStat],
    rounds: usize,
    seconds: f64,
    load: [f64; 2],
) -> Value {
    let empty = Series::default();
    let series = |wi: usize, t: Tracer| results.get(&(wi, t)).unwrap_or(&empty);
    let mut workloads = Vec::new();
    for (wi, w) in WORKLOADS.iter().enumerate() {
        let untraced = &series(wi, Tracer::Untraced).ops_per_s;
        let mut configs = serde_json::Map::new();
        for t in Tracer::ALL {
            let s = series(wi, t);
            if s.ops_per_s.is_empty() {
                continue;
            }
            let ratios = slowdowns(untraced, &s.ops_per_s);
            let (lo, hi) = min_max(&ratios);
            let (ops_lo, ops_hi) = min_max(&s.ops_per_s);
            let costs = &s.costs;
            let med = |f: &dyn Fn(&Cost) -> Option<f64>| {
                let v: Vec<f64> = costs.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| median(&v))
            };
            configs.insert(
                t.name().into(),
                json!({
                    "ops_per_s": s.ops_per_s,
                    "ops_per_s_median": median(&s.ops_per_s),
                    "ops_per_s_spread": (ops_hi - ops_lo) / median(&s.ops_per_s),
                    "slowdown_median": median(&ratios),
                    "slowdown_min": lo,
                    "slowdown_max": hi,
                    "attach_ms_median": med(&|c| Some(c.attach_ms)),
                    "map_bytes_max": costs.iter().map(|c| c.map_bytes).max(),
                    "tracer_cpu_seconds_median": med(&|c| c.cpu_seconds),
                    "tracer_peak_rss_bytes_max": costs.iter().filter_map(|c| c.peak_rss_bytes).max(),
                    "kept_events_per_s_median": med(&|c| c.kept_events_per_s),
                    "dropped_events": costs.iter().filter_map(|c| c.dropped).reduce(|a, b| a + b),
                    "recursion_misses": costs.iter().filter_map(|c| c.recursion_misses).reduce(|a, b| a + b),
                }),
            );
        }
        workloads.push(json!({ "name": w.name, "mode": w.mode, "other_cgroup": w.elsewhere, "configs": configs }));
    }
    let all_costs = |t: Tracer| results.iter().filter(move |((_, tt), _)| *tt == t).flat_map(|(_, s)| &s.costs);
    // Memory targets hold for both leaktrace modes: the largest reading of either, in MiB.
    let max_mib = |field: fn(&Cost) -> Option<u64>| {
        all_costs(Tracer::Default).chain(all_costs(Tracer::RecordAll)).filter_map(field).max().unwrap_or(0) as f64 / MIB
    };
    let targets: Vec<Value> = TARGETS
        .iter()
        .map(|tg| {
            let slowdown = |wi: usize, t: Tracer| {
                median(&slowdowns(&series(wi, Tracer::Untraced).ops_per_s, &series(wi, t).ops_per_s))
            };
            let measured = match (tg.workload, tg.unit) {
                (Some(wi), "x over floor") => slowdown(wi, tg.tracer) - slowdown(wi, Tracer::Floor),
                (Some(wi), _) => slowdown(wi, tg.tracer),
                (None, "ms") => median(&all_costs(tg.tracer).map(|c| c.attach_ms).collect::<Vec<_>>()),
                (None, "MiB") if tg.label.starts_with("peak") => max_mib(|c| c.peak_rss_bytes),
                (None, "MiB") => max_mib(|c| Some(c.map_bytes)),
                _ => all_costs(tg.tracer).filter_map(|c| c.dropped).sum::<u64>() as f64,
            };
            json!({ "target": tg.label, "measured": measured, "limit": tg.limit, "unit": tg.unit,
                    "met": measured <= tg.limit })
        })
        .collect();
    // Each (workload, mode) closes with an "all programs" row: the events handled per second and their BPF cost.
    let mut groups: BTreeMap<(usize, Tracer), Vec<&ProgramStat>> = BTreeMap::new();
    for p in profile {
        groups.entry((p.workload, p.tracer)).or_default().push(p);
    }
    let mut rows = Vec::new();
    for ((wi, tracer), stats) in groups {
        let row = |program: &str, runs_per_s: f64, ns_per_run: f64, ns_per_op: f64| {
            json!({ "workload": WORKLOADS[wi].name, "mode": tracer.name(), "program": program,
                    "runs_per_s": runs_per_s, "ns_per_run": ns_per_run, "ns_per_op": ns_per_op })
        };
        rows.extend(stats.iter().map(|p| row(&p.program, p.runs_per_s, p.ns_per_run, p.ns_per_op)));
        let runs: f64 = stats.iter().map(|p| p.runs_per_s).sum();
        let ns: f64 = stats.iter().map(|p| p.runs_per_s * p.ns_per_run).sum();
        let per_op: f64 = stats.iter().map(|p| p.ns_per_op).sum();
        rows.push(row("all programs", runs, if runs > 0.0 { ns / runs } else { 0.0 }, per_op));
    }
    let profile = rows;
    json!({
        "machine": machine(),
        "settings": { "rounds": rounds, "seconds_per_run": seconds, "loadavg_before": load[0], "loadavg_after": load[1] },
        "workloads": workloads,
        "targets": targets,
        "profile": profile,
    })
}

fn machine() -> Value {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "date": date,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    })
}

/// The results as markdown: slowdowns, tracer costs, targets, and (when profiled) where the BPF time goes.
fn markdown(r: &Value) -> String {
    use std::fmt::Write;
    let m = &r["machine"];
    let s = &r["settings"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} with `cargo xtask bench` on {} ({} CPUs), kernel {}: {} interleaved rounds of {} s per run, \
         load average {:.1} before, {:.1} after.\n",
        m["date"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["cpus"],
        m["kernel"].as_str().unwrap_or("?"),
        s["rounds"],
        s["seconds_per_run"],
        s["loadavg_before"].as_f64().unwrap_or(f64::NAN),
        s["loadavg_after"].as_f64().unwrap_or(f64::NAN),
    );
    let names: Vec<&str> = Tracer::ALL[1..].iter().map(|t| t.name()).collect();
    let _ = writeln!(out, "| workload | untraced ops/s (spread) | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(names.len()));
    for w in r["workloads"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let c = &w["configs"];
        let u = &c[Tracer::Untraced.name()];
        let _ = write!(
            out,
            "| {} | {:.0} (±{:.0}%) |",
            w["name"].as_str().unwrap_or("?"),
            u["ops_per_s_median"].as_f64().unwrap_or(f64::NAN),
            u["ops_per_s_spread"].as_f64().unwrap_or(f64::NAN) * 50.0
        );
        for n in &names {
            let x = &c[*n];
            if x.is_null() {
                out.push_str(" n/a |");
            } else {
                let f = |k: &str| x[k].as_f64().unwrap_or(f64::NAN);
                let _ =
                    write!(out, " {:.2}x ({:.2}–{:.2}) |", f("slowdown_median"), f("slowdown_min"), f("slowdown_max"));
            }
        }
        out.push('\n');
    }
    out.push_str("\nSlowdown: untraced ops/s over traced ops/s, median of per-round ratios (min–max over rounds).\n");
    out.push_str(
        "Dropped: events leaktrace saw but could not keep (full maps, ring buffer); recursion misses: runs the \
                  kernel skipped on any event of the machine while a tracing program was busy on that CPU.\n\n",
    );
    let _ = writeln!(
        out,
        "| workload | mode | start to attached ms | tracer CPU s | peak RSS MiB | kernel maps MiB | kept events/s | \
         dropped | recursion misses |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for w in r["workloads"].as_array().map(Vec::as_slice).unwrap_or_default() {
        for t in &Tracer::ALL[1..] {
            let x = &w["configs"][t.name()];
            if x.is_null() {
                continue;
            }
            let num = |k: &str, scale: f64, digits: usize| {
                x[k].as_f64().map_or("n/a".to_string(), |v| format!("{:.*}", digits, v / scale))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                w["name"].as_str().unwrap_or("?"),
                t.name(),
                num("attach_ms_median", 1.0, 0),
                num("tracer_cpu_seconds_median", 1.0, 2),
                num("tracer_peak_rss_bytes_max", MIB, 1),
                num("map_bytes_max", MIB, 1),
                num("kept_events_per_s_median", 1.0, 0),
                num("dropped_events", 1.0, 0),
                num("recursion_misses", 1.0, 0),
            );
        }
    }
    out.push_str("\n| target | measured | limit | met |\n|---|---|---|---|\n");
    for t in r["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let unit = t["unit"].as_str().unwrap_or("");
        let _ = writeln!(
            out,
            "| {} | {:.2}{unit} | {}{unit} | {} |",
            t["target"].as_str().unwrap_or("?"),
            t["measured"].as_f64().unwrap_or(f64::NAN),
            t["limit"].as_f64().unwrap_or(f64::NAN),
            if t["met"] == true { "yes" } else { "**no**" }
        );
    }
    let profile = r["profile"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !profile.is_empty() {
        out.push_str("\nWhere the BPF time goes (one run each, kernel.bpf_stats_enabled=1; programs that ran):\n\n");
        out.push_str("| workload | mode | program | runs/s | ns/run | BPF ns per op |\n|---|---|---|---|---|---|\n");
        for p in profile.iter().filter(|p| p["runs_per_s"].as_f64().is_some_and(|r| r > 0.0)) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} |",
                p["workload"].as_str().unwrap_or("?"),
                p["mode"].as_str().unwrap_or("?"),
                p["program"].as_str().unwrap_or("?"),
                p["runs_per_s"].as_f64().unwrap_or(0.0),
                p["ns_per_run"].as_f64().unwrap_or(0.0),
                p["ns_per_op"].as_f64().unwrap_or(0.0),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_paired_slowdowns() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0, "a failed reading does not poison the median");
        // Round 2 was slow for everyone: pairing by round keeps its ratio at 2, like the others.
        let s = slowdowns(&[100.0, 50.0, 100.0], &[50.0, 25.0, 50.0]);
        assert_eq!(s, [2.0, 2.0, 2.0]);
        assert_eq!(min_max(&[1.5, 0.9, 1.2]), (0.9, 1.5));
    }

    #[test]
    fn parses_workload_output() {
        assert_eq!(parse_ops("ops 1000 seconds 2.0\n"), Some(500.0));
        assert_eq!(parse_ops("ops 1000 seconds 0\n"), None);
        assert_eq!(parse_ops("garbage"), None);
    }

    #[test]
    fn fdinfo_memlock_is_read() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nmap_type:\t1\nkey_size:\t8\nmemlock:\t4202496\n";
        assert_eq!(fdinfo_field(info, "memlock"), Some(4202496));
        assert_eq!(fdinfo_field(info, "nope"), None);
    }

    #[test]
    fn table_shows_ratios_targets_and_misses() {
        let mut results = BTreeMap::new();
        for (wi, _) in WORKLOADS.iter().enumerate() {
            results.insert((wi, Tracer::Untraced), Series { ops_per_s: vec![100.0, 90.0, 110.0], costs: vec![] });
            let cost = Cost {
                attach_ms: 150.0,
                map_bytes: 10 << 20,
                cpu_seconds: Some(0.1),
                peak_rss_bytes: Some(20 << 20),
                kept_events_per_s: Some(10.0),
                dropped: Some(0),
                recursion_misses: Some(3),
                programs: Vec::new(),
            };
            results.insert((wi, Tracer::Default), Series { ops_per_s: vec![95.0, 90.0, 100.0], costs: vec![cost] });
        }
        let stat = |program: &str, runs_per_s, ns_per_run, ns_per_op| ProgramStat {
            workload: 0,
            tracer: Tracer::Default,
            program: program.into(),
            runs_per_s,
            ns_per_run,
            ns_per_op,
        };
        let profile = [stat("lt_a", 1000.0, 50.0, 2.0), stat("lt_b", 3000.0, 10.0, 1.0)];
        let r = assemble(&results, &profile, 3, 1.0, [1.0, 2.0]);
        let page = &r["workloads"][0]["configs"]["leaktrace default"];
        let median_ratio = page["slowdown_median"].as_f64().unwrap();
        assert!((median_ratio - 100.0 / 95.0).abs() < 1e-9, "ratios 1.0526, 1.0, 1.1: median {median_ratio}");
        let table = markdown(&r);
        assert!(table.contains("| page churn | 100 (±10%) | n/a | 1.05x (1.00–1.10) | n/a | n/a | n/a |"), "{table}");
        assert!(table.contains("| start to attached (median) | 150.00ms | 200ms | yes |"), "{table}");
        assert!(table.contains("| default: malloc churn | 1.05x | 1.01x | **no** |"), "{table}");
        assert!(
            table.contains("| page churn | leaktrace default | 150 | 0.10 | 20.0 | 10.0 | 10 | 0 | 3 |"),
            "{table}"
        );
        // 1000 runs at 50 ns and 3000 at 10 ns: 4000 runs/s at 20 ns on average.
        assert!(table.contains("| page churn | leaktrace default | all programs | 4000 | 20 | 3 |"), "{table}");
    }
}
