//! `cargo xtask vm-test`: the end-to-end leak scenarios on other kernels than the host's. Each Debian kernel boots
//! under QEMU (TCG: KVM hangs on these machines) with a pure cgroup v2 hierarchy (`cgroup_no_v1=all`) and an
//! initramfs holding busybox, the leaktrace binary with its shared libraries, the C workloads and a guest init
//! (vm/init.sh) that runs the scenarios and prints their reports on the serial console. The host applies the same
//! checks as the host e2e tests (leaktrace_e2e::scenarios) and prints a kernel x scenario table.
//!
//! Kernels are fetched once with apt from Debian's archive (a private apt state per suite, so the host's sources are
//! untouched) and cached in ~/.cache/leaktrace/vm/<label>/vmlinuz; only the vmlinuz is kept.
use std::{
    env, fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use leaktrace_e2e::scenarios::{self, Scenario};
use serde_json::Value;

use crate::{check, display, step};

/// A Debian kernel: the `linux-image-cloud-amd64` of these apt sources (the cloud flavour boots in ~3 s under TCG).
pub struct Kernel {
    pub label: &'static str,
    sources: &'static [&'static str],
    /// apt's target release, for kernels from backports.
    release: Option<&'static str>,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        label: "bullseye",
        sources: &[
            "deb http://deb.debian.org/debian bullseye main",
            "deb http://deb.debian.org/debian-security bullseye-security main",
        ],
        release: None,
    },
    Kernel {
        label: "bookworm",
        sources: &[
            "deb http://deb.debian.org/debian bookworm main",
            "deb http://deb.debian.org/debian-security bookworm-security main",
        ],
        release: None,
    },
    Kernel {
        label: "trixie",
        sources: &[
            "deb http://deb.debian.org/debian trixie main",
            "deb http://deb.debian.org/debian-security trixie-security main",
        ],
        release: None,
    },
    Kernel {
        label: "trixie-backports",
        sources: &[
            "deb http://deb.debian.org/debian trixie main",
            "deb http://deb.debian.org/debian trixie-backports main",
        ],
        release: Some("trixie-backports"),
    },
];

const META_PACKAGE: &str = "linux-image-cloud-amd64";
/// A whole guest run (boot, three scenarios, poweroff) takes ~40 s under TCG; this only bounds a hung guest.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
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

fn cache_dir() -> PathBuf {
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache/leaktrace/vm")
}

