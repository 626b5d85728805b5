//! Stack addresses -> report frames, with blazesym.
//!
//! Kernel addresses resolve through /proc/kallsyms (no vmlinux needed), their module through /proc/modules.
//! User addresses resolve through the process's mappings, reading each object through
//! `/proc/<pid>/map_files/<range>`: that link reaches the file the process really mapped, inside its container's
//! mount namespace or after it was deleted on disk.
//!
//! Victims of an OOM kill are gone by the time the report is built, so a process is prepared when it is first
//! seen: blazesym caches its mappings (`cache_vmas`) and opens every mapped object once (`Cache::Elf` on the
//! `map_files` path, which pins that path in blazesym's file cache and keeps the file open). Later lookups for that
//! pid are served from the cached mappings and the pinned open files, even when /proc/<pid> no longer exists.
//! Cached mappings are frozen, so they are refreshed when an address falls outside them while the process lives
//! (libraries loaded later). Results are memoised per (pid, address) and per kernel address.
use std::{collections::HashMap, path::PathBuf};

use blazesym::symbolize::{
    cache, evict,
    source::{Kernel, Process, Source},
    CodeInfo, Input, Sym, Symbolized, Symbolizer as Blaze,
};
use blazesym::MaybeDefault;

use crate::{report::Frame, stacks::perfmap::PerfMap};

/// The module named for frames in JIT code that a perf map names.
pub const JIT_MODULE: &str = "[jit]";

pub struct Symbolizer {
    blaze: Blaze,
    /// Kernel module address ranges, read once: modules rarely load during a trace.
    kernel_modules: Option<Vec<Region>>,
    /// Each remembered process's executable mappings, to name the module of a frame: blazesym shares one
    /// resolver per file across processes and names it by whichever `map_files` link opened it first.
    processes: HashMap<u32, Vec<Region>>,
    kernel_memo: HashMap<u64, Vec<Frame>>,
    user_memo: HashMap<(u32, u64), Vec<Frame>>,
    /// Perf maps of the processes whose stacks lead into JIT code, read through the process's root (blazesym's
    /// own lookup uses the host's /tmp and pid, which miss a containerised process).
    perf_maps: HashMap<u32, PerfMap>,
}

/// The link through which `pid`'s mapping `r` is opened (and pinned in blazesym's cache).
fn map_files_link(pid: u32, r: &Region) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", r.start, r.end))
}

