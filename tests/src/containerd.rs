//! A containerd of a test's own (Debian's), on a socket in a temp dir, running containers of images imported from
//! an OCI archive (busybox and static binaries) with `ctr`, in the cgroups kubelet would give a pod's containers
//! (`kubepods/burstable/pod<uid>/<id>`) and with the CRI labels kubelet sets. Its containers, its cgroups and the
//! parents it made go when it is dropped, also when the test fails.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{describe, image, stop_daemon};

/// containerd's namespace for kubelet's containers.
pub const K8S_NAMESPACE: &str = "k8s.io";

pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    /// The pod cgroup parent this test's containers go in, below `kubepods/burstable`.
    pod_dir: String,
    /// The `kubepods` cgroups (one per hierarchy) that did not exist before: this test made them, they go too.
    made_kubepods: Vec<PathBuf>,
}

impl Containerd {
    pub fn start() -> Result<Containerd> {
        let dir = tempfile::Builder::new().prefix("lt-containerd-").tempdir()?;
        let made_kubepods = hierarchies().into_iter().map(|h| h.join("kubepods")).filter(|p| !p.exists()).collect();
        let d = dir.path();
        let config = d.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = d.join("containerd.sock").display()
            ),
        )?;
        let log = fs::File::create(d.join("containerd.log"))?;
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start containerd (cargo xtask bootstrap installs it with docker.io)")?;
        let pod_dir = format!("pod{}-lt", std::process::id());
        let mut c = Containerd { dir, daemon, pod_dir, made_kubepods };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.ctr("default", &["version"]).is_err() {
            if Instant::now() > deadline || c.daemon.try_wait()?.is_some() {
                bail!("containerd did not come up: {}", c.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(c)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace])
            .args(args)
            .output()
            .context("cannot run ctr")?;
        ensure!(out.status.success(), "ctr {args:?}: {}", describe(&out));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Imports an OCI image archive of busybox and `files` (host path, path in the image) as `image` (a full
    /// reference) into containerd namespace `namespace`, as an image copied to a node is.
    pub fn import_image(&self, namespace: &str, image: &str, files: &[(PathBuf, String)]) -> Result<()> {
        let archive = image::oci_archive(self.dir.path(), image, files)?;
        self.ctr(namespace, &["images", "import", &archive.to_string_lossy()]).map(drop)
    }

    /// Runs `cmd` in container `id` (64 hex digits, as kubelet's are) of `image` in containerd namespace
    /// `namespace`, in this test's pod cgroup, with `labels`.
    pub fn run(&self, namespace: &str, image: &str, id: &str, labels: &[(&str, &str)], cmd: &[&str]) -> Result<()> {
        let cgroup = format!("/kubepods/burstable/{}/{id}", self.pod_dir);
        let labels: Vec<String> = labels.iter().flat_map(|(k, v)| ["--label".into(), format!("{k}={v}")]).collect();
        let mut args = vec!["run", "-d", "--cgroup", &cgroup];
        args.extend(labels.iter().map(String::as_str));
        args.extend([image, id]);
        args.extend(cmd);
        self.ctr(namespace, &args).map(drop)
    }

    /// Kills container `id`'s task and removes the container (as kubelet does when a pod's container goes).
    pub fn remove(&self, namespace: &str, id: &str) -> Result<()> {
        let _ = self.ctr(namespace, &["tasks", "kill", "-s", "SIGKILL", id]);
        self.ctr(namespace, &["tasks", "delete", "--force", id])?;
        self.ctr(namespace, &["containers", "delete", id]).map(drop)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for ns in self.ctr("default", &["namespaces", "ls", "-q"]).unwrap_or_default().lines() {
            for id in self.ctr(ns, &["containers", "ls", "-q"]).unwrap_or_default().lines() {
                let _ = self.remove(ns, id);
            }
        }
        stop_daemon(&mut self.daemon, self.dir.path());
        // The pod cgroups in every hierarchy, deepest first (empty once the containers are gone), then the parents
        // this test made.
        for h in hierarchies() {
            let pod = h.join("kubepods/burstable").join(&self.pod_dir);
            let mut dirs: Vec<PathBuf> = fs::read_dir(&pod).into_iter().flatten().flatten().map(|e| e.path()).collect();
            dirs.retain(|d| d.is_dir());
            dirs.push(pod);
            for d in dirs {
                let _ = fs::remove_dir(d);
            }
        }
        for kubepods in &self.made_kubepods {
            let _ = fs::remove_dir(kubepods.join("burstable"));
            let _ = fs::remove_dir(kubepods);
        }
    }
}

/// Every mounted cgroup hierarchy (v1 controllers and cgroup2): runc makes a container's cgroup in each.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let dirs = fs::read_dir(root).into_iter().flatten().flatten();
    // Symlinks (cpu -> cpu,cpuacct) name a hierarchy twice.
    let mut out: Vec<PathBuf> = dirs.filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
    out.push(root.to_path_buf());
    out
}
