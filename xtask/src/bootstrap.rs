//! Installs what building and running leaktrace needs, once per machine. Each step checks first and prints one
//! line, so running it on every xtask command costs a few milliseconds.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{check, step};

/// Debian packages: the eBPF compiler (`/usr/bin/cargo` and `/usr/bin/rustc` 1.96 with a prebuilt `core` for
/// bpfel, which the rustup toolchain lacks), C and C++ compilers for the test workloads, bpftool (the tests check that
/// nothing stays attached), the real consumers the export tests check the outputs with (`go tool pprof` from
/// golang-go for profile.pb.gz, headless Chromium for report.html), Docker with busybox for the container tests
/// (their image is a busybox rootfs; docker.io brings containerd and ctr, which the agent's pod test runs), what `vm-test` boots its guests with (QEMU, cpio), and
/// bpftrace, the baseline `bench` compares with; node, python3 and a JRE (bookworm's OpenJDK 17, which also compiles
/// a single-file program) for the language runtime tests, with golang-go; jemalloc for the `--heap` test of a
/// program linked with it, Redis (which Debian links with jemalloc) for the `--heap` bench row, and Prometheus to
/// scrape `--listen` (the test runs its own on a free port, whether or not the package's service runs; its promtool
/// checks deploy/alerts.yaml).
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "gcc",
    "g++",
    "libc6-dev",
    "bpftool",
    "golang-go",
    "chromium",
    "docker.io",
    "busybox-static",
    "qemu-system-x86",
    "cpio",
    "bpftrace",
    "nodejs",
    "python3",
    "openjdk-17-jre-headless",
    "libjemalloc-dev",
    "redis-server",
    "redis-tools",
    "prometheus",
];

const BPF_LINKER_VERSION: &str = "0.10.3";
/// Runs the fuzz targets in fuzz/ (with the stable toolchain and RUSTC_BOOTSTRAP, see fuzz.rs).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The LLVM of Debian's rustc-web: bpf-linker loads it at run time to link that compiler's bitcode.
const LLVM_MAJOR: u32 = 22;
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run() -> Result<()> {
    apt_packages()?;
    bpf_linker()?;
    cargo_fuzz()?;
    tracefs()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn apt_packages() -> Result<()> {
    let mut missing = Vec::new();
    for pkg in PACKAGES {
        if !installed(pkg)? {
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        step(&format!("Debian packages present: {}", PACKAGES.join(" ")));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {0}; run this as root, or install them: sudo apt-get install {0}",
            missing.join(" ")
        );
    }
    step("apt-get update");
    check(Command::new("apt-get").arg("update"))?;
    step(&format!("installing Debian packages: {}", missing.join(" ")));
    check(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]).output().context(
        "cannot run dpkg-query: bootstrap needs a Debian-based system (elsewhere, see README.md for what to install)",
    )?;
    // "install ok installed" (or "hold ok installed"); removed packages read "... config-files" / "not-installed".
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).ends_with(" installed"))
}

/// Where bpf-linker and cargo-fuzz go; leak-userspace/build.rs looks in the same place.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = env::var_os("LEAKTRACE_TOOLS") {
        return dir.into();
    }
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache/leaktrace/tools")
}

fn bpf_linker() -> Result<()> {
    let tools = tools_dir();
    if tool_installed(&tools, "bpf-linker", BPF_LINKER_VERSION) {
        step(&format!("bpf-linker {BPF_LINKER_VERSION} present in {}", tools.display()));
    } else {
        step(&format!("installing bpf-linker {BPF_LINKER_VERSION} into {} (about 2 minutes)", tools.display()));
        fs::create_dir_all(&tools).with_context(|| format!("cannot create {}", tools.display()))?;
        let mut cmd = Command::new("/usr/bin/cargo");
        cmd.args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked", "--root"])
            .arg(&tools)
            // Outside the repository, so its .cargo/config.toml (rustflags for leaktrace) does not apply.
            .current_dir(&tools)
            .env("PATH", format!("/usr/bin:{}", env::var("PATH").unwrap_or_default()));
        // `cargo xtask` runs under rustup's cargo, whose toolchain settings would otherwise leak into Debian's.
        for var in [
            "RUSTC",
            "RUSTUP_TOOLCHAIN",
            "RUSTC_WRAPPER",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO",
        ] {
            cmd.env_remove(var);
        }
        check(&mut cmd)?;
    }
    link_llvm(&tools.join("lib"))
}

/// Whether `cargo install` put this version of `name` into `tools`.
fn tool_installed(tools: &Path, name: &str, version: &str) -> bool {
    let recorded = fs::read_to_string(tools.join(".crates.toml")).unwrap_or_default();
    tools.join("bin").join(name).is_file() && recorded.contains(&format!("\"{name} {version} "))
}

