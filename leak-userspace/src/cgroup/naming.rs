//! Naming the container cgroups of the memory hierarchy (the names Docker, containerd, CRI-O, podman and kubepods
//! give them) by asking their runtimes: the Docker daemon, containerd or CRI-O where they know them (a pod's
//! containers by kubelet's labels), else by what the cgroup's name tells.
use std::{collections::HashMap, path::PathBuf};

use anyhow::Result;

use super::{container, CgroupLayout, Containerd, Crio, Daemon, Found, Lookup};
use crate::report::Container;

/// Names the containers found: what the runtime's daemon says of each (Docker, containerd, CRI-O; asked once per
/// container), else what its cgroup's name tells.
pub struct Namer {
    docker: Option<Daemon>,
    containerd: Option<Containerd>,
    crio: Option<Crio>,
    known: HashMap<String, Container>,
}

impl Default for Namer {
    fn default() -> Self {
        Self::new()
    }
}

impl Namer {
    pub fn new() -> Self {
        let containerd = Some(Containerd::from_env()).filter(Containerd::present);
        let crio = Some(Crio::from_env()).filter(Crio::present);
        Namer { docker: Daemon::from_env().ok(), containerd, crio, known: HashMap::new() }
    }

    /// The containers of the hierarchy now, with their cgroup directories.
    pub fn scan(&mut self, layout: &CgroupLayout) -> Vec<(PathBuf, Container)> {
        let found = container::find(layout, "");
        self.known.retain(|id, _| found.iter().any(|f| &f.id == id));
        found.into_iter().map(|f| (f.dir.clone(), self.name(&f))).collect()
    }

    fn name(&mut self, found: &Found) -> Container {
        if let Some(c) = self.known.get(&found.id) {
            return c.clone();
        }
        let asked = match found.runtime {
            "docker" => self.ask_docker(&found.id),
            "containerd" => self.ask_containerd(&found.id),
            "cri-o" => self.ask_crio(&found.id),
            "kubernetes" => self.ask_containerd(&found.id).or_else(|| self.ask_crio(&found.id)),
            "unknown" => self.ask_docker(&found.id).or_else(|| self.ask_containerd(&found.id)),
            _ => None,
        };
        let c = asked.unwrap_or_else(|| found.container());
        self.known.insert(found.id.clone(), c.clone());
        c
    }

    fn ask_docker(&mut self, id: &str) -> Option<Container> {
        match self.docker.as_ref()?.inspect(id) {
            Ok(Lookup::Found(inspect)) => Some(inspect.container()),
            Ok(Lookup::NotFound) => None,
            Ok(Lookup::Unreachable(why)) => {
                // Asked no more: every container would wait for the daemon's timeout.
                tracing::info!("{why}; Docker's containers are named by their ids");
                self.docker = None;
                None
            }
            Err(e) => {
                tracing::debug!("cannot inspect {id}: {e:#}");
                None
            }
        }
    }

    fn ask_crio(&mut self, id: &str) -> Option<Container> {
        ask_cri(&mut self.crio, "CRI-O", |d| d.lookup(id))
    }

    fn ask_containerd(&mut self, id: &str) -> Option<Container> {
        ask_cri(&mut self.containerd, "containerd", |d| d.lookup(id))
    }
}

/// What a CRI runtime's daemon says of a container. A daemon that fails is asked no more: every container would
/// wait for its timeout.
fn ask_cri<D>(
    daemon: &mut Option<D>,
    runtime: &str,
    lookup: impl Fn(&D) -> Result<Option<Container>>,
) -> Option<Container> {
    match lookup(daemon.as_ref()?) {
        Ok(found) => found,
        Err(e) => {
            tracing::info!("{e:#}; {runtime}'s containers are named by their ids");
            *daemon = None;
            None
        }
    }
}
