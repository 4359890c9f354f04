//! A cgroup per container, where the runtime may make one (root, or a
//! delegated cgroup v2 subtree): a pids group, because `RLIMIT_NPROC` does
//! not bind root (without it a fork bomb run by a root runtime would only stop
//! at the timeout), and a memory group, the container's real memory ceiling.
//! On cgroup v2 both controllers live in one group; on v1 each has its own
//! hierarchy and the container joins both. Where no group can be made, the
//! rlimits (per user namespace inside the sandbox) are what limit.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Which memory files a hierarchy has.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MemoryFiles {
    /// cgroup v2: `memory.max`, `memory.events`.
    V2,
    /// cgroup v1: `memory.limit_in_bytes`, `memory.oom_control`.
    V1,
}

/// One hierarchy's `modal-agents-<tag>` group, under the runtime's own.
#[derive(Debug)]
struct Hierarchy {
    dir: PathBuf,
    pids: bool,
    memory: Option<MemoryFiles>,
}

/// The runtime's groups, one per hierarchy it could use.
#[derive(Debug)]
pub(crate) struct PidsGroup {
    hierarchies: Vec<Hierarchy>,
    next: std::sync::atomic::AtomicU64,
}

impl Hierarchy {
    fn create(base: &Path, tag: &str, controllers: &[&str]) -> Option<Hierarchy> {
        let dir = base.join(format!("modal-agents-{tag}"));
        let enable: String = controllers.iter().map(|c| format!("+{c} ")).collect();
        // cgroup v2 needs the controllers enabled for the children of `base`.
        let _ = std::fs::write(base.join("cgroup.subtree_control"), enable.trim());
        if let Err(e) = std::fs::create_dir(&dir) {
            tracing::debug!(dir = %dir.display(), error = %e, "no cgroup here; rlimits only");
            return None;
        }
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), enable.trim());
        // Prove a child group with the limits can be made and removed.
        let probe = dir.join("probe");
        let made = std::fs::create_dir(&probe).is_ok();
        let pids = made && controllers.contains(&"pids") && probe.join("pids.max").exists();
        let memory = if !made || !controllers.contains(&"memory") {
            None
        } else if probe.join("memory.max").exists() {
            Some(MemoryFiles::V2)
        } else if probe.join("memory.limit_in_bytes").exists() {
            Some(MemoryFiles::V1)
        } else {
            None
        };
        let _ = std::fs::remove_dir(&probe);
        if pids || memory.is_some() {
            Some(Hierarchy { dir, pids, memory })
        } else {
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }
}

