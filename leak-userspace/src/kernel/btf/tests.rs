use super::*;
use crate::cgroup::testing::host_has;

/// Builds a BTF blob by hand (see Documentation/bpf/btf.rst), so the lookups are tested without a kernel.
#[derive(Default)]
struct BtfBuilder {
    types: Vec<u8>,
    strings: Vec<u8>,
}

const INT: u32 = 1;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const CONST: u32 = 10;

impl BtfBuilder {
    fn new() -> Self {
        Self { types: Vec::new(), strings: vec![0] }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        self.types.extend(words.iter().flat_map(|w| w.to_le_bytes()));
    }

    fn header(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, size_or_type: u32) {
        let name = self.str(name);
        self.words(&[name, (kind << 24) | (u32::from(kind_flag) << 31) | vlen, size_or_type]);
    }

    /// Members: (name, type id, bit offset, bitfield bits); the struct uses kind_flag encoding.
    fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) {
        self.header(name, kind, true, members.len() as u32, size);
        for &(m, ty, bit_offset, bits) in members {
            let m = self.str(m);
            self.words(&[m, ty, (bits << 24) | bit_offset]);
        }
    }

    fn build(self) -> Vec<u8> {
        let mut out = Vec::new();
        let header = [0xeb9f_u16.to_le_bytes().to_vec(), vec![1, 0]].concat(); // magic, version 1, flags 0
        out.extend(header);
        let (tl, sl) = (self.types.len() as u32, self.strings.len() as u32);
        for w in [24, 0, tl, tl, sl] {
            out.extend(w.to_le_bytes()); // hdr_len, type_off, type_len, str_off, str_len
        }
        out.extend(self.types);
        out.extend(self.strings);
        out
    }
}

/// ```c
/// struct outer { int a; const struct { union { int deep; }; int b; }; int bits:3; };
/// enum color { RED = -1, BLUE = 7 };   // signed
/// ```
fn tiny() -> KernelBtf {
    let mut b = BtfBuilder::new();
    b.header("int", INT, false, 0, 4); // [1]
    b.words(&[(1 << 24) | 32]); // signed, 32 bits
    b.composite(STRUCT, "", 8, &[("", 6, 0, 0), ("b", 1, 32, 0)]); // [2]
    b.composite(STRUCT, "outer", 16, &[("a", 1, 0, 0), ("", 5, 32, 0), ("bits", 1, 96, 3)]); // [3]
    b.header("color", ENUM, true, 2, 4); // [4]
    let (red, blue) = (b.str("RED"), b.str("BLUE"));
    b.words(&[red, u32::MAX, blue, 7]);
    b.header("", CONST, false, 0, 2); // [5] const anonymous struct
    b.composite(UNION, "", 4, &[("deep", 1, 0, 0)]); // [6]
    KernelBtf::from_bytes(&b.build()).unwrap()
}

#[test]
fn tiny_member_offsets() {
    let btf = tiny();
    assert_eq!(btf.member_offset("outer", "a"), Some(0));
    assert_eq!(btf.member_offset("outer", "b"), Some(8), "through a const anonymous struct");
    assert_eq!(btf.member_offset("outer", "deep"), Some(4), "two anonymous levels");
    assert_eq!(btf.member_offset("outer", "bits"), None, "bitfield");
    assert_eq!(btf.member_offset("outer", "nope"), None);
    assert_eq!(btf.member_offset("nope", "a"), None);
    assert_eq!(btf.member_offset("int", "a"), None, "not a struct");
}

#[test]
fn tiny_enum_values() {
    let btf = tiny();
    assert_eq!(btf.enum_value("color", "RED"), Some(-1));
    assert_eq!(btf.enum_value("color", "BLUE"), Some(7));
    assert_eq!(btf.enum_value("color", "GREEN"), None);
    assert_eq!(btf.enum_value("outer", "a"), None);
}

#[test]
fn bad_input() {
    assert!(KernelBtf::from_bytes(b"not btf").is_err());
    let e = KernelBtf::from_file(Path::new("/nonexistent/vmlinux")).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/vmlinux") && !e.contains('\n'), "{e}");
}

