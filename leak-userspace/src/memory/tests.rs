use std::fs;
use std::time::{Duration, Instant};

use super::*;
use crate::cgroup::subtree;
use crate::cgroup::testing::TestMemcg;

const V1_STAT: &str = include_str!("testdata/memory.stat.v1-6.18");
const V2_STAT: &str = include_str!("testdata/memory.stat.v2-6.1");
const V2_EVENTS: &str = include_str!("testdata/memory.events.v2");

#[test]
fn parse_stat_tolerates_garbage() {
    let m =
        parse_stat("anon 5\n\ngarbage\nfile x\nslab 7 extra\n  sock   9  \nneg -1\nanon_thp 18446744073709551615\n");
    let want: BTreeMap<String, u64> =
        [("anon", 5), ("sock", 9), ("anon_thp", u64::MAX)].map(|(k, v)| (k.to_string(), v)).into();
    assert_eq!(m, want);
}

#[test]
fn parse_real_v1_stat() {
    let m = parse_stat(V1_STAT);
    assert_eq!(m.get("total_rss"), Some(&11214848));
    assert_eq!(m.get("hierarchical_memory_limit"), Some(&9223372036854771712));
    assert_eq!(m.len(), V1_STAT.lines().count());
}

#[test]
fn normalise_v1_prefers_hierarchical_totals() {
    let s = normalise(CgroupVersion::V1, &parse_stat(V1_STAT));
    let want =
        MemorySnapshot { anon: Some(11214848), file: Some(952823808), shmem: Some(9084928), ..Default::default() };
    assert_eq!(s, want, "v1 has no slab/kernel split in memory.stat");
}

#[test]
fn normalise_v1_falls_back_to_local_keys() {
    let s = normalise(CgroupVersion::V1, &parse_stat("cache 100\nrss 200\nrss_huge 100\nshmem 4\n"));
    assert_eq!((s.anon, s.file, s.shmem), (Some(200), Some(100), Some(4)), "rss_huge is part of rss");
}

#[test]
fn normalise_v2() {
    let s = normalise(CgroupVersion::V2, &parse_stat(V2_STAT));
    let want = MemorySnapshot {
        anon: Some(4231168),
        file: Some(1081344),
        slab: Some(1114112),
        kernel: Some(1310720),
        kernel_stack: Some(49152),
        pagetables: Some(135168),
        sock: Some(4096),
        shmem: Some(8192),
        ..Default::default()
    };
    assert_eq!(s, want);
}

#[test]
fn normalise_v2_without_kernel_key_sums_its_parts() {
    let text: String = V2_STAT.lines().filter(|l| !l.starts_with("kernel ")).map(|l| format!("{l}\n")).collect();
    let s = normalise(CgroupVersion::V2, &parse_stat(&text));
    assert_eq!(s.kernel, Some(49152 + 135168 + 7200 + 4096 + 1114112));
    assert_eq!(normalise(CgroupVersion::V2, &BTreeMap::new()), MemorySnapshot::default());
}

fn fake_target(dir: &Path, version: CgroupVersion) -> Target {
    Target { path: dir.to_path_buf(), id: 1, version, container: None }
}

#[test]
fn read_fake_v2_cgroup_with_limited_parent() {
    let t = tempfile::tempdir().unwrap();
    let parent = t.path().join("parent");
    let cg = parent.join("cg");
    fs::create_dir_all(&cg).unwrap();
    fs::write(parent.join("memory.max"), "67108864\n").unwrap();
    fs::write(cg.join("memory.max"), "max\n").unwrap();
    fs::write(cg.join("memory.current"), "7340032\n").unwrap();
    fs::write(cg.join("memory.stat"), V2_STAT).unwrap();
    fs::write(cg.join("memory.events"), V2_EVENTS).unwrap();
    fs::write(cg.join("cgroup.threads"), "10\n11\n12\n").unwrap();
    let s = read_snapshot(&fake_target(&cg, CgroupVersion::V2), subtree(&cg, CgroupVersion::V2).tasks).unwrap();
    let want = MemorySnapshot {
        usage: 7340032,
        limit: Some(67108864),
        pids: Some(3),
        oom_kills: Some(1),
        oom_events: Some(2),
        failcnt: Some(17),
        ..normalise(CgroupVersion::V2, &parse_stat(V2_STAT))
    };
    assert_eq!(s, want);

    fs::write(parent.join("memory.max"), "max\n").unwrap();
    assert_eq!(
        read_snapshot(&fake_target(&cg, CgroupVersion::V2), subtree(&cg, CgroupVersion::V2).tasks).unwrap().limit,
        None
    );
}

