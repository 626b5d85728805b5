use super::*;

/// A profile as V8's `HeapProfiler.getSamplingProfile` returns it: `main` -> `handle` -> `keep` holds 3 samples
/// of 64 KiB; node's own module code holds one.
const PROFILE: &str = r#"{"head":{"callFrame":{"functionName":"(root)","scriptId":"0","url":"","lineNumber":-1,"columnNumber":-1},"selfSize":0,"id":1,"children":[
  {"callFrame":{"functionName":"main","scriptId":"3","url":"/srv/app.js","lineNumber":30,"columnNumber":0},"selfSize":0,"id":2,"children":[
    {"callFrame":{"functionName":"handle","scriptId":"3","url":"/srv/app.js","lineNumber":20,"columnNumber":2},"selfSize":0,"id":3,"children":[
      {"callFrame":{"functionName":"keep","scriptId":"3","url":"/srv/app.js","lineNumber":9,"columnNumber":4},"selfSize":229376,"id":4,"children":[]}]},
    {"callFrame":{"functionName":"","scriptId":"4","url":"node:internal/modules/cjs/loader","lineNumber":100,"columnNumber":1},"selfSize":65536,"id":5,"children":[]}]}]},
 "samples":[{"size":65536,"nodeId":4,"ordinal":1},{"size":65536,"nodeId":4,"ordinal":2},{"size":65536,"nodeId":4,"ordinal":3},{"size":65536,"nodeId":5,"ordinal":4}]}"#;

fn profile() -> Vec<Record> {
    records(&serde_json::from_str(PROFILE).unwrap())
}

#[test]
fn a_profiles_stacks_are_its_nodes_with_live_bytes_leaf_first() {
    let r = profile();
    assert_eq!(r.len(), 2);
    let names: Vec<&str> = r[0].frames.iter().filter_map(|f| f.symbol.as_deref()).collect();
    assert_eq!(names, ["keep", "handle", "main"]);
    assert_eq!((r[0].frames[0].file.as_deref(), r[0].frames[0].line), (Some("/srv/app.js"), Some(10)));
    assert_eq!(r[0].bytes, 229376.0);
    // 3 samples of 64 KiB at a 32 KiB interval: each stands for 1 / (1 - e^-2) objects.
    assert!((r[0].objects - 3.0 / (1.0 - (-2.0f64).exp())).abs() < 1e-9, "{}", r[0].objects);
    assert_eq!(r[1].frames[0].symbol.as_deref(), Some("(anonymous)"));
    assert_ne!(r[0].frames[0].address, r[0].frames[1].address, "two functions are two pprof locations");
}

#[test]
fn sites_are_named_by_the_application_function_not_nodes_own_code() {
    let mut heap = NodeHeap::start().unwrap();
    heap.profiles.insert(std::process::id(), profile());
    let comms = HashMap::from([(std::process::id(), "node".to_string())]);
    let sites = heap.sites(&comms, None);
    let keep = sites.iter().find(|s| s.outstanding_bytes == 229376).unwrap();
    assert_eq!(keep.label.as_deref(), Some("keep"));
    assert_eq!((keep.kind.as_str(), keep.comms.clone()), ("heap", vec!["node".to_string()]));
    let internal = sites.iter().find(|s| s.outstanding_bytes == 65536).unwrap();
    assert!(crate::stacks::runtime::is_internal(&internal.frames[0]), "node's loader is node's machinery");
    assert_eq!(crate::verdict::runtime::runtime(sites.iter()), Some(crate::stacks::runtime::Runtime::Node));
    // A process gone holds nothing any more.
    heap.profiles.insert(u32::MAX, profile());
    let gone: i64 = heap.sites(&comms, None).iter().map(|s| s.outstanding_bytes).sum();
    assert_eq!(gone, 229376 + 65536);
    assert!(heap.stop(Vec::new()).is_empty(), "no process was offered");
}

#[test]
fn listening_sockets_are_read_from_proc_net_tcp() {
    let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:240D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   2: 0100007F:240D 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9999 1 0000000000000000 100 0 0 10 0";
    let ours = HashSet::from([4242, 4343, 4444]);
    let got = parse_listening(tcp, &ours);
    assert_eq!(
        got,
        [SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9229), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)],
        "a wildcard listener is reached on loopback; connections and others' sockets are no listeners"
    );
}

#[test]
fn a_process_not_catching_sigusr1_is_not_signalled() {
    // The test binary leaves SIGUSR1 at its default (which would kill it).
    assert!(!catches_sigusr1(std::process::id()));
    assert!(!is_node(std::process::id()));
}

#[test]
fn an_http_answer_is_read_by_its_length_on_a_connection_left_open() {
    let body = r#"[{"webSocketDebuggerUrl":"ws://127.0.0.1:9229/abc"}]"#;
    let answer = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Split into short reads, and nothing after the body (a read past it would block).
    struct Trickle(Vec<u8>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            assert!(!self.0.is_empty(), "read past the answer");
            let n = self.0.len().min(7).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }
    assert_eq!(read_http_body(&mut Trickle(answer.into_bytes())).unwrap(), body.as_bytes());
    let refused = read_http_body(&mut Trickle(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()));
    assert!(refused.unwrap_err().to_string().contains("404"));
}
