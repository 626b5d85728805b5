//! Kernel type information from BTF: enum values (the `item` numbers of the memcg tracepoints) and struct member
//! offsets (for walking `task_struct` to its memcg), which differ between kernel versions and configs.
use std::path::Path;

use anyhow::Context;
use btf_rs::{Btf, BtfType, Type};

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Anonymous struct/union nesting is shallow in practice (task_struct: 2-3 levels); the cap only guards against
/// malformed BTF.
const MAX_NESTING: u32 = 16;

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Loads the running kernel's BTF.
    pub fn load() -> anyhow::Result<Self> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let btf = Btf::from_file(path).with_context(|| {
            format!(
                "cannot load kernel BTF from {} (a kernel built with CONFIG_DEBUG_INFO_BTF=y is needed)",
                path.display()
            )
        })?;
        Ok(Self { btf })
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        Ok(Self { btf: Btf::from_bytes(bytes).context("malformed BTF data")? })
    }

    /// The value of `variant` in `enum <enum_name>`, e.g. `("node_stat_item", "NR_ANON_MAPPED")`.
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Option<i64> {
        self.btf.resolve_types_by_name(enum_name).ok()?.into_iter().find_map(|t| match t {
            Type::Enum(e) => e.members.iter().find(|m| self.name_is(*m, variant)).map(|m| {
                // Stored as raw 32 bits; the enum's sign flag says how to read them.
                if e.is_signed() {
                    m.val() as i32 as i64
                } else {
                    m.val() as i64
                }
            }),
            Type::Enum64(e) => e.members.iter().find(|m| self.name_is(*m, variant)).map(|m| m.val() as i64),
            _ => None,
        })
    }

    /// Byte offset of `member` in `struct <struct_name>` (or union), looking through anonymous struct/union members
    /// as C does. `None` when absent or a bitfield (no byte offset).
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Option<u32> {
        self.btf.resolve_types_by_name(struct_name).ok()?.iter().find_map(|t| match t {
            Type::Struct(s) | Type::Union(s) => self.find_member(s, member, 0),
            _ => None,
        })
    }

    fn find_member(&self, s: &btf_rs::Struct, member: &str, depth: u32) -> Option<u32> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).ok()?;
            let found = if name == member {
                let bitfield = m.bitfield_size().is_some_and(|bits| bits != 0) || m.bit_offset() % 8 != 0;
                if bitfield {
                    return None;
                }
                Some(0)
            } else if name.is_empty() && depth < MAX_NESTING {
                match self.strip_modifiers(self.btf.resolve_chained_type(m).ok()?) {
                    Type::Struct(inner) | Type::Union(inner) => self.find_member(&inner, member, depth + 1),
                    _ => None,
                }
            } else {
                None
            };
            if let Some(inner_offset) = found {
                return Some(m.bit_offset() / 8 + inner_offset);
            }
        }
        None
    }

    /// Anonymous members can be wrapped in const/volatile (and, rarely, a typedef).
    fn strip_modifiers(&self, mut t: Type) -> Type {
        for _ in 0..MAX_NESTING {
            let modifier = matches!(t, Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::Typedef(_));
            let next = modifier.then(|| t.as_btf_type()).flatten().and_then(|x| self.btf.resolve_chained_type(x).ok());
            match next {
                Some(next) => t = next,
                None => break,
            }
        }
        t
    }

    fn name_is(&self, t: &dyn BtfType, want: &str) -> bool {
        self.btf.resolve_name(t).is_ok_and(|n| n == want)
    }
}

#[cfg(test)]
mod tests;
