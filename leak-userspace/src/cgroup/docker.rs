//! The Docker Engine API, as much as leaktrace needs: inspect one container by name or id. One HTTP/1.0 GET per
//! question over the daemon's unix socket (`DOCKER_HOST`, else /var/run/docker.sock): the daemon closes the connection
//! after the answer, so the body is simply everything up to EOF.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

use super::{
    container,
    follow::RESTART_WAIT,
    unix_http::{self, parse_response},
    CgroupLayout, CgroupVersion, Target, KUBE_CONTAINER, KUBE_NAMESPACE, KUBE_POD,
};
use crate::report::Container;

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// A daemon under memory pressure answers slowly, but an incident tool must not hang on it.
const TIMEOUT: Duration = Duration::from_secs(10);
/// An inspect answer is a few KiB; anything this large is not one.
const MAX_RESPONSE: u64 = 16 << 20;

/// The daemon's unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    socket: PathBuf,
}

/// What the daemon said about a container.
#[derive(Debug)]
pub enum Lookup {
    Found(Box<Inspect>),
    NotFound,
    /// The daemon could not be asked; the text says why and what to do.
    Unreachable(String),
}

/// The fields of `GET /containers/{id}/json` that leaktrace uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inspect {
    pub id: String,
    /// "/name".
    pub name: String,
    pub state: State,
    #[serde(default)]
    pub restart_count: u64,
    #[serde(default)]
    pub config: Option<Config>,
    #[serde(default)]
    pub host_config: Option<HostConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct State {
    /// created, running, paused, restarting, removing, exited, dead.
    pub status: String,
    #[serde(default)]
    pub running: bool,
    #[serde(default)]
    pub restarting: bool,
    #[serde(rename = "OOMKilled", default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub exit_code: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    #[serde(default)]
    pub image: String,
    /// Kubelet's `io.kubernetes.*` labels name a pod's container (dockershim, cri-dockerd).
    #[serde(default)]
    pub labels: Option<std::collections::HashMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    /// Bytes; 0 = no limit.
    #[serde(default)]
    pub memory: i64,
    #[serde(default)]
    pub restart_policy: Option<RestartPolicy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    #[serde(default)]
    pub name: String,
}

impl Daemon {
    /// The daemon `DOCKER_HOST` names, else the default socket.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => Self::parse(&host),
            _ => Ok(Daemon { socket: DEFAULT_SOCKET.into() }),
        }
    }

    /// A `DOCKER_HOST` value. Only local daemons are asked: a container's cgroup is on this host anyway.
    pub fn parse(host: &str) -> anyhow::Result<Self> {
        match host.strip_prefix("unix://") {
            Some(path) if !path.is_empty() => Ok(Daemon { socket: path.into() }),
            _ => bail!(
                "DOCKER_HOST={host} is not supported: leaktrace asks the local daemon over its unix socket (set \
                 DOCKER_HOST=unix:///path/to/docker.sock, or unset it for {DEFAULT_SOCKET})"
            ),
        }
    }

    /// Inspects the container `name_or_id` (a name, full id or id prefix; Docker resolves it).
    pub fn inspect(&self, name_or_id: &str) -> anyhow::Result<Lookup> {
        let reference = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        if !is_reference(reference) {
            bail!("{name_or_id:?} cannot be a Docker container name or id");
        }
        let response = match self.get(&format!("/containers/{reference}/json")) {
            Ok(r) => r,
            Err(why) => return Ok(Lookup::Unreachable(why)),
        };
        let (status, body) = parse_response(&response).with_context(|| format!("the Docker daemon at {self}"))?;
        match status {
            200 => {
                let inspect = serde_json::from_slice(body).with_context(|| {
                    format!("the Docker daemon at {self} sent an inspect answer leaktrace cannot read")
                })?;
                Ok(Lookup::Found(Box::new(inspect)))
            }
            404 => Ok(Lookup::NotFound),
            _ => bail!("the Docker daemon at {self} answered {status}: {}", api_message(body)),
        }
    }

    /// The raw response to `GET path`, or why the daemon could not be asked.
    fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        unix_http::get(&self.socket, "docker", path, TIMEOUT, MAX_RESPONSE).map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, e: &std::io::Error) -> String {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "is dockerd running? set DOCKER_HOST if it listens elsewhere"
            }
            std::io::ErrorKind::PermissionDenied => "run leaktrace as root",
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "the daemon did not answer in time",
            _ => "check that dockerd is running",
        };
        format!("the Docker daemon at {self} cannot be reached: {e} ({hint})")
    }
}

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unix://{}", self.socket.display())
    }
}

/// Docker's container name grammar (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`); ids are hex and fit it too.
pub fn is_reference(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The `message` of an API error body, else the body itself (first line).
fn api_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ApiError {
        message: String,
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => e.message,
        Err(_) => String::from_utf8_lossy(body).lines().next().unwrap_or_default().to_string(),
    }
}

