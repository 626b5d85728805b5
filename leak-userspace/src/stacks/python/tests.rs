use super::*;

/// Instruction ranges (start, end) and their line.
type Lines = Vec<(u64, u64, Option<u32>)>;

/// A function's line table and each instruction range's line, as that version's interpreter printed them
/// (`co_lines()`, `dis.findlinestarts` on 3.9) for the same source.
fn table(version: &str) -> (u32, Vec<u8>, Lines) {
    let text = std::fs::read_to_string(format!(
        "{}/src/stacks/python/testdata/lines-{version}.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(' ').collect();
    let first: u32 = head[1].parse().unwrap();
    let bytes = (0..head[2].len()).step_by(2).map(|i| u8::from_str_radix(&head[2][i..i + 2], 16).unwrap()).collect();
    let ranges = lines
        .map(|l| {
            let f: Vec<i64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (f[0] as u64, f[1] as u64, u32::try_from(f[2]).ok())
        })
        .collect();
    (first, bytes, ranges)
}

#[test]
fn every_instruction_gets_the_line_its_interpreter_gives() {
    for version in ["3.9", "3.10", "3.11", "3.12", "3.13"] {
        let (first, bytes, ranges) = table(version);
        assert!(ranges.len() > 5, "{version}");
        for (start, end, line) in ranges {
            // Instructions are two bytes from 3.6 on.
            for byte in (start..end).step_by(2) {
                let got = match version {
                    "3.9" => lnotab_line(&bytes, first, byte as i32),
                    "3.10" => linetable310_line(&bytes, first, byte as i32),
                    _ => locations_line(&bytes, first, byte / 2),
                };
                assert_eq!(got, line, "{version}: byte {byte}");
            }
        }
    }
}

#[test]
fn line_tables_cut_short_or_corrupt_give_no_line() {
    let (first, bytes, _) = table("3.12");
    assert_eq!(locations_line(&bytes[..3], first, 200), None);
    assert_eq!(locations_line(&[0x01, 0x02], first, 0), None, "no entry head");
    assert_eq!(locations_line(&[], first, 0), None);
    assert_eq!(linetable310_line(&[], first, 0), None);
    assert_eq!(lnotab_line(&[], 7, 10), Some(7), "no increments: the first line");
}

/// `_Py_DebugOffsets` as a running CPython 3.13.0 has it at the start of `_PyRuntime`: read, it gives the
/// offsets 3.13.0's headers give (`offsetof` with Py_BUILD_CORE).
#[test]
fn debug_offsets_of_3_13_give_its_layout() {
    let hex = std::fs::read_to_string(format!(
        "{}/src/stacks/python/testdata/debug-offsets-3.13.hex",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let hex = hex.trim();
    let raw: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let l = Layout::from_debug_offsets(&raw).expect("3.13's offsets");
    assert_eq!(l.version, (3, 13));
    let p = l.proc;
    assert_eq!(
        (p.interp_head, p.threads_head, p.tstate_next, p.tstate_thread_id, p.tstate_frame),
        (632, 7344, 8, 152, 72)
    );
    assert_eq!((p.frame_code, p.frame_previous, p.frame_instr, p.frame_owner), (0, 8, 56, 70));
    assert_eq!((p.cframe_frame, p.frame_is_entry), (OFFSET_NONE, OFFSET_NONE));
    assert_eq!(
        (l.code_filename, l.code_name, l.code_qualname, l.code_lines, l.code_firstlineno, l.code_adaptive),
        (112, 120, Some(128), 136, 68, 200)
    );
    assert_eq!((l.ascii_size, l.compact_size), (40, 56));

    let mut other = raw.clone();
    other[8 + 2] = 14;
    assert_eq!(Layout::from_debug_offsets(&other), None, "3.14 lays the struct out otherwise");
    other = raw.clone();
    other[0] = b'y';
    assert_eq!(Layout::from_debug_offsets(&other), None, "no cookie, no offsets");
    assert_eq!(Layout::from_debug_offsets(&raw[..100]), None, "cut short");
}

#[test]
fn versions_come_from_the_interpreters_file_name() {
    assert_eq!(version_of("/usr/bin/python3.11"), Some((3, 11)));
    assert_eq!(version_of("/root/.pyenv/versions/3.9.18/lib/libpython3.9.so.1.0"), Some((3, 9)));
    assert_eq!(version_of("/usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0"), Some((3, 12)));
    assert_eq!(version_of("/usr/bin/python2.7"), None);
    assert_eq!(version_of("/usr/bin/python3.8"), None, "before 3.9: no table");
    assert_eq!(version_of("/usr/bin/python3"), None, "no minor version");
    for v in [(3, 9), (3, 10), (3, 11), (3, 12)] {
        let l = Layout::known(v).unwrap();
        assert_eq!(l.every_frame_entry, v < (3, 11));
        assert_eq!(l.code_qualname.is_some(), v >= (3, 11));
    }
    assert_eq!(Layout::known((3, 13)), None, "3.13 has its debug offsets");
}

/// A compact ASCII `str` object, as CPython lays it out.
fn py_str(l: &Layout, text: &str) -> Vec<u8> {
    let mut o = vec![0u8; l.ascii_size as usize + text.len() + 1];
    o[UNICODE_LENGTH as usize..][..8].copy_from_slice(&(text.len() as u64).to_le_bytes());
    // kind 1, compact, ascii.
    o[UNICODE_STATE as usize..][..4].copy_from_slice(&(1u32 << 2 | 1 << 5 | 1 << 6).to_le_bytes());
    o[l.ascii_size as usize..][..text.len()].copy_from_slice(text.as_bytes());
    o
}

#[test]
fn a_code_object_made_where_a_freed_one_was_is_read_again() {
    let layout = Layout::known((3, 11)).unwrap();
    let code_type = 0x5eed_u64;
    let (module, remember, file) = (py_str(&layout, "<module>"), py_str(&layout, "remember"), py_str(&layout, "a.py"));
    let table = vec![0u8; 40];
    let mut code = vec![0u64; 32];
    let set = |code: &mut Vec<u64>, at: u64, v: u64| code[at as usize / 8] = v;
    set(&mut code, OB_TYPE, code_type);
    set(&mut code, layout.code_filename, file.as_ptr() as u64);
    set(&mut code, layout.code_lines, table.as_ptr() as u64);
    set(&mut code, layout.code_firstlineno, 1);
    set(&mut code, layout.code_qualname.unwrap(), module.as_ptr() as u64);
    let interpreter =
        Interpreter { layout: layout.clone(), runtime: 0, code_type, mem: File::open("/proc/self/mem").unwrap() };
    let addr = code.as_ptr() as u64;
    let mut codes = HashMap::new();
    let read = |codes: &mut HashMap<u64, Code>| code_at(codes, &interpreter, addr).map(|c| c.name.clone());
    assert_eq!(read(&mut codes).as_deref(), Some("<module>"));
    // The module's body ran and was freed; a function's code object now sits at its address.
    set(&mut code, layout.code_qualname.unwrap(), remember.as_ptr() as u64);
    set(&mut code, layout.code_firstlineno, 9);
    assert_eq!(read(&mut codes).as_deref(), Some("remember"));
    assert_eq!(codes[&addr].header.firstlineno, 9);
    // Then something else that is no code object.
    set(&mut code, OB_TYPE, 0);
    assert!(read(&mut codes).is_none());
    std::hint::black_box((&module, &remember, &file, &table, &code));
}
