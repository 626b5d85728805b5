//! The command line (shared/CONTRACT.md). Validation lives here so bad input fails before anything is loaded.
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "Trace a cgroup's memory growth to the call sites that allocate it",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// The cgroup to trace: an absolute cgroup directory, a path relative to the memory hierarchy's root, a numeric
    /// cgroup id (the directory's inode number), or a container: a Docker name, full id or id prefix (>= 12 hex;
    /// asked of the daemon at DOCKER_HOST or /var/run/docker.sock), or a containerd / CRI-O container id. A
    /// container is followed through its restarts.
    #[arg(long, value_name = "TARGET", required = true)]
    pub cgroup: Option<String>,

    #[command(flatten)]
    pub trace: TraceArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Stop after this many seconds (default: until Ctrl-C, SIGTERM, or the cgroup is removed).
    #[arg(long, value_name = "SECS", value_parser = positive_secs)]
    pub duration: Option<f64>,

    /// Where to write the outputs (default ./leaktrace-<timestamp>).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Seconds between two reads of the maps and of the cgroup's memory files.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = interval_secs)]
    pub interval: f64,

    /// How many sites the terminal summary and each OOM kill's "before the kill" picture keep.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// How many outstanding allocations the kernel side can track at once (pages and slab objects; default 65536
    /// when sampling, which holds GiBs of sampled leaks, 262144 with --record-all).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_tracked: Option<u32>,

    /// Stack traces the kernel side can keep (kernel and user stacks together); a test knob for a full stack map.
    #[arg(long, value_name = "N", hide = true, default_value_t = crate::probes::DEFAULT_STACK_ENTRIES, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub stack_entries: u32,

    /// Print only errors and the final summary.
    #[arg(long)]
    pub quiet: bool,

    /// Sample allocations by size: one of s bytes is kept with probability about s/BYTES (BYTES a power of two),
    /// and every byte and count in the report is scaled back to an unbiased estimate.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SAMPLE_BYTES, value_parser = sample_bytes)]
    pub sample_bytes: u64,

    /// Record every allocation of the target with its stacks: exact figures, at a higher cost to the target.
    /// User stacks are then walked by frame pointers (copying a stack for every allocation costs too much), so
    /// callers of code built without frame pointers are lost.
    #[arg(long, conflicts_with = "sample_bytes")]
    pub record_all: bool,

    /// How much of the user stack each kept allocation copies for unwinding at most (from the stack pointer's 4 KiB
    /// chunk up, in whole chunks, at most 28 KiB); a process's copy is cut to what its first walks needed, and set
    /// back when one runs out. report.json `collection.unwind` counts the walks it cut short.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_USER_STACK_BYTES, value_parser = user_stack_bytes)]
    pub user_stack_bytes: u32,

    /// Also probe the allocator (malloc, free and kin, in libc, the executable, or jemalloc/tcmalloc/mimalloc)
    /// of every process of the target: heap sites then name who holds the malloc'd bytes, not who first touched
    /// their pages. Sampled by size as the kernel side is; each probe hit costs the process a trap into the kernel.
    #[arg(long)]
    pub heap: bool,

    /// With --heap: the most of a process's CPU time (percent) the allocator probes may take, estimated from its
    /// probe hits and the cost of a hit measured at the start; a process over it is detached, and the report says so.
    #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_HEAP_BUDGET, value_parser = heap_budget, requires = "heap")]
    pub heap_budget: f64,

    /// Ask every JVM of the target for a perf map of its compiled code (`jcmd <pid> Compiler.perfmap`, JDK 17+,
    /// through the attach protocol: this starts the JVM's attach listener), every 2 s and at the end, so Java
    /// frames get method names. A map that exists only because it was asked for is removed at the end.
    #[arg(long)]
    pub jvm_perfmap: bool,

    /// Profile the JavaScript heap of every node process of the target with V8's sampling heap profiler, so that
    /// `heap` sites name the JS functions whose objects stay. This opens the process's inspector (SIGUSR1: it
    /// listens on 127.0.0.1:9229 in the process's network namespace) and closes it again at the end.
    #[arg(long)]
    pub node_heap: bool,

    /// Sample the live Java objects of every JVM of the target with JFR's old-object sampler (JDK 11+, through
    /// the attach protocol), so that `heap` sites name the Java methods whose objects stay. Each JVM records into
    /// a JFR recording named `leaktrace`, dumped to its /tmp every interval and stopped at the end. Starting JFR
    /// adds about 24 MiB to a JVM's RSS.
    #[arg(long)]
    pub jvm_heap: bool,

    /// Serve what the trace knows so far over HTTP while it runs: `/metrics` (Prometheus), `/pprof/heap` (the
    /// outstanding memory by site as a pprof profile, for `go tool pprof`, Parca or Grafana Alloy) and
    /// `/report.json`. HOST:PORT, a PORT on 127.0.0.1, or unix:PATH. No listener unless asked.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<crate::serve::Listen>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Trace only the containers a pattern matches (`*`, `?`, `[...]`), by name, image, id (or its first 12 digits),
    /// pod, namespace or `namespace/pod/name`; may be given more than once. Default: every container.
    #[arg(long, value_name = "PATTERN")]
    pub select: Vec<String>,

    /// Serve `/metrics` (Prometheus), `/pprof/<container>/heap` (pprof), `/pprof/` (the list) and
    /// `/report/<container>.json`: HOST:PORT, a PORT on 127.0.0.1, or unix:PATH. No listener unless asked.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<crate::serve::Listen>,

    /// Seconds of history each container's report, trends and verdict cover (a rolling window), and how often
    /// --output-dir is written.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = window_secs)]
    pub window: f64,

    /// Seconds between two reads of the maps and of the containers' memory files (and looks for new containers).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = interval_secs)]
    pub interval: f64,

    /// Write each container's report.json and profile.pb.gz every window (and when it goes, and at the end) into
    /// DIR/<container>/<time>/.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// How many of each container's windows --output-dir keeps.
    #[arg(long, value_name = "N", default_value_t = 12, requires = "output_dir")]
    pub keep: usize,

    /// Sites each container's report keeps (the largest); the rest are counted in `collection.sites_left_out`.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_sites: u64,

    /// Sample allocations by size, as a trace does.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SAMPLE_BYTES, value_parser = sample_bytes)]
    pub sample_bytes: u64,

    /// How much of the user stack each kept allocation copies for unwinding at most, as a trace does.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_USER_STACK_BYTES, value_parser = user_stack_bytes)]
    pub user_stack_bytes: u32,

    /// Stop after this many seconds (default: until SIGTERM or Ctrl-C).
    #[arg(long, value_name = "SECS", value_parser = positive_secs)]
    pub duration: Option<f64>,

    /// Print only errors.
    #[arg(long)]
    pub quiet: bool,
}

