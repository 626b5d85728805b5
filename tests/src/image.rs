//! Container images without a registry: a root filesystem of busybox and the test's static binaries, as a layer
//! tar (what `docker import` takes) or as an OCI image archive (what `ctr images import` takes, as an image built
//! elsewhere and copied to a node would be).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// A root filesystem in `dir/rootfs` of busybox (with `/bin/sh`) and `files` (host path, path in it).
fn rootfs(dir: &Path, files: &[(PathBuf, String)]) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    let _ = fs::remove_dir_all(&rootfs);
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(rootfs.join(d))?;
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("no /bin/busybox (apt install busybox-static)")?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
    for (from, to) in files {
        let to = rootfs.join(to);
        fs::create_dir_all(to.parent().context("a file at the root")?)?;
        fs::copy(from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
    }
    Ok(rootfs)
}

/// `tar -C <from> -cf <to> <what>`.
fn tar(from: &Path, to: &Path, what: &[&str]) -> Result<()> {
    let status = Command::new("tar").arg("-C").arg(from).arg("-cf").arg(to).args(what).status()?;
    ensure!(status.success(), "tar -C {} failed", from.display());
    Ok(())
}

/// The root filesystem of busybox and `files` as one layer tar, `dir/rootfs.tar`.
pub fn layer(dir: &Path, files: &[(PathBuf, String)]) -> Result<PathBuf> {
    let rootfs = rootfs(dir, files)?;
    let layer = dir.join("rootfs.tar");
    tar(&rootfs, &layer, &["."])?;
    Ok(layer)
}

/// An OCI image archive, `dir/image.tar`, of one layer (busybox and `files`) named `name` (a full reference,
/// `docker.io/<repo>:<tag>`), for linux/amd64.
pub fn oci_archive(dir: &Path, name: &str, files: &[(PathBuf, String)]) -> Result<PathBuf> {
    let layout = dir.join("oci");
    let _ = fs::remove_dir_all(&layout);
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    // A blob is stored under its digest; its descriptor names it by digest and size.
    let blob = |bytes: &[u8], media_type: &str| -> Result<serde_json::Value> {
        let digest = format!("{:x}", Sha256::digest(bytes));
        fs::write(blobs.join(&digest), bytes)?;
        Ok(json!({ "mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len() }))
    };
    let layer = fs::read(layer(dir, files)?)?;
    let layer = blob(&layer, "application/vnd.oci.image.layer.v1.tar")?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": [layer["digest"]] },
    });
    let config = blob(&serde_json::to_vec(&config)?, "application/vnd.oci.image.config.v1+json")?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = blob(&serde_json::to_vec(&manifest)?, "application/vnd.oci.image.manifest.v1+json")?;
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    manifest["annotations"] = json!({ "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag });
    let index = json!({ "schemaVersion": 2, "manifests": [manifest] });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let archive = dir.join("image.tar");
    tar(&layout, &archive, &["oci-layout", "index.json", "blobs"])?;
    Ok(archive)
}
