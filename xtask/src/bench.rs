//! `cargo xtask bench`: what tracing costs the traced workload. Churn workloads (tests/workloads/bench_churn.c), each
//! in a memcg of its own, run untraced, under leaktrace's default (sampled) mode, under `--record-all`, and under a
//! bpftrace script that does what a user can write today (bench/outstanding.bt). Every round runs every
//! configuration of every workload, so ratios compare runs made under the same machine noise; slowdowns are the
//! median of per-round ratios to the untraced run. A last pass with the kernel's BPF statistics on says where the
//! time goes (run count and ns per program). A Python workload (tests/workloads/bench_churn.py under Debian's
//! python3) runs under the default mode with and without the walk of the interpreter's frames, and the others
//! with frame-pointer stacks too: the difference over the kept events is what the walk, or the stack copy that
//! DWARF unwinding needs, costs a kept event. `--only NAME` runs the churn workloads so named alone, for a closer
//! look (`--rounds`).
//!
//! `--heap` rows follow, in rounds of their own: a libc malloc/free loop (tests/workloads/bench_heap.c) and Debian's
//! redis-server (jemalloc) driven by redis-benchmark, each started in its memcg before the tracer (as a running
//! service is found), run untraced, under `leaktrace --heap` with the budget at 100 % (the probes stay on) and at
//! its default (they come off a process they slow down), and, for the loop, under a memleak-style bpftrace
//! one-liner on libc's malloc and free.
//!
//! The agent's rows come last (`agent`): `leaktrace agent` on 52 containers; `--only agent` runs them alone.
mod agent;

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use leaktrace_e2e::{build_workload, items, read_report, wait_timeout, Leaktrace, Memcg};
use serde_json::{json, Value};

pub struct Options {
    pub quick: bool,
    /// Only the churn workloads whose name contains this; no `--heap` rows, no results.json.
    pub only: Option<String>,
    pub rounds: Option<usize>,
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
    /// Debian's python3 running tests/workloads/bench_churn.py, not bench_churn: kept events then walk the
    /// interpreter's frames.
    python: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload { name: "page churn", mode: "page", elsewhere: false, python: false },
    Workload { name: "kernel-object churn", mode: "kobj", elsewhere: false, python: false },
    Workload { name: "malloc churn", mode: "malloc", elsewhere: false, python: false },
    Workload { name: "mixed service loop", mode: "mixed", elsewhere: false, python: false },
    Workload { name: "page churn, other cgroup", mode: "page", elsewhere: true, python: false },
    Workload { name: "kernel-object churn, other cgroup", mode: "kobj", elsewhere: true, python: false },
    Workload { name: "python page churn", mode: "page", elsewhere: false, python: true },
    Workload { name: "mixed service loop, worker thread", mode: "worker", elsewhere: false, python: false },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tracer {
    Untraced,
    /// leaktrace's programs attached to the same tracepoints, returning at once: what dispatch alone costs.
    Floor,
    Default,
    /// The default mode with frame-pointer user stacks walked in the kernel: the cost before DWARF unwinding.
    DefaultFp,
    /// The default mode with every stack copy `--user-stack-bytes` long: what cutting it to each process saves.
    FullCopy,
    /// The default mode with every kept allocation's kernel stack walked: what reusing a path's stack saves.
    WalkKstacks,
    RecordAll,
    Bpftrace,
    /// The default mode without walking Python frames: what the walk costs, on the Python workload.
    NoPython,
}

impl Tracer {
    const ALL: [Tracer; 9] = [
        Tracer::Untraced,
        Tracer::Floor,
        Tracer::Default,
        Tracer::DefaultFp,
        Tracer::FullCopy,
        Tracer::WalkKstacks,
        Tracer::RecordAll,
        Tracer::Bpftrace,
        Tracer::NoPython,
    ];

    fn name(self) -> &'static str {
        match self {
            Tracer::Untraced => "untraced",
            Tracer::Floor => "floor (programs return at once)",
            Tracer::Default => "leaktrace default",
            Tracer::DefaultFp => "default, frame-pointer stacks",
            Tracer::FullCopy => "default, full stack copies",
            Tracer::WalkKstacks => "default, every kernel stack walked",
            Tracer::RecordAll => "leaktrace --record-all",
            Tracer::Bpftrace => "bpftrace script",
            Tracer::NoPython => "default, no Python frames",
        }
    }

    /// Command-line arguments and environment of a leaktrace run.
    fn leaktrace(self) -> Option<(&'static [&'static str], Env)> {
        match self {
            Tracer::Floor => Some((&[], &[("LEAKTRACE_FLOOR", "1")])),
            Tracer::Default => Some((&[], &[])),
            Tracer::DefaultFp => Some((&[], &[("LEAKTRACE_USER_STACKS", "fp")])),
            Tracer::FullCopy => Some((&[], &[("LEAKTRACE_STACK_CUT", "off")])),
            Tracer::WalkKstacks => Some((&[], &[("LEAKTRACE_KSTACK_REUSE", "off")])),
            Tracer::RecordAll => Some((&["--record-all"], &[])),
            Tracer::NoPython => Some((&[], &[("LEAKTRACE_PYTHON_FRAMES", "off")])),
            Tracer::Untraced | Tracer::Bpftrace => None,
        }
    }
}

