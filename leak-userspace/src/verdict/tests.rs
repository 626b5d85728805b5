//! The classifier on synthetic series: every class, and the edges (short windows, noisy plateaus, a leak that is
//! also near the limit, a restart loop).
use super::*;
use crate::report::{Exit, Frame, ProcessRss, SiteTotals};
use crate::{
    attribution,
    report::{tests::sample_report, OomKill, Sample},
};

const MIB: u64 = 1 << 20;

/// A deterministic jitter in -0.5..0.5.
fn jitter(i: usize) -> f64 {
    let x = (i as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((x >> 33) as f64 / (1u64 << 31) as f64) - 0.5
}

/// `n` samples one second apart; `f` fills in each from its index.
fn series(n: usize, f: impl Fn(usize, &mut Sample)) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let mut s = Sample {
                t: i as f64,
                usage: 0,
                anon: Some(20 * MIB),
                file: Some(2 * MIB),
                kernel: Some(3 * MIB),
                pids: Some(4),
                limit: Some(512 * MIB),
                ..Default::default()
            };
            f(i, &mut s);
            if s.usage == 0 {
                s.usage = s.anon.unwrap_or(0) + s.file.unwrap_or(0) + s.kernel.unwrap_or(0);
            }
            s
        })
        .collect()
}

fn kill(t: f64, life: u32) -> OomKill {
    let mut k = sample_report().oom_kills[0].clone();
    k.t = t;
    k.life = life;
    k.rss_bytes = Some(60 * MIB);
    k
}

fn judged(samples: Vec<Sample>, kills: Vec<OomKill>, restarts: u32) -> Verdict {
    judged_with(samples, kills, restarts, vec![])
}

/// As `judged`, with these deaths in `exits` (lives end at those of the main process, as the collector has it).
fn judged_with(samples: Vec<Sample>, kills: Vec<OomKill>, restarts: u32, exits: Vec<Exit>) -> Verdict {
    judged_on(sample_report(), samples, kills, restarts, exits)
}

/// As `judged_with`, for a report of other sites.
fn judged_on(mut r: Report, samples: Vec<Sample>, kills: Vec<OomKill>, restarts: u32, exits: Vec<Exit>) -> Verdict {
    r.memory.limit_bytes = samples.last().and_then(|s| s.limit);
    r.attribution = attribution::attribute(&samples, &r.sites);
    let times: Vec<f64> = kills.iter().map(|k| k.t).collect();
    let ends = growth::life_ends(&times, &exits, &samples);
    r.growth = growth::analyse(&samples, &ends, r.memory.limit_bytes, restarts);
    r.memory.samples = samples;
    r.oom_kills = kills;
    r.exits = exits;
    let v = judge(&r);
    eprintln!(
        "{} {:.2}\n  {}\n  > {}",
        v.class,
        v.confidence,
        v.evidence.join("\n  "),
        v.recommendations.join("\n  > ")
    );
    v
}

/// A death of pid `pid` ("steady") at `t`: by `signal` from `sender` (none: an exit with status 3).
fn death(t: f64, pid: u32, signal: Option<i32>, sender: Option<(u32, &str)>) -> Exit {
    Exit {
        t,
        pid,
        comm: "steady".into(),
        cause: if signal.is_some() { "signal" } else { "exit" }.into(),
        signal,
        sender_pid: sender.map(|s| s.0),
        sender_comm: sender.map(|s| s.1.to_string()),
        exit_code: Some(signal.map_or(3, |s| 128 + s)),
        sender_outside: sender.map(|s| s.0 != pid),
        lived_seconds: Some(3.0),
        core_dumped: false,
    }
}

/// The main process of a sample: pid 100 + the life (every 5 s a new one).
fn main_of(i: usize) -> Option<ProcessRss> {
    Some(ProcessRss { pid: 100 + (i / 5) as u32, comm: "steady".into(), rss_anon: 20 * MIB, rss: 22 * MIB })
}

#[test]
fn a_flat_service_killed_from_outside_is_not_memory() {
    let samples = series(30, |i, s| {
        s.main_process = main_of(i);
        s.processes = Some(1);
    });
    let deaths = (0..5).map(|l| death(4.9 + 5.0 * l as f64, 100 + l, Some(9), Some((7, "supervisor")))).collect();
    let v = judged_with(samples, vec![], 0, deaths);
    assert_eq!(v.class, "not-memory");
    assert!(v.confidence >= 0.9, "{}", v.confidence);
    has(&v, "5 death(s) by SIGKILL sent by pid 7 (supervisor) from outside the cgroup: pid 100 (steady) at 4.9 s");
    has(&v, "memory was no cause: no OOM kill");
    assert!(
        v.recommendations[0].contains("ask why pid 7 (supervisor) sends SIGKILL to steady"),
        "{:?}",
        v.recommendations
    );
}

