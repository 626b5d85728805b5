//! Which language runtime a user frame's code belongs to, and whether a frame is the runtime's own machinery (its
//! interpreter, collector, JIT stubs and standard library) or application code running on it: a site is named by
//! the application's frame, as a C site is named past libc.
use crate::report::Frame;

use super::{python::PY_MODULE, symbolize::JIT_MODULE};

/// The module of JavaScript frames named by V8's own profiler (`--node-heap`), not by a perf map.
pub const JS_MODULE: &str = "[js]";
/// The module of Java methods named by JFR's old-object sampler (`--jvm-heap`), not by a perf map.
pub const JAVA_MODULE: &str = "[java]";

/// The source file of a frame a language runtime named (Python's, V8's profiler's): its module stands for the
/// language, and the file tells the application's code from the runtime's.
pub fn source_file(f: &Frame) -> Option<&str> {
    matches!(f.module.as_deref(), Some(PY_MODULE | JS_MODULE)).then_some(f.file.as_deref()).flatten()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Go,
    Python,
    Node,
    Jvm,
}

impl Runtime {
    pub const ALL: [Runtime; 4] = [Runtime::Go, Runtime::Python, Runtime::Node, Runtime::Jvm];

    /// Its name in report.json.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Go => "go",
            Runtime::Python => "python",
            Runtime::Node => "node",
            Runtime::Jvm => "jvm",
        }
    }

    /// Whether a user frame shows the process runs on this runtime: the runtime's library or executable, or code
    /// it compiled.
    pub fn owns(self, f: &Frame) -> bool {
        let base = module_base(f);
        let symbol = f.symbol.as_deref().unwrap_or("");
        match self {
            Runtime::Jvm => base.starts_with("libjvm") || f.module.as_deref() == Some(JAVA_MODULE),
            Runtime::Python => {
                f.module.as_deref() == Some(PY_MODULE)
                    || base.starts_with("libpython")
                    || base
                        .strip_prefix("python")
                        .is_some_and(|v| v.is_empty() || v.starts_with(|c: char| c.is_ascii_digit()))
            }
            Runtime::Node => {
                f.module.as_deref() == Some(JS_MODULE)
                    || base == "node"
                    || base == "nodejs"
                    || base.starts_with("libnode")
                    || symbol.starts_with("JS:")
            }
            Runtime::Go => symbol.starts_with("runtime."),
        }
    }
}

/// Whether a user frame is a runtime's machinery rather than the application's code: the JVM and the JDK's native
/// libraries, the Python interpreter, node's and V8's C++, V8 builtins and stubs, node's own JavaScript, the JDK's
/// classes, Go's runtime and standard packages.
pub fn is_internal(f: &Frame) -> bool {
    if f.kernel {
        return false;
    }
    let symbol = f.symbol.as_deref().unwrap_or("");
    if f.module.as_deref() == Some(JIT_MODULE) {
        return jit_internal(symbol);
    }
    if f.module.as_deref() == Some(PY_MODULE) {
        return python_stdlib(f.file.as_deref().unwrap_or(""));
    }
    if f.module.as_deref() == Some(JS_MODULE) {
        // node's own modules (`node:internal/...`), and V8's pseudo-frames and builtins, which have no script.
        return f.file.as_deref().is_none_or(|url| url.starts_with("node:"));
    }
    if f.module.as_deref() == Some(JAVA_MODULE) {
        return jdk_class(symbol);
    }
    const JDK_LIBS: &[&str] = &["libjvm", "libjli", "libjava", "libnio", "libnet", "libzip", "libjimage", "libverify"];
    let base = module_base(f);
    JDK_LIBS.iter().any(|l| base.starts_with(l))
        || [Runtime::Python, Runtime::Node].iter().any(|rt| rt.owns(f))
        || go_internal(symbol)
}

/// Perf-map names of code a runtime compiled: V8 tags what it is (`JS:^fn file:line`, `Builtin:`, `Stub:`), Python
/// 3.12 writes `py::fn:file`, HotSpot writes methods as `ret pkg.Class.method(args)` and its stubs as bare names
/// (`Interpreter`, `StubRoutines (1)`). A name with neither a `.` nor a `:` is no function of a language.
fn jit_internal(symbol: &str) -> bool {
    const V8_CODE: &[&str] = &["JS:", "LazyCompile:", "Function:", "Script:", "Eval:", "InterpretedFunction:"];
    const V8_MACHINERY: &[&str] = &["Builtin:", "BytecodeHandler:", "Stub:", "Handler:", "RegExp:", "Builtins_"];
    if V8_CODE.iter().any(|t| symbol.starts_with(t)) {
        return symbol.contains(" node:");
    }
    if V8_MACHINERY.iter().any(|t| symbol.starts_with(t)) {
        return true;
    }
    if symbol.starts_with("py::") {
        return false;
    }
    // HotSpot's methods are `void pkg.Class.method(args)`: the method is the last word before the arguments.
    let method = symbol.split('(').next().unwrap_or(symbol).rsplit(' ').next().unwrap_or(symbol);
    jdk_class(method) || !(symbol.contains('.') || symbol.contains(':'))
}

