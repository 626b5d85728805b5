use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use leaktrace::{
    cgroup::{self, CgroupLayout},
    cli::{Cli, Command},
    demo, export,
    session::{trace, Hooks},
};

fn main() -> ExitCode {
    // A bug must still end in one readable line (the outputs written so far stay; the kernel side detaches as the
    // process exits).
    std::panic::set_hook(Box::new(|info| {
        let what = info.to_string().replace('\n', " ");
        eprintln!("error: internal error: {what} (please report it with the command line)");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first line is already "error: ..."; a list of what is missing follows it, one indented line
            // each, then the usage block, which is for --help.
            let text = e.render().to_string();
            let mut lines = text.lines();
            let first = lines.next().unwrap_or("error: bad arguments");
            let listed: Vec<&str> = lines.take_while(|l| l.starts_with("  ")).map(str::trim).collect();
            match listed.is_empty() {
                true => eprintln!("{first} (see leaktrace --help)"),
                false => eprintln!("{first} {} (see leaktrace --help)", listed.join(", ")),
            }
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LEAKTRACE_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error chain holds: scripts read the first line of stderr.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The command the user asked for.
fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Demo { output, quiet }) => demo::run(output, quiet),
        Some(Command::Agent(args)) => leaktrace::agent::run(&args),
        Some(Command::DemoWorkload) => demo::workload(),
        Some(Command::Diff { run_a, run_b, output }) => export::diff::run(&run_a, &run_b, output.as_deref()),
        Some(Command::Completions { shell }) => {
            leaktrace::cli::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Some(Command::Man) => leaktrace::cli::man(&mut std::io::stdout()).context("cannot write the man page"),
        None => {
            let spec = cli.cgroup.as_deref().unwrap_or_default();
            let layout = CgroupLayout::detect()?;
            let target = cgroup::resolve(spec, &layout)?;
            trace(target, &cli.trace, Hooks::default()).map(|_| ())
        }
    }
}
