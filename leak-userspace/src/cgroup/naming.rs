//! Naming the container cgroups of the memory hierarchy (the names Docker, containerd, CRI-O, podman and kubepods
//! give them) by asking their runtimes: the Docker daemon or containerd where they know them (a pod's containers by
//! kubelet's labels), else by what the cgroup's name tells.
use std::{collections::HashMap, path::PathBuf};

use super::{container, CgroupLayout, Containerd, Daemon, Found, Lookup};
use crate::report::Container;

/// Names the containers found: what the runtime's daemon says of each (Docker, containerd; asked once per
/// container), else what its cgroup's name tells.
pub struct Namer {
    docker: Option<Daemon>,
    containerd: Option<Containerd>,
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
        Namer { docker: Daemon::from_env().ok(), containerd, known: HashMap::new() }
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
            "containerd" | "kubernetes" => self.ask_containerd(&found.id),
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

    fn ask_containerd(&mut self, id: &str) -> Option<Container> {
        match self.containerd.as_ref()?.lookup(id) {
            Ok(found) => found,
            Err(e) => {
                tracing::info!("{e:#}; containerd's containers are named by their ids");
                self.containerd = None;
                None
            }
        }
    }
}
