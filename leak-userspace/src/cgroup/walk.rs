//! Bounded walks over a cgroup subtree. cgroupfs cannot contain loops, but a bad target (e.g. a bind mount of
//! something else) could be huge, so depth and directory count are capped.
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::CgroupVersion;

/// Deeper than any real cgroup tree (the kernel's default `cgroup.max.depth` is unlimited, but runtimes nest < 10).
const MAX_DEPTH: usize = 64;
/// Enough for a host with tens of thousands of containers.
const MAX_DIRS: usize = 100_000;

/// Calls `visit(dir, inode)` for `dir` and every cgroup directory below it, parents before children, until `visit`
/// breaks. Symlinks are not followed; unreadable directories are skipped (cgroups come and go while we walk).
pub(crate) fn walk<B>(dir: &Path, mut visit: impl FnMut(&Path, u64) -> ControlFlow<B>) -> Option<B> {
    let mut stack: Vec<(PathBuf, usize)> = vec![(dir.to_path_buf(), 0)];
    let mut seen = 0;
    while let Some((path, depth)) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() {
            continue;
        }
        seen += 1;
        if let ControlFlow::Break(b) = visit(&path, meta.ino()) {
            return Some(b);
        }
        if depth >= MAX_DEPTH || seen >= MAX_DIRS {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        // file_type() comes from the directory entry, so files (the bulk of a cgroup dir) cost no stat.
        let children = entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
        stack.extend(children.map(|e| (e.path(), depth + 1)));
    }
    None
}

/// A cgroup subtree as one walk found it. An agent reads every container's at every interval: one walk, not one
/// per figure, keeps that to a directory listing and two small reads per cgroup.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Subtree {
    /// The inode number of the directory and of every descendant cgroup directory: the ids the memcg tracepoints
    /// and `bpf_get_current_cgroup_id` report for that subtree, sorted.
    pub ids: Vec<u64>,
    /// Processes (tgids), sorted and without duplicates.
    pub pids: Vec<u32>,
    /// Tasks (threads): the count a thread leak makes grow.
    pub tasks: u64,
}

/// `dir` and all its descendants (see `Subtree`).
pub fn subtree(dir: &Path, version: CgroupVersion) -> Subtree {
    let threads = match version {
        CgroupVersion::V1 => "tasks",
        CgroupVersion::V2 => "cgroup.threads",
    };
    let (mut ids, mut pids, mut tids) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
    walk::<()>(dir, |path, ino| {
        ids.push(ino);
        pids.extend(listed_in(&path.join("cgroup.procs")));
        tids.extend(listed_in(&path.join(threads)));
        ControlFlow::Continue(())
    });
    ids.sort_unstable();
    Subtree { ids, pids: pids.into_iter().collect(), tasks: tids.len() as u64 }
}

/// Processes (tgids) of `dir` and all its descendants, sorted and without duplicates.
pub fn member_pids(dir: &Path) -> Vec<u32> {
    let mut ids = BTreeSet::new();
    walk::<()>(dir, |path, _| {
        ids.extend(listed_in(&path.join("cgroup.procs")));
        ControlFlow::Continue(())
    });
    ids.into_iter().collect()
}

/// The ids a cgroup file lists one per line (none when it cannot be read: cgroups come and go).
fn listed_in(file: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().filter_map(|l| l.trim().parse::<u32>().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn ids_and_pids_cover_the_subtree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("c")).unwrap();
        fs::write(root.join("cgroup.procs"), "1\n").unwrap();
        fs::write(root.join("a/cgroup.procs"), "7\n3\n").unwrap();
        fs::write(root.join("a/b/cgroup.procs"), "3\nnot-a-pid\n\n").unwrap();
        fs::write(root.join("a/b/tasks"), "3\n4\n5\n").unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("c/loop")).unwrap();

        let tree = subtree(root, CgroupVersion::V1);
        let mut want: Vec<u64> =
            ["", "a", "a/b", "c"].iter().map(|p| fs::metadata(root.join(p)).unwrap().ino()).collect();
        want.sort_unstable();
        assert_eq!(tree.ids, want, "symlinks must not be followed");

        assert_eq!(member_pids(root), vec![1, 3, 7]);
        assert_eq!((tree.pids, tree.tasks), (vec![1, 3, 7], 3));
        assert_eq!(subtree(root, CgroupVersion::V2).tasks, 0, "v2 lists threads in cgroup.threads");
    }

    #[test]
    fn missing_dir_is_empty() {
        assert_eq!(subtree(Path::new("/nonexistent/leaktrace"), CgroupVersion::V2), Subtree::default());
        assert!(member_pids(Path::new("/nonexistent/leaktrace")).is_empty());
    }

    #[test]
    fn walk_stops_at_break_and_at_max_depth() {
        let t = tempfile::tempdir().unwrap();
        let deep: PathBuf = (0..MAX_DEPTH + 5).map(|i| i.to_string()).collect();
        fs::create_dir_all(t.path().join(&deep)).unwrap();
        assert_eq!(subtree(t.path(), CgroupVersion::V2).ids.len(), MAX_DEPTH + 1);
        let found = walk(t.path(), |p, _| {
            if p.ends_with("2") {
                ControlFlow::Break(p.to_path_buf())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(found, Some(t.path().join("0/1/2")));
    }
}
