//! One warm `python3` process running the harness for one function.

use std::collections::{HashSet, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Notify;

use crate::compute::LogSink;

use super::cgroup::{Confined, PidsGroup};
use super::protocol::{decode_load_reply, ping_request};
use super::sandbox::Jail;
use crate::spec::SpecError;
use crate::sync::Recover;

/// The harness source, shipped inside the crate.
const HARNESS: &str = include_str!("harness.py");

/// First argument of every container, so they can be found in `/proc`.
pub(crate) const CONTAINER_MARKER: &str = "modal-agents-container";

/// The bit that marks a frame of live output (numbered like its request).
const LIVE_OUTPUT: u64 = 1 << 63;

/// The line the harness writes on fd 2 when a request ends (see
/// `harness.py`): the stderr excerpt of a crash starts after the last one.
const DONE_MARK: &[u8] = b"\x1fmodal-agents: request done\x1f";

/// How long a crash's explanation waits for the rest of the container's
/// stderr once it is gone.
const STDERR_SETTLE: Duration = Duration::from_millis(500);

/// Lines of a container's stderr kept to explain a crash.
const STDERR_TAIL: usize = 20;
/// Longest stderr line kept; the rest of a longer one is dropped.
const MAX_STDERR_LINE: usize = 4096;

/// Largest reply frame accepted from a container (256 MiB): a call's result
/// or a map batch's results, with its captured output. A longer frame fails
/// the request as a protocol error. The buffer grows with the bytes that
/// actually arrive, never with what the length field claims.
pub(crate) const MAX_FRAME: usize = 256 << 20;

/// Starts containers. A container is started blank (interpreter and harness
/// up, no code) and then loaded with one function's code, environment and
/// working directory. The launcher keeps `standby` blank containers ready, so
/// a deploy or a pool growing under load skips the interpreter's start-up.
#[derive(Debug)]
pub(crate) struct Launcher {
    pub(crate) python: PathBuf,
    pub(crate) runtime_tag: String,
    pub(crate) base_env: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
    pub(crate) live: Arc<LiveSet>,
    pub(crate) standby_target: usize,
    pub(crate) standby: Mutex<Vec<Container>>,
    pub(crate) refilling: std::sync::atomic::AtomicBool,
    pub(crate) closed: std::sync::atomic::AtomicBool,
    /// The sandbox containers start in, if any.
    pub(crate) jail: Option<Jail>,
    /// Where containers get their pids cgroup, if one can be made here.
    pub(crate) pids: Option<Arc<PidsGroup>>,
    /// The runtime's redactor, once the backend has started.
    pub(crate) redact: Arc<std::sync::OnceLock<crate::redact::Redactor>>,
}

/// What a [`Launcher`] is made from.
#[derive(Debug, Clone)]
pub(crate) struct LauncherArgs {
    pub(crate) python: PathBuf,
    pub(crate) runtime_tag: String,
    pub(crate) base_env: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
    pub(crate) live: Arc<LiveSet>,
    pub(crate) standby: usize,
    pub(crate) jail: Option<Jail>,
    pub(crate) pids: Option<Arc<PidsGroup>>,
    pub(crate) redact: Arc<std::sync::OnceLock<crate::redact::Redactor>>,
}

impl Launcher {
    pub(crate) fn new(args: LauncherArgs) -> Launcher {
        Launcher {
            python: args.python,
            runtime_tag: args.runtime_tag,
            base_env: args.base_env,
            cwd: args.cwd,
            live: args.live,
            standby_target: args.standby,
            standby: Mutex::new(Vec::new()),
            refilling: std::sync::atomic::AtomicBool::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            jail: args.jail,
            pids: args.pids,
            redact: args.redact,
        }
    }

    /// A container loaded with the function of `load_frame`, confined as
    /// `limits` says where cgroups enforce it.
    pub(crate) async fn start(
        self: &Arc<Self>,
        load_frame: &[u8],
        limits: Confinement<'_>,
    ) -> Result<Container, StartError> {
        let Confinement {
            processes,
            memory_mib,
            gpus,
        } = limits;
        // Standby containers are unsandboxed, and so see no GPU node anyway.
        let standby = self.standby.lock().recover().pop();
        self.refill();
        if let Some(mut container) = standby {
            container.limit_processes(processes);
            container.limit_memory(memory_mib);
            match container.load(load_frame).await {
                Err(StartError::Failed(why) | StartError::Died(why) | StartError::Exited(why)) => {
                    tracing::debug!(%why, "standby container unusable; starting a fresh one");
                }
                other => return other.map(|()| container),
            }
        }
        let mut container = self.spawn(gpus).await?;
        container.limit_processes(processes);
        container.limit_memory(memory_mib);
        container.load(load_frame).await?;
        Ok(container)
    }

    /// Tops the standby set up in the background.
    pub(crate) fn refill(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.standby_target == 0
            || self.closed.load(Ordering::SeqCst)
            || self.refilling.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let launcher = self.clone();
        tokio::spawn(async move {
            while !launcher.closed.load(Ordering::SeqCst)
                && launcher.standby.lock().recover().len() < launcher.standby_target
            {
                let started = match launcher.spawn(&[]).await {
                    Ok(mut c) => c.ping().await.map(|()| c),
                    Err(e) => Err(e),
                };
                match started {
                    Ok(c) if !launcher.closed.load(Ordering::SeqCst) => {
                        launcher.standby.lock().recover().push(c);
                    }
                    Ok(_) => break,
                    Err(_) if launcher.closed.load(Ordering::SeqCst) => break,
                    Err(e) => {
                        tracing::warn!(error = ?e, "could not start a standby container");
                        break;
                    }
                }
            }
            launcher.refilling.store(false, Ordering::SeqCst);
        });
    }

    /// Stops refilling and kills the standby containers.
    pub(crate) fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.standby.lock().recover().clear();
    }
}

