//! Which containers the agent traces: every container cgroup of the memory hierarchy (the names Docker,
//! containerd, CRI-O, podman and kubepods give their cgroups), named by the Docker daemon where it knows them, and
//! kept when `--select` matches one of their names.
use std::{collections::HashMap, path::PathBuf};

use anyhow::{Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{
    cgroup::{self, CgroupLayout, Daemon, Found, Lookup},
    report::Container,
};

/// `--select`: shell-style patterns (`*`, `?`, `[...]`) over a container's names.
pub struct Selector(Option<GlobSet>);

impl Selector {
    /// No pattern selects every container.
    pub fn new(patterns: &[String]) -> Result<Self> {
        if patterns.is_empty() {
            return Ok(Selector(None));
        }
        let mut set = GlobSetBuilder::new();
        for p in patterns {
            set.add(Glob::new(p).with_context(|| format!("--select {p:?} is not a pattern"))?);
        }
        Ok(Selector(Some(set.build().context("--select: the patterns cannot be combined")?)))
    }

    /// Whether a pattern matches the container's name, image, id (or its first 12 digits), pod, namespace, or
    /// `namespace/pod/name`.
    pub fn matches(&self, c: &Container) -> bool {
        let Some(set) = &self.0 else { return true };
        let pod = c.pod.as_deref().unwrap_or("");
        let namespace = c.namespace.as_deref().unwrap_or("");
        let names = [
            c.name.clone(),
            c.image.clone().unwrap_or_default(),
            c.id.clone(),
            cgroup::short_id(&c.id),
            pod.to_string(),
            namespace.to_string(),
            format!("{namespace}/{pod}/{}", c.name),
        ];
        names.iter().any(|n| !n.is_empty() && set.is_match(n))
    }
}

/// The name a container goes by in the agent's URLs and output directories: `namespace/pod/name` in a pod, else
/// its name, else its id's first 12 digits.
pub fn key(c: &Container) -> String {
    match (&c.namespace, &c.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}/{}", c.name),
        _ if !c.name.is_empty() => c.name.clone(),
        _ => cgroup::short_id(&c.id),
    }
}

/// Names the containers found: what the runtime's daemon says of each (asked once per container), else what its
/// cgroup's name tells.
pub struct Namer {
    docker: Option<Daemon>,
    known: HashMap<String, Container>,
}

impl Namer {
    pub fn new() -> Self {
        Namer { docker: Daemon::from_env().ok(), known: HashMap::new() }
    }

    /// The containers of the hierarchy now, with their cgroup directories.
    pub fn scan(&mut self, layout: &CgroupLayout) -> Vec<(PathBuf, Container)> {
        let found = cgroup::containers(layout);
        self.known.retain(|id, _| found.iter().any(|f| &f.id == id));
        found.into_iter().map(|f| (f.dir.clone(), self.name(&f))).collect()
    }

    fn name(&mut self, found: &Found) -> Container {
        if let Some(c) = self.known.get(&found.id) {
            return c.clone();
        }
        let asked = match (&self.docker, found.runtime) {
            (Some(daemon), "docker" | "kubernetes" | "unknown") => match daemon.inspect(&found.id) {
                Ok(Lookup::Found(inspect)) => Some(inspect.container()),
                Ok(Lookup::NotFound) => None,
                Ok(Lookup::Unreachable(why)) => {
                    // Asked no more: every container would wait for the daemon's timeout.
                    tracing::info!("{why}; containers are named by their ids");
                    self.docker = None;
                    None
                }
                Err(e) => {
                    tracing::debug!("cannot inspect {}: {e:#}", found.id);
                    None
                }
            },
            _ => None,
        };
        let c = asked.unwrap_or_else(|| found.container());
        self.known.insert(found.id.clone(), c.clone());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, image: &str, pod: Option<(&str, &str)>) -> Container {
        Container {
            runtime: "docker".into(),
            id: "3f4e1b2c9d8a7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f".into(),
            name: name.into(),
            image: Some(image.into()),
            namespace: pod.map(|p| p.0.into()),
            pod: pod.map(|p| p.1.into()),
            ..Default::default()
        }
    }

    #[test]
    fn patterns_match_any_of_a_containers_names() {
        let web = container("web-1", "shop/web:2.3", None);
        let api = container("api", "shop/api:1", Some(("prod", "api-7f9c")));
        let all = Selector::new(&[]).unwrap();
        assert!(all.matches(&web) && all.matches(&api));
        let by_name = Selector::new(&["web-*".into()]).unwrap();
        assert!(by_name.matches(&web) && !by_name.matches(&api));
        let by_image = Selector::new(&["shop/api:*".into()]).unwrap();
        assert!(!by_image.matches(&web) && by_image.matches(&api));
        let by_pod = Selector::new(&["prod/*".into()]).unwrap();
        assert!(!by_pod.matches(&web) && by_pod.matches(&api), "namespace/pod/name");
        let by_id = Selector::new(&["3f4e1b2c9d8a".into()]).unwrap();
        assert!(by_id.matches(&web), "the short id");
        let e = Selector::new(&["[".into()]).err().unwrap();
        assert!(format!("{e:#}").starts_with("--select \"[\" is not a pattern"), "{e:#}");
    }

    #[test]
    fn keys_name_pods_then_containers_then_ids() {
        assert_eq!(key(&container("api", "i", Some(("prod", "api-7f9c")))), "prod/api-7f9c/api");
        assert_eq!(key(&container("web-1", "i", None)), "web-1");
        assert_eq!(key(&container("", "i", None)), "3f4e1b2c9d8a");
    }
}