/// The kernel image of `kernel`, downloaded on first use.
fn fetch_kernel(kernel: &Kernel) -> Result<PathBuf> {
    let dir = cache_dir().join(kernel.label);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    step(&format!("fetching the {} kernel ({META_PACKAGE}) with apt", kernel.label));
    let apt_dir = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "debs"] {
        fs::create_dir_all(apt_dir.join(sub)).with_context(|| format!("cannot create {}", apt_dir.display()))?;
    }
    let sources = apt_dir.join("sources.list");
    fs::write(&sources, kernel.sources.join("\n") + "\n")?;
    let apt = |tool: &str| {
        let mut cmd = Command::new(tool);
        cmd.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .args(["-o", "Dir::Etc::SourceParts=/nonexistent", "-o", "APT::Sandbox::User=root"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", apt_dir.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt_dir.join("cache").display()));
        if let Some(release) = kernel.release {
            cmd.args(["-t", release]);
        }
        cmd
    };
    check(apt("apt-get").args(["-q", "update"]).stdout(Stdio::null()))?;
    let depends = apt("apt-cache").args(["depends", META_PACKAGE]).output().context("cannot run apt-cache")?;
    let package = image_package(&String::from_utf8_lossy(&depends.stdout))
        .with_context(|| format!("{META_PACKAGE} of {} depends on no linux-image package", kernel.label))?;
    // Newer kernels (7.x) keep the image in a `linux-binary-*` package that the image package depends on.
    let image = match extract_image(&apt("apt-get"), &package, &apt_dir)? {
        Ok(image) => image,
        Err(depends) => {
            let binary = binary_package(&depends)
                .with_context(|| format!("{package} holds no kernel image and depends on no linux-binary-*"))?;
            extract_image(&apt("apt-get"), &binary, &apt_dir)?
                .map_err(|_| anyhow::anyhow!("neither {package} nor {binary} holds a kernel image"))?
        }
    };
    fs::copy(&image, dir.join("vmlinuz.tmp"))?;
    fs::rename(dir.join("vmlinuz.tmp"), &vmlinuz)?;
    fs::remove_dir_all(&apt_dir)?;
    Ok(vmlinuz)
}

/// Downloads `package` and extracts it; the path of its kernel image, or else its Depends field.
fn extract_image(apt_get: &Command, package: &str, apt_dir: &Path) -> Result<Result<PathBuf, String>> {
    let debs = apt_dir.join("debs").join(package);
    fs::create_dir_all(&debs)?;
    let mut download = Command::new(apt_get.get_program());
    download.args(apt_get.get_args()).args(["-q", "download", package]).current_dir(&debs).stdout(Stdio::null());
    check(&mut download)?;
    let deb = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let extracted = apt_dir.join("x").join(package);
    fs::create_dir_all(&extracted)?;
    check(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    if let Some(image) = find_image(&extracted) {
        return Ok(Ok(image));
    }
    let depends = Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends").output()?;
    Ok(Err(String::from_utf8_lossy(&depends.stdout).into_owned()))
}

/// boot/vmlinuz-<release> (up to 6.x packages) or usr/lib/modules/<release>/vmlinuz (7.x).
fn find_image(extracted: &Path) -> Option<PathBuf> {
    let entries = |dir: PathBuf| fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
    entries(extracted.join("boot"))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .or_else(|| entries(extracted.join("usr/lib/modules")).map(|d| d.join("vmlinuz")).find(|p| p.is_file()))
}

/// The `linux-binary-*` package in a Depends field.
fn binary_package(depends: &str) -> Option<String> {
    depends
        .split(',')
        .filter_map(|d| d.split_whitespace().next())
        .find(|p| p.starts_with("linux-binary-"))
        .map(String::from)
}

/// The versioned image package in `apt-cache depends` output ("  Depends: linux-image-6.1.0-50-cloud-amd64").
fn image_package(depends: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.contains('<'))
        .map(String::from)
}

/// An uncompressed cpio initramfs (decompressing under TCG costs seconds) with everything the guest runs.
fn build_initramfs(leaktrace: &Path, work: &Path) -> Result<PathBuf> {
    let stage = work.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    for dir in ["bin", "opt/workloads", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(stage.join(dir))?;
    }
    copy_executable(Path::new("/bin/busybox"), &stage.join("bin/busybox"))?;
    fs::write(stage.join("init"), include_str!("vm/init.sh"))?;
    set_executable(&stage.join("init"))?;
    // Stripped: 45 MB of debug info would only slow the guest's boot; symbols of the workloads stay.
    check(Command::new("strip").arg("-o").arg(stage.join("opt/leaktrace")).arg(leaktrace))?;
    let mut executables = vec![leaktrace.to_path_buf()];
    let mut lines = String::new();
    for s in scenarios::ALL {
        let exe = leaktrace_e2e::build_workload(s.workload)?;
        copy_executable(&exe, &stage.join("opt/workloads").join(s.workload))?;
        executables.push(exe);
        lines += &format!("{} {} {} {} {}\n", s.name, s.workload, s.limit_bytes, s.seconds, s.args.join(" "));
    }
    fs::write(stage.join("scenarios"), lines)?;
    for lib in shared_libraries(&executables)? {
        let into = stage.join(lib.strip_prefix("/").unwrap_or(&lib));
        fs::create_dir_all(into.parent().expect("library paths are absolute"))?;
        fs::copy(&lib, &into).with_context(|| format!("cannot copy {}", lib.display()))?;
    }
    let image = work.join("initramfs.cpio");
    let out = fs::File::create(&image)?;
    let cpio = Command::new("sh")
        .args(["-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet"])
        .current_dir(&stage)
        .stdout(out)
        .status()
        .context("cannot run cpio (cargo xtask bootstrap installs it)")?;
    ensure!(cpio.success(), "cpio failed ({cpio})");
    Ok(image)
}

fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("cannot copy {} (is it installed?)", from.display()))?;
    set_executable(to)
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Every shared library (and the dynamic loader) the executables load, from `ldd`.
fn shared_libraries(executables: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for exe in executables {
        let out = Command::new("ldd").arg(exe).output().context("cannot run ldd")?;
        ensure!(out.status.success(), "ldd {} failed", exe.display());
        for lib in ldd_paths(&String::from_utf8_lossy(&out.stdout)) {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    Ok(libs)
}

/// The absolute paths in ldd output: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader line.
fn ldd_paths(ldd: &str) -> Vec<PathBuf> {
    ldd.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/'))).map(PathBuf::from).collect()
}

/// Boots the kernel and returns its serial console output once the guest powers off.
fn boot(label: &str, vmlinuz: &Path, initramfs: &Path) -> Result<String> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1024M", "-smp", "1", "-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // loglevel=1: kernel messages (the OOM killer's) must not land inside a report printed on the console.
        .args(["-append", "console=ttyS0 cgroup_no_v1=all panic=-1 quiet loglevel=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run `{}` (qemu-system-x86)", display(&cmd)))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let _ = tx.send(String::from_utf8_lossy(&line).trim_end_matches('\r').to_string());
        }
    });
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut console = String::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if line.starts_with("LT-BEGIN") || line.starts_with("LT-KERNEL") {
                    println!("  {label}: {line}");
                    let _ = std::io::stdout().flush();
                }
                console.push_str(&line);
                console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the guest did not power off within {} s; its console:\n{console}", BOOT_TIMEOUT.as_secs());
            }
        }
    }
    let _ = reader.join();
    let status = child.wait()?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("qemu failed ({status}): {err}\n{console}");
    }
    Ok(console)
}

