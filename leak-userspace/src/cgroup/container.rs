//! Finding a container's memcg from its id alone, by the directory names container runtimes give their cgroups.
//! This works without asking any daemon, so it covers a Docker daemon that is down, and Kubernetes nodes where
//! containerd or CRI-O made the cgroups.
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::{walk::walk, CgroupLayout};

/// Container ids are 64 hex digits; a prefix must be long enough to name one container with confidence (the
/// length `docker ps` shows).
pub const MIN_ID_PREFIX: usize = 12;
const ID_LEN: usize = 64;

/// How a runtime names a container's cgroup directory: `<prefix><id><suffix>`. A bare `<id>` directory is what the
/// cgroupfs drivers make (`/docker/<id>`, `kubepods/burstable/pod<uid>/<id>`); which runtime made it is told by its
/// parent directories.
struct Naming {
    prefix: &'static str,
    suffix: &'static str,
    runtime: &'static str,
}

const NAMINGS: &[Naming] = &[
    Naming { prefix: "docker-", suffix: ".scope", runtime: "docker" },
    Naming { prefix: "cri-containerd-", suffix: ".scope", runtime: "containerd" },
    Naming { prefix: "crio-", suffix: ".scope", runtime: "cri-o" },
    Naming { prefix: "libpod-", suffix: ".scope", runtime: "podman" },
    Naming { prefix: "", suffix: "", runtime: "" },
];

/// A container cgroup found in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub dir: PathBuf,
    /// The full container id.
    pub id: String,
    /// "docker", "containerd", "cri-o", "podman", or "kubernetes" for a cgroupfs-driver pod whose runtime the
    /// directory names do not tell.
    pub runtime: &'static str,
}

impl Found {
    /// What report.json says of a container known only from its cgroup's name.
    pub fn container(&self) -> crate::report::Container {
        crate::report::Container { runtime: self.runtime.to_string(), id: self.id.clone(), ..Default::default() }
    }
}

/// The first 12 characters of an id, as `docker ps` shows it (by characters: a daemon's answer may not be hex).
pub fn short_id(id: &str) -> String {
    id.chars().take(MIN_ID_PREFIX).collect()
}

/// Whether `spec` can be (a prefix of) a container id.
pub fn is_id_like(spec: &str) -> bool {
    (MIN_ID_PREFIX..=ID_LEN).contains(&spec.len()) && spec.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id a cgroup directory's name carries, and the runtime the name tells of.
fn container_of(dir: &Path) -> Option<(String, &'static str)> {
    let name = dir.file_name()?.to_str()?;
    NAMINGS.iter().find_map(|n| {
        let id = name.strip_prefix(n.prefix)?.strip_suffix(n.suffix)?;
        let full = id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
        let runtime = match n.runtime {
            "" => runtime_from_parents(dir),
            named => named,
        };
        full.then(|| (id.to_ascii_lowercase(), runtime))
    })
}

/// For a bare `<id>` directory: `docker/<id>` is Docker's cgroupfs driver, anything under `kubepods*` a pod's.
fn runtime_from_parents(dir: &Path) -> &'static str {
    let parents: Vec<&str> = dir.ancestors().skip(1).filter_map(|p| p.file_name()?.to_str()).collect();
    if parents.first() == Some(&"docker") {
        "docker"
    } else if parents.iter().any(|p| p.starts_with("kubepods")) {
        "kubernetes"
    } else {
        "unknown"
    }
}

