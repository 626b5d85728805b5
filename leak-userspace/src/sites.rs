//! Raw per-site kernel counters -> report sites: stacks resolved to frames, then sites that read the same merged
//! across processes (forked workers, restarted containers, short-lived children all allocate from the same code).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use leak_common::{kind, SiteCounters, SiteKey, CACHE_KMALLOC_BIT};

use crate::report::{Frame, Site};

/// Stack traces by id: the kernel's stack maps, and the user stacks unwound in userspace. Ids below zero mean "no
/// stack was taken".
pub trait StackSource {
    /// Addresses, leaf first.
    fn stack(&self, id: i32) -> Option<Vec<u64>>;

    /// An unwound user stack (`USTACK_UNWOUND_BIT` ids): each address with how it was found, leaf first.
    fn unwound(&self, _id: i32) -> Option<Vec<(u64, &'static str)>> {
        None
    }

    /// The kind of memory the pages of an unwound user stack's id lie in (`stacks::regions`), when known.
    fn region(&self, _id: i32) -> Option<&'static str> {
        None
    }

    /// A Python frame of an unwound stack (`python` frames), and whether it began a call of the eval loop.
    fn python_frame(&self, _address: u64) -> Option<(Frame, bool)> {
        None
    }
}

/// Addresses -> frames. The real one is [`crate::stacks::symbolize::Symbolizer`]; tests use fakes.
pub trait FrameResolver {
    fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame>;
    fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame>;
}

/// Which frees count against a site's allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outstanding {
    /// What is held now: allocations minus every free, the OOM kill's included.
    Live,
    /// What was held just before the OOM kill: frees made by the dying victim and the OOM reaper not counted.
    BeforeOomKill,
}

pub fn kind_name(k: u32) -> &'static str {
    match k {
        kind::ANON => "anon",
        kind::SLAB => "slab",
        kind::PAGE => "page",
        kind::PERCPU => "percpu",
        kind::HEAP => "heap",
        _ => "other",
    }
}

/// The slab cache named by a site key: `kmalloc-<size>` for kmalloc, the resolved name for a named cache.
pub fn cache_name(cache: u32, names: &HashMap<u32, String>) -> Option<String> {
    match cache {
        0 => None,
        c if c & CACHE_KMALLOC_BIT != 0 => Some(format!("kmalloc-{}", c & !CACHE_KMALLOC_BIT)),
        // A name the map did not hold (evicted, or the cache is gone): keep the hash rather than lose the split.
        c => Some(names.get(&c).cloned().unwrap_or_else(|| format!("cache-{c:08x}"))),
    }
}

/// Sites from the summed per-CPU counters, merged and sorted by outstanding bytes (largest first), at most `top`.
pub fn build<S, R>(
    raw: &[(SiteKey, SiteCounters)],
    stacks: &S,
    caches: &HashMap<u32, String>,
    comms: &HashMap<u32, String>,
    resolver: &mut R,
    mode: Outstanding,
    top: usize,
) -> Vec<Site>
where
    S: StackSource + ?Sized,
    R: FrameResolver + ?Sized,
{
    let mut merged: HashMap<MergeKey, Merged> = HashMap::new();
    for (key, counters) in raw {
        let mut frames = Vec::new();
        if let Some(addrs) = stack_of(stacks, key.kstack) {
            let kernel = resolver.kernel(&addrs);
            let skip = tracing_frames(&kernel);
            frames.extend(kernel.into_iter().skip(skip));
        }
        // Pages the slab allocator takes for a cache hold objects that are sites of their own: counted once.
        if matches!(key.kind, kind::PAGE | kind::OTHER) && frames.iter().any(backs_slab) {
            continue;
        }
        frames.extend(user_frames(stacks, resolver, key));
        if key.kind == kind::HEAP {
            trim_allocator(&mut frames);
        }
        let slab_cache = cache_name(key.cache, caches);
        let identity = MergeKey {
            kind: kind_name(key.kind),
            slab_cache: slab_cache.clone(),
            frames: frames.iter().map(FrameId::of).collect(),
        };
        let entry = merged.entry(identity).or_insert_with(|| Merged {
            site: Site {
                kind: kind_name(key.kind).to_string(),
                outstanding_bytes: 0,
                outstanding_allocs: 0,
                alloc_bytes: 0,
                alloc_count: 0,
                slab_cache,
                pids: Vec::new(),
                comms: Vec::new(),
                frames,
                label: None,
                region: None,
            },
            pids: BTreeSet::new(),
            comms: BTreeSet::new(),
            regions: BTreeMap::new(),
        });
        entry.add(key.tgid, counters, comms, mode, stacks.region(key.ustack));
    }
    let mut sites: Vec<Site> = merged.into_values().map(Merged::finish).collect();
    // Ties broken on the frames so that equal runs give equal reports.
    sites.sort_by(|a, b| {
        b.outstanding_bytes
            .cmp(&a.outstanding_bytes)
            .then(b.alloc_bytes.cmp(&a.alloc_bytes))
            .then_with(|| labels(&a.frames).cmp(labels(&b.frames)))
    });
    sites.truncate(top);
    sites
}

