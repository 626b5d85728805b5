//! `leaktrace agent` on a real Docker daemon and a real containerd (each started by the test, on a socket of its
//! own) with real containers, read by its real consumers: Debian's Prometheus scrapes `/metrics` and `go tool
//! pprof` fetches a container's profile. A container started after the agent is picked up, a removed one dropped
//! (its last report kept); a pod's container is named by pod and container; SIGTERM ends the agent with every
//! window written, SIGKILL with nothing left attached either.
use std::{
    ffi::OsStr,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use leaktrace_e2e::{
    app_label, assert_nothing_attached,
    containerd::{Containerd, K8S_NAMESPACE},
    describe,
    dockerd::{static_workload, Dockerd},
    items,
    prometheus::{free_port, get, pprof_top, query, start_prometheus},
    read_report, require_root, serial, Leaktrace,
};

/// Polls `check` every second until it gives a value, for at most `secs`.
fn within<T>(secs: u64, what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let begun = Instant::now();
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        ensure!(begun.elapsed() < Duration::from_secs(secs), "after {secs} s: {what}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The agent's `/pprof/` listing.
fn listing(agent: &str) -> Result<String> {
    let (status, body) = get(agent, "/pprof/")?;
    ensure!(status == 200, "/pprof/ answered {status}");
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Two services in containers, one leaking 256 KiB session records at 4 MiB/s (session_heap.c, built static
/// `-O2 -g` as a distro would, no frame pointers), one steady; a third starts after the agent. Prometheus must
/// get the leaking container's verdict and its top site's function by container name, `go tool pprof` the
/// leaking function from that container's profile; the removed container leaves the metrics, its report stays.
#[test]
fn the_agent_names_each_containers_leak_for_prometheus_and_pprof() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let started = Instant::now();
    let dockerd = Dockerd::start()?;
    let work = tempfile::tempdir()?;
    let leaker = static_workload(work.path(), "session_heap", &["-O2", "-g"])?;
    let steady = static_workload(work.path(), "steady_service", &["-O2", "-g"])?;
    dockerd.import_image_with(
        "leaktrace-e2e-services:1",
        &[(leaker, "bin/session_heap".into()), (steady, "bin/steady_service".into())],
    )?;
    let tag = std::process::id();
    let (leaky, calm, late) =
        (format!("lt-agent-leaky-{tag}"), format!("lt-agent-calm-{tag}"), format!("lt-agent-late-{tag}"));
    let run = |name: &str, cmd: &[&str]| {
        let head = ["run", "-d", "--name", name, "--network", "none", "--memory", "512m", "leaktrace-e2e-services:1"];
        dockerd.docker(&[&head[..], cmd].concat())
    };
    run(&leaky, &["/bin/session_heap", "4", "90", "120"])?;
    run(&calm, &["/bin/steady_service", "16", "600"])?;

    let listen = format!("127.0.0.1:{}", free_port()?);
    let out_dir = work.path().join("out");
    let args = [
        OsStr::new("agent"),
        OsStr::new("--select"),
        OsStr::new("lt-agent-*"),
        OsStr::new("--listen"),
        OsStr::new(&listen),
        OsStr::new("--interval"),
        OsStr::new("1"),
        OsStr::new("--window"),
        OsStr::new("60"),
        OsStr::new("--output-dir"),
        out_dir.as_os_str(),
    ];
    let host = dockerd.host();
    let mut agent = Leaktrace::spawn_with_env(&args, &[("DOCKER_HOST", OsStr::new(&host))])?;
    agent.wait_attached(Duration::from_secs(20))?;
    let (_prometheus, prometheus) = start_prometheus(work.path(), &listen)?;
    run(&late, &["/bin/steady_service", "8", "600"])?;
    within(15, "the container started after the agent is not picked up", || {
        Ok(listing(&listen)?.contains(&format!("/pprof/{late}/heap")).then_some(()))
    })?;

    let (verdict, top) = within(60, "no heap-leak verdict with a top site in Prometheus", || {
        let verdict = query(&prometheus, &format!("leaktrace_verdict_info{{container=\"{leaky}\"}}"))?;
        let top = query(&prometheus, &format!("leaktrace_site_outstanding_bytes{{container=\"{leaky}\",rank=\"1\"}}"))?;
        let class = verdict.first().and_then(|v| v["metric"]["class"].as_str()).unwrap_or("");
        Ok((class == "heap-leak" && !top.is_empty()).then(|| (verdict[0].clone(), top[0].clone())))
    })?;
    eprintln!("prometheus: verdict {verdict}\nprometheus: top site {top}");
    let function = top["metric"]["function"].as_str().unwrap_or("");
    ensure!(function == "fill_record", "the leaking container's top site in Prometheus is {function:?}");
    ensure!(verdict["metric"]["image"] == "leaktrace-e2e-services:1", "the image label: {verdict}");
    for name in [&calm, &late] {
        let v = query(&prometheus, &format!("leaktrace_verdict_info{{container=\"{name}\"}}"))?;
        let class = v.first().and_then(|v| v["metric"]["class"].as_str()).unwrap_or("");
        ensure!(["no-leak", "inconclusive"].contains(&class), "steady container {name} has verdict {class:?}");
    }
    let containers = query(&prometheus, "leaktrace_containers")?;
    ensure!(containers.first().is_some_and(|v| v["value"][1] == "3"), "leaktrace_containers: {containers:?}");

    // go tool pprof fetches one container's profile over HTTP.
    let top_text = pprof_top(&format!("http://{listen}/pprof/{leaky}/heap"))?;
    ensure!(top_text.lines().any(|l| l.contains("fill_record")), "go tool pprof -top does not show fill_record");
    let (status, _) = get(&listen, "/pprof/nobody/heap")?;
    ensure!(status == 404, "an unknown container's profile answered {status}");

    // A removed container leaves the metrics; its last report stays for a while.
    dockerd.docker(&["rm", "-f", &calm])?;
    within(15, "the removed container is still traced", || {
        Ok(listing(&listen)?.contains(&format!("/pprof/{calm}/heap (gone)")).then_some(()))
    })?;
    let (_, metrics) = get(&listen, "/metrics")?;
    let metrics = String::from_utf8_lossy(&metrics);
    ensure!(!metrics.contains(&format!("container=\"{calm}\"")), "the removed container is still in /metrics");
    let (status, body) = get(&listen, &format!("/report/{calm}.json"))?;
    ensure!(status == 200, "the removed container's report answered {status}");
    let gone: serde_json::Value = serde_json::from_slice(&body)?;
    ensure!(gone["window"]["ended_by"].as_str().is_some_and(|e| e.contains("removed")), "{}", gone["window"]);

    // SIGTERM: every window written, nothing left attached.
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGTERM) };
    let done = agent.wait(Duration::from_secs(60))?;
    ensure!(done.status.success(), "the agent failed: {}", describe(&done));
    assert_nothing_attached()?;
    let written = |name: &str| -> Result<serde_json::Value> {
        let dir = out_dir.join(name);
        let mut runs: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("nothing written for {name}"))?
            .flatten()
            .map(|e| e.path())
            .collect();
        runs.sort();
        let last = runs.last().with_context(|| format!("no window of {name} in {}", dir.display()))?;
        ensure!(last.join("profile.pb.gz").is_file(), "no profile in {}", last.display());
        read_report(last)
    };
    let report = written(&leaky)?;
    let top = items(&report["sites"]).iter().find(|s| s["kind"] == "anon").context("no anon site")?;
    ensure!(app_label(top) == Some("fill_record"), "the written report's top anon site is {:?}", app_label(top));
    ensure!(report["target"]["container"]["name"] == leaky.as_str(), "{}", report["target"]);
    ensure!(written(&calm)?["window"]["ended_by"].as_str().is_some_and(|e| e.contains("removed")));
    if report["verdict"]["class"] != "heap-leak" {
        bail!("the written report's verdict is {}", report["verdict"]);
    }
    eprintln!("agent e2e took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A report as the agent serves it now, when it serves one.
fn served_report(agent: &str, key: &str) -> Result<Option<serde_json::Value>> {
    let (status, body) = get(agent, &format!("/report/{key}.json"))?;
    Ok(if status == 200 { Some(serde_json::from_slice(&body)?) } else { None })
}

/// A pod's container run by a real containerd as kubelet runs it (its image imported from an OCI archive, in
/// containerd's `k8s.io` namespace, a `kubepods/burstable/pod<uid>/<id>` cgroup, the CRI labels set) leaking
/// session records; a plain `ctr` container beside it. The agent names the first by namespace, pod, container and
/// image (asked of containerd's API), the second by its id; `--cgroup namespace/pod/container` traces the pod's
/// container alone.
#[test]
fn containerd_pods_are_named_by_namespace_pod_and_container() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let containerd = Containerd::start()?;
    let work = tempfile::tempdir()?;
    let leaker = static_workload(work.path(), "session_heap", &["-O2", "-g"])?;
    let tag = std::process::id();
    let image = format!("docker.io/leaktrace/session-heap:{tag}");
    let files = [(leaker, "bin/session_heap".to_string())];
    for namespace in [K8S_NAMESPACE, "default"] {
        containerd.import_image(namespace, &image, &files)?;
    }
    let (pod_id, plain_id) = (format!("1{tag:063x}"), format!("2{tag:063x}"));
    let pod = format!("web-{tag}");
    let labels = [
        ("io.kubernetes.pod.name", pod.as_str()),
        ("io.kubernetes.pod.namespace", "shop"),
        ("io.kubernetes.container.name", "api"),
    ];
    containerd.run(K8S_NAMESPACE, &image, &pod_id, &labels, &["/bin/session_heap", "4", "90", "120"])?;
    containerd.run("default", &image, &plain_id, &[], &["/bin/sh", "-c", "sleep 600"])?;
    let socket = containerd.socket();
    let env = [("CONTAINERD_ADDRESS", socket.as_os_str())];

    let listen = format!("127.0.0.1:{}", free_port()?);
    let plain_key = &plain_id[..12];
    let args = ["agent", "--select", "shop/*", "--select", plain_key, "--listen", &listen, "--interval", "1"];
    let mut agent = Leaktrace::spawn_with_env(&args, &env)?;
    agent.wait_attached(Duration::from_secs(20))?;
    let key = format!("shop/{pod}/api");
    let report = within(45, "no heap-leak verdict for the pod's container", || {
        Ok(served_report(&listen, &key)?.filter(|r| r["verdict"]["class"] == "heap-leak"))
    })?;
    let c = &report["target"]["container"];
    eprintln!("agent: {key}: {c}");
    ensure!(
        c["runtime"] == "containerd"
            && c["pod"] == pod.as_str()
            && c["namespace"] == "shop"
            && c["name"] == "api"
            && c["image"] == image.as_str(),
        "the pod's container as the agent names it: {c}"
    );
    let top = items(&report["sites"]).iter().find(|s| s["kind"] == "anon").context("no anon site")?;
    ensure!(app_label(top) == Some("fill_record"), "the pod's top anon site is {:?}", app_label(top));
    ensure!(listing(&listen)?.contains(&format!("/pprof/{plain_key}/heap")), "the plain container is not traced");
    let (_, metrics) = get(&listen, "/metrics")?;
    let metrics = String::from_utf8_lossy(&metrics);
    let labelled = format!(
        "container=\"api\",container_id=\"{}\",image=\"{image}\",pod=\"{pod}\",namespace=\"shop\"",
        &pod_id[..12]
    );
    ensure!(metrics.contains(&labelled), "no series labelled {labelled} in /metrics");

    // SIGKILL: the programs go with the agent's file descriptors.
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGKILL) };
    let killed = agent.wait(Duration::from_secs(20))?;
    ensure!(!killed.status.success(), "the agent survived SIGKILL");
    assert_nothing_attached()?;

    // A single trace finds the same container by namespace, pod and container.
    let out_dir = work.path().join("trace");
    let trace_args = ["--cgroup", &key, "--duration", "4", "--output", &out_dir.to_string_lossy()];
    let mut trace = Leaktrace::spawn_with_env(&trace_args, &env)?;
    let done = trace.wait(Duration::from_secs(60))?;
    ensure!(done.status.success(), "--cgroup {key} failed: {}", describe(&done));
    let traced = read_report(&out_dir)?;
    let t = &traced["target"];
    ensure!(
        t["cgroup_path"].as_str().is_some_and(|p| p.ends_with(&pod_id)) && t["container"]["pod"] == pod.as_str(),
        "{t}"
    );
    assert_nothing_attached()?;
    Ok(())
}

