//! Which of the containers found (`cgroup::Namer`) the agent traces: those `--select` matches, and the names they
//! go by in its URLs and output directories.
use anyhow::{Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{cgroup, report::Container};

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
