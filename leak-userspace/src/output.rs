//! The output directory and how files get into it: created 0700 (the outputs reveal code paths and addresses),
//! each file written to a temporary name and renamed, so an interrupted run never leaves a torn file, and never
//! through a symlink.
use std::{
    fs::{self, DirBuilder, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};

/// Creates (or checks) the output directory before anything is attached, so a bad path fails fast.
pub fn prepare(requested: Option<&Path>) -> Result<PathBuf> {
    let dir = match requested {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(default_name()),
    };
    match fs::symlink_metadata(&dir) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("output directory {} is a symlink; give a real directory", dir.display())
        }
        Ok(meta) if !meta.is_dir() => bail!("output path {} exists and is not a directory", dir.display()),
        Ok(_) => {}
        Err(_) => DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| {
            anyhow!("cannot create output directory {}: {e} (give --output a directory you can write)", dir.display())
        })?,
    }
    // Probe writability now rather than after a long trace.
    write_atomic(&dir, ".leaktrace-write-test", b"")
        .and_then(|_| fs::remove_file(dir.join(".leaktrace-write-test")).map_err(Into::into))
        .map_err(|e| {
            anyhow!(
                "output directory {} is not writable: {e:#} (give --output a directory you can write)",
                dir.display()
            )
        })?;
    Ok(dir)
}

fn default_name() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    format!("leaktrace-{}", now.format(&fmt).unwrap_or_else(|_| "run".into()))
}

/// Writes `name` in `dir` atomically with mode 0600.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = file.write_all(bytes).and_then(|_| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", dir.join(name).display()));
    }
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("cannot rename into {}", dir.join(name).display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creates_private_directory_and_files() {
        let base = tempfile::tempdir().unwrap();
        let dir = prepare(Some(&base.path().join("a/b"))).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        write_atomic(&dir, "report.json", b"{}").unwrap();
        write_atomic(&dir, "report.json", b"{\"x\":1}").unwrap();
        let f = dir.join("report.json");
        assert_eq!(fs::read(&f).unwrap(), b"{\"x\":1}");
        assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary files left");
    }

    #[test]
    fn refuses_symlinks_and_files() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(prepare(Some(&link)).unwrap_err().to_string().contains("symlink"));
        let file = base.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(prepare(Some(&file)).unwrap_err().to_string().contains("not a directory"));
    }

    #[test]
    fn default_name_has_timestamp() {
        assert!(default_name().starts_with("leaktrace-20"));
    }
}
