//! A pids cgroup per container, where the runtime may make one (root, or a
//! delegated cgroup v2 subtree). `RLIMIT_NPROC` does not bind root, so without
//! this a fork bomb run by a root runtime would only stop at the timeout.
//! Where no cgroup can be made, the rlimit (per user namespace inside the
//! sandbox) is what limits processes.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `modal-agents-<tag>` under the runtime's own pids cgroup.
#[derive(Debug)]
pub(crate) struct PidsGroup {
    dir: PathBuf,
    next: std::sync::atomic::AtomicU64,
}

impl PidsGroup {
    /// Creates the runtime's group, or `None` when that is not possible here.
    pub(crate) fn create(tag: &str) -> Option<PidsGroup> {
        let base = own_pids_cgroup()?;
        let dir = base.join(format!("modal-agents-{tag}"));
        // cgroup v2 needs the controller enabled for the children of `base`.
        let _ = std::fs::write(base.join("cgroup.subtree_control"), "+pids");
        if let Err(e) = std::fs::create_dir(&dir) {
            tracing::debug!(dir = %dir.display(), error = %e, "no pids cgroup; processes are limited by rlimit only");
            return None;
        }
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+pids");
        let group = PidsGroup {
            dir,
            next: std::sync::atomic::AtomicU64::new(0),
        };
        // Prove a child group with a pids limit can be made and removed.
        let probe = group.dir.join("probe");
        let usable = std::fs::create_dir(&probe).is_ok() && probe.join("pids.max").exists();
        let _ = std::fs::remove_dir(&probe);
        if usable {
            tracing::debug!(dir = %group.dir.display(), "containers get pids cgroups");
            Some(group)
        } else {
            None
        }
    }

    /// A new, empty group with no limit yet; the container joins it from
    /// its own process before exec ([`Confined::join_self`]), so even what
    /// it forks in its first microsecond is counted.
    pub(crate) fn child(&self) -> Option<Confined> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.dir.join(n.to_string());
        std::fs::create_dir(&dir).ok()?;
        let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()?;
        let events = std::fs::File::open(dir.join("pids.events")).ok()?;
        Some(Confined { dir, procs, events })
    }
}

impl PidsGroup {
    /// Removes the groups of containers that are gone, then this group.
    pub(crate) fn sweep(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for PidsGroup {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// One container's pids cgroup; removed once the container is gone.
#[derive(Debug)]
pub(crate) struct Confined {
    dir: PathBuf,
    procs: std::ffi::CString,
    /// `pids.events`, kept open: it is read after every request.
    events: std::fs::File,
}

impl Confined {
    /// Moves the calling process into the group. Called between fork and
    /// exec: only async-signal-safe calls, no allocation.
    pub(crate) fn join_self(&self) -> std::io::Result<()> {
        // SAFETY: open/write/close on a NUL-terminated path owned by `self`;
        // the buffer is a static byte string.
        unsafe {
            let fd = libc::open(self.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written == 1 {
                Ok(())
            } else {
                Err(err)
            }
        }
    }

    /// Whether a fork was ever refused in this group (it hit its limit). A
    /// container that did may be full of runaway processes and is retired.
    pub(crate) fn hit_limit(&self) -> bool {
        use std::os::unix::fs::FileExt;
        // One pread (~1 µs) rather than open/read/close (~15 µs) per request.
        let mut buf = [0u8; 256];
        let Ok(n) = self.events.read_at(&mut buf, 0) else {
            return false;
        };
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l.strip_prefix("max ").is_some_and(|n| n.trim() != "0"))
    }

    /// Caps processes and threads in the group.
    pub(crate) fn limit(&self, processes: u32) {
        if let Err(e) = std::fs::write(self.dir.join("pids.max"), processes.to_string()) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not set pids.max");
        }
    }

    /// Removes the group once its processes have exited, trying for a while
    /// (the kernel frees a group a moment after its last process is reaped).
    pub(crate) async fn remove(self) {
        for attempt in 0..50u64 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(2 + attempt * 4)).await
                }
            }
        }
        tracing::debug!(dir = %self.dir.display(), "pids cgroup still busy; left behind");
    }
}

/// The directory of this process's own pids cgroup, v1 or v2.
fn own_pids_cgroup() -> Option<PathBuf> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let options = right.nth(1).unwrap_or("");
        let path = match fstype {
            "cgroup" if options.split(',').any(|o| o == "pids") => membership
                .lines()
                .find_map(|l| l.split_once(":pids:").map(|(_, p)| p.to_owned())),
            "cgroup2"
                if std::fs::read_to_string(Path::new(mount_point).join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids")) =>
            {
                membership
                    .lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            }
            _ => None,
        };
        if let Some(path) = path {
            return Some(Path::new(mount_point).join(path.trim_start_matches('/')));
        }
    }
    None
}
