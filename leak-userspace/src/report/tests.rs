use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use super::*;

pub(crate) fn frame(symbol: Option<&str>, address: u64, kernel: bool) -> Frame {
    Frame {
        symbol: symbol.map(str::to_string),
        module: Some(if kernel { "kernel".into() } else { "app".into() }),
        address: format!("{address:#x}"),
        file: None,
        line: None,
        kernel,
        unwind: None,
    }
}

pub(crate) fn site(kind: &str, outstanding: i64, frames: Vec<Frame>) -> Site {
    Site {
        kind: kind.into(),
        outstanding_bytes: outstanding,
        outstanding_allocs: outstanding / 4096,
        alloc_bytes: outstanding.max(0) as u64 * 2,
        alloc_count: 10,
        slab_cache: (kind == "slab").then(|| "kmalloc-256".into()),
        pids: vec![42],
        comms: vec!["leaker".into()],
        frames,
        label: None,
        region: None,
    }
}

fn sample(t: f64, usage: u64, anon: u64) -> Sample {
    Sample {
        t,
        usage,
        anon: Some(anon),
        file: Some(1 << 20),
        slab: None,
        kernel: Some(2 << 20),
        pids: Some(1),
        limit: Some(128 << 20),
        shmem: Some(0),
        oom_kill: Some(0),
        failcnt: Some(0),
        processes: Some(1),
        rss: Some(anon),
        rss_anon: Some(anon),
        main_process: Some(ProcessRss { pid: 42, comm: "leaker".into(), rss_anon: anon, rss: anon }),
        sites: Some(SiteTotals { anon: anon as i64 - (8 << 20), allocated_bytes: anon, ..Default::default() }),
        ..Default::default()
    }
}