/// Environment variables of a run.
type Env = &'static [(&'static str, &'static str)];

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
    let rounds = opts.rounds.unwrap_or(rounds);
    if opts.only.as_deref() == Some("agent") {
        let a = agent::run(opts, rounds, seconds)?;
        println!("\n{}", agent::markdown(&a));
        return Ok(());
    }
    let exe = build_workload("bench_churn")?;
    let script = repo_bench_dir().join("outstanding.bt");
    let bpftrace = installed("bpftrace");
    if !bpftrace {
        println!("bench: bpftrace not found: its column stays empty (apt-get install bpftrace)");
    }
    // The Python workload runs what tells the walk's cost; the others run every other configuration.
    let configs: Vec<Vec<Tracer>> = WORKLOADS
        .iter()
        .map(|w| {
            let python = [Tracer::Untraced, Tracer::Floor, Tracer::Default, Tracer::NoPython];
            let wanted = |t: Tracer| if w.python { python.contains(&t) } else { t != Tracer::NoPython };
            let chosen = opts.only.as_deref().is_none_or(|o| w.name.contains(o));
            Tracer::ALL.into_iter().filter(|&t| chosen && wanted(t) && (t != Tracer::Bpftrace || bpftrace)).collect()
        })
        .collect();
    let memcgs: Vec<Memcg> =
        WORKLOADS.iter().map(|w| Memcg::create(&format!("bench-{}", w.mode), None)).collect::<Result<_>>()?;
    let idle = Memcg::create("bench-idle", None)?;
    let subsys = memory_subsys_index()?;
    let load_before = loadavg();
    let ctx = RunCtx { opts, exe: &exe, script: &script, subsys, seconds };
    let mut results: BTreeMap<(usize, Tracer), Series> = BTreeMap::new();
    interleaved("", rounds, &configs, |wi, tracer| {
        let w = &WORKLOADS[wi];
        let target = if w.elsewhere { &idle } else { &memcgs[wi] };
        let (ops, cost) = ctx
            .measure(w, tracer, target, &memcgs[wi])
            .with_context(|| format!("{} under {}", w.name, tracer.name()))?;
        let series = results.entry((wi, tracer)).or_default();
        series.ops_per_s.push(ops);
        series.costs.extend(cost);
        Ok(())
    })?;
    let heap = if opts.only.is_some() { BTreeMap::new() } else { heap_rows(opts, rounds, seconds, bpftrace)? };
    let profile = if opts.quick { Vec::new() } else { profile_pass(opts, &exe, &configs, &memcgs, &idle, seconds)? };
    let load_after = loadavg();
    let mut report = assemble(&results, &profile, rounds, seconds, [load_before, load_after]);
    report["heap"] = assemble_heap(&heap);
    let mut table = markdown(&report);
    if opts.only.is_none() {
        report["agent"] = agent::run(opts, rounds.min(3), seconds)?;
        table += &format!("\n{}", agent::markdown(&report["agent"]));
    }
    println!("\n{table}");
    if opts.only.is_some() {
        return Ok(());
    }
    fs::create_dir_all(&opts.out_dir)?;
    let path = opts.out_dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

/// Whether `program --version` runs.
fn installed(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Runs `measure(workload, configuration)` for every configuration of every workload (`configs[workload]`),
/// `rounds` times. The order rotates each round so that no configuration always runs first (or right after a
/// tracer exits).
fn interleaved<C: Copy>(
    label: &str,
    rounds: usize,
    configs: &[Vec<C>],
    mut measure: impl FnMut(usize, C) -> Result<()>,
) -> Result<()> {
    let started = Instant::now();
    for round in 0..rounds {
        for (wi, cs) in configs.iter().enumerate() {
            for k in 0..cs.len() {
                measure(wi, cs[(k + round + wi) % cs.len()])?;
            }
        }
        println!("bench: {label}round {}/{rounds} done ({:.0} s)", round + 1, started.elapsed().as_secs_f64());
    }
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
                let args = [
                    self.script.as_os_str().to_owned(),
                    self.subsys.to_string().into(),
                    target.id()?.to_string().into(),
                ];
                let mut b = Bpftrace::start(args)?;
                let ops = self.workload(w, home)?;
                let (cost, _) = b.stop()?;
                Ok((ops, Some(cost)))
            }
        }
    }

    fn workload(&self, w: &Workload, memcg: &Memcg) -> Result<f64> {
        let mut cmd = if w.python {
            let mut python = Command::new("/usr/bin/python3");
            python.arg(crate::repo_root().join("tests/workloads/bench_churn.py"));
            python
        } else {
            Command::new(self.exe)
        };
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

/// "ops <n> seconds <s>" lines -> all the operations over all the seconds.
fn parse_ops(text: &str) -> Option<f64> {
    rate(&parse_phases(text)?)
}

/// One stretch of a workload's run: `ops` operations in `seconds`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Phase {
    ops: f64,
    seconds: f64,
}

/// Operations per second over `phases`.
fn rate(phases: &[Phase]) -> Option<f64> {
    let (ops, seconds) = phases.iter().fold((0.0, 0.0), |(o, s), p| (o + p.ops, s + p.seconds));
    (seconds > 0.0).then(|| ops / seconds)
}

