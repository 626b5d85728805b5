//! Which object provides a process's `malloc`, and where its allocator functions lie in that file: what `--heap`
//! attaches its uprobes to.
//!
//! The object is the one the dynamic linker binds `malloc` to: the executable when it defines it (a static
//! binary, or one that brings its own allocator), else a loaded library other than the C library that exports it
//! (jemalloc, tcmalloc, mimalloc, linked or preloaded: they come before libc in the lookup order), else the C
//! library (glibc or musl). Files are read through `/proc/<pid>/root`, so a container's own libc is the one
//! probed.
use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::stacks::maps;

/// The program an allocator function's entry runs, and whether its return is probed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub program: &'static str,
    pub returns: bool,
}

const MALLOC: Entry = Entry { program: "lt_heap_malloc", returns: true };
const CALLOC: Entry = Entry { program: "lt_heap_calloc", returns: true };
const REALLOC: Entry = Entry { program: "lt_heap_realloc", returns: true };
const REALLOCARRAY: Entry = Entry { program: "lt_heap_reallocarray", returns: true };
const MEMALIGN: Entry = Entry { program: "lt_heap_memalign", returns: true };
const POSIX_MEMALIGN: Entry = Entry { program: "lt_heap_posix_memalign", returns: true };
const SIZED: Entry = Entry { program: "lt_heap_sized", returns: true };
const FREE: Entry = Entry { program: "lt_heap_free", returns: false };

/// The program every probed return runs.
pub const RETURN_PROGRAM: &str = "lt_heap_return";

/// Every program `--heap` attaches to a process.
pub fn programs() -> impl Iterator<Item = &'static str> {
    [MALLOC, CALLOC, REALLOC, REALLOCARRAY, MEMALIGN, POSIX_MEMALIGN, SIZED, FREE]
        .into_iter()
        .map(|e| e.program)
        .chain([RETURN_PROGRAM])
}

/// The C allocator's functions, and jemalloc's non-standard ones (`mallocx(size, flags)`, `rallocx(ptr, size,
/// flags)`, `dallocx`/`sdallocx(ptr, ...)`), which Redis calls.
const C_FUNCTIONS: &[(&str, Entry)] = &[
    ("malloc", MALLOC),
    ("calloc", CALLOC),
    ("realloc", REALLOC),
    ("reallocarray", REALLOCARRAY),
    ("memalign", MEMALIGN),
    ("aligned_alloc", MEMALIGN),
    ("posix_memalign", POSIX_MEMALIGN),
    ("valloc", SIZED),
    ("pvalloc", SIZED),
    ("free", FREE),
    ("cfree", FREE),
    ("mallocx", SIZED),
    ("rallocx", REALLOC),
    ("dallocx", FREE),
    ("sdallocx", FREE),
];

/// C++ `operator new` and `delete`: probed only in an allocator that defines them itself (tcmalloc, jemalloc).
/// libstdc++'s end in `malloc` and `free`, which are probed already.
const CXX_FUNCTIONS: &[(&str, Entry)] = &[
    ("_Znwm", SIZED),
    ("_Znam", SIZED),
    ("_ZnwmRKSt9nothrow_t", SIZED),
    ("_ZnamRKSt9nothrow_t", SIZED),
    ("_ZnwmSt11align_val_t", SIZED),
    ("_ZnamSt11align_val_t", SIZED),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", SIZED),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", SIZED),
    ("_ZdlPv", FREE),
    ("_ZdaPv", FREE),
    ("_ZdlPvm", FREE),
    ("_ZdaPvm", FREE),
    ("_ZdlPvRKSt9nothrow_t", FREE),
    ("_ZdaPvRKSt9nothrow_t", FREE),
    ("_ZdlPvSt11align_val_t", FREE),
    ("_ZdaPvSt11align_val_t", FREE),
    ("_ZdlPvmSt11align_val_t", FREE),
    ("_ZdaPvmSt11align_val_t", FREE),
];

/// One probe point: a file offset in the allocator's object and what runs there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub symbol: &'static str,
    pub offset: u64,
    pub entry: Entry,
}

/// A process's allocator: the file to attach to, as the process sees it (`path`) and as this host opens it
/// (`host_path`), and its probe points (one per address: aliases such as `free`/`cfree` share one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocator {
    pub path: String,
    pub host_path: PathBuf,
    pub probes: Vec<Probe>,
}

/// The C libraries: their `malloc` is the last resort.
fn is_c_library(name: &str) -> bool {
    name.starts_with("libc.so")
        || name.starts_with("libc-")
        || name.starts_with("ld-musl")
        || name.starts_with("libc.musl")
}

/// Finds the allocator of process `pid`.
pub fn find(pid: u32) -> Result<Allocator> {
    let candidates = objects(pid)?;
    if candidates.is_empty() {
        bail!("maps no executable file");
    }
    for path in &candidates {
        let host_path = PathBuf::from(format!("/proc/{pid}/root{path}"));
        let Ok(file) = std::fs::File::open(&host_path) else { continue };
        // Mapped, not read: only the symbol tables are touched, and a spawned process is tried every 20 ms until
        // its allocator is mapped, its executable (maybe a large one) among the candidates each time.
        // SAFETY: the view is only read while parsing; a file truncated meanwhile can at worst fault this read,
        // which files mapped by a running process are not.
        let Ok(data) = (unsafe { memmap2::Mmap::map(&file) }) else { continue };
        let name = path.rsplit('/').next().unwrap_or(path);
        let probes = match probe_points(&data, !name.starts_with("libstdc++")) {
            Ok(p) if p.iter().any(|p| p.symbol == "malloc") => p,
            _ => continue,
        };
        return Ok(Allocator { path: path.clone(), host_path, probes });
    }
    Err(anyhow!(
        "no mapped object defines malloc (a stripped static binary, or a runtime with an allocator of its own)"
    ))
}

