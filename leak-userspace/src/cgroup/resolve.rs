//! Turning the user's `--cgroup` argument into a memcg directory. Each accepted form is one [`Resolver`]; they are
//! asked in order, so a new form (e.g. a Docker container name) is one more entry in [`RESOLVERS`].
use std::ops::ControlFlow;
use std::path::{Component, Path, PathBuf};

use anyhow::bail;

use super::container::{self, is_id_like, short_id, MIN_ID_PREFIX};
use super::docker::{self, Daemon, Lookup};
use super::{walk::walk, CgroupLayout, Namer, Target};

pub trait Resolver: Sync {
    /// `Ok(None)`: the spec is not of this form, or names nothing this resolver can find (the next one is asked).
    /// `Err`: the spec is of this form but unusable; the message says why and what to give instead.
    fn resolve(&self, spec: &str, layout: &CgroupLayout) -> anyhow::Result<Option<Target>>;
}

/// Asked in this order. A numeric id comes before a relative path, so `123` means the cgroup id, not a directory
/// named `123` under the root (which can still be given as `./123`). Cgroup forms come before container names, so
/// a name is only sent to the Docker daemon when no cgroup has it.
const RESOLVERS: &[&dyn Resolver] =
    &[&AbsolutePath, &NumericId, &RelativePath, &PodContainer, &DockerContainer, &ContainerId];

/// What `--cgroup` accepts, for error messages ("it" is the memory hierarchy's root).
const FORMS: &str = "an absolute cgroup directory, a path relative to it, a numeric cgroup id, a container name or id \
                     (>= 12 hex), or a pod's container as [namespace/]pod/container";

/// Resolves `spec` (see CONTRACT.md, `<TARGET>`) in the memory hierarchy of `layout`.
pub fn resolve(spec: &str, layout: &CgroupLayout) -> anyhow::Result<Target> {
    let spec = spec.trim();
    let root = layout.memory_root.display();
    if spec.is_empty() {
        bail!("the cgroup target is empty (the memory hierarchy is {root}; give {FORMS})");
    }
    if spec.chars().any(char::is_control) {
        bail!("the cgroup target {spec:?} contains control characters");
    }
    for resolver in RESOLVERS {
        if let Some(target) = resolver.resolve(spec, layout)? {
            return Ok(target);
        }
    }
    bail!("no cgroup {spec:?} under {root} (give {FORMS})")
}

/// A directory is a cgroup when the kernel put `cgroup.procs` in it (true for v1 and v2, root included).
fn is_cgroup_dir(path: &Path) -> bool {
    path.join("cgroup.procs").is_file()
}

/// `/sys/fs/cgroup/memory/docker/<id>`: must lie inside the memory hierarchy.
struct AbsolutePath;

impl Resolver for AbsolutePath {
    fn resolve(&self, spec: &str, layout: &CgroupLayout) -> anyhow::Result<Option<Target>> {
        let path = Path::new(spec);
        if !path.is_absolute() {
            return Ok(None);
        }
        let real = path.canonicalize().ok();
        // On hybrid hosts the unified tree mirrors the v1 one, so users often pick the wrong mount.
        if let Some(unified) = layout.unified.as_deref().filter(|u| *u != layout.memory_root) {
            if let Ok(rest) = real.as_deref().unwrap_or(path).strip_prefix(unified) {
                bail!(
                    "{spec} is in the cgroup2 hierarchy at {}, which has no memory controller on this host; give the \
                     memory cgroup instead: {}",
                    unified.display(),
                    layout.memory_root.join(rest).display()
                );
            }
        }
        let Some(real) = real else { return Ok(None) };
        let root = layout.memory_root.canonicalize().unwrap_or_else(|_| layout.memory_root.clone());
        if !real.starts_with(&root) {
            bail!("{spec} is not inside the memory cgroup hierarchy {} (give a directory under it)", root.display());
        }
        if !is_cgroup_dir(&real) {
            bail!("{spec} is not a cgroup directory (it has no cgroup.procs; give the cgroup's directory)");
        }
        Target::from_dir(&real, layout.version).map(Some)
    }
}

