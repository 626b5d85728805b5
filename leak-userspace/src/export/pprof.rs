//! `profile.pb.gz`: the sites as a pprof heap profile, for `go tool pprof`, Pyroscope, Parca and speedscope.
//!
//! One sample per site with the four heap sample types (`alloc_objects`, `alloc_space`, `inuse_objects`,
//! `inuse_space`; outstanding = in use, the default), labels `kind`, `slab_cache`, `pid`, `comm` and `cgroup`.
//! Kernel frames live in `[kernel.kallsyms]` / `[<module>]` mappings (perf's names), so `-show_from`/`-hide` and
//! the mapping column tell them apart. Frames the symbolizer reported as inlined (same address, another function)
//! become one location with several lines, innermost first, as profile.proto wants.
use std::{collections::HashMap, io::Write, path::Path};

use anyhow::Result;
use flate2::{write::GzEncoder, Compression};
use prost::Message;

use super::clamp;
use crate::report::{Frame, Report};

mod proto;

pub use proto::Profile;

/// (type, unit) of each sample value, in the order `Sample::value` holds them.
pub const SAMPLE_TYPES: [(&str, &str); 4] =
    [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"), ("inuse_space", "bytes")];

/// Where a frame's code lives: the kernel (or one of its modules) or a user object, named as in the report.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Module {
    pub kernel: bool,
    pub name: Option<String>,
}

impl Module {
    fn of(frame: &Frame) -> Self {
        Module { kernel: frame.kernel, name: frame.module.clone() }
    }

    /// The mapping's file name: perf's `[kernel.kallsyms]` and `[module]` for the kernel side.
    fn file(&self) -> String {
        match (self.kernel, self.name.as_deref()) {
            (true, None | Some("kernel")) => "[kernel.kallsyms]".to_string(),
            (true, Some(m)) => format!("[{m}]"),
            (false, name) => name.unwrap_or("[unknown]").to_string(),
        }
    }
}

