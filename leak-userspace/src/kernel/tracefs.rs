//! Tracepoint record layouts, read from tracefs `format` files: field offsets differ between kernels (e.g.
//! `oom:mark_victim` grew from one field to nine), so the eBPF programs are told where each field is.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// One field of a tracepoint record. Offsets are from the start of the record, which is what a tracepoint eBPF
/// program's context points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldFormat {
    pub name: String,
    /// The C type without the field name, e.g. `unsigned long`, `const void *`, `char[16]`, `char[]`.
    pub c_type: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
    /// `__data_loc`: the field holds `(length << 16) | offset` of the real data, elsewhere in the record.
    pub data_loc: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    pub system: String,
    pub name: String,
    pub id: u32,
    pub fields: Vec<FieldFormat>,
    /// The `print fmt:` line (empty when absent): it names flag values, e.g. the gfp bits.
    pub print_fmt: String,
}

impl EventFormat {
    pub fn field(&self, name: &str) -> Option<&FieldFormat> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Parses the text of `events/<system>/<name>/format`.
pub fn parse_format(system: &str, name: &str, text: &str) -> anyhow::Result<EventFormat> {
    let what = || format!("tracefs format of {system}:{name}");
    let mut id = None;
    let mut fields = Vec::new();
    let mut print_fmt = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("ID:") {
            id = Some(v.trim().parse().with_context(|| format!("{}: bad ID line {line:?}", what()))?);
        } else if line.starts_with("field:") {
            fields.push(parse_field(line).with_context(what)?);
        } else if let Some(fmt) = line.strip_prefix("print fmt:") {
            print_fmt = fmt.trim().to_string();
        }
    }
    let Some(id) = id else { bail!("{}: no ID line", what()) };
    if fields.is_empty() {
        bail!("{}: no fields", what());
    }
    Ok(EventFormat { system: system.to_string(), name: name.to_string(), id, fields, print_fmt })
}

/// `field:<decl>;\toffset:<n>;\tsize:<n>;\tsigned:<0|1>;` (`signed` is missing on very old kernels).
fn parse_field(line: &str) -> anyhow::Result<FieldFormat> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = part.split_once(':') else { continue };
        match key {
            "field" => decl = Some(value.trim()),
            "offset" => offset = value.trim().parse().ok(),
            "size" => size = value.trim().parse().ok(),
            "signed" => signed = value.trim() == "1",
            _ => {}
        }
    }
    let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else { bail!("malformed field line {line:?}") };
    let (data_loc, decl) = match decl.strip_prefix("__data_loc ") {
        Some(rest) => (true, rest.trim()),
        None => (false, decl),
    };
    // The name is the last word; an array suffix on it (`comm[16]`) belongs to the type.
    let Some((c_type, declarator)) = decl.rsplit_once(char::is_whitespace) else {
        bail!("field without a type in {line:?}")
    };
    let (name, array) = declarator.split_at(declarator.find('[').unwrap_or(declarator.len()));
    if name.is_empty() {
        bail!("field without a name in {line:?}");
    }
    Ok(FieldFormat {
        name: name.to_string(),
        c_type: format!("{}{array}", c_type.trim()),
        offset,
        size,
        signed,
        data_loc,
    })
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The tracefs directory (the one that has `events/`), mounting tracefs at /sys/kernel/tracing if needed.
pub fn tracefs_root() -> anyhow::Result<PathBuf> {
    let has_events = |p: &str| Path::new(p).join("events").is_dir();
    if let Some(root) = [TRACEFS, DEBUGFS_TRACING].into_iter().find(|p| has_events(p)) {
        return Ok(PathBuf::from(root));
    }
    mount_tracefs().map_err(|e| {
        anyhow::anyhow!(
            "tracefs is not mounted and could not be mounted: {e} (mount it: mount -t tracefs nodev {TRACEFS}; the \
             kernel needs CONFIG_FTRACE)"
        )
    })?;
    if !has_events(TRACEFS) {
        bail!("tracefs has no events at {TRACEFS}/events after mounting (the kernel needs CONFIG_TRACEPOINTS)");
    }
    Ok(PathBuf::from(TRACEFS))
}