/// Every container cgroup in the memory hierarchy whose id starts with `id_prefix` (lowercase hex). One container
/// appears once per hierarchy; its own sub-cgroups (e.g. systemd inside it) are not listed.
pub fn find(layout: &CgroupLayout, id_prefix: &str) -> Vec<Found> {
    let prefix = id_prefix.to_ascii_lowercase();
    let mut containers: Vec<Found> = Vec::new();
    // Parents are visited before their children, so a container's sub-cgroups come after the container.
    walk::<()>(&layout.memory_root, |dir, _| {
        if let Some((id, runtime)) = container_of(dir) {
            if !containers.iter().any(|f| dir.starts_with(&f.dir)) {
                containers.push(Found { dir: dir.to_path_buf(), id, runtime });
            }
        }
        ControlFlow::Continue(())
    });
    containers.retain(|f| f.id.starts_with(&prefix));
    containers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupVersion;
    use std::fs;

    const A: &str = "3f4e1b2c9d8a7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
    const B: &str = "3f4e1b2c9d8a0000000000000000000000000000000000000000000000000000";
    const C: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

    /// A memory hierarchy with the given cgroup directories (each gets a cgroup.procs, as the kernel's do).
    fn hierarchy(dirs: &[String]) -> (tempfile::TempDir, CgroupLayout) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("memory");
        for d in std::iter::once(&String::new()).chain(dirs) {
            fs::create_dir_all(root.join(d)).unwrap();
            fs::write(root.join(d).join("cgroup.procs"), "").unwrap();
        }
        (t, CgroupLayout { memory_root: root, version: CgroupVersion::V1, unified: None })
    }

    fn one(layout: &CgroupLayout, prefix: &str) -> (String, String, &'static str) {
        let found = find(layout, prefix);
        assert_eq!(found.len(), 1, "{prefix}: {found:?}");
        let f = &found[0];
        (f.dir.strip_prefix(&layout.memory_root).unwrap().display().to_string(), f.id.clone(), f.runtime)
    }

    #[test]
    fn every_runtime_layout() {
        let cases = [
            (format!("docker/{A}"), "docker"),
            (format!("system.slice/docker-{A}.scope"), "docker"),
            (format!("kubepods/burstable/pod0b1c-22/{A}"), "kubernetes"),
            (format!("kubepods/pod0b1c-22/{A}"), "kubernetes"),
            (format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b1c_22.slice/cri-containerd-{A}.scope"), "containerd"),
            (format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b1c_22.slice/crio-{A}.scope"), "cri-o"),
            (format!("machine.slice/libpod-{A}.scope"), "podman"),
            (format!("my-parent/{A}"), "unknown"),
        ];
        for (dir, runtime) in cases {
            let (_t, layout) = hierarchy(std::slice::from_ref(&dir));
            for prefix in [A, &A[..MIN_ID_PREFIX], A[..30].to_ascii_uppercase().as_str()] {
                assert_eq!(one(&layout, prefix), (dir.clone(), A.to_string(), runtime), "{dir} by {prefix}");
            }
        }
    }

    #[test]
    fn lookalikes_are_not_containers() {
        let (_t, layout) = hierarchy(&[
            format!("system.slice/crio-conmon-{A}.scope"),
            format!("docker/{}", &A[..63]),
            format!("docker/{A}0"),
            format!("system.slice/docker-{A}.service"),
            format!("docker/{}", A.replace('f', "g")),
        ]);
        assert!(find(&layout, &A[..12]).is_empty(), "{:?}", find(&layout, &A[..12]));
    }

    #[test]
    fn ambiguous_prefix_lists_every_match_and_children_are_not_containers() {
        let (_t, layout) = hierarchy(&[
            format!("docker/{A}"),
            format!("docker/{B}"),
            format!("docker/{C}"),
            format!("docker/{A}/{C}"),
        ]);
        let mut ids: Vec<String> = find(&layout, &A[..12]).into_iter().map(|f| f.id).collect();
        ids.sort();
        assert_eq!(ids, [B, A]);
        assert_eq!(one(&layout, C).0, format!("docker/{C}"), "the nested copy under {A} is not a second match");
        assert!(find(&layout, "0123456789ab").is_empty());
    }

    #[test]
    fn id_shapes() {
        assert_eq!((short_id(A).as_str(), short_id("é").as_str()), (&A[..12], "é"));
        assert!(is_id_like(A) && is_id_like(&A[..12]) && is_id_like("ABCDEF012345"));
        assert!(!is_id_like(&A[..11]) && !is_id_like(&format!("{A}0")) && !is_id_like("my-container"));
        assert!(!is_id_like("g23456789012"));
    }
}