impl AgentArgs {
    pub fn load(&self) -> Load {
        Load {
            record_all: false,
            stack_chunks: Some(self.user_stack_bytes.div_ceil(leak_common::USTACK_CHUNK as u32)),
            sample_rate_shift: self.sample_bytes.trailing_zeros(),
            live_entries: SAMPLED_LIVE_ENTRIES,
            stack_entries: crate::probes::DEFAULT_STACK_ENTRIES,
            heap: false,
        }
    }
}

/// See the README ("Heap") for the measurements behind it.
pub const DEFAULT_HEAP_BUDGET: f64 = 10.0;

/// 16 KiB of user stack per kept allocation: see the README ("User stacks") for the depths measured.
pub const DEFAULT_USER_STACK_BYTES: u32 = 16 << 10;

/// 512 KiB, jemalloc's default sampling interval: a page is kept 1 in 128 and a slab object far less often, so the
/// stack walks of kept allocations (~1.5 us each) cost a page-faulting workload a few percent, while a leak of
/// 10 MiB/s still yields 20 samples every second. Finer rates suit small leaks in short windows.
pub const DEFAULT_SAMPLE_BYTES: u64 = 512 << 10;

/// Sampled, one entry stands for ~64 KiB of outstanding memory or more: 4 GiB of leaks and then some.
const SAMPLED_LIVE_ENTRIES: u32 = 65_536;

