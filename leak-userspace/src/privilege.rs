//! Whether this process may do what a trace needs, checked before anything is created or loaded: loading and
//! attaching eBPF programs takes CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), which root has unless a container or
//! a capability bounding set took them away. Checking the effective set, not only the uid, turns a late and cryptic
//! EPERM from the kernel into one clear line.
use anyhow::{bail, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let caps = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| effective_caps(&s));
    check(root, caps)
}

fn check(root: bool, caps: Option<u64>) -> Result<()> {
    let has = |cap: u32| caps.is_some_and(|c| c & (1 << cap) != 0);
    let can_trace = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    match (root, can_trace) {
        (_, true) => Ok(()),
        (false, false) => bail!(
            "leaktrace must run as root (it loads eBPF programs and reads every process's memory maps): run it with sudo"
        ),
        (true, false) => bail!(
            "leaktrace runs as root but without CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), which loading eBPF \
             programs needs: run it on the host, or in a container started with --privileged or --cap-add BPF --cap-add \
             PERFMON"
        ),
    }
}

/// The `CapEff:` mask of /proc/self/status.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tleaktrace\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name:\tx\n"), None);
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
    }

    #[test]
    fn needs_sys_admin_or_bpf_with_perfmon() {
        let bit = |c: u32| 1u64 << c;
        assert!(check(true, Some(bit(CAP_SYS_ADMIN))).is_ok());
        assert!(check(false, Some(bit(CAP_BPF) | bit(CAP_PERFMON))).is_ok());
        let e = check(false, Some(0)).unwrap_err().to_string();
        assert!(e.contains("must run as root") && e.contains("sudo"), "{e}");
        let e = check(true, Some(bit(CAP_BPF))).unwrap_err().to_string();
        assert!(e.contains("without CAP_BPF and CAP_PERFMON"), "{e}");
        assert!(check(true, None).is_err());
    }
}