/// cargo-fuzz, built by the userspace toolchain (the one running xtask).
fn cargo_fuzz() -> Result<()> {
    let tools = tools_dir();
    if tool_installed(&tools, "cargo-fuzz", CARGO_FUZZ_VERSION) {
        step(&format!("cargo-fuzz {CARGO_FUZZ_VERSION} present in {}", tools.display()));
        return Ok(());
    }
    step(&format!("installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (about a minute)", tools.display()));
    fs::create_dir_all(&tools).with_context(|| format!("cannot create {}", tools.display()))?;
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["install", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"), "--locked", "--root"])
        .arg(&tools)
        // Outside the repository, so its .cargo/config.toml does not apply.
        .current_dir(&tools)
        .env_remove("CARGO_TARGET_DIR");
    check(&mut cmd)
}

/// bpf-linker 0.10 dlopen()s the first `libLLVM*` in `<dir>/../lib` for each `<dir>` on PATH, so its own lib
/// directory must hold exactly the right one (the system lib directory also holds older LLVMs).
fn link_llvm(lib: &Path) -> Result<()> {
    let system = Path::new("/usr/lib").join(format!("{}-linux-gnu", env::consts::ARCH));
    let llvm = find_llvm(&system)?;
    let name = llvm.file_name().expect("find_llvm returns file paths");
    let link = lib.join(name);
    fs::create_dir_all(lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let mut linked = false;
    for entry in fs::read_dir(lib)?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("libLLVM") {
            continue;
        }
        if entry.path() == link && fs::read_link(&link).is_ok_and(|target| target == llvm) {
            linked = true;
        } else {
            fs::remove_file(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    if !linked {
        std::os::unix::fs::symlink(&llvm, &link).with_context(|| format!("cannot create {}", link.display()))?;
    }
    step(&format!("{} -> {}", link.display(), llvm.display()));
    Ok(())
}

fn find_llvm(dir: &Path) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{LLVM_MAJOR}");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.into_iter().next().with_context(|| {
        format!("no {prefix}* in {}: it comes with rustc-web; is that package installed?", dir.display())
    })
}

fn tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() || tracefs_in_mounts() {
        step(&format!("tracefs mounted at {TRACEFS}"));
        return Ok(());
    }
    if !is_root() {
        bail!("tracefs is not mounted at {TRACEFS}; as root: mount -t tracefs nodev {TRACEFS}");
    }
    step(&format!("mounting tracefs at {TRACEFS}"));
    check(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))
}

/// Readable without root, unlike `events/` itself.
fn tracefs_in_mounts() -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&TRACEFS) && fields.get(2) == Some(&"tracefs")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_llvm_of_the_right_major_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for name in ["libLLVM-14.so.1", "libLLVM-22.so", "libLLVM.so.15.0", "libLLVM.so.22.1"] {
            fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(find_llvm(dir).unwrap(), dir.join("libLLVM.so.22.1"));
        fs::remove_file(dir.join("libLLVM.so.22.1")).unwrap();
        assert!(find_llvm(dir).unwrap_err().to_string().contains("libLLVM.so.22"));
    }

    #[test]
    fn linking_replaces_stale_llvm_links() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let lib = dir.join("lib");
        fs::create_dir_all(&lib).unwrap();
        std::os::unix::fs::symlink("/nonexistent/libLLVM.so.22.0", lib.join("libLLVM.so.22.0")).unwrap();
        // On a host without LLVM 22 the step must fail with its message rather than half-link.
        match link_llvm(&lib) {
            Ok(()) => {
                let names: Vec<String> =
                    fs::read_dir(&lib).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
                assert_eq!(names.len(), 1, "{names:?}");
                assert!(names[0].starts_with("libLLVM.so.22"));
                assert!(lib.join(&names[0]).exists(), "the link resolves");
                link_llvm(&lib).unwrap(); // idempotent
            }
            Err(e) => assert!(e.to_string().contains("rustc-web"), "{e}"),
        }
    }

    #[test]
    fn linker_is_recognised_by_its_recorded_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/bpf-linker"), b"").unwrap();
        let installed = |d: &Path| tool_installed(d, "bpf-linker", BPF_LINKER_VERSION);
        assert!(!installed(dir));
        fs::write(dir.join(".crates.toml"), "[v1]\n\"bpf-linker 0.9.13 (registry+x)\" = [\"bpf-linker\"]\n").unwrap();
        assert!(!installed(dir));
        fs::write(dir.join(".crates.toml"), "[v1]\n\"bpf-linker 0.10.3 (registry+x)\" = [\"bpf-linker\"]\n").unwrap();
        assert!(installed(dir));
        assert!(!tool_installed(dir, "cargo-fuzz", CARGO_FUZZ_VERSION));
    }
}
