use std::os::unix::net::UnixListener;

use super::*;

pub(crate) const ID: &str = "d63c27cb22dc545e8e2ec1b7c224a9eef1e1f86aeaec636e16c45c1c00d60623";

/// Trimmed from a real `docker inspect` of a container started with `--memory 32m --restart on-failure:3` and
/// caught between two OOM kills (Docker 20.10).
pub(crate) fn inspect_json(status: &str, pid: u32) -> String {
    format!(
        r#"{{"Id":"{ID}","Created":"2026-11-23T22:35:32.054246631Z","Path":"/bin/oom_leak","Args":["16","60"],
        "State":{{"Status":"{status}","Running":{},"Paused":false,"Restarting":{},"OOMKilled":true,"Dead":false,
        "Pid":{pid},"ExitCode":137,"Error":"","StartedAt":"2026-11-23T22:35:32.369991086Z"}},
        "Image":"sha256:0c98ae0661ba","Name":"/leaky","RestartCount":2,"Driver":"overlay2",
        "HostConfig":{{"NetworkMode":"none","RestartPolicy":{{"Name":"on-failure","MaximumRetryCount":3}},
        "Memory":33554432,"CgroupParent":""}},"Config":{{"Image":"leaky:1","Cmd":["/bin/oom_leak"]}}}}"#,
        status == "running",
        status == "restarting"
    )
}

/// A Docker daemon that answers each request with the next canned response and records the request lines.
pub(crate) struct FakeDaemon {
    fake: unix_http::fake::Fake,
    pub daemon: Daemon,
}

impl FakeDaemon {
    fn requests(self) -> Vec<String> {
        self.fake.server.join().unwrap()
    }
}

pub(crate) fn serve(responses: Vec<String>) -> FakeDaemon {
    let fake = unix_http::fake::serve(responses);
    let daemon = Daemon::parse(&format!("unix://{}", fake.socket.display())).unwrap();
    FakeDaemon { fake, daemon }
}

pub(crate) use unix_http::fake::http;

