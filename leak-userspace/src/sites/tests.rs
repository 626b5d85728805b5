use super::*;

/// Stacks by id; a missing id stands for an evicted stack.
struct FakeStacks(HashMap<i32, Vec<u64>>);

impl StackSource for FakeStacks {
    fn stack(&self, id: i32) -> Option<Vec<u64>> {
        self.0.get(&id).cloned()
    }
}

/// Symbols by address; user symbols by address only (as if every pid mapped the same code at its own base,
/// `pid * 0x1000` away).
struct FakeResolver {
    kernel: HashMap<u64, &'static str>,
    user: HashMap<u64, &'static str>,
    calls: usize,
}

fn frame(symbol: Option<&str>, addr: u64, kernel: bool) -> Frame {
    Frame { symbol: symbol.map(str::to_string), ..Frame::unknown(addr, kernel) }
}

impl FrameResolver for FakeResolver {
    fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        self.calls += 1;
        addrs.iter().map(|a| frame(self.kernel.get(a).copied(), *a, true)).collect()
    }
    fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        self.calls += 1;
        let base = u64::from(pid) * 0x1000;
        addrs.iter().map(|a| frame(self.user.get(&a.wrapping_sub(base)).copied(), *a, false)).collect()
    }
}

fn resolver() -> FakeResolver {
    FakeResolver {
        kernel: HashMap::from([(0xffff_0001, "__alloc_pages"), (0xffff_0002, "do_anonymous_page")]),
        user: HashMap::from([(0x10, "malloc"), (0x20, "leak_here"), (0x30, "main")]),
        calls: 0,
    }
}

fn key(tgid: u32, kstack: i32, ustack: i32, kind: u32, cache: u32) -> SiteKey {
    SiteKey { tgid, kstack, ustack, cache, kind, ..Default::default() }
}

fn counters(alloc: u64, free: u64, oom_freed: u64) -> SiteCounters {
    SiteCounters {
        alloc_bytes: alloc * 4096,
        alloc_count: alloc,
        free_bytes: free * 4096,
        free_count: free,
        oom_freed_bytes: oom_freed * 4096,
        oom_freed_count: oom_freed,
    }
}

/// Kernel stack 1 for everyone; user stack 100 + pid for each pid, the same code at a pid-specific base.
fn stacks(pids: &[u32]) -> FakeStacks {
    let mut m = HashMap::from([(1, vec![0xffff_0001, 0xffff_0002]), (2, vec![0xffff_0001])]);
    for &pid in pids {
        let base = u64::from(pid) * 0x1000;
        m.insert(100 + pid as i32, vec![base + 0x10, base + 0x20, base + 0x30]);
    }
    FakeStacks(m)
}

fn comms() -> HashMap<u32, String> {
    HashMap::from([(7, "worker".to_string()), (8, "worker".to_string()), (9, "other".to_string())])
}

#[test]
fn kernel_frames_come_first_then_user_frames() {
    let raw = [(key(7, 1, 107, kind::ANON, 0), counters(10, 2, 0))];
    let sites = build(&raw, &stacks(&[7]), &HashMap::new(), &comms(), &mut resolver(), Outstanding::Live, 10);
    assert_eq!(sites.len(), 1);
    let labels: Vec<&str> = sites[0].frames.iter().map(Frame::label).collect();
    assert_eq!(labels, ["__alloc_pages", "do_anonymous_page", "malloc", "leak_here", "main"]);
    assert!(sites[0].frames[..2].iter().all(|f| f.kernel));
    assert!(sites[0].frames[2..].iter().all(|f| !f.kernel));
    assert_eq!(sites[0].kind, "anon");
    assert_eq!(sites[0].outstanding_bytes, 8 * 4096);
    assert_eq!(sites[0].outstanding_allocs, 8);
    assert_eq!((sites[0].alloc_bytes, sites[0].alloc_count), (10 * 4096, 10));
    assert_eq!(sites[0].pids, [7]);
    assert_eq!(sites[0].comms, ["worker"]);
}