/// `docker/<id>`, `kubepods.slice/...`: relative to the memory hierarchy's root.
struct RelativePath;

impl Resolver for RelativePath {
    fn resolve(&self, spec: &str, layout: &CgroupLayout) -> anyhow::Result<Option<Target>> {
        let rel = Path::new(spec);
        if rel.components().any(|c| c == Component::ParentDir) {
            bail!(
                "the cgroup path {spec:?} must not contain \"..\" (give a path relative to {} without it)",
                layout.memory_root.display()
            );
        }
        let path = layout.memory_root.join(rel);
        if !is_cgroup_dir(&path) {
            return Ok(None);
        }
        Target::from_dir(&path, layout.version).map(Some)
    }
}

/// `12345`: the inode number of the cgroup directory, which is also the cgroup id the kernel reports.
struct NumericId;

impl Resolver for NumericId {
    fn resolve(&self, spec: &str, layout: &CgroupLayout) -> anyhow::Result<Option<Target>> {
        if !spec.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        let Ok(id) = spec.parse::<u64>() else { return Ok(None) };
        let found: Option<PathBuf> = walk(&layout.memory_root, |dir, ino| {
            if ino == id && is_cgroup_dir(dir) {
                ControlFlow::Break(dir.to_path_buf())
            } else {
                ControlFlow::Continue(())
            }
        });
        found.map(|dir| Target::from_dir(&dir, layout.version)).transpose()
    }
}

/// A Docker container name, full id or id prefix, asked of the daemon. When the daemon cannot be reached, an id is
/// still looked up in the cgroup tree; a name cannot be, and is an error that says so.
struct DockerContainer;

impl Resolver for DockerContainer {
    fn resolve(&self, spec: &str, layout: &CgroupLayout) -> anyhow::Result<Option<Target>> {
        let reference = spec.strip_prefix('/').unwrap_or(spec);
        if !docker::is_reference(reference) {
            return Ok(None);
        }
        resolve_docker(&Daemon::from_env()?, spec, layout)
    }
}

/// `spec` asked of `daemon`. When the daemon cannot be reached, an id is still looked up in the cgroup tree.
fn resolve_docker(daemon: &Daemon, spec: &str, layout: &CgroupLayout) -> anyhow::Result<Option<Target>> {
    let reference = spec.strip_prefix('/').unwrap_or(spec);
    let inspect = match daemon.inspect(reference) {
        Ok(Lookup::Found(inspect)) => inspect,
        Ok(Lookup::NotFound) => return Ok(None),
        // Most likely a cgroup id that matched nothing: say that, not that Docker is down.
        Ok(Lookup::Unreachable(_)) if reference.bytes().all(|b| b.is_ascii_digit()) => return Ok(None),
        Ok(Lookup::Unreachable(why)) if is_id_like(reference) => {
            return match ContainerId.resolve(reference, layout)? {
                Some(target) => Ok(Some(target)),
                None => bail!(
                    "no cgroup under {} is named after a container id starting with {reference}, and {why}",
                    layout.memory_root.display()
                ),
            };
        }
        Ok(Lookup::Unreachable(why)) => {
            bail!("{spec:?} is not a cgroup under {}, and {why}", layout.memory_root.display())
        }
        Err(e) => bail!("cannot resolve container {spec:?}: {e:#} (give its name or its full id)"),
    };
    // Docker accepts any id prefix; a short one picks a container by accident too easily during an incident.
    if inspect.short_name() != reference && reference.len() < MIN_ID_PREFIX {
        bail!(
            "{reference:?} is only a short prefix of the id of container {} ({}); give its name or at least \
                 {MIN_ID_PREFIX} characters of its id",
            inspect.short_name(),
            &inspect.id[..MIN_ID_PREFIX.min(inspect.id.len())]
        );
    }
    docker::wait_until_running(daemon, *inspect, layout).map(Some)
}

