//! Where the memory controller lives: read off the mount table, because pure v1, pure v2 and hybrid hosts put it
//! in different places and a hybrid host has a cgroup2 mount that looks valid but has no memory files.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Which cgroup hierarchy format a directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// The number report.json uses (`cgroup_version`).
    pub fn number(&self) -> u8 {
        match self {
            CgroupVersion::V1 => 1,
            CgroupVersion::V2 => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CgroupLayout {
    /// Mount point of the hierarchy that has the memory controller.
    pub memory_root: PathBuf,
    /// Format of that hierarchy.
    pub version: CgroupVersion,
    /// The cgroup2 mount, if any (hybrid hosts have both).
    pub unified: Option<PathBuf>,
}

impl CgroupLayout {
    /// The layout of this host, from `/proc/self/mountinfo`.
    pub fn detect() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo to find the cgroup mounts")?;
        Self::from_mountinfo(&text, v2_has_memory)
    }

    /// Parses mountinfo text. `has_memory` tells whether a cgroup2 mount offers the memory controller (its
    /// `cgroup.controllers` lists `memory`); it is a parameter so tests need no real mounts.
    pub fn from_mountinfo(text: &str, has_memory: impl Fn(&Path) -> bool) -> anyhow::Result<Self> {
        let mut v1_memory = None;
        let mut unified = None;
        for mount in text.lines().filter_map(parse_line) {
            match mount.fs_type {
                "cgroup" if v1_memory.is_none() && mount.super_options.split(',').any(|o| o == "memory") => {
                    v1_memory = Some(mount.mount_point)
                }
                "cgroup2" if unified.is_none() => unified = Some(mount.mount_point),
                _ => {}
            }
        }
        // A controller is bound to one hierarchy at a time, so a mounted v1 memory hierarchy wins.
        if let Some(memory_root) = v1_memory {
            return Ok(Self { memory_root, version: CgroupVersion::V1, unified });
        }
        match unified {
            Some(root) if has_memory(&root) => {
                Ok(Self { memory_root: root.clone(), version: CgroupVersion::V2, unified: Some(root) })
            }
            Some(root) => bail!(
                "the cgroup2 hierarchy at {} has no memory controller and no cgroup v1 memory hierarchy is mounted \
                 (enable the memory controller or mount it: mount -t cgroup -o memory none /sys/fs/cgroup/memory)",
                root.display()
            ),
            None => bail!(
                "no cgroup hierarchy is mounted (mount cgroup2 at /sys/fs/cgroup: mount -t cgroup2 none /sys/fs/cgroup)"
            ),
        }
    }
}

/// Whether a cgroup2 root offers the memory controller.
fn v2_has_memory(root: &Path) -> bool {
    std::fs::read_to_string(root.join("cgroup.controllers"))
        .map(|c| c.split_whitespace().any(|c| c == "memory"))
        .unwrap_or(false)
}

struct Mount<'a> {
    mount_point: PathBuf,
    fs_type: &'a str,
    super_options: &'a str,
}

/// One mountinfo line: `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
/// Lines that do not have this shape are skipped.
fn parse_line(line: &str) -> Option<Mount<'_>> {
    let (head, tail) = line.split_once(" - ")?;
    let mount_point = head.split(' ').nth(4)?;
    let mut tail = tail.split(' ');
    let fs_type = tail.next()?;
    let super_options = tail.nth(1).unwrap_or("");
    Some(Mount { mount_point: PathBuf::from(unescape(mount_point)), fs_type, super_options })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = include_str!("testdata/mountinfo-hybrid-6.18.txt");
    const V1: &str = include_str!("testdata/mountinfo-v1.txt");
    const V2: &str = include_str!("testdata/mountinfo-v2.txt");

    #[test]
    fn hybrid_host_uses_v1_memory_and_records_unified() {
        let l = CgroupLayout::from_mountinfo(HYBRID, |_| false).unwrap();
        assert_eq!(l.version, CgroupVersion::V1);
        assert_eq!(l.memory_root, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(l.unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn pure_v1() {
        let l = CgroupLayout::from_mountinfo(V1, |_| panic!("no cgroup2 mount to ask about")).unwrap();
        assert_eq!(
            (l.version, l.memory_root.as_path(), l.unified),
            (CgroupVersion::V1, Path::new("/sys/fs/cgroup/memory"), None)
        );
    }

    #[test]
    fn v1_memory_option_must_match_exactly() {
        // "memory_recursiveprot" or "name=memoryx" must not be taken for the memory controller.
        let text = "35 30 0:30 / /sys/fs/cgroup/x rw - cgroup cgroup rw,name=memoryx\n";
        assert!(CgroupLayout::from_mountinfo(text, |_| true).is_err());
    }

    #[test]
    fn pure_v2_with_memory() {
        let l = CgroupLayout::from_mountinfo(V2, |p| p == Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(l.version, CgroupVersion::V2);
        assert_eq!(l.memory_root, Path::new("/sys/fs/cgroup"));
        assert_eq!(l.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn v2_without_memory_controller_is_an_error() {
        let e = CgroupLayout::from_mountinfo(V2, |_| false).unwrap_err().to_string();
        assert!(e.contains("no memory controller"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn no_cgroup_mounts_and_garbage_lines() {
        let e = CgroupLayout::from_mountinfo("garbage\n\n1 2 3\n", |_| true).unwrap_err().to_string();
        assert!(e.contains("no cgroup hierarchy"), "{e}");
    }

    #[test]
    fn escaped_mount_points() {
        let text = "35 30 0:30 / /mnt/my\\040cgroups rw,relatime shared:1 - cgroup cgroup rw,memory\n";
        let l = CgroupLayout::from_mountinfo(text, |_| false).unwrap();
        assert_eq!(l.memory_root, Path::new("/mnt/my cgroups"));
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn detect_on_this_host() {
        let l = CgroupLayout::detect().unwrap();
        assert!(l.memory_root.join("cgroup.procs").exists(), "{l:?}");
    }
}