#[test]
fn same_code_in_different_pids_merges() {
    let raw = [
        (key(7, 1, 107, kind::ANON, 0), counters(10, 0, 0)),
        (key(8, 1, 108, kind::ANON, 0), counters(5, 1, 0)),
        (key(9, 1, 109, kind::ANON, 0), counters(1, 0, 0)),
    ];
    let sites = build(&raw, &stacks(&[7, 8, 9]), &HashMap::new(), &comms(), &mut resolver(), Outstanding::Live, 10);
    assert_eq!(sites.len(), 1, "{sites:#?}");
    assert_eq!(sites[0].outstanding_allocs, 15);
    assert_eq!(sites[0].alloc_count, 16);
    assert_eq!(sites[0].pids, [7, 8, 9]);
    assert_eq!(sites[0].comms, ["other", "worker"]);
}

/// Stacks whose ids say what memory their pages lie in, as unwound stacks' ids do.
struct PlacedStacks(FakeStacks, HashMap<i32, &'static str>);

impl StackSource for PlacedStacks {
    fn stack(&self, id: i32) -> Option<Vec<u64>> {
        self.0.stack(id)
    }
    fn region(&self, id: i32) -> Option<&'static str> {
        self.1.get(&id).copied()
    }
}

/// A site's region is the kind of memory holding most of its pages; of a site holding none, the kind most were
/// taken from; unknown when no page said.
#[test]
fn a_site_lies_where_most_of_its_pages_are() {
    let raw = [
        (key(7, 1, 107, kind::ANON, 0), counters(10, 2, 0)),
        (key(8, 1, 108, kind::ANON, 0), counters(20, 15, 0)),
        (key(7, 2, 107, kind::ANON, 0), counters(1, 1, 0)),
        (key(8, 2, 108, kind::ANON, 0), counters(3, 3, 0)),
        (key(9, 2, 109, kind::PAGE, 0), counters(3, 0, 0)),
    ];
    let stacks = PlacedStacks(stacks(&[7, 8, 9]), HashMap::from([(107, "brk-heap"), (108, "mmap")]));
    let sites = build(&raw, &stacks, &HashMap::new(), &comms(), &mut resolver(), Outstanding::Live, 10);
    // The two kernel stacks tell the anon sites apart: their second frames differ.
    let region = |second: &str, kind: &str| {
        let s = sites.iter().find(|s| s.kind == kind && s.frames[1].label() == second).unwrap();
        s.region.clone()
    };
    assert_eq!(region("do_anonymous_page", "anon").as_deref(), Some("brk-heap"), "8 pages held against 5");
    assert_eq!(region("malloc", "anon").as_deref(), Some("mmap"), "none held: 3 pages taken against 1");
    assert_eq!(region("malloc", "page"), None);
}

#[test]
fn kind_and_cache_keep_sites_apart() {
    let raw = [
        (key(7, 2, -14, kind::SLAB, CACHE_KMALLOC_BIT | 256), counters(3, 0, 0)),
        (key(7, 2, -14, kind::SLAB, CACHE_KMALLOC_BIT | 512), counters(2, 0, 0)),
        (key(7, 2, -14, kind::SLAB, 0x1234), counters(1, 0, 0)),
        (key(7, 2, -14, kind::PAGE, 0), counters(4, 0, 0)),
    ];
    let caches = HashMap::from([(0x1234, "dentry".to_string())]);
    let sites = build(&raw, &stacks(&[]), &caches, &comms(), &mut resolver(), Outstanding::Live, 10);
    let got: Vec<(&str, Option<&str>)> = sites.iter().map(|s| (s.kind.as_str(), s.slab_cache.as_deref())).collect();
    assert_eq!(
        got,
        [("page", None), ("slab", Some("kmalloc-256")), ("slab", Some("kmalloc-512")), ("slab", Some("dentry"))]
    );
    assert!(sites.iter().all(|s| s.frames.len() == 1 && s.frames[0].kernel), "no user stack: kernel frames only");
}