fn host_btf() -> Option<KernelBtf> {
    host_has(Path::new(VMLINUX_BTF).exists(), &format!("{VMLINUX_BTF} is absent")).then(|| KernelBtf::load().unwrap())
}

#[test]
fn real_enum_values() {
    let Some(btf) = host_btf() else { return };
    let anon = btf.enum_value("node_stat_item", "NR_ANON_MAPPED").unwrap();
    let kmem = btf.enum_value("memcg_stat_item", "MEMCG_KMEM").unwrap();
    let memory = btf.enum_value("cgroup_subsys_id", "memory_cgrp_id").unwrap();
    // Plausible: small indexes; memcg_stat_item starts after the last node_stat_item.
    assert!((1..100).contains(&anon), "{anon}");
    assert!(kmem > anon && kmem < 200, "{kmem}");
    assert!((0..16).contains(&memory), "{memory}");
    assert_eq!(btf.enum_value("node_stat_item", "NO_SUCH_ITEM"), None);
}

#[test]
fn real_member_offsets() {
    let Some(btf) = host_btf() else { return };
    let off = |s, m| btf.member_offset(s, m).unwrap_or_else(|| panic!("{s}.{m} not found"));
    let cgroups = off("task_struct", "cgroups");
    assert!(cgroups > 1000 && cgroups % 8 == 0, "{cgroups}");
    // First members in every kernel since 3.x.
    assert_eq!(off("css_set", "subsys"), 0);
    assert_eq!(off("cgroup_subsys_state", "cgroup"), 0);
    let kn = off("cgroup", "kn");
    assert!(kn > 0 && kn % 8 == 0 && kn < 4096, "{kn}");
    let id = off("kernfs_node", "id");
    assert!(id > 0 && id % 8 == 0 && id < 512, "{id}");
    // Members inside anonymous unions/structs of struct page (3 levels for lru).
    assert_eq!((off("page", "lru"), off("page", "mapping")), (8, 24));
    assert_eq!(btf.member_offset("task_struct", "sched_reset_on_fork"), None, "a bitfield");
}

/// ```c
/// typedef void (*btf_trace_kfree)(void *, unsigned long, const void *, struct page *);
/// ```
#[test]
fn tracepoint_prototype_types_are_spelled_as_in_c() {
    const PTR: u32 = 2;
    const TYPEDEF: u32 = 8;
    const FUNC_PROTO: u32 = 13;
    let mut b = BtfBuilder::new();
    b.header("long unsigned int", INT, false, 0, 8); // [1]
    b.words(&[64]);
    b.header("", PTR, false, 0, 0); // [2] void *
    b.header("", CONST, false, 0, 0); // [3] const void
    b.header("", PTR, false, 0, 3); // [4] const void *
    b.composite(STRUCT, "page", 64, &[]); // [5]
    b.header("", PTR, false, 0, 5); // [6] struct page *
    b.header("", FUNC_PROTO, false, 4, 0); // [7]
    for ty in [2, 1, 4, 6] {
        b.words(&[0, ty]);
    }
    b.header("", PTR, false, 0, 7); // [8]
    b.header("btf_trace_kfree", TYPEDEF, false, 0, 8); // [9]
    let btf = KernelBtf::from_bytes(&b.build()).unwrap();
    assert_eq!(btf.tracepoint_args("kfree").unwrap(), ["long unsigned int", "const void *", "struct page *"]);
    assert_eq!(btf.tracepoint_args("kmalloc"), None);
}

#[test]
fn real_tracepoint_prototypes() {
    let Some(btf) = host_btf() else { return };
    let page_alloc = btf.tracepoint_args("mm_page_alloc").unwrap();
    assert_eq!(page_alloc[..3], ["struct page *", "unsigned int", "gfp_t"]);
    assert_eq!(btf.tracepoint_args("kfree").unwrap(), ["long unsigned int", "const void *"]);
}
