//! The verdict: what kind of memory problem the window shows, argued the way an SRE would from memory.stat, the
//! task count, process RSS and the OOM kills, with every evidence line quoting its numbers.
//!
//! Rules, in order, on the robust trends of [`growth`] (after the warm-up, never across an OOM kill):
//! - too few samples and no kill: inconclusive;
//! - the task count rises steadily together with memory: thread (or connection) leak;
//! - of anon, kernel memory (slab / kmem), shmem and file, the one that rises steadily and most names the problem:
//!   heap leak (also when it ends in OOM kills, in every life of a restart loop), kernel-side leak, shmem growth
//!   (tmpfs and shared memory, most of a file growth: not reclaimable), or cache growth (only without kills: the
//!   kernel reclaims cache before it kills);
//! - one OOM kill ending a life too short for a trend, with the traced sites growing up to it: heap (or kernel)
//!   leak, with less confidence;
//! - repeated OOM kills with no growth trend within a life: limit too low (the working set does not fit);
//! - processes that die otherwise (killed from outside, a crash, a non-zero exit) with no growth, no OOM kill and
//!   usage away from the limit: not memory (the sender or the signal is named);
//! - usage above 80 % of the limit for most of the window, flat: limit too low (cache growth when file memory,
//!   which reclaim takes back, fills it);
//! - usage rises while no category does: inconclusive (the figures contradict each other);
//! - otherwise: no leak.
pub mod growth;
mod recommend;
pub mod runtime;

use runtime::Runtime;

use crate::{
    export::{clamp, human_bytes, signed},
    report::{Coverage, Exit, Growth, Report, Site, Trend, Verdict},
    sites::{app_frame, is_allocator, site_name},
};

/// A byte category grows when its trend accounts for at least this much, and for at least `MIN_GROWTH_SHARE` of
/// the limit (of the peak usage without a limit): less is noise at this scale.
const MIN_GROWTH: f64 = 2.0 * 1024.0 * 1024.0;
const MIN_GROWTH_SHARE: f64 = 0.01;
/// A task count grows when it gains at least this many tasks.
const MIN_TASKS: f64 = 5.0;
/// Kendall's tau a trend needs to count as steady.
const STEADY: f64 = 0.5;
/// Post-warm-up samples below which no trend is claimed.
const MIN_SAMPLES: u64 = 5;
/// Samples at which a trend's confidence stops growing with the sample count.
const FULL_SAMPLES: f64 = 20.0;
/// Share of the window spent near the limit that makes a plateau.
const PLATEAU_SHARE: f64 = 0.8;

pub fn judge(r: &Report) -> Verdict {
    let f = Facts::new(r);
    let (class, confidence, mut evidence) = f.classify();
    evidence.extend(f.common_evidence());
    if class != "not-memory" {
        evidence.extend(f.deaths_lines());
    }
    if matches!(class, "heap-leak" | "kernel-leak") && f.deaths().any(|e| e.cause == "exit") {
        evidence.push(
            "a process that stops itself after its memory grew (an allocation that failed at its own limit: a \
             runtime's heap maximum, ulimit -v) dies of memory as surely as one the OOM killer takes"
                .into(),
        );
    }
    evidence.extend(f.runtime_facts());
    let rt = f.rt;
    let location = f.location(class);
    evidence.extend(location.filter(|_| rt.is_some()).map(|l| f.location_line(l)));
    let died_at_bound = f.runtime_death_line(location).filter(|_| class == "heap-leak");
    let mut recommendations = f.recommendations(class);
    // A runtime that already stopped at its own bound needs its heap's contents, not a bound.
    recommendations.extend(match (rt, &died_at_bound) {
        (Some(rt), Some(_)) => f.heap_dump_recommendation(rt),
        _ => location.and_then(|l| f.runtime_recommendation(rt?, l)),
    });
    recommendations.extend(location.and_then(|l| f.holder_recommendation(rt?, l)));
    evidence.extend(died_at_bound);
    recommendations.extend(rt.and_then(|rt| f.jit_names_recommendation(rt, class)));
    Verdict {
        class: class.into(),
        confidence: (confidence * 100.0).round() / 100.0,
        evidence,
        recommendations,
        runtime: rt.map(|r| r.name().into()),
        location: location.map(str::to_string),
    }
}

struct Facts<'a> {
    r: &'a Report,
    g: &'a Growth,
    /// Bytes below which a change is noise.
    min_bytes: f64,
    /// The language runtime the memory goes through.
    rt: Option<Runtime>,
}

impl<'a> Facts<'a> {
    fn new(r: &'a Report) -> Self {
        let peak = r.memory.samples.iter().map(|s| s.usage).max().unwrap_or(0);
        let scale = r.memory.limit_bytes.unwrap_or(peak) as f64;
        Facts {
            r,
            g: &r.growth,
            min_bytes: MIN_GROWTH.max(MIN_GROWTH_SHARE * scale),
            rt: runtime::runtime(all_sites(r)),
        }
    }

    fn trend(&self, name: &str) -> Option<&Trend> {
        self.g.trends.iter().find(|t| t.name == name)
    }

    fn grows(&self, name: &str) -> bool {
        let min = if name == "tasks" { MIN_TASKS } else { self.min_bytes };
        self.trend(name).is_some_and(|t| t.steadiness >= STEADY && t.change >= min)
    }

    fn change(&self, name: &str) -> f64 {
        self.trend(name).map_or(0.0, |t| t.change)
    }

