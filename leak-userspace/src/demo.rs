//! `leaktrace demo`: a leaking workload in a cgroup of its own with a small limit, traced through its OOM kill.
//! It shows what leaktrace reports without needing a real incident, and doubles as a smoke test on a new host.
use std::{
    fs,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    cgroup::{CgroupLayout, CgroupVersion, Target},
    cli::TraceArgs,
    export::human_bytes,
    report::Report,
    session,
    sites::app_frame,
};

/// Small enough that the workload reaches it within seconds.
const DEMO_LIMIT_BYTES: u64 = 64 << 20;
/// The workload's leak rate.
const CHUNK_BYTES: usize = 1 << 20;
const CHUNKS_PER_SECOND: u64 = 8;

pub fn run(output: Option<PathBuf>, quiet: bool) -> Result<()> {
    session::require_root()?;
    let layout = CgroupLayout::detect()?;
    let cgroup = DemoCgroup::create(&layout)?;
    let target = Target::from_dir(&cgroup.path, layout.version)?;
    let args = TraceArgs {
        duration: Some(40.0),
        output,
        interval: 0.5,
        top: 10,
        max_tracked: None,
        stack_entries: crate::probes::DEFAULT_STACK_ENTRIES,
        quiet,
        sample_bytes: crate::cli::DEFAULT_SAMPLE_BYTES,
        record_all: false,
        user_stack_bytes: crate::cli::DEFAULT_USER_STACK_BYTES,
        heap: false,
        heap_budget: crate::cli::DEFAULT_HEAP_BUDGET,
        jvm_perfmap: false,
        node_heap: false,
        jvm_heap: false,
        listen: None,
    };
    let mut child: Option<Child> = None;
    let cgroup_path = cgroup.path.clone();
    let outcome = session::trace(
        target,
        &args,
        session::Hooks {
            on_attached: Some(Box::new(|| {
                child = Some(spawn_workload(&cgroup_path)?);
                Ok(())
            })),
            stop_after_oom: true,
        },
    );
    // Reaped before any kill of ours, so SIGKILL below means the OOM killer's.
    let status = child.map(|mut c| match c.try_wait() {
        Ok(Some(status)) => Ok(status),
        _ => {
            let _ = c.kill();
            c.wait().map(|_| std::process::ExitStatus::default())
        }
    });
    let removed = cgroup.path.display().to_string();
    drop(cgroup);
    let dir = outcome?;
    let killed = matches!(status, Some(Ok(s)) if s.signal() == Some(libc::SIGKILL));
    let report: Option<Report> = fs::read(dir.join("report.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    eprintln!("{}", end_message(&dir, report.as_ref(), killed, &removed));
    Ok(())
}

/// What the demo showed and where to look, from the report it wrote (not from what it was meant to show).
fn end_message(dir: &Path, report: Option<&Report>, killed: bool, removed: &str) -> String {
    let mut lines = vec![String::from("leaktrace demo: done.")];
    match report.and_then(|r| r.oom_kills.first()) {
        Some(kill) => {
            let held = kill.sites_before_kill.first().map(|site| {
                let func = app_frame(site).map_or("an unnamed function", |f| f.label());
                format!("; just before, {func} held {}", human_bytes(site.outstanding_bytes))
            });
            lines.push(format!(
                "  The workload leaked until the {} limit OOM-killed it at t={:.1}s{}{}.",
                human_bytes(DEMO_LIMIT_BYTES as i64),
                kill.t,
                if killed { " (SIGKILL, exit 137, as a leaking container would be)" } else { "" },
                held.unwrap_or_default()
            ));
        }
        None => lines.push("  The workload was not OOM-killed while traced; the report shows its growth.".into()),
    }
    let mut files: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    files.sort();
    lines.push(format!(
        "  Open {}/report.html in a browser; in report.json, oom_kills[0].sites_before_kill is the evidence.",
        dir.display()
    ));
    lines.push(format!("  All outputs in {}: {}.", dir.display(), files.join(", ")));
    lines.push(format!("  The demo cgroup {removed} was removed."));
    lines.push("  Next: sudo leaktrace --cgroup <container name, id or cgroup> on a real workload.".into());
    lines.join("\n")
}

fn spawn_workload(cgroup: &Path) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find the leaktrace executable to start the demo workload")?;
    let procs = cgroup.join("cgroup.procs");
    let mut cmd = Command::new(exe);
    cmd.arg("demo-workload");
    // SAFETY: the closure only writes to a file, which is async-signal-safe enough for a fresh child.
    unsafe {
        cmd.pre_exec(move || fs::write(&procs, b"0"));
    }
    let child = cmd.spawn().context("cannot start the demo workload")?;
    // Wait for the exec to finish: mappings read mid-exec would not symbolize the workload's stacks.
    let cmdline = format!("/proc/{}/cmdline", child.id());
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !fs::read(&cmdline).is_ok_and(|c| c.ends_with(b"demo-workload\0")) {
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(child)
}

/// The demo workload: an unbounded cache, the most common heap leak. Runs until the memcg's OOM killer stops it.
pub fn workload() -> Result<()> {
    let mut cache: Vec<Box<[u8]>> = Vec::new();
    let start = Instant::now();
    loop {
        demo_leak_cache_entries(&mut cache);
        let due = Duration::from_secs_f64(cache.len() as f64 / CHUNKS_PER_SECOND as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Never inlined, and it touches the memory itself, so the page faults (and the leak) carry this name.
#[inline(never)]
pub fn demo_leak_cache_entries(cache: &mut Vec<Box<[u8]>>) {
    let mut entry = vec![0u8; CHUNK_BYTES].into_boxed_slice();
    for i in (0..entry.len()).step_by(4096) {
        // Volatile: the write must happen here (a page fault in this function), not be folded away.
        unsafe { std::ptr::write_volatile(&mut entry[i], (i & 0xff) as u8 | 1) };
    }
    cache.push(entry);
}

/// The demo's own memcg, removed on drop (after killing whatever still runs in it).
struct DemoCgroup {
    path: PathBuf,
}

impl DemoCgroup {
    fn create(layout: &CgroupLayout) -> Result<Self> {
        let path = layout.memory_root.join(format!("leaktrace-demo-{}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("cannot create the demo cgroup {}", path.display()))?;
        let cg = DemoCgroup { path };
        let limit_file = match layout.version {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        };
        fs::write(cg.path.join(limit_file), DEMO_LIMIT_BYTES.to_string())
            .with_context(|| format!("cannot set {limit_file} of {}", cg.path.display()))?;
        Ok(cg)
    }
}

impl Drop for DemoCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let pids = crate::cgroup::member_pids(&self.path);
            for pid in &pids {
                // SAFETY: plain syscall; the pids are the demo's own workload.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
            if pids.is_empty() && fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("leaktrace demo: could not remove {}; remove it with rmdir", self.path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn end_message_tells_what_happened_and_where_to_look() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("report.json"), b"{}").unwrap();
        fs::write(dir.path().join("stacks.folded"), b"").unwrap();
        fs::write(dir.path().join(".tmp"), b"").unwrap();
        let text = end_message(dir.path(), Some(&sample_report()), true, "/sys/fs/cgroup/memory/leaktrace-demo-1");
        assert!(text.contains("OOM-killed it at t=9.5s (SIGKILL, exit 137"), "{text}");
        assert!(text.contains("just before, grow_cache held 64.0 MiB"), "{text}");
        assert!(text.contains(": report.json, stacks.folded.\n"), "{text}");
        assert!(text.contains("leaktrace-demo-1 was removed"), "{text}");
        let text = end_message(dir.path(), None, false, "x");
        assert!(text.contains("was not OOM-killed"), "{text}");
    }
}