/// What the guest printed.
#[derive(Clone, Debug, Default)]
struct Guest {
    release: String,
    scenarios: Vec<GuestScenario>,
}

#[derive(Clone, Debug, Default)]
struct GuestScenario {
    name: String,
    leaktrace_exit: Option<i32>,
    workload_alive: bool,
    workload_exit: Option<i32>,
    workload_pid: Option<u64>,
    oom_kills: Option<u64>,
    seconds: Option<f64>,
    log: Vec<String>,
    report: Option<String>,
}

fn parse_console(console: &str) -> Guest {
    let mut guest = Guest::default();
    let mut in_report: Option<String> = None;
    for line in console.lines() {
        // The first line may follow the firmware's terminal escapes.
        let line = line.find("LT-KERNEL").map_or(line, |at| &line[at..]);
        if let Some(report) = in_report.as_mut() {
            if line == "LT-REPORT-END" {
                if let Some(s) = guest.scenarios.last_mut() {
                    s.report = in_report.take();
                }
                in_report = None;
            } else {
                report.push_str(line);
                report.push('\n');
            }
            continue;
        }
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        if tag == "LT-KERNEL" {
            guest.release = rest.to_string();
            continue;
        }
        if tag == "LT-BEGIN" {
            guest.scenarios.push(GuestScenario { name: rest.to_string(), ..Default::default() });
            continue;
        }
        let Some(s) = guest.scenarios.last_mut() else { continue };
        match tag {
            "LT-LEAKTRACE-EXIT" => s.leaktrace_exit = rest.parse().ok(),
            "LT-WORKLOAD-ALIVE" => s.workload_alive = rest == "1",
            "LT-WORKLOAD-EXIT" => s.workload_exit = rest.parse().ok(),
            "LT-WORKLOAD-PID" => s.workload_pid = rest.parse().ok(),
            "LT-SECONDS" => s.seconds = rest.parse().ok(),
            "LT-EVENTS" => s.oom_kills = rest.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()),
            "LT-LOG" => s.log.push(rest.to_string()),
            "LT-REPORT-BEGIN" => in_report = Some(String::new()),
            _ => {}
        }
    }
    guest
}

/// One scenario's verdict in one guest.
#[derive(Clone, Debug)]
struct Judged {
    scenario: &'static str,
    coverage: Option<f64>,
    seconds: Option<f64>,
    modes: String,
    error: Option<String>,
}