    /// How much a trend is worth: its steadiness scaled by how many samples back it.
    fn strength(&self, name: &str) -> f64 {
        let tau = self.trend(name).map_or(0.0, |t| t.steadiness.abs());
        tau * (self.g.samples as f64 / FULL_SAMPLES).min(1.0)
    }

    fn classify(&self) -> (&'static str, f64, Vec<String>) {
        let kills = self.r.oom_kills.len();
        let deaths = self.deaths().count();
        if self.g.samples < MIN_SAMPLES && kills == 0 && deaths == 0 {
            return (
                "inconclusive",
                0.0,
                vec![format!(
                    "window too short: {} sample(s) after a warm-up of {:.1} s, {MIN_SAMPLES} needed for a trend; \
                     trace longer or with a shorter --interval",
                    self.g.samples, self.g.warmup_seconds
                )],
            );
        }
        let (anon, kernel, file, usage, tasks) =
            (self.grows("anon"), self.grows("kernel"), self.grows("file"), self.grows("usage"), self.grows("tasks"));
        let near = self.g.near_limit_share.unwrap_or(0.0);
        // Among the categories that grow, the one that grows most names the problem: page cache brings its kernel
        // metadata along (buffer heads, xarray nodes), a heap leak its page tables.
        // shmem (tmpfs, shared memory) is counted in file but cannot be reclaimed: when it carries most of the
        // file growth it is a class of its own, kills or not.
        let shmem = self.grows("shmem") && self.change("shmem") >= 0.5 * self.change("file");
        // Socket buffers (v2 `sock`) are kernel memory outside the `kernel` figure.
        let sock = self.grows("sock");
        let change = |name: &str| match name {
            "kernel" => self.change("kernel").max(self.change("sock")),
            _ => self.change(name),
        };
        let candidates =
            [("anon", anon), ("kernel", kernel || sock), ("shmem", shmem), ("file", file && kills == 0 && !shmem)];
        let largest = candidates
            .into_iter()
            .filter(|(_, grows)| *grows)
            .max_by(|a, b| change(a.0).total_cmp(&change(b.0)))
            .map(|(name, _)| name);
        if tasks && (usage || kernel || anon) {
            self.thread_leak()
        } else if largest == Some("kernel") {
            self.kernel_leak()
        } else if largest == Some("anon") {
            self.heap_leak()
        } else if largest == Some("shmem") {
            self.shmem_growth()
        } else if largest == Some("file") {
            self.cache_growth(false)
        } else if kills == 0 && self.uncharged_socket_buffers() {
            self.uncharged_kernel_leak()
        } else if kills == 1 && self.grew_before_kill().is_some() {
            self.one_kill_after_growth()
        } else if kills > 0 {
            self.killed_without_trend()
        } else if deaths > 0 && near < PLATEAU_SHARE && !usage {
            self.not_memory()
        } else if near >= PLATEAU_SHARE || (usage && self.cache_at_limit()) {
            if self.cache_at_limit() {
                self.cache_growth(true)
            } else {
                self.plateau_near_limit()
            }
        } else if usage {
            let mut ev =
                vec![format!("{}, but none of anon, file or kernel memory grows steadily", self.line("usage"))];
            ev.push("the figures contradict each other (memory outside the categories, or a breakdown this kernel does not report): no class is claimed".into());
            ("inconclusive", 0.0, ev)
        } else {
            self.no_leak()
        }
    }

    fn thread_leak(&self) -> (&'static str, f64, Vec<String>) {
        let mut ev = vec![self.line("tasks")];
        let tasks = self.change("tasks");
        for name in ["kernel", "kernel_stack", "anon"] {
            if self.trend(name).is_some() {
                ev.push(self.line(name));
            }
        }
        let memory = self.change("usage");
        if tasks > 0.0 && memory > 0.0 {
            ev.push(format!(
                "about {} of memory per added task (kernel stack, task structures, thread stack pages)",
                human_bytes((memory / tasks) as i64)
            ));
        }
        ev.extend(self.top_sites(&self.r.sites, &["slab", "page", "percpu"]));
        ev.extend(self.kills_line());
        ("thread-leak", 0.5 + 0.45 * self.strength("tasks"), ev)
    }

    fn kernel_leak(&self) -> (&'static str, f64, Vec<String>) {
        let lead = if self.grows("kernel") { "kernel" } else { "sock" };
        let mut ev = vec![self.line(lead)];
        for name in ["kernel_stack", "sock"] {
            if self.grows(name) && name != lead {
                ev.push(self.line(name));
            }
        }
        if self.grows("sock") || self.kernel_sites().take(3).any(|s| sender(s).is_some()) {
            ev.push(
                "socket buffers grow: data queued on sockets that nobody reads (or a peer that stopped reading)".into(),
            );
        }
        ev.push(format!("anon meanwhile: {}", self.line("anon")));
        ev.push(format!("tasks: {}", self.line("tasks")));
        ev.extend(self.top_sites(&self.r.sites, &["slab", "page", "percpu"]));
        ev.push(coverage_line("kernel memory", &self.r.attribution.slab));
        ev.extend(self.kills_line());
        ("kernel-leak", 0.5 + 0.45 * self.strength(lead), ev)
    }

    /// Kernel-side sites that send on sockets grow steadily while none of the cgroup's figures does: buffers the
    /// memcg does not charge (cgroup v1 charges only TCP's, to kmem.tcp).
    fn uncharged_socket_buffers(&self) -> bool {
        self.grows("kernel_sites") && self.kernel_sites().take(3).any(|s| sender(s).is_some())
    }

