//! Naming a container by asking CRI-O: its info endpoint (`GET /containers/<id>` on the daemon's unix socket,
//! what cAdvisor asks) answers with the container's labels, among them the CRI labels kubelet sets that name the
//! pod, its namespace and the container, and its image.
use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{cri_container, socket_from_env, unix_http};
use crate::report::Container;

/// Where CRI-O listens unless `CRIO_SOCKET` says otherwise.
const DEFAULT_SOCKET: &str = "/var/run/crio/crio.sock";
/// A call that takes longer is given up: naming a container must not hold the agent up.
const TIMEOUT: Duration = Duration::from_secs(3);
/// A container's info is a few KiB; anything this large is not one.
const MAX_RESPONSE: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crio {
    socket: PathBuf,
}

/// The part of CRI-O's `ContainerInfo` (pkg/types) read here.
#[derive(Debug, Deserialize)]
struct Info {
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: HashMap<String, String>,
}

impl Crio {
    /// The daemon `CRIO_SOCKET` names (a socket path, `unix://` optional), else the default socket.
    pub fn from_env() -> Self {
        Crio { socket: socket_from_env("CRIO_SOCKET", DEFAULT_SOCKET) }
    }

    /// Whether a daemon could be listening (its socket exists).
    pub fn present(&self) -> bool {
        self.socket.exists()
    }

    /// What CRI-O says of container `id` (its full id, as its cgroup names it).
    pub fn lookup(&self, id: &str) -> Result<Option<Container>> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{id:?} cannot be a CRI-O container id");
        }
        let at = || format!("CRI-O at {}", self.socket.display());
        let raw = unix_http::get(&self.socket, "crio", &format!("/containers/{id}"), TIMEOUT, MAX_RESPONSE)
            .with_context(|| format!("cannot ask {}", at()))?;
        let (status, body) = unix_http::parse_response(&raw).with_context(at)?;
        match status {
            200 => {
                let info: Info = serde_json::from_slice(body)
                    .with_context(|| format!("{} sent container info leaktrace cannot read", at()))?;
                Ok(Some(cri_container("cri-o", id.into(), &info.image, |name| info.labels.get(name).cloned())))
            }
            404 => Ok(None),
            _ => bail!("{} answered {status}: {}", at(), String::from_utf8_lossy(body).lines().next().unwrap_or("")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::unix_http::fake::{http, serve};

    const ID: &str = "4c2b7e0f9a8d6e5c3b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c";

    /// Shaped as CRI-O's `ContainerInfo` answers (pkg/types/types.go), with the labels kubelet sets.
    fn info_json() -> String {
        format!(
            r#"{{"name":"k8s_api_web-7f9c_shop_0b1c_0","pid":4242,"image":"registry.local/shop/api:1.4",
            "image_ref":"sha256:5d0da3dc9764","created_time":1764633600000000000,
            "labels":{{"io.kubernetes.container.name":"api","io.kubernetes.pod.name":"web-7f9c",
            "io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.uid":"0b1c"}},
            "annotations":{{"io.kubernetes.container.restartCount":"2"}},
            "crio_annotations":{{"io.kubernetes.cri-o.ContainerID":"{ID}"}},
            "log_path":"/var/log/pods/shop_web-7f9c_0b1c/api/2.log","root":"/var/lib/containers/storage/overlay/x/merged",
            "sandbox":"9f8e7d6c5b4a","ip_addresses":["10.88.0.7"]}}"#
        )
    }

    #[test]
    fn a_pod_container_is_named_by_the_cri_labels() {
        let fake = serve(vec![
            http("200 OK", &info_json()),
            http("404 Not Found", "can't find the container with id 00"),
            http("500 Internal Server Error", "boom\nmore"),
            http("200 OK", "{\"labels\": 3}"),
        ]);
        let crio = Crio { socket: fake.socket.clone() };
        let c = crio.lookup(ID).unwrap().unwrap();
        assert_eq!((c.runtime.as_str(), c.id.as_str(), c.name.as_str()), ("cri-o", ID, "api"));
        assert_eq!((c.pod.as_deref(), c.namespace.as_deref()), (Some("web-7f9c"), Some("shop")));
        assert_eq!(c.image.as_deref(), Some("registry.local/shop/api:1.4"));
        assert_eq!(crio.lookup("00").unwrap(), None);
        let e = crio.lookup("01").unwrap_err().to_string();
        assert!(e.starts_with("CRI-O at ") && e.ends_with("answered 500: boom"), "{e}");
        let e = format!("{:#}", crio.lookup("02").unwrap_err());
        assert!(e.contains("cannot read"), "{e}");
        assert!(crio.lookup("../info").is_err(), "not an id: never sent");
        let requests = fake.server.join().unwrap();
        assert_eq!(
            requests,
            [
                "GET /containers/{ID} HTTP/1.0".replace("{ID}", ID),
                "GET /containers/00 HTTP/1.0".into(),
                "GET /containers/01 HTTP/1.0".into(),
                "GET /containers/02 HTTP/1.0".into()
            ]
        );
    }

    #[test]
    fn an_absent_daemon_is_an_error_saying_where() {
        let dir = tempfile::tempdir().unwrap();
        let crio = Crio { socket: dir.path().join("crio.sock") };
        assert!(!crio.present());
        let e = format!("{:#}", crio.lookup(ID).unwrap_err());
        assert!(e.contains("cannot ask CRI-O at") && e.contains("crio.sock"), "{e}");
    }
}
