//! `/proc/<pid>/maps`: the address ranges a process maps, with the file behind each.
/// One line of a maps file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub exec: bool,
    /// `---p`: neither readable, writable nor executable (a guard page, address space reserved for later).
    pub no_access: bool,
    pub offset: u64,
    /// `major:minor` of the file's device and its inode (0 for anonymous memory).
    pub dev: String,
    pub inode: u64,
    /// The file's path, `[vdso]`-like pseudo names, or `None` for anonymous memory.
    pub path: Option<String>,
}

impl Mapping {
    /// A mapping of a file (not anonymous memory, nor `[vdso]`, `[heap]`, ...).
    pub fn is_file(&self) -> bool {
        self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }

    /// The file name alone (`libc.so.6`), or the pseudo name.
    pub fn name(&self) -> Option<&str> {
        let path = self.path.as_deref()?;
        Some(path.rsplit('/').next().unwrap_or(path))
    }
}

/// How far an object's addresses are moved in a process: a position-independent object (an `ET_DYN` executable or
/// library) is loaded where its first mapping starts (`first_mapping`, asked only then); others at their link
/// addresses.
pub fn load_bias(elf: &object::File, first_mapping: impl FnOnce() -> Option<u64>) -> Option<u64> {
    use object::{Object, ObjectKind, ObjectSegment};
    match elf.kind() {
        ObjectKind::Dynamic => first_mapping()?.checked_sub(elf.segments().map(|s| s.address()).min()? & !0xfff),
        _ => Some(0),
    }
}

/// A file's identity (device, inode): the same file whatever path it is reached by.
pub fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The identity of the executable `pid` runs: another one after an exec.
pub fn exe_file(pid: u32) -> Option<(u64, u64)> {
    file_id(std::path::Path::new(&format!("/proc/{pid}/exe")))
}

/// Every mapping of a maps text, in the kernel's (address) order. Malformed lines are skipped.
pub fn parse(maps: &str) -> Vec<Mapping> {
    maps.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // range perms offset dev inode, then the path: it may hold spaces, and " (deleted)" once unlinked.
    let mut rest = line;
    let mut fields = [""; 5];
    for field in &mut fields {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let path = rest.trim_start();
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let (start, end) = fields[0].split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        exec: fields[1].contains('x'),
        no_access: fields[1].starts_with("---"),
        offset: u64::from_str_radix(fields[2], 16).ok()?,
        dev: fields[3].to_string(),
        inode: fields[4].parse().ok()?,
        path: (!path.is_empty()).then(|| path.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_anonymous_memory_and_odd_paths() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234 /usr/bin/my app
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1234 /usr/bin/my app (deleted)
7f0000000000-7f0000021000 rwxp 00000000 00:00 0
7f0000021000-7f0004000000 ---p 00000000 00:00 0
7ffd1c5f3000-7ffd1c5f5000 r-xp 00000000 00:00 0                          [vdso]
garbage
";
        let m = parse(maps);
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].path.as_deref(), Some("/usr/bin/my app"));
        assert!(m[1].exec && m[1].is_file() && m[1].offset == 0x1000 && m[1].inode == 1234);
        assert_eq!(m[1].name(), Some("my app"));
        assert!(m[2].exec && m[2].path.is_none() && !m[2].is_file(), "anonymous executable memory (JIT)");
        assert!(m[3].no_access && !m[2].no_access && !m[1].no_access, "reserved address space");
        assert_eq!(m[4].path.as_deref(), Some("[vdso]"));
        assert!(!m[4].is_file());
    }
}