#[test]
fn read_fake_v1_cgroup() {
    let t = tempfile::tempdir().unwrap();
    let cg = t.path();
    fs::write(cg.join("memory.usage_in_bytes"), "29450240\n").unwrap();
    fs::write(cg.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
    fs::write(cg.join("memory.stat"), V1_STAT).unwrap();
    fs::write(cg.join("memory.kmem.usage_in_bytes"), "4096000\n").unwrap();
    fs::write(cg.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
    fs::write(cg.join("memory.failcnt"), "42\n").unwrap();
    fs::write(cg.join("tasks"), "1\n2\n").unwrap();
    let s = read_snapshot(&fake_target(cg, CgroupVersion::V1), subtree(cg, CgroupVersion::V1).tasks).unwrap();
    let want = MemorySnapshot {
        usage: 29450240,
        limit: None,
        kernel: Some(4096000),
        pids: Some(2),
        oom_kills: Some(3),
        oom_events: None,
        failcnt: Some(42),
        ..normalise(CgroupVersion::V1, &parse_stat(V1_STAT))
    };
    assert_eq!(s, want);

    // An ancestor's limit shows in hierarchical_memory_limit.
    let stat = V1_STAT.replace("hierarchical_memory_limit 9223372036854771712", "hierarchical_memory_limit 1048576");
    fs::write(cg.join("memory.stat"), stat).unwrap();
    assert_eq!(
        read_snapshot(&fake_target(cg, CgroupVersion::V1), subtree(cg, CgroupVersion::V1).tasks).unwrap().limit,
        Some(1048576)
    );
}

#[test]
fn removed_cgroup_is_a_one_line_error() {
    let e = read_snapshot(&fake_target(Path::new("/nonexistent/cg"), CgroupVersion::V1), 0).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/cg/memory.usage_in_bytes") && msg.contains("removed"), "{msg}");
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("memory.current"), "lots\n").unwrap();
    let msg = read_snapshot(&fake_target(t.path(), CgroupVersion::V2), 0).unwrap_err().to_string();
    assert!(msg.contains("does not hold a number"), "{msg}");
}

/// A real memcg with a limit and a process holding a few MiB of anonymous memory.
#[test]
fn real_memcg_on_this_host() {
    let Some(mut cg) = TestMemcg::create("memory") else { return };
    let limit: u64 = 64 << 20;
    let limit_file = match cg.layout.version {
        CgroupVersion::V1 => "memory.limit_in_bytes",
        CgroupVersion::V2 => "memory.max",
    };
    fs::write(cg.path.join(limit_file), limit.to_string()).unwrap();
    let dir = cg.path.clone();
    // The shell keeps a 4 MB string in its heap, then waits.
    cg.spawn_member(&dir, "x=$(head -c 4000000 /dev/zero | tr '\\0' a); echo ready; sleep 30");
    let target = Target::from_dir(&cg.path, cg.layout.version).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = read_snapshot(&target, subtree(&target.path, target.version).tasks).unwrap();
        if s.anon.unwrap_or(0) >= 4_000_000 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(s.anon.unwrap() >= 4_000_000, "{s:?}");
    assert!(s.usage >= s.anon.unwrap() && s.usage < limit, "{s:?}");
    assert_eq!(s.limit, Some(limit));
    assert!(s.pids.unwrap() >= 1, "{s:?}");
    assert_eq!(s.oom_kills, Some(0));
    assert!(s.failcnt.is_some() && s.file.is_some() && s.kernel.is_some(), "{s:?}");
}

#[test]
fn status_rss_sums_the_three_parts() {
    let text =
        "Name:\theap_leak\nVmRSS:\t  70000 kB\nRssAnon:\t   65536 kB\nRssFile:\t    1024 kB\nRssShmem:\t       4 kB\n";
    assert_eq!(status_rss(text), ("heap_leak".to_string(), 65536 * 1024, (65536 + 1024 + 4) * 1024));
    assert_eq!(status_rss("Name:\tkworker\n"), ("kworker".to_string(), 0, 0), "kernel threads have no Rss lines");
}

#[test]
fn rss_of_this_process_and_a_gone_one() {
    let me = std::process::id();
    let r = processes_rss(&[me, u32::MAX - 1]);
    assert_eq!(r.processes, 2);
    assert!(r.rss_anon > 0 && r.rss >= r.rss_anon);
    assert_eq!(r.main.unwrap().0, me);
}
