//! One guest: the initramfs it boots (busybox, the leaktrace binary with its shared libraries, the C workloads, the
//! scenario list and vm/init.sh as PID 1) and the QEMU run that returns its serial console.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use leaktrace_e2e::scenarios;

use crate::{check, display};

/// A whole guest run (boot, the scenarios, poweroff) takes 1.5-2.5 min; this only bounds a hung guest.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// An uncompressed cpio initramfs (decompressing under TCG costs seconds) with everything the guest runs.
pub fn build_initramfs(leaktrace: &Path, work: &Path) -> Result<PathBuf> {
    let stage = work.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    for dir in ["bin", "opt/workloads", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(stage.join(dir))?;
    }
    copy_executable(Path::new("/bin/busybox"), &stage.join("bin/busybox"))?;
    fs::write(stage.join("init"), include_str!("init.sh"))?;
    set_executable(&stage.join("init"))?;
    // Stripped: 45 MB of debug info would only slow the guest's boot; symbols of the workloads stay.
    check(Command::new("strip").arg("-o").arg(stage.join("opt/leaktrace")).arg(leaktrace))?;
    let mut executables = vec![leaktrace.to_path_buf()];
    let mut lines = String::new();
    for s in scenarios::ALL {
        let exe = leaktrace_e2e::build_workload(s.workload)?;
        copy_executable(&exe, &stage.join("opt/workloads").join(s.workload))?;
        executables.push(exe);
        let rate = leaktrace_e2e::SCENARIO_SAMPLE_BYTES;
        // More leaktrace arguments as one comma-separated field, `-` for none.
        let flags = if s.leaktrace_args.is_empty() { "-".to_string() } else { s.leaktrace_args.join(",") };
        lines +=
            &format!("{} {} {} {} {rate} {flags} {}\n", s.name, s.workload, s.limit_bytes, s.seconds, s.args.join(" "));
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
pub fn boot(label: &str, vmlinuz: &Path, initramfs: &Path) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_library_paths_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(ldd),
            [PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
    }
}
