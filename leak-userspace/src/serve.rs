//! `--listen`: what the trace knows so far, over HTTP while it runs, for Prometheus (`/metrics`) and pprof
//! scrapers (`/pprof/heap`: `go tool pprof`, Parca, Grafana Alloy). Each connection's request is read in a task of
//! its own and handed to the session's loop, which owns the collector and answers it from a snapshot.
use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{Context, Result};

use crate::{
    export::{metrics, pprof},
    report::Report,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot},
};

/// Where `--listen` serves: a TCP address (a bare port means 127.0.0.1) or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return if path.is_empty() {
                Err("unix: needs a socket path".into())
            } else {
                Ok(Listen::Unix(path.into()))
            };
        }
        if let Ok(port) = s.parse::<u16>() {
            return Ok(Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        s.parse().map(Listen::Tcp).map_err(|_| "expected HOST:PORT, PORT or unix:PATH".into())
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "http://{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One GET to answer.
pub struct Request {
    pub path: String,
    reply: oneshot::Sender<Response>,
}

impl Request {
    pub fn answer(self, response: Response) {
        // The client may have gone: nothing to tell it then.
        let _ = self.reply.send(response);
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: Vec<u8>) -> Self {
        Response { status: 200, content_type, body }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into().into_bytes() }
    }
}

enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

pub struct Server {
    socket: Socket,
    tx: mpsc::Sender<Request>,
    rx: mpsc::Receiver<Request>,
}

/// A request head larger than this is refused: a scraper's GET is a few hundred bytes.
const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request, and to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// Binds `listen`; a unix socket's file is made here and removed when the server goes.
    pub fn bind(listen: &Listen) -> Result<Server> {
        let socket = match listen {
            Listen::Tcp(addr) => {
                let std = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
                std.set_nonblocking(true)?;
                Socket::Tcp(TcpListener::from_std(std)?)
            }
            Listen::Unix(path) => {
                let l = bind_unix(path).with_context(|| format!("cannot listen on {}", path.display()))?;
                Socket::Unix(l, path.clone())
            }
        };
        let (tx, rx) = mpsc::channel(16);
        Ok(Server { socket, tx, rx })
    }

    /// The next request to answer; connections are accepted meanwhile.
    pub async fn next(&mut self) -> Request {
        loop {
            let tx = self.tx.clone();
            tokio::select! {
                Some(request) = self.rx.recv() => return request,
                accepted = accept(&self.socket) => match accepted {
                    Ok(Conn::Tcp(s)) => { tokio::spawn(serve(s, tx)); }
                    Ok(Conn::Unix(s)) => { tokio::spawn(serve(s, tx)); }
                    Err(e) => tracing::debug!("accept failed: {e}"),
                },
            }
        }
    }
}

/// The next request of `server`, when there is one (else this waits forever, for a `select!` arm).
pub async fn next_request(server: &mut Option<Server>) -> Request {
    match server {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Binds a unix socket; a socket file nobody answers on (left by a leaktrace that was killed) is replaced.
fn bind_unix(path: &std::path::Path) -> std::io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let stale = std::os::unix::net::UnixStream::connect(path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
            if !stale {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        other => other,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(socket: &Socket) -> std::io::Result<Conn> {
    match socket {
        Socket::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
        Socket::Unix(l, _) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
    }
}

/// One connection: its request, passed to the loop, then the answer; one request per connection.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, tx: mpsc::Sender<Request>) {
    let response = match tokio::time::timeout(CLIENT_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Head::Get(path))) => {
            let (reply, answer) = oneshot::channel();
            if tx.send(Request { path, reply }).await.is_err() {
                return;
            }
            match answer.await {
                Ok(r) => r,
                Err(_) => Response::text(503, "leaktrace is ending\n"),
            }
        }
        Ok(Ok(Head::Other(method))) => Response::text(405, format!("{method} is not served: GET only\n")),
        Ok(Err(e)) => Response::text(400, format!("{e}\n")),
        Err(_) => return,
    };
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, write_response(&mut stream, &response)).await;
}