    fn kernel_sites(&self) -> impl Iterator<Item = &Site> + '_ {
        self.r.sites.iter().filter(|s| !USER_KINDS.contains(&s.kind.as_str()) && s.outstanding_bytes > 0)
    }

    fn uncharged_kernel_leak(&self) -> (&'static str, f64, Vec<String>) {
        let mut ev = vec![format!("traced kernel-side sites: {}", self.line("kernel_sites"))];
        ev.push(format!(
            "the cgroup does not count them ({}; usage: {}): socket buffers outside its limit, taken from the \
             host's memory (cgroup v1 charges none but TCP's, to memory.kmem.tcp)",
            self.line("kernel"),
            self.line("usage")
        ));
        ev.push("socket buffers queued on sockets that nobody reads".into());
        ev.extend(self.top_sites(&self.r.sites, &["slab", "page", "other"]));
        ("kernel-leak", 0.45 + 0.4 * self.strength("kernel_sites"), ev)
    }

    fn heap_leak(&self) -> (&'static str, f64, Vec<String>) {
        let mut ev = vec![self.line("anon")];
        ev.push(format!("load: {}{}", self.line("tasks"), self.allocation_rate().unwrap_or_default()));
        ev.extend(
            holder_line(&self.r.sites, self.r.attribution.heap.as_ref()).or_else(|| self.heap_hint(&self.r.sites)),
        );
        ev.extend(self.top_sites(&self.r.sites, &["heap"]));
        ev.extend(self.top_sites(&self.r.sites, &["anon"]));
        ev.extend(self.rss_line());
        ev.push(self.kill_coverage().unwrap_or_else(|| coverage_line("anon", &self.r.attribution.anon)));
        ev.extend(self.interval_coverage());
        ev.extend(self.limit_line());
        ev.extend(self.kills_line());
        ("heap-leak", 0.5 + 0.45 * self.strength("anon"), ev)
    }

    fn cache_growth(&self, plateau: bool) -> (&'static str, f64, Vec<String>) {
        let mut ev = vec![self.line("file")];
        ev.push(format!("anon meanwhile: {}", self.line("anon")));
        if self.grows("kernel") {
            ev.push(format!(
                "kernel memory grows along with it, less than the cache (its metadata, reclaimed with it): {}",
                self.line("kernel")
            ));
        }
        if let Some(s) = self.r.memory.samples.last() {
            if let Some(file) = s.file {
                ev.push(format!(
                    "file (page cache, reclaimable) is {:.0}% of the usage {}",
                    100.0 * file as f64 / s.usage.max(1) as f64,
                    human_bytes(clamp(s.usage))
                ));
            }
        }
        if plateau {
            ev.extend(self.limit_line());
        }
        ev.push("no OOM kill: the kernel reclaims the cache before it kills".into());
        let strength = if plateau { self.g.near_limit_share.unwrap_or(0.0) } else { self.strength("file") };
        ("cache-growth", 0.5 + 0.4 * strength, ev)
    }

    fn shmem_growth(&self) -> (&'static str, f64, Vec<String>) {
        let mut ev = vec![self.line("shmem")];
        ev.push(format!("file (which counts shmem): {}; anon meanwhile: {}", self.line("file"), self.line("anon")));
        ev.push(
            "shmem is tmpfs files and shared memory: reclaim cannot drop it (without swap it stays until the files \
             are removed or the segments released), so it is no cache"
                .into(),
        );
        ev.extend(self.top_sites(&self.r.sites, &["other", "page"]));
        ev.extend(self.limit_line());
        ev.extend(self.kills_line());
        ("shmem-growth", 0.5 + 0.45 * self.strength("shmem"), ev)
    }

    /// Anon and kernel-side bytes the sites gained in the flight recorder's first span before the last kill, when
    /// that is more than noise.
    fn grew_before_kill(&self) -> Option<(f64, i64, i64)> {
        let span = self.r.oom_kills.last()?.grew_before_kill.first()?;
        let sum = |kinds: &[&str]| -> i64 {
            span.sites.iter().filter(|s| kinds.contains(&s.kind.as_str())).map(|s| s.outstanding_bytes).sum()
        };
        let (anon, kernel) = (sum(&["anon"]), sum(&["slab", "page", "percpu"]));
        ((anon.max(kernel) as f64) >= self.min_bytes).then_some((span.covered_seconds, anon, kernel))
    }

    /// A single kill ending a life too short for a trend, with the traced sites growing up to it: a leak fast
    /// enough to reach the limit within a few samples. Claimed with less confidence: one start-up that needs more
    /// than the limit would look the same, and only repeated kills tell the two apart.
    fn one_kill_after_growth(&self) -> (&'static str, f64, Vec<String>) {
        let (covered, anon, kernel) = self.grew_before_kill().unwrap_or_default();
        let heap = anon >= kernel;
        let mut ev = vec![format!(
            "one OOM kill after a life too short for a trend; in the {covered:.0} s before it the traced sites grew \
             anon {} and kernel memory {}",
            human_bytes(anon),
            human_bytes(kernel)
        )];
        ev.extend(self.kills_line());
        let grown = self.r.oom_kills.last().and_then(|k| k.grew_before_kill.first()).map_or(&[][..], |g| &g.sites);
        if heap {
            ev.extend(holder_line(grown, None).or_else(|| self.heap_hint(grown)));
        }
        ev.extend(self.top_sites(grown, if heap { &["heap", "anon"] } else { &["slab", "page", "percpu"] }));
        ev.push("a single kill cannot rule out a start-up working set larger than the limit: trace a restart, or longer with a shorter --interval".into());
        (if heap { "heap-leak" } else { "kernel-leak" }, 0.55, ev)
    }

    fn killed_without_trend(&self) -> (&'static str, f64, Vec<String>) {
        let kills = &self.r.oom_kills;
        let mut ev: Vec<String> = self.kills_line().into_iter().collect();
        let rss: Vec<String> =
            kills.iter().filter_map(|k| k.rss_bytes.or(k.anon_rss_bytes)).map(|b| human_bytes(clamp(b))).collect();
        if !rss.is_empty() {
            ev.push(format!("victims' RSS at each kill: {}", rss.join(", ")));
        }
        ev.push(match self.trend("anon") {
            Some(_) => format!("no steady growth within a life: {}", self.line("anon")),
            None => "no growth trend within a life: every life was too short for one (fewer than 4 samples)".into(),
        });
        ev.push("the workload builds the same working set each life and it does not fit: raise the limit (or shrink the working set); a leak fast enough to fill the limit within one sampling interval would look the same".into());
        let confidence = (0.4 + 0.15 * kills.len() as f64).min(0.85);
        ("limit-too-low", confidence, ev)
    }

    /// Page cache that filled the limit and is reclaimed there: the last sample near the limit, file most of it,
    /// no OOM kill. Its fill may have taken most of the window, so the share of samples near the limit can be small.
    fn cache_at_limit(&self) -> bool {
        let Some(last) = self.r.memory.samples.iter().rev().find(|s| s.processes != Some(0)) else { return false };
        let limit = last.limit.or(self.r.memory.limit_bytes).unwrap_or(u64::MAX);
        let file_share = last.file.map_or(0.0, |f| f as f64 / last.usage.max(1) as f64);
        self.r.oom_kills.is_empty() && last.usage as f64 > growth::NEAR_LIMIT * limit as f64 && file_share >= 0.5
    }

    /// When the window ends after the workload died at an OOM kill (its growth over the window is nothing), the
    /// reconciliation that means something is the kill's: what the sites held against the life's last anon figure.
    fn kill_coverage(&self) -> Option<String> {
        let (n, kill) = (self.r.oom_kills.len(), self.r.oom_kills.last()?);
        if self.r.attribution.anon.growth_bytes > 0 {
            return None;
        }
        let held: i64 = kill.sites_before_kill.iter().filter(|s| s.kind == "anon").map(|s| s.outstanding_bytes).sum();
        // The victim's own anon RSS at the kill where the kernel reports it, else the life's last sample.
        let (anon, of) = match kill.anon_rss_bytes {
            Some(rss) => (rss, "the victim's anon RSS at the kill"),
            None => (
                self.r.memory.samples.iter().rev().find(|s| s.t <= kill.t).and_then(|s| s.anon)?,
                "the last sample's anon",
            ),
        };
        Some(format!(
            "just before OOM kill {n}, the traced anon sites held {} of {of}, {} ({:.0}%)",
            human_bytes(held),
            human_bytes(clamp(anon)),
            100.0 * held as f64 / anon.max(1) as f64
        ))
    }

    /// Deaths other than OOM kills.
    fn deaths(&self) -> impl Iterator<Item = &Exit> + '_ {
        self.r.exits.iter().filter(|e| e.cause != "oom-kill")
    }

    /// The processes die, and memory had no part in it: no OOM kill, no growth within a life, usage away from the
    /// limit. Whoever sent the signal, or the signal a crash raised, is where to look.
    fn not_memory(&self) -> (&'static str, f64, Vec<String>) {
        let mut ev = self.deaths_lines();
        let counted = crate::attribution::growth(&self.r.memory.samples, |s| s.oom_kill).unwrap_or(0).max(0);
        let peak = self.r.memory.samples.iter().map(|s| s.usage).max().unwrap_or(0);
        let peak = match self.r.memory.limit_bytes {
            Some(l) => format!(
                "usage peaked at {} = {:.0}% of the {} limit",
                human_bytes(clamp(peak)),
                100.0 * peak as f64 / l.max(1) as f64,
                human_bytes(clamp(l))
            ),
            None => format!("usage peaked at {} (no limit)", human_bytes(clamp(peak))),
        };
        let flat = match self.trend("anon") {
            Some(_) => format!("nothing grew within a life: {}", self.line("anon")),
            None => "no life was long enough for a trend".into(),
        };
        ev.push(format!(
            "memory was no cause: no OOM kill (the cgroup's oom_kill counter rose by {counted}), {peak}, and {flat}"
        ));
        let named = self.deaths().filter(|e| e.sender_pid.is_some() || e.cause == "exit").count();
        let deaths = self.deaths().count();
        let confidence = 0.6 + 0.1 * deaths.min(3) as f64 + if named == deaths { 0.05 } else { 0.0 };
        ("not-memory", confidence, ev)
    }

    /// The deaths other than OOM kills, one line per cause (signal and sender, or exit status), with the victims.
    fn deaths_lines(&self) -> Vec<String> {
        let mut groups: Vec<(String, Vec<&Exit>)> = Vec::new();
        for e in self.deaths() {
            let key = death_cause(e);
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => g.1.push(e),
                None => groups.push((key, vec![e])),
            }
        }
        groups
            .into_iter()
            .map(|(cause, exits)| {
                let shown: Vec<String> =
                    exits.iter().take(5).map(|e| format!("pid {} ({}) at {:.1} s", e.pid, e.comm, e.t)).collect();
                let more = if exits.len() > 5 { format!(" and {} more", exits.len() - 5) } else { String::new() };
                format!("{} death(s) {cause}: {}{more}", exits.len(), shown.join(", "))
            })
            .collect()
    }

    /// What the container runtime recorded of the last exit, set against the OOM kills the tracer saw.
    fn runtime_facts(&self) -> Option<String> {
        let c = self.r.target.container.as_ref()?;
        let (oom, code) = (c.oom_killed?, c.last_exit_code?);
        let meaning = match (oom, code) {
            (true, _) => "the OOM killer ended its last run".to_string(),
            (false, 137) => {
                "its last run ended by a SIGKILL from outside (docker kill, a liveness probe, a supervisor), not the \
                 OOM killer"
                    .to_string()
            }
            (false, c) if c > 128 => format!("its last run ended by {}", signal_name((c - 128) as i32)),
            (false, 0) => "its last run ended normally, or it is still running".to_string(),
            (false, c) => format!("its last run exited by itself with status {c}"),
        };
        Some(format!("{}: OOMKilled={oom}, ExitCode={code}: {meaning}", c.runtime))
    }

    fn plateau_near_limit(&self) -> (&'static str, f64, Vec<String>) {
        let mut ev: Vec<String> = self.limit_line().into_iter().collect();
        ev.push(format!("usage flat: {}", self.line("usage")));
        ev.push(format!("anon: {}", self.line("anon")));
        ev.push("the working set fits only just: raise the limit before a burst pushes it over".into());
        let near = self.g.near_limit_share.unwrap_or(0.0);
        ("limit-too-low", 0.5 + 0.4 * near * (self.g.samples as f64 / FULL_SAMPLES).min(1.0), ev)
    }

    fn no_leak(&self) -> (&'static str, f64, Vec<String>) {
        let ev = ["usage", "anon", "file", "kernel", "tasks"]
            .into_iter()
            .filter(|n| self.trend(n).is_some())
            .map(|n| format!("flat after warm-up: {}", self.line(n)))
            .collect::<Vec<_>>();
        // A steady drift counts against "flat" only when it moves a quarter of the growth threshold: page-sized
        // wobbles are steady in rank (tau) but not in bytes.
        let worst = ["usage", "anon", "kernel"]
            .iter()
            .filter(|n| self.change(n).abs() >= self.min_bytes / 4.0)
            .map(|n| self.strength(n))
            .fold(0.0, f64::max);
        let confidence = 0.5 + 0.4 * (self.g.samples as f64 / FULL_SAMPLES).min(1.0) * (1.0 - worst);
        ("no-leak", confidence, ev)
    }

    /// "anon 12.0 MiB -> 68.0 MiB, +201.6 MiB/h (steadiness 0.98)".
    fn line(&self, name: &str) -> String {
        let Some(t) = self.trend(name) else { return format!("{name} not reported") };
        let show = |v: Option<u64>| match (v, t.unit.as_str()) {
            (None, _) => "?".to_string(),
            (Some(v), "tasks") => v.to_string(),
            (Some(v), _) => human_bytes(clamp(v)),
        };
        let rate = if t.unit == "tasks" {
            format!("{:+.0} tasks/h", t.rate_per_hour)
        } else {
            format!("{}/h", signed(t.rate_per_hour as i64))
        };
        let within = if self.g.lives > 1 { " within lives" } else { "" };
        format!("{name} {} -> {}, {rate}{within} (steadiness {:.2})", show(t.first), show(t.last), t.steadiness)
    }

    /// The per-interval allocation rate and how much it varies: flat load shows as a steady rate.
    fn allocation_rate(&self) -> Option<String> {
        let from = self.g.warmup_seconds;
        let s: Vec<_> = self.r.memory.samples.iter().filter(|s| s.t >= from).collect();
        let mut rates: Vec<f64> = s
            .windows(2)
            .filter_map(|w| {
                let (a, b) = (w[0].sites?, w[1].sites?);
                let dt = w[1].t - w[0].t;
                (dt > 0.0).then(|| b.allocated_bytes.saturating_sub(a.allocated_bytes) as f64 / dt)
            })
            .collect();
        if rates.len() < 3 {
            return None;
        }
        let mid = median(&mut rates);
        let mut dev: Vec<f64> = rates.iter().map(|r| (r - mid).abs()).collect();
        let spread = median(&mut dev) / mid.max(1.0);
        Some(format!(", allocations {}/s (median, ±{:.0}% between intervals)", human_bytes(mid as i64), spread * 100.0))
    }

    /// Where the largest growing sites of these kinds sit: the kernel function (for kernel memory), the user call
    /// chain, and whose code that is.
    fn top_sites(&self, sites: &[Site], kinds: &[&str]) -> Vec<String> {
        sites
            .iter()
            .filter(|s| kinds.contains(&s.kind.as_str()) && s.outstanding_bytes > 0)
            .take(3)
            .map(|s| {
                let cache = s.slab_cache.as_ref().map(|c| format!(" ({c})")).unwrap_or_default();
                let kernel = match named_frames(s, true).first() {
                    Some(k) if s.kind != "anon" => format!(", in the kernel via {k}"),
                    _ => String::new(),
                };
                let sent = match sender(s) {
                    Some(f) if !kernel.ends_with(f) => format!(", sent by {f}"),
                    _ => String::new(),
                };
                let kernel = kernel + &sent;
                let chain = named_frames(s, false);
                let user = if chain.is_empty() {
                    String::new()
                } else {
                    format!(", from {}", chain.iter().take(3).copied().collect::<Vec<_>>().join(" <- "))
                };
                format!(
                    "site: {} {}{cache} outstanding{kernel}{user}; the memory sits in {}",
                    s.kind,
                    human_bytes(s.outstanding_bytes),
                    location(s)
                )
            })
            .collect()
    }

    /// Whether the processes' RSS carries the anon growth, and which process holds the most.
    fn rss_line(&self) -> Option<String> {
        let rss = self.trend("rss_anon")?;
        let anon = self.change("anon");
        let share = if anon > 0.0 { rss.change / anon } else { 0.0 };
        let main = self.r.memory.samples.iter().rev().find_map(|s| s.main_process.as_ref());
        let who = main.map_or(String::new(), |p| {
            format!("; largest: pid {} ({}) RssAnon {}", p.pid, p.comm, human_bytes(clamp(p.rss_anon)))
        });
        let verdict = if share >= 0.7 {
            "the processes' own heap carries the growth"
        } else {
            "the growth is not in the processes' RSS (shmem/tmpfs, a sidecar that exited, or kernel-held pages)"
        };
        Some(format!(
            "processes' RssAnon {}/h = {:.0}% of the anon trend{who}: {verdict}",
            signed(rss.rate_per_hour as i64),
            share * 100.0
        ))
    }

    /// The per-interval reconciliation: the median share of each growing interval the sites explain.
    fn interval_coverage(&self) -> Option<String> {
        let mut shares: Vec<f64> =
            self.r.attribution.intervals.iter().filter_map(|i| i.anon.coverage).filter(|c| c.is_finite()).collect();
        let n = shares.len();
        (n >= 3).then(|| {
            format!(
                "per interval, sites explain a median {:.0}% of the anon growth ({n} intervals with growth)",
                median(&mut shares) * 100.0
            )
        })
    }

    fn limit_line(&self) -> Option<String> {
        let limit = self.r.memory.limit_bytes?;
        let mut line = format!(
            "usage at {:.0}% of the {} limit, above {:.0}% of it in {:.0}% of the samples after warm-up",
            self.g.limit_share.unwrap_or(0.0) * 100.0,
            human_bytes(clamp(limit)),
            growth::NEAR_LIMIT * 100.0,
            self.g.near_limit_share.unwrap_or(0.0) * 100.0
        );
        if let Some(secs) = self.g.time_to_limit_seconds {
            line += &format!("; the limit is reached in {secs:.1} s if the trend continues");
        }
        Some(line)
    }

    fn kills_line(&self) -> Option<String> {
        let kills = &self.r.oom_kills;
        if kills.is_empty() {
            return None;
        }
        let victims: Vec<String> = kills.iter().map(|k| format!("{} ({}) at {:.1} s", k.pid, k.comm, k.t)).collect();
        let mut line = format!(
            "{} OOM kill(s), {} restart(s) of the workload: {}",
            kills.len(),
            self.g.restarts,
            victims.join(", ")
        );
        // The flight recorder's first span of the last kill: what was growing when the limit was hit.
        let last = kills.last().and_then(|k| k.grew_before_kill.first());
        if let Some((span, site)) = last.and_then(|g| Some((g, g.sites.first()?))) {
            let user = named_frames(site, false);
            let names = if user.is_empty() { named_frames(site, true) } else { user };
            let name =
                if names.is_empty() { "(unnamed site)".into() } else { names[..names.len().min(2)].join(" <- ") };
            line += &format!(
                "; in the {:.0} s before the last kill, {} {name} grew by {}",
                span.covered_seconds,
                site.kind,
                human_bytes(site.outstanding_bytes)
            );
        }
        Some(line)
    }

    /// Without `--heap`: where the top anon site's pages lie in a malloc heap, the function that first touched
    /// them may not hold them (the allocator hands memory freed by one caller to the next), and `--heap` would
    /// name the holder.
    fn heap_hint(&self, sites: &[Site]) -> Option<String> {
        let top = sites.iter().find(|s| s.kind == "anon" && s.outstanding_bytes > 0)?;
        let heap = self.in_malloc_heap(top)?;
        Some(format!(
            "the top anon site's pages lie in the malloc heap ({heap}): {} first touched them, but the allocator hands \
             freed memory to the next caller, so another function may hold them now; run `{}` to name the holder",
            site_name(top)?,
            self.trace_again_with("--heap")
        ))
    }

    /// Where an anon site's pages lie when that is a malloc heap and `--heap` was off (which would have named who
    /// holds them).
    fn in_malloc_heap(&self, site: &Site) -> Option<&'static str> {
        // Go's heap arenas are 64 MiB aligned as glibc's are, but no malloc hands them out.
        if self.r.kernel.modes.iter().any(|m| m == "heap") || site.kind != "anon" || self.rt == Some(Runtime::Go) {
            return None;
        }
        match site.region.as_deref()? {
            "brk-heap" => Some("[heap]"),
            "malloc-arena" => Some("a glibc arena"),
            _ => None,
        }
    }

    /// The command that traces this target again with `flag`: by the container's name when it has one (a restart
    /// makes a new cgroup), else by the cgroup traced.
    fn trace_again_with(&self, flag: &str) -> String {
        let t = &self.r.target;
        let target = t.container.as_ref().map(|c| c.name.as_str()).filter(|n| !n.is_empty());
        format!("leaktrace --cgroup {} {flag}", shell_word(target.unwrap_or(&t.cgroup_path)))
    }

    /// The site holding the most of a leak's growth: the holder of the heap (`--heap`) before the toucher of its
    /// pages for a heap leak, a kernel site for a kernel leak. When the leaking processes died by themselves (no
    /// kill snapshot keeps what they held), the site that allocated the most.
    fn held_site(&self, class: &str) -> Option<&Site> {
        let held = |kind: fn(&str) -> bool| all_sites(self.r).find(|s| s.outstanding_bytes > 0 && kind(&s.kind));
        let allocated = |kind: fn(&str) -> bool| {
            all_sites(self.r).filter(|s| s.alloc_bytes > 0 && kind(&s.kind)).max_by_key(|s| s.alloc_bytes)
        };
        let user = |k: &str| k == "heap" || k == "anon";
        if class == "kernel-leak" {
            held(|k| !USER_KINDS.contains(&k))
        } else if self.deaths().next().is_some() && held(user).is_none() {
            allocated(|k| k == "heap").or_else(|| allocated(|k| k == "anon"))
        } else if self.heap_explains_little() {
            held(|k| k == "anon")
        } else {
            held(|k| k == "heap").or_else(|| held(|k| k == "anon"))
        }
    }

    /// Whether the heap sites explain under a quarter of the anon growth: what grows is then memory the heap's
    /// view leaves out (a Node Buffer's bytes, outside V8's heap its profiler samples), and the anon site holds it.
    fn heap_explains_little(&self) -> bool {
        self.r.attribution.heap.as_ref().and_then(|c| c.coverage).is_some_and(|c| c < HEAP_EXPLAINS)
    }

    /// `verdict.location`: where the memory the class is about lives.
    fn location(&self, class: &str) -> Option<&'static str> {
        let rt = self.rt;
        match class {
            "kernel-leak" => Some("kernel"),
            "cache-growth" => Some("page-cache"),
            "shmem-growth" => Some("shmem"),
            "thread-leak" => Some(if rt.is_some() { "runtime" } else { "thread-stack" }),
            "heap-leak" | "limit-too-low" => self.held_site("heap-leak").map(|s| runtime::user_location(rt, s)),
            _ => None,
        }
    }

    /// What a runtime's memory location means, as an evidence line.
    fn location_line(&self, location: &str) -> String {
        let rt = self.rt.map_or("", |r| r.name());
        let what = match location {
            "managed-heap" => {
                "the runtime's managed heap (its objects, which its collector keeps alive while they are referenced)"
            }
            "off-heap" => {
                "native memory outside the runtime's managed heap (direct or array buffers, native extensions)"
            }
            "runtime" => "the runtime's own metadata (classes, compiled code, thread or goroutine stacks)",
            other => other,
        };
        format!("runtime {rt}: the growing memory is {what}")
    }

    /// A runtime that stops itself at its own heap bound dies of memory without the OOM killer: V8 aborts at
    /// --max-old-space-size, the JVM throws OutOfMemoryError at -Xmx, Go and Python exit. Said when a process of
    /// the target died so after its managed heap grew.
    fn runtime_death_line(&self, location: Option<&str>) -> Option<String> {
        let rt = self.rt.filter(|_| location == Some("managed-heap"))?;
        let (how, ends) = match rt {
            Runtime::Node => {
                ("V8 aborts when its heap reaches --max-old-space-size (\"JavaScript heap out of memory\")", Some(6))
            }
            Runtime::Jvm => (
                "the JVM throws OutOfMemoryError when its heap reaches -Xmx (exit status 1 once it ends the main \
                 thread, 3 with -XX:+ExitOnOutOfMemoryError, SIGABRT with -XX:+CrashOnOutOfMemoryError)",
                Some(6),
            ),
            Runtime::Go => ("Go's runtime exits with status 2 (\"fatal error: runtime: out of memory\")", None),
            Runtime::Python => ("Python raises MemoryError, which ends the program with status 1 unless caught", None),
        };
        let died = self.deaths().find(|e| {
            (e.cause == "exit" && e.exit_code.unwrap_or(0) != 0) || (e.signal.is_some() && e.signal == ends)
        })?;
        let by = match died.signal {
            Some(sig) => signal_name(sig),
            None => format!("exit status {}", died.exit_code.unwrap_or(0)),
        };
        Some(format!(
            "{how}: the death of pid {} ({}) at {:.1} s by {by}, after the managed heap grew, is the managed heap's \
             memory death, not a crash",
            died.pid, died.comm, died.t
        ))
    }

    /// Lines every verdict carries: the OOM kills the tracer saw against the cgroup's own counter.
    fn common_evidence(&self) -> Vec<String> {
        let seen = self.r.oom_kills.len() as u64;
        let counted = crate::attribution::growth(&self.r.memory.samples, |s| s.oom_kill).unwrap_or(0).max(0) as u64;
        if counted > seen {
            vec![format!(
                "the cgroup counted {counted} OOM kill(s) in the window, the tracer saw {seen}: kills are missing \
                 from oom_kills (ring buffer drops, or a kernel without oom:mark_victim)"
            )]
        } else if seen == 0 {
            vec!["0 OOM kills in the window".into()]
        } else {
            Vec::new()
        }
    }
}

