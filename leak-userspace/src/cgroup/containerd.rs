//! Naming a container by asking containerd: its API over gRPC on the daemon's unix socket, one unary call per
//! question. Kubelet's containers live in containerd's `k8s.io` namespace and carry the CRI labels that name the
//! pod, its namespace and the container; those of `ctr` and other clients live in namespaces of their own, so
//! each of containerd's namespaces is asked in turn.
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{cri_container, socket_from_env};
use crate::report::Container;

/// Where containerd listens unless `CONTAINERD_ADDRESS` says otherwise.
const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// A call that takes longer is given up: naming a container must not hold the agent up.
const TIMEOUT: Duration = Duration::from_secs(3);
/// gRPC's status for "no such container".
const NOT_FOUND: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Containerd {
    socket: PathBuf,
}

mod proto {
    //! The few messages of containerd's `containers.proto` and `namespaces.proto` (api/services/*/v1) asked
    //! here, as prost derives (prost-build would need `protoc`); the tags are the wire contract.
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetContainerRequest {
        #[prost(string, tag = "1")]
        pub id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetContainerResponse {
        #[prost(message, optional, tag = "1")]
        pub container: Option<Container>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(map = "string, string", tag = "2")]
        pub labels: HashMap<String, String>,
        #[prost(string, tag = "3")]
        pub image: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesRequest {
        #[prost(string, tag = "1")]
        pub filter: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesResponse {
        #[prost(message, repeated, tag = "1")]
        pub namespaces: Vec<Namespace>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Namespace {
        #[prost(string, tag = "1")]
        pub name: String,
    }
}

impl Containerd {
    /// The daemon `CONTAINERD_ADDRESS` names (a socket path, `unix://` optional), else the default socket.
    pub fn from_env() -> Self {
        Containerd { socket: socket_from_env("CONTAINERD_ADDRESS", DEFAULT_SOCKET) }
    }

    /// Whether a daemon could be listening (its socket exists).
    pub fn present(&self) -> bool {
        self.socket.exists()
    }

    /// What containerd says of container `id`, in whichever of its namespaces holds it.
    pub fn lookup(&self, id: &str) -> Result<Option<Container>> {
        // The agent's loop runs on a tokio runtime of its own; a call gets a thread and a runtime of its own.
        let (socket, id) = (self.socket.clone(), id.to_string());
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async { tokio::time::timeout(TIMEOUT, lookup(&socket, &id)).await })
                    .with_context(|| format!("containerd at {} did not answer in time", socket.display()))?
            })
            .join()
            .unwrap_or_else(|_| bail!("the containerd lookup panicked"))
        })
    }
}

async fn lookup(socket: &std::path::Path, id: &str) -> Result<Option<Container>> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to containerd at {}", socket.display()))?;
    let (client, connection) = h2::client::handshake(stream).await.context("containerd's HTTP/2 handshake")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client;
    let namespaces: proto::ListNamespacesResponse = call(
        &mut client,
        "containerd.services.namespaces.v1.Namespaces/List",
        "",
        &proto::ListNamespacesRequest::default(),
    )
    .await?
    .context("containerd listed no namespaces")?;
    for ns in namespaces.namespaces {
        let request = proto::GetContainerRequest { id: id.to_string() };
        let got: Option<proto::GetContainerResponse> =
            call(&mut client, "containerd.services.containers.v1.Containers/Get", &ns.name, &request).await?;
        if let Some(c) = got.and_then(|g| g.container) {
            return Ok(Some(container(c)));
        }
    }
    Ok(None)
}

fn container(c: proto::Container) -> Container {
    cri_container("containerd", c.id, &c.image, |name| c.labels.get(name).cloned())
}