#[test]
fn unsymbolized_frames_merge_only_by_address() {
    // Addresses 0x99 are unknown to the resolver: distinct bases give distinct addresses, so no merge.
    let st = FakeStacks(HashMap::from([(5, vec![0x7000 + 0x99]), (6, vec![0x8000 + 0x99])]));
    let raw = [(key(7, -1, 5, kind::ANON, 0), counters(1, 0, 0)), (key(8, -1, 6, kind::ANON, 0), counters(1, 0, 0))];
    let sites = build(&raw, &st, &HashMap::new(), &comms(), &mut resolver(), Outstanding::Live, 10);
    assert_eq!(sites.len(), 2);
    assert!(sites.iter().all(|s| s.frames[0].symbol.is_none() && s.frames[0].address.starts_with("0x")));
}

#[test]
fn outstanding_modes_differ_by_oom_frees() {
    let raw = [(key(7, 1, 107, kind::ANON, 0), counters(100, 10, 80))];
    let st = stacks(&[7]);
    let live = build(&raw, &st, &HashMap::new(), &comms(), &mut resolver(), Outstanding::Live, 10);
    let before = build(&raw, &st, &HashMap::new(), &comms(), &mut resolver(), Outstanding::BeforeOomKill, 10);
    assert_eq!(live[0].outstanding_allocs, 10);
    assert_eq!(before[0].outstanding_allocs, 90);
    assert_eq!(before[0].outstanding_bytes, 90 * 4096);
}

#[test]
fn sorted_largest_first_and_limited_to_top() {
    let raw = [
        (key(7, 2, -1, kind::SLAB, CACHE_KMALLOC_BIT | 64), counters(1, 0, 0)),
        (key(7, 2, -1, kind::SLAB, CACHE_KMALLOC_BIT | 128), counters(5, 0, 0)),
        (key(7, 2, -1, kind::SLAB, CACHE_KMALLOC_BIT | 256), counters(3, 4, 0)),
        (key(7, 2, -1, kind::SLAB, CACHE_KMALLOC_BIT | 512), counters(2, 0, 0)),
    ];
    let all = build(&raw, &stacks(&[]), &HashMap::new(), &comms(), &mut resolver(), Outstanding::Live, usize::MAX);
    let order: Vec<i64> = all.iter().map(|s| s.outstanding_allocs).collect();
    assert_eq!(order, [5, 2, 1, -1], "negative outstanding (frees of older memory) kept, last");
    let top = build(&raw, &stacks(&[]), &HashMap::new(), &comms(), &mut resolver(), Outstanding::Live, 2);
    assert_eq!(top.len(), 2);
    assert_eq!(top[0].slab_cache.as_deref(), Some("kmalloc-128"));
}

#[test]
fn missing_stacks_and_errors_give_no_frames() {
    // -17 (EEXIST: a bucket collision) and an id the map no longer holds.
    let raw = [(key(7, -17, 555, kind::OTHER, 0), counters(1, 0, 0))];
    let sites = build(&raw, &stacks(&[]), &HashMap::new(), &HashMap::new(), &mut resolver(), Outstanding::Live, 10);
    assert_eq!(sites[0].kind, "other");
    assert!(sites[0].frames.is_empty());
    assert!(sites[0].comms.is_empty(), "unknown comm left out, pid kept");
    assert_eq!(sites[0].pids, [7]);
}

#[test]
fn names() {
    assert_eq!(kind_name(kind::PERCPU), "percpu");
    assert_eq!(kind_name(77), "other");
    assert_eq!(cache_name(0, &HashMap::new()), None);
    assert_eq!(cache_name(0xabc, &HashMap::new()).as_deref(), Some("cache-00000abc"));
    let hash = leak_common::cache_name_hash(b"task_struct");
    let names = HashMap::from([(hash, "task_struct".to_string())]);
    assert_eq!(cache_name(hash, &names).as_deref(), Some("task_struct"));
}

#[test]
fn huge_counters_saturate() {
    assert_eq!(signed_diff(u64::MAX, 0), i64::MAX);
    assert_eq!(signed_diff(0, u64::MAX), i64::MIN);
    assert_eq!(signed_diff(5, 7), -2);
}

