//! GNU build ids of the objects frames point into, so pprof and Parca/Pyroscope can match the profile with debug
//! info elsewhere. The kernel's and its modules' come from sysfs notes; a user object's from the file a process
//! of the site still maps (`/proc/<pid>/map_files`), so processes already gone leave it unknown.
use std::{collections::HashMap, path::Path};

use super::pprof::Module;

/// The ELF note type of a GNU build id, owner "GNU".
const NT_GNU_BUILD_ID: u32 = 3;

#[derive(Default)]
pub struct BuildIds {
    memo: HashMap<Module, Option<String>>,
}

impl BuildIds {
    /// The build id (lowercase hex) of `module`, looked up once.
    pub fn lookup(&mut self, module: &Module, pids: &[u32]) -> Option<String> {
        if let Some(known) = self.memo.get(module) {
            return known.clone();
        }
        let found = match (module.kernel, module.name.as_deref()) {
            (true, None | Some("kernel")) => notes_file("/sys/kernel/notes"),
            (true, Some(m)) => notes_file(&format!("/sys/module/{m}/notes/.note.gnu.build-id")),
            (false, Some(name)) => pids.iter().find_map(|&pid| user_object(pid, name)),
            (false, None) => None,
        };
        self.memo.insert(module.clone(), found.clone());
        found
    }
}

fn notes_file(path: &str) -> Option<String> {
    gnu_build_id(&std::fs::read(path).ok()?)
}

/// The build id of the object named `name` that `pid` maps, read through its `map_files` link.
fn user_object(pid: u32, name: &str) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/map_files")).ok()?.flatten().find_map(|entry| {
        let target = std::fs::read_link(entry.path()).ok()?;
        let file = target.file_name()?.to_string_lossy();
        if file.trim_end_matches(" (deleted)") != name {
            return None;
        }
        let id = blazesym::helper::read_elf_build_id(Path::new(&entry.path())).ok()??;
        Some(hex(&id))
    })
}

/// The GNU build id in a sequence of ELF notes (4-byte aligned `namesz descsz type name desc`, native endian).
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    let word = |b: &[u8], at: usize| b.get(at..at + 4).map(|w| u32::from_ne_bytes(w.try_into().expect("4 bytes")));
    let align = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes, 0)? as usize, word(notes, 4)? as usize, word(notes, 8)?);
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + align(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(hex(desc));
        }
        notes = notes.get(desc_at + align(descsz)..)?;
    }
    None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_ne_bytes());
        n.extend((desc.len() as u32).to_ne_bytes());
        n.extend(kind.to_ne_bytes());
        n.extend(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn finds_the_gnu_note_among_others() {
        let mut notes = note(b"Xen\0", 3, &[1, 2, 3]);
        notes.extend(note(b"GNU\0", 1, &[9; 16]));
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0xab, 0x01, 0xff]));
        assert_eq!(gnu_build_id(&notes).as_deref(), Some("ab01ff"));
        assert_eq!(gnu_build_id(&notes[..notes.len() - 2]), None, "truncated");
        assert_eq!(gnu_build_id(&note(b"GNU\0", 1, &[1])), None);
    }

    #[test]
    fn this_kernel_and_this_test_binary_have_build_ids() {
        let mut ids = BuildIds::default();
        let kernel = ids.lookup(&Module { kernel: true, name: Some("kernel".into()) }, &[]);
        // sysfs notes are world-readable; a kernel built without build ids is the only way to miss it.
        assert!(kernel.is_some_and(|id| id.len() >= 16), "no kernel build id");
        let me = std::env::current_exe().unwrap();
        let name = me.file_name().unwrap().to_string_lossy().into_owned();
        let own = ids.lookup(&Module { kernel: false, name: Some(name) }, &[std::process::id()]);
        assert!(own.is_some_and(|id| id.len() >= 16), "no build id for the test binary");
    }
}