/// The window's sites, then those seen before each OOM kill.
fn all_sites(r: &Report) -> impl Iterator<Item = &Site> + Clone {
    r.sites.iter().chain(r.oom_kills.iter().flat_map(|k| &k.sites_before_kill))
}

/// The symbols of a site's frames on one side (kernel or user) past the allocator's own, leaf first, without
/// repeats (inlined helpers show the same name twice).
fn named_frames(site: &Site, kernel: bool) -> Vec<&str> {
    let mut names: Vec<&str> = site
        .frames
        .iter()
        .filter(|f| f.kernel == kernel)
        .filter_map(|f| f.symbol.as_deref())
        .filter(|s| !is_allocator(s))
        .collect();
    names.dedup();
    names
}

/// How a death came about, as its line in the evidence says it.
fn death_cause(e: &Exit) -> String {
    let Some(sig) = e.signal else {
        return format!("by exit status {}", e.exit_code.unwrap_or(0));
    };
    let core = if e.core_dumped { ", core dumped" } else { "" };
    let name = signal_name(sig);
    match (e.sender_pid, e.sender_comm.as_deref(), e.sender_outside) {
        (Some(pid), _, _) if pid == e.pid => format!("by {name} raised by the process itself (a crash){core}"),
        (Some(pid), comm, outside) => format!(
            "by {name} sent by pid {pid} ({}) {} the cgroup{core}",
            comm.unwrap_or("?"),
            if outside == Some(false) { "inside" } else { "from outside" }
        ),
        _ => format!("by {name} (sender not seen){core}"),
    }
}

