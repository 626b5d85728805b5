//! Python frames: which processes run CPython (3.9 to 3.13) and where their frames are, for the programs to walk
//! (`PY_PROCS`), and the code objects the samples' frames point at, read from the process's memory and named as
//! `remember (session_store.py:12)`.
//!
//! The member offsets come from `_Py_DebugOffsets` at the start of `_PyRuntime` from 3.13 (stable within a
//! minor version, as CPython promises), and before that from a table per minor version, taken from each version's
//! headers (`offsetof` with `Py_BUILD_CORE`, the way py-spy and the OpenTelemetry profiler keep theirs). Every
//! code object read is checked to be one (its type is `PyCode_Type`), so a wrong guess names nothing rather than
//! naming wrongly.
use std::{collections::HashMap, fs::File, os::unix::fs::FileExt};

use aya::maps::{HashMap as BpfHashMap, MapData};
use leak_common::{PyFrame, PyProc, OFFSET_NONE, PY_CSTACK_BIT, PY_ENTRY_BIT};
use object::{Object, ObjectSymbol};

use super::maps::{self, Mapping};
use crate::report::Frame;

/// The module named for Python frames.
pub const PY_MODULE: &str = "[python]";

/// How a version's frames say where they are in their code, and how its line table reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    /// 3.9: `f_lasti`, a byte offset; `co_lnotab`.
    Lnotab,
    /// 3.10: `f_lasti`, in code units; `co_linetable` of (bytes, line delta) pairs.
    Linetable310,
    /// 3.11+: an instruction pointer into `co_code_adaptive`; `co_linetable` as a location table (PEP 657).
    Locations,
}

/// What one CPython minor version keeps where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub version: (u8, u8),
    /// The offsets the programs walk with (`runtime` left for the process's address).
    proc: PyProc,
    code_filename: u64,
    code_name: u64,
    /// `co_qualname` (3.11+): `Store.remember` rather than `remember`.
    code_qualname: Option<u64>,
    code_lines: u64,
    code_firstlineno: u64,
    code_adaptive: u64,
    /// sizeof(PyASCIIObject) and sizeof(PyCompactUnicodeObject): where a compact string's characters start.
    ascii_size: u64,
    compact_size: u64,
    lines: Lines,
    /// Before 3.11 every Python call is a call of the eval loop from C.
    every_frame_entry: bool,
}

const BYTES_SVAL: u64 = 32;
const BYTES_SIZE: u64 = 16;
const UNICODE_LENGTH: u64 = 16;
const UNICODE_STATE: u64 = 32;
const OB_TYPE: u64 = 8;

fn offsets(o: [u32; 11]) -> PyProc {
    let [interp_head, threads_head, tstate_next, tstate_thread_id, tstate_frame, cframe_frame, frame_code, frame_previous, frame_instr, frame_owner, frame_is_entry] =
        o;
    PyProc {
        runtime: 0,
        interp_head,
        threads_head,
        tstate_next,
        tstate_thread_id,
        tstate_frame,
        cframe_frame,
        frame_code,
        frame_previous,
        frame_instr,
        frame_owner,
        frame_is_entry,
        _pad: 0,
    }
}

const NONE: u32 = OFFSET_NONE;

impl Layout {
    /// The known layout of a version before 3.13 (x86-64).
    pub fn known(version: (u8, u8)) -> Option<Layout> {
        // interp_head, threads_head, tstate next, thread_id, frame, cframe->current_frame, frame code, previous,
        // instr, owner, is_entry
        let (proc, code, lines) = match version {
            (3, 9) => {
                (offsets([32, 8, 8, 176, 24, NONE, 32, 24, 104, NONE, NONE]), [104, 112, 0, 120, 40, 0], Lines::Lnotab)
            }
            (3, 10) => (
                offsets([32, 8, 8, 176, 24, NONE, 32, 24, 96, NONE, NONE]),
                [104, 112, 0, 120, 40, 0],
                Lines::Linetable310,
            ),
            (3, 11) => {
                (offsets([40, 16, 8, 152, 56, 8, 32, 48, 56, 69, 68]), [112, 120, 128, 136, 72, 184], Lines::Locations)
            }
            (3, 12) => {
                (offsets([40, 72, 8, 136, 56, 0, 0, 8, 56, 70, NONE]), [112, 120, 128, 136, 68, 192], Lines::Locations)
            }
            _ => return None,
        };
        let [code_filename, code_name, qualname, code_lines, code_firstlineno, code_adaptive] = code;
        let (ascii_size, compact_size) = if version >= (3, 12) { (40, 56) } else { (48, 72) };
        Some(Layout {
            version,
            proc,
            code_filename,
            code_name,
            code_qualname: (qualname != 0).then_some(qualname),
            code_lines,
            code_firstlineno,
            code_adaptive,
            ascii_size,
            compact_size,
            lines,
            every_frame_entry: version < (3, 11),
        })
    }

