//! `--output-dir`: for nodes without scrapers, each container's report.json and profile.pb.gz every window, in
//! `DIR/<container>/<time>/`, the newest `--keep` of them kept.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{export, output, report::Report};

pub struct Rotation {
    dir: PathBuf,
    keep: usize,
}

impl Rotation {
    /// Checks `dir` now, before anything is attached.
    pub fn new(dir: &Path, keep: usize) -> Result<Self> {
        Ok(Rotation { dir: output::prepare(Some(dir))?, keep: keep.max(1) })
    }

    /// Writes `report` of container `key` into a directory of its own named for `stamp`, and removes the oldest
    /// beyond `keep`. Returns the directory written.
    pub fn write(&self, key: &str, stamp: &str, report: &Report) -> Result<PathBuf> {
        let container = self.dir.join(relative(key));
        let dir = output::prepare(Some(&container.join(stamp)))?;
        crate::report::write_json(&dir, report)
            .and_then(|_| export::pprof::write_pprof(&dir, report))
            .with_context(|| format!("cannot write into {}", dir.display()))?;
        let mut written: Vec<PathBuf> =
            fs::read_dir(&container)?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        // The stamps sort as times do.
        written.sort();
        let over = written.len().saturating_sub(self.keep);
        for old in &written[..over] {
            fs::remove_dir_all(old).with_context(|| format!("cannot remove {}", old.display()))?;
        }
        Ok(dir)
    }
}

/// A container's key as a path below the output directory: `namespace/pod/name` nests, and nothing in a name
/// can climb out (`..`, a leading `/`) or name a hidden file.
fn relative(key: &str) -> PathBuf {
    key.split('/')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let clean: String =
                part.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.:".contains(c) { c } else { '_' }).collect();
            if clean.starts_with('.') {
                format!("_{clean}")
            } else {
                clean
            }
        })
        .collect()
}

/// A UTC time as a directory name that sorts as time does: `20261207T031502Z`.
pub fn stamp(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    t.format(&f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_below_the_output_directory() {
        assert_eq!(relative("prod/api-7f9c/api"), PathBuf::from("prod/api-7f9c/api"));
        assert_eq!(relative("../../etc"), PathBuf::from("_../_../etc"));
        assert_eq!(relative("/web 1"), PathBuf::from("web_1"));
        assert_eq!(relative(".hidden"), PathBuf::from("_.hidden"));
    }

    #[test]
    fn the_newest_reports_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation::new(dir.path(), 2).unwrap();
        let report = crate::report::tests::sample_report();
        for s in ["20261207T030000Z", "20261207T030500Z", "20261207T031000Z"] {
            let written = rotation.write("shop/web-1/api", s, &report).unwrap();
            assert!(written.join("report.json").is_file() && written.join("profile.pb.gz").is_file());
        }
        let mut left: Vec<String> = fs::read_dir(dir.path().join("shop/web-1/api"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["20261207T030500Z", "20261207T031000Z"]);
        let t = time::macros::datetime!(2026-12-07 03:15:02 UTC);
        assert_eq!(stamp(t), "20261207T031502Z");
    }
}