/// The executable files process `pid` maps, in the order the dynamic linker would look for `malloc`.
pub fn objects(pid: u32) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).with_context(|| format!("process {pid} is gone"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string());
    Ok(candidates(&maps::parse(&text), exe.as_deref()))
}

/// The executable files a process maps, in the order the dynamic linker would look for `malloc`: the executable,
/// the other libraries, the C library last.
fn candidates(mappings: &[maps::Mapping], exe: Option<&str>) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for m in mappings.iter().filter(|m| m.exec && m.is_file()) {
        let path = m.path.as_deref().unwrap_or_default().trim_end_matches(" (deleted)").to_string();
        if !files.contains(&path) {
            files.push(path);
        }
    }
    let c_lib = |p: &String| is_c_library(p.rsplit('/').next().unwrap_or(p));
    let mut ordered: Vec<String> =
        exe.iter().filter(|e| files.iter().any(|f| f == *e)).map(|e| e.to_string()).collect();
    ordered.extend(files.iter().filter(|f| Some(f.as_str()) != exe && !c_lib(f)).cloned());
    ordered.extend(files.iter().filter(|f| c_lib(f)).cloned());
    ordered
}

/// The allocator functions an object defines, as file offsets, one per address (the first name in the tables'
/// order wins). `cxx`: C++ operators count too.
pub fn probe_points(data: &[u8], cxx: bool) -> Result<Vec<Probe>> {
    let file = object::File::parse(data).context("not an object file")?;
    let wanted =
        |name: &str| C_FUNCTIONS.iter().chain(CXX_FUNCTIONS.iter().filter(|_| cxx)).position(|(n, _)| *n == name);
    let table: Vec<&(&str, Entry)> = C_FUNCTIONS.iter().chain(CXX_FUNCTIONS.iter()).collect();
    // Address -> the lowest table index naming it. Exported (dynamic) symbols and the full table both count: a
    // static binary has only the latter.
    let mut by_address: BTreeMap<u64, usize> = BTreeMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if sym.kind() != SymbolKind::Text || sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let Some(index) = sym.name().ok().and_then(|n| wanted(n.split('@').next().unwrap_or(n))) else { continue };
        let slot = by_address.entry(sym.address()).or_insert(index);
        *slot = (*slot).min(index);
    }
    let mut probes = Vec::new();
    let mut seen = Vec::new();
    for (address, index) in by_address {
        let (symbol, entry) = *table[index];
        // One name, one probe: a second address for the same name (a local copy) is not what callers bind to.
        if seen.contains(&symbol) {
            continue;
        }
        let Some(offset) = file_offset(&file, address) else { continue };
        seen.push(symbol);
        probes.push(Probe { symbol, offset, entry });
    }
    probes.sort_by_key(|p| table.iter().position(|(n, _)| *n == p.symbol));
    Ok(probes)
}

/// A virtual address's offset in the file, through the loadable segment that holds it.
fn file_offset(file: &object::File, address: u64) -> Option<u64> {
    file.segments().find_map(|s| {
        let (offset, size) = s.file_range();
        (address >= s.address() && address < s.address() + size).then(|| address - s.address() + offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(path: &str, exec: bool) -> maps::Mapping {
        maps::Mapping {
            start: 0,
            end: 0,
            exec,
            no_access: false,
            offset: 0,
            dev: "08:01".into(),
            inode: 1,
            path: Some(path.into()),
        }
    }

    #[test]
    fn the_executable_comes_first_and_the_c_library_last() {
        let m = [
            mapping("/srv/app", true),
            mapping("/lib/x86_64-linux-gnu/libc.so.6", true),
            mapping("/lib/x86_64-linux-gnu/libjemalloc.so.2", true),
            mapping("/lib/x86_64-linux-gnu/libjemalloc.so.2", true),
            mapping("/usr/share/data.bin", false),
            mapping("/lib/ld-musl-x86_64.so.1", true),
        ];
        assert_eq!(
            candidates(&m, Some("/srv/app")),
            [
                "/srv/app",
                "/lib/x86_64-linux-gnu/libjemalloc.so.2",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/ld-musl-x86_64.so.1"
            ]
        );
        assert_eq!(candidates(&m[1..2], None), ["/lib/x86_64-linux-gnu/libc.so.6"]);
    }

    /// This process's own C library: every glibc allocator function is found once, aliases (`free`, `cfree`)
    /// folded, and each offset lands in the file.
    #[test]
    fn glibc_has_every_allocator_function() {
        let me = find(std::process::id()).expect("this test's own allocator");
        assert!(me.path.contains("libc.so"), "{}", me.path);
        let names: Vec<&str> = me.probes.iter().map(|p| p.symbol).collect();
        // aligned_alloc is memalign under another name in glibc 2.36: folded into it.
        for f in ["malloc", "calloc", "realloc", "free", "posix_memalign", "memalign", "valloc"] {
            assert!(names.contains(&f), "{f} missing from {names:?}");
        }
        assert!(!names.contains(&"cfree"), "cfree is free's alias: {names:?}");
        let size = std::fs::metadata(&me.host_path).unwrap().len();
        let mut offsets: Vec<u64> = me.probes.iter().map(|p| p.offset).collect();
        assert!(offsets.iter().all(|&o| o > 0 && o < size));
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), me.probes.len(), "one probe per address");
    }

    #[test]
    fn garbage_is_not_an_object() {
        assert!(probe_points(b"not an elf file", true).is_err());
    }
}