    /// The layout `_Py_DebugOffsets` gives (3.13: the struct's layout of that minor version), `None` when `raw`
    /// (read from the start of `_PyRuntime`) is not one.
    pub fn from_debug_offsets(raw: &[u8]) -> Option<Layout> {
        let w = |i: usize| -> Option<u64> { Some(u64::from_le_bytes(raw.get(i * 8..i * 8 + 8)?.try_into().ok()?)) };
        if raw.get(..8)? != b"xdebugpy" {
            return None;
        }
        let version = w(1)?;
        let minor = (version >> 16 & 0xff) as u8;
        if version >> 24 != 3 || minor != 13 || w(2)? != 0 {
            // Another minor version lays the struct out otherwise; a free-threaded build keeps other frames.
            return None;
        }
        let o = |i: usize| -> Option<u32> { w(i).and_then(|v| u32::try_from(v).ok()).filter(|&v| v < 1 << 20) };
        Some(Layout {
            version: (3, minor),
            proc: PyProc {
                runtime: 0,
                interp_head: o(5)?,
                threads_head: o(9)?,
                tstate_next: o(21)?,
                tstate_thread_id: o(24)?,
                tstate_frame: o(23)?,
                cframe_frame: NONE,
                frame_code: o(30)?,
                frame_previous: o(29)?,
                frame_instr: o(31)?,
                frame_owner: o(33)?,
                frame_is_entry: NONE,
                _pad: 0,
            },
            code_filename: w(35)?,
            code_name: w(36)?,
            code_qualname: Some(w(37)?),
            code_lines: w(38)?,
            code_firstlineno: w(39)?,
            code_adaptive: w(43)?,
            ascii_size: w(70)?,
            compact_size: w(70)? + 16,
            lines: Lines::Locations,
            every_frame_entry: false,
        })
    }
}

/// Bytes of `_Py_DebugOffsets` read (3.13's struct is 75 words).
const DEBUG_OFFSETS_BYTES: usize = 80 * 8;

/// A CPython interpreter found in a process: its layout and addresses, and the process's memory to read its
/// code objects from.
#[derive(Debug)]
pub struct Interpreter {
    pub layout: Layout,
    pub runtime: u64,
    /// `&PyCode_Type`: what a code object's `ob_type` is.
    code_type: u64,
    mem: File,
}

impl Interpreter {
    /// The interpreter process `pid` runs, if it is CPython 3.9-3.13: its executable or its libpython defines
    /// `_PyRuntime`.
    pub fn find(pid: u32) -> Option<Interpreter> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let all = maps::parse(&text);
        let objects = all.iter().filter(|m| m.offset == 0 && m.name().is_some_and(|n| n.contains("python")));
        objects.filter_map(|m| Self::in_object(pid, m)).next()
    }

    fn in_object(pid: u32, first: &Mapping) -> Option<Interpreter> {
        let link = format!("/proc/{pid}/map_files/{:x}-{:x}", first.start, first.end);
        let file = File::open(link).ok()?;
        // SAFETY: a read-only map of a mapped object, only read while parsing its symbols.
        let data = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let elf = object::File::parse(&*data).ok()?;
        let symbol =
            |name: &str| elf.dynamic_symbols().chain(elf.symbols()).find(|s| s.name() == Ok(name) && s.address() != 0);
        let (runtime, code_type) = (symbol("_PyRuntime")?.address(), symbol("PyCode_Type")?.address());
        let bias = maps::load_bias(&elf, || Some(first.start))?;
        let (runtime, code_type) = (runtime + bias, code_type + bias);
        let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
        let layout = match version_of(first.path.as_deref()?)? {
            (3, minor) if minor >= 13 => {
                let mut raw = vec![0u8; DEBUG_OFFSETS_BYTES];
                mem.read_exact_at(&mut raw, runtime).ok()?;
                Layout::from_debug_offsets(&raw)?
            }
            version => Layout::known(version)?,
        };
        Some(Interpreter { layout, runtime, code_type, mem })
    }

    /// The entry for `PY_PROCS`.
    pub fn proc(&self) -> PyProc {
        PyProc { runtime: self.runtime, ..self.layout.proc }
    }
}

