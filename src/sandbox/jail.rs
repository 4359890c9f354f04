//! One exec's bubblewrap jail over its sandbox's filesystem: the read-only
//! system, the sandbox's own workdir and `/tmp` (shared by all its
//! processes), its volumes and package environment, fresh namespaces, no
//! network unless asked, a session of its own, death with the runtime, the
//! sandbox's cgroup and rlimits.
//!
//! Inside, a small python3 wrapper runs as pid 1 of the jail: it starts the
//! command, forwards signals to it, reaps what it leaves, and reports on fd 3
//! whether the command exited (and its code) or was killed by a signal. So
//! "exited 137" and "killed by SIGKILL" are never confused, which bubblewrap's
//! own exit status (128 + signal) would do.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::{Child, Command};

use crate::compute::local::{Bwrap, Confined};

/// The jail's pid 1: runs `argv`, forwards signals, reports how it ended.
const WRAPPER: &str = r#"
import os, signal, sys
try:
    import ctypes
    # Not dumpable: the command (same user, no capabilities) cannot open
    # /proc/1/fd/3 to write a report of its own.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
except Exception:
    pass
os.set_inheritable(3, False)
argv = sys.argv[1:]
FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
pid = os.fork()
if pid == 0:
    try:
        for s in FORWARD + (signal.SIGPIPE,):
            signal.signal(s, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, ("%s: %s\n" % (argv[0], e.strerror)).encode())
        os._exit(127 if e.errno == 2 else 126)
def forward(s, f):
    try:
        os.kill(pid, s)
    except OSError:
        pass
for s in FORWARD:
    signal.signal(s, forward)
# Signals are forwarded from here on: the runtime holds a kill until then.
os.write(3, b"ready\n")
st = 0
while True:
    try:
        p, st = os.wait()
    except ChildProcessError:
        break
    if p == pid:
        break
if os.WIFSIGNALED(st):
    os.write(3, b"signal %d" % os.WTERMSIG(st))
else:
    os.write(3, b"exit %d" % os.WEXITSTATUS(st))
"#;

/// What one exec's jail binds and sets.
pub(crate) struct JailSpec<'a> {
    pub(crate) bwrap: &'a Bwrap,
    pub(crate) python: &'a std::path::Path,
    /// Host directory -> path inside, read-write (workdir, /tmp, volumes).
    pub(crate) binds: &'a [(PathBuf, String)],
    /// Directories bound read-only at the same path (a package env).
    pub(crate) read_only: &'a [PathBuf],
    pub(crate) network: bool,
    pub(crate) cwd: &'a str,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cmd: &'a [String],
    pub(crate) confined: Option<Arc<Confined>>,
    pub(crate) open_files: u64,
    pub(crate) file_size: Option<u64>,
    /// Its whole stdin, from a file (`None`: a pipe).
    pub(crate) stdin: Option<std::fs::File>,
}

/// A started jail: the bubblewrap process, and the read ends of the
/// wrapper's report (fd 3) and of bubblewrap's info (the jail's pid 1 as
/// this host sees it).
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) status: OwnedFd,
    pub(crate) info: OwnedFd,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors this process then owns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Puts `fd` at `target` in the child, inheritable. Async-signal-safe.
