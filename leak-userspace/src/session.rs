//! One tracing session, start to end: check the ground, attach, collect every interval until told to stop, then
//! write every output. Whatever ends the session (duration, Ctrl-C, SIGTERM, the cgroup going away, an OOM kill
//! in the demo), the outputs are written from what was collected.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{sleep_until, Instant},
};

use crate::{
    cgroup::{self, Target},
    cli::{Load, TraceArgs},
    collect::{heap::HeapTracer, Collector},
    export, output,
    probes::{self, Discovery, Probes},
    report,
    serve::{self, Server},
    stacks::{jvm_perfmap::JvmPerfMaps, CopySizes, SampleQueue, UserStacks},
    stop::StopSignals,
};

pub use crate::privilege::require_root;

/// `fp`: user stacks by frame-pointer walks in the kernel, as `--record-all` takes them (for the benchmark).
pub const USER_STACKS_ENV: &str = "LEAKTRACE_USER_STACKS";
/// Set: the programs attach and return at once (the benchmark's floor).
pub const FLOOR_ENV: &str = "LEAKTRACE_FLOOR";
/// `off`: Python frames are not walked (for the benchmark: what the walk costs).
pub const PYTHON_FRAMES_ENV: &str = "LEAKTRACE_PYTHON_FRAMES";
/// `off`: every stack copy is `--user-stack-bytes` long (for the benchmark: what cutting it to each process saves).
pub const STACK_CUT_ENV: &str = "LEAKTRACE_STACK_CUT";
/// `off`: every kept allocation walks its kernel stack (for the benchmark and the tests: what reusing a kernel
/// path's stack saves, and that it names the same frames).
pub const KSTACK_REUSE_ENV: &str = "LEAKTRACE_KSTACK_REUSE";

/// How often spawned processes whose allocator was not mapped yet are tried again.
const SPAWN_RETRY: Duration = Duration::from_millis(20);

/// How long the demo keeps tracing after the OOM kill, so the report shows the memory coming back.
const AFTER_OOM: Duration = Duration::from_millis(1500);

/// What a caller (the demo) can add to a session.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Runs once the programs are attached: the demo starts its workload here, so nothing is missed.
    pub on_attached: Option<Box<dyn FnOnce() -> Result<()> + 'a>>,
    pub stop_after_oom: bool,
}

