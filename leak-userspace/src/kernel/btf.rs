//! Kernel type information from BTF: enum values (the `item` numbers of the memcg tracepoints), struct member
//! offsets (for walking `task_struct` to its memcg) and the argument types of raw tracepoints, all of which differ
//! between kernel versions and configs.
use std::path::Path;

use anyhow::{bail, Context};

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Anonymous struct/union nesting is shallow in practice (task_struct: 2-3 levels); the cap only guards against
/// malformed BTF.
const MAX_NESTING: u32 = 16;

/// BTF kinds (include/uapi/linux/btf.h) this reader looks into or must step over.
mod kinds {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const ENUM_FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC_PROTO: u32 = 13;
    pub const FLOAT: u32 = 16;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
    pub const MAX: u32 = 19;
}

/// The kernel's BTF, read in one pass that only records where each type starts: leaktrace asks a handful of
/// questions, so a linear scan per question is far cheaper than indexing every name of ~150k types (which made
/// BTF the largest part of the time to attach).
pub struct KernelBtf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte offset in `data` of type id `i + 1` (id 0 is void).
    types: Vec<usize>,
}

/// One type record: its header and where its kind-specific entries start.
#[derive(Clone, Copy)]
struct TypeRef {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    size_or_type: u32,
    entries: usize,
}

impl KernelBtf {
    /// Loads the running kernel's BTF.
    pub fn load() -> anyhow::Result<Self> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let read = || -> anyhow::Result<Self> { Self::parse(std::fs::read(path)?) };
        read().with_context(|| {
            format!(
                "cannot load kernel BTF from {} (a kernel built with CONFIG_DEBUG_INFO_BTF=y is needed)",
                path.display()
            )
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        Self::parse(bytes.to_vec()).context("malformed BTF data")
    }

    fn parse(data: Vec<u8>) -> anyhow::Result<Self> {
        let word = |at: usize| -> anyhow::Result<u32> {
            let bytes = data.get(at..at + 4).context("truncated BTF")?;
            Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
        };
        if data.get(0..2) != Some(&0xeb9f_u16.to_le_bytes()[..]) {
            bail!("no little-endian BTF magic");
        }
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (word(4)? as usize, word(8)? as usize, word(12)? as usize, word(16)? as usize, word(20)? as usize);
        let types_at = hdr_len.checked_add(type_off).context("bad BTF header")?;
        let strings_at = hdr_len.checked_add(str_off).context("bad BTF header")?;
        let types_end = types_at.checked_add(type_len).context("bad BTF header")?;
        let strings = strings_at..strings_at.checked_add(str_len).context("bad BTF header")?;
        if types_end > data.len() || strings.end > data.len() {
            bail!("BTF sections run past the end of the data");
        }
        let mut types = Vec::new();
        let mut at = types_at;
        while at < types_end {
            let info = word(at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                kinds::INT | kinds::VAR | kinds::DECL_TAG => 4,
                kinds::ARRAY => 12,
                kinds::STRUCT | kinds::UNION | kinds::DATASEC | kinds::ENUM64 => 12 * vlen,
                kinds::ENUM | kinds::FUNC_PROTO => 8 * vlen,
                k if k <= kinds::MAX => 0,
                k => bail!("unknown BTF kind {k}"),
            };
            types.push(at);
            at += 12 + extra;
        }
        if at != types_end {
            bail!("the last BTF type runs past its section");
        }
        Ok(Self { data, strings, types })
    }

    fn word(&self, at: usize) -> u32 {
        self.data.get(at..at + 4).map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn type_at(&self, at: usize) -> TypeRef {
        let info = self.word(at + 4);
        TypeRef {
            name_off: self.word(at),
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 != 0,
            vlen: (info & 0xffff) as usize,
            size_or_type: self.word(at + 8),
            entries: at + 12,
        }
    }

    fn type_by_id(&self, id: u32) -> Option<TypeRef> {
        let at = *self.types.get((id as usize).checked_sub(1)?)?;
        Some(self.type_at(at))
    }

    /// Whether the string at `off` is `want` (compared in place: no string is built).
    fn name_is(&self, off: u32, want: &str) -> bool {
        let start = self.strings.start + off as usize;
        let end = start + want.len();
        end < self.strings.end && &self.data[start..end] == want.as_bytes() && self.data[end] == 0
    }

    fn named<'a>(&'a self, name: &'a str, kinds: &'a [u32]) -> impl Iterator<Item = TypeRef> + 'a {
        self.types
            .iter()
            .map(|&at| self.type_at(at))
            .filter(move |t| kinds.contains(&t.kind) && t.name_off != 0 && self.name_is(t.name_off, name))
    }