/// What names a site for people (the verdict, metrics): its label, else its first application frame.
pub fn site_name(s: &Site) -> Option<String> {
    s.label.clone().or_else(|| Some(app_frame(s)?.label().to_string()))
}

/// The frame that names a site for people: the first user frame with a symbol that is application code (outside
/// the allocator, the C and C++ runtime libraries and a language runtime's machinery: a `memset` leaf or V8's
/// typed-array fill is how, not who), else the first named user frame past libc, else the first named user frame
/// outside the allocator, else the first kernel frame past the allocator's own functions, else
/// the leaf.
pub fn app_frame(site: &Site) -> Option<&Frame> {
    let named = |kernel: bool| {
        site.frames.iter().filter(move |f| f.kernel == kernel && f.symbol.as_deref().is_some_and(|s| !is_allocator(s)))
    };
    let past_libc = || named(false).filter(|f| !is_runtime_library(f.module.as_deref().unwrap_or("")));
    past_libc()
        .find(|f| !crate::stacks::runtime::is_internal(f))
        .or_else(|| past_libc().next())
        .or_else(|| named(false).next())
        .or_else(|| named(true).next())
        .or_else(|| site.frames.first())
}

/// The C library, the dynamic loader and the C++ and compiler runtimes: code every program calls through.
pub fn is_runtime_library(module: &str) -> bool {
    const LIBS: &[&str] =
        &["libc.so", "libc-", "ld-linux", "ld-musl", "libc.musl", "libstdc++", "libgcc_s", "libm.so", "libpthread"];
    let base = module.rsplit('/').next().unwrap_or(module);
    LIBS.iter().any(|l| base.starts_with(l))
}

/// Allocator internals, kernel and C/C++/Rust runtime: they are how memory is obtained, not who wants it.
pub fn is_allocator(symbol: &str) -> bool {
    const PREFIXES: &[&str] = &[
        // page allocator and its callers on the fault path
        "__alloc_pages",
        "__alloc_frozen_pages",
        "alloc_pages",
        "__folio_alloc",
        "folio_alloc",
        "vma_alloc_folio",
        "alloc_anon_folio",
        "get_page_from_freelist",
        "__get_free_pages",
        "get_zeroed_page",
        "clear_page",
        "__memcg_kmem_charge",
        "mem_cgroup_charge",
        "__mem_cgroup_charge",
        "charge_memcg",
        "obj_cgroup_charge",
        // slab and friends
        "kmem_cache_alloc",
        "__kmem_cache_alloc",
        "slab_alloc",
        "___slab_alloc",
        "__slab_alloc",
        "allocate_slab",
        "new_slab",
        "kmalloc",
        "__kmalloc",
        "__do_kmalloc",
        "kvmalloc",
        "__kvmalloc",
        "kzalloc",
        "krealloc",
        "__memcg_slab_post_alloc_hook",
        "memcg_slab_post_alloc_hook",
        "pcpu_alloc",
        "__alloc_percpu",
        "vmalloc",
        "__vmalloc",
        // user space allocators
        "malloc",
        "calloc",
        "realloc",
        "__libc_malloc",
        "__libc_calloc",
        "__libc_realloc",
        "_int_malloc",
        "_int_realloc",
        "sysmalloc",
        "tcache_",
        "operator new",
        "__rust_alloc",
        "__rdl_alloc",
        "__rg_alloc",
        // standard library helpers (inlined into the caller's frame): the caller is who wants the memory
        "alloc::",
        "core::",
        "std::",
        "je_",
        "tc_malloc",
        "tc_new",
        "__memset",
        "memset",
        "__memcpy",
        "memcpy",
        "__memmove",
        "memmove",
        // the C library's internal names for its own entry points (statically linked programs have no module
        // to tell them by)
        "__GI_",
        "__libc_",
        // the C++ standard library's names as they stand mangled (inlined frames may carry linkage names)
        "_ZSt",
        "_ZNSt",
        "_ZNKSt",
    ];
    let name = qualified_name(symbol);
    // `<u8 as alloc::vec::SpecFromElem>::from_elem`: a standard library trait's code, whatever the type.
    let trait_path = name.strip_prefix('<').and_then(|n| n.split_once(" as ")).map(|(_, t)| t);
    [Some(symbol), Some(name), trait_path].into_iter().flatten().any(|n| PREFIXES.iter().any(|p| n.starts_with(p)))
}