/// A named address range: a kernel module, or an executable file mapping of a process.
#[derive(Debug, Clone, PartialEq)]
struct Region {
    name: String,
    start: u64,
    end: u64,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Symbolizer {
            blaze: Blaze::new(),
            kernel_modules: None,
            processes: HashMap::new(),
            kernel_memo: HashMap::new(),
            user_memo: HashMap::new(),
            perf_maps: HashMap::new(),
        }
    }

    /// Drops what was cached for `pid` (its mappings, names, perf map, and the objects it pinned): it exited and
    /// no site refers to it.
    pub fn forget_process(&mut self, pid: u32) {
        // Each container's files are files of their own (an overlay mount each): their parsed symbols would stay
        // for every container that ever ran, unless the pinning links go (an object other processes still pin
        // stays).
        for r in self.processes.remove(&pid).unwrap_or_default() {
            let _ = self.blaze.evict(&evict::Elf::new(map_files_link(pid, &r)).into());
        }
        self.perf_maps.remove(&pid);
        self.user_memo.retain(|&(p, _), _| p != pid);
        let _ = self.blaze.evict(&evict::Evict::Process(evict::Process::new(pid.into())));
    }

    /// Caches `pid`'s mappings and opens the objects it maps, so its stacks still symbolize after it exits.
    /// Called again, it refreshes them (new libraries). Best effort: a process already gone, or a mapping that
    /// cannot be opened, only costs symbols later, and what was cached before stays.
    pub fn remember_process(&mut self, pid: u32) {
        // pid 0 would mean "this process" to blazesym.
        if pid == 0 {
            return;
        }
        let mut process = cache::Process::new(pid.into());
        process.cache_vmas = true;
        process.cache_perf_map = false;
        // A JIT's perf map is read from the start, and grows from then on.
        if let Some(map) = self.perf_maps.get_mut(&pid) {
            map.refresh(pid);
        }
        // A dying process (OOM victim) shows an empty map list: caching that would throw away the good cache.
        let cached = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|e| e.to_string())
            .and_then(|maps| match parse_exec_mappings(&maps).is_empty() {
                true => Err("no executable mappings (exiting?)".to_string()),
                false => Ok(maps),
            })
            .and_then(|maps| self.blaze.cache(&process.into()).map(|()| maps).map_err(|e| e.to_string()));
        let maps = match cached {
            Ok(maps) => maps,
            Err(e) => {
                tracing::debug!("cannot cache the mappings of pid {pid}: {e}");
                self.processes.entry(pid).or_default();
                return;
            }
        };
        let regions = parse_exec_mappings(&maps);
        for r in &regions {
            let link = map_files_link(pid, r);
            if let Err(e) = self.blaze.cache(&cache::Elf::new(&link).into()) {
                // Not every executable mapping is an ELF object blazesym reads.
                tracing::trace!("not caching {} ({}): {e}", link.display(), r.name);
            }
        }
        // Mappings gone since the last look (a library unloaded) no longer resolve through the new cached
        // mappings either: their objects need not stay pinned.
        for gone in self.processes.insert(pid, regions).unwrap_or_default() {
            if !self.processes[&pid].contains(&gone) {
                let _ = self.blaze.evict(&evict::Elf::new(map_files_link(pid, &gone)).into());
            }
        }
    }

    /// Frames for kernel addresses, one or more per address (leaf first as given).
    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let missing: Vec<u64> = unique_missing(addrs, |a| self.kernel_memo.contains_key(a));
        if !missing.is_empty() {
            let src = Source::Kernel(Kernel {
                kallsyms: MaybeDefault::Default,
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Default::default()
            });
            let resolved = symbolize(&self.blaze, &src, &missing, true);
            let modules = self.kernel_modules.get_or_insert_with(read_kernel_modules);
            for (addr, mut frames) in missing.into_iter().zip(resolved) {
                let module = name_of(modules, addr).unwrap_or("kernel");
                frames.iter_mut().for_each(|f| f.module = Some(module.to_string()));
                self.kernel_memo.insert(addr, frames);
            }
        }
        addrs.iter().flat_map(|a| self.kernel_memo[a].iter().cloned()).collect()
    }

    /// Frames for user addresses of `pid` (leaf first as given), inlined functions as extra frames.
    pub fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        if pid == 0 {
            return addrs.iter().map(|&a| Frame::unknown(a, false)).collect();
        }
        let missing: Vec<u64> = unique_missing(addrs, |a| self.user_memo.contains_key(&(pid, *a)));
        if !missing.is_empty() {
            // Cached mappings are frozen: refresh them when an address falls outside (a library loaded since,
            // or a process first seen in the middle of its exec).
            let known = self.processes.get(&pid);
            if known.is_none_or(|regions| missing.iter().any(|&a| name_of(regions, a).is_none())) {
                self.remember_process(pid);
            }
            let mut process = Process::new(pid.into());
            // The perf map is read through /proc/<pid>, which is gone for dead processes.
            process.perf_map = false;
            let resolved = symbolize(&self.blaze, &Source::Process(process), &missing, false);
            let regions = self.processes.get(&pid).map_or(&[][..], Vec::as_slice);
            let mut jit = Vec::new();
            for (addr, mut frames) in missing.into_iter().zip(resolved) {
                let module = name_of(regions, addr);
                if module.is_none() && frames.iter().all(|f| f.symbol.is_none()) {
                    jit.push(addr);
                }
                frames.iter_mut().for_each(|f| f.module = module.map(str::to_string));
                self.user_memo.insert((pid, addr), frames);
            }
            self.name_jit_frames(pid, &jit);
        }
        // An unnamed JIT address is not memoised (its name may come later).
        addrs
            .iter()
            .flat_map(|&a| self.user_memo.get(&(pid, a)).cloned().unwrap_or_else(|| vec![Frame::unknown(a, false)]))
            .collect()
    }
}

