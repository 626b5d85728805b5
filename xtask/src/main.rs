//! `cargo xtask`: the project's own commands. Every one first runs `bootstrap` (cheap when nothing is missing), so
//! `cargo xtask demo` and `cargo xtask test` work on a fresh Debian host.
mod bench;
mod bootstrap;
mod fuzz;
mod soak;
mod vm;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, test and demo leaktrace; installs what is missing first"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages (eBPF compiler, gcc, bpftool, docker.io, busybox-static), bpf-linker,
    /// the tracefs mount.
    Bootstrap,
    /// Build target/release/leaktrace (the eBPF programs are embedded in it).
    Build,
    /// Build, then run the whole test suite against the release binary; arguments go to `cargo test` as given
    /// (`cargo xtask test e2e -- --nocapture`). Without arguments the VM kernel matrix (`vm-test`) and a bounded fuzzing run follow.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then run the e2e leak scenarios in Debian kernels under QEMU (pure cgroup v2) and print a
    /// kernel x scenario table. Kernels are downloaded once into ~/.cache/leaktrace/vm.
    VmTest {
        /// Only the kernels whose label contains one of these (bullseye, bookworm, trixie, trixie-backports).
        kernels: Vec<String>,
    },
    /// Run each fuzz target (fuzz/) for a bounded time; `cargo xtask test` does this after the suite.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = FUZZ_SECONDS)]
        seconds: u64,
    },
    /// Build, then trace a churning cgroup for minutes (not part of CI) and print the tracer's RSS and kernel map
    /// entries over time; fails if the RSS keeps growing.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Seconds between two readings.
        #[arg(long, default_value_t = 30)]
        every: u64,
    },
    /// Build, then run `leaktrace demo` as root; extra arguments (e.g. `--output DIR`) go to it.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then measure what tracing costs churn workloads (untraced, leaktrace default and --record-all, a
    /// bpftrace script); prints markdown tables and writes bench/results.json. Needs root; takes ~10 minutes.
    Bench {
        /// Fewer and shorter runs, no profiling pass (~4 minutes).
        #[arg(long)]
        quick: bool,
        /// Only the churn workloads whose name contains this (e.g. "kernel-object"), or `agent` for the agent's
        /// rows alone: no --heap rows, and bench/results.json is left as it is.
        #[arg(long, value_name = "NAME")]
        only: Option<String>,
        /// Rounds instead of 5 (3 with --quick): more rounds narrow a ratio's spread.
        #[arg(long)]
        rounds: Option<usize>,
    },
}

/// Per fuzz target in `cargo xtask test`: three targets keep CI's fuzzing near half a minute.
const FUZZ_SECONDS: u64 = 10;

fn main() -> ExitCode {
    match run(Cli::parse_from(keep_leading_dash_dash(env::args_os().collect())).command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask test -- --nocapture` must reach `cargo test` with its `--`, but clap takes a `--` right after the
/// subcommand as its own end-of-options mark: doubling it leaves one for `cargo test`.
fn keep_leading_dash_dash(mut argv: Vec<OsString>) -> Vec<OsString> {
    if argv.get(1).is_some_and(|a| a == "test") && argv.get(2).is_some_and(|a| a == "--") {
        argv.insert(2, "--".into());
    }
    argv
}

fn run(command: Cmd) -> Result<()> {
    bootstrap::run()?;
    match command {
        Cmd::Bootstrap => Ok(()),
        Cmd::Build => build().map(drop),
        Cmd::Test { args } => {
            let bin = build()?;
            step("running the test suite (cargo test --workspace --release)");
            // The e2e tests run this binary; building it first means they never test a stale one.
            let mut cmd = cargo();
            // A filtered run (arguments given) is someone iterating on some tests: the VM matrix and fuzzing are for full runs.
            let whole_suite = args.is_empty();
            cmd.args(["test", "--workspace", "--release", "--no-fail-fast"]).args(args).env("LEAKTRACE_BIN", &bin);
            check(&mut cmd)?;
            if whole_suite {
                step("running the VM kernel matrix (cargo xtask vm-test)");
                vm::run(&bin, &[])?;
                fuzz::run(FUZZ_SECONDS)?;
            }
            Ok(())
        }
        Cmd::VmTest { kernels } => vm::run(&build()?, &kernels),
        Cmd::Bench { quick, only, rounds } => {
            let leaktrace = build()?;
            bench::run(&bench::Options { quick, only, rounds, leaktrace, out_dir: bench::repo_bench_dir() })
        }
        Cmd::Fuzz { seconds } => fuzz::run(seconds),
        Cmd::Soak { minutes, every } => soak::run(&build()?, minutes, std::time::Duration::from_secs(every)),
        Cmd::Demo { args } => {
            let bin = build()?;
            let mut cmd = if bootstrap::is_root() {
                Command::new(&bin)
            } else {
                step("the demo loads eBPF programs: running it through sudo");
                let mut sudo = Command::new("sudo");
                sudo.arg(&bin);
                sudo
            };
            cmd.arg("demo").args(args);
            check(&mut cmd)
        }
    }
}

/// Builds the release binary and returns its path.
fn build() -> Result<PathBuf> {
    let bin = target_dir().join("release/leaktrace");
    step(&format!("building {} (cargo build --release -p leak-userspace)", bin.display()));
    check(cargo().args(["build", "--release", "-p", "leak-userspace"]))?;
    Ok(bin)
}

pub(crate) fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the repository root")
}

fn target_dir() -> PathBuf {
    // cargo runs from the repository root (see `cargo()`), so a relative CARGO_TARGET_DIR is relative to it.
    repo_root().join(env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
}

/// The cargo that runs xtask (the userspace toolchain), working in the repository root.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

fn step(msg: &str) {
    println!("xtask: {msg}");
}

/// Runs `cmd` with inherited stdio and fails unless it exits successfully.
fn check(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed_on(argv: &[&str]) -> Vec<String> {
        let argv = keep_leading_dash_dash(argv.iter().map(OsString::from).collect());
        match Cli::try_parse_from(argv).unwrap().command {
            Cmd::Test { args } | Cmd::Demo { args } => args.iter().map(|a| a.to_string_lossy().into()).collect(),
            _ => panic!("not a pass-through command"),
        }
    }

    #[test]
    fn extra_arguments_reach_cargo_test_and_the_demo_verbatim() {
        for args in [
            &[][..],
            &["e2e", "--", "--nocapture"],
            &["--", "--nocapture"],
            &["--no-fail-fast", "-p", "xtask", "--", "--test-threads=1"],
        ] {
            let argv: Vec<&str> = ["x", "test"].iter().chain(args).copied().collect();
            assert_eq!(passed_on(&argv), args, "{argv:?}");
        }
        assert_eq!(passed_on(&["x", "demo", "--output", "/tmp/d", "--quiet"]), ["--output", "/tmp/d", "--quiet"]);
    }
}