/// A workload's "ops <n> seconds <s>" lines, one a phase; `None` unless every line is one.
fn parse_phases(text: &str) -> Option<Vec<Phase>> {
    let phases = text
        .lines()
        .map(|line| {
            let mut it = line.split_whitespace();
            let (Some("ops"), Some(n), Some("seconds"), Some(s), None) =
                (it.next(), it.next(), it.next(), it.next(), it.next())
            else {
                return None;
            };
            Some(Phase { ops: n.parse().ok()?, seconds: s.parse().ok()? })
        })
        .collect::<Option<Vec<_>>>()?;
    (!phases.is_empty()).then_some(phases)
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
        for (knob, _) in Tracer::ALL.iter().filter_map(|t| t.leaktrace()).flat_map(|(_, env)| env.iter()) {
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

    /// Stops leaktrace (SIGINT, as Ctrl-C) and reads its report.
    fn finish(&mut self) -> Result<Value> {
        self.trace.interrupt();
        let out = self.trace.wait(Duration::from_secs(120))?;
        if !out.status.success() {
            bail!("leaktrace failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        read_report(self.dir.path())
    }

    fn stop(&mut self) -> Result<Cost> {
        let report = self.finish()?;
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

/// A child process that is killed and reaped when dropped, on every path out of a run.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Bpftrace {
    child: Reaped,
    /// Reads bpftrace's stdout to its end (the maps it prints at exit), so it never blocks on a full pipe.
    stdout: Option<thread::JoinHandle<String>>,
    attach_ms: f64,
    map_bytes: u64,
}

impl Bpftrace {
    /// Starts `bpftrace <args>` and returns once its probes are attached.
    fn start<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Result<Self> {
        let begun = Instant::now();
        let mut child = Reaped(
            Command::new("bpftrace")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start bpftrace")?,
        );
        let (tx, rx) = mpsc::channel();
        let stdout = child.0.stdout.take().expect("piped");
        let stdout = thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("Attaching") {
                    let _ = tx.send(());
                }
                text += &line;
                text.push('\n');
            }
            text
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            bail!("bpftrace did not attach within 60 s");
        }
        // "Attaching N probes..." comes just before the attach calls: give them a moment.
        thread::sleep(Duration::from_millis(300));
        let attach_ms = begun.elapsed().as_secs_f64() * 1e3;
        let map_bytes = map_memory(child.0.id());
        Ok(Bpftrace { child, stdout: Some(stdout), attach_ms, map_bytes })
    }

    /// Stops bpftrace (SIGINT: it prints its maps and exits). Returns its cost and what it printed.
    fn stop(&mut self) -> Result<(Cost, String)> {
        let child = &mut self.child.0;
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        if wait_timeout(child, Duration::from_secs(60))?.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let printed = self.stdout.take().and_then(|t| t.join().ok()).unwrap_or_default();
        Ok((Cost { attach_ms: self.attach_ms, map_bytes: self.map_bytes, ..Cost::default() }, printed))
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
fn profile_pass(
    opts: &Options,
    exe: &Path,
    configs: &[Vec<Tracer>],
    memcgs: &[Memcg],
    idle: &Memcg,
    seconds: f64,
) -> Result<Vec<ProgramStat>> {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = fs::read_to_string(SYSCTL).unwrap_or_else(|_| "0".into());
    fs::write(SYSCTL, "1").context("cannot enable BPF statistics")?;
    let ctx = RunCtx { opts, exe, script: Path::new(""), subsys: 0, seconds };
    let result = (|| {
        let mut out = Vec::new();
        for (wi, w) in WORKLOADS.iter().enumerate() {
            // Every leaktrace mode; on the Python workload, the two that tell the walk's cost.
            let profiled =
                |t: &Tracer| t.leaktrace().is_some() && (*t == Tracer::Default || (*t == Tracer::NoPython) == w.python);
            for tracer in Tracer::ALL.into_iter().filter(|t| profiled(t) && configs[wi].contains(t)) {
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

/// A workload of the `--heap` rows: its process is started in its memcg before the tracer, so that the tracer
/// finds it running (as it finds a service), then driven through its phases.
struct HeapWorkload {
    name: &'static str,
    load: HeapLoad,
    configs: &'static [HeapConfig],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeapLoad {
    /// tests/workloads/bench_heap.c: libc's malloc and free in a loop, for `HEAP_SETTLE_SECONDS` in steps of
    /// `HEAP_STEP_SECONDS`, then for the run's length.
    Churn,
    /// Debian's redis-server (jemalloc) on a loopback port, driven by redis-benchmark: SET, then GET.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HeapConfig {
    Untraced,
    /// leaktrace without `--heap`: what its kernel side costs the workload, under the heap probes' cost.
    KernelOnly,
    /// The highest budget: meant to keep the probes on whatever they cost (the state column says whether they
    /// stayed: leaktrace's estimate of their share can pass 100 %).
    Budget100,
    /// The default `--heap-budget`: the probes come off a process they slow down past it.
    DefaultBudget,
    /// A memleak-style bpftrace one-liner (`malloc_one_liner`).
    Bpftrace,
}

impl HeapConfig {
    fn name(self) -> &'static str {
        match self {
            HeapConfig::Untraced => "untraced",
            HeapConfig::KernelOnly => "leaktrace default (no --heap)",
            HeapConfig::Budget100 => "leaktrace --heap --heap-budget 100",
            HeapConfig::DefaultBudget => "leaktrace --heap (default budget)",
            HeapConfig::Bpftrace => "bpftrace uprobes (memleak-style)",
        }
    }

    fn leaktrace_args(self) -> Option<&'static [&'static str]> {
        match self {
            HeapConfig::KernelOnly => Some(&[]),
            HeapConfig::Budget100 => Some(&["--heap", "--heap-budget", "100"]),
            HeapConfig::DefaultBudget => Some(&["--heap"]),
            HeapConfig::Untraced | HeapConfig::Bpftrace => None,
        }
    }
}

const HEAP_WORKLOADS: &[HeapWorkload] = &[
    HeapWorkload {
        name: "malloc churn (libc)",
        load: HeapLoad::Churn,
        configs: &[HeapConfig::Untraced, HeapConfig::Budget100, HeapConfig::DefaultBudget, HeapConfig::Bpftrace],
    },
    HeapWorkload {
        name: "redis-server SET+GET (jemalloc)",
        load: HeapLoad::Redis,
        configs: &[HeapConfig::Untraced, HeapConfig::KernelOnly, HeapConfig::Budget100, HeapConfig::DefaultBudget],
    },
];

/// The malloc churn's first seconds. A process's probes are weighed against the budget at the end of each of
/// leaktrace's 1 s intervals, and taking them off takes a while more: under the default budget they come off the
/// loop in this time, and the phase that follows shows the throughput it gets back.
const HEAP_SETTLE_SECONDS: f64 = 4.0;

/// The phases of the churn's first seconds: when its throughput came back is known to this resolution.
const HEAP_STEP_SECONDS: f64 = 0.25;

/// How long the load waits once leaktrace says it is attached. leaktrace weighs each process's probes at every
/// interval, and its first interval ends a few ms after that line: a process busy in it is weighed on less CPU
/// time than its clock ticks (10 ms) can show, and is detached whatever the budget.
const AFTER_ATTACH: Duration = Duration::from_millis(300);

/// How long a traced process is left alive, idle, after its load before leaktrace is stopped: leaktrace takes
/// `collection.heap`'s hit counts at its 1 s intervals and not at its end, so one more interval makes them cover
/// the whole load.
const LAST_LOOK: Duration = Duration::from_millis(1200);

/// redis-benchmark's requests per test (SET, then GET): a second or two each untraced.
fn redis_requests(quick: bool) -> u64 {
    if quick {
        50_000
    } else {
        100_000
    }
}

/// What one run of a heap workload measured.
#[derive(Debug, Clone, Default)]
struct HeapRun {
    phases: Vec<Phase>,
    /// Probe hits in the workload's process: leaktrace's count (up to a detach) or the bpftrace one-liner's.
    hits: Option<u64>,
    /// What leaktrace's `collection.heap` says of the process.
    probe: Option<HeapProbe>,
}

impl HeapRun {
    fn ops_per_s(&self) -> f64 {
        rate(&self.phases).unwrap_or(f64::NAN)
    }

    fn last_phase_ops_per_s(&self) -> f64 {
        rate(&self.phases[self.phases.len().saturating_sub(1)..]).unwrap_or(f64::NAN)
    }

    /// How long the load ran at under half the untraced rate: the end of its last phase that slow, in seconds from
    /// its start.
    fn slow_until(&self, untraced_ops_per_s: f64) -> f64 {
        let mut t = 0.0;
        let mut slow = 0.0;
        for p in &self.phases {
            t += p.seconds;
            if p.ops < p.seconds * untraced_ops_per_s / 2.0 {
                slow = t;
            }
        }
        slow
    }

    fn over_budget(&self) -> bool {
        self.probe.as_ref().is_some_and(|p| p.state == "over-budget")
    }

    /// Whether the probes stayed on for the whole run (leaktrace's, until the process exited; bpftrace's always).
    fn probed_throughout(&self) -> bool {
        self.hits.is_some() && self.probe.as_ref().is_none_or(|p| matches!(p.state.as_str(), "traced" | "exited"))
    }

    /// Probe hits per operation, when the probes stayed on for the whole run.
    fn hits_per_op(&self) -> Option<f64> {
        let ops: f64 = self.phases.iter().map(|p| p.ops).sum();
        Some(self.hits? as f64 / ops).filter(|_| self.probed_throughout() && ops > 0.0)
    }

    /// What a probe hit cost the workload: the time each operation took over the untraced run's, over the hits
    /// each operation made.
    fn ns_per_hit(&self, untraced_ops_per_s: f64) -> Option<f64> {
        let extra_ns = 1e9 / self.ops_per_s() - 1e9 / untraced_ops_per_s;
        Some(extra_ns / self.hits_per_op()?).filter(|ns| ns.is_finite())
    }
}

/// `collection.heap`'s entry for one process, with the cost of a hit leaktrace measured at its start.
#[derive(Debug, Clone, Default)]
struct HeapProbe {
    state: String,
    hits: u64,
    hits_per_second: Option<f64>,
    cost_cpu: f64,
    /// Seconds from attaching to detaching (over budget).
    detached_after: Option<f64>,
    hit_cost_ns: f64,
}

impl HeapProbe {
    fn of(report: &Value, pid: u32) -> Option<HeapProbe> {
        let heap = &report["collection"]["heap"];
        let p = items(&heap["processes"]).iter().find(|p| p["pid"].as_u64() == Some(pid.into()))?;
        Some(HeapProbe {
            state: p["state"].as_str().unwrap_or("?").into(),
            hits: p["hits"].as_u64().unwrap_or(0),
            hits_per_second: p["hits_per_second"].as_f64(),
            cost_cpu: p["cost_cpu"].as_f64().unwrap_or(f64::NAN),
            detached_after: p["detached_at"].as_f64().map(|t| t - p["attached_at"].as_f64().unwrap_or(0.0)),
            hit_cost_ns: heap["hit_cost_ns"].as_f64().unwrap_or(f64::NAN),
        })
    }
}

/// The `--heap` rows: every configuration of every heap workload, interleaved in rounds as the churn rows are.
fn heap_rows(
    opts: &Options,
    rounds: usize,
    seconds: f64,
    bpftrace: bool,
) -> Result<BTreeMap<(usize, HeapConfig), Vec<HeapRun>>> {
    let redis = installed("redis-server") && installed("redis-benchmark");
    if !redis {
        println!("bench: redis-server or redis-benchmark not found: no Redis rows (apt-get install redis)");
    }
    let available = |w: &HeapWorkload, c: HeapConfig| {
        (w.load != HeapLoad::Redis || redis) && (c != HeapConfig::Bpftrace || bpftrace)
    };
    let configs: Vec<Vec<HeapConfig>> =
        HEAP_WORKLOADS.iter().map(|w| w.configs.iter().copied().filter(|&c| available(w, c)).collect()).collect();
    let exe = build_workload("bench_heap")?;
    let memcgs: Vec<Memcg> =
        (0..HEAP_WORKLOADS.len()).map(|wi| Memcg::create(&format!("bench-heap{wi}"), None)).collect::<Result<_>>()?;
    let ctx = HeapCtx { opts, exe: &exe, seconds, requests: redis_requests(opts.quick) };
    let mut results: BTreeMap<(usize, HeapConfig), Vec<HeapRun>> = BTreeMap::new();
    interleaved("--heap ", rounds, &configs, |wi, config| {
        let w = &HEAP_WORKLOADS[wi];
        let run = ctx.measure(w, config, &memcgs[wi]).with_context(|| format!("{} under {}", w.name, config.name()))?;
        results.entry((wi, config)).or_default().push(run);
        Ok(())
    })?;
    Ok(results)
}

struct HeapCtx<'a> {
    opts: &'a Options,
    /// bench_heap.
    exe: &'a Path,
    seconds: f64,
    /// redis-benchmark's requests per test.
    requests: u64,
}

impl HeapCtx<'_> {
    /// One run: the workload's process up, the tracer (if any) attached to it, the load driven, tracer and
    /// process down.
    fn measure(&self, w: &HeapWorkload, config: HeapConfig, memcg: &Memcg) -> Result<HeapRun> {
        let mut service = match w.load {
            HeapLoad::Churn => Service::churn(self.exe, self.seconds, memcg)?,
            HeapLoad::Redis => Service::redis(memcg)?,
        };
        let pid = service.pid();
        let mut probes = HeapProbes::start(config, self.opts, memcg, pid)?;
        let phases = service.drive(self.requests)?;
        let (hits, probe) = probes.stop(pid)?;
        Ok(HeapRun { phases, hits, probe })
    }
}

/// A heap workload's process, in the traced memcg (killed when dropped).
enum Service {
    /// bench_heap, warm, waiting for its start on stdin; it prints `phases` lines, then waits for stdin to close.
    Churn { child: Reaped, stdin: ChildStdin, stdout: BufReader<ChildStdout>, phases: usize },
    /// redis-server listening on a loopback port.
    Redis { server: Reaped, port: u16 },
}

impl Service {
    fn churn(exe: &Path, seconds: f64, memcg: &Memcg) -> Result<Service> {
        let mut cmd = Command::new(exe);
        let steps = (HEAP_SETTLE_SECONDS / HEAP_STEP_SECONDS).round() as usize;
        let phases = std::iter::repeat_n(HEAP_STEP_SECONDS, steps).chain([seconds]);
        cmd.args(phases.map(|s| s.to_string())).stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = Reaped(memcg.spawn_in(cmd)?);
        let stdin = child.0.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.0.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).context("cannot read bench_heap's output")?;
        if line.trim() != "ready" {
            bail!("bench_heap printed {line:?} instead of \"ready\"");
        }
        Ok(Service::Churn { child, stdin, stdout, phases: steps + 1 })
    }

    fn redis(memcg: &Memcg) -> Result<Service> {
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut server = Reaped(memcg.spawn_in(cmd)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.0.try_wait()? {
                bail!("redis-server exited ({status}) before listening on port {port}");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen on port {port} within 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Service::Redis { server, port })
    }

    fn pid(&self) -> u32 {
        match self {
            Service::Churn { child, .. } => child.0.id(),
            Service::Redis { server, .. } => server.0.id(),
        }
    }

    /// Runs the load to its end: the churn's two phases, or redis-benchmark's SET and GET tests (`requests`
    /// each).
    fn drive(&mut self, requests: u64) -> Result<Vec<Phase>> {
        match self {
            Service::Churn { child, stdin, stdout, phases } => {
                stdin.write_all(b"go\n").context("cannot start bench_heap")?;
                let mut text = String::new();
                for _ in 0..*phases {
                    if stdout.read_line(&mut text)? == 0 {
                        bail!("bench_heap ended ({}) after printing {text:?}", child.0.wait()?);
                    }
                }
                parse_phases(&text).with_context(|| format!("bench_heap printed {text:?}"))
            }
            Service::Redis { port, .. } => redis_benchmark(*port, requests),
        }
    }
}

/// redis-benchmark against the loopback `port`: its 50 clients, one request in flight each.
fn redis_benchmark(port: u16, requests: u64) -> Result<Vec<Phase>> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "-n", &requests.to_string()])
        .args(["-t", "set,get", "-P", "1"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("redis-benchmark failed ({}): {text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    parse_redis_benchmark(&text, requests as f64).with_context(|| format!("redis-benchmark printed {text:?}"))
}

/// redis-benchmark `-q`: progress lines ended by '\r', then a line a test, "SET: 84693.20 requests per second,
/// p50=0.303 msec". One phase a test.
fn parse_redis_benchmark(text: &str, requests: f64) -> Option<Vec<Phase>> {
    let phases: Vec<Phase> = text
        .split(['\r', '\n'])
        .filter_map(|line| {
            let (_, rest) = line.trim().split_once(": ")?;
            let per_s: f64 = rest.split_once(" requests per second")?.0.parse().ok()?;
            (per_s > 0.0).then(|| Phase { ops: requests, seconds: requests / per_s })
        })
        .collect();
    (!phases.is_empty()).then_some(phases)
}

/// The tracer of a heap run, attached to a process already running.
enum HeapProbes {
    Off,
    Leaktrace(TracedLeaktrace),
    Bpftrace(Bpftrace),
}

impl HeapProbes {
    fn start(config: HeapConfig, opts: &Options, memcg: &Memcg, pid: u32) -> Result<HeapProbes> {
        if let Some(args) = config.leaktrace_args() {
            // The process is in the memcg already: leaktrace probes it before it says it is attached.
            let trace = TracedLeaktrace::start(opts, memcg, args, &[])?;
            thread::sleep(AFTER_ATTACH);
            return Ok(HeapProbes::Leaktrace(trace));
        }
        Ok(match config {
            HeapConfig::Bpftrace => HeapProbes::Bpftrace(Bpftrace::start(["-e".to_string(), malloc_one_liner(pid)])?),
            _ => HeapProbes::Off,
        })
    }

    /// Stops the tracer. Returns the probe hits it counted in process `pid` and what leaktrace reported of it.
    fn stop(&mut self, pid: u32) -> Result<(Option<u64>, Option<HeapProbe>)> {
        match self {
            HeapProbes::Off => Ok((None, None)),
            HeapProbes::Leaktrace(trace) => {
                thread::sleep(LAST_LOOK);
                let report = trace.finish()?;
                if report["collection"]["heap"].is_null() {
                    return Ok((None, None)); // without --heap
                }
                let probe = HeapProbe::of(&report, pid)
                    .with_context(|| format!("collection.heap does not list the workload (pid {pid})"))?;
                Ok((Some(probe.hits), Some(probe)))
            }
            HeapProbes::Bpftrace(b) => {
                let (_, printed) = b.stop()?;
                let hits = map_count(&printed, "@hits").with_context(|| format!("bpftrace printed {printed:?}"))?;
                Ok((Some(hits), None))
            }
        }
    }
}

/// The baseline a user can write today, as BCC's memleak does it: a uprobe and a uretprobe on libc's malloc
/// (the size by thread, then the outstanding block by address) and a uprobe on free, counting every hit. The
/// predicate picks the process out: bpftrace's uprobes fire in every process that maps libc (`-p` does not
/// narrow them in bpftrace 0.17), so the rest of the machine pays a trap per call while it runs.
fn malloc_one_liner(pid: u32) -> String {
    format!(
        "uprobe:libc:malloc /pid == {pid}/ {{ @size[tid] = arg0; @hits = count(); }} \
         uretprobe:libc:malloc /pid == {pid}/ {{ @live[retval] = @size[tid]; delete(@size[tid]); @hits = count(); }} \
         uprobe:libc:free /pid == {pid}/ {{ delete(@live[arg0]); @hits = count(); }} \
         END {{ clear(@size); clear(@live); }}"
    )
}

/// The value of a bpftrace count map without keys ("@hits: 220224") in what bpftrace printed at exit.
fn map_count(printed: &str, map: &str) -> Option<u64> {
    printed.lines().find_map(|l| l.strip_prefix(map)?.strip_prefix(':')?.trim().parse().ok())
}

/// The heap rows as JSON: for every configuration, throughput over the run and over its last phase against the
/// untraced runs of the same rounds, and what the probes cost.
fn assemble_heap(results: &BTreeMap<(usize, HeapConfig), Vec<HeapRun>>) -> Value {
    let runs = |wi: usize, c: HeapConfig| results.get(&(wi, c)).map(Vec::as_slice).unwrap_or_default();
    let workloads: Vec<Value> = HEAP_WORKLOADS
        .iter()
        .enumerate()
        .filter(|(wi, w)| w.configs.iter().any(|&c| !runs(*wi, c).is_empty()))
        .map(|(wi, w)| {
            let untraced = runs(wi, HeapConfig::Untraced);
            let configs: Vec<Value> = w
                .configs
                .iter()
                .filter(|&&c| !runs(wi, c).is_empty())
                .map(|&c| heap_config(c, untraced, runs(wi, c)))
                .collect();
            json!({ "name": w.name, "configs": configs })
        })
        .collect();
    json!({ "workloads": workloads })
}

fn heap_config(config: HeapConfig, untraced: &[HeapRun], runs: &[HeapRun]) -> Value {
    let rates = |runs: &[HeapRun], f: fn(&HeapRun) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let last_phase =
        throughput(&rates(untraced, HeapRun::last_phase_ops_per_s), &rates(runs, HeapRun::last_phase_ops_per_s));
    let probes: Vec<&HeapProbe> = runs.iter().filter_map(|r| r.probe.as_ref()).collect();
    let mut entry = fields(json!({ "configuration": config.name() }));
    entry.extend(throughput(&rates(untraced, HeapRun::ops_per_s), &rates(runs, HeapRun::ops_per_s)));
    entry.extend(fields(json!({
        "last_phase": last_phase,
        "hits_per_op_median": median_of(runs.iter().filter_map(HeapRun::hits_per_op)),
        "ns_per_hit_median": median_of(untraced.iter().zip(runs).filter_map(|(u, r)| r.ns_per_hit(u.ops_per_s()))),
        "states": probes.iter().map(|p| p.state.as_str()).collect::<Vec<_>>(),
        "detached_after_s_median": median_of(probes.iter().filter_map(|p| p.detached_after)),
        "slow_until_s_median": median_of(
            untraced.iter().zip(runs).filter(|(_, r)| r.over_budget()).map(|(u, r)| r.slow_until(u.ops_per_s()))
        ),
        "hits_per_second_median": median_of(probes.iter().filter_map(|p| p.hits_per_second)),
        "cost_cpu_median": median_of(probes.iter().map(|p| p.cost_cpu)),
        "hit_cost_ns_median": median_of(probes.iter().map(|p| p.hit_cost_ns)),
    })));
    Value::Object(entry)
}

/// The heap rows as markdown: throughput and slowdowns, what a probe hit cost, and what `collection.heap` said.
fn heap_markdown(heap: &Value) -> String {
    use std::fmt::Write;
    let workloads = items(&heap["workloads"]);
    if workloads.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n`--heap`: each workload's process runs before the tracer starts, and its load starts once the tracer is \
         attached. Last phase: the malloc churn's last run length, after {HEAP_SETTLE_SECONDS} s in which the \
         default budget's detach happens; redis-benchmark's GET test, after its SET test. Probe hits/op and ns per \
         hit (the time an operation took over the untraced one, over its hits) come from runs whose probes stayed \
         on. State: `collection.heap.processes[].state`, with the seconds from attaching to the detach; slow until: \
         when the load last ran at under half its untraced rate, in seconds from its start. hits/s, cost CPU and \
         hit estimate: `collection.heap`'s hits_per_second, cost_cpu and hit_cost_ns (ns).\n\n"
    );
    out += "| workload | configuration | ops/s (spread) | slowdown | slowdown, last phase | probe hits/op | ns per hit \
            | state | slow until s | hits/s | cost CPU | hit estimate |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for w in workloads {
        for x in items(&w["configs"]) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                w["name"].as_str().unwrap_or("?"),
                x["configuration"].as_str().unwrap_or("?"),
                ops_cell(x),
                slowdown_cell(x),
                slowdown_cell(&x["last_phase"]),
                num_cell(&x["hits_per_op_median"], 1.0, 2),
                num_cell(&x["ns_per_hit_median"], 1.0, 0),
                state_cell(x),
                num_cell(&x["slow_until_s_median"], 1.0, 2),
                num_cell(&x["hits_per_second_median"], 1.0, 0),
                num_cell(&x["cost_cpu_median"], 1.0, 2),
                num_cell(&x["hit_cost_ns_median"], 1.0, 0),
            );
        }
    }
    out
}

/// The probe states of a configuration's runs, each once ("over-budget after 1.0 s"); n/a without leaktrace.
fn state_cell(x: &Value) -> String {
    let mut states: Vec<&str> = Vec::new();
    for state in items(&x["states"]).iter().filter_map(Value::as_str) {
        if !states.contains(&state) {
            states.push(state);
        }
    }
    if states.is_empty() {
        return "n/a".into();
    }
    let mut cell = states.join(", ");
    if let Some(after) = x["detached_after_s_median"].as_f64() {
        cell += &format!(" after {after:.1} s");
    }
    cell
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

/// A configuration's throughput over its runs, and its slowdowns against the untraced runs of the same rounds.
fn throughput(untraced: &[f64], ops_per_s: &[f64]) -> serde_json::Map<String, Value> {
    let ratios = slowdowns(untraced, ops_per_s);
    let (lo, hi) = min_max(&ratios);
    let (ops_lo, ops_hi) = min_max(ops_per_s);
    fields(json!({
        "ops_per_s": ops_per_s,
        "ops_per_s_median": median(ops_per_s),
        "ops_per_s_spread": (ops_hi - ops_lo) / median(ops_per_s),
        "slowdown_median": median(&ratios),
        "slowdown_min": lo,
        "slowdown_max": hi,
    }))
}

/// The fields of a JSON object.
fn fields(object: Value) -> serde_json::Map<String, Value> {
    match object {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The median of the readings there are; `None` without any.
fn median_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = values.collect();
    (!v.is_empty()).then(|| median(&v))
}

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
        if untraced.is_empty() {
            continue; // not chosen (--only)
        }
        let mut configs = serde_json::Map::new();
        for t in Tracer::ALL {
            let s = series(wi, t);
            if s.ops_per_s.is_empty() {
                continue;
            }
            let costs = &s.costs;
            let med = |f: &dyn Fn(&Cost) -> Option<f64>| median_of(costs.iter().filter_map(f));
            let mut config = throughput(untraced, &s.ops_per_s);
            config.extend(fields(json!({
                "attach_ms_median": med(&|c| Some(c.attach_ms)),
                "map_bytes_max": costs.iter().map(|c| c.map_bytes).max(),
                "tracer_cpu_seconds_median": med(&|c| c.cpu_seconds),
                "tracer_peak_rss_bytes_max": costs.iter().filter_map(|c| c.peak_rss_bytes).max(),
                "kept_events_per_s_median": med(&|c| c.kept_events_per_s),
                "dropped_events": costs.iter().filter_map(|c| c.dropped).reduce(|a, b| a + b),
                "recursion_misses": costs.iter().filter_map(|c| c.recursion_misses).reduce(|a, b| a + b),
            })));
            configs.insert(t.name().into(), Value::Object(config));
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
        .filter(|tg| tg.workload.is_none_or(|wi| !series(wi, tg.tracer).ops_per_s.is_empty()))
        .map(|tg| {
            let per_round =
                |wi: usize, t: Tracer| slowdowns(&series(wi, Tracer::Untraced).ops_per_s, &series(wi, t).ops_per_s);
            let measured = match (tg.workload, tg.unit) {
                // Paired by round: both ratios of a round share its noise, which a difference of medians keeps.
                (Some(wi), "x over floor") => {
                    let over: Vec<f64> =
                        per_round(wi, tg.tracer).iter().zip(per_round(wi, Tracer::Floor)).map(|(t, f)| t - f).collect();
                    median(&over)
                }
                (Some(wi), _) => median(&per_round(wi, tg.tracer)),
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
    let kept_event_costs = kept_event_costs(results, profile, seconds);
    let profile = rows;
    json!({
        "kept_event_costs": kept_event_costs,
        "machine": machine(),
        "settings": { "rounds": rounds, "seconds_per_run": seconds, "loadavg_before": load[0], "loadavg_after": load[1] },
        "workloads": workloads,
        "targets": targets,
        "profile": profile,
    })
}

/// What one part of the work on a kept event costs: the default mode with it (`with`) against the mode without it
/// (`without`) on one workload.
struct KeptPart {
    what: &'static str,
    python: bool,
    with: Tracer,
    without: Tracer,
}

const KEPT_PARTS: &[KeptPart] = &[
    KeptPart {
        what: "copy of the user stack for DWARF unwinding, over a frame-pointer walk",
        python: false,
        with: Tracer::Default,
        without: Tracer::DefaultFp,
    },
    KeptPart {
        what: "a full-length stack copy (--user-stack-bytes), over one cut to what the process's walks need",
        python: false,
        with: Tracer::FullCopy,
        without: Tracer::Default,
    },
    KeptPart {
        what: "a walk of each kept allocation's kernel stack, over reusing the one walked last on its path",
        python: false,
        with: Tracer::WalkKstacks,
        without: Tracer::Default,
    },
    KeptPart { what: "walk of the Python frames", python: true, with: Tracer::Default, without: Tracer::NoPython },
];

/// What each `KEPT_PARTS` costs a kept event, per workload that ran both modes: the BPF time per operation with
/// and without it (from the profiling pass, when it ran) over the kept events, and leaktrace's own CPU per run
/// with and without it (from the timed rounds: it also unwinds the copies and reads the code objects the walk
/// found).
fn kept_event_costs(results: &BTreeMap<(usize, Tracer), Series>, profile: &[ProgramStat], seconds: f64) -> Value {
    let mut out = Vec::new();
    for part in KEPT_PARTS {
        for (wi, w) in WORKLOADS.iter().enumerate().filter(|(_, w)| w.python == part.python && !w.elsewhere) {
            let (Some(with), Some(without)) = (results.get(&(wi, part.with)), results.get(&(wi, part.without))) else {
                continue;
            };
            let kept_per_s = median_of(with.costs.iter().filter_map(|c| c.kept_events_per_s)).unwrap_or(0.0);
            let kept_per_op = kept_per_s / median(&with.ops_per_s);
            // Too few kept events (malloc churn makes no system calls) for a per-event figure.
            if kept_per_op < 1e-3 {
                continue;
            }
            // Over the programs both modes ran: frame-pointer mode leaves out the fault program, which only feeds
            // the samples' fault addresses and runs at every fault, kept or not.
            let ran = |t: Tracer| profile.iter().filter(move |p| p.workload == wi && p.tracer == t);
            let bpf_ns_per_op = |t: Tracer| {
                let other = if t == part.with { part.without } else { part.with };
                let runs: Vec<f64> =
                    ran(t).filter(|p| ran(other).any(|o| o.program == p.program)).map(|p| p.ns_per_op).collect();
                (!runs.is_empty()).then(|| runs.iter().sum::<f64>())
            };
            let (bpf_with, bpf_without) = (bpf_ns_per_op(part.with), bpf_ns_per_op(part.without));
            let cpu = |s: &Series| median_of(s.costs.iter().filter_map(|c| c.cpu_seconds));
            out.push(json!({
                "part": part.what,
                "workload": w.name,
                "kept_events_per_op": kept_per_op,
                "bpf_ns_per_op_with": bpf_with,
                "bpf_ns_per_op_without": bpf_without,
                "bpf_ns_per_kept_event": bpf_with.zip(bpf_without).map(|(a, b)| (a - b) / kept_per_op),
                "tracer_cpu_seconds_with": cpu(with),
                "tracer_cpu_seconds_without": cpu(without),
                "kept_events_per_run": kept_per_s * seconds,
            }));
        }
    }
    Value::Array(out)
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
        let _ = write!(out, "| {} | {} |", w["name"].as_str().unwrap_or("?"), ops_cell(&c[Tracer::Untraced.name()]));
        for n in &names {
            let _ = write!(out, " {} |", slowdown_cell(&c[*n]));
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
            let num = |k: &str, scale: f64, digits: usize| num_cell(&x[k], scale, digits);
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
    let parts = r["kept_event_costs"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !parts.is_empty() {
        out.push_str(
            "\nWhat a part of a kept event's work costs: BPF time per kept event, from the profiling pass's BPF ns per op \
             with and without it; leaktrace's own CPU per run, from the timed rounds.\n\n| part | workload | kept events \
             per op | BPF ns per kept event | BPF ns per op with / without | tracer CPU s per run with / without |\n\
             |---|---|---|---|---|---|\n",
        );
    }
    for p in parts {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} / {} | {} / {} |",
            p["part"].as_str().unwrap_or("?"),
            p["workload"].as_str().unwrap_or("?"),
            num_cell(&p["kept_events_per_op"], 1.0, 3),
            num_cell(&p["bpf_ns_per_kept_event"], 1.0, 0),
            num_cell(&p["bpf_ns_per_op_with"], 1.0, 0),
            num_cell(&p["bpf_ns_per_op_without"], 1.0, 0),
            num_cell(&p["tracer_cpu_seconds_with"], 1.0, 2),
            num_cell(&p["tracer_cpu_seconds_without"], 1.0, 2),
        );
    }
    out += &heap_markdown(&r["heap"]);
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

/// "<median ops/s> (±<half the spread>%)".
fn ops_cell(x: &Value) -> String {
    let f = |k: &str| x[k].as_f64().unwrap_or(f64::NAN);
    format!("{:.0} (±{:.0}%)", f("ops_per_s_median"), f("ops_per_s_spread") * 50.0)
}

/// "<median>x (<min>–<max>)" of a configuration's slowdowns; n/a for one that did not run.
fn slowdown_cell(x: &Value) -> String {
    if x.is_null() {
        return "n/a".into();
    }
    let f = |k: &str| x[k].as_f64().unwrap_or(f64::NAN);
    format!("{:.2}x ({:.2}–{:.2})", f("slowdown_median"), f("slowdown_min"), f("slowdown_max"))
}

/// A number divided by `scale` with `digits` decimals; n/a for none.
fn num_cell(v: &Value, scale: f64, digits: usize) -> String {
    v.as_f64().map_or("n/a".to_string(), |v| format!("{:.*}", digits, v / scale))
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
        // bench_heap: a line a phase.
        let text = "ops 200 seconds 2.0\nops 300 seconds 1.0\n";
        let phases = parse_phases(text).unwrap();
        assert_eq!(phases, [Phase { ops: 200.0, seconds: 2.0 }, Phase { ops: 300.0, seconds: 1.0 }]);
        assert_eq!(parse_ops(text), Some(500.0 / 3.0));
        assert_eq!(parse_phases("ops 200 seconds 2.0\nready\n"), None, "every line is a phase");
        assert_eq!(parse_phases(""), None);
    }

    #[test]
    fn parses_redis_benchmark_and_bpftrace_output() {
        let redis = "\rSET: rps=0.0 (overall: 0.0) avg_msec=-nan (overall: -nan)\r   \r\
                     SET: rps=82036.0 (overall: 81709.2) avg_msec=0.319 (overall: 0.319)\r   \r\
                     SET: 80000.00 requests per second, p50=0.303 msec\n\
                     GET: rps=55000.0 (overall: 55000.0) avg_msec=0.5 (overall: 0.5)\r   \r\
                     GET: 50000.00 requests per second, p50=0.575 msec\n\n";
        let phases = parse_redis_benchmark(redis, 40000.0).unwrap();
        assert_eq!(phases, [Phase { ops: 40000.0, seconds: 0.5 }, Phase { ops: 40000.0, seconds: 0.8 }]);
        assert_eq!(parse_redis_benchmark("\rSET: rps=0.0 (overall: 0.0)\r", 10.0), None);
        let bpftrace = "Attaching 4 probes...\n\n\n@hits: 220224\n\n";
        assert_eq!(map_count(bpftrace, "@hits"), Some(220224));
        assert_eq!(map_count(bpftrace, "@live"), None);
        assert!(malloc_one_liner(42).matches("/pid == 42/").count() == 3, "every probe filters the process");
    }

    #[test]
    fn heap_table_shows_the_cost_of_a_hit_and_the_detach() {
        let churn = |ops_per_s: [f64; 2], hits: Option<u64>, probe: Option<HeapProbe>| HeapRun {
            phases: ops_per_s.iter().map(|&r| Phase { ops: r, seconds: 1.0 }).collect(),
            hits,
            probe,
        };
        let probe = |state: &str, hits: u64, detached_after: Option<f64>| HeapProbe {
            state: state.into(),
            hits,
            hits_per_second: Some(0.0),
            cost_cpu: 0.5,
            detached_after,
            hit_cost_ns: 2500.0,
        };
        let mut results = BTreeMap::new();
        results.insert((0, HeapConfig::Untraced), vec![churn([1e6, 1e6], None, None)]);
        // 1e5 ops/s at 3 hits an op: 10 us an op instead of 1, 3000 ns a hit.
        results.insert(
            (0, HeapConfig::Budget100),
            vec![churn([1e5, 1e5], Some(600_000), Some(probe("exited", 600_000, None)))],
        );
        // Detached during the first phase: the second runs at the untraced rate again, the whole run at 1.67x.
        let detached = churn([2e5, 1e6], Some(300_000), Some(probe("over-budget", 300_000, Some(1.0))));
        results.insert((0, HeapConfig::DefaultBudget), vec![detached]);
        results.insert((0, HeapConfig::Bpftrace), vec![churn([5e4, 5e4], Some(300_000), None)]);
        let heap = assemble_heap(&results);
        assert_eq!(items(&heap["workloads"]).len(), 1, "no Redis runs, no Redis row");
        let table = heap_markdown(&heap);
        assert!(
            table.contains(
                "| malloc churn (libc) | leaktrace --heap --heap-budget 100 | 100000 (±0%) | 10.00x (10.00–10.00) | \
                 10.00x (10.00–10.00) | 3.00 | 3000 | exited | n/a | 0 | 0.50 | 2500 |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| malloc churn (libc) | leaktrace --heap (default budget) | 600000 (±0%) | 1.67x (1.67–1.67) | \
                 1.00x (1.00–1.00) | n/a | n/a | over-budget after 1.0 s | 1.00 | 0 | 0.50 | 2500 |"
            ),
            "{table}"
        );
        // 20 us an op instead of 1 at 3 hits an op.
        assert!(
            table.contains("| bpftrace uprobes (memleak-style) | 50000 (±0%) | 20.00x (20.00–20.00) | 20.00x (20.00–20.00) | 3.00 | 6333 | n/a | n/a | n/a | n/a | n/a |"),
            "{table}"
        );
        assert!(heap_markdown(&assemble_heap(&BTreeMap::new())).is_empty(), "no heap rows, no heap table");
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