/// A small but complete report, shared by the tests of the modules that read reports.
pub(crate) fn sample_report() -> Report {
    let heap = site(
        "anon",
        64 << 20,
        vec![
            frame(Some("clear_page_erms"), 0xffff_ffff_8100_0000, true),
            frame(Some("malloc"), 0x7f00_0000_1000, false),
            frame(Some("grow_cache"), 0x5555_0000_2000, false),
            frame(Some("main"), 0x5555_0000_1000, false),
        ],
    );
    Report {
        schema: SCHEMA.into(),
        target: TargetInfo {
            cgroup_path: "/sys/fs/cgroup/memory/leaky".into(),
            cgroup_id: 1234,
            cgroup_version: 1,
            container: Some(Container {
                runtime: "docker".into(),
                id: "ab".repeat(32),
                name: "leaky".into(),
                image: Some("leaky:1".into()),
                memory_limit_bytes: Some(128 << 20),
                restart_policy: Some("on-failure".into()),
                restart_count: Some(2),
                oom_killed: Some(true),
                last_exit_code: Some(137),
                ..Default::default()
            }),
            cgroups: vec![FollowedCgroup {
                t: 0.0,
                cgroup_path: "/sys/fs/cgroup/memory/leaky".into(),
                cgroup_id: 1234,
            }],
        },
        kernel: KernelInfo { release: "6.18.0".into(), modes: vec!["memcg-tracepoints".into()], degraded: vec![] },
        window: Window {
            start: "2025-01-01T00:00:00Z".into(),
            end: "2025-01-01T00:00:10Z".into(),
            seconds: 10.0,
            ended_by: "duration elapsed".into(),
        },
        memory: Memory {
            limit_bytes: Some(128 << 20),
            samples: vec![sample(0.0, 10 << 20, 8 << 20), sample(10.0, 80 << 20, 72 << 20)],
        },
        attribution: Attribution {
            heap: None,
            anon: Coverage {
                growth_bytes: 64 << 20,
                attributed_bytes: 64 << 20,
                coverage: Some(1.0),
                unexplained_bytes: 0,
            },
            slab: Coverage { growth_bytes: 0, attributed_bytes: 0, coverage: None, unexplained_bytes: 0 },
            intervals: Vec::new(),
        },
        sites: vec![
            heap.clone(),
            site("slab", 4096, vec![frame(Some("kmem_cache_alloc"), 0xffff_ffff_8200_0000, true)]),
        ],
        oom_kills: vec![OomKill {
            t: 9.5,
            pid: 42,
            comm: "leaker".into(),
            anon_rss_bytes: None,
            sites_before_kill: vec![heap.clone()],
            trigger_pid: 43,
            trigger_comm: "worker".into(),
            rss_bytes: None,
            grew_before_kill: vec![GrowthBeforeKill { seconds: 10.0, covered_seconds: 9.5, sites: vec![heap.clone()] }],
            life: 1,
        }],
        exits: vec![Exit {
            t: 9.6,
            pid: 42,
            comm: "leaker".into(),
            cause: "oom-kill".into(),
            signal: Some(9),
            sender_pid: Some(43),
            sender_comm: Some("worker".into()),
            exit_code: Some(137),
            sender_outside: Some(false),
            lived_seconds: Some(9.6),
            core_dumped: false,
        }],
        sites_early: Some(EarlySites { t: 3.0, sites: vec![Site { outstanding_bytes: 16 << 20, ..heap }] }),
        verdict: Verdict {
            class: "inconclusive".into(),
            confidence: 0.0,
            evidence: vec!["x".into()],
            ..Default::default()
        },
        growth: Growth {
            warmup_seconds: 1.0,
            samples: 1,
            lives: 2,
            restarts: 0,
            trends: vec![Trend {
                name: "anon".into(),
                unit: "bytes".into(),
                rate_per_hour: 23.0 * 1024.0 * 1024.0 * 1024.0,
                steadiness: 1.0,
                change: 64.0 * 1024.0 * 1024.0,
                first: Some(8 << 20),
                last: Some(72 << 20),
            }],
            limit_share: Some(0.625),
            near_limit_share: Some(0.0),
            time_to_limit_seconds: Some(6.9),
        },
        collection: Collection { ringbuf_drops: 3, tracer_cpu_seconds: 0.5, ..Default::default() },
        sampling: Sampling::from_shift(18, 1234),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    Str,
    U64,
    I64,
    F64,
    Bool,
    Arr,
    Obj,
    /// The type, or null.
    Opt(&'static Ty),
}

fn check(v: &Value, ty: Ty, at: &str) {
    let ok = match ty {
        Ty::Str => v.is_string(),
        Ty::U64 => v.is_u64(),
        Ty::I64 => v.is_i64(),
        Ty::F64 => v.is_f64() || v.is_i64(),
        Ty::Bool => v.is_boolean(),
        Ty::Arr => v.is_array(),
        Ty::Obj => v.is_object(),
        Ty::Opt(inner) => {
            if !v.is_null() {
                check(v, *inner, at);
            }
            true
        }
    };
    assert!(ok, "{at}: {v} is not {ty:?}");
}

fn keys(obj: &Value, at: &str, spec: &[(&str, Ty)]) {
    let map = obj.as_object().unwrap_or_else(|| panic!("{at} is not an object"));
    for (key, ty) in spec {
        let v = map.get(*key).unwrap_or_else(|| panic!("{at}.{key} missing"));
        check(v, *ty, &format!("{at}.{key}"));
    }
}

fn check_site(s: &Value, at: &str) {
    use Ty::*;
    keys(
        s,
        at,
        &[
            ("kind", Str),
            ("outstanding_bytes", I64),
            ("outstanding_allocs", I64),
            ("alloc_bytes", U64),
            ("alloc_count", U64),
            ("slab_cache", Opt(&Str)),
            ("pids", Arr),
            ("comms", Arr),
            ("frames", Arr),
            ("region", Opt(&Str)),
        ],
    );
    assert!(["anon", "slab", "page", "percpu", "other"].contains(&s["kind"].as_str().unwrap()));
    for f in s["frames"].as_array().unwrap() {
        keys(
            f,
            &format!("{at}.frames[]"),
            &[
                ("symbol", Opt(&Str)),
                ("module", Opt(&Str)),
                ("address", Str),
                ("file", Opt(&Str)),
                ("line", Opt(&U64)),
                ("kernel", Bool),
            ],
        );
        assert!(f["address"].as_str().unwrap().starts_with("0x"));
    }
}

#[test]
fn every_contract_key_has_its_type() {
    use Ty::*;
    let v = serde_json::to_value(sample_report()).unwrap();
    assert_eq!(v["schema"], SCHEMA);
    keys(
        &v,
        "",
        &[
            ("target", Obj),
            ("kernel", Obj),
            ("window", Obj),
            ("memory", Obj),
            ("attribution", Obj),
            ("sites", Arr),
            ("oom_kills", Arr),
            ("exits", Arr),
            ("sites_early", Opt(&Obj)),
            ("verdict", Obj),
            ("collection", Obj),
            ("sampling", Obj),
        ],
    );
    keys(
        &v["target"],
        "target",
        &[("cgroup_path", Str), ("cgroup_id", U64), ("cgroup_version", U64), ("container", Opt(&Obj))],
    );
    keys(
        &v["target"]["container"],
        "target.container",
        &[
            ("runtime", Str),
            ("id", Str),
            ("name", Str),
            ("image", Opt(&Str)),
            ("memory_limit_bytes", Opt(&U64)),
            ("restart_policy", Opt(&Str)),
            ("restart_count", Opt(&U64)),
            ("oom_killed", Opt(&Bool)),
            ("last_exit_code", Opt(&I64)),
        ],
    );
    for c in v["target"]["cgroups"].as_array().unwrap() {
        keys(c, "target.cgroups[]", &[("t", F64), ("cgroup_path", Str), ("cgroup_id", U64)]);
    }
    keys(&v["kernel"], "kernel", &[("release", Str), ("modes", Arr), ("degraded", Arr)]);
    keys(&v["window"], "window", &[("start", Str), ("end", Str), ("seconds", F64)]);
    keys(&v["memory"], "memory", &[("limit_bytes", Opt(&U64)), ("samples", Arr)]);
    for s in v["memory"]["samples"].as_array().unwrap() {
        let o = Opt(&U64);
        keys(
            s,
            "samples[]",
            &[("t", F64), ("usage", U64), ("anon", o), ("file", o), ("slab", o), ("kernel", o), ("pids", o)],
        );
        assert!(s["slab"].is_null(), "None must serialize as null, not be omitted");
    }
    for cat in ["anon", "slab"] {
        keys(&v["attribution"][cat], cat, &[("growth_bytes", I64), ("attributed_bytes", I64), ("coverage", Opt(&F64))]);
    }
    for (i, s) in v["sites"].as_array().unwrap().iter().enumerate() {
        check_site(s, &format!("sites[{i}]"));
    }
    for k in v["oom_kills"].as_array().unwrap() {
        keys(
            k,
            "oom_kills[]",
            &[
                ("t", F64),
                ("pid", U64),
                ("comm", Str),
                ("anon_rss_bytes", Opt(&U64)),
                ("sites_before_kill", Arr),
                ("trigger_pid", U64),
                ("trigger_comm", Str),
            ],
        );
        for s in k["sites_before_kill"].as_array().unwrap() {
            check_site(s, "sites_before_kill[]");
        }
    }
    keys(&v["verdict"], "verdict", &[("class", Str), ("confidence", F64), ("evidence", Arr), ("recommendations", Arr)]);
    for e in v["exits"].as_array().unwrap() {
        let (u, s, i) = (Opt(&U64), Opt(&Str), Opt(&I64));
        keys(
            e,
            "exits[]",
            &[
                ("t", F64),
                ("pid", U64),
                ("comm", Str),
                ("cause", Str),
                ("signal", i),
                ("sender_pid", u),
                ("sender_comm", s),
                ("exit_code", i),
            ],
        );
        assert!(["oom-kill", "signal", "exit"].contains(&e["cause"].as_str().unwrap()));
    }
    let c = &v["collection"];
    for key in [
        "stack_collisions_kernel",
        "stack_collisions_user",
        "stack_errors",
        "live_map_full",
        "site_map_full",
        "ringbuf_drops",
        "implicit_frees",
        "anon_charge_unmatched_pages",
        "alloc_events",
        "free_events",
        "oom_events",
        "kernel_stacks_reused",
        "kernel_stack_rechecks_changed",
        "recursion_misses",
        "intervals",
        "tracer_peak_rss_bytes",
    ] {
        check(&c[key], U64, &format!("collection.{key}"));
    }
    check(&c["tracer_cpu_seconds"], F64, "collection.tracer_cpu_seconds");
    check(&c["programs"], Arr, "collection.programs");
    keys(&v["sampling"], "sampling", &[("mode", Str), ("rate_bytes", Opt(&U64)), ("kept_allocs", U64)]);
}

#[test]
fn round_trips() {
    let report = sample_report();
    let text = serde_json::to_string(&report).unwrap();
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);
}

#[test]
fn writes_private_file_atomically() {
    let dir = tempfile::tempdir().unwrap();
    write_json(dir.path(), &sample_report()).unwrap();
    let path = dir.path().join("report.json");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let back: Report = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(back, sample_report());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
}

#[test]
fn write_into_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    assert!(write_json(&dir.path().join("absent"), &sample_report()).is_err());
}

