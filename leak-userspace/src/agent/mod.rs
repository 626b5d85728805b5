//! `leaktrace agent`: one long-running tracer per node for every container on it (or those `--select`ed). It picks
//! up containers as they start and lets go of them as they go (`containers`), keeps a rolling window per
//! container with the same sampling, attribution and verdict as a trace (`fleet`), serves them to Prometheus and
//! pprof scrapers (`routes`), and writes them into `--output-dir` every window (`rotate`).
mod containers;
mod fleet;
mod rotate;
mod routes;

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::{
    signal::unix::{signal, SignalKind},
    time::sleep_until,
};

use crate::{
    cgroup::{CgroupLayout, Namer},
    cli::AgentArgs,
    collect::{assemble::TraceInfo, site_reader::SiteReader},
    probes::{self, Probes},
    serve::{self, Server},
    session::{attach, require_root},
    stop::StopSignals,
};
use containers::Selector;
use fleet::{Fleet, Settings};
use rotate::Rotation;

/// Runs the agent until SIGINT, SIGTERM or `--duration`.
pub fn run(args: &AgentArgs) -> Result<()> {
    require_root()?;
    let stop = StopSignals::install()?;
    let layout = CgroupLayout::detect()?;
    let select = Selector::new(&args.select)?;
    let rotation = args.output_dir.as_deref().map(|d| Rotation::new(d, args.keep)).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Bound before anything is attached: an address in use ends the agent before it begins.
    let server = match &args.listen {
        Some(listen) => Some(runtime.block_on(async { Server::bind(listen) })?),
        None => None,
    };
    let (discovery, mut probes, ustacks) = attach(&args.load())?;
    let settings = Settings { window: args.window, max_sites: args.max_sites as usize };
    let mut agent = Agent {
        fleet: Fleet::new(SiteReader::new(ustacks), TraceInfo::new(&discovery), settings, &layout),
        namer: Namer::new(),
        select,
        layout,
        rotation,
        quiet: args.quiet,
    };
    agent.tick(&mut probes)?;
    agent.say(&format!(
        "agent: attached {} programs; modes: {}; tracing {} containers",
        probes.attached.len(),
        discovery.modes.join(", "),
        agent.fleet.len()
    ));
    if let Some(listen) = &args.listen {
        agent
            .say(&format!("agent: serving /metrics, /pprof/<container>/heap and /report/<container>.json on {listen}"));
    }
    let ended = runtime.block_on(agent.run(&mut probes, args, &stop, server));
    // The last window of every container is written, however the agent ended.
    let written = agent.write_all(&probes);
    drop(probes);
    let reason = ended?;
    written?;
    agent.say(&format!("agent: ended: {reason}"));
    Ok(())
}

struct Agent {
    fleet: Fleet,
    namer: Namer,
    select: Selector,
    layout: CgroupLayout,
    rotation: Option<Rotation>,
    quiet: bool,
}

impl Agent {
    fn say(&self, line: &str) {
        if !self.quiet {
            eprintln!("leaktrace {line}");
        }
    }

    /// One interval: the containers that came and went, then every container's sites and memory files.
    fn tick(&mut self, probes: &mut Probes) -> Result<()> {
        let begun = Instant::now();
        let found: Vec<_> = self.namer.scan(&self.layout).into_iter().filter(|(_, c)| self.select.matches(c)).collect();
        let changes = self.fleet.track(probes, found)?;
        for key in &changes.added {
            self.say(&format!("agent: tracing container {key}"));
        }
        for key in &changes.removed {
            self.say(&format!("agent: container {key} is gone; its last report is kept"));
        }
        if let Some(rotation) = &self.rotation {
            let stamp = rotate::stamp(time::OffsetDateTime::now_utc());
            for gone in self.fleet.gone_since(begun) {
                rotation.write(&gone.key, &stamp, &gone.report)?;
            }
        }
        self.fleet.tick(probes)
    }

    /// Every container's report into `--output-dir`.
    fn write_all(&mut self, probes: &Probes) -> Result<()> {
        let Some(rotation) = &self.rotation else { return Ok(()) };
        let stamp = rotate::stamp(time::OffsetDateTime::now_utc());
        for (key, report) in self.fleet.live_reports(probes)? {
            rotation.write(&key, &stamp, &report)?;
        }
        Ok(())
    }

    async fn run(
        &mut self,
        probes: &mut Probes,
        args: &AgentArgs,
        stop: &StopSignals,
        mut server: Option<Server>,
    ) -> Result<String> {
        let mut events = probes::watch(probes.take_events()?, "event")?;
        let mut exits = probes::watch(probes.take_exits()?, "exit")?;
        let ustacks = probes::watch_user_stacks(self.fleet.user_stacks_fd())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(args.interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rotate = tokio::time::interval(Duration::from_secs_f64(args.window));
        // The first tick of an interval is at once: the first window is written after a window.
        rotate.tick().await;
        let far = Duration::from_secs(366 * 86400);
        let deadline = tokio::time::Instant::now() + args.duration.map_or(far, Duration::from_secs_f64);
        if let Some(signal) = stop.received() {
            return Ok(format!("{signal} while attaching"));
        }
        let reason = loop {
            tokio::select! {
                _ = tick.tick() => self.tick(probes)?,
                _ = rotate.tick(), if self.rotation.is_some() => self.write_all(probes)?,
                raw = probes::records(&mut events) => {
                    for bytes in raw? {
                        if let Some(key) = self.fleet.oom_event(probes, &bytes)? {
                            self.say(&format!("agent: OOM kill in container {key}"));
                        }
                    }
                }
                raw = probes::records(&mut exits) => {
                    for bytes in raw? {
                        self.fleet.exit_event(&bytes);
                    }
                }
                ready = probes::user_stacks_ready(ustacks.as_ref()) => {
                    ready?;
                    self.fleet.drain_user_stacks();
                }
                request = serve::next_request(&mut server) => {
                    let path = request.path.clone();
                    request.answer(routes::route(&path, &mut self.fleet, probes));
                }
                _ = sigint.recv() => break "interrupted (SIGINT)",
                _ = sigterm.recv() => break "terminated (SIGTERM)",
                _ = sleep_until(deadline) => break "duration elapsed",
            }
        };
        // Kills and deaths already in the ring buffers belong to the last windows.
        for bytes in probes::pending(events.get_mut()) {
            self.fleet.oom_event(probes, &bytes)?;
        }
        for bytes in probes::pending(exits.get_mut()) {
            self.fleet.exit_event(&bytes);
        }
        Ok(reason.to_string())
    }
}