/// `[namespace/]pod/container`: a Kubernetes pod's container, named by the CRI labels its runtime (containerd, or
/// Docker through cri-dockerd) keeps. Asked after the cgroup paths, which look alike.
struct PodContainer;

impl Resolver for PodContainer {
    fn resolve(&self, spec: &str, layout: &CgroupLayout) -> anyhow::Result<Option<Target>> {
        let Some(wanted) = pod_spec(spec) else { return Ok(None) };
        let found: Vec<_> = Namer::new().scan(layout).into_iter().filter(|(_, c)| wanted.matches(c)).collect();
        match found.as_slice() {
            [] => Ok(None),
            [(dir, c)] => {
                let mut target = Target::from_dir(dir, layout.version)?;
                target.container = Some(c.clone());
                Ok(Some(target))
            }
            many => {
                let names: Vec<String> = many
                    .iter()
                    .map(|(_, c)| {
                        format!("{}/{}", c.namespace.as_deref().unwrap_or("?"), c.pod.as_deref().unwrap_or("?"))
                    })
                    .collect();
                bail!("{spec:?} names containers of {} pods ({}); give the namespace too", many.len(), names.join(", "))
            }
        }
    }
}

/// The parts of `[namespace/]pod/container`.
struct PodSpec<'a> {
    namespace: Option<&'a str>,
    pod: &'a str,
    name: &'a str,
}

impl PodSpec<'_> {
    fn matches(&self, c: &crate::report::Container) -> bool {
        c.pod.as_deref() == Some(self.pod)
            && c.name == self.name
            && self.namespace.is_none_or(|ns| c.namespace.as_deref() == Some(ns))
    }
}

fn pod_spec(spec: &str) -> Option<PodSpec<'_>> {
    let parts: Vec<&str> = spec.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts.as_slice() {
        [pod, name] => Some(PodSpec { namespace: None, pod, name }),
        [ns, pod, name] => Some(PodSpec { namespace: Some(ns), pod, name }),
        _ => None,
    }
}

/// A container id (or a prefix of >= 12 hex digits) found in the cgroup directory names runtimes use; covers
/// containerd and CRI-O (Kubernetes) and Docker without its daemon.
struct ContainerId;