/// What a container is held to, where its cgroups can enforce it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Confinement<'a> {
    /// Processes and threads at most.
    pub(crate) processes: u32,
    /// Memory ceiling in MiB.
    pub(crate) memory_mib: u64,
    /// The GPUs (indices) whose device nodes it sees, when sandboxed.
    pub(crate) gpus: &'a [u32],
}

/// Pids of live containers, so shutdown can wait until every one is reaped.
#[derive(Debug, Default)]
pub(crate) struct LiveSet {
    pids: Mutex<HashSet<u32>>,
    changed: Notify,
}

impl LiveSet {
    fn insert(&self, pid: u32) {
        self.pids.lock().recover().insert(pid);
    }

    fn remove(&self, pid: u32) {
        self.pids.lock().recover().remove(&pid);
        self.changed.notify_waiters();
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pids.lock().recover().iter().copied().collect()
    }

    /// Kills every live container's process group and waits until all are reaped.
    pub(crate) async fn kill_all_and_wait(&self, deadline: Duration) {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.changed.notified();
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                kill_group(pid);
            }
            if tokio::time::timeout_at(give_up, notified).await.is_err() {
                tracing::warn!(left = ?self.pids(), "containers not reaped before the deadline");
                return;
            }
        }
    }
}

/// Asks for a 1 MiB pipe buffer (the default is 64 KiB) so a whole map batch
/// crosses in one go; the kernel may refuse, which only costs speed.
fn widen_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: fcntl on a pipe fd this process owns; no memory is passed.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// CPU seconds (user + system, rounded up) a process has used.
fn cpu_seconds(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| std::io::Error::other("unreadable /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> std::io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| std::io::Error::other("unreadable /proc stat"))
    };
    // utime and stime: fields 14 and 15 of stat, 11 and 12 after the name.
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    Ok(total.div_ceil(per_second))
}

/// The harness's process among the descendants of `pid` (bubblewrap and
/// its init in between): the one whose program is not bubblewrap and whose
/// command line carries the container marker.
fn harness_under(pid: u32) -> Option<u32> {
    let mut frontier = vec![pid];
    for _ in 0..4 {
        let mut next = Vec::new();
        for p in frontier {
            for child in children_of(p) {
                let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
                let mut args = cmdline.split(|b| *b == 0);
                let program = args.next().unwrap_or_default();
                let is_bwrap = program.ends_with(b"bwrap");
                if !is_bwrap && args.any(|a| a == CONTAINER_MARKER.as_bytes()) {
                    return Some(child);
                }
                next.push(child);
            }
        }
        frontier = next;
    }
    None
}

