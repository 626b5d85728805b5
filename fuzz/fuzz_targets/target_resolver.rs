//! The `--cgroup` argument and the mount table it is resolved against: resolving never panics, and whatever it
//! accepts is a cgroup directory inside the memory hierarchy (no path traversal out of it). The hierarchy is a
//! fake one in a temporary directory, so fuzzing needs no cgroups and no root.
#![no_main]
use std::{path::Path, sync::OnceLock};

use leaktrace::cgroup::{resolve, CgroupLayout, CgroupVersion};
use libfuzzer_sys::fuzz_target;

struct Tree {
    _dir: tempfile::TempDir,
    layout: CgroupLayout,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let memory = dir.path().join("memory");
        for cg in ["", "docker/abc123", "kubepods.slice/pod1", "123"] {
            std::fs::create_dir_all(memory.join(cg)).expect("mkdir");
            std::fs::write(memory.join(cg).join("cgroup.procs"), "").expect("write");
        }
        std::fs::create_dir_all(dir.path().join("unified/docker")).expect("mkdir");
        std::fs::write(dir.path().join("secret"), "").expect("write");
        let unified = Some(dir.path().join("unified"));
        let memory = memory.canonicalize().expect("canonical");
        let layout = CgroupLayout { memory_root: memory, version: CgroupVersion::V1, unified };
        Tree { _dir: dir, layout }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let tree = tree();
    if let Ok(target) = resolve(&text, &tree.layout) {
        assert!(target.path.canonicalize().is_ok_and(|p| p.starts_with(&tree.layout.memory_root)), "{target:?}");
        assert!(Path::new(&target.path).join("cgroup.procs").is_file());
    }
    let _ = CgroupLayout::from_mountinfo(&text, |_| true);
});