/// The version in an interpreter's file name: `python3.11`, `libpython3.12.so.1.0`.
fn version_of(path: &str) -> Option<(u8, u8)> {
    let name = path.rsplit('/').next()?;
    let rest = &name[name.find("python")? + "python".len()..];
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major: u8 = parts.next()?.parse().ok()?;
    let minor: u8 = parts.next()?.parse().ok()?;
    (major == 3 && (9..=13).contains(&minor)).then_some((major, minor))
}

/// A code object as read: what names its frames.
#[derive(Debug, Clone)]
struct Code {
    /// Its header words: a code object freed and another made at its address differ in them.
    header: Header,
    name: String,
    file: String,
    lines: Vec<u8>,
}

/// A Python frame of a sample, resolved: what a report frame shows, and whether it began a call of the eval loop
/// from C.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PyFrameName {
    pub name: String,
    pub file: String,
    pub line: Option<u32>,
    pub entry: bool,
}

impl PyFrameName {
    /// The report frame; its address is the frame's id, so that two Python frames in a row never look like
    /// functions inlined at one address (pprof's locations).
    pub fn frame(&self, id: u64) -> Frame {
        Frame {
            symbol: Some(self.name.clone()),
            module: Some(PY_MODULE.to_string()),
            address: format!("{id:#x}"),
            file: Some(self.file.clone()),
            line: self.line,
            kernel: false,
            unwind: Some("python".to_string()),
        }
    }
}

struct Traced {
    interpreter: Interpreter,
    codes: HashMap<u64, Code>,
}

/// The Python processes of a trace and the frames their samples carried.
#[derive(Default)]
pub struct PythonFrames {
    map: Option<BpfHashMap<MapData, u32, PyProc>>,
    /// Processes looked at, with their interpreter when they run one.
    processes: HashMap<u32, Option<Traced>>,
    ids: HashMap<PyFrameName, u32>,
    names: Vec<PyFrameName>,
    /// Frames whose code object could not be read (freed, or no code object).
    pub unreadable: u64,
}

/// Distinct Python frames kept; past this, frames go unnamed.
const MAX_NAMES: usize = 1 << 16;

impl PythonFrames {
    /// `map`: the programs' `PY_PROCS` (none: nothing is walked, as in unit tests).
    pub fn new(map: Option<BpfHashMap<MapData, u32, PyProc>>) -> Self {
        PythonFrames { map, ..Default::default() }
    }

    /// Looks at a process first seen, or seen again (`again`: its code changed) without an interpreter found
    /// (its libpython mapped since): when it runs CPython, the programs walk its frames from its next sample on.
    pub fn look_at(&mut self, pid: u32, again: bool) {
        let known = self.processes.get(&pid);
        if self.map.is_none() || known.is_some_and(|t| !again || t.is_some()) {
            return;
        }
        let traced = Interpreter::find(pid).map(|interpreter| Traced { interpreter, codes: HashMap::new() });
        if let (Some(t), Some(map)) = (&traced, self.map.as_mut()) {
            let (major, minor) = t.interpreter.layout.version;
            match map.insert(pid, t.interpreter.proc(), 0) {
                Ok(()) => tracing::debug!("pid {pid} runs CPython {major}.{minor}: its frames are walked"),
                Err(e) => tracing::debug!("cannot walk the Python frames of pid {pid}: {e}"),
            }
        }
        self.processes.insert(pid, traced);
    }

