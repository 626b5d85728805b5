//! `verdict.runtime` and `verdict.location`: which language runtime the target's memory goes through, told by the
//! modules and symbols of its sites' user frames, and where the growing memory lives: the runtime's managed heap,
//! native memory beside it (off-heap), the runtime's own metadata, or a plain program's heap.
//!
//! The place is read from the frames of the site that holds the growth (the `--heap` holder first, else the anon
//! site), because a runtime's heap and its native allocations are both anonymous memory: a direct buffer's pages
//! are touched by `Unsafe_SetMemory0`, a Node Buffer's by V8's typed-array fill, a Java object's by the allocator
//! or the collector that copies it.
pub use crate::stacks::runtime::Runtime;
use crate::{
    report::{Frame, Site},
    stacks::runtime::is_internal,
};

impl Runtime {
    /// Symbols of native memory the runtime hands out beside its managed heap: direct buffers and `Unsafe`
    /// memory, array buffers' backing stores.
    fn off_heap_markers(self) -> &'static [&'static str] {
        match self {
            Runtime::Jvm => &[
                "Unsafe_AllocateMemory",
                "Unsafe_ReallocateMemory",
                "Unsafe_SetMemory",
                "Unsafe_CopyMemory",
                "Java_java_nio_",
                "Java_sun_nio_",
                "Java_java_util_zip_",
            ],
            Runtime::Node => &[
                "node::Buffer",
                "NodeArrayBufferAllocator",
                "BackingStore",
                "TypedElementsAccessor",
                "Builtin_TypedArray",
                "Builtins_TypedArray",
                "Builtin_ArrayBuffer",
            ],
            Runtime::Go => &["runtime.cgocall", "_cgo_"],
            Runtime::Python => &[],
        }
    }

    /// Symbols of the runtime's own bookkeeping: class metadata, compiled code and its compilers, thread and
    /// goroutine stacks.
    fn metadata_markers(self) -> &'static [&'static str] {
        match self {
            Runtime::Jvm => &[
                "Metaspace",
                "ClassLoaderData",
                "ClassFileParser",
                "SystemDictionary",
                "CodeCache::",
                "CodeHeap::",
                "CodeBlob::",
                "CompileBroker::",
                "Compile::",
                "Compilation::",
                "Arena::",
                "ChunkPool::",
                "os::create_thread",
            ],
            Runtime::Node => &["v8::internal::CodeRange", "v8::internal::Compiler::"],
            Runtime::Go => &[
                "runtime.malg",
                "runtime.newproc",
                "runtime.stackalloc",
                "runtime.stackcacherefill",
                "runtime.newstack",
                "runtime.copystack",
            ],
            Runtime::Python => &[],
        }
    }
}

/// The runtime most of the sites' allocated bytes went through (each site counted once per runtime its user
/// frames show), or `None` for native programs.
pub fn runtime<'a>(sites: impl Iterator<Item = &'a Site> + Clone) -> Option<Runtime> {
    Runtime::ALL
        .into_iter()
        .map(|rt| {
            let bytes: u64 = sites
                .clone()
                .filter(|s| s.frames.iter().any(|f| !f.kernel && rt.owns(f)))
                .map(|s| s.alloc_bytes.max(1))
                .sum();
            (rt, bytes)
        })
        .filter(|(_, bytes)| *bytes > 0)
        .max_by_key(|(_, bytes)| *bytes)
        .map(|(rt, _)| rt)
}

/// Where the user memory that `site` holds lives, for a program running on `runtime`.
pub fn user_location(runtime: Option<Runtime>, site: &Site) -> &'static str {
    let Some(rt) = runtime else {
        return if site.region.as_deref() == Some("thread-stack") { "thread-stack" } else { "application-heap" };
    };
    let user: Vec<&Frame> = site.frames.iter().filter(|f| !f.kernel).collect();
    let marked = |markers: &[&str]| {
        user.iter().filter_map(|f| f.symbol.as_deref()).any(|s| markers.iter().any(|m| s.contains(m)))
    };
    if marked(rt.off_heap_markers()) || native_extension(rt, site) {
        "off-heap"
    } else if marked(rt.metadata_markers()) {
        "runtime"
    } else {
        "managed-heap"
    }
}