/// How the programs are loaded: the sampling and the kernel tables' sizes.
pub struct Load {
    pub record_all: bool,
    /// The user stack copy per kept allocation in chunks, `None` for frame-pointer stacks.
    pub stack_chunks: Option<u32>,
    pub sample_rate_shift: u32,
    pub live_entries: u32,
    pub stack_entries: u32,
    /// `--heap`: the allocator programs too.
    pub heap: bool,
}

impl TraceArgs {
    pub fn load(&self) -> Load {
        Load {
            record_all: self.record_all,
            stack_chunks: self.user_stack_chunks(),
            sample_rate_shift: self.sample_rate_shift(),
            live_entries: self.live_entries(),
            stack_entries: self.stack_entries,
            heap: self.heap,
        }
    }

    /// The size of the kernel's table of outstanding allocations: what was asked for, else sized to the mode.
    pub fn live_entries(&self) -> u32 {
        let default = if self.record_all { crate::probes::DEFAULT_LIVE_ENTRIES } else { SAMPLED_LIVE_ENTRIES };
        self.max_tracked.unwrap_or(default)
    }

    /// The user stack copy per kept allocation in chunks, `None` with --record-all (frame-pointer stacks).
    pub fn user_stack_chunks(&self) -> Option<u32> {
        (!self.record_all).then(|| self.user_stack_bytes.div_ceil(leak_common::USTACK_CHUNK as u32))
    }

    /// log2 of the sampling rate for the kernel side (`Config::sample_rate_shift`); 0 records everything.
    pub fn sample_rate_shift(&self) -> u32 {
        if self.record_all {
            0
        } else {
            self.sample_bytes.trailing_zeros()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a built-in leaking workload in a cgroup of its own with a small memory limit, trace it through its OOM
    /// kill, write the outputs and remove the cgroup.
    Demo {
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        #[arg(long)]
        quiet: bool,
    },
    /// Compare two runs' output directories (before and after a fix, say): prints what changed and writes
    /// diff.txt and flamegraph-diff.svg.
    Diff {
        /// The first run's output directory (or its report.json).
        run_a: PathBuf,
        /// The second run's output directory (or its report.json).
        run_b: PathBuf,
        /// Where to write diff.txt and flamegraph-diff.svg (default: the current directory).
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Trace every container of this node (or those --select'ed) until stopped: each in a rolling window, served
    /// to Prometheus and pprof scrapers (--listen) or written into --output-dir. Containers are picked up as they
    /// start and let go of as they go.
    Agent(AgentArgs),
    /// The demo's leaking workload (started by `leaktrace demo` inside the demo cgroup).
    #[command(name = "demo-workload", hide = true)]
    DemoWorkload,
    /// Print a shell completion script to stdout (e.g. `leaktrace completions bash > /etc/bash_completion.d/leaktrace`).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout (e.g. `leaktrace man > /usr/local/share/man/man1/leaktrace.1`).
    #[command(hide = true)]
    Man,
}

/// Writes the completion script for `shell`, generated from the clap definitions above.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "leaktrace", out);
}

/// Writes the man page, generated from the clap definitions above. A reader that stops early (`| head`) is fine.
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    match clap_mangen::Man::new(Cli::command()).render(out) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        done => done,
    }
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 366.0 * 86400.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds between 0 and one year")),
    }
}

fn user_stack_bytes(s: &str) -> Result<u32, String> {
    let max = (leak_common::USTACK_CHUNK * leak_common::USTACK_MAX_CHUNKS) as u32;
    let bytes: u32 = s.parse().map_err(|_| format!("`{s}` is not a number of bytes"))?;
    if !(leak_common::USTACK_CHUNK as u32..=max).contains(&bytes) {
        return Err(format!("must be from {} to {max} bytes", leak_common::USTACK_CHUNK));
    }
    Ok(bytes)
}

fn heap_budget(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err(format!("`{s}` is not a percentage above 0 and at most 100")),
    }
}