    /// The CPython versions of the processes seen, for the report.
    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .processes
            .values()
            .flatten()
            .map(|t| format!("{}.{}", t.interpreter.layout.version.0, t.interpreter.layout.version.1))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The ids of a sample's Python frames (newest first), their code objects read now, while the process lives.
    pub fn intern(&mut self, pid: u32, frames: &[PyFrame]) -> Vec<u32> {
        let Some(Some(t)) = self.processes.get_mut(&pid) else { return Vec::new() };
        let layout = &t.interpreter.layout;
        let mut named: Vec<PyFrameName> = Vec::with_capacity(frames.len());
        for f in frames {
            if f.code & PY_CSTACK_BIT != 0 {
                // The eval loop's entry: the frame before began that call of the loop.
                if let Some(last) = named.last_mut() {
                    last.entry = true;
                }
                continue;
            }
            let addr = f.code & !(PY_ENTRY_BIT | PY_CSTACK_BIT);
            let Some(code) = code_at(&mut t.codes, &t.interpreter, addr) else {
                self.unreadable += 1;
                continue;
            };
            named.push(PyFrameName {
                line: line_of(layout, code, addr, f.instr),
                name: code.name.clone(),
                file: code.file.clone(),
                entry: f.code & PY_ENTRY_BIT != 0 || layout.every_frame_entry,
            });
        }
        named.into_iter().filter_map(|name| self.id(name)).collect()
    }

    fn id(&mut self, name: PyFrameName) -> Option<u32> {
        if let Some(&id) = self.ids.get(&name) {
            return Some(id);
        }
        if self.names.len() >= MAX_NAMES {
            return None;
        }
        let id = self.names.len() as u32;
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        Some(id)
    }

    pub fn name(&self, id: u64) -> Option<&PyFrameName> {
        self.names.get(usize::try_from(id).ok()?)
    }

    /// Forgets the processes that are gone (their frames stay named).
    pub fn prune(&mut self, alive: impl Fn(u32) -> bool) {
        let gone: Vec<u32> = self.processes.keys().copied().filter(|&p| !alive(p)).collect();
        for pid in gone {
            if let Some(map) = self.map.as_mut() {
                let _ = map.remove(&pid);
            }
            self.processes.remove(&pid);
        }
    }
}

/// The code object at `addr`, read again when its header changed since it was read: the interpreter frees code
/// objects (a module's body once run) and makes others where they were.
fn code_at<'a>(codes: &'a mut HashMap<u64, Code>, interpreter: &Interpreter, addr: u64) -> Option<&'a Code> {
    let header = Header::read(interpreter, addr)?;
    if codes.get(&addr).is_none_or(|c| c.header != header) {
        codes.insert(addr, read_code(interpreter, header)?);
    }
    codes.get(&addr)
}

/// The words of a code object that name it (its type checked): name, file, first line, line table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    name: u64,
    file: u64,
    firstlineno: u32,
    table: u64,
}

impl Header {
    /// One read of the object's start; `None` when `addr` holds no code object.
    fn read(interpreter: &Interpreter, addr: u64) -> Option<Header> {
        let l = &interpreter.layout;
        let name_at = l.code_qualname.unwrap_or(l.code_name);
        let span = [OB_TYPE, name_at, l.code_filename, l.code_firstlineno, l.code_lines].into_iter().max()? + 8;
        let mut raw = vec![0u8; span as usize];
        if addr == 0 || interpreter.mem.read_exact_at(&mut raw, addr).is_err() {
            return None;
        }
        let word = |at: u64| u64::from_le_bytes(raw[at as usize..][..8].try_into().unwrap_or_default());
        (word(OB_TYPE) == interpreter.code_type).then(|| Header {
            name: word(name_at),
            file: word(l.code_filename),
            firstlineno: word(l.code_firstlineno) as u32,
            table: word(l.code_lines),
        })
    }
}

/// Reads a code object's names and line table.
fn read_code(interpreter: &Interpreter, header: Header) -> Option<Code> {
    let (l, mem) = (&interpreter.layout, &interpreter.mem);
    let mut size = [0u8; 8];
    mem.read_exact_at(&mut size, header.table + BYTES_SIZE).ok()?;
    let table_len = u64::from_le_bytes(size).min(MAX_LINE_TABLE);
    let mut lines = vec![0u8; table_len as usize];
    mem.read_exact_at(&mut lines, header.table + BYTES_SVAL).ok()?;
    Some(Code { name: read_str(mem, l, header.name)?, file: read_str(mem, l, header.file)?, header, lines })
}

const MAX_LINE_TABLE: u64 = 1 << 16;
const MAX_STR: u64 = 4096;