impl Inspect {
    /// The name without Docker's leading slash.
    pub fn short_name(&self) -> &str {
        self.name.strip_prefix('/').unwrap_or(&self.name)
    }

    /// The facts report.json carries. Exit code and OOMKilled describe the last exit Docker saw.
    pub fn container(&self) -> Container {
        let host = self.host_config.as_ref();
        Container {
            runtime: "docker".into(),
            id: self.id.clone(),
            // A pod's container is known by the name kubelet gave it, not Docker's `k8s_...` one.
            name: self.label(KUBE_CONTAINER).unwrap_or_else(|| self.short_name().to_string()),
            image: self.config.as_ref().map(|c| c.image.clone()).filter(|i| !i.is_empty()),
            memory_limit_bytes: host.and_then(|h| u64::try_from(h.memory).ok()).filter(|&m| m > 0),
            restart_policy: host
                .and_then(|h| h.restart_policy.as_ref())
                .map(|p| p.name.clone())
                .filter(|n| !n.is_empty()),
            restart_count: Some(self.restart_count),
            oom_killed: Some(self.state.oom_killed),
            // A running container's ExitCode is 0 whatever its last exit was.
            last_exit_code: (!self.state.running).then_some(self.state.exit_code),
            pod: self.label(KUBE_POD),
            namespace: self.label(KUBE_NAMESPACE),
        }
    }

    fn label(&self, name: &str) -> Option<String> {
        self.config.as_ref()?.labels.as_ref()?.get(name).cloned()
    }

    /// "exited, code 137, OOM-killed": the state as a user would want it in a message.
    pub fn describe_state(&self) -> String {
        let s = &self.state;
        let mut text = s.status.clone();
        if !s.running && !s.restarting {
            text += &format!(", exit code {}", s.exit_code);
        }
        if s.oom_killed {
            text += ", OOM-killed";
        }
        text
    }

    /// The container's memcg while it runs: where its main process is (exact, whatever the cgroup driver or
    /// cgroup parent), else a directory named after its id.
    pub fn cgroup_dir(&self, layout: &CgroupLayout) -> Option<PathBuf> {
        if !self.state.running {
            return None;
        }
        let from_proc = std::fs::read_to_string(format!("/proc/{}/cgroup", self.state.pid))
            .ok()
            .and_then(|text| memcg_of(&text, layout.version))
            .map(|rel| layout.memory_root.join(rel.trim_start_matches('/')))
            .filter(|dir| dir.join("cgroup.procs").is_file() && dir_names_container(dir, &self.id));
        from_proc.or_else(|| match container::find(layout, &self.id).as_slice() {
            [one] => Some(one.dir.clone()),
            _ => None,
        })
    }
}

/// The target for a container the daemon knows. A container in its restart back-off has no cgroup: this waits for
/// it (Docker backs off at most a minute); a stopped one is an error that says how to proceed.
pub fn wait_until_running(daemon: &Daemon, mut inspect: Inspect, layout: &CgroupLayout) -> anyhow::Result<Target> {
    let deadline = Instant::now() + RESTART_WAIT;
    let mut told = false;
    loop {
        let name = inspect.short_name().to_string();
        if let Some(dir) = inspect.cgroup_dir(layout) {
            let mut target = Target::from_dir(&dir, layout.version)?;
            target.container = Some(inspect.container());
            return Ok(target);
        }
        if inspect.state.running {
            bail!(
                "container {name} runs (pid {}) but its memory cgroup was not found under {} (give the cgroup \
                 directory instead)",
                inspect.state.pid,
                layout.memory_root.display()
            );
        }
        if !inspect.state.restarting {
            bail!(
                "container {name} is not running ({}); start it (docker start {name}) and trace it again",
                inspect.describe_state()
            );
        }
        if Instant::now() > deadline {
            bail!("container {name} did not come back from its restart within {} s", RESTART_WAIT.as_secs());
        }
        if !told {
            eprintln!("leaktrace: container {name} is restarting ({}); waiting for it", inspect.describe_state());
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
        inspect = match daemon.inspect(&inspect.id)? {
            Lookup::Found(found) => *found,
            Lookup::NotFound => bail!("container {name} was removed while leaktrace waited for it to restart"),
            Lookup::Unreachable(why) => bail!("{why}"),
        };
    }
}

/// Whether `dir` is (inside) the cgroup of container `id`: the main process may have moved itself elsewhere.
fn dir_names_container(dir: &Path, id: &str) -> bool {
    dir.to_string_lossy().contains(id)
}

/// The memory cgroup path in a `/proc/<pid>/cgroup` text: the v1 line listing `memory`, or the v2 `0::` line.
pub fn memcg_of(text: &str, version: CgroupVersion) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match version {
            CgroupVersion::V1 => controllers.split(',').any(|c| c == "memory"),
            CgroupVersion::V2 => id == "0" && controllers.is_empty(),
        };
        wanted.then(|| path.to_string())
    })
}

#[cfg(test)]
pub(crate) mod tests;
