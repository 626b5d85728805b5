//! `cargo xtask vm-test`: the end-to-end leak scenarios on other kernels than the host's. Each Debian kernel boots
//! under QEMU (TCG: KVM hangs on these machines) with a pure cgroup v2 hierarchy (`cgroup_no_v1=all`) and an
//! initramfs holding busybox, the leaktrace binary with its shared libraries, the C workloads and a guest init
//! (vm/init.sh) that runs the scenarios and prints their reports on the serial console. The host applies the same
//! checks as the host e2e tests (leaktrace_e2e::scenarios) and prints a kernel x scenario table.
mod guest;
mod kernels;
mod results;

use std::{path::Path, thread, time::Instant};

use anyhow::{ensure, Result};
use leaktrace_e2e::scenarios;

use crate::step;
use guest::{boot, build_initramfs};
use kernels::{fetch_kernel, Kernel, KERNELS};
use results::{judge, parse_console, table, Row};

const PARALLEL_GUESTS: usize = 2;

/// Boots every kernel whose label contains one of `only` (all when empty), runs the scenarios in each and prints the
/// table; fails if any scenario failed anywhere.
pub fn run(leaktrace: &Path, only: &[String]) -> Result<()> {
    let kernels: Vec<&Kernel> =
        KERNELS.iter().filter(|k| only.is_empty() || only.iter().any(|o| k.label.contains(o.as_str()))).collect();
    ensure!(!kernels.is_empty(), "no kernel matches {only:?}; known: {}", labels());
    let work = crate::target_dir().join("vm");
    let initramfs = build_initramfs(leaktrace, &work)?;
    let started = Instant::now();
    // Two guests at a time: each TCG guest keeps one host core busy, and the machines have two.
    let outcomes: Vec<(&Kernel, Result<String>)> = thread::scope(|scope| {
        kernels
            .chunks(PARALLEL_GUESTS)
            .flat_map(|chunk| {
                let running: Vec<_> = chunk.iter().map(|&k| (k, scope.spawn(|| run_guest(k, &initramfs)))).collect();
                running.into_iter().map(|(k, h)| (k, h.join().expect("guest threads do not panic"))).collect::<Vec<_>>()
            })
            .collect()
    });
    let mut rows = Vec::new();
    let mut failed = 0;
    for (kernel, outcome) in outcomes {
        match outcome {
            Ok(console) => {
                let guest = parse_console(&console);
                for result in judge(&guest) {
                    failed += usize::from(result.error.is_some());
                    rows.push(Row { kernel: kernel.label, guest: guest.clone(), result });
                }
                if guest.scenarios.len() < scenarios::ALL.len() {
                    failed += 1;
                    eprintln!("{}: the guest did not finish; its console:\n{console}", kernel.label);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e:#}", kernel.label);
            }
        }
    }
    step(&format!("the VM matrix took {:.0} s", started.elapsed().as_secs_f64()));
    print!("{}", table(&rows));
    ensure!(failed == 0, "{failed} VM scenario(s) failed (details above)");
    Ok(())
}

/// Fetches (first time only) and boots one kernel; its console output.
fn run_guest(kernel: &Kernel, initramfs: &Path) -> Result<String> {
    let started = Instant::now();
    let vmlinuz = fetch_kernel(kernel)?;
    step(&format!("booting {} ({}) under QEMU", kernel.label, vmlinuz.display()));
    let console = boot(kernel.label, &vmlinuz, initramfs);
    step(&format!("{} took {:.0} s", kernel.label, started.elapsed().as_secs_f64()));
    console
}

fn labels() -> String {
    KERNELS.iter().map(|k| k.label).collect::<Vec<_>>().join(", ")
}