/// A demangled C++ name without its return type: `unsigned char* std::fill_n<unsigned char*>(...)` ->
/// `std::fill_n<unsigned char*>(...)`. Spaces inside template arguments and parameters do not count.
fn qualified_name(symbol: &str) -> &str {
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in symbol.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ']' => depth -= 1,
            ')' => depth -= 1,
            ' ' if depth == 0 => start = i + 1,
            _ => {}
        }
        if c == '(' && depth == 1 {
            break;
        }
    }
    &symbol[start..]
}

/// How many leaf frames of a kernel stack are the tracing machinery rather than the allocating code: a stack taken
/// in a raw tracepoint program starts in the program and the kernel's dispatcher for the event (`bpf_trace_run4`,
/// on some kernels `__bpf_trace_<event>` or `__traceiter_<event>` too). The program's own frame has no symbol when
/// the kernel does not list BPF programs in kallsyms, so the count runs to the last dispatcher frame.
fn tracing_frames(frames: &[Frame]) -> usize {
    const DISPATCH: [&str; 3] = ["bpf_trace_run", "__bpf_trace_", "__traceiter_"];
    let tracing = |f: &Frame| {
        f.symbol.as_deref().is_some_and(|s| s.starts_with("bpf_prog_") || DISPATCH.iter().any(|d| s.starts_with(d)))
    };
    frames.iter().take(4).rposition(tracing).map_or(0, |i| i + 1)
}

/// A heap site starts at its first frame outside the allocator: the return probe's leaf is whoever called the
/// allocator, which may be a wrapper (libstdc++'s `operator new`, a standard container's allocation helpers).
/// A stack made of nothing else is kept whole.
fn trim_allocator(frames: &mut Vec<Frame>) {
    let wrapper = |f: &Frame| f.symbol.as_deref().is_some_and(is_allocator);
    let n = frames.iter().take_while(|f| wrapper(f)).count();
    if n < frames.len() {
        frames.drain(..n);
    }
}

/// The user frames of a site, each saying how it was found: unwound ones as the unwinder says, those of a
/// frame-pointer stack id as `fp` but the leaf (`regs`).
fn user_frames<S, R>(stacks: &S, resolver: &mut R, key: &SiteKey) -> Vec<Frame>
where
    S: StackSource + ?Sized,
    R: FrameResolver + ?Sized,
{
    let addrs = match stacks.unwound(key.ustack) {
        Some(unwound) => unwound,
        None => stack_of(stacks, key.ustack)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, a)| (a, if i == 0 { "regs" } else { "fp" }))
            .collect(),
    };
    let mut frames = Vec::new();
    let mut python = Vec::new();
    for (addr, how) in addrs {
        if how == "python" {
            python.extend(stacks.python_frame(addr));
            continue;
        }
        // One address may stand for several frames (functions inlined there): all were found the same way.
        for mut f in resolver.user(key.tgid, &[addr]) {
            f.unwind = Some(
                if f.module.as_deref() == Some(crate::stacks::symbolize::JIT_MODULE) { "jit" } else { how }.into(),
            );
            frames.push(f);
        }
    }
    interleave_python(frames, python)
}

/// Native frames (leaf first) with the Python frames (newest first) each where it runs: the frames up to and
/// including an entry frame run in one `_PyEval_EvalFrameDefault`, and come leafward of it. Frames left over
/// (the native walk ended early) go at the root end. Python 3.12's perf-map trampolines (`py::fn:file`) name the
/// same functions again, and go when the interpreter's frames are there.
fn interleave_python(native: Vec<Frame>, python: Vec<(Frame, bool)>) -> Vec<Frame> {
    if python.is_empty() {
        return native;
    }
    let mut python = python.into_iter().peekable();
    let mut out = Vec::with_capacity(native.len() + python.len());
    for f in native {
        if f.symbol.as_deref().is_some_and(|s| s.starts_with("py::")) {
            continue;
        }
        if f.symbol.as_deref() == Some("_PyEval_EvalFrameDefault") {
            for (py, entry) in python.by_ref() {
                out.push(py);
                if entry {
                    break;
                }
            }
        }
        out.push(f);
    }
    out.extend(python.map(|(f, _)| f));
    out
}