#[test]
fn frame_label_falls_back_to_address() {
    assert_eq!(Frame::unknown(0x10, false).label(), "0x10");
    assert_eq!(frame(Some("f"), 0x10, true).label(), "f");
}

#[test]
fn diagnosis_extension_keys_have_their_types() {
    use Ty::*;
    let v = serde_json::to_value(sample_report()).unwrap();
    let o = Opt(&U64);
    for s in v["memory"]["samples"].as_array().unwrap() {
        keys(
            s,
            "samples[]",
            &[
                ("limit", o),
                ("kernel_stack", o),
                ("pagetables", o),
                ("sock", o),
                ("shmem", o),
                ("oom_kill", o),
                ("oom", o),
                ("failcnt", o),
                ("processes", o),
                ("rss", o),
                ("rss_anon", o),
                ("main_process", Opt(&Obj)),
                ("sites", Opt(&Obj)),
            ],
        );
        keys(&s["main_process"], "main_process", &[("pid", U64), ("comm", Str), ("rss_anon", U64), ("rss", U64)]);
        keys(
            &s["sites"],
            "samples[].sites",
            &[("anon", I64), ("slab", I64), ("page", I64), ("percpu", I64), ("other", I64), ("allocated_bytes", U64)],
        );
        assert!(s["pagetables"].is_null());
    }
    for cat in ["anon", "slab"] {
        keys(&v["attribution"][cat], cat, &[("unexplained_bytes", I64)]);
    }
    keys(&v["attribution"], "attribution", &[("intervals", Arr)]);
    let k = &v["oom_kills"][0];
    keys(k, "oom_kills[]", &[("rss_bytes", Opt(&U64)), ("grew_before_kill", Arr), ("life", U64)]);
    let g = &k["grew_before_kill"][0];
    keys(g, "grew_before_kill[]", &[("seconds", F64), ("covered_seconds", F64), ("sites", Arr)]);
    check_site(&g["sites"][0], "grew_before_kill[].sites[]");
    keys(
        &v["growth"],
        "growth",
        &[
            ("warmup_seconds", F64),
            ("samples", U64),
            ("lives", U64),
            ("restarts", U64),
            ("trends", Arr),
            ("limit_share", Opt(&F64)),
            ("near_limit_share", Opt(&F64)),
            ("time_to_limit_seconds", Opt(&F64)),
        ],
    );
    keys(
        &v["growth"]["trends"][0],
        "growth.trends[]",
        &[
            ("name", Str),
            ("unit", Str),
            ("rate_per_hour", F64),
            ("steadiness", F64),
            ("change", F64),
            ("first", o),
            ("last", o),
        ],
    );
}