#[test]
fn app_frame_skips_allocators() {
    let f = |s: &str, kernel| frame(Some(s), 1, kernel);
    let mut site = crate::report::tests::site(
        "anon",
        1,
        vec![
            f("__alloc_pages_noprof", true),
            f("do_anonymous_page", true),
            f("__memset_avx2", false),
            f("fill", false),
        ],
    );
    assert_eq!(app_frame(&site).and_then(|f| f.symbol.as_deref()), Some("fill"));
    site.frames.truncate(3);
    assert_eq!(app_frame(&site).and_then(|f| f.symbol.as_deref()), Some("do_anonymous_page"), "kernel fallback");
    site.frames = vec![frame(Some("kmalloc"), 1, true), Frame::unknown(5, false)];
    assert_eq!(app_frame(&site).map(Frame::label), Some("kmalloc"), "only allocator frames: the leaf");
    site.frames.clear();
    assert_eq!(app_frame(&site), None);
}

#[test]
fn the_tracing_machinery_is_not_part_of_a_site() {
    let names = |symbols: &[Option<&str>]| -> Vec<Frame> {
        symbols.iter().enumerate().map(|(i, s)| frame(*s, 0xffff_0000 + i as u64, true)).collect()
    };
    let alloc = Some("__alloc_pages");
    let stack = names(&[Some("bpf_prog_d728d8f73c831aea_lt_page_alloc"), Some("bpf_trace_run4"), alloc]);
    assert_eq!(tracing_frames(&stack), 2);
    // A kernel that keeps BPF programs out of kallsyms, and one with a dispatcher frame per event.
    assert_eq!(tracing_frames(&names(&[None, Some("bpf_trace_run2"), alloc])), 2);
    let deep = names(&[None, Some("__bpf_trace_kmalloc"), Some("__traceiter_kmalloc"), Some("__kmalloc"), alloc]);
    assert_eq!(tracing_frames(&deep), 3);
    assert_eq!(tracing_frames(&names(&[alloc, Some("do_anonymous_page")])), 0, "a classic tracepoint's stack");
    assert_eq!(tracing_frames(&[]), 0);
}

/// Every user address is `remember_session`, at the line of the address.
struct LineResolver;

impl FrameResolver for LineResolver {
    fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        addrs.iter().map(|a| frame(None, *a, true)).collect()
    }
    fn user(&mut self, _pid: u32, addrs: &[u64]) -> Vec<Frame> {
        addrs.iter().map(|a| Frame { line: Some(*a as u32), ..frame(Some("remember_session"), *a, false) }).collect()
    }
}

#[test]
fn sites_through_the_same_functions_merge_whatever_the_lines() {
    let stacks = FakeStacks(HashMap::from([(1, vec![12]), (2, vec![14])]));
    let raw = [(key(1, -1, 1, kind::ANON, 0), counters(100, 0, 0)), (key(1, -1, 2, kind::ANON, 0), counters(50, 0, 0))];
    let sites = build(&raw, &stacks, &HashMap::new(), &HashMap::new(), &mut LineResolver, Outstanding::Live, 10);
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(sites[0].outstanding_bytes, 150 * 4096);
    assert_eq!(sites[0].frames[0].unwind.as_deref(), Some("regs"), "a frame-pointer stack's leaf");
}

#[test]
fn the_label_is_the_first_application_frame_not_a_c_library_leaf() {
    let f = |sym: &str, module: &str| Frame { module: Some(module.into()), ..frame(Some(sym), 1, false) };
    let site = |frames| crate::report::tests::site("anon", 1, frames);
    let write = site(vec![f("__GI___libc_write", "libc.so.6"), f("call_upstream", "svc"), f("main", "svc")]);
    assert_eq!(app_frame(&write).unwrap().label(), "call_upstream");
    let memset = site(vec![f("__memset_avx2_unaligned_erms", "libc.so.6"), f("fill_record", "svc")]);
    assert_eq!(app_frame(&memset).unwrap().label(), "fill_record");
    let new = site(vec![f("operator new(unsigned long)", "libstdc++.so.6"), f("SessionStore::remember()", "svc")]);
    assert_eq!(app_frame(&new).unwrap().label(), "SessionStore::remember()");
    // Nothing but the C library: its first named frame outside the allocator still says where.
    let only_libc = site(vec![f("_int_malloc", "libc.so.6"), f("getaddrinfo", "libc.so.6")]);
    assert_eq!(app_frame(&only_libc).unwrap().label(), "getaddrinfo");
    // A static binary has no C library module: the C library's internal names tell its functions.
    let static_write = site(vec![f("__libc_write", "svc"), f("call_upstream", "svc")]);
    assert_eq!(app_frame(&static_write).unwrap().label(), "call_upstream");
}