impl PidsGroup {
    /// Creates the runtime's groups, or `None` when none can be made here.
    pub(crate) fn create(tag: &str) -> Option<PidsGroup> {
        let pids = own_cgroup("pids");
        let memory = own_cgroup("memory");
        let hierarchies: Vec<Hierarchy> = match (pids, memory) {
            (Some(p), Some(m)) if p == m => Hierarchy::create(&p, tag, &["pids", "memory"])
                .into_iter()
                .collect(),
            (p, m) => p
                .and_then(|p| Hierarchy::create(&p, tag, &["pids"]))
                .into_iter()
                .chain(m.and_then(|m| Hierarchy::create(&m, tag, &["memory"])))
                .collect(),
        };
        if hierarchies.is_empty() {
            return None;
        }
        tracing::debug!(groups = ?hierarchies, "containers get cgroups");
        Some(PidsGroup {
            hierarchies,
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether containers get a pids limit.
    pub(crate) fn limits_processes(&self) -> bool {
        self.hierarchies.iter().any(|h| h.pids)
    }

    /// Whether containers get a memory ceiling.
    pub(crate) fn limits_memory(&self) -> bool {
        self.hierarchies.iter().any(|h| h.memory.is_some())
    }

    /// New, empty groups with no limits yet; the container joins them from
    /// its own process before exec ([`Confined::join_self`]), so even what
    /// it forks in its first microsecond is counted.
    pub(crate) fn child(&self) -> Option<Confined> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut confined = Confined {
            dirs: Vec::new(),
            procs: Vec::new(),
            events: None,
            memory: None,
            oom_events: None,
        };
        for h in &self.hierarchies {
            let dir = h.dir.join(n.to_string());
            if std::fs::create_dir(&dir).is_err() {
                // None made half: the groups already made go too.
                for made in &confined.dirs {
                    let _ = std::fs::remove_dir(made);
                }
                return None;
            }
            confined.procs.push(
                std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()?,
            );
            if h.pids {
                confined.events = std::fs::File::open(dir.join("pids.events")).ok();
            }
            if let Some(files) = h.memory {
                let name = match files {
                    MemoryFiles::V2 => "memory.events",
                    MemoryFiles::V1 => "memory.oom_control",
                };
                confined.oom_events = std::fs::File::open(dir.join(name)).ok();
                confined.memory = Some((dir.clone(), files));
            }
            confined.dirs.push(dir);
        }
        Some(confined)
    }

    /// Kills every process left in the groups of an earlier runtime with
    /// the same `tag` (one killed with SIGKILL, say, whose jails escaped
    /// their parent-death signal in a race) and removes those groups, so a
    /// new runtime starts with none of its predecessor's processes.
    pub(crate) fn reclaim(tag: &str) {
        let bases = [own_cgroup("pids"), own_cgroup("memory")];
        for base in bases.into_iter().flatten() {
            let dir = base.join(format!("modal-agents-{tag}"));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let group = entry.path();
                if !group.is_dir() {
                    continue;
                }
                // cgroup v2 kills the whole group at once; else each pid.
                if std::fs::write(group.join("cgroup.kill"), "1").is_err() {
                    let procs =
                        std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        // SAFETY: kill(2) on a process in a group this
                        // runtime's data dir made.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                for attempt in 0..50u64 {
                    if std::fs::remove_dir(&group).is_ok() || !group.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2 + attempt * 4));
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// Removes the groups of containers that are gone, then these groups.
    pub(crate) fn sweep(&self) {
        for h in &self.hierarchies {
            if let Ok(entries) = std::fs::read_dir(&h.dir) {
                for entry in entries.filter_map(Result::ok) {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&h.dir);
        }
    }
}

impl Drop for PidsGroup {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// One container's groups; removed once the container is gone.
#[derive(Debug)]
pub(crate) struct Confined {
    dirs: Vec<PathBuf>,
    procs: Vec<std::ffi::CString>,
    /// `pids.events`, kept open: it is read after every request.
    events: Option<std::fs::File>,
    /// The memory group and its kind.
    memory: Option<(PathBuf, MemoryFiles)>,
    /// Its OOM-kill counter file, kept open: read around every request.
    oom_events: Option<std::fs::File>,
}

impl Confined {
    /// Moves the calling process into the groups. Called between fork and
    /// exec: only async-signal-safe calls, no allocation.
    pub(crate) fn join_self(&self) -> std::io::Result<()> {
        for procs in &self.procs {
            // SAFETY: open/write/close on a NUL-terminated path owned by
            // `self`; the buffer is a static byte string.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Whether a fork was ever refused in this group (it hit its limit). A
    /// container that did may be full of runaway processes and is retired.
    pub(crate) fn hit_limit(&self) -> bool {
        use std::os::unix::fs::FileExt;
        let Some(events) = &self.events else {
            return false;
        };
        // One pread (~1 µs) rather than open/read/close (~15 µs) per request.
        let mut buf = [0u8; 256];
        let Ok(n) = events.read_at(&mut buf, 0) else {
            return false;
        };
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l.strip_prefix("max ").is_some_and(|n| n.trim() != "0"))
    }

    /// Caps processes and threads in the group.
    pub(crate) fn limit(&self, processes: u32) {
        if let Some(dir) = self.events.as_ref().and(self.dirs.first()) {
            if let Err(e) = std::fs::write(dir.join("pids.max"), processes.to_string()) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not set pids.max");
            }
        }
    }

    /// Caps the group's memory (swap included where the kernel accounts
    /// it); whether a ceiling is now in place.
    pub(crate) fn limit_memory(&self, bytes: u64) -> bool {
        let Some((dir, files)) = &self.memory else {
            return false;
        };
        let (limit, swap) = match files {
            MemoryFiles::V2 => ("memory.max", "memory.swap.max"),
            MemoryFiles::V1 => ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
        };
        if let Err(e) = std::fs::write(dir.join(limit), bytes.to_string()) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not set the memory limit");
            return false;
        }
        let swap_value = if *files == MemoryFiles::V2 { 0 } else { bytes };
        let _ = std::fs::write(dir.join(swap), swap_value.to_string());
        true
    }

    /// How many times the kernel killed a process of the group for going
    /// past its memory limit.
    pub(crate) fn oom_kills(&self) -> u64 {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.oom_events else {
            return 0;
        };
        let mut buf = [0u8; 512];
        let Ok(n) = file.read_at(&mut buf, 0) else {
            return 0;
        };
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes the groups once their processes have exited, trying for a
    /// while (the kernel frees a group a moment after its last process is
    /// reaped).
    pub(crate) async fn remove(self) {
        for dir in self.dirs {
            for attempt in 0..50u64 {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(2 + attempt * 4)).await
                    }
                }
            }
        }
    }
}

/// The directory of this process's own cgroup for `controller`, v1 or v2.
fn own_cgroup(controller: &str) -> Option<PathBuf> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let options = right.nth(1).unwrap_or("");
        let path = match fstype {
            "cgroup" if options.split(',').any(|o| o == controller) => {
                membership.lines().find_map(|l| {
                    let (_, rest) = l.split_once(':')?;
                    let (names, path) = rest.split_once(':')?;
                    names
                        .split(',')
                        .any(|n| n == controller)
                        .then(|| path.to_owned())
                })
            }
            "cgroup2"
                if std::fs::read_to_string(Path::new(mount_point).join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == controller)) =>
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
