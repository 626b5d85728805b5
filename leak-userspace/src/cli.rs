//! The command line (shared/CONTRACT.md). Validation lives here so bad input fails before anything is loaded.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "Trace a cgroup's memory growth to the call sites that allocate it",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// The cgroup to trace: an absolute cgroup directory, a path relative to the memory hierarchy's root, or a
    /// numeric cgroup id (the directory's inode number).
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

    /// How many outstanding allocations the kernel side can track at once (pages and slab objects).
    #[arg(long, value_name = "N", default_value_t = crate::probes::DEFAULT_LIVE_ENTRIES, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_tracked: u32,

    /// Stack traces the kernel side can keep (kernel and user stacks together); a test knob for a full stack map.
    #[arg(long, value_name = "N", hide = true, default_value_t = crate::probes::DEFAULT_STACK_ENTRIES, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub stack_entries: u32,

    /// Print only errors and the final summary.
    #[arg(long)]
    pub quiet: bool,
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
    /// The demo's leaking workload (started by `leaktrace demo` inside the demo cgroup).
    #[command(name = "demo-workload", hide = true)]
    DemoWorkload,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 366.0 * 86400.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds between 0 and one year")),
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
    fn demo_needs_no_cgroup() {
        let cli = Cli::try_parse_from(["leaktrace", "demo", "--output", "/tmp/x"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Demo { .. })));
    }

    #[test]
    fn rejects_bad_numbers_and_missing_target() {
        for args in [
            &["leaktrace", "--cgroup", "x", "--duration", "-1"][..],
            &["leaktrace", "--cgroup", "x", "--duration", "nan"],
            &["leaktrace", "--cgroup", "x", "--interval", "0"],
            &["leaktrace", "--cgroup", "x", "--max-tracked", "10"],
            &["leaktrace"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