fn mount_tracefs() -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("constant without NUL");
    let (source, target, fstype) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The format of `system:name`, or `Ok(None)` when this kernel has no such event.
pub fn read_format(root: &Path, system: &str, name: &str) -> anyhow::Result<Option<EventFormat>> {
    let path = root.join("events").join(system).join(name).join("format");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_format(system, name, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The value of a flag named in a print fmt's `__print_flags` table, e.g. `__GFP_ACCOUNT`. Kernels spell the
/// value as a shift (`(( gfp_t)((((1UL))) << (22)))`, 6.x) or a literal (`(( gfp_t)0x400000u)`, older ones).
pub fn print_fmt_flag(print_fmt: &str, flag: &str) -> Option<u64> {
    let end = print_fmt.find(&format!("\"{flag}\""))?;
    let entry = &print_fmt[print_fmt[..end].rfind('{')? + 1..end];
    let number = |s: &str| -> Option<u64> {
        let digits: String =
            s.chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_alphanumeric()).collect();
        let digits = digits.trim_end_matches(['u', 'U', 'l', 'L']);
        match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => digits.parse().ok(),
        }
    };
    match entry.rfind("<<") {
        Some(shift) => number(&entry[shift + 2..]).filter(|&n| n < 64).map(|n| 1u64 << n),
        None => number(&entry[entry.find("0x").or_else(|| entry.find("0X"))?..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::testing::host_has;

    const LRUVEC: &str = include_str!("testdata/memcg_mod_memcg_lruvec_state.format");
    const MARK_VICTIM: &str = include_str!("testdata/oom_mark_victim.format");
    const MARK_VICTIM_OLD: &str = include_str!("testdata/oom_mark_victim_old.format");
    const CACHE_ALLOC: &str = include_str!("testdata/kmem_kmem_cache_alloc.format");
    const PAGE_ALLOC: &str = include_str!("testdata/kmem_mm_page_alloc.format");

    fn f(name: &str, c_type: &str, offset: u32, size: u32, signed: bool, data_loc: bool) -> FieldFormat {
        FieldFormat { name: name.into(), c_type: c_type.into(), offset, size, signed, data_loc }
    }

    #[test]
    fn mod_memcg_lruvec_state() {
        let e = parse_format("memcg", "mod_memcg_lruvec_state", LRUVEC).unwrap();
        assert_eq!((e.system.as_str(), e.name.as_str(), e.id), ("memcg", "mod_memcg_lruvec_state", 762));
        assert_eq!(e.fields.len(), 7);
        assert_eq!(e.fields[0], f("common_type", "unsigned short", 0, 2, false, false));
        assert_eq!(e.field("id"), Some(&f("id", "u64", 8, 8, false, false)));
        assert_eq!(e.field("item"), Some(&f("item", "int", 16, 4, true, false)));
        assert_eq!(e.field("val"), Some(&f("val", "int", 20, 4, true, false)));
        assert_eq!(e.field("nope"), None);
    }

    #[test]
    fn mark_victim_long_layout() {
        let e = parse_format("oom", "mark_victim", MARK_VICTIM).unwrap();
        assert_eq!(e.field("pid"), Some(&f("pid", "int", 8, 4, true, false)));
        assert_eq!(e.field("comm"), Some(&f("comm", "char[]", 12, 4, false, true)));
        assert_eq!(e.field("anon_rss"), Some(&f("anon_rss", "unsigned long", 24, 8, false, false)));
        assert_eq!(e.field("uid"), Some(&f("uid", "uid_t", 48, 4, false, false)));
        assert_eq!(e.field("oom_score_adj"), Some(&f("oom_score_adj", "short", 64, 2, true, false)));
    }

    #[test]
    fn mark_victim_old_layout() {
        let e = parse_format("oom", "mark_victim", MARK_VICTIM_OLD).unwrap();
        assert_eq!(e.id, 421);
        assert_eq!(e.field("pid"), Some(&f("pid", "int", 8, 4, true, false)));
        assert!(e.field("comm").is_none() && e.field("anon_rss").is_none());
    }

    #[test]
    fn kmem_cache_alloc() {
        let e = parse_format("kmem", "kmem_cache_alloc", CACHE_ALLOC).unwrap();
        assert_eq!(e.field("ptr"), Some(&f("ptr", "const void *", 16, 8, false, false)));
        assert_eq!(e.field("name"), Some(&f("name", "char[]", 24, 4, false, true)));
        assert_eq!(e.field("bytes_alloc"), Some(&f("bytes_alloc", "size_t", 40, 8, false, false)));
        assert_eq!(e.field("accounted"), Some(&f("accounted", "bool", 60, 1, false, false)));
    }

    #[test]
    fn mm_page_alloc() {
        let e = parse_format("kmem", "mm_page_alloc", PAGE_ALLOC).unwrap();
        assert_eq!(e.field("pfn"), Some(&f("pfn", "unsigned long", 8, 8, false, false)));
        assert_eq!(e.field("order"), Some(&f("order", "unsigned int", 16, 4, false, false)));
        assert_eq!(e.field("migratetype"), Some(&f("migratetype", "int", 32, 4, true, false)));
    }

    #[test]
    fn fixed_arrays_and_missing_signed() {
        let text = "name: x\nID: 5\nformat:\n\tfield:char comm[16];\toffset:8;\tsize:16;\n";
        let e = parse_format("s", "x", text).unwrap();
        assert_eq!(e.fields, vec![f("comm", "char[16]", 8, 16, false, false)]);
    }

    #[test]
    fn malformed_formats_are_errors() {
        for (text, want) in [
            ("", "no ID line"),
            ("ID: 5\n", "no fields"),
            ("ID: x\n", "bad ID line"),
            ("ID: 5\n\tfield:int pid;\tsize:4;\n", "malformed field line"),
            ("ID: 5\n\tfield:pid;\toffset:8;\tsize:4;\n", "without a type"),
            ("ID: 5\n\tfield:int [4];\toffset:8;\tsize:4;\n", "without a name"),
        ] {
            let e = format!("{:#}", parse_format("s", "e", text).unwrap_err());
            assert!(e.contains(want) && e.contains("s:e"), "{text:?}: {e}");
        }
    }

    #[test]
    fn real_tracefs() {
        let root = tracefs_root();
        if !host_has(root.is_ok(), &format!("no tracefs: {:?}", root.as_ref().err())) {
            return;
        }
        let root = root.unwrap();
        for (system, name, field) in
            [("oom", "mark_victim", "pid"), ("kmem", "mm_page_alloc", "pfn"), ("kmem", "kmem_cache_alloc", "ptr")]
        {
            let e = read_format(&root, system, name).unwrap().unwrap_or_else(|| panic!("{system}:{name} missing"));
            assert!(e.id > 0 && e.field(field).is_some(), "{e:?}");
        }
        assert_eq!(read_format(&root, "nosuchsystem", "nosuchevent").unwrap(), None);
    }

    #[test]
    fn print_fmt_flags_in_both_spellings() {
        let new = r#""x", {( unsigned long)(( gfp_t)((((1UL))) << (21))), "__GFP_THISNODE"}, {( unsigned long)(( gfp_t)((((1UL))) << (22))), "__GFP_ACCOUNT"}, { 0, ((void *)0) }"#;
        assert_eq!(print_fmt_flag(new, "__GFP_ACCOUNT"), Some(1 << 22));
        assert_eq!(print_fmt_flag(new, "__GFP_THISNODE"), Some(1 << 21));
        let old =
            r#"{(unsigned long)0x200000u, "__GFP_THISNODE"}, {(unsigned long)((( gfp_t)0x400000u)), "__GFP_ACCOUNT"}"#;
        assert_eq!(print_fmt_flag(old, "__GFP_ACCOUNT"), Some(0x400000));
        assert_eq!(print_fmt_flag(old, "__GFP_NOPE"), None);
        assert_eq!(print_fmt_flag("garbage \"__GFP_ACCOUNT\"", "__GFP_ACCOUNT"), None);
    }

    #[test]
    fn print_fmt_of_this_kernel_names_gfp_account() {
        let Ok(root) = tracefs_root() else { return };
        if let Ok(Some(f)) = read_format(&root, "kmem", "mm_page_alloc") {
            assert!(print_fmt_flag(&f.print_fmt, "__GFP_ACCOUNT").is_some_and(|m| m.is_power_of_two()), "{f:?}");
        }
    }
}
