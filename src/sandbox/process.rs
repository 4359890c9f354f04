//! A sandbox process: its output kept in a file of framed chunks (so
//! followers resume by offset and nothing is held in memory), its stdin,
//! signals, and the one typed [`Outcome`] it ends with.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::watch;

use super::jail::{self, Report, Started};
use crate::redact::Redactor;
use crate::sync::Recover;
use crate::wire::{EndReason, Outcome, ProcessState, ProcessView};

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One chunk of a process's output, and the offset just after it (a
/// follower resumes there).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputChunk {
    /// Its stream.
    pub stream: Stream,
    /// The text (UTF-8, known secrets redacted).
    pub text: String,
    /// Where the next chunk starts.
    pub next: u64,
}

/// Why the runtime ends a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stop {
    TimedOut(f64),
    SandboxEnded(EndReason),
    /// The sandbox's files passed its disk quota (MiB).
    DiskQuota(u64),
}

/// A running or ended process.
pub(crate) struct Process {
    pub(crate) id: String,
    pub(crate) cmd: Vec<String>,
    pub(crate) started_at: DateTime<Utc>,
    /// The output file: frames of `[stream: u8][len: u32 LE][bytes]`.
    pub(crate) output: PathBuf,
    /// Bytes in the output file; followers wait on it.
    pub(crate) written: watch::Sender<u64>,
    pub(crate) total: [AtomicU64; 2],
    /// Bytes past the per-stream cap, counted, not kept.
    pub(crate) dropped: AtomicU64,
    pub(crate) stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    /// The jail's pid 1 as the host sees it, once bubblewrap said.
    host_pid: OnceLock<u32>,
    info: Mutex<Option<OwnedFd>>,
    /// The wrapper's pipe, and what it has said so far (`ready`, then how
    /// the command ended).
    status: Mutex<(Option<OwnedFd>, String)>,
    group: u32,
    /// Set when the runtime stops it.
    stop: watch::Sender<Option<Stop>>,
    /// The signal a kill request sent last.
    killed_with: Mutex<Option<i32>>,
    pub(crate) ended: watch::Sender<Option<(Outcome, DateTime<Utc>)>>,
}

