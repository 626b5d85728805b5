//! Perf maps (`/tmp/perf-<pid>.map`): the names JIT compilers (V8 with `--perf-basic-prof`, the JVM's
//! `Compiler.perfmap`, Python 3.12+ with `-X perf`) give the code they write, one `START SIZE name` line each.
//! A containerised process writes its map inside its own root under its own (namespaced) pid, so the map is read
//! through `/proc/<pid>/root/tmp/perf-<nspid>.map`. A V8 or Python map only grows while the process runs: each
//! read takes the lines appended since the last. A JVM's is a snapshot written anew each time it is asked.
use std::{
    io::{Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

#[derive(Default)]
pub struct PerfMap {
    /// Sorted by start.
    entries: Vec<Entry>,
    /// Bytes of the file already read (up to the last whole line).
    read: u64,
    /// The inode read: another one is a map written anew.
    ino: u64,
    /// The last bytes read: different bytes there are a map written anew in the same inode (a file system that
    /// reuses inode numbers at once).
    tail: Vec<u8>,
    /// How many times the map was written anew.
    generation: u32,
}

struct Entry {
    start: u64,
    end: u64,
    generation: u32,
    name: String,
}

/// Bytes at the end of what was read that are checked before reading on.
const TAIL: usize = 64;

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
        // A map written anew (a JVM asked again writes a whole new file) is read anew. What the older one named
        // is kept where the new one names nothing: a sample may have been taken in code flushed since.
        if let Ok(meta) = file.metadata() {
            if meta.ino() != self.ino || meta.len() < self.read || !self.tail_still_there(&mut file) {
                (self.ino, self.read) = (meta.ino(), 0);
                self.generation += u32::from(!self.entries.is_empty());
            }
        }
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.read)).is_err() || file.read_to_string(&mut text).is_err() {
            return true;
        }
        // A line still being written is left for the next read.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        if whole > 0 {
            self.read += whole as u64;
            self.tail = text.as_bytes()[whole.saturating_sub(TAIL)..whole].to_vec();
        }
        self.add(&text[..whole]);
        true
    }

    fn tail_still_there(&self, file: &mut std::fs::File) -> bool {
        let mut now = vec![0; self.tail.len()];
        self.tail.is_empty()
            || (file.seek(SeekFrom::Start(self.read - self.tail.len() as u64)).is_ok()
                && file.read_exact(&mut now).is_ok()
                && now == self.tail)
    }

    fn add(&mut self, text: &str) {
        let generation = self.generation;
        let added: Vec<Entry> = text
            .lines()
            .filter_map(parse_line)
            .map(|(start, end, name)| Entry { start, end, generation, name })
            .collect();
        if added.is_empty() {
            return;
        }
        self.entries.extend(added);
        self.entries.sort_by_key(|e| e.start);
        if self.entries.iter().any(|e| e.generation < generation) {
            self.drop_overwritten();
        }
    }

    /// Drops the entries of older maps that overlap the newest map's code: they can never win a lookup, and
    /// without this a JVM asked every few seconds would grow the list by its whole map each time.
    fn drop_overwritten(&mut self) {
        let newest: Vec<(u64, u64)> =
            self.entries.iter().filter(|e| e.generation == self.generation).map(|e| (e.start, e.end)).collect();
        self.entries.retain(|e| {
            let below = newest.partition_point(|n| n.0 < e.end);
            e.generation == self.generation || !newest[..below].iter().rev().take(64).any(|n| n.1 > e.start)
        });
    }

    /// The name of the JIT code at `addr`. Code regions are reused: the newest map wins, and within one map the
    /// entry added last.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let end = self.entries.partition_point(|e| e.start <= addr);
        let covering = || self.entries[..end].iter().rev().take(64).filter(|e| addr < e.end);
        let newest = covering().map(|e| e.generation).max()?;
        covering().find(|e| e.generation == newest).map(|e| e.name.as_str())
    }
}

fn parse_line(line: &str) -> Option<(u64, u64, String)> {
    let mut parts = line.splitn(3, ' ');
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let start = hex(parts.next()?)?;
    let size = hex(parts.next()?)?;
    let name = parts.next()?.trim();
    (size > 0 && !name.is_empty()).then(|| (start, start.saturating_add(size), name.to_string()))
}

/// The pid a process has in its own pid namespace: the last of `NSpid:` in its status.
pub(crate) fn innermost_nspid(status: &str) -> Option<u32> {
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
        // Written anew in place, longer: read from its start.
        std::fs::write(&path, "1000 10 first\n2000 10 other\n4000 10 fourth\n").unwrap();
        assert!(map.refresh(pid));
        assert_eq!((map.lookup(0x2008), map.lookup(0x4008)), (Some("other"), Some("fourth")));
        // Written anew, as a JVM asked again writes it: the new map wins where it names code, the old one still
        // names code flushed since.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "3000 10 third\n1ff8 10 moved\n").unwrap();
        assert!(map.refresh(pid));
        assert_eq!(
            (map.lookup(0x1008), map.lookup(0x2004), map.lookup(0x3008)),
            (Some("first"), Some("moved"), Some("third"))
        );
        assert_eq!(map.entries.len(), 4, "the overwritten entries are dropped");
        std::fs::remove_file(&path).unwrap();
        assert!(!map.refresh(pid));
    }
}
