//! Perf maps (`/tmp/perf-<pid>.map`): the names JIT compilers (V8 with `--perf-basic-prof`, the JVM's
//! `Compiler.perfmap`, Python 3.12+ with `-X perf`) give the code they write, one `START SIZE name` line each.
//! A containerised process writes its map inside its own root under its own (namespaced) pid, so the map is read
//! through `/proc/<pid>/root/tmp/perf-<nspid>.map`. Maps only grow while a process runs: each read takes the
//! lines appended since the last.
use std::{
    io::{Read, Seek, SeekFrom},
    path::PathBuf,
};

#[derive(Default)]
pub struct PerfMap {
    /// (start, end, name), sorted by start.
    entries: Vec<(u64, u64, String)>,
    /// Bytes of the file already read (up to the last whole line).
    read: u64,
}

impl PerfMap {
    /// The path of `pid`'s perf map as the process itself names it.
    pub fn path(pid: u32) -> PathBuf {
        let nspid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| innermost_nspid(&s))
            .unwrap_or(pid);
        PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{nspid}.map"))
    }

    /// Reads what was appended to the map of `pid` since the last call. False when there is no map.
    pub fn refresh(&mut self, pid: u32) -> bool {
        let Ok(mut file) = std::fs::File::open(Self::path(pid)) else { return false };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.read)).is_err() || file.read_to_string(&mut text).is_err() {
            return true;
        }
        // A line still being written is left for the next read.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        self.read += whole as u64;
        self.add(&text[..whole]);
        true
    }

    fn add(&mut self, text: &str) {
        let before = self.entries.len();
        self.entries.extend(text.lines().filter_map(parse_line));
        if self.entries.len() > before {
            self.entries.sort_by_key(|e| e.0);
        }
    }

    /// The name of the JIT code at `addr`. Code regions can be reused: the latest entry covering it wins.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let end = self.entries.partition_point(|e| e.0 <= addr);
        self.entries[..end].iter().rev().take(64).find(|e| addr < e.1).map(|e| e.2.as_str())
    }
}

/// `START SIZE name`, both numbers hex (with or without `0x`); the name may hold spaces.
fn parse_line(line: &str) -> Option<(u64, u64, String)> {
    let mut parts = line.splitn(3, ' ');
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let start = hex(parts.next()?)?;
    let size = hex(parts.next()?)?;
    let name = parts.next()?.trim();
    (size > 0 && !name.is_empty()).then(|| (start, start.saturating_add(size), name.to_string()))
}

/// The pid a process has in its own pid namespace: the last of `NSpid:` in its status.
fn innermost_nspid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lookups_and_appends() {
        let mut map = PerfMap::default();
        map.add(
            "3ae0c0a0 40 LazyCompile:~cacheResponseBuffer /srv/app.js:12\n0x3ae0c100 20 py::remember:/app.py\nbad\n",
        );
        assert_eq!(map.lookup(0x3ae0c0a0), Some("LazyCompile:~cacheResponseBuffer /srv/app.js:12"));
        assert_eq!(map.lookup(0x3ae0c0df), Some("LazyCompile:~cacheResponseBuffer /srv/app.js:12"));
        assert_eq!(map.lookup(0x3ae0c0e0), None);
        assert_eq!(map.lookup(0x3ae0c110), Some("py::remember:/app.py"));
        // The code at 0x3ae0c0a0 recompiled: the later entry names it.
        map.add("3ae0c0a0 40 LazyCompile:*cacheResponseBuffer /srv/app.js:12\n");
        assert_eq!(map.lookup(0x3ae0c0b0), Some("LazyCompile:*cacheResponseBuffer /srv/app.js:12"));
    }

    #[test]
    fn nspid_is_the_innermost() {
        assert_eq!(innermost_nspid("Name:\tnode\nNSpid:\t4242\t7\n"), Some(7));
        assert_eq!(innermost_nspid("Name:\tnode\nNSpid:\t4242\n"), Some(4242));
        assert_eq!(innermost_nspid("Name:\tnode\n"), None);
    }

    /// A real map file of this process, read as it grows, through /proc/self/root and the namespaced pid.
    #[test]
    fn reads_a_growing_map_through_the_process_root() {
        let pid = std::process::id();
        let path = PerfMap::path(pid);
        if std::fs::write(&path, "1000 10 first\n2000 10 sec").is_err() {
            return; // no writable /tmp
        }
        let mut map = PerfMap::default();
        assert!(map.refresh(pid));
        assert_eq!((map.lookup(0x1008), map.lookup(0x2008)), (Some("first"), None), "half a line waits");
        std::fs::write(&path, "1000 10 first\n2000 10 second\n").unwrap();
        assert!(map.refresh(pid));
        assert_eq!(map.lookup(0x2008), Some("second"));
        std::fs::remove_file(&path).unwrap();
        assert!(!map.refresh(pid));
    }
}
