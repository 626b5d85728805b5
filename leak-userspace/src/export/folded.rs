//! Folded stacks (`root;...;leaf weight`), the input of flamegraph.pl, inferno and speedscope. Weight is the
//! outstanding bytes; the root frame is the kind of memory (`[anon]`, `[slab:kmalloc-256]`, ...) so one graph
//! splits by kind first.
use std::{collections::BTreeMap, path::Path};

use anyhow::Result;

use crate::report::{Frame, Site};

pub fn folded(sites: &[Site]) -> String {
    // Sites that differ only in what folding drops (pids, source lines) become one line.
    let mut lines: BTreeMap<String, i64> = BTreeMap::new();
    for site in sites.iter().filter(|s| s.outstanding_bytes > 0) {
        let root = match &site.slab_cache {
            Some(cache) => format!("[{}:{}]", site.kind, cache),
            None => format!("[{}]", site.kind),
        };
        let stack: Vec<String> =
            std::iter::once(clean(&root)).chain(site.frames.iter().rev().map(Frame::label).map(clean)).collect();
        let weight = lines.entry(stack.join(";")).or_insert(0);
        *weight = weight.saturating_add(site.outstanding_bytes);
    }
    lines.into_iter().map(|(stack, weight)| format!("{stack} {weight}\n")).collect()
}

/// Writes `stacks.folded` into `dir` atomically, mode 0600.
pub fn write_folded(dir: &Path, sites: &[Site]) -> Result<()> {
    crate::output::write_atomic(dir, "stacks.folded", folded(sites).as_bytes())
}

/// `;` separates frames and whitespace separates the weight: neither may appear inside a frame (C++ and Rust
/// symbols carry both).
fn clean(frame: &str) -> String {
    frame
        .chars()
        .map(|c| {
            if c == ';' {
                ':'
            } else if c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::report::tests::{frame, site};

    #[test]
    fn root_first_kind_on_top_weights_merged() {
        let frames =
            vec![frame(Some("__alloc_pages"), 1, true), frame(None, 0x5000, false), frame(Some("main"), 2, false)];
        let mut other_pid = site("anon", 100, frames.clone());
        other_pid.pids = vec![99];
        let sites = [site("anon", 4096, frames), other_pid, site("slab", 256, vec![frame(Some("kmalloc"), 3, true)])];
        assert_eq!(folded(&sites), "[anon];main;0x5000;__alloc_pages 4196\n[slab:kmalloc-256];kmalloc 256\n");
    }

    #[test]
    fn separators_and_spaces_kept_out_of_frames() {
        let sites = [site(
            "page",
            10,
            vec![frame(Some("std::vector<int>::push_back(int const&)"), 1, false), frame(Some("a;b c\td"), 2, false)],
        )];
        let text = folded(&sites);
        assert_eq!(text, "[page];a:b_c_d;std::vector<int>::push_back(int_const&) 10\n");
        let line = text.trim_end();
        let (stack, weight) = line.rsplit_once(' ').unwrap();
        assert!(!stack.contains(' '));
        assert_eq!(weight, "10");
    }

    #[test]
    fn non_positive_weights_skipped() {
        assert_eq!(folded(&[site("anon", 0, vec![]), site("anon", -5, vec![])]), "");
        assert_eq!(folded(&[site("other", 7, vec![])]), "[other] 7\n");
    }

    #[test]
    fn written_private() {
        let dir = tempfile::tempdir().unwrap();
        write_folded(dir.path(), &[site("anon", 7, vec![])]).unwrap();
        let path = dir.path().join("stacks.folded");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[anon] 7\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
