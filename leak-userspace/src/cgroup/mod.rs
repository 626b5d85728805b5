//! Which cgroup to trace: find the memory hierarchy on this host (`layout`), turn the user's `--cgroup` argument
//! into a memcg directory and id (`resolve`; containers through the Docker daemon, `docker`, containerd and
//! CRI-O, or the runtimes' cgroup names, `container`), follow a container through its restarts (`follow`), and
//! list what lives below it (`walk`).
mod container;
mod containerd;
mod crio;
mod docker;
mod follow;
mod layout;
mod naming;
mod resolve;
#[cfg(test)]
pub(crate) mod testing;
mod unix_http;
mod walk;
mod watch;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::report::Container;

pub use container::short_id;
use container::Found;
use containerd::Containerd;
use crio::Crio;
pub use docker::memcg_of;
use docker::{Daemon, Lookup};
pub use follow::{Follower, Poll};
pub use layout::{CgroupLayout, CgroupVersion};
pub use naming::Namer;
pub use resolve::{resolve, Resolver};
pub use walk::{member_pids, subtree, Subtree};
pub use watch::CgroupWatch;

/// The labels kubelet sets on a pod's containers (CRI), as Docker, containerd and CRI-O keep them.
const KUBE_POD: &str = "io.kubernetes.pod.name";
const KUBE_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const KUBE_CONTAINER: &str = "io.kubernetes.container.name";

/// The socket a runtime's daemon listens on: the path (`unix://` optional) environment variable `var` gives, else
/// `default`.
fn socket_from_env(var: &str, default: &str) -> PathBuf {
    match std::env::var(var) {
        Ok(a) if !a.is_empty() => a.strip_prefix("unix://").unwrap_or(&a).into(),
        _ => default.into(),
    }
}

/// A container as report.json has it, from what a CRI runtime keeps of it: a pod's named by kubelet's labels
/// (`label`), any other by its id.
fn cri_container(runtime: &str, id: String, image: &str, label: impl Fn(&str) -> Option<String>) -> Container {
    Container {
        runtime: runtime.into(),
        name: label(KUBE_CONTAINER).unwrap_or_default(),
        pod: label(KUBE_POD),
        namespace: label(KUBE_NAMESPACE),
        image: Some(image.to_string()).filter(|i| !i.is_empty()),
        id,
        ..Default::default()
    }
}

/// A resolved memcg.
#[derive(Debug, Clone)]
pub struct Target {
    /// Absolute directory of the memcg.
    pub path: PathBuf,
    /// Its inode number: the memcg id the `memcg:*` tracepoints report and the kernfs id of the cgroup.
    pub id: u64,
    pub version: CgroupVersion,
    /// The container it belongs to, when it was named as one (and so is followed through restarts).
    pub container: Option<Container>,
}

impl Target {
    /// The target for an existing cgroup directory (e.g. one the caller created itself).
    pub fn from_dir(path: &Path, version: CgroupVersion) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot stat cgroup {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), id: meta.ino(), version, container: None })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestMemcg;
    use super::*;

    #[test]
    fn version_numbers() {
        assert_eq!((CgroupVersion::V1.number(), CgroupVersion::V2.number()), (1, 2));
    }

    #[test]
    fn from_dir_missing_is_an_error() {
        let e = Target::from_dir(Path::new("/nonexistent/cg"), CgroupVersion::V1).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cg"));
    }

    /// Resolves a real memcg in every accepted form and lists its members.
    #[test]
    fn real_memcg_on_this_host() {
        let Some(mut cg) = TestMemcg::create("resolve") else { return };
        let child = cg.subdir("child");
        let pid = cg.spawn_member(&child, "exec sleep 30");
        let layout = &cg.layout;
        let id = std::fs::metadata(&cg.path).unwrap().ino();
        let rel = cg.path.strip_prefix(&layout.memory_root).unwrap().to_str().unwrap().to_string();
        for spec in [cg.path.to_str().unwrap().to_string(), rel, id.to_string()] {
            let t = resolve(&spec, layout).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!((t.path.as_path(), t.id, t.version), (cg.path.as_path(), id, layout.version), "{spec}");
        }
        if let Some(unified) = layout.unified.as_ref().filter(|u| **u != layout.memory_root) {
            let e = resolve(unified.to_str().unwrap(), layout).unwrap_err().to_string();
            assert!(e.contains("no memory controller"), "{e}");
        }

        let tree = subtree(&cg.path, layout.version);
        let mut want = vec![id, std::fs::metadata(&child).unwrap().ino()];
        want.sort_unstable();
        assert_eq!(tree.ids, want);
        assert_eq!(member_pids(&cg.path), vec![pid]);
        assert_eq!(tree.pids, vec![pid]);
        assert!(tree.tasks >= 1);
    }
}