/// A method of the JDK's own classes (`java.util.ArrayList.grow(int)`).
fn jdk_class(method: &str) -> bool {
    const JDK: &[&str] = &["java.", "javax.", "jdk.", "sun.", "com.sun."];
    JDK.iter().any(|p| method.starts_with(p))
}

/// Python code of the interpreter's standard library (`/usr/lib/python3.11/threading.py`, frozen modules), not
/// of the packages installed beside it.
fn python_stdlib(file: &str) -> bool {
    if file.starts_with("<frozen ") {
        return true;
    }
    let Some(at) = file.find("/lib/python3.") else { return false };
    !file[at..].contains("-packages/")
}

/// Go's runtime and the standard packages that grow buffers for their callers (`bytes.(*Buffer).grow`).
fn go_internal(symbol: &str) -> bool {
    const STD: &[&str] = &[
        "runtime.",
        "internal/",
        "sync.",
        "bytes.",
        "strings.",
        "bufio.",
        "fmt.",
        "io.",
        "reflect.",
        "strconv.",
        "encoding/",
    ];
    !symbol.contains("::") && STD.iter().any(|p| symbol.starts_with(p))
}

fn module_base(f: &Frame) -> &str {
    let module = f.module.as_deref().unwrap_or("");
    module.rsplit('/').next().unwrap_or(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(symbol: &str, module: &str) -> Frame {
        Frame { symbol: Some(symbol.into()), module: Some(module.into()), ..Frame::unknown(0x1000, false) }
    }

    #[test]
    fn runtime_machinery_is_internal_and_code_running_on_it_is_not() {
        let internal = [
            ("Unsafe_SetMemory0", "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"),
            ("JavaMain", "/usr/lib/jvm/java-17-openjdk-amd64/lib/libjli.so"),
            ("Interpreter", JIT_MODULE),
            ("StubRoutines (1)", JIT_MODULE),
            ("void java.nio.DirectByteBuffer.<init>(int)", JIT_MODULE),
            ("void jdk.internal.misc.Unsafe.setMemory0(java.lang.Object, long, long, byte)", JIT_MODULE),
            ("_PyEval_EvalFrameDefault", "/usr/bin/python3.11"),
            ("v8::internal::Heap::AllocateRaw", "/usr/bin/node"),
            ("Builtin:ArrayPrototypePush", JIT_MODULE),
            ("JS:~emit node:events:489:28", JIT_MODULE),
            ("runtime.mallocgc", "/srv/store"),
            ("bytes.(*Buffer).grow", "/srv/store"),
        ];
        for (s, m) in internal {
            assert!(is_internal(&frame(s, m)), "{s} in {m}");
        }
        let application = [
            ("JS:^cacheResponseBuffer /srv/app.js:9:29", JIT_MODULE),
            ("py::remember:/srv/session_store.py", JIT_MODULE),
            ("void SessionBuffers.handleRequest(boolean, int)", JIT_MODULE),
            ("java.lang.Object com.example.Cache.put(java.lang.String, byte[])", JIT_MODULE),
            ("main.leakIntoStore", "/srv/store"),
            ("github.com/acme/cache.(*LRU).Add", "/srv/store"),
            ("render_response", "/srv/app"),
            (
                "fill_tile",
                "/usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
            ),
            ("Java_com_example_Codec_encode", "/opt/app/libcodec.so"),
        ];
        for (s, m) in application {
            assert!(!is_internal(&frame(s, m)), "{s} in {m}");
        }
    }

    #[test]
    fn python_frames_are_application_code_outside_the_standard_library() {
        let py = |symbol: &str, file: &str| Frame { file: Some(file.into()), ..frame(symbol, PY_MODULE) };
        for (s, file) in [
            ("Thread.run", "/usr/lib/python3.11/threading.py"),
            ("_find_and_load", "<frozen importlib._bootstrap>"),
            ("BaseServer.serve_forever", "/root/.pyenv/versions/3.12.1/lib/python3.12/socketserver.py"),
        ] {
            assert!(is_internal(&py(s, file)), "{s} in {file}");
            assert!(Runtime::Python.owns(&py(s, file)));
        }
        for (s, file) in [
            ("remember", "/srv/session_store.py"),
            ("Session.save", "/usr/lib/python3/dist-packages/app/session.py"),
            ("Cache.put", "/venv/lib/python3.12/site-packages/cachetools/__init__.py"),
        ] {
            assert!(!is_internal(&py(s, file)), "{s} in {file}");
            assert!(Runtime::Python.owns(&py(s, file)));
        }
    }
}
