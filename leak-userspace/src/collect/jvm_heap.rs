//! `--jvm-heap`: the live Java objects of every JVM of the target by the method that allocated them, from JFR's
//! old-object sampler (`jdk.OldObjectSample`, what JDK Mission Control's "Memory Leaks" page shows). A Java
//! object's pages are first touched by the collector as it copies the object into the old generation, so page
//! faults name `Generation::promote`, never the method that keeps the object.
//!
//! Through the attach protocol ([`crate::jvm_attach`]) each JVM starts a recording of leaktrace's own with only
//! the sampler (with stack traces) and the heap summary after each collection. Every interval the recording is
//! dumped into a file in the JVM's /tmp, read through its root and removed; at the end it is stopped. The sampler
//! keeps up to 256 live objects (`old-object-queue-size`), chosen by the bytes allocated around them, so the heap
//! in use after the last collection is shared among their stacks by their samples.
//!
//! Measured on OpenJDK 17: starting JFR in a JVM takes it about 0.9 s and adds about 24 MiB to its RSS (JFR's
//! classes and buffers, kept after the recording stops); a dump is a JFR checkpoint safepoint of 16-46 µs and a
//! file of about 135 KiB.
use std::{
    collections::HashSet,
    fs::File,
    hash::Hash,
    io::{Read, Seek},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use jfrs::reader::{event::Accessor, JfrReader};
use serde::{Deserialize, Serialize};

use super::runtime_heap::{HeapStats, NotYet, Profiler, Record, RuntimeHeap};
use crate::{
    jvm_attach::{is_jvm, Jvm},
    report::Frame,
    stacks::runtime::JAVA_MODULE,
};

/// The recording's name in the JVM (`jcmd <pid> JFR.check` lists it).
const RECORDING: &str = "leaktrace";
/// Only the sampler and the heap summaries; the repository keeps a minute of them.
const START: &str = "settings=none maxage=1m +jdk.OldObjectSample#enabled=true +jdk.OldObjectSample#stackTrace=true \
                     +jdk.OldObjectSample#cutoff=0ns +jdk.GCHeapSummary#enabled=true";

/// report.json `collection.jvm_heaps[]`: one JVM whose heap was sampled.
pub type JvmHeapStats = HeapStats<Sampled>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampled {
    /// Live objects the sampler held at the last dump.
    pub samples: u64,
    /// The heap in use after the last collection, shared among the samples' stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_used_bytes: Option<u64>,
}

/// The profiling thread of `--jvm-heap`.
pub type JvmHeap = RuntimeHeap<Recording>;

/// One JVM's recording.
pub struct Recording {
    jvm: Jvm,
    /// Whether the JVM was signalled to start its attach listener: it is, once at most, whatever the command.
    signalled: HashSet<u32>,
    stats: JvmHeapStats,
}

impl Recording {
    fn jcmd(&mut self, command: &str) -> Result<String> {
        self.jvm.jcmd(command, &mut self.signalled)
    }

    /// The dump's name inside the JVM's mount namespace.
    fn dump_name(&self) -> String {
        format!("/tmp/leaktrace-{}.jfr", self.jvm.nspid)
    }

    /// The dump seen from here, through the JVM's root.
    fn dump_path(&self) -> PathBuf {
        self.jvm.tmp.join(format!("leaktrace-{}.jfr", self.jvm.nspid))
    }
}

impl Profiler for Recording {
    type Stats = Sampled;
    const THREAD: &'static str = "jvm-heap";

    fn runs_in(pid: u32) -> bool {
        is_jvm(pid)
    }

    fn open(pid: u32) -> Result<Self> {
        let jvm = Jvm::new(pid)?;
        let mut r = Recording { jvm, signalled: HashSet::new(), stats: HeapStats { pid, ..Default::default() } };
        // A recording left by a leaktrace that was killed would still be sampling: it is replaced.
        let _ = r.jcmd(&format!("JFR.stop name={RECORDING}"));
        let started = match r.jcmd(&format!("JFR.start name={RECORDING} {START}")) {
            // JFR's commands are registered once the JVM has started.
            Err(e) if format!("{e}").contains("Unknown diagnostic command") => {
                return Err(NotYet(format!("{e}: JFR's commands are not there yet (or JFR is off)")).into())
            }
            r => r?,
        };
        if !started.contains("Started recording") {
            bail!("JFR.start did not start a recording: {}", started.lines().next().unwrap_or(""));
        }
        Ok(r)
    }

    fn profile(&mut self) -> Result<Vec<Record>> {
        // Only the newest chunk: the sampler's live objects are written anew into it at each dump (and a chunk
        // carries its own metadata, 100 KiB, so older ones would only repeat it).
        self.jcmd(&format!("JFR.dump name={RECORDING} maxage=1s filename={}", self.dump_name()))?;
        let path = self.dump_path();
        let file = File::open(&path).with_context(|| format!("the JVM wrote no {}", path.display()));
        let _ = std::fs::remove_file(&path);
        let dump = read_dump(std::io::BufReader::new(file?))?;
        let sampled = &mut self.stats.runtime;
        sampled.samples = dump.samples.len() as u64;
        sampled.heap_used_bytes = dump.heap_used.or(sampled.heap_used_bytes);
        Ok(dump.records(sampled.heap_used_bytes))
    }

    fn close(&mut self) {
        if let Err(e) = self.jcmd(&format!("JFR.stop name={RECORDING}")) {
            self.stats.last_error = Some(format!("{e:#}"));
        }
        let _ = std::fs::remove_file(self.dump_path());
    }

    fn stats(&mut self) -> &mut JvmHeapStats {
        &mut self.stats
    }
}

/// What one dump says: the stacks of the sampler's live objects (of its last emission) and the heap in use
/// after the last collection in it.
#[derive(Debug, Default, PartialEq)]
struct Dump {
    samples: Vec<Sample>,
    heap_used: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    frames: Vec<Frame>,
    /// The heap in use after the collection before the object was sampled.
    last_known_heap_usage: u64,
}

fn read_dump(recording: impl Read + Seek) -> Result<Dump> {
    let mut reader = JfrReader::new(recording);
    // Every dump writes the sampler's objects again: the last emission (the newest start time) is the one.
    let mut newest = i64::MIN;
    let mut after_gc = (i64::MIN, None);
    let mut samples = Vec::new();
    for chunk in reader.chunks() {
        let (mut chunk_reader, chunk) = chunk.map_err(|e| anyhow::anyhow!("an unreadable recording: {e:?}"))?;
        for event in chunk_reader.events(&chunk) {
            let event = event.map_err(|e| anyhow::anyhow!("an unreadable recording: {e:?}"))?;
            // Fields are read one by one: a whole event holds null references (a referrer, a class loader)
            // that the crate's serde view refuses.
            let e = event.value();
            let long = |name: &str| e.get_field(name).and_then(|v| i64::try_from(v.value).ok());
            let Some(start) = long("startTime") else { continue };
            match event.class.name() {
                "jdk.OldObjectSample" => {
                    if start > newest {
                        newest = start;
                        samples.clear();
                    }
                    if start == newest {
                        let frames = e.get_field("stackTrace").map(frames).unwrap_or_default();
                        let heap = long("lastKnownHeapUsage").unwrap_or(0).max(0) as u64;
                        samples.push(Sample { frames, last_known_heap_usage: heap });
                    }
                }
                "jdk.GCHeapSummary" => {
                    let when = e.get_field("when").and_then(|w| w.get_field("when")).and_then(string);
                    if when == Some("After GC") && start > after_gc.0 {
                        after_gc = (start, long("heapUsed").map(|u| u.max(0) as u64));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Dump { samples, heap_used: after_gc.1 })
}

impl Dump {
    /// The samples by stack, each stack's share of the samples standing for that share of the heap in use (the
    /// newest sample's own view of it when the dump has no collection and none came before).
    fn records(&self, heap_used: Option<u64>) -> Vec<Record> {
        let heap = heap_used.or_else(|| self.samples.iter().map(|s| s.last_known_heap_usage).max()).unwrap_or(0) as f64;
        let mut by_stack: Vec<(Vec<Frame>, f64)> = Vec::new();
        for s in &self.samples {
            match by_stack.iter_mut().find(|(f, _)| *f == s.frames) {
                Some((_, n)) => *n += 1.0,
                None => by_stack.push((s.frames.clone(), 1.0)),
            }
        }
        let total = self.samples.len() as f64;
        by_stack
            .into_iter()
            .filter(|(frames, _)| !frames.is_empty())
            .map(|(frames, n)| Record { frames, bytes: heap * n / total, objects: n })
            .collect()
    }
}

/// A stack trace's frames, leaf first.
fn frames(trace: Accessor) -> Vec<Frame> {
    let Some(list) = trace.get_field("frames").and_then(Accessor::as_iter) else { return Vec::new() };
    list.filter_map(|f| {
        let method = f.get_field("method")?;
        let class = symbol(method.get_field("type").and_then(|t| t.get_field("name")))?;
        let name = symbol(method.get_field("name"))?;
        let descriptor = symbol(method.get_field("descriptor")).unwrap_or("()");
        let line = f.get_field("lineNumber").and_then(|l| i32::try_from(l.value).ok()).unwrap_or(0);
        Some(frame(class, name, descriptor, line))
    })
    .collect()
}

fn string<'a>(a: Accessor<'a>) -> Option<&'a str> {
    <&str>::try_from(a.value).ok()
}

/// A `jdk.types.Symbol`'s text.
fn symbol(a: Option<Accessor<'_>>) -> Option<&str> {
    a?.get_field("string").and_then(string)
}

/// A report frame of a Java method, named as a Java stack trace names it (`pkg.Class.method(int, byte[])`), at
/// its line. Its address stands for the method (a hash of it), so two methods are two pprof locations.
fn frame(class: &str, name: &str, descriptor: &str, line: i32) -> Frame {
    use std::hash::Hasher;
    let symbol = format!("{}.{name}({})", class.replace('/', "."), parameters(descriptor).join(", "));
    let mut h = std::hash::DefaultHasher::new();
    (&symbol, line).hash(&mut h);
    Frame {
        symbol: Some(symbol),
        module: Some(JAVA_MODULE.to_string()),
        address: format!("{:#x}", h.finish() >> 16),
        file: None,
        line: u32::try_from(line).ok().filter(|&l| l > 0),
        kernel: false,
        unwind: Some("profile".to_string()),
    }
}

/// The parameter types of a method descriptor (`(I[BLjava/lang/String;)V`) as Java writes them.
fn parameters(descriptor: &str) -> Vec<String> {
    let inner = descriptor.strip_prefix('(').and_then(|d| d.split(')').next()).unwrap_or("");
    let mut out = Vec::new();
    let mut chars = inner.chars();
    let mut dims = 0;
    while let Some(c) = chars.next() {
        let base = match c {
            '[' => {
                dims += 1;
                continue;
            }
            'L' => chars.by_ref().take_while(|&c| c != ';').collect::<String>().replace('/', "."),
            'Z' => "boolean".into(),
            'B' => "byte".into(),
            'C' => "char".into(),
            'S' => "short".into(),
            'I' => "int".into(),
            'J' => "long".into(),
            'F' => "float".into(),
            'D' => "double".into(),
            _ => c.to_string(),
        };
        // A Java stack trace names java.lang's classes short, as jfr print does.
        let base = base.strip_prefix("java.lang.").filter(|b| !b.contains('.')).map(str::to_string).unwrap_or(base);
        out.push(format!("{base}{}", "[]".repeat(dims)));
        dims = 0;
    }
    out
}

#[cfg(test)]
mod tests;