#[test]
fn a_crash_is_not_memory_and_names_the_signal() {
    let samples = series(20, |i, s| {
        s.main_process = main_of(i.min(4));
        s.processes = Some(u64::from(i < 5));
    });
    let v = judged_with(samples, vec![], 0, vec![death(4.5, 100, Some(11), Some((100, "steady")))]);
    assert_eq!(v.class, "not-memory");
    has(&v, "1 death(s) by SIGSEGV raised by the process itself (a crash): pid 100 (steady) at 4.5 s");
    assert!(v.recommendations[0].contains("core dump"), "{:?}", v.recommendations);
}

/// 4 MiB a second for 15 s, a death, then an empty cgroup for 15 s.
fn one_life_that_grows() -> Vec<Sample> {
    series(30, |i, s| {
        s.anon = Some(if i < 15 { 20 * MIB + 4 * i as u64 * MIB } else { 0 });
        s.processes = Some(u64::from(i < 15));
        s.main_process = if i < 15 { main_of(0) } else { None };
    })
}

#[test]
fn a_process_that_stops_itself_after_growth_is_a_leak() {
    let samples = one_life_that_grows();
    let v = judged_with(samples, vec![], 0, vec![death(14.5, 100, None, None)]);
    assert_eq!(v.class, "heap-leak");
    has(&v, "1 death(s) by exit status 3: pid 100 (steady) at 14.5 s");
    has(&v, "dies of memory");
    assert!(v.recommendations[0].starts_with("fix the leak in grow_cache: at 4.0 MiB/s"), "{:?}", v.recommendations);
}

#[test]
fn a_runtime_that_aborts_at_its_heap_bound_after_growth_dies_of_memory() {
    let samples = one_life_that_grows();
    let mut r = sample_report();
    let node =
        |s: &str| Frame { symbol: Some(s.into()), module: Some("/usr/bin/node".into()), ..Frame::unknown(0x10, false) };
    r.sites[0].frames = vec![node("v8::internal::Scavenger::ScavengeObject"), node("v8::internal::Heap::Scavenge")];
    let v = judged_on(r, samples, vec![], 0, vec![death(14.5, 100, Some(6), Some((100, "steady")))]);
    assert_eq!((v.class.as_str(), v.location.as_deref()), ("heap-leak", Some("managed-heap")));
    has(&v, "V8 aborts when its heap reaches --max-old-space-size");
    has(&v, "the death of pid 100 (steady) at 14.5 s by SIGABRT, after the managed heap grew");
    has(&v, "is the managed heap's memory death, not a crash");
    // Its bound was reached already: what it holds is what to get, and the collector is not the leak.
    assert!(v.recommendations[0].starts_with("find what keeps the runtime's objects alive"), "{:?}", v.recommendations);
    assert!(v.recommendations[1].contains("--heapsnapshot-near-heap-limit=1"), "{:?}", v.recommendations);
    assert!(!v.recommendations.iter().any(|r| r.contains("--max-old-space-size")), "{:?}", v.recommendations);
}