/// One unary gRPC call in containerd namespace `ns`; `None` when the answer is NOT_FOUND.
async fn call<Req: prost::Message, Resp: prost::Message + Default>(
    client: &mut h2::client::SendRequest<Bytes>,
    method: &str,
    ns: &str,
    request: &Req,
) -> Result<Option<Resp>> {
    let mut req =
        http::Request::post(format!("/{method}")).header("content-type", "application/grpc").header("te", "trailers");
    if !ns.is_empty() {
        req = req.header("containerd-namespace", ns);
    }
    let req = req.body(()).context("a gRPC request")?;
    let mut ready = client.clone().ready().await.context("containerd's connection")?;
    let (response, mut body) = ready.send_request(req, false).context("cannot send a request to containerd")?;
    body.send_data(frame(request), true).context("cannot send a request to containerd")?;
    let response = response.await.with_context(|| format!("containerd's answer to {method}"))?;
    let status = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.context("containerd's answer")?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.context("containerd's answer")?;
    // A status comes in the trailers, or in the headers of an answer without a body.
    let status = trailers.as_ref().and_then(|t| t.get("grpc-status")?.to_str().ok()?.parse().ok()).or(status);
    match status {
        Some(0) => Ok(Some(unframe(data.freeze())?)),
        Some(NOT_FOUND) => Ok(None),
        Some(code) => {
            let message = trailers.as_ref().and_then(|t| t.get("grpc-message")?.to_str().ok().map(String::from));
            bail!("containerd answered {method} with status {code}: {}", message.unwrap_or_default())
        }
        None => bail!("containerd's answer to {method} has no status"),
    }
}

/// A gRPC message on the wire: not compressed, its length, its bytes.
fn frame(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(0);
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

fn unframe<M: prost::Message + Default>(mut data: Bytes) -> Result<M> {
    if data.len() < 5 {
        bail!("containerd's answer is cut short");
    }
    let compressed = data.get_u8();
    let len = data.get_u32() as usize;
    if compressed != 0 || len > data.len() {
        bail!("containerd's answer is compressed or cut short");
    }
    M::decode(data.slice(..len)).context("containerd's answer cannot be read")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{KUBE_CONTAINER, KUBE_NAMESPACE, KUBE_POD};

    /// A container as containerd has it, with `labels`.
    fn labelled(id: &str, labels: &[(&str, &str)]) -> proto::Container {
        let labels = labels.iter().map(|&(k, v)| (k.into(), v.into())).collect();
        proto::Container { id: id.into(), labels, image: "registry.local/shop/api:1.4".into() }
    }

    #[test]
    fn a_pod_container_is_named_by_the_cri_labels() {
        let c = container(labelled(
            "abc",
            &[(KUBE_POD, "api-7f9c"), (KUBE_NAMESPACE, "shop"), (KUBE_CONTAINER, "api"), ("other", "x")],
        ));
        assert_eq!(
            (c.name.as_str(), c.pod.as_deref(), c.namespace.as_deref()),
            ("api", Some("api-7f9c"), Some("shop"))
        );
        assert_eq!((c.runtime.as_str(), c.image.as_deref()), ("containerd", Some("registry.local/shop/api:1.4")));
        let plain = container(labelled("abc", &[]));
        assert_eq!((plain.name.as_str(), plain.pod), ("", None));
    }

    #[test]
    fn messages_go_in_grpc_frames_and_come_back() {
        let request = proto::GetContainerRequest { id: "abc".into() };
        let framed = frame(&request);
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5], "uncompressed, 5 bytes: tag 1, length 3, \"abc\"");
        let back: proto::GetContainerRequest = unframe(framed).unwrap();
        assert_eq!(back, request);
        assert!(unframe::<proto::GetContainerRequest>(Bytes::from_static(&[0, 0, 0, 0, 9, 1])).is_err());
        assert!(unframe::<proto::GetContainerRequest>(Bytes::from_static(&[1, 0, 0, 0, 0])).is_err());
    }

    #[test]
    fn the_socket_comes_from_the_environment_or_the_default() {
        // Read as the daemon would be found; the variable is not set in the test environment.
        if std::env::var_os("CONTAINERD_ADDRESS").is_none() {
            assert_eq!(Containerd::from_env().socket, PathBuf::from(DEFAULT_SOCKET));
        }
    }
}