fn stack_of<S: StackSource + ?Sized>(stacks: &S, id: i32) -> Option<Vec<u64>> {
    if id < 0 {
        return None;
    }
    stacks.stack(id)
}

/// A kernel frame of the slab allocator getting a new slab page (`allocate_slab`, `new_slab`, `alloc_slab_page`,
/// compiler suffixes such as `.isra.0` aside).
fn backs_slab(frame: &Frame) -> bool {
    let name = frame.symbol.as_deref().unwrap_or("");
    let base = name.split('.').next().unwrap_or(name);
    frame.kernel && matches!(base, "allocate_slab" | "new_slab" | "alloc_slab_page")
}

fn labels(frames: &[Frame]) -> impl Iterator<Item = &str> {
    frames.iter().map(Frame::label)
}

/// Two sites are the same when they allocate the same kind from the same cache through the same code.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MergeKey {
    kind: &'static str,
    slab_cache: Option<String>,
    frames: Vec<FrameId>,
}

/// A frame as code, independent of where a process happened to map it and of the line within the function: the
/// function when known (the same across pids, and for every call site of one function: one leak, one site), the
/// address otherwise.
#[derive(Debug, PartialEq, Eq, Hash)]
enum FrameId {
    Symbol { name: String, kernel: bool },
    Address(String),
}

impl FrameId {
    fn of(f: &Frame) -> Self {
        match &f.symbol {
            Some(name) => FrameId::Symbol { name: name.clone(), kernel: f.kernel },
            None => FrameId::Address(f.address.clone()),
        }
    }
}

struct Merged {
    site: Site,
    pids: BTreeSet<u32>,
    comms: BTreeSet<String>,
    /// Outstanding, then allocated bytes by the kind of memory the pages lie in.
    regions: BTreeMap<&'static str, (i64, u64)>,
}

impl Merged {
    fn add(
        &mut self,
        tgid: u32,
        c: &SiteCounters,
        comms: &HashMap<u32, String>,
        mode: Outstanding,
        region: Option<&'static str>,
    ) {
        let (freed_bytes, freed_count) = match mode {
            Outstanding::Live => {
                (c.free_bytes.saturating_add(c.oom_freed_bytes), c.free_count.saturating_add(c.oom_freed_count))
            }
            Outstanding::BeforeOomKill => (c.free_bytes, c.free_count),
        };
        let s = &mut self.site;
        let held = signed_diff(c.alloc_bytes, freed_bytes);
        if let Some(region) = region {
            let bytes = self.regions.entry(region).or_default();
            *bytes = (bytes.0.saturating_add(held), bytes.1.saturating_add(c.alloc_bytes));
        }
        s.outstanding_bytes = s.outstanding_bytes.saturating_add(held);
        s.outstanding_allocs = s.outstanding_allocs.saturating_add(signed_diff(c.alloc_count, freed_count));
        s.alloc_bytes = s.alloc_bytes.saturating_add(c.alloc_bytes);
        s.alloc_count = s.alloc_count.saturating_add(c.alloc_count);
        self.pids.insert(tgid);
        if let Some(comm) = comms.get(&tgid) {
            self.comms.insert(comm.clone());
        }
    }

    fn finish(mut self) -> Site {
        self.site.pids = self.pids.into_iter().collect();
        self.site.comms = self.comms.into_iter().collect();
        self.site.label = app_frame(&self.site).map(|f| f.label().to_string());
        // The kind that holds most of the pages; of a site that holds none, the kind most of them were taken from.
        self.site.region = self.regions.into_iter().max_by_key(|&(_, bytes)| bytes).map(|(r, _)| r.to_string());
        self.site
    }
}

/// `a - b` as i64: frees may exceed allocations seen (memory allocated before tracing began and freed during it).
fn signed_diff(a: u64, b: u64) -> i64 {
    (i128::from(a) - i128::from(b)).clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

#[cfg(test)]
mod tests;
