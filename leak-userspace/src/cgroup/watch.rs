//! Restarts without a gap: an inotify watch on the directory that holds a followed container's cgroup, so the
//! event loop looks for the restarted container's new cgroup the moment the runtime makes it, not at the next
//! interval (whose wait would miss the new life's first allocations).
use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

pub struct CgroupWatch {
    fd: OwnedFd,
}

impl CgroupWatch {
    /// Watches `parent` for directories made in it; `None` where that cannot be (the interval's check remains).
    pub fn new(parent: &Path) -> Option<Self> {
        let path = CString::new(parent.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain syscalls; the fd is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_CREATE | libc::IN_ONLYDIR) };
        (wd >= 0).then_some(CgroupWatch { fd })
    }

    /// Reads every pending event; whether there was any.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        loop {
            // SAFETY: buf is valid for its length; the fd is non-blocking.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return any;
            }
            any = true;
        }
    }
}

impl AsRawFd for CgroupWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_directory_made() {
        let dir = tempfile::tempdir().unwrap();
        let watch = CgroupWatch::new(dir.path()).unwrap();
        assert!(!watch.drain());
        std::fs::create_dir(dir.path().join("restarted")).unwrap();
        assert!(watch.drain());
        assert!(!watch.drain(), "drained");
        assert!(CgroupWatch::new(&dir.path().join("missing")).is_none());
    }
}