impl Process {
    pub(crate) fn view(&self) -> ProcessView {
        let ended = self.ended.borrow().clone();
        ProcessView {
            process_id: self.id.clone(),
            cmd: self.cmd.clone(),
            state: if ended.is_some() {
                ProcessState::Ended
            } else {
                ProcessState::Running
            },
            outcome: ended.as_ref().map(|e| e.0.clone()),
            started_at: self.started_at,
            ended_at: ended.map(|e| e.1),
            stdout_bytes: self.total[0].load(Ordering::Relaxed),
            stderr_bytes: self.total[1].load(Ordering::Relaxed),
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.ended.borrow().is_none()
    }

    /// The runtime stops it (a timeout, its sandbox's end).
    pub(crate) fn stop(&self, why: Stop) {
        self.stop.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Reads what the wrapper has said since; whether it said `ready`
    /// (signals are forwarded from then on).
    fn ready(&self) -> bool {
        let mut status = self.status.lock().recover();
        let (fd, text) = &mut *status;
        if let Some(fd) = fd.as_ref() {
            if text.len() < 4096 {
                text.push_str(&jail::read_now(fd));
            }
        }
        text.starts_with("ready")
    }

    fn host_pid(&self) -> Option<u32> {
        if let Some(pid) = self.host_pid.get() {
            return Some(*pid);
        }
        let info = self.info.lock().recover();
        let pid = jail::parse_info(&jail::read_now(info.as_ref()?))?;
        Some(*self.host_pid.get_or_init(|| pid))
    }

    /// Sends `signal` to the command (through the jail's pid 1, which
    /// forwards it; SIGKILL ends the whole jail).
    pub(crate) async fn signal(&self, signal: i32) {
        *self.killed_with.lock().recover() = Some(signal);
        // Just started: a signal before the wrapper forwards them (or
        // before bubblewrap said where the jail is) would be lost.
        for _ in 0..200 {
            if (self.host_pid().is_some() && self.ready()) || !self.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let target = match self.host_pid() {
            Some(pid) => pid as libc::pid_t,
            // Not started far enough to say: the whole group.
            None => -(self.group as libc::pid_t),
        };
        // SAFETY: kill(2) on a process (or group) this runtime started.
        unsafe { libc::kill(target, signal) };
    }

    fn kill_all(&self) {
        if let Some(pid) = self.host_pid() {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        // SAFETY: as above; the group bubblewrap leads.
        unsafe { libc::kill(-(self.group as libc::pid_t), libc::SIGKILL) };
    }

    /// Waits up to `wait` for it to end; its outcome if it did.
    pub(crate) async fn wait(&self, wait: Duration) -> Option<(Outcome, DateTime<Utc>)> {
        let mut rx = self.ended.subscribe();
        let done = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match done {
            Ok(Ok(v)) => v.clone(),
            _ => self.ended.borrow().clone(),
        }
    }
}

/// What [`spawn`] needs besides the jail.
pub(crate) struct Spawn {
    pub(crate) id: String,
    pub(crate) cmd: Vec<String>,
    pub(crate) output: PathBuf,
    pub(crate) keep: u64,
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) stdin_open: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) redact: Redactor,
    /// Told when the process has ended.
    pub(crate) on_end: Box<dyn FnOnce() + Send>,
    /// Kills for memory in the sandbox's group so far, read anew at the end.
    pub(crate) oom_kills: Arc<dyn Fn() -> u64 + Send + Sync>,
}

/// Starts watching a started jail; the process is returned at once, and a
/// task (on `tasks`) drives it to its outcome.
pub(crate) fn spawn(
    started: Started,
    s: Spawn,
    tasks: &tokio_util::task::TaskTracker,
) -> std::io::Result<Arc<Process>> {
    let Started {
        mut child,
        status,
        info,
    } = started;
    let group = child.id().unwrap_or_default();
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&s.output)?;
    // The pipe is the process's from the start, held until the stdin given
    // with the exec is written: a write that comes at once (the exec
    // answered with wait_s 0) waits for it instead of finding no stdin.
    let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));
    let held_stdin = stdin.clone().try_lock_owned().expect("a new lock is free");
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let process = Arc::new(Process {
        id: s.id,
        cmd: s.cmd,
        started_at: Utc::now(),
        output: s.output,
        written: watch::channel(0).0,
        total: [AtomicU64::new(0), AtomicU64::new(0)],
        dropped: AtomicU64::new(0),
        stdin,
        host_pid: OnceLock::new(),
        info: Mutex::new(Some(info)),
        status: Mutex::new((Some(status), String::new())),
        group,
        stop: watch::channel(None).0,
        killed_with: Mutex::new(None),
        ended: watch::channel(None).0,
    });
    let p = process.clone();
    let oom_before = (s.oom_kills)();
    // Stdin: written, then closed unless kept open, beside the output and
    // the clock: a process that prints before it reads (or never reads) is
    // neither stuck on a full output pipe nor spared its timeout. The write
    // gives up once the process has exited.
    let (exited, exit_seen) = tokio::sync::oneshot::channel::<()>();
    let (bytes, stdin_open) = (s.stdin, s.stdin_open);
    tasks.spawn(async move {
        let mut held_stdin = held_stdin;
        if let (Some(pipe), Some(bytes)) = (held_stdin.as_mut(), bytes) {
            tokio::select! {
                _ = pipe.write_all(&bytes) => {}
                _ = exit_seen => {}
            }
        }
        if !stdin_open {
            *held_stdin = None;
        }
    });
    tasks.spawn(async move {
        let writer = Arc::new(tokio::sync::Mutex::new(Writer {
            file: tokio::fs::File::from_std(file),
            at: 0,
            keep: s.keep,
            kept: [0, 0],
        }));
        let out = pump(
            stdout,
            Stream::Stdout,
            writer.clone(),
            p.clone(),
            s.redact.clone(),
        );
        let err = pump(stderr, Stream::Stderr, writer.clone(), p.clone(), s.redact);
        let pumps = tokio::spawn(async move { tokio::join!(out, err) });
        let mut stop = p.stop.subscribe();
        let timeout = async {
            match s.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let stopped = tokio::select! {
            status = child.wait() => { let _ = status; None }
            _ = timeout => Some(Stop::TimedOut(s.timeout.map_or(0.0, |t| t.as_secs_f64()))),
            why = stop.wait_for(Option::is_some) => why.ok().and_then(|w| *w),
        };
        if stopped.is_some() {
            p.kill_all();
        }
        let bwrap = child.wait().await.ok();
        drop(exited);
        // The jail is gone, and so every writer of its pipes: the output
        // ends soon. A descendant that escaped the jail's death cannot
        // hold the answer back for long.
        let _ = tokio::time::timeout(Duration::from_secs(5), pumps).await;
        *p.stdin.lock().await = None;
        p.ready();
        let report = {
            let mut st = p.status.lock().recover();
            st.0 = None;
            jail::parse_report(&st.1)
        };
        let oom = (s.oom_kills)() > oom_before;
        let killed = *p.killed_with.lock().recover();
        let outcome = match (stopped, report) {
            (Some(Stop::TimedOut(after_s)), _) => Outcome::TimedOut { after_s },
            (Some(Stop::SandboxEnded(reason)), _) => Outcome::SandboxEnded { reason },
            (Some(Stop::DiskQuota(limit_mib)), _) => Outcome::DiskQuotaExceeded { limit_mib },
            (None, Some(Report::Signal(9))) if oom && killed != Some(9) => Outcome::OutOfMemory,
            (None, Some(Report::Exit(code))) => Outcome::Exited { code },
            (None, Some(Report::Signal(signal))) => Outcome::Signaled { signal },
            // The wrapper said nothing: the jail itself was killed.
            (None, None) if oom && killed.is_none() => Outcome::OutOfMemory,
            (None, None) => match killed {
                Some(signal) => Outcome::Signaled { signal },
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    match bwrap.and_then(|b| b.signal()) {
                        Some(signal) => Outcome::Signaled { signal },
                        None => Outcome::Signaled {
                            signal: libc::SIGKILL,
                        },
                    }
                }
            },
        };
        let _ = writer.lock().await.file.flush().await;
        // Its pipes close with it: an ended process holds no descriptor.
        *p.info.lock().recover() = None;
        p.ended.send_replace(Some((outcome, Utc::now())));
        (s.on_end)();
    });
    Ok(process)
}