    /// The value of `variant` in `enum <enum_name>`, e.g. `("node_stat_item", "NR_ANON_MAPPED")`.
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Option<i64> {
        self.named(enum_name, &[kinds::ENUM, kinds::ENUM64]).find_map(|t| {
            let wide = t.kind == kinds::ENUM64;
            let step = if wide { 12 } else { 8 };
            (0..t.vlen).map(|i| t.entries + i * step).find(|&e| self.name_is(self.word(e), variant)).map(|e| {
                let lo = self.word(e + 4);
                match (wide, t.kind_flag) {
                    (true, _) => (u64::from(self.word(e + 8)) << 32 | u64::from(lo)) as i64,
                    // Stored as raw 32 bits; the enum's kind flag says they are signed.
                    (false, true) => lo as i32 as i64,
                    (false, false) => lo as i64,
                }
            })
        })
    }

    /// Byte offset of `member` in `struct <struct_name>` (or union), looking through anonymous struct/union members
    /// as C does. `None` when absent or a bitfield (no byte offset).
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Option<u32> {
        self.named(struct_name, &[kinds::STRUCT, kinds::UNION]).find_map(|t| self.find_member(t, member, 0))
    }

    /// The size of `struct <name>` in bytes (a declaration without a body does not count).
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.named(name, &[kinds::STRUCT]).map(|t| t.size_or_type).find(|&size| size > 0)
    }

    /// The C types of a raw tracepoint's arguments (its TP_PROTO), from the `btf_trace_<event>` typedef the kernel
    /// declares for every tracepoint, e.g. `["struct page *", "unsigned int", "gfp_t", "int"]` for mm_page_alloc.
    /// `None` when this kernel has no such tracepoint.
    pub fn tracepoint_args(&self, event: &str) -> Option<Vec<String>> {
        let typedef = self.named(&format!("btf_trace_{event}"), &[kinds::TYPEDEF]).next()?;
        let ptr = self.type_by_id(typedef.size_or_type).filter(|t| t.kind == kinds::PTR)?;
        let proto = self.type_by_id(ptr.size_or_type).filter(|t| t.kind == kinds::FUNC_PROTO)?;
        // The first parameter is the probe's private data pointer, not an argument of the event.
        Some((1..proto.vlen).map(|i| self.c_type(self.word(proto.entries + i * 8 + 4), 0)).collect())
    }

    /// A type as C spells it, with typedef names kept (`size_t`, `gfp_t`): what tracepoint prototypes say.
    fn c_type(&self, id: u32, depth: u32) -> String {
        if id == 0 {
            return "void".into();
        }
        let Some(t) = self.type_by_id(id).filter(|_| depth < MAX_NESTING) else {
            return "?".into();
        };
        let name = || self.string(t.name_off);
        match t.kind {
            kinds::PTR => format!("{} *", self.c_type(t.size_or_type, depth + 1)),
            kinds::CONST => format!("const {}", self.c_type(t.size_or_type, depth + 1)),
            kinds::VOLATILE => format!("volatile {}", self.c_type(t.size_or_type, depth + 1)),
            kinds::RESTRICT | kinds::TYPE_TAG => self.c_type(t.size_or_type, depth + 1),
            kinds::STRUCT => format!("struct {}", name()),
            kinds::UNION => format!("union {}", name()),
            kinds::ENUM | kinds::ENUM64 | kinds::ENUM_FWD => format!("enum {}", name()),
            kinds::INT | kinds::TYPEDEF | kinds::FLOAT => name(),
            _ => "?".into(),
        }
    }

    fn string(&self, off: u32) -> String {
        let start = self.strings.start + off as usize;
        let bytes = self.data.get(start..self.strings.end).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }

    fn find_member(&self, s: TypeRef, member: &str, depth: u32) -> Option<u32> {
        for i in 0..s.vlen {
            let e = s.entries + i * 12;
            let (name_off, type_id, offset) = (self.word(e), self.word(e + 4), self.word(e + 8));
            // With the kind flag, the top 8 bits are a bitfield's size and the rest its bit offset.
            let (bit_offset, bits) = if s.kind_flag { (offset & 0xff_ffff, offset >> 24) } else { (offset, 0) };
            let found = if name_off != 0 && self.name_is(name_off, member) {
                if bits != 0 || bit_offset % 8 != 0 {
                    return None;
                }
                Some(0)
            } else if (name_off == 0 || self.name_is(name_off, "")) && depth < MAX_NESTING {
                self.strip_modifiers(type_id)
                    .filter(|t| matches!(t.kind, kinds::STRUCT | kinds::UNION))
                    .and_then(|inner| self.find_member(inner, member, depth + 1))
            } else {
                None
            };
            if let Some(inner_offset) = found {
                return Some(bit_offset / 8 + inner_offset);
            }
        }
        None
    }

    /// Anonymous members can be wrapped in const/volatile (and, rarely, a typedef or type tag).
    fn strip_modifiers(&self, mut id: u32) -> Option<TypeRef> {
        for _ in 0..MAX_NESTING {
            let t = self.type_by_id(id)?;
            match t.kind {
                kinds::CONST | kinds::VOLATILE | kinds::RESTRICT | kinds::TYPEDEF | kinds::TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
