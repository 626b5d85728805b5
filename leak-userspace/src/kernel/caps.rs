//! Whether this process may load and attach tracing eBPF programs: root is not enough inside a container or under
//! a restricted service manager, and without the capabilities the kernel's refusal reads like a bug (a map that
//! "failed to create").
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What is missing to trace, or `None` when this process may (or its capabilities cannot be read: then the kernel
/// decides).
pub fn missing_for_tracing() -> Option<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let effective = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    missing(u64::from_str_radix(effective.trim(), 16).ok()?)
}

/// Tracepoint programs need CAP_BPF and CAP_PERFMON (5.8+), or CAP_SYS_ADMIN, which covers both.
fn missing(effective: u64) -> Option<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return None;
    }
    Some(match (has(CAP_BPF), has(CAP_PERFMON)) {
        (true, false) => "CAP_PERFMON",
        (false, true) => "CAP_BPF",
        _ => "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        // A full root set, as /proc/self/status shows it on 6.x.
        assert_eq!(missing(0x000001ffffffffff), None);
        assert_eq!(missing(1 << CAP_SYS_ADMIN), None);
        assert_eq!(missing(1 << CAP_BPF | 1 << CAP_PERFMON), None);
        assert_eq!(missing(1 << CAP_BPF), Some("CAP_PERFMON"));
        assert_eq!(missing(1 << CAP_PERFMON), Some("CAP_BPF"));
        // Docker's default set for a container's root.
        assert_eq!(missing(0x00000000a80425fb), Some("CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"));
    }

    #[test]
    fn this_process_can_be_read() {
        // Root in the test environment has everything; anyone else gets an answer without a panic.
        let _ = missing_for_tracing();
    }
}