/// Whether the first application frame is native code outside the runtime (a JNI library, a Python extension
/// module, a Node addon, C called through cgo): its memory is none of the runtime's heap.
fn native_extension(rt: Runtime, site: &Site) -> bool {
    let Some(f) = crate::sites::app_frame(site).filter(|f| !f.kernel) else { return false };
    let module = f.module.as_deref().unwrap_or("");
    if f.unwind.as_deref() == Some("jit") || crate::sites::is_runtime_library(module) || module.is_empty() {
        return false;
    }
    match rt {
        // Go and cgo's C share the executable: C symbols carry no package path.
        Runtime::Go => f.symbol.as_deref().is_some_and(|s| !s.contains('.')),
        _ => !rt.owns(f) && !is_internal(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(symbol: &str, module: &str) -> Frame {
        Frame { symbol: Some(symbol.into()), module: Some(module.into()), ..Frame::unknown(0x1000, false) }
    }

    fn site(frames: Vec<Frame>) -> Site {
        Site { kind: "anon".into(), alloc_bytes: 1 << 20, outstanding_bytes: 1 << 20, frames, ..Default::default() }
    }

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const LIBJVM: &str = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so";

    #[test]
    fn a_direct_buffer_is_off_the_java_heap_and_a_promoted_array_on_it() {
        let direct = site(vec![
            frame("Copy::fill_to_memory_atomic(void*, unsigned long, unsigned char)", LIBJVM),
            frame("Unsafe_SetMemory0", LIBJVM),
            frame("JavaCalls::call_helper(JavaValue*, methodHandle const&, JavaCallArguments*, JavaThread*)", LIBJVM),
        ]);
        let promoted = site(vec![
            frame("__memcpy_avx512_unaligned_erms", LIBC),
            frame("Generation::promote(oopDesc*, unsigned long)", LIBJVM),
            frame("DefNewGeneration::copy_to_survivor_space(oopDesc*)", LIBJVM),
        ]);
        let classes = site(vec![frame("ClassFileParser::parse_stream(ClassFileStream const*, JavaThread*)", LIBJVM)]);
        assert_eq!(runtime([direct.clone(), promoted.clone()].iter()), Some(Runtime::Jvm));
        assert_eq!(user_location(Some(Runtime::Jvm), &direct), "off-heap");
        assert_eq!(user_location(Some(Runtime::Jvm), &promoted), "managed-heap");
        assert_eq!(user_location(Some(Runtime::Jvm), &classes), "runtime");
        let jni =
            site(vec![frame("__memset_evex", LIBC), frame("Java_com_example_Codec_encode", "/opt/app/libcodec.so")]);
        assert_eq!(user_location(Some(Runtime::Jvm), &jni), "off-heap", "a JNI library's memory");
    }

    #[test]
    fn node_buffers_are_off_v8s_heap_and_objects_on_it() {
        let node = "/usr/bin/node";
        let buffer = site(vec![
            frame("__memset_avx512_unaligned_erms", LIBC),
            frame("v8::internal::(anonymous namespace)::ElementsAccessorBase<v8::internal::(anonymous namespace)::TypedElementsAccessor<(v8::internal::ElementsKind)29, unsigned char>>::Fill", node),
            frame("v8::internal::Builtin_TypedArrayPrototypeFill(int, unsigned long*, v8::internal::Isolate*)", node),
            Frame { unwind: Some("jit".into()), ..frame("JS:^cacheResponseBuffer /srv/app.js:9:29", "[jit]") },
        ]);
        let objects = site(vec![
            frame("v8::internal::Scavenger::ScavengeObject", node),
            frame("v8::internal::ScavengerCollector::JobTask::Run", node),
        ]);
        assert_eq!(runtime([buffer.clone()].iter()), Some(Runtime::Node));
        assert_eq!(user_location(Some(Runtime::Node), &buffer), "off-heap");
        assert_eq!(user_location(Some(Runtime::Node), &objects), "managed-heap");
    }

    #[test]
    fn python_objects_are_its_heap_and_an_extension_modules_memory_is_not() {
        let py = "/usr/bin/python3.11";
        let bytes = site(vec![
            frame("__memset_avx512_unaligned_erms", LIBC),
            frame("_PyEval_EvalFrameDefault", py),
            frame("PyEval_EvalCode", py),
        ]);
        let ext = site(vec![
            frame("__memcpy_evex_unaligned", LIBC),
            frame(
                "fill_tile",
                "/usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
            ),
            frame("_PyEval_EvalFrameDefault", py),
        ]);
        assert_eq!(runtime([bytes.clone(), ext.clone()].iter()), Some(Runtime::Python));
        assert_eq!(user_location(Some(Runtime::Python), &bytes), "managed-heap");
        assert_eq!(user_location(Some(Runtime::Python), &ext), "off-heap");
    }

    #[test]
    fn go_heap_goroutine_stacks_and_cgo() {
        let exe = "/srv/store";
        let heap = site(vec![
            frame("runtime.memclrNoHeapPointers", exe),
            frame("runtime.mallocgc", exe),
            frame("main.leakIntoStore", exe),
        ]);
        let stacks = site(vec![frame("runtime.malg", exe), frame("runtime.newproc1", exe), frame("main.serve", exe)]);
        let cgo = site(vec![frame("__memset_evex", LIBC), frame("fill_rows", exe), frame("runtime.cgocall", exe)]);
        assert_eq!(runtime([heap.clone()].iter()), Some(Runtime::Go));
        assert_eq!(user_location(Some(Runtime::Go), &heap), "managed-heap");
        assert_eq!(user_location(Some(Runtime::Go), &stacks), "runtime");
        assert_eq!(user_location(Some(Runtime::Go), &cgo), "off-heap");
    }

    #[test]
    fn native_programs_have_no_runtime_and_an_application_heap() {
        let c = site(vec![
            frame("__memset_evex", LIBC),
            frame("render_response", "/srv/render"),
            frame("main", "/srv/render"),
        ]);
        assert_eq!(runtime([c.clone()].iter()), None);
        assert_eq!(runtime([].iter()), None);
        assert_eq!(user_location(None, &c), "application-heap");
        let stack = Site { region: Some("thread-stack".into()), ..c };
        assert_eq!(user_location(None, &stack), "thread-stack");
        assert!(!Runtime::Python.owns(&frame("main", "/usr/bin/pythonista-server")), "not an interpreter");
    }
}