/// SIGKILL, SIGSEGV, ... ("signal 40" for the rest).
fn signal_name(sig: i32) -> String {
    const NAMES: &[&str] = &[
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(sig).ok().and_then(|i| NAMES.get(i)).filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => format!("signal {sig}"),
    }
}

/// The kernel's send function in a site's stack (`unix_stream_sendmsg`, `tcp_sendmsg`, `sock_alloc_send_pskb`).
fn sender(site: &Site) -> Option<&str> {
    let names = named_frames(site, true);
    let protocol = names.iter().find(|f| f.ends_with("sendmsg"));
    protocol.or_else(|| names.iter().find(|f| f.starts_with("sock_alloc_send"))).copied()
}

/// Who the memory belongs to: application code, a language runtime, the C allocator, or the kernel.
fn location(site: &Site) -> String {
    const RUNTIMES: &[&str] = &[
        "libjvm",
        "libpython",
        "python",
        "libnode",
        "node",
        "libruby",
        "ruby",
        "libperl",
        "perl",
        "libphp",
        "php",
        "libcoreclr",
        "libmono",
        "beam.smp",
    ];
    let user: Vec<_> = site.frames.iter().filter(|f| !f.kernel).collect();
    if user.is_empty() {
        return "the kernel (no user stack)".into();
    }
    match app_frame(site) {
        Some(f) if !f.kernel && !f.symbol.as_deref().is_some_and(is_allocator) => {
            // A Python or JS function's module is its source file.
            let module = crate::stacks::runtime::source_file(f).or(f.module.as_deref()).unwrap_or("");
            let base = module.rsplit('/').next().unwrap_or(module);
            if base.starts_with("libc.so") || base.starts_with("libc-") {
                "the C library (libc)".into()
            } else if let Some(rt) = RUNTIMES.iter().find(|r| base.starts_with(*r)) {
                format!("a language runtime ({rt}, {base})")
            } else if f.symbol.as_deref().is_some_and(|s| s.starts_with("runtime.")) {
                "a language runtime (the Go runtime)".into()
            } else {
                format!("application code ({})", if base.is_empty() { "?" } else { base })
            }
        }
        _ if user.iter().any(|f| f.symbol.is_some()) => "the C allocator (no application frame above it)".into(),
        _ => "user code without symbols".into(),
    }
}