fn sample_bytes(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v) if v.is_power_of_two() && (2..=1 << 30).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a power of two between 2 and 1 GiB")),
    }
}

fn window_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (10.0..=86400.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a window between 10 seconds and a day")),
    }
}

fn interval_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not an interval between 0.1 and 3600 seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trace_invocation() {
        let cli = Cli::try_parse_from(["leaktrace", "--cgroup", "docker/abc", "--duration", "5", "--interval", "0.5"])
            .unwrap();
        assert_eq!(cli.cgroup.as_deref(), Some("docker/abc"));
        assert_eq!(cli.trace.duration, Some(5.0));
        assert_eq!(cli.trace.interval, 0.5);
        assert!(cli.command.is_none());
    }

    #[test]
    fn sampling_rate_reaches_the_kernel_as_a_shift() {
        let parse = |extra: &[&str]| {
            let args = ["leaktrace", "--cgroup", "x"].iter().chain(extra).copied();
            Cli::try_parse_from(args).unwrap().trace.sample_rate_shift()
        };
        assert_eq!(parse(&[]), DEFAULT_SAMPLE_BYTES.trailing_zeros());
        assert_eq!(parse(&["--sample-bytes", "65536"]), 16);
        assert_eq!(parse(&["--record-all"]), 0);
    }

    #[test]
    fn the_agent_needs_no_cgroup_and_checks_its_numbers() {
        let cli =
            Cli::try_parse_from(["leaktrace", "agent", "--select", "web-*", "--select", "db", "--listen", "9464"])
                .unwrap();
        let Some(Command::Agent(a)) = cli.command else { panic!("not the agent") };
        assert_eq!(
            (a.select.as_slice(), a.window, a.interval, a.max_sites),
            (&["web-*".to_string(), "db".into()][..], 300.0, 2.0, 100)
        );
        assert_eq!(a.load().sample_rate_shift, DEFAULT_SAMPLE_BYTES.trailing_zeros());
        for bad in [&["--window", "1"][..], &["--keep", "3"], &["--max-sites", "0"], &["--interval", "0"]] {
            let args = ["leaktrace", "agent"].iter().chain(bad).copied();
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn demo_needs_no_cgroup() {
        let cli = Cli::try_parse_from(["leaktrace", "demo", "--output", "/tmp/x"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Demo { .. })));
    }

    #[test]
    fn diff_takes_two_runs() {
        let cli = Cli::try_parse_from(["leaktrace", "diff", "a", "b", "--output", "o"]).unwrap();
        match cli.command {
            Some(Command::Diff { run_a, run_b, output }) => {
                assert_eq!((run_a, run_b, output), ("a".into(), "b".into(), Some("o".into())))
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["leaktrace", "diff", "a"]).is_err());
    }

    #[test]
    fn completions_and_man_page_come_from_the_definitions() {
        let mut bash = Vec::new();
        completions(clap_complete::Shell::Bash, &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("--cgroup") && bash.contains("--max-tracked") && bash.contains("demo"), "{bash}");
        let mut page = Vec::new();
        man(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH leaktrace"), "{}", &page[..200.min(page.len())]);
        assert!(page.contains("cgroup") && page.contains("Docker"), "{page}");
        assert!(Cli::try_parse_from(["leaktrace", "completions", "zsh"]).is_ok());
        assert!(Cli::try_parse_from(["leaktrace", "completions", "tcsh"]).is_err());
    }

    #[test]
    fn rejects_bad_numbers_and_missing_target() {
        for args in [
            &["leaktrace", "--cgroup", "x", "--duration", "-1"][..],
            &["leaktrace", "--cgroup", "x", "--duration", "nan"],
            &["leaktrace", "--cgroup", "x", "--interval", "0"],
            &["leaktrace", "--cgroup", "x", "--max-tracked", "10"],
            &["leaktrace", "--cgroup", "x", "--sample-bytes", "1000"],
            &["leaktrace", "--cgroup", "x", "--sample-bytes", "65536", "--record-all"],
            &["leaktrace"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