impl Symbolizer {
    /// Names addresses outside every file mapping from the process's perf map, read again for addresses it does
    /// not name yet (JIT code written since). Those it names are not memoised when unnamed, so a map that appears
    /// later (a JVM asked for one) still names them.
    fn name_jit_frames(&mut self, pid: u32, addrs: &[u64]) {
        if addrs.is_empty() {
            return;
        }
        let map = self.perf_maps.entry(pid).or_default();
        if addrs.iter().any(|&a| map.lookup(a).is_none()) {
            map.refresh(pid);
        }
        for &addr in addrs {
            match map.lookup(addr) {
                Some(name) => {
                    let frame = Frame {
                        symbol: Some(name.to_string()),
                        module: Some(JIT_MODULE.to_string()),
                        ..Frame::unknown(addr, false)
                    };
                    self.user_memo.insert((pid, addr), vec![frame]);
                }
                None if std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                    self.user_memo.remove(&(pid, addr));
                }
                None => {}
            }
        }
    }
}

/// The addresses of `addrs` not known yet, each once.
fn unique_missing(addrs: &[u64], known: impl Fn(&u64) -> bool) -> Vec<u64> {
    let mut missing: Vec<u64> = addrs.iter().copied().filter(|a| !known(a)).collect();
    missing.sort_unstable();
    missing.dedup();
    missing
}

/// One frame list per address (module left to the caller); an address that does not resolve keeps a frame with
/// its address only.
fn symbolize(blaze: &Blaze, src: &Source, addrs: &[u64], kernel: bool) -> Vec<Vec<Frame>> {
    match blaze.symbolize(src, Input::AbsAddr(addrs)) {
        Ok(results) if results.len() == addrs.len() => results
            .into_iter()
            .zip(addrs)
            .map(|(r, &addr)| match r {
                Symbolized::Sym(sym) => frames_of(&sym, addr, kernel),
                Symbolized::Unknown(_) => vec![Frame::unknown(addr, kernel)],
            })
            .collect(),
        other => {
            if let Err(e) = other {
                tracing::debug!("symbolization failed: {e}");
            }
            addrs.iter().map(|&a| vec![Frame::unknown(a, kernel)]).collect()
        }
    }
}

/// A symbol and the functions inlined at the address, innermost first. Each frame's file/line is where execution
/// is in that function (blazesym already shifts the call-site locations so).
fn frames_of(sym: &Sym, addr: u64, kernel: bool) -> Vec<Frame> {
    let frame = |name: &str, code: Option<&CodeInfo>| Frame {
        symbol: Some(name.to_string()),
        module: None,
        address: format!("{addr:#x}"),
        file: code.map(|c| c.to_path().display().to_string()),
        line: code.and_then(|c| c.line),
        kernel,
        unwind: None,
    };
    let mut frames: Vec<Frame> = sym.inlined.iter().rev().map(|f| frame(&f.name, f.code_info.as_ref())).collect();
    frames.push(frame(&sym.name, sym.code_info.as_deref()));
    frames
}

/// The executable, file-backed mappings of a /proc/<pid>/maps text (only those hold code a stack can point
/// into), named by file name.
fn parse_exec_mappings(maps: &str) -> Vec<Region> {
    crate::stacks::maps::parse(maps)
        .into_iter()
        .filter(|m| m.exec && m.is_file())
        .filter_map(|m| Some(Region { name: m.name()?.to_string(), start: m.start, end: m.end }))
        .collect()
}

fn read_kernel_modules() -> Vec<Region> {
    std::fs::read_to_string("/proc/modules").map(|t| parse_modules(&t)).unwrap_or_default()
}

/// `/proc/modules` lines: `name size refcount deps state address`.
fn parse_modules(text: &str) -> Vec<Region> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let size: u64 = f.get(1)?.parse().ok()?;
            let start = u64::from_str_radix(f.get(5)?.trim_start_matches("0x"), 16).ok()?;
            (start != 0).then(|| Region { name: f[0].to_string(), start, end: start.saturating_add(size) })
        })
        .collect()
}

fn name_of(regions: &[Region], addr: u64) -> Option<&str> {
    regions.iter().find(|r| (r.start..r.end).contains(&addr)).map(|r| r.name.as_str())
}

impl crate::sites::FrameResolver for Symbolizer {
    fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        Symbolizer::kernel(self, addrs)
    }
    fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        Symbolizer::user(self, pid, addrs)
    }
}

#[cfg(test)]
mod tests;