#[test]
fn inspects_found_missing_and_ambiguous_containers() {
    let fake = serve(vec![
        http("200 OK", &inspect_json("restarting", 0)),
        http("404 Not Found", r#"{"message":"No such container: nope"}"#),
        http("400 Bad Request", r#"{"message":"multiple IDs found with provided prefix: d6"}"#),
    ]);
    let Lookup::Found(found) = fake.daemon.inspect("/leaky").unwrap() else { panic!("not found") };
    assert_eq!((found.id.as_str(), found.short_name(), found.state.restarting), (ID, "leaky", true));
    assert!(matches!(fake.daemon.inspect("nope").unwrap(), Lookup::NotFound));
    let e = fake.daemon.inspect("d6").unwrap_err().to_string();
    assert!(e.ends_with("answered 400: multiple IDs found with provided prefix: d6"), "{e}");
    assert!(e.starts_with("the Docker daemon at unix://"), "{e}");
    let requests = fake.requests();
    assert_eq!(
        requests,
        [
            "GET /containers/leaky/json HTTP/1.0",
            "GET /containers/nope/json HTTP/1.0",
            "GET /containers/d6/json HTTP/1.0"
        ]
    );
}

#[test]
fn garbage_answers_are_errors_not_panics() {
    let fake =
        serve(vec!["not http at all\r\n\r\n".into(), http("200 OK", "{\"Id\": 3}"), "HTTP/1.0 200 OK\r\n".into()]);
    for expected in ["not HTTP", "cannot read", "incomplete HTTP response"] {
        let e = format!("{:#}", fake.daemon.inspect("leaky").unwrap_err());
        assert!(e.contains(expected), "{e}");
    }
}

#[test]
fn unreachable_daemon_says_where_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Daemon::parse(&format!("unix://{}/docker.sock", dir.path().display())).unwrap();
    let Lookup::Unreachable(why) = missing.inspect("leaky").unwrap() else { panic!("reached a missing socket") };
    assert!(why.contains(&format!("unix://{}/docker.sock", dir.path().display())), "{why}");
    assert!(why.contains("is dockerd running? set DOCKER_HOST"), "{why}");
    // A socket nobody listens on any more.
    let socket = dir.path().join("stale.sock");
    drop(UnixListener::bind(&socket).unwrap());
    let stale = Daemon::parse(&format!("unix://{}", socket.display())).unwrap();
    assert!(matches!(stale.inspect("leaky").unwrap(), Lookup::Unreachable(_)));
}

#[test]
fn names_that_cannot_be_containers_are_not_sent() {
    let daemon = Daemon::parse("unix:///nonexistent/docker.sock").unwrap();
    for bad in ["", "-x", "a/b", "a b", "a%2fb", "../x", "a?b"] {
        assert!(daemon.inspect(bad).is_err(), "{bad:?}");
        assert!(!is_reference(bad), "{bad:?}");
    }
    for good in ["leaky", "my_app.1-2", "0", ID] {
        assert!(is_reference(good), "{good}");
    }
}

#[test]
fn docker_host_forms() {
    assert_eq!(Daemon::parse("unix:///run/docker.sock").unwrap().to_string(), "unix:///run/docker.sock");
    for bad in ["tcp://127.0.0.1:2375", "ssh://me@host", "unix://", "/run/docker.sock"] {
        let e = Daemon::parse(bad).unwrap_err().to_string();
        assert!(e.contains("not supported") && e.contains("unix://"), "{e}");
    }
}

#[test]
fn report_facts() {
    let inspect: Inspect = serde_json::from_str(&inspect_json("restarting", 0)).unwrap();
    let c = inspect.container();
    assert_eq!((c.runtime.as_str(), c.id.as_str(), c.name.as_str()), ("docker", ID, "leaky"));
    assert_eq!(c.image.as_deref(), Some("leaky:1"));
    assert_eq!(c.memory_limit_bytes, Some(32 << 20));
    assert_eq!(c.restart_policy.as_deref(), Some("on-failure"));
    assert_eq!((c.restart_count, c.oom_killed, c.last_exit_code), (Some(2), Some(true), Some(137)));
    // A minimal answer (other runtimes implementing the API, old daemons) leaves the extras empty.
    let minimal: Inspect =
        serde_json::from_str(&format!(r#"{{"Id":"{ID}","Name":"/x","State":{{"Status":"exited"}}}}"#)).unwrap();
    let c = minimal.container();
    assert_eq!((c.image, c.memory_limit_bytes, c.restart_policy), (None, None, None));
}

#[test]
fn memcg_line_of_proc_cgroup() {
    let v1 = "12:pids:/docker/abc\n5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n";
    assert_eq!(memcg_of(v1, CgroupVersion::V1).as_deref(), Some("/docker/abc"));
    assert_eq!(memcg_of(v1, CgroupVersion::V2).as_deref(), Some("/docker/abc"));
    assert_eq!(memcg_of("3:memory,hugetlb:/a:b\n", CgroupVersion::V1).as_deref(), Some("/a:b"));
    assert_eq!(memcg_of("1:name=systemd:/x\n", CgroupVersion::V1), None);
    assert_eq!(memcg_of("", CgroupVersion::V2), None);
}

#[test]
fn cgroup_dir_of_running_and_stopped_containers() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("memory");
    for d in [String::new(), format!("docker/{ID}")] {
        std::fs::create_dir_all(root.join(&d)).unwrap();
        std::fs::write(root.join(&d).join("cgroup.procs"), "").unwrap();
    }
    let layout = CgroupLayout { memory_root: root.clone(), version: CgroupVersion::V1, unified: None };
    // This test process is not in the container's cgroup, so the id found in the tree decides.
    let running: Inspect = serde_json::from_str(&inspect_json("running", std::process::id())).unwrap();
    assert_eq!(running.cgroup_dir(&layout), Some(root.join(format!("docker/{ID}"))));
    let restarting: Inspect = serde_json::from_str(&inspect_json("restarting", 0)).unwrap();
    assert_eq!(restarting.cgroup_dir(&layout), None);
}

#[test]
fn a_pod_container_is_named_by_kubelets_labels() {
    let json = inspect_json("running", 7).replace(
        r#""Config":{"Image":"leaky:1","#,
        r#""Config":{"Image":"leaky:1","Labels":{"io.kubernetes.pod.name":"web-7f9c","io.kubernetes.pod.namespace":"shop","io.kubernetes.container.name":"api"},"#,
    );
    let inspect: Inspect = serde_json::from_str(&json).unwrap();
    let c = inspect.container();
    assert_eq!((c.name.as_str(), c.pod.as_deref(), c.namespace.as_deref()), ("api", Some("web-7f9c"), Some("shop")));
    let plain: Inspect = serde_json::from_str(&inspect_json("running", 7)).unwrap();
    assert_eq!((plain.container().name.as_str(), plain.container().pod), ("leaky", None));
}