/// Traces `target` and writes the outputs; returns the output directory.
pub fn trace(target: Target, args: &TraceArgs, hooks: Hooks<'_>) -> Result<PathBuf> {
    require_root()?;
    let stop = StopSignals::install()?;
    let dir = output::prepare(args.output.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Bound before anything is attached: an address in use ends the session before it begins.
    let server = match &args.listen {
        Some(listen) => Some(runtime.block_on(async { Server::bind(listen) })?),
        None => None,
    };
    let (discovery, mut probes, ustacks) = attach(&args.load())?;
    let heap = if args.heap {
        let hit = probes.measure_heap_hit().context("cannot measure what a heap probe hit costs")?;
        Some(HeapTracer::new(args.heap_budget, hit.as_nanos() as f64))
    } else {
        None
    };
    let mut collector = Collector::new(target, &discovery, args.top, ustacks, heap);
    // The first sample is the baseline that growth is measured from.
    collector.tick(&mut probes)?;
    let say = |line: &str| {
        if !args.quiet {
            eprintln!("leaktrace: {line}");
        }
    };
    say(&format!(
        "attached {} programs to {} (memcg id {}, cgroup v{}); modes: {}",
        probes.attached.len(),
        collector.target().path.display(),
        collector.target().id,
        collector.target().version.number(),
        discovery.modes.join(", ")
    ));
    for line in &discovery.degraded {
        say(&format!("note: {line}"));
    }
    say_notices(&mut collector, args.quiet);
    say(&format!(
        "tracing {}; outputs go to {}",
        args.duration.map_or("until Ctrl-C".to_string(), |d| format!("for {d} s (Ctrl-C stops early)")),
        dir.display()
    ));
    if let Some(start) = hooks.on_attached {
        start()?;
    }

    if args.node_heap {
        collector.profile_node_heaps(crate::collect::node_heap::NodeHeap::start()?);
    }
    if args.jvm_heap {
        collector.profile_jvm_heaps(crate::collect::jvm_heap::JvmHeap::start()?);
    }
    let mut jvm_perfmaps = if args.jvm_perfmap { Some(JvmPerfMaps::start()?) } else { None };
    if let Some(listen) = &args.listen {
        say(&format!("serving /metrics, /pprof/heap and /report.json on {listen}"));
    }
    let ended = runtime.block_on(event_loop(
        &mut probes,
        &mut collector,
        args,
        &stop,
        hooks.stop_after_oom,
        jvm_perfmaps.as_mut(),
        server,
    ));
    // Whatever happened in the loop, what was collected is written, and says how the window ended.
    let asked = jvm_perfmaps.as_mut().map(JvmPerfMaps::stop).unwrap_or_default();
    let mut report = collector.finish(&probes, asked)?;
    // The maps that exist only because they were asked for go once the last frames are named.
    drop(jvm_perfmaps);
    drop(probes);
    report.window.ended_by = match &ended {
        Ok(reason) => reason.to_string(),
        Err(e) => format!("error: {e:#}"),
    };
    let written = write_outputs(&dir, &report);
    // The summary is printed even when the outputs cannot be written (full disk): it is then all that is left.
    print!("{}", export::summary::summary(&report));
    written?;
    say(&format!("ended: {}", ended?));
    Ok(dir)
}

/// Loads and attaches the programs as `load` asks, with the reader of their user stack samples: how a trace and
/// the agent begin.
pub fn attach(load: &Load) -> Result<(Discovery, Probes, UserStacks)> {
    // Benchmark knobs: frame-pointer user stacks in sampled mode (the cost before unwinding), the floor, no
    // Python frames, a walk of every kernel stack.
    let fp_stacks = std::env::var(USER_STACKS_ENV).is_ok_and(|v| v == "fp");
    let mut discovery = probes::discover(load.record_all, load.stack_chunks.filter(|_| !fp_stacks))?;
    discovery.config.floor = u32::from(std::env::var_os(FLOOR_ENV).is_some());
    discovery.config.kstack_reuse = u32::from(!std::env::var(KSTACK_REUSE_ENV).is_ok_and(|v| v == "off"));
    if std::env::var(PYTHON_FRAMES_ENV).is_ok_and(|v| v == "off") {
        discovery.config.task_fsbase = leak_common::OFFSET_NONE;
    }
    discovery.config.sample_rate_shift = load.sample_rate_shift;
    let mut probes = Probes::load(&mut discovery, load.live_entries, load.stack_entries, load.heap)?;
    let ring = if discovery.config.ustack_chunks > 0 { Some(probes.take_user_stacks()?) } else { None };
    let python = if discovery.config.task_fsbase != leak_common::OFFSET_NONE && ring.is_some() {
        Some(probes.take_python_procs()?)
    } else {
        None
    };
    let cut = if ring.is_some() && !std::env::var(STACK_CUT_ENV).is_ok_and(|v| v == "off") {
        Some(probes.take_stack_chunks()?)
    } else {
        None
    };
    let copies = CopySizes::new(cut, discovery.config.ustack_chunks);
    let samples = ring.map(SampleQueue::start).transpose()?;
    Ok((discovery, probes, UserStacks::new(samples, python, copies)))
}

/// Runs until the session should end and says why.
async fn event_loop(
    probes: &mut Probes,
    collector: &mut Collector,
    args: &TraceArgs,
    stop: &StopSignals,
    stop_after_oom: bool,
    mut jvm_perfmaps: Option<&mut JvmPerfMaps>,
    mut server: Option<Server>,
) -> Result<String> {
    let mut events = probes::watch(probes.take_events()?, "event")?;
    // Samples are unwound as they come, while their processes (an OOM victim, a short-lived child) still live.
    let ustacks = probes::watch_user_stacks(collector.user_stacks_fd())?;
    let mut exits = probes::watch(probes.take_exits()?, "exit")?;
    let mut spawns = if probes.heap_enabled() { Some(probes::watch(probes.take_spawns()?, "spawn")?) } else { None };
    // A followed container's restarts make their cgroup beside the current one.
    let watch = match (&collector.target().container, collector.target().path.parent()) {
        (Some(_), Some(parent)) => cgroup::CgroupWatch::new(parent).and_then(|w| {
            // SAFETY: the AsyncFd owns the watch, and so its fd, for as long as it is registered.
            unsafe { AsyncFd::register_with_interest(w, Interest::READABLE) }.ok()
        }),
        _ => None,
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(args.interval));
    let mut retry = tokio::time::interval(SPAWN_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A far deadline stands for "no duration": simpler than an optional branch.
    let mut deadline = Instant::now() + Duration::from_secs_f64(args.duration.unwrap_or(366.0 * 86400.0));
    let mut reason = "duration elapsed".to_string();
    let mut live = crate::live::Live::new(args.quiet, args.interval);
    // A signal that came while attaching (before the handlers above existed) ends the window at once.
    if let Some(signal) = stop.received() {
        reason = if signal == "SIGINT" {
            "interrupted (SIGINT) while attaching"
        } else {
            "terminated (SIGTERM) while attaching"
        }
        .to_string();
        deadline = Instant::now();
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let gone = collector.tick(probes)?;
                say_notices(collector, args.quiet);
                if let Some(asker) = jvm_perfmaps.as_deref_mut() {
                    for line in asker.offer(cgroup::member_pids(&collector.target().path)) {
                        say_line(&line, args.quiet);
                    }
                }
                live.show(collector, probes);
                if let Some(why) = gone {
                    reason = why;
                    break;
                }
            }
            raw = probes::records(&mut events) => {
                for bytes in raw? {
                    if collector.oom_event(probes, &bytes)? && stop_after_oom {
                        deadline = deadline.min(Instant::now() + AFTER_OOM);
                        reason = "the workload was OOM-killed".to_string();
                    }
                }
            }
            raw = probes::records(&mut exits) => {
                for bytes in raw? {
                    collector.exit_event(&bytes);
                }
            }
            guard = async {
                match &watch {
                    Some(w) => w.readable().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard?;
                let made = guard.get_inner().drain();
                guard.clear_ready();
                if made {
                    collector.follow_now(probes)?;
                }
            }
            ready = probes::user_stacks_ready(ustacks.as_ref()) => {
                ready?;
                collector.drain_user_stacks();
            }
            pids = async {
                match &mut spawns {
                    Some(ring) => probes::records(ring).await,
                    None => std::future::pending().await,
                }
            } => {
                for pid in pids? {
                    collector.spawned(probes, &pid);
                }
            }
            request = serve::next_request(&mut server) => {
                let path = request.path.clone();
                request.answer(serve::route(&path, || collector.snapshot(probes)));
            }
            _ = retry.tick(), if spawns.is_some() => collector.retry_spawned(probes),
            _ = sigint.recv() => { reason = "interrupted (SIGINT)".to_string(); break; }
            _ = sigterm.recv() => { reason = "terminated (SIGTERM)".to_string(); break; }
            _ = sleep_until(deadline) => break,
        }
    }
    // Events already in the ring buffers belong to this window.
    for bytes in probes::pending(events.get_mut()) {
        collector.oom_event(probes, &bytes)?;
    }
    for bytes in probes::pending(exits.get_mut()) {
        collector.exit_event(&bytes);
    }
    Ok(reason)
}

/// What the collector has to say on the terminal (heap probes detached from a process, say).
fn say_notices(collector: &mut Collector, quiet: bool) {
    for line in collector.take_notices() {
        say_line(&line, quiet);
    }
}

fn say_line(line: &str, quiet: bool) {
    if !quiet {
        eprintln!("leaktrace: {line}");
    }
}

fn write_outputs(dir: &Path, report: &report::Report) -> Result<()> {
    report::write_json(dir, report).with_context(|| format!("cannot write report.json into {}", dir.display()))?;
    export::folded::write_folded(dir, &export::lead_sites(report).0)
        .with_context(|| format!("cannot write stacks.folded into {}", dir.display()))?;
    export::pprof::write_pprof(dir, report)
        .with_context(|| format!("cannot write profile.pb.gz into {}", dir.display()))?;
    let graphs = export::flamegraph::write_flamegraphs(dir, report)
        .with_context(|| format!("cannot write the flame graphs into {}", dir.display()))?;
    export::html::write_html(dir, report, &graphs.window, &graphs.growth)
        .with_context(|| format!("cannot write report.html into {}", dir.display()))
}