struct Writer {
    file: tokio::fs::File,
    at: u64,
    keep: u64,
    kept: [u64; 2],
}

impl Writer {
    /// Appends `text` (what fits under the cap); the file's new length and
    /// the bytes left out.
    async fn append(&mut self, stream: Stream, text: &str) -> (u64, usize) {
        let i = stream as usize;
        let room = self.keep.saturating_sub(self.kept[i]) as usize;
        let whole = text.len();
        let mut text = text;
        if text.len() > room {
            let mut cut = room;
            while cut > 0 && !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text = &text[..cut];
        }
        let dropped = whole - text.len();
        if text.is_empty() {
            return (self.at, dropped);
        }
        let mut frame = Vec::with_capacity(text.len() + 5);
        frame.push(i as u8);
        frame.extend_from_slice(&(text.len() as u32).to_le_bytes());
        frame.extend_from_slice(text.as_bytes());
        if self.file.write_all(&frame).await.is_ok() {
            self.at += frame.len() as u64;
            self.kept[i] += text.len() as u64;
        }
        (self.at, dropped)
    }
}

/// Copies one stream into the output file, as UTF-8 with secrets
/// redacted (a value split across reads is held back until it is whole).
async fn pump(
    pipe: Option<impl AsyncRead + Unpin>,
    stream: Stream,
    writer: Arc<tokio::sync::Mutex<Writer>>,
    p: Arc<Process>,
    redact: Redactor,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 64 << 10];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let eof = n == 0;
        p.total[stream as usize].fetch_add(n as u64, Ordering::Relaxed);
        pending.extend_from_slice(&buf[..n]);
        // Whole characters only, unless this is the end.
        let valid = match std::str::from_utf8(&pending) {
            Ok(_) => pending.len(),
            Err(e) if e.error_len().is_none() && !eof => e.valid_up_to(),
            Err(_) => pending.len(),
        };
        let mut text = String::from_utf8_lossy(&pending[..valid]).into_owned();
        let rest = pending.split_off(valid);
        let hold = if eof {
            0
        } else {
            redact.unfinished_tail(&text)
        };
        let held = text.split_off(text.len() - hold);
        pending = held.into_bytes();
        pending.extend_from_slice(&rest);
        if !text.is_empty() {
            let clean = redact.redact(&text);
            let (at, dropped) = writer.lock().await.append(stream, &clean).await;
            p.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            p.written.send_replace(at);
        }
        if eof {
            return;
        }
    }
}

/// Reads the chunks of an output file from `offset`, at most `max` bytes of
/// text (at least one chunk).
pub(crate) fn read_chunks(path: &std::path::Path, offset: u64, max: usize) -> Vec<OutputChunk> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    let Ok(mut file) = std::fs::File::open(path) else {
        return out;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return out;
    }
    let mut at = offset;
    let mut size = 0usize;
    loop {
        let mut head = [0u8; 5];
        if file.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut text = vec![0u8; len];
        if file.read_exact(&mut text).is_err() {
            break;
        }
        at += 5 + len as u64;
        size += len;
        out.push(OutputChunk {
            stream: if head[0] == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            },
            text: String::from_utf8_lossy(&text).into_owned(),
            next: at,
        });
        if size >= max {
            break;
        }
    }
    out
}

/// The last `max` bytes of each stream, and whether anything was left out.
pub(crate) fn tails(path: &std::path::Path, max: usize) -> (String, String, bool) {
    let mut streams = [String::new(), String::new()];
    let mut cut = false;
    let mut offset = 0;
    loop {
        let chunks = read_chunks(path, offset, 1 << 20);
        let Some(last) = chunks.last() else { break };
        offset = last.next;
        for c in chunks {
            let s = &mut streams[c.stream as usize];
            s.push_str(&c.text);
            if s.len() > 2 * max {
                let mut from = s.len() - max;
                while !s.is_char_boundary(from) {
                    from += 1;
                }
                s.drain(..from);
                cut = true;
            }
        }
    }
    for s in &mut streams {
        if s.len() > max {
            let mut from = s.len() - max;
            while !s.is_char_boundary(from) {
                from += 1;
            }
            s.drain(..from);
            cut = true;
        }
    }
    let [out, err] = streams;
    (out, err, cut)
}