/// A `str` object's text: compact strings (identifiers and file names are), ASCII or of 1, 2 or 4 bytes a
/// character.
fn read_str(mem: &File, l: &Layout, addr: u64) -> Option<String> {
    let mut head = [0u8; 40];
    mem.read_exact_at(&mut head, addr).ok()?;
    let length = u64::from_le_bytes(head[UNICODE_LENGTH as usize..][..8].try_into().ok()?).min(MAX_STR);
    let state = u32::from_le_bytes(head[UNICODE_STATE as usize..][..4].try_into().ok()?);
    let (kind, compact, ascii) = (state >> 2 & 7, state >> 5 & 1 == 1, state >> 6 & 1 == 1);
    if !compact || !matches!(kind, 1 | 2 | 4) {
        return None;
    }
    let at = addr + if ascii { l.ascii_size } else { l.compact_size };
    let mut data = vec![0u8; (length * kind as u64) as usize];
    mem.read_exact_at(&mut data, at).ok()?;
    Some(match kind {
        1 => data.iter().map(|&b| b as char).collect(),
        2 => {
            let units: Vec<u16> = data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            String::from_utf16_lossy(&units)
        }
        _ => {
            data.chunks_exact(4).filter_map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
        }
    })
}

/// The line a frame is at: its instruction's, from the code's line table.
fn line_of(l: &Layout, code: &Code, addr: u64, instr: u64) -> Option<u32> {
    match l.lines {
        Lines::Lnotab => lnotab_line(&code.lines, code.header.firstlineno, instr as u32 as i32),
        Lines::Linetable310 => {
            linetable310_line(&code.lines, code.header.firstlineno, (instr as u32 as i32).saturating_mul(2))
        }
        Lines::Locations => {
            let first = addr + l.code_adaptive;
            let offset = instr.checked_sub(first)? / 2;
            locations_line(&code.lines, code.header.firstlineno, offset)
        }
    }
}

/// 3.9's `co_lnotab`: (byte offset increment, signed line increment) pairs.
fn lnotab_line(table: &[u8], first: u32, lasti: i32) -> Option<u32> {
    let mut line = first as i64;
    let mut addr = 0i32;
    for pair in table.chunks_exact(2) {
        addr += pair[0] as i32;
        if addr > lasti {
            break;
        }
        line += pair[1] as i8 as i64;
    }
    u32::try_from(line).ok()
}

/// 3.10's `co_linetable`: (bytes covered, signed line delta) pairs, a delta of -128 for no line.
fn linetable310_line(table: &[u8], first: u32, offset: i32) -> Option<u32> {
    let mut line = first as i64;
    let mut end = 0i32;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += pair[0] as i32;
        let delta = pair[1] as i8;
        if delta != -128 {
            line += delta as i64;
        }
        if (start..end).contains(&offset) {
            return if delta == -128 { None } else { u32::try_from(line).ok() };
        }
    }
    None
}

/// 3.11+'s location table: entries of a head byte (bit 7 set; code in bits 3-6, code units covered - 1 in bits
/// 0-2) and the code's operands. `offset` is in code units.
fn locations_line(table: &[u8], first: u32, offset: u64) -> Option<u32> {
    let mut bytes = table.iter().copied().peekable();
    let mut next = || bytes.next();
    let varint = |next: &mut dyn FnMut() -> Option<u8>| -> Option<u64> {
        let mut b = next()?;
        let mut value = (b & 63) as u64;
        let mut shift = 6;
        while b & 64 != 0 {
            b = next()?;
            value |= ((b & 63) as u64) << shift;
            shift += 6;
        }
        Some(value)
    };
    let mut line = first as i64;
    let mut at = 0u64;
    while let Some(head) = next() {
        if head & 0x80 == 0 {
            return None;
        }
        let code = head >> 3 & 15;
        let units = (head & 7) as u64 + 1;
        let delta = match code {
            15 => None,
            14 | 13 => {
                let v = varint(&mut next)?;
                let d = if v & 1 != 0 { -((v >> 1) as i64) } else { (v >> 1) as i64 };
                if code == 14 {
                    for _ in 0..3 {
                        varint(&mut next)?;
                    }
                }
                Some(d)
            }
            10..=12 => {
                next()?;
                next()?;
                Some(code as i64 - 10)
            }
            _ => {
                next()?;
                Some(0)
            }
        };
        if let Some(d) = delta {
            line += d;
        }
        if (at..at + units).contains(&offset) {
            return delta.and_then(|_| u32::try_from(line).ok());
        }
        at += units;
    }
    None
}

#[cfg(test)]
mod tests;