/// A process's children: from the `children` file of each of its threads,
/// or where the kernel lacks those files, by the parent pid of every process.
fn children_of(pid: u32) -> Vec<u32> {
    let lists: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .collect()
        })
        .unwrap_or_default();
    if !lists.is_empty() {
        return lists
            .iter()
            .flat_map(|l| l.split_whitespace())
            .filter_map(|c| c.parse().ok())
            .collect();
    }
    children_by_ppid(pid)
}

/// Every process whose parent is `pid`, from `/proc/*/stat`.
fn children_by_ppid(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Bytes waiting in a pipe (FIONREAD); 0 when it cannot be asked.
fn pending_bytes(pipe: &impl AsRawFd) -> usize {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD on a pipe fd this process owns writes one c_int
    // through the valid pointer given.
    let rc = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut unread) };
    if rc == 0 {
        usize::try_from(unread).unwrap_or(0)
    } else {
        0
    }
}

fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals the process group the
    // container leads (it was started with process_group(0)).
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

/// Why a container could not serve a request.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The process was gone before it took the request in (killed while
    /// idle, or as the request was being sent): the request never ran.
    NotRun(String),
    /// The process died (or closed its pipes) after taking the request in,
    /// before answering.
    Died(String),
    /// It did not answer within the deadline and was killed.
    TimedOut,
    /// It broke the protocol (a reply out of sequence or over the size
    /// limit: the function's code wrote on the harness's pipe) and was
    /// killed.
    Protocol(String),
}

/// Why a container could not be started.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The function's code was refused.
    Code(SpecError),
    /// The process could not be started, or its harness failed to load
    /// or answer in time.
    Failed(String),
    /// The process died while starting or loading (most often killed from
    /// outside): starting again may well work.
    Died(String),
    /// The process exited with a code of its own while loading (code that
    /// calls `os._exit` at import): the code's doing, the same next time.
    Exited(String),
}

/// A running container. Dropping it kills its process group.
#[derive(Debug)]
pub(crate) struct Container {
    child: Option<Child>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
    /// Number of the last request sent; each reply must carry it. Frames the
    /// function's code writes on the harness's pipe do not know it (short
    /// of digging it out of the harness), so they end the container instead
    /// of answering a later request.
    seq: u64,
    /// Set while a request is outstanding; a container dropped in that state
    /// has an unknown protocol state and is never reused.
    pub(crate) busy: bool,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// The logs of the requests sent and not yet marked done on stderr, in
    /// order: what the code writes on file descriptor 2 (a subprocess, a C
    /// extension, `os.write(2, ...)`) goes, redacted, to the first one's
    /// stderr.
    stderr_sinks: Arc<Mutex<VecDeque<LogSink>>>,
    /// Becomes true once everything the container wrote on stderr is read.
    stderr_drained: tokio::sync::watch::Receiver<bool>,
    live: Arc<LiveSet>,
    /// The resources it holds, given back when it goes.
    reservation: Option<super::budget::Reservation>,
    /// Its pids cgroup, removed when it goes.
    confined: Option<Arc<Confined>>,
    /// Whether it runs under bubblewrap.
    sandboxed: bool,
    /// The harness's process as this host sees it (under bubblewrap, a
    /// descendant of `pid`), found on first need.
    harness_pid: Option<u32>,
    /// OOM kills in its memory group before the current request: one in
    /// an earlier request (a child process, say) is not this one's.
    oom_before: u64,
}

