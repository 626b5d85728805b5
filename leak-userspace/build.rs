//! Builds the eBPF programs (`leak-ebpf`) for `bpfel-unknown-none` and hands the object to the crate, which embeds
//! it: the `leaktrace` binary is the only file an operator has to copy onto a host.
//!
//! The eBPF crate needs a compiler with a prebuilt `core` for the bpfel target and bpf-linker; the rustup toolchain
//! that builds userspace has neither. `cargo xtask bootstrap` installs them (Debian's rustc-web, bpf-linker); this
//! script only finds them and says what is missing.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("leak-ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("leak-ebpf.o");

    for p in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("leak-common/src").display());
    println!("cargo:rerun-if-env-changed=LEAKTRACE_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=LEAKTRACE_TOOLS");

    // Unit tests of pure userspace logic can run without the eBPF toolchain; such a binary refuses to trace.
    if env::var_os("LEAKTRACE_SKIP_EBPF").is_some() {
        std::fs::write(&out, b"").unwrap();
        return;
    }

    let tools = tools_dir();
    let bpf_cargo = Path::new("/usr/bin/cargo");
    if !bpf_cargo.exists() || !tools.join("bin/bpf-linker").exists() {
        panic!(
            "the eBPF toolchain is missing (need /usr/bin/cargo from Debian's cargo-web and bpf-linker in {}); \
             run `cargo xtask bootstrap` first",
            tools.display()
        );
    }
    let target_dir = root.join("target/bpf");
    let path = format!("{}:/usr/bin:/bin:{}", tools.join("bin").display(), env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new(bpf_cargo);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTC_BOOTSTRAP", "1");
    // The outer (rustup) build leaks its toolchain into the environment; the eBPF build must use Debian's.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO",
        "RUSTDOC",
        "CARGO_MAKEFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    for (k, _) in env::vars() {
        if k.starts_with("CARGO_FEATURE_") || k.starts_with("CARGO_CFG_") || k.starts_with("CARGO_PKG_") {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().expect("failed to run the eBPF build");
    assert!(status.success(), "building leak-ebpf failed");
    std::fs::copy(target_dir.join("bpfel-unknown-none/release/leak-ebpf"), &out).expect("copy eBPF object");
}

/// Where `cargo xtask bootstrap` installs bpf-linker; shared by every clone on the machine.
fn tools_dir() -> PathBuf {
    if let Some(dir) = env::var_os("LEAKTRACE_TOOLS") {
        return dir.into();
    }
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache/leaktrace/tools")
}
