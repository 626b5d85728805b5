use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::*;

#[inline(never)]
#[no_mangle]
pub extern "C" fn leaktrace_symbolize_marker(x: u64) -> u64 {
    std::hint::black_box(x.wrapping_mul(31).rotate_left(7))
}

fn marker_addr() -> u64 {
    leaktrace_symbolize_marker as *const () as usize as u64
}

/// The kallsyms address of a global text symbol; None when addresses are hidden (not root).
fn kallsyms_addr(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[2] == name && f[1].eq_ignore_ascii_case("t"))
            .then(|| u64::from_str_radix(f[0], 16).ok())
            .flatten()
            .filter(|&a| a != 0)
    })
}

#[test]
fn kernel_symbol_from_kallsyms() {
    let Some(addr) = kallsyms_addr("vfs_read") else {
        eprintln!("kallsyms addresses hidden (not root): skipped");
        return;
    };
    let mut s = Symbolizer::new();
    let frames = s.kernel(&[addr + 1, addr]);
    assert_eq!(frames.len(), 2);
    for f in &frames {
        assert_eq!(f.symbol.as_deref(), Some("vfs_read"), "{f:?}");
        assert_eq!(f.module.as_deref(), Some("kernel"));
        assert!(f.kernel);
    }
    assert_eq!(frames[1].address, format!("{addr:#x}"));
    // Memoised: same answer again.
    assert_eq!(s.kernel(&[addr]), frames[1..]);
}

#[test]
fn own_function_symbolizes_with_source() {
    let mut s = Symbolizer::new();
    let frames = s.user(std::process::id(), &[marker_addr()]);
    let last = frames.last().unwrap();
    assert!(last.symbol.as_deref().unwrap_or("").contains("leaktrace_symbolize_marker"), "{frames:?}");
    assert!(!last.kernel);
    assert_eq!(last.address, format!("{:#x}", marker_addr()));
    let exe = std::env::current_exe().unwrap();
    assert_eq!(last.module.as_deref(), exe.file_name().and_then(|n| n.to_str()), "module is the file name");
    // Test builds carry DWARF.
    assert!(last.file.as_deref().is_some_and(|f| f.ends_with("tests.rs")), "{last:?}");
    assert!(last.line.is_some());
}

#[test]
fn unknown_address_keeps_the_address() {
    let mut s = Symbolizer::new();
    let frames = s.user(std::process::id(), &[0x10]);
    assert_eq!(frames, [Frame::unknown(0x10, false)]);
    assert_eq!(s.user(0, &[0x20]), [Frame::unknown(0x20, false)], "pid 0 is never this process");
    // A pid that does not exist: addresses only, no error.
    assert_eq!(s.user(u32::MAX - 1, &[0x30]), [Frame::unknown(0x30, false)]);
    s.remember_process(u32::MAX - 1);
}

/// Runs only inside the child spawned by `dead_process_still_symbolizes`.
#[test]
#[ignore]
fn sleeper_child() {
    if std::env::var_os("LEAKTRACE_SLEEPER").is_some() {
        std::thread::sleep(Duration::from_secs(30));
    }
}

/// Start and file offset of the mapping of `maps` that `pred(start, end, offset, path)` picks.
fn mapping_of(maps: &str, pred: impl Fn(u64, u64, u64, &str) -> bool) -> Option<(u64, u64, String)> {
    maps.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (start, end) = f.first()?.split_once('-')?;
        let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        let offset = u64::from_str_radix(f.get(2)?, 16).ok()?;
        let path = f.get(5)?.to_string();
        pred(start, end, offset, &path).then_some((start, offset, path))
    })
}

/// Starts a copy of this test binary that sleeps, from a file deleted right away (as a container's files are
/// out of reach of the host's paths), and returns it with the address of the marker function inside it.
fn spawn_sleeper_from_deleted_copy() -> (std::process::Child, u64) {
    let own = std::fs::read_to_string("/proc/self/maps").unwrap();
    let addr = marker_addr();
    let (start, offset, _) = mapping_of(&own, |s, e, _, _| (s..e).contains(&addr)).unwrap();
    let file_off = addr - start + offset;

    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("sleeper");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    // Another test thread forking while the copy was open for writing makes exec fail with ETXTBSY for a moment.
    let mut tries = 0;
    let child = loop {
        match Command::new(&exe)
            .args(["--exact", "stacks::symbolize::tests::sleeper_child", "--ignored", "--test-threads=1"])
            .env("LEAKTRACE_SLEEPER", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot start the sleeper: {e}"),
        }
    };
    std::fs::remove_file(&exe).unwrap();
    let exe = exe.display().to_string();
    // spawn() returns once the child's exec passed the point of no return, maybe before its ELF is mapped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap_or_default();
        let found = mapping_of(&maps, |s, e, o, p| p == exe && (o..o + (e - s)).contains(&file_off));
        if let Some((c_start, c_offset, _)) = found {
            return (child, c_start + file_off - c_offset);
        }
        assert!(Instant::now() < deadline, "the child never mapped {exe} at file offset {file_off:#x}:\n{maps}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dead_process_still_symbolizes() {
    let (mut child, addr) = spawn_sleeper_from_deleted_copy();
    let pid = child.id();
    let mut remembered = Symbolizer::new();
    remembered.remember_process(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child reaped");

    let frames = remembered.user(pid, &[addr]);
    let leaf = frames.last().unwrap();
    assert!(leaf.symbol.as_deref().unwrap_or("").contains("leaktrace_symbolize_marker"), "{frames:?}");
    assert_eq!(leaf.module.as_deref(), Some("sleeper"));
    // Without remembering, nothing is left to read.
    assert_eq!(Symbolizer::new().user(pid, &[addr]), [Frame::unknown(addr, false)]);
}

/// The descriptors of this process open on `path`.
fn open_on(path: &str) -> usize {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().flatten();
    fds.filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == path)).count()
}