/// The unwound stacks the agent holds (for all containers), as a steady container's report counts them.
fn distinct_stacks(agent: &str) -> Result<u64> {
    let report = served_report(agent, "batch/web-0/api")?.context("no report of a steady container")?;
    report["collection"]["unwind"]["distinct_stacks"].as_u64().context("no collection.unwind.distinct_stacks")
}

/// A process's resident set in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.parse().ok())
}

/// Pod containers that come and go under a real containerd (a new one about every second, each running a short
/// request loop that allocates and frees, then killed and removed as kubelet removes a finished pod's container)
/// beside three that stay, for three minutes: the agent picks each up (named by pod, asked of containerd) and lets
/// it go, its RSS stays flat once its tables and the kept reports of gone containers are full (the unwound stacks
/// it holds are printed), it loses no event, and SIGTERM leaves nothing attached.
#[test]
fn the_agent_stays_flat_while_containers_come_and_go() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let _one = serial();
    let containerd = Containerd::start()?;
    let work = tempfile::tempdir()?;
    // Position-independent, as Debian builds programs: each container's process runs at addresses of its own, so
    // its stacks are its own too.
    let churn = static_workload(work.path(), "bench_churn", &["-O2", "-g", "-static-pie"])?;
    let tag = std::process::id();
    let image = format!("docker.io/leaktrace/bench-churn:{tag}");
    containerd.import_image(K8S_NAMESPACE, &image, &[(churn, "bin/bench_churn".into())])?;
    // The count leads, so the short ids (the first 12 digits) differ as real containers' do.
    let id = |n: usize| format!("{n:06x}{tag:08x}{:050x}", 0);
    let run = |n: usize, pod: &str, name: &str, seconds: &str| {
        let labels = [
            ("io.kubernetes.pod.name", pod),
            ("io.kubernetes.pod.namespace", "batch"),
            ("io.kubernetes.container.name", name),
        ];
        containerd.run(K8S_NAMESPACE, &image, &id(n), &labels, &["/bin/bench_churn", "mixed", seconds])
    };
    for n in 0..3 {
        run(n, &format!("web-{n}"), "api", "600")?;
    }
    let socket = containerd.socket();
    let env = [("CONTAINERD_ADDRESS", socket.as_os_str())];
    let listen = format!("127.0.0.1:{}", free_port()?);
    let args = ["agent", "--select", "batch/*", "--listen", &listen, "--interval", "1"];
    let mut agent = Leaktrace::spawn_with_env(&args, &env)?;
    agent.wait_attached(Duration::from_secs(20))?;
    let begun = Instant::now();
    let (mut n, mut rss, mut stacks) = (3, Vec::new(), Vec::new());
    while begun.elapsed() < Duration::from_secs(180) {
        run(n, &format!("job-{n}"), "job", "0.4")?;
        // Gone between two of the agent's scans at times, or after a few of them.
        std::thread::sleep(Duration::from_millis(if n % 3 == 0 { 1500 } else { 300 }));
        containerd.remove(K8S_NAMESPACE, &id(n))?;
        n += 1;
        if rss.len() < (begun.elapsed().as_secs() / 30) as usize {
            rss.push(rss_kib(agent.pid()).context("the agent is gone")?);
            stacks.push(distinct_stacks(&listen)?);
        }
    }
    rss.push(rss_kib(agent.pid()).context("the agent is gone")?);
    stacks.push(distinct_stacks(&listen)?);
    eprintln!("agent: {} containers came and went; every 30 s: RSS (KiB) {rss:?}, stacks {stacks:?}", n - 3);
    // The last one went a moment ago: the agent lets it go at its next scan.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, metrics) = get(&listen, "/metrics")?;
    let metrics = String::from_utf8_lossy(&metrics);
    let value =
        |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix("{} ")?.parse::<f64>().ok());
    ensure!(
        value("leaktrace_containers") == Some(3.0),
        "the agent traces {:?} containers, not the 3 left",
        value("leaktrace_containers")
    );
    ensure!(metrics.contains("pod=\"web-0\",namespace=\"batch\""), "the steady pods are not named in /metrics");
    if value("leaktrace_events_dropped_total") != Some(0.0) {
        let report = served_report(&listen, "batch/web-0/api")?.context("no report of a steady container")?;
        bail!(
            "events dropped: {:?}; a steady container's collection: {}",
            value("leaktrace_events_dropped_total"),
            report["collection"]
        );
    }
    ensure!(
        listing(&listen)?.lines().filter(|l| l.ends_with("(gone)")).count() <= 64,
        "more gone reports kept than the bound"
    );
    // Full by 90 s: the gone reports kept are bounded at 64, and about 65 containers go in a minute. What each
    // container pinned (its own files' symbols: 60-120 KiB) grew the RSS 8 MiB a minute when it was kept.
    let (at_90, end) = (rss[2], rss[rss.len() - 1]);
    ensure!(end <= at_90 + 6 * 1024, "the agent's RSS grew from {at_90} KiB at 90 s to {end} KiB at 180 s");
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGTERM) };
    let done = agent.wait(Duration::from_secs(60))?;
    ensure!(done.status.success(), "the agent failed: {}", describe(&done));
    assert_nothing_attached()?;
    Ok(())
}