impl Launcher {
    /// Starts a blank container.
    async fn spawn(&self, gpus: &[u32]) -> Result<Container, StartError> {
        let live = &self.live;
        let mut cmd = match &self.jail {
            Some(jail) => jail.command(&self.python, gpus),
            None => Command::new(&self.python),
        };
        cmd.arg("-c")
            .arg(HARNESS)
            .arg(CONTAINER_MARKER)
            .arg(&self.runtime_tag)
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let confined = self.pids.as_ref().and_then(|g| g.child()).map(Arc::new);
        let joining = confined.clone();
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the
        // container when the thread that started it exits, so a runtime killed
        // with SIGKILL leaves no container behind. join_self only makes
        // async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                match &joining {
                    Some(confined) => confined.join_self(),
                    None => Ok(()),
                }
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| StartError::Failed(format!("{}: {e}", self.python.display())))?;
        let pid = child.id().unwrap_or_default();
        live.insert(pid);
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        widen_pipe(stdin.as_raw_fd());
        widen_pipe(stdout.as_raw_fd());
        let stdout = BufReader::with_capacity(1 << 16, stdout);
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (drained, stderr_drained) = tokio::sync::watch::channel(false);
        let stderr_sinks = Arc::new(Mutex::new(VecDeque::new()));
        let to = StderrTo {
            pid,
            tail: stderr_tail.clone(),
            sinks: stderr_sinks.clone(),
            redact: self.redact.clone(),
        };
        tokio::spawn(async move {
            drain_stderr(stderr, to).await;
            drained.send_replace(true);
        });
        Ok(Container {
            child: Some(child),
            stdin,
            stdout,
            pid,
            seq: 0,
            busy: false,
            stderr_tail,
            stderr_sinks,
            stderr_drained,
            live: live.clone(),
            reservation: None,
            confined,
            sandboxed: self.jail.is_some(),
            harness_pid: None,
            oom_before: 0,
        })
    }
}

impl Container {
    /// Attaches the resources this container holds.
    pub(crate) fn hold(&mut self, reservation: super::budget::Reservation) {
        self.reservation = Some(reservation);
    }

    /// Whether the container ever hit its process limit (then it may hold
    /// runaway processes and must not be reused).
    pub(crate) fn hit_process_limit(&self) -> bool {
        self.confined.as_ref().is_some_and(|c| c.hit_limit())
    }

    fn limit_processes(&self, processes: u32) {
        if let Some(confined) = &self.confined {
            confined.limit(processes);
        }
    }

    fn limit_memory(&self, mib: u64) {
        if let Some(confined) = &self.confined {
            confined.limit_memory(mib.saturating_mul(1 << 20));
        }
    }

    /// Whether the kernel killed a process of the container for going past
    /// its memory limit since the current request was sent.
    pub(crate) fn oom_killed(&self) -> bool {
        self.confined
            .as_ref()
            .is_some_and(|c| c.oom_kills() > self.oom_before)
    }

    /// Waits until a blank container's harness answers.
    async fn ping(&mut self) -> Result<(), StartError> {
        self.exchange(
            &ping_request(),
            Duration::from_secs(60),
            &LogSink::discard(),
        )
        .await
        .map(drop)
        .map_err(|f| self.start_error(f, false))
    }

    /// Loads a function into a blank container.
    async fn load(&mut self, load_frame: &[u8]) -> Result<(), StartError> {
        let reply = self
            .exchange(load_frame, Duration::from_secs(120), &LogSink::discard())
            .await
            .map_err(|f| self.start_error(f, true))?;
        match decode_load_reply(&reply) {
            Ok(result) => result.map_err(StartError::Code),
            Err(why) => Err(StartError::Failed(why)),
        }
    }

    /// A start's failure: one the process brought on itself (it hung or
    /// broke the protocol: `Failed`; while `loading` the code, exited with a
    /// code of its own, as code that calls `os._exit` at import does:
    /// `Exited`) comes again next time; one by a signal (most often a kill
    /// from outside), or before the interpreter answered (bubblewrap's own
    /// setup failing exits 1 too), is `Died`, worth another try.
    fn start_error(&mut self, failure: Failure, loading: bool) -> StartError {
        match failure {
            Failure::TimedOut | Failure::Protocol(_) => StartError::Failed(self.explain(failure)),
            died if loading && self.exited_by_itself() => StartError::Exited(self.explain(died)),
            died => StartError::Died(self.explain(died)),
        }
    }

    /// Whether the process ended by its own doing: an exit code of its own,
    /// or a fault of its own code (SIGSEGV, SIGBUS, SIGILL, SIGFPE,
    /// SIGABRT: a C extension crashing at import, `os.abort()`), which no
    /// one sends from outside; a SIGKILL (a kill, the OOM killer) is not.
    /// Under bubblewrap, 128 + N says signal N.
    fn exited_by_itself(&mut self) -> bool {
        let sandboxed = self.sandboxed;
        let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        else {
            return false;
        };
        match exit_signal(status, sandboxed) {
            Some(sig) => matches!(
                sig,
                libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGABRT
            ),
            None => status.code().is_some(),
        }
    }