#[test]
fn a_forgotten_process_unpins_its_objects() {
    let (mut child, addr) = spawn_sleeper_from_deleted_copy();
    let pid = child.id();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap().to_string_lossy().into_owned();
    let mut s = Symbolizer::new();
    s.remember_process(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(s.user(pid, &[addr]).last().unwrap().symbol.is_some());
    assert!(open_on(&exe) > 0, "the remembered object {exe} is not held open");
    // Each container's objects are files of their own: forgotten, they must not stay for the agent's lifetime.
    s.forget_process(pid);
    assert_eq!(open_on(&exe), 0, "{exe} is still held open after its process was forgotten");
    assert_eq!(s.user(pid, &[addr]), [Frame::unknown(addr, false)]);
}

#[test]
fn exec_mappings_parse() {
    let maps = "\
00400000-00452000 r-xp 00000000 08:02 173521                             /usr/bin/dbus-daemon
00651000-00652000 r--p 00051000 08:02 173521                             /usr/bin/dbus-daemon
7f2321e00000-7f2321e37000 r-xp 00000000 00:00 0
7ffcc8bf1000-7ffcc8bf3000 r-xp 00000000 00:00 0                          [vdso]
7f00aa000000-7f00aa100000 r-xp 00028000 fd:01 99 /opt/my app/libc.so.6 (deleted)
";
    let got: Vec<(String, u64, u64)> =
        parse_exec_mappings(maps).into_iter().map(|r| (r.name, r.start, r.end)).collect();
    assert_eq!(got, [("dbus-daemon".into(), 0x400000, 0x452000), ("libc.so.6".into(), 0x7f00aa000000, 0x7f00aa100000)]);
}

#[test]
fn kernel_modules_parse_and_lookup() {
    let text = "\
nf_tables 372736 0 - Live 0xffffffffc0a00000
ext4 1081344 2 - Live 0xffffffffc0200000 (E)
hidden 1000 0 - Live 0x0000000000000000
";
    let mods = parse_modules(text);
    assert_eq!(mods.len(), 2, "zeroed addresses (not root) are useless");
    assert_eq!(name_of(&mods, 0xffffffffc0200010), Some("ext4"));
    assert_eq!(name_of(&mods, 0xffffffffc0a00000 + 372736), None);
    assert_eq!(name_of(&mods, 0xffffffff81000000), None);
}

#[test]
fn inlined_functions_become_leaf_first_frames() {
    use blazesym::symbolize::{CodeInfo, InlinedFn};
    use std::borrow::Cow;
    let code = |line| CodeInfo {
        dir: None,
        file: Cow::Borrowed(std::ffi::OsStr::new("a.c")),
        line: Some(line),
        column: None,
        _non_exhaustive: (),
    };
    let inlined = |name: &'static str, line| InlinedFn {
        name: Cow::Borrowed(name),
        code_info: Some(code(line)),
        _non_exhaustive: (),
    };
    let sym = Sym {
        name: Cow::Borrowed("outer"),
        module: Some(Cow::Borrowed(std::ffi::OsStr::new("/usr/lib/libx.so"))),
        addr: 0x1000,
        offset: 4,
        size: None,
        code_info: Some(Box::new(code(10))),
        inlined: vec![inlined("middle", 20), inlined("inner", 30)].into_boxed_slice(),
        _non_exhaustive: (),
    };
    let frames = frames_of(&sym, 0x7000_1004, false);
    let got: Vec<(&str, Option<u32>)> = frames.iter().map(|f| (f.label(), f.line)).collect();
    assert_eq!(got, [("inner", Some(30)), ("middle", Some(20)), ("outer", Some(10))]);
    assert!(frames.iter().all(|f| f.address == "0x70001004" && !f.kernel));
}
