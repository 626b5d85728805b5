//! One HTTP/1.0 GET on a daemon's unix socket, read to EOF: Docker's API and CRI-O's info endpoint.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

/// The raw response to `GET path` from the daemon on `socket`, at most `max` bytes, each step within `timeout`.
pub fn get(socket: &Path, host: &str, path: &str, timeout: Duration, max: u64) -> std::io::Result<Vec<u8>> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: leaktrace\r\n\r\n");
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    s.take(max).read_to_end(&mut response)?;
    Ok(response)
}

/// Status code and body of an HTTP/1.x response read to EOF.
pub fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, &[u8])> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(raw) {
        Ok(httparse::Status::Complete(len)) => Ok((response.code.unwrap_or(0), &raw[len..])),
        Ok(httparse::Status::Partial) => bail!("sent an incomplete HTTP response ({} bytes)", raw.len()),
        Err(e) => bail!("sent something that is not HTTP: {e}"),
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A daemon on a unix socket in a temp dir that answers each request with the next canned response and
    //! records the request lines.
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::thread::JoinHandle;

    pub(crate) struct Fake {
        _dir: tempfile::TempDir,
        pub socket: PathBuf,
        pub server: JoinHandle<Vec<String>>,
    }

    pub(crate) fn serve(responses: Vec<String>) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("daemon.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for response in responses {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                requests.push(line.trim_end().to_string());
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {}
                stream.write_all(response.as_bytes()).unwrap();
            }
            requests
        });
        Fake { _dir: dir, socket, server }
    }

    pub(crate) fn http(status: &str, body: &str) -> String {
        format!("HTTP/1.0 {status}\r\nContent-Type: application/json\r\n\r\n{body}")
    }
}
