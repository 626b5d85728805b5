//! Test support for tests that use the real host: skipping with a reason, and memcgs of our own that are removed
//! afterwards.
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::CgroupLayout;

/// Whether a test needing something from the host can run. If not, it is skipped with a printed reason, except
/// with `CI=true`, where a missing host facility fails the test.
pub(crate) fn host_has(available: bool, reason: &str) -> bool {
    if available {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason} (CI=true: host tests may not be skipped)");
    eprintln!("skipped: {reason}");
    false
}

/// A memcg created for one test under the host's memory hierarchy; dropping it kills its member processes and
/// removes it with all subdirectories.
pub(crate) struct TestMemcg {
    pub path: PathBuf,
    pub layout: CgroupLayout,
    members: Vec<Child>,
}

impl TestMemcg {
    /// `None` when the host cannot give us one (not root, no memory hierarchy): the test is then skipped.
    pub fn create(tag: &str) -> Option<Self> {
        let root = unsafe { libc::geteuid() } == 0;
        if !host_has(root, "needs root to create a memcg") {
            return None;
        }
        let layout = CgroupLayout::detect();
        if !host_has(layout.is_ok(), &format!("no memory cgroup hierarchy: {:?}", layout.as_ref().err())) {
            return None;
        }
        let layout = layout.unwrap();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = layout.memory_root.join(format!("leaktrace-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Some(Self { path, layout, members: Vec::new() })
    }

    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// Starts `sh -c script` inside `dir` and returns its pid. The script starts only once the process is in the
    /// cgroup, so everything it allocates is charged there.
    pub fn spawn_member(&mut self, dir: &Path, script: &str) -> u32 {
        let mut child = Command::new("sh")
            .args(["-c", &format!("read go; {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        let moved = std::fs::write(dir.join("cgroup.procs"), pid.to_string());
        let started = child.stdin.take().map(|mut s| s.write_all(b"go\n"));
        self.members.push(child);
        moved.unwrap_or_else(|e| panic!("move {pid} into {}: {e}", dir.display()));
        started.expect("stdin").expect("start member");
        pid
    }
}

impl Drop for TestMemcg {
    fn drop(&mut self) {
        // Everything in the subtree was started by this test (the scripts' own children included): kill it all,
        // until the kernel shows no member left.
        for _ in 0..100 {
            let pids = super::member_pids(&self.path);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            for child in &mut self.members {
                let _ = child.try_wait();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for child in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Children first; a memcg can linger for a moment after its last task exits, so retry briefly.
        let mut dirs = Vec::new();
        super::walk::walk::<()>(&self.path, |p, _| {
            dirs.push(p.to_path_buf());
            ControlFlow::Continue(())
        });
        for dir in dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
