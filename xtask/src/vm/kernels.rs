//! The kernels of the VM matrix and fetching them: the `linux-image-cloud-amd64` of a Debian suite, downloaded once
//! with apt (a private apt state per suite, so the host's sources are untouched) and cached in
//! ~/.cache/leaktrace/vm/<label>/vmlinuz; only the vmlinuz is kept.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result};

use crate::{check, step};

/// A Debian kernel: the `linux-image-cloud-amd64` of these apt sources (the cloud flavour boots in ~3 s under TCG).
pub struct Kernel {
    pub label: &'static str,
    sources: &'static [&'static str],
    /// apt's target release, for kernels from backports.
    release: Option<&'static str>,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        label: "bullseye",
        sources: &[
            "deb http://deb.debian.org/debian bullseye main",
            "deb http://deb.debian.org/debian-security bullseye-security main",
        ],
        release: None,
    },
    Kernel {
        label: "bookworm",
        sources: &[
            "deb http://deb.debian.org/debian bookworm main",
            "deb http://deb.debian.org/debian-security bookworm-security main",
        ],
        release: None,
    },
    Kernel {
        label: "trixie",
        sources: &[
            "deb http://deb.debian.org/debian trixie main",
            "deb http://deb.debian.org/debian-security trixie-security main",
        ],
        release: None,
    },
    Kernel {
        label: "trixie-backports",
        sources: &[
            "deb http://deb.debian.org/debian trixie main",
            "deb http://deb.debian.org/debian trixie-backports main",
        ],
        release: Some("trixie-backports"),
    },
];

const META_PACKAGE: &str = "linux-image-cloud-amd64";

fn cache_dir() -> PathBuf {
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache/leaktrace/vm")
}

/// The kernel image of `kernel`, downloaded on first use.
pub fn fetch_kernel(kernel: &Kernel) -> Result<PathBuf> {
    let dir = cache_dir().join(kernel.label);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    step(&format!("fetching the {} kernel ({META_PACKAGE}) with apt", kernel.label));
    let apt_dir = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "debs"] {
        fs::create_dir_all(apt_dir.join(sub)).with_context(|| format!("cannot create {}", apt_dir.display()))?;
    }
    let sources = apt_dir.join("sources.list");
    fs::write(&sources, kernel.sources.join("\n") + "\n")?;
    let apt = |tool: &str| {
        let mut cmd = Command::new(tool);
        cmd.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .args(["-o", "Dir::Etc::SourceParts=/nonexistent", "-o", "APT::Sandbox::User=root"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", apt_dir.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt_dir.join("cache").display()));
        if let Some(release) = kernel.release {
            cmd.args(["-t", release]);
        }
        cmd
    };
    check(apt("apt-get").args(["-q", "update"]).stdout(Stdio::null()))?;
    let depends = apt("apt-cache").args(["depends", META_PACKAGE]).output().context("cannot run apt-cache")?;
    let package = image_package(&String::from_utf8_lossy(&depends.stdout))
        .with_context(|| format!("{META_PACKAGE} of {} depends on no linux-image package", kernel.label))?;
    // Newer kernels (7.x) keep the image in a `linux-binary-*` package that the image package depends on.
    let image = match extract_image(&apt("apt-get"), &package, &apt_dir)? {
        Ok(image) => image,
        Err(depends) => {
            let binary = binary_package(&depends)
                .with_context(|| format!("{package} holds no kernel image and depends on no linux-binary-*"))?;
            extract_image(&apt("apt-get"), &binary, &apt_dir)?
                .map_err(|_| anyhow::anyhow!("neither {package} nor {binary} holds a kernel image"))?
        }
    };
    fs::copy(&image, dir.join("vmlinuz.tmp"))?;
    fs::rename(dir.join("vmlinuz.tmp"), &vmlinuz)?;
    fs::remove_dir_all(&apt_dir)?;
    Ok(vmlinuz)
}

/// Downloads `package` and extracts it; the path of its kernel image, or else its Depends field.
fn extract_image(apt_get: &Command, package: &str, apt_dir: &Path) -> Result<Result<PathBuf, String>> {
    let debs = apt_dir.join("debs").join(package);
    fs::create_dir_all(&debs)?;
    let mut download = Command::new(apt_get.get_program());
    download.args(apt_get.get_args()).args(["-q", "download", package]).current_dir(&debs).stdout(Stdio::null());
    check(&mut download)?;
    let deb = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let extracted = apt_dir.join("x").join(package);
    fs::create_dir_all(&extracted)?;
    check(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    if let Some(image) = find_image(&extracted) {
        return Ok(Ok(image));
    }
    let depends = Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends").output()?;
    Ok(Err(String::from_utf8_lossy(&depends.stdout).into_owned()))
}

/// boot/vmlinuz-<release> (up to 6.x packages) or usr/lib/modules/<release>/vmlinuz (7.x).
fn find_image(extracted: &Path) -> Option<PathBuf> {
    let entries = |dir: PathBuf| fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
    entries(extracted.join("boot"))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .or_else(|| entries(extracted.join("usr/lib/modules")).map(|d| d.join("vmlinuz")).find(|p| p.is_file()))
}

/// The `linux-binary-*` package in a Depends field.
fn binary_package(depends: &str) -> Option<String> {
    depends
        .split(',')
        .filter_map(|d| d.split_whitespace().next())
        .find(|p| p.starts_with("linux-binary-"))
        .map(String::from)
}

/// The versioned image package in `apt-cache depends` output ("  Depends: linux-image-6.1.0-50-cloud-amd64").
fn image_package(depends: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.contains('<'))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_versioned_image_package() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-50-cloud-amd64\n  Depends: <foo>\n";
        assert_eq!(image_package(out).as_deref(), Some("linux-image-6.1.0-50-cloud-amd64"));
        assert_eq!(image_package("linux-image-cloud-amd64\n"), None);
        let depends = "dracut | initramfs-tools (>= 0.120), linux-base-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), \
                       linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)";
        assert_eq!(binary_package(depends).as_deref(), Some("linux-binary-7.3.4+deb13-cloud-amd64"));
        assert_eq!(binary_package("linux-base"), None);
    }

    #[test]
    fn finds_the_image_in_either_package_layout() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(find_image(tmp.path()), None);
        let modules = tmp.path().join("usr/lib/modules/7.3.4+deb13-cloud-amd64");
        fs::create_dir_all(&modules).unwrap();
        fs::write(modules.join("vmlinuz"), b"").unwrap();
        assert_eq!(find_image(tmp.path()), Some(modules.join("vmlinuz")));
        fs::create_dir_all(tmp.path().join("boot")).unwrap();
        fs::write(tmp.path().join("boot/vmlinuz-6.1.0-50-cloud-amd64"), b"").unwrap();
        assert_eq!(find_image(tmp.path()), Some(tmp.path().join("boot/vmlinuz-6.1.0-50-cloud-amd64")));
    }
}