fn judge(guest: &Guest) -> Vec<Judged> {
    scenarios::ALL
        .iter()
        .map(|scenario| {
            let ran = guest.scenarios.iter().find(|s| s.name == scenario.name);
            let report = ran.and_then(|s| s.report.as_deref()).and_then(|r| serde_json::from_str::<Value>(r).ok());
            let modes = report
                .as_ref()
                .and_then(|r| r["kernel"]["modes"].as_array().cloned())
                .map(|m| m.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            let verdict = match ran {
                None => Err(anyhow::anyhow!("did not run")),
                Some(ran) => judge_one(scenario, ran, report.as_ref()),
            };
            if let (Err(e), Some(ran)) = (&verdict, ran) {
                eprintln!("{} on {}: {e:#}\nleaktrace said:\n{}", scenario.name, guest.release, ran.log.join("\n"));
            }
            Judged {
                scenario: scenario.name,
                coverage: verdict.as_ref().ok().copied().flatten(),
                seconds: ran.and_then(|s| s.seconds),
                modes,
                error: verdict.err().map(|e| first_line(&format!("{e:#}"))),
            }
        })
        .collect()
}

fn judge_one(scenario: &Scenario, ran: &GuestScenario, report: Option<&Value>) -> Result<Option<f64>> {
    ensure!(ran.leaktrace_exit == Some(0), "leaktrace exited with {:?}", ran.leaktrace_exit);
    let report = report.context("no readable report.json")?;
    let coverage = (scenario.check)(report)?;
    if scenario.expect_oom_kill {
        ensure!(!ran.workload_alive, "the workload outlived the trace: no OOM kill");
        ensure!(ran.workload_exit == Some(137), "the workload ended with status {:?}, not SIGKILL", ran.workload_exit);
        ensure!(ran.oom_kills.is_some_and(|n| n >= 1), "memory.events counts {:?} OOM kills", ran.oom_kills);
        let killed = scenarios::first_oom_pid(report);
        ensure!(killed == ran.workload_pid, "oom_kills[0] is pid {killed:?}, not the workload {:?}", ran.workload_pid);
    }
    Ok(coverage)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

struct Row {
    kernel: &'static str,
    guest: Guest,
    result: Judged,
}

fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "\n{:<17} {:<26} {:<10} {:<6} {:>8} {:>6}  {}\n",
        "kernel", "release", "scenario", "result", "coverage", "secs", "modes / why it failed"
    );
    for row in rows {
        let r = &row.result;
        out += &format!(
            "{:<17} {:<26} {:<10} {:<6} {:>8} {:>6}  {}\n",
            row.kernel,
            row.guest.release,
            r.scenario,
            if r.error.is_none() { "pass" } else { "FAIL" },
            r.coverage.map_or("-".into(), |c| format!("{:.0}%", c * 100.0)),
            r.seconds.map_or("-".into(), |s| format!("{s:.1}")),
            r.error.as_deref().unwrap_or(&r.modes),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_versioned_image_package() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-50-cloud-amd64\n  Depends: <foo>\n";
        assert_eq!(image_package(out).as_deref(), Some("linux-image-6.1.0-50-cloud-amd64"));
        assert_eq!(image_package("linux-image-cloud-amd64\n"), None);
        let depends = "dracut | initramfs-tools (>= 0.120), linux-base-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), \
                       linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)";
        assert_eq!(binary_package(depends).as_deref(), Some("linux-binary-7.3.4+deb13-cloud-amd64"));
        assert_eq!(binary_package("linux-base"), None);
    }

    #[test]
    fn finds_the_image_in_either_package_layout() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(find_image(tmp.path()), None);
        let modules = tmp.path().join("usr/lib/modules/7.3.4+deb13-cloud-amd64");
        fs::create_dir_all(&modules).unwrap();
        fs::write(modules.join("vmlinuz"), b"").unwrap();
        assert_eq!(find_image(tmp.path()), Some(modules.join("vmlinuz")));
        fs::create_dir_all(tmp.path().join("boot")).unwrap();
        fs::write(tmp.path().join("boot/vmlinuz-6.1.0-50-cloud-amd64"), b"").unwrap();
        assert_eq!(find_image(tmp.path()), Some(tmp.path().join("boot/vmlinuz-6.1.0-50-cloud-amd64")));
    }

    #[test]
    fn reads_library_paths_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(ldd),
            [PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
    }

    #[test]
    fn parses_the_guest_console() {
        let console = "noise\n\x1bc\x1b[?7lLT-KERNEL 6.1.0-50-cloud-amd64\nLT-BEGIN oom-kill\nLT-LEAKTRACE-EXIT 0\n\
            LT-WORKLOAD-ALIVE 0\nLT-WORKLOAD-EXIT 137\nLT-WORKLOAD-PID 197\nLT-SECONDS 12.5\nLT-EVENTS oom_kill 1\n\
            LT-LOG leaktrace: attached\nLT-REPORT-BEGIN\n{\"a\":\n 1}\nLT-REPORT-END\nLT-END oom-kill\nLT-DONE\n";
        let guest = parse_console(console);
        assert_eq!(guest.release, "6.1.0-50-cloud-amd64");
        let s = &guest.scenarios[0];
        assert_eq!(s.name, "oom-kill");
        assert_eq!((s.leaktrace_exit, s.workload_alive, s.workload_exit), (Some(0), false, Some(137)));
        assert_eq!((s.workload_pid, s.oom_kills, s.seconds), (Some(197), Some(1), Some(12.5)));
        assert_eq!(s.log, ["leaktrace: attached"]);
        assert_eq!(serde_json::from_str::<Value>(s.report.as_deref().unwrap()).unwrap()["a"], 1);
    }

    #[test]
    fn a_scenario_without_a_report_fails_and_says_why() {
        let guest = Guest {
            release: "x".into(),
            scenarios: vec![GuestScenario { name: "heap-leak".into(), leaktrace_exit: Some(1), ..Default::default() }],
        };
        let judged = judge(&guest);
        assert_eq!(judged.len(), scenarios::ALL.len());
        assert!(judged[0].error.as_deref().unwrap().contains("exited with Some(1)"), "{judged:?}");
        assert_eq!(judged[1].error.as_deref(), Some("did not run"));
    }
}