    /// Lets the harness's process use `seconds` more CPU time from now: its
    /// RLIMIT_CPU is set from outside, the soft limit at that point (SIGXCPU,
    /// named in the error) and the hard one a second later, so code in the
    /// container cannot lift its own limit (by more than that second).
    pub(crate) fn allow_cpu(&mut self, seconds: u64) -> std::io::Result<()> {
        let pid = match self.harness_pid {
            Some(pid) => pid,
            None => {
                let pid = if self.sandboxed {
                    harness_under(self.pid).ok_or_else(|| {
                        std::io::Error::other("the harness process was not found under bubblewrap")
                    })?
                } else {
                    self.pid
                };
                self.harness_pid = Some(pid);
                pid
            }
        };
        let used = cpu_seconds(pid)?;
        let soft = used + seconds;
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: soft + 1,
        };
        // SAFETY: prlimit(2) on a process this runtime started, with a
        // valid rlimit to set and no old value asked for.
        let rc = unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_CPU,
                &limit,
                std::ptr::null_mut(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Bytes of the last request still in the container's stdin pipe: more
    /// than none after the process died means it never took the request in.
    fn unread_request_bytes(&self) -> usize {
        pending_bytes(&self.stdin)
    }

    /// Sends one call or map request and reads its reply; output the
    /// function prints meanwhile goes to `logs` as it comes, both what it
    /// prints in Python and what reaches file descriptor 2 (the harness
    /// marks the end of each such request there).
    pub(crate) async fn request(
        &mut self,
        frame: &[u8],
        timeout: Duration,
        logs: &LogSink,
    ) -> Result<Vec<u8>, Failure> {
        self.stderr_sinks.lock().recover().push_back(logs.clone());
        self.exchange(frame, timeout, logs).await
    }

    /// Sends one framed request and reads the framed reply; output the
    /// function prints meanwhile (frames numbered like the request with the
    /// top bit set) goes to `logs` as it comes.
    async fn exchange(
        &mut self,
        frame: &[u8],
        timeout: Duration,
        logs: &LogSink,
    ) -> Result<Vec<u8>, Failure> {
        self.busy = true;
        self.seq += 1;
        self.oom_before = self.confined.as_ref().map_or(0, |c| c.oom_kills());
        let seq = self.seq;
        let mut sent = false;
        let mut broken = None;
        let (stdin, stdout, sent_flag, broken_flag) =
            (&mut self.stdin, &mut self.stdout, &mut sent, &mut broken);
        let exchange = async move {
            stdin.write_all(&seq.to_be_bytes()).await?;
            stdin.write_all(frame).await?;
            stdin.flush().await?;
            *sent_flag = true;
            let (got, len) = loop {
                let got = stdout.read_u64().await?;
                let len = stdout.read_u32().await? as usize;
                if got != seq | LIVE_OUTPUT || len > MAX_FRAME {
                    break (got, len);
                }
                let mut buf = Vec::with_capacity(len.min(1 << 16));
                (&mut *stdout)
                    .take(len as u64)
                    .read_to_end(&mut buf)
                    .await?;
                if let Ok((_, output)) = super::protocol::decode_call_reply(&buf) {
                    super::write_output(logs, output);
                }
            };
            if got != seq {
                *broken_flag = Some(format!("reply numbered {got} to request {seq}"));
            } else if len > MAX_FRAME {
                *broken_flag = Some(format!(
                    "a reply of {len} bytes, over the limit of {MAX_FRAME}"
                ));
            }
            if broken_flag.is_some() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            let mut buf = Vec::with_capacity(len.min(1 << 20));
            let got = (&mut *stdout)
                .take(len as u64)
                .read_to_end(&mut buf)
                .await?;
            if got < len {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok::<_, std::io::Error>(buf)
        };
        // The process we started may die while something it left behind
        // (a half-started sandbox) still holds the pipes open: its exit
        // alone ends the request.
        let exited = async {
            match self.child.as_mut() {
                Some(child) => child.wait().await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            reply = tokio::time::timeout(timeout, exchange) => reply,
            status = exited => Ok(Err(match status {
                Ok(status) => std::io::Error::other(describe_exit(status, self.sandboxed, self.harness_pid.is_some())),
                Err(e) => e,
            })),
        };
        match outcome {
            Ok(Ok(buf)) => {
                // Bytes already waiting after the reply: the code wrote frames
                // of its own on the protocol pipe. The reply stands (it is
                // this function's to make), but the container stays marked
                // busy, so it is killed rather than answering the next
                // request with a stale frame.
                self.busy =
                    !self.stdout.buffer().is_empty() || pending_bytes(self.stdout.get_ref()) > 0;
                Ok(buf)
            }
            Ok(Err(_)) if broken.is_some() => {
                kill_group(self.pid);
                Err(Failure::Protocol(broken.unwrap_or_default()))
            }
            Ok(Err(io)) => {
                // A write that failed (no reader left) or a request still in
                // the pipe: the process was gone before it took it in.
                let not_run = !sent || self.unread_request_bytes() > 0;
                let how = self.exit_description(io).await;
                kill_group(self.pid);
                // What it wrote last explains the crash: read it all first.
                let mut drained = self.stderr_drained.clone();
                let _ = tokio::time::timeout(STDERR_SETTLE, drained.wait_for(|d| *d)).await;
                Err(if not_run {
                    Failure::NotRun(how)
                } else {
                    Failure::Died(how)
                })
            }
            Err(_) => {
                kill_group(self.pid);
                Err(Failure::TimedOut)
            }
        }
    }

    /// Explains a failure, with the tail of the container's stderr.
    pub(crate) fn explain(&self, failure: Failure) -> String {
        let what = match failure {
            Failure::Died(how) | Failure::NotRun(how) => how,
            Failure::TimedOut => "did not answer in time".to_owned(),
            Failure::Protocol(what) => format!(
                "container broke the harness protocol ({what}): the function's code wrote on the harness's pipe; it was killed"
            ),
        };
        let tail = self.stderr_tail();
        if tail.is_empty() {
            what
        } else {
            format!("{what}; last stderr:\n{tail}")
        }
    }

    pub(crate) fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().recover();
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    async fn exit_description(&mut self, io: std::io::Error) -> String {
        let Some(child) = self.child.as_mut() else {
            return format!("container pipe failed: {io}");
        };
        match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            Ok(Ok(status)) => describe_exit(status, self.sandboxed, self.harness_pid.is_some()),
            _ => {
                kill_group(self.pid);
                format!("container stopped answering ({io})")
            }
        }
    }
}

/// The signal that ended a process, if one did: bubblewrap exits with
/// 128 + N when the program it ran was killed by signal N.
fn exit_signal(status: ExitStatus, sandboxed: bool) -> Option<i32> {
    status.signal().or_else(|| {
        status
            .code()
            .filter(|c| sandboxed && (129..=128 + 64).contains(c))
            .map(|c| c - 128)
    })
}

/// A human description of how a process ended. bubblewrap exits with
/// 128 + N when the program it ran was killed by signal N.
/// `cpu_limited`: the container had a CPU limit set, whose hard stop (a
/// second past the soft one) is a SIGKILL.
fn describe_exit(status: ExitStatus, sandboxed: bool, cpu_limited: bool) -> String {
    if let Some(sig) = exit_signal(status, sandboxed) {
        let name = match sig {
            libc::SIGKILL if cpu_limited => {
                " (SIGKILL: killed from outside, or the input ran past the hard stop of limits.cpu_s)"
            }
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGBUS => " (SIGBUS)",
            libc::SIGXCPU => " (SIGXCPU: the input used more CPU time than limits.cpu_s allows)",
            libc::SIGXFSZ => " (SIGXFSZ: a file grew past limits.file_size_mib)",
            libc::SIGPROF => " (SIGPROF: an input held the interpreter past its timeout)",
            _ => "",
        };
        format!("container was killed by signal {sig}{name}")
    } else {
        format!("container exited with code {}", status.code().unwrap_or(-1))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        kill_group(self.pid);
        let live = self.live.clone();
        let pid = self.pid;
        let confined = self.confined.take();
        if let Some(mut child) = self.child.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        let _ = child.wait().await;
                        live.remove(pid);
                        if let Some(confined) = confined.and_then(Arc::into_inner) {
                            confined.remove().await;
                        }
                    });
                }
                Err(_) => {
                    let _ = child.start_kill();
                    live.remove(pid);
                }
            }
        }
    }
}