#[test]
fn a_plateau_recommends_its_working_set_and_a_fifth_more() {
    let v = judged(
        series(30, |_, s| {
            s.limit = Some(64 * MIB);
            s.anon = Some(50 * MIB);
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "limit-too-low");
    // 50 + 2 + 3 MiB of usage, +20 % = 66 MiB.
    assert!(
        v.recommendations[0].starts_with("set the memory limit to 66.0 MiB (69206016 bytes"),
        "{:?}",
        v.recommendations
    );
}

#[test]
fn a_thread_leak_recommends_pids_max() {
    let v = judged(
        series(30, |i, s| {
            s.pids = Some(4 + 3 * i as u64);
            s.kernel = Some(3 * MIB + i as u64 * MIB);
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "thread-leak");
    assert!(v.recommendations[0].starts_with("set pids.max to "), "{:?}", v.recommendations);
}

fn has(v: &Verdict, needle: &str) {
    assert!(v.evidence.iter().any(|e| e.contains(needle)), "no evidence line with {needle:?}: {:#?}", v.evidence);
}

#[test]
fn heap_leak() {
    let v = judged(series(30, |i, s| s.anon = Some(20 * MIB + i as u64 * MIB)), vec![], 0);
    assert_eq!(v.class, "heap-leak");
    assert!(v.confidence >= 0.9, "{}", v.confidence);
    has(&v, "anon 23.0 MiB -> 49.0 MiB, +3.5 GiB/h (steadiness 1.00)");
    has(&v, "load: tasks 4 -> 4");
    has(&v, "site: anon 64.0 MiB outstanding, from grow_cache <- main; the memory sits in application code (app)");
    has(&v, "0 OOM kills");
}

/// Without `--heap`, the top anon site's pages in a malloc heap: the verdict says another function may hold them
/// and gives the command that names it, by the container's name or the cgroup (quoted for the shell). Pages of a
/// plain mmap'd block, or a trace that had `--heap`, get no such line.
#[test]
fn pages_in_a_malloc_heap_ask_for_heap() {
    let judged_in = |region: &str, modes: &[&str], container: bool| {
        let samples = series(30, |i, s| s.anon = Some(20 * MIB + i as u64 * MIB));
        let mut r = sample_report();
        r.sites[0].region = Some(region.into());
        r.kernel.modes = modes.iter().map(|m| m.to_string()).collect();
        if !container {
            r.target.container = None;
            r.target.cgroup_path = "/sys/fs/cgroup/memory/my app".into();
        }
        r.attribution = attribution::attribute(&samples, &r.sites);
        r.growth = growth::analyse(&samples, &growth::life_ends(&[], &[], &samples), None, 0);
        r.memory.samples = samples;
        judge(&r)
    };
    let v = judged_in("brk-heap", &["pages"], true);
    assert_eq!(v.class, "heap-leak", "{v:#?}");
    has(&v, "the top anon site's pages lie in the malloc heap ([heap]): grow_cache first touched them, but the allocator hands freed memory to the next caller, so another function may hold them now; run `leaktrace --cgroup leaky --heap` to name the holder");
    assert!(
        v.recommendations[0].starts_with("run `leaktrace --cgroup leaky --heap` to name the function that holds the malloc'd memory grow_cache first touched in [heap], and fix the leak there"),
        "{:?}",
        v.recommendations
    );
    let v = judged_in("malloc-arena", &["pages"], false);
    has(&v, "lie in the malloc heap (a glibc arena)");
    has(&v, "run `leaktrace --cgroup '/sys/fs/cgroup/memory/my app' --heap`");
    for v in [judged_in("mmap", &["pages"], true), judged_in("brk-heap", &["pages", "heap"], true)] {
        assert!(!v.evidence.iter().any(|e| e.contains("--heap")), "{:#?}", v.evidence);
        assert!(v.recommendations[0].starts_with("fix the leak in grow_cache"), "{:?}", v.recommendations);
    }
    assert_eq!(shell_word("it's"), r"'it'\''s'");
    assert_eq!(shell_word("docker-0123.scope"), "docker-0123.scope");
}

#[test]
fn noisy_heap_leak_is_still_one() {
    let v = judged(
        series(40, |i, s| s.anon = Some(20 * MIB + i as u64 * MIB / 2 + (jitter(i) * 2.0 * MIB as f64) as u64)),
        vec![],
        0,
    );
    assert_eq!(v.class, "heap-leak");
    assert!(v.confidence > 0.6 && v.confidence < 0.95, "{}", v.confidence);
}

#[test]
fn leak_near_the_limit_is_a_leak_with_its_time_to_limit() {
    let v = judged(
        series(30, |i, s| {
            s.limit = Some(100 * MIB);
            s.anon = Some(60 * MIB + i as u64 * MIB);
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "heap-leak");
    has(&v, "limit is reached in");
    has(&v, "of the 100.0 MiB limit");
}

#[test]
fn kernel_leak_on_v1_kmem() {
    let v = judged(series(30, |i, s| s.kernel = Some(3 * MIB + i as u64 * MIB / 2)), vec![], 0);
    assert_eq!(v.class, "kernel-leak");
    has(&v, "kernel 4.5 MiB -> 17.5 MiB");
    has(&v, "anon meanwhile: anon 20.0 MiB -> 20.0 MiB");
    has(&v, "site: slab 4.0 KiB (kmalloc-256) outstanding; the memory sits in the kernel (no user stack)");
}

#[test]
fn kernel_leak_on_v2_slab_and_sock() {
    let v = judged(
        series(30, |i, s| {
            s.slab = Some(MIB + i as u64 * MIB / 2);
            s.sock = Some(i as u64 * MIB / 4);
            s.kernel = Some(3 * MIB + i as u64 * 3 * MIB / 4);
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "kernel-leak");
    has(&v, "sock ");
}

#[test]
fn thread_leak() {
    let v = judged(
        series(30, |i, s| {
            s.pids = Some(4 + 10 * i as u64);
            s.kernel = Some(3 * MIB + i as u64 * 300 * 1024);
            s.kernel_stack = Some(i as u64 * 160 * 1024);
            s.anon = Some(20 * MIB + i as u64 * 100 * 1024);
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "thread-leak");
    has(&v, "tasks 34 -> 294, +36000 tasks/h");
    has(&v, "of memory per added task");
}

#[test]
fn tasks_rising_without_memory_is_not_a_thread_leak() {
    let v = judged(series(30, |i, s| s.pids = Some(4 + i as u64)), vec![], 0);
    assert_eq!(v.class, "no-leak");
}

#[test]
fn cache_growth() {
    let v = judged(series(30, |i, s| s.file = Some(2 * MIB + 4 * i as u64 * MIB)), vec![], 0);
    assert_eq!(v.class, "cache-growth");
    has(&v, "file (page cache, reclaimable)");
}

#[test]
fn tmpfs_growth_is_shmem_not_cache() {
    let v = judged(
        series(30, |i, s| {
            s.file = Some(2 * MIB + 4 * i as u64 * MIB);
            s.shmem = Some(4 * i as u64 * MIB);
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "shmem-growth");
    has(&v, "reclaim cannot drop it");
    assert!(v.recommendations[0].starts_with("remove the files"), "{:?}", v.recommendations);
}

#[test]
fn cache_that_filled_the_limit_late_in_the_window_is_cache() {
    // Reclaim holds file at the limit after 20 s of filling it: few samples near the limit, file's trend unsteady.
    let v = judged(
        series(30, |i, s| {
            s.limit = Some(128 * MIB);
            s.file = Some(if i < 20 { 5 * i as u64 * MIB } else { 110 * MIB - (i as u64 % 3) * 4 * MIB });
            s.usage = s.file.unwrap() + 14 * MIB;
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "cache-growth");
}

#[test]
fn socket_buffers_of_v2_are_a_kernel_leak() {
    let v = judged(
        series(30, |i, s| {
            s.sock = Some(4 * i as u64 * MIB);
            s.usage = 25 * MIB + 4 * i as u64 * MIB;
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "kernel-leak");
    has(&v, "sock 12.0 MiB -> 116.0 MiB");
    has(&v, "socket buffers grow");
}

#[test]
fn cache_with_its_kernel_metadata_is_cache() {
    let v = judged(
        series(30, |i, s| {
            s.file = Some(2 * MIB + 4 * i as u64 * MIB);
            s.kernel = Some(3 * MIB + i as u64 * MIB / 4);
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "cache-growth");
    has(&v, "kernel memory grows along with it");
}

#[test]
fn cache_filling_the_limit_is_cache() {
    let v = judged(
        series(30, |i, s| {
            s.limit = Some(128 * MIB);
            s.file = Some(100 * MIB + (jitter(i) * MIB as f64) as u64);
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "cache-growth");
}

#[test]
fn noisy_plateau_near_the_limit_is_limit_too_low() {
    let v = judged(
        series(30, |i, s| {
            s.limit = Some(64 * MIB);
            s.anon = Some(54 * MIB + (jitter(i) * 3.0 * MIB as f64) as u64);
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "limit-too-low");
    assert!(v.confidence >= 0.8, "{}", v.confidence);
    has(&v, "in 100% of the samples after warm-up");
}

#[test]
fn noisy_plateau_far_from_the_limit_is_no_leak() {
    let v = judged(series(30, |i, s| s.anon = Some(40 * MIB + (jitter(i) * 4.0 * MIB as f64) as u64)), vec![], 0);
    assert_eq!(v.class, "no-leak");
    has(&v, "flat after warm-up: anon");
}

#[test]
fn start_up_growth_is_warm_up() {
    // 40 MiB allocated in the first 2 s of 40, then flat.
    let v = judged(series(40, |i, s| s.anon = Some(20 * MIB * (i.min(2) as u64 + 1))), vec![], 0);
    assert_eq!(v.class, "no-leak");
    assert!(v.confidence >= 0.8);
}

#[test]
fn repeated_kills_without_a_trend_in_a_life_are_limit_too_low() {
    // Each life is killed within three samples of its start, at the same size: too short for a trend.
    let kills: Vec<OomKill> = (0..4).map(|i| kill(2.5 + 3.0 * i as f64, i + 1)).collect();
    let v = judged(
        series(14, |i, s| {
            s.limit = Some(64 * MIB);
            s.anon = Some(if i % 3 == 2 { 60 * MIB } else { MIB });
        }),
        kills,
        4,
    );
    assert_eq!(v.class, "limit-too-low");
    has(&v, "4 OOM kill(s), 4 restart(s)");
    has(&v, "victims' RSS at each kill: 60.0 MiB");
    has(&v, "every life was too short");
}

#[test]
fn restart_loop_of_a_leak_is_a_heap_leak() {
    // Lives of 5 s climbing 10 MiB/s to the 64 MiB limit, killed, relaunched.
    let kills: Vec<OomKill> = (0..3).map(|i| kill(5.5 + 6.0 * i as f64, i + 1)).collect();
    let v = judged(
        series(24, |i, s| {
            s.limit = Some(64 * MIB);
            s.anon = Some(4 * MIB + (i % 6) as u64 * 10 * MIB);
        }),
        kills,
        3,
    );
    assert_eq!(v.class, "heap-leak");
    has(&v, "3 OOM kill(s), 3 restart(s)");
    has(&v, "in the 10 s before the last kill, anon grow_cache <- main grew by 64.0 MiB");
    has(&v, "+35.2 GiB/h within lives");
}

#[test]
fn short_window_is_inconclusive() {
    let v = judged(series(4, |i, s| s.anon = Some(20 * MIB + i as u64 * 10 * MIB)), vec![], 0);
    assert_eq!(v.class, "inconclusive");
    assert_eq!(v.confidence, 0.0);
    has(&v, "window too short: 3 sample(s)");
    assert_eq!(judged(Vec::new(), vec![], 0).class, "inconclusive");
}

#[test]
fn a_kill_in_a_short_window_is_still_judged() {
    // The fixture's kill has the flight recorder showing grow_cache gaining 64 MiB before it.
    let v = judged(series(3, |_, s| s.limit = Some(64 * MIB)), vec![kill(1.5, 1)], 0);
    assert_eq!(v.class, "heap-leak");
    assert!(v.confidence < 0.6, "one kill is weak evidence: {}", v.confidence);
    has(&v, "in the 10 s before it the traced sites grew anon 64.0 MiB and kernel memory 0 B");
    has(&v, "cannot rule out a start-up working set");
    has(&v, "site: anon 64.0 MiB outstanding, from grow_cache <- main");
    // What grew before the kill lay in the malloc heap: --heap would name its holder.
    let mut in_heap = kill(1.5, 1);
    in_heap.grew_before_kill[0].sites[0].region = Some("brk-heap".into());
    let v = judged(series(3, |_, s| s.limit = Some(64 * MIB)), vec![in_heap], 0);
    has(&v, "lie in the malloc heap ([heap]): grow_cache first touched them");
    // Without growth before it, one kill says only that the limit was hit.
    let mut quiet = kill(1.5, 1);
    quiet.grew_before_kill.clear();
    let v = judged(series(3, |_, s| s.limit = Some(64 * MIB)), vec![quiet], 0);
    assert_eq!(v.class, "limit-too-low");
    assert!(v.confidence < 0.6, "{}", v.confidence);
}

#[test]
fn contradicting_figures_are_inconclusive() {
    let v = judged(
        series(30, |i, s| {
            s.usage = 40 * MIB + i as u64 * MIB;
        }),
        vec![],
        0,
    );
    assert_eq!(v.class, "inconclusive");
    has(&v, "contradict");
}

#[test]
fn rss_tells_whether_the_processes_carry_the_growth() {
    let samples = |rss_per_step: u64| {
        series(30, move |i, s| {
            s.anon = Some(20 * MIB + i as u64 * MIB);
            s.rss_anon = Some(10 * MIB + i as u64 * rss_per_step);
            s.main_process = Some(ProcessRss { pid: 7, comm: "app".into(), rss_anon: 1, rss: 1 });
        })
    };
    let v = judged(samples(MIB), vec![], 0);
    has(&v, "= 100% of the anon trend; largest: pid 7 (app)");
    has(&v, "the processes' own heap carries the growth");
    let v = judged(samples(0), vec![], 0);
    has(&v, "the growth is not in the processes' RSS");
}

#[test]
fn per_interval_reconciliation_is_quoted() {
    let v = judged(
        series(30, |i, s| {
            s.anon = Some(20 * MIB + i as u64 * MIB);
            s.sites = Some(SiteTotals {
                anon: (i as u64 * MIB * 3 / 4) as i64,
                allocated_bytes: i as u64 * MIB,
                ..Default::default()
            });
        }),
        vec![],
        0,
    );
    has(&v, "per interval, sites explain a median 75% of the anon growth (29 intervals with growth)");
    has(&v, "allocations 1.0 MiB/s (median, ±0% between intervals)");
}

#[test]
fn where_the_growth_sits() {
    let site = |frames| crate::report::tests::site("anon", 1, frames);
    let f = |sym: &str, module: &str, kernel| Frame {
        symbol: Some(sym.into()),
        module: Some(module.into()),
        address: "0x1".into(),
        file: None,
        line: None,
        kernel,
        unwind: None,
    };
    assert_eq!(location(&site(vec![f("do_pipe2", "kernel", true)])), "the kernel (no user stack)");
    assert_eq!(
        location(&site(vec![
            f("malloc", "/lib/libc.so.6", false),
            f("PyObject_Malloc", "/usr/lib/libpython3.11.so.1.0", false)
        ])),
        "a language runtime (libpython, libpython3.11.so.1.0)"
    );
    assert_eq!(
        location(&site(vec![f("runtime.mallocgc", "/app/server", false)])),
        "a language runtime (the Go runtime)"
    );
    assert_eq!(
        location(&site(vec![f("malloc", "/lib/libc.so.6", false)])),
        "the C allocator (no application frame above it)"
    );
    assert_eq!(location(&site(vec![f("handle", "/srv/app", false)])), "application code (app)");
    assert_eq!(
        location(&site(vec![f("allocate_stack", "/lib/x86_64-linux-gnu/libc.so.6", false)])),
        "the C library (libc)"
    );
}

#[test]
fn kills_the_tracer_missed_are_said() {
    let v = judged(series(30, |i, s| s.oom_kill = Some(if i > 20 { 2 } else { 0 })), vec![], 0);
    has(&v, "the cgroup counted 2 OOM kill(s) in the window, the tracer saw 0");
}

#[test]
fn page_sized_drift_does_not_shake_no_leak() {
    // usage creeping down 4 KiB a sample: perfectly steady in rank, nothing in bytes.
    let v = judged(series(30, |i, s| s.usage = 30 * MIB - 4096 * i as u64), vec![], 0);
    assert_eq!(v.class, "no-leak");
    assert!(v.confidence >= 0.89, "{}", v.confidence);
}

#[test]
fn a_window_that_ends_after_the_kill_reconciles_at_the_kill() {
    // Grows to its kill at t=20, then the cgroup is empty: over the window anon did not grow at all.
    let samples = series(30, |i, s| {
        s.anon = Some(if i <= 20 { 20 * MIB + 2 * i as u64 * MIB } else { 0 });
        s.processes = Some(u64::from(i <= 20));
        s.main_process = if i <= 20 { main_of(0) } else { None };
    });
    let mut k = kill(20.5, 1);
    k.anon_rss_bytes = Some(64 << 20);
    let v = judged(samples, vec![k], 0);
    has(&v, "just before OOM kill 1, the traced anon sites held 64.0 MiB of the victim's anon RSS at the kill, 64.0 MiB (100%)");
}

/// With `--heap`: the holder of the malloc'd bytes beside the toucher of the pages, the holder to fix.
#[test]
fn heap_holder_is_named_beside_the_pages_toucher() {
    let samples = series(30, |i, s| s.anon = Some(20 * MIB + i as u64 * MIB));
    let mut r = sample_report();
    r.sites[0].label = Some("render_response".into());
    let mut heap = crate::report::tests::site("heap", 60 * MIB as i64, r.sites[0].frames.clone());
    heap.label = Some("remember_session".into());
    r.sites.insert(0, heap);
    r.attribution = attribution::attribute(&samples, &r.sites);
    r.growth = growth::analyse(&samples, &growth::life_ends(&[], &[], &samples), None, 0);
    r.memory.samples = samples;
    let v = judge(&r);
    assert_eq!(v.class, "heap-leak", "{v:#?}");
    has(&v, "anon pages first touched by render_response; the malloc'd bytes that stay are held by remember_session, 60.0 MiB (the live sampled heap explains");
    has(&v, "site: heap 60.0 MiB outstanding");
    assert!(v.recommendations[0].starts_with("fix the leak in remember_session"), "{:?}", v.recommendations);
    assert!(r.attribution.heap.is_some_and(|h| h.attributed_bytes == 60 * MIB as i64));
}

/// `verdict.runtime` and `verdict.location`: a native program's heap leak is its application heap; the same leak
/// in a JVM, its top site a direct buffer's, is off-heap and gets the JVM's pool bounds sized from the limit; a
/// kernel leak lives in the kernel.
#[test]
fn runtime_and_location_of_the_growth() {
    let leaking_asked = |frames: Option<Vec<Frame>>, jvm_asked: bool| {
        let samples = series(30, |i, s| s.anon = Some(20 * MIB + i as u64 * MIB));
        let mut r = sample_report();
        if let Some(frames) = frames {
            r.sites[0].frames = frames;
        }
        if jvm_asked {
            r.collection.jvm_perfmaps =
                vec![crate::stacks::jvm_perfmap::JvmPerfMapStats { pid: 7, requests: 1, written: 1, last_error: None }];
        }
        r.memory.limit_bytes = Some(1 << 30);
        r.attribution = attribution::attribute(&samples, &r.sites);
        r.growth = growth::analyse(&samples, &growth::life_ends(&[], &[], &samples), r.memory.limit_bytes, 0);
        r.memory.samples = samples;
        judge(&r)
    };
    let leaking = |frames| leaking_asked(frames, false);
    let native = leaking(None);
    assert_eq!((native.class.as_str(), native.runtime.as_deref()), ("heap-leak", None));
    assert_eq!(native.location.as_deref(), Some("application-heap"));
    let libjvm = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so";
    let jvm_frame =
        |s: &str| Frame { symbol: Some(s.into()), module: Some(libjvm.into()), ..Frame::unknown(0x10, false) };
    let direct = leaking(Some(vec![jvm_frame("Copy::fill_to_memory_atomic"), jvm_frame("Unsafe_SetMemory0")]));
    assert_eq!((direct.runtime.as_deref(), direct.location.as_deref()), (Some("jvm"), Some("off-heap")));
    has(&direct, "runtime jvm: the growing memory is native memory outside the runtime's managed heap");
    let bounds = direct.recommendations.last().expect("a JVM recommendation");
    assert!(bounds.contains("-Xmx768m") && bounds.contains("-XX:MaxDirectMemorySize=102m"), "{bounds}");
    let kernel = judged(series(30, |i, s| s.kernel = Some(3 * MIB + i as u64 * MIB / 2)), vec![], 0);
    assert_eq!((kernel.class.as_str(), kernel.location.as_deref()), ("kernel-leak", Some("kernel")));
    // JIT code without a perf map: how to get its names, unless the JVM was asked already.
    let jit = || vec![jvm_frame("Unsafe_SetMemory0"), Frame::unknown(0x7f00_1000, false)];
    let unnamed = leaking(Some(jit()));
    let hint = unnamed.recommendations.last().expect("a recommendation");
    assert!(
        hint.starts_with("Unsafe_SetMemory0 has 1 JIT frame without a name") && hint.contains("--jvm-perfmap"),
        "{hint}"
    );
    let asked = leaking_asked(Some(jit()), true);
    assert!(!asked.recommendations.iter().any(|r| r.contains("--jvm-perfmap")), "{:?}", asked.recommendations);
}

/// A growing anon series whose top site has `anon` frames, with a runtime profile's heap site (its bytes, label,
/// frame) and what the collection says of the profiler when there is one.
fn judged_with_heap(
    anon: Vec<Frame>,
    heap: Option<(i64, &str, Frame)>,
    profiled: impl Fn(&mut crate::report::Collection),
) -> Verdict {
    let samples = series(30, |i, s| s.anon = Some(20 * MIB + i as u64 * MIB));
    let mut r = sample_report();
    r.sites[0].frames = anon;
    if let Some((bytes, label, frame)) = heap {
        let mut site = crate::report::tests::site("heap", bytes, vec![frame]);
        site.label = Some(label.into());
        r.sites.insert(0, site);
        profiled(&mut r.collection);
    }
    r.memory.limit_bytes = Some(1 << 30);
    r.attribution = attribution::attribute(&samples, &r.sites);
    r.growth = growth::analyse(&samples, &growth::life_ends(&[], &[], &samples), r.memory.limit_bytes, 0);
    r.memory.samples = samples;
    judge(&r)
}

/// The JVM: a Java-heap leak's pages are touched by the collector's promotion, so without `--jvm-heap` the advice
/// is to trace with it; with it, the method whose objects stay is the one to fix.
#[test]
fn jvm_heaps_name_the_java_method_holding_objects() {
    let jvm = |s: &str| Frame {
        symbol: Some(s.into()),
        module: Some("/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so".into()),
        ..Frame::unknown(0x10, false)
    };
    let promoted = || vec![jvm("Generation::promote(oopDesc*, unsigned long)"), jvm("DefNewGeneration::collect")];
    let plain = judged_with_heap(promoted(), None, |_| {});
    assert_eq!((plain.runtime.as_deref(), plain.location.as_deref()), (Some("jvm"), Some("managed-heap")));
    assert!(plain.recommendations.iter().any(|r| r.contains("--jvm-heap")), "{:?}", plain.recommendations);
    let method = "SessionBuffers.rememberSession(boolean, int)";
    let java = Frame {
        module: Some(crate::stacks::runtime::JAVA_MODULE.into()),
        unwind: Some("profile".into()),
        line: Some(20),
        ..jvm(method)
    };
    let sampled = judged_with_heap(promoted(), Some((25 * MIB as i64, method, java)), |c| {
        c.jvm_heaps = vec![crate::collect::jvm_heap::JvmHeapStats { pid: 7, profiles: 9, ..Default::default() }]
    });
    assert_eq!(sampled.location.as_deref(), Some("managed-heap"));
    assert!(
        sampled.recommendations[0].starts_with(&format!("fix the leak in {method}")),
        "{:?}",
        sampled.recommendations
    );
    assert!(!sampled.recommendations.iter().any(|r| r.contains("--jvm-heap")), "{:?}", sampled.recommendations);
    has(&sampled, &format!("anon pages first touched by Generation::promote(oopDesc*, unsigned long); the objects that stay are held by {method}, 25.0 MiB"));
}

/// Node: an object leak's pages are touched by V8's collector, so without `--node-heap` the advice is to trace
/// with it; with it, a profile whose heap sites explain little of the growth (a Buffer leak: its bytes are outside
/// V8's heap) leaves the anon site to say where the memory lives.
#[test]
fn node_heaps_name_the_holder_only_where_they_explain_the_growth() {
    let node =
        |s: &str| Frame { symbol: Some(s.into()), module: Some("/usr/bin/node".into()), ..Frame::unknown(0x10, false) };
    let judged_with = |anon: Vec<Frame>, heap: Option<(i64, &str)>| {
        let js = |label: &str| Frame {
            module: Some(crate::stacks::runtime::JS_MODULE.into()),
            file: Some("/srv/app.js".into()),
            unwind: Some("profile".into()),
            ..node(label)
        };
        judged_with_heap(anon, heap.map(|(bytes, label)| (bytes, label, js(label))), |c| {
            c.node_heaps = vec![crate::collect::node_heap::NodeHeapStats {
                pid: 7,
                runtime: crate::collect::node_heap::Inspected { inspector: "opened".into() },
                profiles: 9,
                last_error: None,
            }]
        })
    };
    let scavenged = || {
        vec![node("v8::internal::Scavenger::ScavengeObject"), node("v8::internal::ScavengerCollector::JobTask::Run")]
    };
    let objects = judged_with(scavenged(), None);
    assert_eq!((objects.runtime.as_deref(), objects.location.as_deref()), (Some("node"), Some("managed-heap")));
    assert!(objects.recommendations.iter().any(|r| r.contains("--node-heap")), "{:?}", objects.recommendations);
    let profiled = judged_with(scavenged(), Some((25 * MIB as i64, "cacheResponseObject")));
    assert!(
        profiled.recommendations[0].starts_with("fix the leak in cacheResponseObject"),
        "{:?}",
        profiled.recommendations
    );
    assert!(!profiled.recommendations.iter().any(|r| r.contains("--node-heap")), "{:?}", profiled.recommendations);
    has(&profiled, "the objects that stay are held by cacheResponseObject, 25.0 MiB");
    let buffer =
        vec![node("v8::internal::Builtin_TypedArrayPrototypeFill(int, unsigned long*, v8::internal::Isolate*)")];
    let buffers = judged_with(buffer, Some((MIB as i64, "cacheResponseBuffer")));
    assert_eq!(buffers.location.as_deref(), Some("off-heap"), "{buffers:#?}");
    has(&buffers, "the objects that stay are held by cacheResponseBuffer, 1.0 MiB (the live sampled heap explains 3% of the anon growth): what grows is memory outside the heap");
}