impl Resolver for ContainerId {
    fn resolve(&self, spec: &str, layout: &CgroupLayout) -> anyhow::Result<Option<Target>> {
        if !is_id_like(spec) {
            return Ok(None);
        }
        match container::find(layout, spec).as_slice() {
            [] => Ok(None),
            [one] => {
                let mut target = Target::from_dir(&one.dir, layout.version)?;
                target.container = Some(one.container());
                Ok(Some(target))
            }
            many => {
                let ids: Vec<String> = many.iter().map(|f| short_id(&f.id)).collect();
                bail!(
                    "the container id prefix {spec} is ambiguous: it matches {} containers ({}); give more of the id",
                    many.len(),
                    ids.join(", ")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupVersion;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    /// A fake hybrid host: memory hierarchy and unified mount under one temp dir.
    struct Tree {
        _dir: tempfile::TempDir,
        layout: CgroupLayout,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let memory = dir.path().join("memory");
        let unified = dir.path().join("unified");
        for cg in ["", "docker/abc123", "kubepods.slice/pod1", "123"] {
            fs::create_dir_all(memory.join(cg)).unwrap();
            fs::write(memory.join(cg).join("cgroup.procs"), "").unwrap();
        }
        fs::create_dir_all(memory.join("not-a-cgroup")).unwrap();
        fs::create_dir_all(unified.join("docker/abc123")).unwrap();
        let layout = CgroupLayout { memory_root: memory, version: CgroupVersion::V1, unified: Some(unified) };
        Tree { _dir: dir, layout }
    }

    fn ino(p: &Path) -> u64 {
        fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn absolute_path() {
        let t = tree();
        let p = t.layout.memory_root.join("docker/abc123");
        let target = resolve(p.to_str().unwrap(), &t.layout).unwrap();
        assert_eq!(target.path, p.canonicalize().unwrap());
        assert_eq!(target.id, ino(&p));
        assert_eq!(target.version, CgroupVersion::V1);
        assert!(target.container.is_none());
    }

    #[test]
    fn absolute_path_is_normalised_and_must_stay_inside() {
        let t = tree();
        let m = t.layout.memory_root.to_str().unwrap();
        let target = resolve(&format!("{m}/docker/../docker/abc123/"), &t.layout).unwrap();
        assert_eq!(target.path, t.layout.memory_root.join("docker/abc123").canonicalize().unwrap());
        let e = resolve(&format!("{m}/.."), &t.layout).unwrap_err().to_string();
        assert!(e.contains("not inside the memory cgroup hierarchy"), "{e}");
        let e = resolve("/tmp", &t.layout).unwrap_err().to_string();
        assert!(e.contains("not inside"), "{e}");
    }

    #[test]
    fn absolute_non_cgroup_and_missing() {
        let t = tree();
        let m = t.layout.memory_root.display();
        let e = resolve(&format!("{m}/not-a-cgroup"), &t.layout).unwrap_err().to_string();
        assert!(e.contains("not a cgroup directory"), "{e}");
        let e = resolve(&format!("{m}/nope"), &t.layout).unwrap_err().to_string();
        assert!(e.starts_with("no cgroup \""), "{e}");
    }

    #[test]
    fn unified_path_on_hybrid_host_suggests_v1_path() {
        let t = tree();
        let u = t.layout.unified.as_ref().unwrap().join("docker/abc123");
        let e = resolve(u.to_str().unwrap(), &t.layout).unwrap_err().to_string();
        assert!(e.contains("no memory controller"), "{e}");
        assert!(e.ends_with(&t.layout.memory_root.join("docker/abc123").display().to_string()), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn unified_path_on_pure_v2_host_is_fine() {
        let t = tree();
        let layout = CgroupLayout {
            memory_root: t.layout.memory_root.clone(),
            version: CgroupVersion::V2,
            unified: Some(t.layout.memory_root.clone()),
        };
        let p = layout.memory_root.join("kubepods.slice/pod1");
        let target = resolve(p.to_str().unwrap(), &layout).unwrap();
        assert_eq!((target.id, target.version), (ino(&p), CgroupVersion::V2));
    }

    #[test]
    fn relative_path() {
        let t = tree();
        for spec in ["docker/abc123", "kubepods.slice/pod1/", "./123", " docker/abc123\n"] {
            let target = resolve(spec, &t.layout).unwrap();
            assert_eq!(target.path, t.layout.memory_root.join(spec.trim()));
            assert_eq!(target.id, ino(&target.path));
        }
    }

    #[test]
    fn relative_path_rejects_dotdot_and_control_chars() {
        let t = tree();
        let e = resolve("docker/../../etc", &t.layout).unwrap_err().to_string();
        assert!(e.contains("must not contain \"..\""), "{e}");
        let e = resolve("docker/a\u{1b}[2J", &t.layout).unwrap_err().to_string();
        assert!(e.contains("control characters"), "{e}");
        assert!(resolve("   ", &t.layout).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn numeric_id() {
        let t = tree();
        let p = t.layout.memory_root.join("kubepods.slice/pod1");
        let target = resolve(&ino(&p).to_string(), &t.layout).unwrap();
        assert_eq!(target.path, p);
        // A directory named like a number is reached as a relative path when no cgroup has that id.
        let target = resolve("123", &t.layout).unwrap();
        assert_eq!(target.path, t.layout.memory_root.join("123"));
    }

    #[test]
    fn unknown_numeric_id_and_huge_number() {
        let t = tree();
        for spec in ["18446744073709551615", "99999999999999999999999"] {
            let e = resolve(spec, &t.layout).unwrap_err().to_string();
            assert_eq!(e, format!("no cgroup {spec:?} under {} (give {FORMS})", t.layout.memory_root.display()));
        }
    }

    #[test]
    fn container_id_in_the_cgroup_tree() {
        let t = tree();
        let id = "ab12".repeat(16);
        let other = format!("{}{}", &id[..20], "0".repeat(44));
        for dir in [format!("docker/{id}"), format!("system.slice/docker-{other}.scope")] {
            fs::create_dir_all(t.layout.memory_root.join(&dir)).unwrap();
            fs::write(t.layout.memory_root.join(&dir).join("cgroup.procs"), "").unwrap();
        }
        let target = ContainerId.resolve(&id[..24], &t.layout).unwrap().unwrap();
        assert_eq!(target.path, t.layout.memory_root.join(format!("docker/{id}")));
        let c = target.container.unwrap();
        assert_eq!(
            (c.runtime.as_str(), c.id.as_str(), c.name.as_str(), c.restart_count),
            ("docker", id.as_str(), "", None)
        );
        let e = ContainerId.resolve(&id[..12], &t.layout).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains(&id[..12]) && e.contains("give more of the id"), "{e}");
        assert!(ContainerId.resolve("abcdefabcdef", &t.layout).unwrap().is_none());
        assert!(ContainerId.resolve("my-name", &t.layout).unwrap().is_none());
    }

    #[test]
    fn docker_container_by_name() {
        use crate::cgroup::docker::tests::{http, inspect_json, serve, ID};
        let t = tree();
        let dir = t.layout.memory_root.join(format!("docker/{ID}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        let running = inspect_json("running", std::process::id());
        let fake = serve(vec![
            http("200 OK", &running),
            http("200 OK", &running),
            http("404 Not Found", r#"{"message":"No such container: nope"}"#),
            http("200 OK", &inspect_json("exited", 0)),
            http("500 Internal Server Error", r#"{"message":"boom"}"#),
        ]);
        let target = resolve_docker(&fake.daemon, "leaky", &t.layout).unwrap().unwrap();
        assert_eq!((target.path.as_path(), target.id), (dir.as_path(), ino(&dir)));
        let c = target.container.unwrap();
        assert_eq!((c.name.as_str(), c.restart_count, c.last_exit_code), ("leaky", Some(2), None));
        let e = resolve_docker(&fake.daemon, "d63c", &t.layout).unwrap_err().to_string();
        assert!(e.contains("only a short prefix of the id of container leaky (d63c27cb22dc)"), "{e}");
        assert!(resolve_docker(&fake.daemon, "nope", &t.layout).unwrap().is_none());
        let e = resolve_docker(&fake.daemon, "leaky", &t.layout).unwrap_err().to_string();
        assert!(e.contains("is not running (exited, exit code 137, OOM-killed); start it (docker start leaky)"), "{e}");
        let e = resolve_docker(&fake.daemon, "leaky", &t.layout).unwrap_err().to_string();
        assert!(e.starts_with("cannot resolve container \"leaky\"") && e.contains("answered 500: boom"), "{e}");
    }

    #[test]
    fn pod_container_specs() {
        let c = |ns: &str, pod: &str, name: &str| crate::report::Container {
            name: name.into(),
            pod: Some(pod.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        };
        let api = c("shop", "web-1", "api");
        assert!(pod_spec("web-1/api").unwrap().matches(&api));
        assert!(pod_spec("shop/web-1/api").unwrap().matches(&api));
        assert!(!pod_spec("dev/web-1/api").unwrap().matches(&api));
        assert!(!pod_spec("web-1/sidecar").unwrap().matches(&api));
        assert!(!pod_spec("web-1/api")
            .unwrap()
            .matches(&crate::report::Container { name: "api".into(), ..Default::default() }));
        for not in ["api", "a/b/c/d", "/web-1/api", "web-1//api", "web-1/api/"] {
            assert!(pod_spec(not).is_none(), "{not}");
        }
    }
}
