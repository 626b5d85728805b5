//! OOM-kill events from the ring buffer: decoding, and deciding whether a kill belongs to the target.
use std::path::Path;

use leak_common::{OomEvent, SiteCounters, SiteKey, COMM_LEN};

/// An OOM kill as userspace keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct OomNotice {
    pub ktime_ns: u64,
    pub victim_pid: u32,
    pub victim_comm: String,
    pub trigger_pid: u32,
    pub trigger_comm: String,
    pub trigger_memcg: u64,
    /// None when this kernel's `oom:mark_victim` carries only the pid.
    pub anon_rss_bytes: Option<u64>,
    /// anon + file + shmem RSS; None likewise.
    pub rss_bytes: Option<u64>,
}

pub fn decode(bytes: &[u8]) -> Option<OomNotice> {
    if bytes.len() < std::mem::size_of::<OomEvent>() {
        return None;
    }
    // SAFETY: length checked; OomEvent is plain integers, and the ring buffer gives no alignment promise.
    let ev: OomEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Some(OomNotice {
        ktime_ns: ev.ktime_ns,
        victim_pid: ev.victim_pid,
        victim_comm: comm(&ev.victim_comm),
        trigger_pid: ev.trigger_tgid,
        trigger_comm: comm(&ev.trigger_comm),
        trigger_memcg: ev.trigger_memcg,
        anon_rss_bytes: (ev.has_rss != 0).then_some(ev.anon_rss_kb.saturating_mul(1024)),
        rss_bytes: (ev.has_rss != 0).then_some(
            ev.anon_rss_kb.saturating_add(ev.file_rss_kb).saturating_add(ev.shmem_rss_kb).saturating_mul(1024),
        ),
    })
}

/// Before a kill, the victims of earlier kills (a restarted container's previous incarnations) are dead: what they
/// freed while dying was freed before this kill, so it counts as freed in this kill's picture.
pub fn settle_earlier_victims(raw: &mut [(SiteKey, SiteCounters)], earlier: &[u32]) {
    for (_, c) in raw.iter_mut().filter(|(key, _)| earlier.contains(&key.tgid)) {
        c.free_bytes = c.free_bytes.wrapping_add(std::mem::take(&mut c.oom_freed_bytes));
        c.free_count = c.free_count.wrapping_add(std::mem::take(&mut c.oom_freed_count));
    }
}

fn comm(raw: &[u8; COMM_LEN]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// A kill is the target's when the victim is one of its processes or the task that ran into the limit charges to
/// it. The kernel reports every OOM kill on the host, so this filter must be right both ways.
pub fn belongs_to_target(
    ev: &OomNotice,
    memcg_ids: &[u64],
    known_pid: impl Fn(u32) -> bool,
    target_rel: &Path,
) -> bool {
    memcg_ids.contains(&ev.trigger_memcg)
        || known_pid(ev.victim_pid)
        || std::fs::read_to_string(format!("/proc/{}/cgroup", ev.victim_pid))
            .is_ok_and(|text| cgroup_file_has(&text, target_rel))
}

/// Whether a /proc/<pid>/cgroup text puts the process in `target_rel` (or below it) on the memory hierarchy
/// (v1: a `memory` controller line; v2: the `0::` line).
pub fn cgroup_file_has(text: &str, target_rel: &Path) -> bool {
    text.lines().any(|line| {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let memory_line = ctrls.split(',').any(|c| c == "memory") || (id == "0" && ctrls.is_empty());
        memory_line && Path::new(path.trim_start_matches('/')).starts_with(target_rel)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(victim: u32, memcg: u64, has_rss: u32) -> Vec<u8> {
        let mut ev = OomEvent {
            ktime_ns: 42,
            victim_pid: victim,
            trigger_tid: 7,
            trigger_tgid: 6,
            has_rss,
            trigger_memcg: memcg,
            total_vm_kb: 1,
            anon_rss_kb: 2048,
            file_rss_kb: 100,
            shmem_rss_kb: 4,
            victim_comm: [0; COMM_LEN],
            trigger_comm: [0; COMM_LEN],
        };
        ev.victim_comm[..4].copy_from_slice(b"leak");
        ev.trigger_comm[..3].copy_from_slice(b"app");
        let size = std::mem::size_of::<OomEvent>();
        let mut out = vec![0u8; size];
        // SAFETY: out has exactly the size of the plain-integer struct.
        unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), ev) };
        out
    }

    #[test]
    fn earlier_victims_frees_count_before_a_later_kill() {
        let key = |tgid| SiteKey { tgid, ..Default::default() };
        let held = SiteCounters {
            alloc_bytes: 100,
            free_bytes: 10,
            oom_freed_bytes: 90,
            oom_freed_count: 3,
            ..Default::default()
        };
        let mut raw = vec![(key(7), held), (key(8), held)];
        settle_earlier_victims(&mut raw, &[7]);
        assert_eq!((raw[0].1.free_bytes, raw[0].1.oom_freed_bytes, raw[0].1.free_count), (100, 0, 3));
        assert_eq!(raw[1].1, held, "the current victim's picture is untouched");
    }

    #[test]
    fn decodes_event_with_and_without_rss() {
        let n = decode(&event(100, 5, 1)).unwrap();
        assert_eq!((n.victim_pid, n.trigger_pid, n.trigger_memcg), (100, 6, 5));
        assert_eq!((n.victim_comm.as_str(), n.trigger_comm.as_str()), ("leak", "app"));
        assert_eq!(n.anon_rss_bytes, Some(2048 * 1024));
        assert_eq!(n.rss_bytes, Some(2152 * 1024));
        assert_eq!(decode(&event(100, 5, 0)).unwrap().anon_rss_bytes, None);
        assert_eq!(decode(&event(100, 5, 0)).unwrap().rss_bytes, None);
        assert!(decode(&[0u8; 8]).is_none());
    }

    #[test]
    fn target_membership() {
        let n = decode(&event(4_000_000, 5, 1)).unwrap();
        let rel = Path::new("leaktest");
        assert!(belongs_to_target(&n, &[5], |_| false, rel));
        assert!(belongs_to_target(&n, &[9], |p| p == 4_000_000, rel));
        assert!(!belongs_to_target(&n, &[9], |_| false, rel));
    }

    #[test]
    fn reads_proc_cgroup_lines() {
        let v1 = "12:pids:/x\n4:memory:/leaktest/child\n0::/\n";
        assert!(cgroup_file_has(v1, Path::new("leaktest")));
        assert!(!cgroup_file_has(v1, Path::new("leak")));
        assert!(!cgroup_file_has("4:memory:/other\n", Path::new("leaktest")));
        assert!(cgroup_file_has("0::/kubepods/pod1/abc\n", Path::new("kubepods/pod1")));
        assert!(!cgroup_file_has("garbage\n", Path::new("x")));
    }
}