#[test]
fn a_runtime_sites_label_is_the_code_running_on_it_not_the_runtimes_machinery() {
    let f = |sym: &str, module: &str| Frame { module: Some(module.into()), ..frame(Some(sym), 1, false) };
    let site = |frames| crate::report::tests::site("anon", 1, frames);
    let jit = crate::stacks::symbolize::JIT_MODULE;
    let buffer = site(vec![
        f("__memset_avx512_unaligned_erms", "libc.so.6"),
        f("v8::internal::Builtin_TypedArrayPrototypeFill(int, unsigned long*, v8::internal::Isolate*)", "node"),
        f("Builtin:TypedArrayPrototypeFill", jit),
        f("JS:^cacheResponseBuffer /srv/response_cache.js:9:29", jit),
        f("JS:~emit node:events:489:28", jit),
    ]);
    assert_eq!(app_frame(&buffer).unwrap().label(), "JS:^cacheResponseBuffer /srv/response_cache.js:9:29");
    let direct = site(vec![
        f("Unsafe_SetMemory0", "libjvm.so"),
        f("void jdk.internal.misc.Unsafe.setMemory0(java.lang.Object, long, long, byte)", jit),
        f("void SessionBuffers.handleRequest(boolean, int)", jit),
    ]);
    assert_eq!(app_frame(&direct).unwrap().label(), "void SessionBuffers.handleRequest(boolean, int)");
    let go =
        site(vec![f("runtime.mallocgc", "store"), f("runtime.growslice", "store"), f("main.leakIntoStore", "store")]);
    assert_eq!(app_frame(&go).unwrap().label(), "main.leakIntoStore");
    // Without a perf map the JIT frames have no names: the runtime's own frame still says where.
    let promoted = site(vec![
        f("__memcpy_evex_unaligned_erms", "libc.so.6"),
        f("Generation::promote(oopDesc*, unsigned long)", "libjvm.so"),
    ]);
    assert_eq!(app_frame(&promoted).unwrap().label(), "Generation::promote(oopDesc*, unsigned long)");
}

#[test]
fn standard_library_code_is_not_the_application_whatever_its_spelling() {
    for name in [
        "unsigned char* std::fill_n<unsigned char*, unsigned long, unsigned char>(unsigned char*, unsigned long)",
        "void std::__fill_a<unsigned char*, unsigned char>(unsigned char*, unsigned char*, unsigned char const&)",
        "std::vector<unsigned char, std::allocator<unsigned char> >::_M_fill_initialize(unsigned long)",
        "_ZSt9__fill_a1IhEN9__gnu_cxx11__enable_ifIXsrSt9__is_byteIT_E7__valueEvE6__typeEPS3_S7_RKS3_",
        "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
        "core::ptr::write_bytes",
    ] {
        assert!(is_allocator(name), "{name}");
    }
    for name in [
        "SessionStore::remember(unsigned long, std::__cxx11::basic_string<char> const&, unsigned long)",
        "retain_blocks::retain_block",
        "<app::Cache as app::Store>::put",
        "handle_request(unsigned long)",
    ] {
        assert!(!is_allocator(name), "{name}");
    }
}

#[test]
fn slab_pages_are_not_sites_their_objects_are() {
    let mut r = resolver();
    r.kernel.insert(0xffff_0003, "allocate_slab");
    let mut s = stacks(&[]);
    s.0.insert(3, vec![0xffff_0001, 0xffff_0003]);
    let raw = [
        (key(7, 3, -1, kind::OTHER, 0), counters(8, 0, 0)),
        (key(7, 3, -1, kind::PAGE, 0), counters(8, 0, 0)),
        (key(7, 3, -1, kind::SLAB, 5), counters(1, 0, 0)),
    ];
    let sites = build(&raw, &s, &HashMap::new(), &HashMap::new(), &mut r, Outstanding::Live, 10);
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(sites[0].kind, "slab");
}