enum Head {
    Get(String),
    Other(String),
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the request ended early");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf).context("not an HTTP request")? {
            httparse::Status::Complete(_) => {
                let method = req.method.unwrap_or_default();
                let path = req.path.unwrap_or("/");
                // The query (e.g. pprof's `seconds=`) does not choose what is served.
                let path = path.split('?').next().unwrap_or("/").to_string();
                return Ok(if method == "GET" { Head::Get(path) } else { Head::Other(method.to_string()) });
            }
            httparse::Status::Partial => anyhow::ensure!(buf.len() < MAX_HEAD, "request head too large"),
        }
    }
}

async fn write_response<S: AsyncWrite + Unpin>(stream: &mut S, r: &Response) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&r.body).await?;
    stream.shutdown().await
}

/// Answers `path` from the report as it stands (`snapshot`, taken only for the paths that need it).
pub fn route(path: &str, snapshot: impl FnOnce() -> Result<Report>) -> Response {
    let answer: fn(&Report) -> Response = match path {
        "/metrics" => |r| Response::ok(metrics::CONTENT_TYPE, metrics::render_trace(r).into_bytes()),
        "/pprof/heap" => |r| Response::ok("application/octet-stream", pprof::profile_bytes(r)),
        "/report.json" => |r| match serde_json::to_vec_pretty(r) {
            Ok(json) => Response::ok("application/json", json),
            Err(e) => Response::text(503, format!("{e}\n")),
        },
        "/" => return Response::text(200, INDEX),
        _ => return Response::text(404, format!("{path} is not served\n{INDEX}")),
    };
    match snapshot() {
        Ok(report) => answer(&report),
        Err(e) => Response::text(503, format!("cannot read the trace: {e:#}\n")),
    }
}

const INDEX: &str = "leaktrace serves:\n  /metrics      Prometheus metrics\n  /pprof/heap   the outstanding memory by \
                     site, as a pprof profile (go tool pprof, Parca, Grafana Alloy)\n  /report.json  report.json as it \
                     would read if the trace ended now\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!("9464".parse(), Ok(Listen::Tcp("127.0.0.1:9464".parse().unwrap())));
        assert_eq!("0.0.0.0:80".parse(), Ok(Listen::Tcp("0.0.0.0:80".parse().unwrap())));
        assert_eq!("[::1]:9464".parse(), Ok(Listen::Tcp("[::1]:9464".parse().unwrap())));
        assert_eq!("unix:/run/lt.sock".parse(), Ok(Listen::Unix("/run/lt.sock".into())));
        assert!("unix:".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
        assert!("99999".parse::<Listen>().is_err());
    }

    /// A real socket and a real client: the request comes to the owner of the data, the answer goes back.
    #[test]
    fn a_get_is_answered_by_the_loop_and_other_methods_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut server = Server::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
            let Socket::Tcp(l) = &server.socket else { unreachable!() };
            let addr = l.local_addr().unwrap();
            let client = |req: &'static str| async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            };
            let get = tokio::spawn(client("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"));
            let request = server.next().await;
            assert_eq!(request.path, "/metrics");
            request.answer(Response::ok("text/plain", b"up 1\n".to_vec()));
            let got = get.await.unwrap();
            assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nup 1\n"), "{got}");
            assert!(got.contains("Content-Length: 5\r\n"), "{got}");
            let post = tokio::spawn(client("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
            let other = tokio::time::timeout(Duration::from_millis(300), server.next()).await;
            assert!(other.is_err(), "a POST never reaches the loop");
            assert!(post.await.unwrap().starts_with("HTTP/1.1 405"));
        });
    }

    #[test]
    fn a_unix_socket_is_removed_with_its_server_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lt.sock");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let server = Server::bind(&Listen::Unix(path.clone())).unwrap();
            assert!(path.exists());
            let again = Server::bind(&Listen::Unix(path.clone())).err().unwrap();
            assert!(format!("{again:#}").contains("cannot listen on"), "a live socket is not taken over: {again:#}");
            drop(server);
            assert!(!path.exists());
            // What a killed leaktrace leaves: a socket file nobody listens on.
            drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
            assert!(path.exists());
            drop(Server::bind(&Listen::Unix(path.clone())).unwrap());
        });
        assert!(!path.exists());
    }
}
