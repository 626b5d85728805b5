//! `cargo xtask fuzz`, also the last step of `cargo xtask test`: runs each cargo-fuzz target of fuzz/ for a
//! bounded time. Only stable Rust is installed here, so the -Z flags cargo-fuzz passes are allowed through
//! RUSTC_BOOTSTRAP, and the targets run without a sanitizer (no ASan runtime for stable): a panic still aborts
//! and libFuzzer reports it with the input, saved under fuzz/artifacts/<target>/.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result};

use crate::{bootstrap, check, repo_root, step, target_dir};

/// Every target in fuzz/fuzz_targets; its seeds are in fuzz/seeds/<target>.
const TARGETS: &[&str] = &["memory_stat", "tracefs_format", "target_resolver"];

pub fn run(seconds_each: u64) -> Result<()> {
    let fuzz_dir = repo_root().join("fuzz");
    let cargo_fuzz = bootstrap::tools_dir().join("bin/cargo-fuzz");
    for target in TARGETS {
        // New inputs go to a scratch corpus: the seeds in the repository stay as committed.
        let corpus = tempfile::tempdir().context("cannot create a scratch corpus")?;
        step(&format!("fuzzing {target} for {seconds_each} s"));
        let started = Instant::now();
        let mut cmd = Command::new(&cargo_fuzz);
        cmd.current_dir(&fuzz_dir)
            // Unoptimised: the build takes 105 s from a fresh clone against 250 s optimised, and overflow checks
            // stay on; the seconds of fuzzing cover fewer inputs, not shallower ones.
            .args(["run", "--dev", "--sanitizer", "none", target])
            .arg(corpus.path())
            .arg(Path::new("seeds").join(target))
            // verbosity=0 keeps a CI log to the final stats (and any crash report) instead of a line per new input.
            .args([
                "--",
                &format!("-max_total_time={seconds_each}"),
                "-timeout=10",
                "-verbosity=0",
                "-print_final_stats=1",
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            // The targets need no eBPF programs; skipping them keeps the fuzz build to userspace.
            .env("LEAKTRACE_SKIP_EBPF", "1")
            .env("CARGO_TARGET_DIR", target_dir().join("fuzz"));
        check(&mut cmd)?;
        step(&format!("{target}: no crash in {:.0} s (build included)", started.elapsed().as_secs_f64()));
    }
    Ok(())
}