/// The share of the anon growth under which the heap sites are not where the growth lives.
const HEAP_EXPLAINS: f64 = 0.25;

/// The kinds of user memory: anon pages, and the heap blocks (`--heap`) that are a view of them.
const USER_KINDS: &[&str] = &["anon", "heap"];

/// With `--heap`: who holds the malloc'd bytes that stay, beside who first touched the pages, when the two
/// differ (an allocator hands freed memory to the next caller), and how much of the anon growth the heap explains.
fn holder_line(sites: &[Site], heap: Option<&Coverage>) -> Option<String> {
    let top = |kind: &str| sites.iter().find(|s| s.kind == kind && s.outstanding_bytes > 0);
    let holder = top("heap")?;
    let held = site_name(holder)?;
    let explains = heap
        .and_then(|c| c.coverage)
        .map(|c| format!(" (the live sampled heap explains {:.0}% of the anon growth)", c * 100.0))
        .unwrap_or_default();
    // A runtime's own profile (Go's, V8's) counts its objects; the probes count malloc's blocks.
    let (what, why) = if holder.frames.iter().any(|f| f.unwind.as_deref() == Some("profile")) {
        ("the objects that stay", "the runtime's collector, not the code that keeps the objects, touches their pages")
    } else {
        ("the malloc'd bytes that stay", "the allocator reused memory freed by one for the other")
    };
    let little = heap.and_then(|c| c.coverage).is_some_and(|c| c < HEAP_EXPLAINS);
    Some(match top("anon").and_then(site_name) {
        _ if little => format!(
            "{what} are held by {held}, {}{explains}: what grows is memory outside the heap they are counted in \
             (native or off-heap buffers), told by the anon sites",
            human_bytes(holder.outstanding_bytes)
        ),
        Some(toucher) if toucher != held => format!(
            "anon pages first touched by {toucher}; {what} are held by {held}, {}{explains}: {why}, so fix {held}",
            human_bytes(holder.outstanding_bytes)
        ),
        _ => format!("{what} are held by {held}, {}{explains}", human_bytes(holder.outstanding_bytes)),
    })
}

/// `word` as one word of a shell command line: quoted unless it is made of characters no shell treats specially
/// (a systemd unit's escapes, `\x2d`, are not).
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn coverage_line(what: &str, c: &Coverage) -> String {
    let ratio = crate::export::coverage_ratio(c);
    format!(
        "{what} grew {} over the window; traced sites explain {} ({ratio}), unexplained {}",
        human_bytes(c.growth_bytes),
        human_bytes(c.attributed_bytes),
        human_bytes(c.unexplained_bytes)
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests;