/// The profile of `report`; `build_id` finds a module's GNU build id (hex) given the pids that mapped it.
pub fn profile(report: &Report, mut build_id: impl FnMut(&Module, &[u32]) -> Option<String>) -> Profile {
    let mut b = Builder::default();
    b.string("");
    let mut p = Profile {
        sample_type: SAMPLE_TYPES
            .iter()
            .map(|(t, u)| proto::ValueType { r#type: b.string(t), unit: b.string(u) })
            .collect(),
        ..Default::default()
    };
    p.default_sample_type = b.string("inuse_space");
    p.period_type = Some(proto::ValueType { r#type: b.string("space"), unit: b.string("bytes") });
    // Every allocation is recorded: no sampling to scale back.
    p.period = 1;
    p.time_nanos = time::OffsetDateTime::parse(&report.window.start, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp_nanos() as i64);
    p.duration_nanos = (report.window.seconds * 1e9) as i64;
    let cgroup = super::target_name(report);
    p.comment = vec![
        b.string(&format!("leaktrace: {cgroup}, {} to {}", report.window.start, report.window.end)),
        b.string(&format!("verdict: {} ({:.2})", report.verdict.class, report.verdict.confidence)),
    ];
    let [kind, slab_cache, pid, comm, cgroup_key] =
        ["kind", "slab_cache", "pid", "comm", "cgroup"].map(|k| b.string(k));
    let cgroup = b.string(&cgroup);
    // pprof takes the first mapping for the main binary: named user objects first, each site's outermost frame
    // first (`_start`, `main`: the executable), then unnamed ones, then the kernel.
    let passes: [fn(&&Frame) -> bool; 3] = [|f| !f.kernel && f.module.is_some(), |f| !f.kernel, |_| true];
    for pass in passes {
        for frame in report.sites.iter().flat_map(|s| s.frames.iter().rev()).filter(pass) {
            b.mapping(std::slice::from_ref(frame), &[]);
        }
    }
    for site in &report.sites {
        let mut label = vec![proto::Label { key: kind, str: b.string(&site.kind), ..Default::default() }];
        if let Some(cache) = &site.slab_cache {
            label.push(proto::Label { key: slab_cache, str: b.string(cache), ..Default::default() });
        }
        label.extend(site.pids.iter().map(|&p| proto::Label { key: pid, num: p.into(), ..Default::default() }));
        for c in &site.comms {
            label.push(proto::Label { key: comm, str: b.string(c), ..Default::default() });
        }
        label.push(proto::Label { key: cgroup_key, str: cgroup, ..Default::default() });
        let location_id = inline_groups(&site.frames).map(|group| b.location(group, &site.pids)).collect();
        p.sample.push(proto::Sample {
            location_id,
            value: vec![
                clamp(site.alloc_count),
                clamp(site.alloc_bytes),
                site.outstanding_allocs,
                site.outstanding_bytes,
            ],
            label,
        });
    }
    for (module, m) in b.modules {
        let filename = b.strings.index(&module.file());
        let build = match build_id(&module, &m.pids) {
            Some(id) => b.strings.index(&id),
            None => 0,
        };
        p.mapping.push(proto::Mapping {
            id: m.id,
            memory_start: m.start,
            memory_limit: m.end.saturating_add(1),
            filename,
            build_id: build,
            has_functions: true,
            has_filenames: m.files,
            has_line_numbers: m.files,
            has_inline_frames: m.inlines,
            ..Default::default()
        });
    }
    p.mapping.sort_by_key(|m| m.id);
    p.location = b.locations;
    p.function = b.functions;
    p.string_table = b.strings.table;
    p
}

/// Gzip-compressed protobuf, the on-disk form pprof reads.
pub fn encode(profile: &Profile) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    gz.write_all(&profile.encode_to_vec()).expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

/// Writes `profile.pb.gz` into `dir` atomically, mode 0600 (see `profile_bytes`).
pub fn write_pprof(dir: &Path, report: &Report) -> Result<()> {
    crate::output::write_atomic(dir, "profile.pb.gz", &profile_bytes(report))
}

/// The gzipped profile, with build ids read from this machine. It holds the sites the outputs lead with
/// (`export::lead_sites`): the last kill's when the end is empty.
pub fn profile_bytes(report: &Report) -> Vec<u8> {
    let mut ids = super::buildid::BuildIds::default();
    match super::lead_sites(report) {
        (_, None) => encode(&profile(report, |m, pids| ids.lookup(m, pids))),
        (sites, Some(_)) => {
            let shown = Report { sites: sites.into_owned(), ..report.clone() };
            encode(&profile(&shown, |m, pids| ids.lookup(m, pids)))
        }
    }
}

/// Frames leaf first, grouped into what pprof calls a location: blazesym reports the functions inlined at an
/// address as frames sharing that address, innermost first, each under another name. The same address under the
/// same name twice in a row is recursion, not inlining, and stays two locations.
fn inline_groups(frames: &[Frame]) -> impl Iterator<Item = &[Frame]> {
    let mut rest = frames;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let mut n = 1;
        while let Some(next) = rest.get(n) {
            let prev = &rest[n - 1];
            if next.address != first.address || next.kernel != first.kernel || next.symbol == prev.symbol {
                break;
            }
            n += 1;
        }
        let (group, tail) = rest.split_at(n);
        rest = tail;
        Some(group)
    })
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn index(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// A mapping being built: the address range its frames span and what the symbolizer gave for them.
struct MappingSpan {
    id: u64,
    start: u64,
    end: u64,
    files: bool,
    inlines: bool,
    pids: Vec<u32>,
}

/// Interns strings, functions, locations and mappings; ids start at 1 (0 means "none" in profile.proto).
#[derive(Default)]
struct Builder {
    strings: Strings,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(String, Option<String>), u64>,
    locations: Vec<proto::Location>,
    location_ids: HashMap<Vec<Frame>, u64>,
    modules: Vec<(Module, MappingSpan)>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        self.strings.index(s)
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let key = (frame.label().to_string(), frame.file.clone());
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name = self.string(&key.0);
        let filename = key.1.as_deref().map_or(0, |f| self.string(f));
        self.functions.push(proto::Function { id, name, system_name: name, filename, start_line: 0 });
        self.function_ids.insert(key, id);
        id
    }

    fn location(&mut self, group: &[Frame], pids: &[u32]) -> u64 {
        // Pids are not part of a frame: the same frame seen from two processes of one binary is one location.
        if let Some(&id) = self.location_ids.get(group) {
            self.mapping(group, pids);
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        let address = parse_address(&group[0].address);
        let mapping_id = self.mapping(group, pids);
        // A frame with no symbol gets no line: pprof shows its address.
        let line = group
            .iter()
            .filter(|f| f.symbol.is_some())
            .map(|f| proto::Line { function_id: self.function(f), line: f.line.map_or(0, i64::from) })
            .collect();
        self.locations.push(proto::Location { id, mapping_id, address, line });
        self.location_ids.insert(group.to_vec(), id);
        id
    }

    fn mapping(&mut self, group: &[Frame], pids: &[u32]) -> u64 {
        let module = Module::of(&group[0]);
        let address = parse_address(&group[0].address);
        let files = group.iter().any(|f| f.file.is_some());
        let inlines = group.len() > 1;
        let span = match self.modules.iter_mut().find(|(m, _)| *m == module) {
            Some((_, span)) => span,
            None => {
                let id = self.modules.len() as u64 + 1;
                let span = MappingSpan { id, start: address, end: address, files, inlines, pids: Vec::new() };
                self.modules.push((module, span));
                &mut self.modules.last_mut().expect("just pushed").1
            }
        };
        span.start = span.start.min(address);
        span.end = span.end.max(address);
        span.files |= files;
        span.inlines |= inlines;
        for &pid in pids {
            if !span.pids.contains(&pid) {
                span.pids.push(pid);
            }
        }
        span.id
    }
}

fn parse_address(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap_or(0)
}

#[cfg(test)]
mod tests;