/// A heap site's stack starts past the allocator's wrappers (malloc called from operator new, say); one made of
/// nothing else keeps its frames.
#[test]
fn heap_sites_start_at_the_first_frame_outside_the_allocator() {
    let raw = [(key(7, -2, 107, kind::HEAP, 0), counters(3, 1, 0)), (key(7, -2, 5, kind::HEAP, 0), counters(1, 0, 0))];
    let mut stacks = stacks(&[7]);
    stacks.0.insert(5, vec![0x7010]);
    let sites = build(&raw, &stacks, &HashMap::new(), &comms(), &mut resolver(), Outstanding::Live, 10);
    assert_eq!(sites[0].kind, "heap");
    let names: Vec<_> = sites[0].frames.iter().map(|f| f.symbol.as_deref().unwrap_or("?")).collect();
    assert_eq!(names, ["leak_here", "main"], "malloc trimmed, no kernel frames");
    assert_eq!(sites[0].outstanding_bytes, 2 * 4096);
    assert_eq!(sites[1].frames.len(), 1, "only the allocator: kept");
    assert_eq!(kind_name(kind::HEAP), "heap");
}

/// An unwound stack of a Python process: native frames, then the interpreter's frames newest first.
struct PythonStacks(Vec<(u64, &'static str)>, Vec<(&'static str, bool)>);

impl StackSource for PythonStacks {
    fn stack(&self, _id: i32) -> Option<Vec<u64>> {
        None
    }
    fn unwound(&self, _id: i32) -> Option<Vec<(u64, &'static str)>> {
        Some(self.0.clone())
    }
    fn python_frame(&self, address: u64) -> Option<(Frame, bool)> {
        let (name, entry) = *self.1.get(address as usize)?;
        Some((Frame { module: Some("[python]".into()), ..frame(Some(name), 0, false) }, entry))
    }
}

/// Each Python frame goes where its eval loop runs: `remember` and `handle` run in the leafmost
/// `_PyEval_EvalFrameDefault` (`handle` began that call of the loop), `main` in the next; a frame left over, for
/// which the native walk found no eval loop, ends the stack. A perf-map trampoline naming a function again goes.
#[test]
fn python_frames_sit_in_the_eval_loop_that_runs_them() {
    /// The interpreter's native code, in its executable.
    struct Interpreter(FakeResolver);
    impl FrameResolver for Interpreter {
        fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
            self.0.kernel(addrs)
        }
        fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
            let module = Some("/usr/bin/python3.11".to_string());
            self.0.user(pid, addrs).into_iter().map(|f| Frame { module: module.clone(), ..f }).collect()
        }
    }
    let mut resolver = Interpreter(FakeResolver {
        kernel: HashMap::new(),
        user: HashMap::from([
            (0x10, "memcpy"),
            (0x20, "PyBytes_FromStringAndSize"),
            (0x30, "_PyEval_EvalFrameDefault"),
            (0x40, "py::handle:/srv/app.py"),
            (0x50, "PyObject_Call"),
            (0x60, "_PyEval_EvalFrameDefault"),
            (0x70, "Py_RunMain"),
        ]),
        calls: 0,
    });
    let native = [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70].map(|a| (a + 0x1000, "dwarf"));
    let python = [(0, "python"), (1, "python"), (2, "python"), (3, "python")];
    let stacks = PythonStacks(
        native.iter().chain(&python).copied().collect(),
        vec![("remember", false), ("handle", true), ("main", true), ("<module>", true)],
    );
    let raw = [(key(1, -1, leak_common::USTACK_UNWOUND_BIT, kind::ANON, 0), counters(4096, 0, 0))];
    let sites = build(&raw, &stacks, &HashMap::new(), &comms(), &mut resolver, Outstanding::Live, 10);
    let got: Vec<&str> = sites[0].frames.iter().map(Frame::label).collect();
    assert_eq!(
        got,
        [
            "memcpy",
            "PyBytes_FromStringAndSize",
            "remember",
            "handle",
            "_PyEval_EvalFrameDefault",
            "PyObject_Call",
            "main",
            "_PyEval_EvalFrameDefault",
            "Py_RunMain",
            "<module>"
        ]
    );
    assert_eq!(app_frame(&sites[0]).map(Frame::label), Some("remember"), "the site is named by its Python function");
}
