use std::process::ExitCode;

use clap::Parser;
use leaktrace::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LEAKTRACE_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    match leaktrace::session::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error chain holds: scripts read the first line of stderr.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