/// Where a container's stderr goes: a bounded tail to explain a crash, and
/// the logs of the request it belongs to.
struct StderrTo {
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
    sinks: Arc<Mutex<VecDeque<LogSink>>>,
    redact: Arc<std::sync::OnceLock<crate::redact::Redactor>>,
}

async fn drain_stderr(mut stderr: tokio::process::ChildStderr, to: StderrTo) {
    // Read in chunks with a bounded line: code printing without newlines (or
    // gigabytes) cannot grow the runtime's memory.
    let mut buf = vec![0u8; 64 << 10];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    // An empty line is held back one line: the done mark starts with a
    // newline of its own, which is not the function's.
    let mut blank = false;
    // What goes to the current request's logs, sent a read at a time (a
    // message per line cost ~64 bytes a line in the log writer's queue).
    let mut pending = String::new();
    let send = |pending: &mut String| {
        if pending.is_empty() {
            return;
        }
        let text = std::mem::take(pending);
        if let Some(sink) = to.sinks.lock().recover().front() {
            sink.write(crate::compute::LogStream::Stderr, text);
        }
    };
    let mut keep = |line: &[u8], cut: bool, pending: &mut String| {
        let mut tail = to.tail.lock().recover();
        if line == DONE_MARK {
            // A request ended: what came before was its own.
            tail.clear();
            send(pending);
            to.sinks.lock().recover().pop_front();
            blank = false;
            return;
        }
        let mut text = String::from_utf8_lossy(line).into_owned();
        if cut {
            text.push_str(" [line truncated]");
        }
        // Kept only redacted: the excerpt may reach errors, answers and logs.
        if let Some(redact) = to.redact.get() {
            redact.redact_in_place(&mut text);
        }
        // The text itself is not logged: it may hold a secret the code
        // read; it reaches callers only redacted, in a crash's error and the
        // request's own logs.
        tracing::debug!(target: "modal_agents::container", pid = to.pid, bytes = line.len(), "container stderr line");
        // Kept for the request it belongs to (dropped by `send` when no
        // request is outstanding): no lock per line.
        if std::mem::take(&mut blank) {
            pending.push('\n');
        }
        if text.is_empty() {
            blank = true;
        } else {
            pending.push_str(&text);
            pending.push('\n');
        }
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(text);
    };
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                keep(&line, cut, &mut pending);
                line.clear();
                cut = false;
            } else if line.len() < MAX_STDERR_LINE {
                line.push(b);
            } else {
                cut = true;
            }
        }
        send(&mut pending);
    }
    if !line.is_empty() || cut {
        keep(&line, cut, &mut pending);
    }
    send(&mut pending);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 50 MB on stderr without a newline keeps one bounded line.
    /// Children are found with or without `/proc/P/task/P/children`.
    #[tokio::test]
    async fn children_are_found_by_parent_pid_too() {
        let mut child = Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let me = std::process::id();
        assert!(children_of(me).contains(&pid));
        assert!(children_by_ppid(me).contains(&pid));

        child.kill().await.unwrap();
    }

    #[tokio::test]
    async fn stderr_without_newlines_stays_bounded() {
        let mut child = Command::new("sh")
            .args([
                "-c",
                "head -c 50000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo done >&2",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let to = StderrTo {
            pid: 0,
            tail: tail.clone(),
            sinks: Default::default(),
            redact: Default::default(),
        };
        drain_stderr(stderr, to).await;
        child.wait().await.unwrap();
        let tail = tail.lock().unwrap();
        assert_eq!(
            tail.len(),
            2,
            "{:?}",
            tail.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(tail[0].len() <= MAX_STDERR_LINE + 20 && tail[0].ends_with("[line truncated]"));
        assert_eq!(tail[1], "done");
    }
}