fn place(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2/fcntl on descriptors of this (forked) process.
    unsafe {
        if fd == target {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(fd, target) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit with a valid struct; async-signal-safe.
    unsafe { libc::setrlimit(resource, &limit) };
}

/// Starts the jail for `spec`.
pub(crate) fn start(spec: JailSpec<'_>) -> std::io::Result<Started> {
    let (status_read, status_write) = pipe()?;
    let (info_read, info_write) = pipe()?;
    let mut cmd = Command::new(spec.bwrap.path());
    cmd.args([
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--cap-drop",
        "ALL",
        "--info-fd",
        "4",
    ]);
    if spec.network {
        cmd.arg("--share-net");
    }
    cmd.args(spec.bwrap.system_args());
    cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
    for dir in spec.read_only {
        cmd.arg("--ro-bind").arg(dir).arg(dir);
    }
    for (host, inside) in spec.binds {
        cmd.arg("--bind").arg(host).arg(inside);
    }
    cmd.arg("--chdir").arg(spec.cwd);
    cmd.arg("--")
        .arg(spec.python)
        .args(["-S", "-E", "-s", "-c", WRAPPER])
        .args(spec.cmd);
    cmd.env_clear()
        .envs(spec.env)
        .stdin(spec.stdin.map_or_else(Stdio::piped, Stdio::from))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let (status_fd, info_fd) = (status_write.as_raw_fd(), info_write.as_raw_fd());
    let confined = spec.confined;
    let (open_files, file_size) = (spec.open_files, spec.file_size);
    // SAFETY: only async-signal-safe calls between fork and exec: prctl,
    // dup2/fcntl, setrlimit, and the cgroup join (open/write/close).
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            place(status_fd, 3)?;
            place(info_fd, 4)?;
            // Nothing else the server holds reaches the jail: every other
            // descriptor closes at exec (not now: the one that reports a
            // failed exec back to the runtime must live until then).
            const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
            libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
            set_limit(libc::RLIMIT_NOFILE, open_files);
            set_limit(libc::RLIMIT_CORE, 0);
            if let Some(bytes) = file_size {
                set_limit(libc::RLIMIT_FSIZE, bytes);
            }
            match &confined {
                Some(c) => c.join_self(),
                None => Ok(()),
            }
        });
    }
    let child = cmd.spawn()?;
    // Our copies of the write ends go: the reads see EOF once the jail's
    // copies close.
    drop(status_write);
    drop(info_write);
    Ok(Started {
        child,
        status: status_read,
        info: info_read,
    })
}

/// How the wrapper said the command ended: `exit N` or `signal N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    Exit(i32),
    Signal(i32),
}

/// The wrapper's last word: `exit N` or `signal N` (after its `ready`).
pub(crate) fn parse_report(text: &str) -> Option<Report> {
    let last = text.trim().lines().last()?;
    let (kind, n) = last.trim().split_once(' ')?;
    let n: i32 = n.parse().ok()?;
    match kind {
        "exit" => Some(Report::Exit(n)),
        "signal" => Some(Report::Signal(n)),
        _ => None,
    }
}

/// The jail's pid 1 as this host sees it, from bubblewrap's `--info-fd`
/// JSON (`{"child-pid": N}`).
pub(crate) fn parse_info(text: &str) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("child-pid")?.as_u64()?.try_into().ok()
}

/// What is in a pipe now (at most 4 KiB), without waiting for more: the
/// wrapper's report once bubblewrap has exited, bubblewrap's info once the
/// jail has started.
pub(crate) fn read_now(fd: &OwnedFd) -> String {
    let raw = fd.as_raw_fd();
    let mut buf = [0u8; 4096];
    // SAFETY: fcntl and read on a descriptor this process owns, into a
    // buffer of the given length.
    let n = unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK);
        libc::read(raw, buf.as_mut_ptr().cast(), buf.len())
    };
    if n <= 0 {
        return String::new();
    }
    String::from_utf8_lossy(&buf[..n as usize]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_and_info_parse() {
        assert_eq!(parse_report("exit 137"), Some(Report::Exit(137)));
        assert_eq!(parse_report("ready\nsignal 15"), Some(Report::Signal(15)));
        assert_eq!(parse_report("ready\n"), None);
        assert_eq!(parse_report("signal 9"), Some(Report::Signal(9)));
        assert_eq!(parse_report(""), None);
        assert_eq!(parse_report("exit x"), None);
        assert_eq!(parse_info("{\n    \"child-pid\": 42\n}"), Some(42));
        assert_eq!(parse_info("nonsense"), None);
    }
}
