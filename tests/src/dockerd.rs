//! A dockerd of a test's own, on a socket in a temp dir (no registry: images are imported from a layer tar of
//! busybox and static binaries), and the static workloads its images run.
use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{describe, image, stop_daemon, Leaktrace};

/// A dockerd of this test's own: its socket, data and exec roots live in a temp dir.
pub struct Dockerd {
    dir: tempfile::TempDir,
    daemon: Child,
    /// The `docker` parent cgroups (one per hierarchy) that did not exist before: this daemon made them, they go too.
    made_parent_cgroups: Vec<PathBuf>,
}

impl Dockerd {
    pub fn start() -> Result<Dockerd> {
        let dir = tempfile::Builder::new().prefix("lt-dockerd-").tempdir()?;
        let made_parent_cgroups = docker_parent_cgroups().into_iter().filter(|p| !p.exists()).collect();
        let log = fs::File::create(dir.path().join("dockerd.log"))?;
        let daemon = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", dir.path().join("docker.sock").display()))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start dockerd (cargo xtask bootstrap installs docker.io)")?;
        let mut d = Dockerd { dir, daemon, made_parent_cgroups };
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.docker(&["version"]).is_err() {
            if Instant::now() > deadline || d.daemon.try_wait()?.is_some() {
                bail!("dockerd did not come up: {}", d.log());
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(d)
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    pub fn docker<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = Command::new("docker").arg("-H").arg(self.host()).args(args).output().context("cannot run docker")?;
        ensure!(
            out.status.success(),
            "docker {:?}: {}",
            args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            describe(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts leaktrace with `args` against this daemon, writing into `out_dir`.
    pub fn leaktrace(&self, args: &[&str], out_dir: &Path) -> Result<Leaktrace> {
        let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        all.extend([OsStr::new("--output"), out_dir.as_os_str()]);
        let host = self.host();
        Leaktrace::spawn_with_env(&all, &[("DOCKER_HOST", OsStr::new(&host))])
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Imports an image holding busybox and `exe` as /bin/<its name>.
    pub fn import_image(&self, tag: &str, exe: &Path) -> Result<()> {
        let name = exe.file_name().context("no file name")?.to_string_lossy();
        self.import_image_with(tag, &[(exe.to_path_buf(), format!("bin/{name}"))])
    }

    /// Imports an image holding busybox and `files` (host path, path in the image).
    pub fn import_image_with(&self, tag: &str, files: &[(PathBuf, String)]) -> Result<()> {
        let layer = image::layer(self.dir.path(), files)?;
        self.docker(&[OsStr::new("import"), layer.as_os_str(), OsStr::new(tag)])?;
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        stop_daemon(&mut self.daemon, self.dir.path());
        for parent in &self.made_parent_cgroups {
            // Empty once the containers are gone; a cgroup that is not empty is not removed.
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Where Docker's cgroupfs driver puts its `docker` parent: in every hierarchy (v1 controllers and cgroup2).
fn docker_parent_cgroups() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = fs::read_dir(root).into_iter().flatten().flatten();
    // Symlinks (cpu -> cpu,cpuacct) name a hierarchy twice.
    let dirs = hierarchies.filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path().join("docker"));
    std::iter::once(root.join("docker")).chain(dirs).collect()
}

/// oom_leak built static, so it runs in an image that has no libc.
pub fn static_leaker(dir: &Path) -> Result<PathBuf> {
    static_workload(dir, "oom_leak", &["-O1", "-g", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"])
}

/// tests/workloads/<name>.c built static with `flags`.
pub fn static_workload(dir: &Path, name: &str, flags: &[&str]) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("workloads/{name}.c"));
    let exe = dir.join(name);
    // `-static-pie` in `flags` links static and position-independent, as `-static` alone does not.
    let link = if flags.contains(&"-static-pie") { None } else { Some("-static") };
    let out = Command::new("gcc")
        .args(link)
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg("-lm")
        .output()
        .context("cannot run gcc")?;
    ensure!(out.status.success(), "gcc -static failed: {}", describe(&out));
    Ok(exe)
}
