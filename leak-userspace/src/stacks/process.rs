//! One traced process as the unwinder sees it: its executable mappings, the object behind each, a framehop
//! unwinder holding their call frame information, and all its mappings for telling what memory a sampled page lies
//! in. Kept after the process dies (an OOM victim's last samples may still be in the ring buffer), and refreshed
//! when its code changes (exec, a library loaded later).
use std::{collections::HashMap, ops::Range, sync::Arc, time::Instant};

use framehop::{x86_64::UnwinderX86_64, Unwinder};

use super::{
    maps::Mapping,
    object::{Bytes, UnwindObject},
    regions::RegionMap,
};

/// Objects read so far, by file identity and by build id: every process mapping libc shares one copy of its
/// unwind tables.
#[derive(Default)]
pub struct Objects {
    by_file: HashMap<(String, u64), Option<Arc<UnwindObject>>>,
    by_build_id: HashMap<Vec<u8>, Arc<UnwindObject>>,
    /// Names of objects that have no call frame information (their frames unwind by frame pointer).
    pub without_cfi: Vec<String>,
    pub read: u64,
}

/// Objects without CFI named in the report, at most.
const NAMED_WITHOUT_CFI: usize = 32;

impl Objects {
    /// The object behind a file mapping of `pid`, read through `/proc/<pid>/map_files` (the file the process
    /// really mapped, inside its container or after it was deleted), once per file.
    fn get(&mut self, pid: u32, m: &Mapping) -> Option<Arc<UnwindObject>> {
        let file = (m.dev.clone(), m.inode);
        if let Some(known) = self.by_file.get(&file) {
            return known.clone();
        }
        let object = read_object(pid, m).map(|o| match o.build_id.clone() {
            Some(id) => self.by_build_id.entry(id).or_insert_with(|| Arc::new(o)).clone(),
            None => Arc::new(o),
        });
        if let Some(o) = &object {
            self.read += 1;
            if !o.has_cfi() && self.without_cfi.len() < NAMED_WITHOUT_CFI {
                self.without_cfi.push(m.name().unwrap_or("?").to_string());
            }
        }
        self.by_file.insert(file, object.clone());
        object
    }
}

fn read_object(pid: u32, m: &Mapping) -> Option<UnwindObject> {
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let in_root = format!("/proc/{pid}/root{}", m.path.as_deref()?);
    let file = std::fs::File::open(&link).or_else(|_| std::fs::File::open(in_root)).ok()?;
    // SAFETY: the mapping is only read, and only while parsing; a file truncated meanwhile can at worst fault
    // this read-only view, which object files in use are not.
    let data = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    UnwindObject::parse(&data).map_err(|e| tracing::debug!("cannot read {link}: {e:#}")).ok()
}

/// An executable mapping: a file's code (with its object when it could be read) or anonymous code (JIT).
#[derive(Clone)]
pub struct Region {
    pub range: Range<u64>,
    pub object: Option<Arc<UnwindObject>>,
    pub bias: u64,
    /// Anonymous executable memory: code a JIT compiler wrote.
    pub jit: bool,
}

impl Region {
    /// Whether the code at `addr` unwinds by its call frame information.
    pub fn has_cfi(&self) -> bool {
        self.object.as_ref().is_some_and(|o| o.has_cfi())
    }

    /// Whether `addr` can be an instruction: in an executable section of the object (a data symbol in an
    /// executable segment is not code), or anywhere in JIT memory.
    pub fn is_code(&self, addr: u64) -> bool {
        self.object.as_ref().is_none_or(|o| o.is_code(addr.wrapping_sub(self.bias)))
    }
}

pub struct Process {
    regions: Vec<Region>,
    pub unwinder: UnwinderX86_64<Bytes>,
    pub read_at: Instant,
    /// Every mapping, data too; read again on its own when a page lies outside them (see `UserStacks::add`).
    pub memory: RegionMap,
    /// The instruction bytes at the ips its page faults were taken at (`fault_address`), read from its memory
    /// once each: a process faults its pages in at a few instructions.
    code: HashMap<u64, Vec<u8>>,
}

/// Faulting instructions kept per process at most (a JIT's code moves; the rest are read again).
const CODE_KEPT: usize = 1024;

impl Process {
    /// Reads the mappings of a live process; `None` when it is gone or shows no code (exiting).
    pub fn read(pid: u32, objects: &mut Objects) -> Option<Process> {
        let memory = RegionMap::read(pid)?;
        let mut unwinder = UnwinderX86_64::new();
        let mut regions = Vec::new();
        for m in memory.mappings().iter().filter(|m| m.exec) {
            let object = if m.is_file() { objects.get(pid, m) } else { None };
            let bias = object.as_ref().and_then(|o| o.bias(m.start, m.offset)).unwrap_or(m.start);
            if let Some(o) = &object {
                unwinder.add_module(o.module(m.name().unwrap_or("?"), m.start..m.end, bias));
            }
            regions.push(Region { range: m.start..m.end, object, bias, jit: m.path.is_none() });
        }
        if regions.is_empty() {
            return None;
        }
        Some(Process { regions, unwinder, read_at: Instant::now(), memory, code: HashMap::new() })
    }

    /// The bytes at `ip`, as many as an instruction may take, from the memory of the process `pid` (this one);
    /// `None` once it is gone. One at the end of a mapping reads short: the decoder takes what there is.
    pub fn code_at(&mut self, pid: u32, ip: u64) -> Option<&[u8]> {
        use std::os::unix::fs::FileExt;
        if !self.code.contains_key(&ip) {
            let mut bytes = [0u8; super::fault_address::MAX_INSTRUCTION];
            let n = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?.read_at(&mut bytes, ip).ok()?;
            if self.code.len() >= CODE_KEPT {
                self.code.clear();
            }
            self.code.insert(ip, bytes[..n].to_vec());
        }
        self.code.get(&ip).map(Vec::as_slice)
    }

    /// The executable region holding `addr`.
    pub fn region(&self, addr: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.range.start <= addr).checked_sub(1)?;
        self.regions.get(i).filter(|r| r.range.contains(&addr))
    }
}
