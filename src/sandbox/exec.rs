//! Running commands in a sandbox: exec, wait, output, stdin and signals.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, Stream as FutStream};

use super::jail::{self, JailSpec};
use super::process::{self, OutputChunk, Process, Spawn};
use super::{check_env, short, Sandbox, SandboxError, Sandboxes};
use crate::sync::Recover;
use crate::wire::{
    ExecRequest, ExecResult, ProcessView, StdinRequest, MAX_SANDBOX_TIMEOUT_S, MAX_SANDBOX_WAIT_S,
};

/// Most bytes of each stream an exec or wait answer carries (1 MiB).
pub const MAX_ANSWER_OUTPUT: usize = 1 << 20;
/// Most arguments of one command.
const MAX_ARGS: usize = 4096;
/// Most bytes of one command's arguments together.
const MAX_ARG_BYTES: usize = 256 << 10;
/// Most bytes of a command line and its environment together (1 MiB; the
/// system takes 2 MiB, the jail's own arguments need some).
const MAX_EXEC_BYTES: usize = 1 << 20;
/// Ended processes a sandbox remembers (the oldest are forgotten).
const KEPT_PROCESSES: usize = 1000;

/// A signal by number or name (`9`, `KILL`, `SIGTERM`).
pub(crate) fn parse_signal(value: Option<&serde_json::Value>) -> Result<i32, SandboxError> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("TERM", libc::SIGTERM),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
    ];
    let accepted = "a signal number 1 to 31 or a name: HUP INT QUIT KILL USR1 USR2 TERM CONT STOP";
    match value {
        None | Some(serde_json::Value::Null) => Ok(libc::SIGKILL),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .filter(|n| (1..=31).contains(n))
            .map(|n| n as i32)
            .ok_or_else(|| {
                SandboxError::invalid("signal", format!("got {n}; expected {accepted}"))
            }),
        Some(serde_json::Value::String(s)) if s.parse::<i64>().is_ok() => parse_signal(Some(
            &serde_json::Value::from(s.parse::<i64>().unwrap_or(0)),
        )),
        Some(serde_json::Value::String(s)) => {
            let name = s.to_ascii_uppercase();
            let name = name.strip_prefix("SIG").unwrap_or(&name);
            NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    SandboxError::invalid(
                        "signal",
                        format!("got {:?}; expected {accepted}", short(s)),
                    )
                })
        }
        Some(other) => Err(SandboxError::invalid(
            "signal",
            format!("got {}; expected {accepted}", short(&other.to_string())),
        )),
    }
}

impl Sandboxes {
    /// Ends sandbox `id` once its process `process_id` has ended: for a
    /// sandbox made to run one command (`run_code`). The sandbox's lifetime
    /// still bounds it; a runtime stopping ends it anyway.
    pub(crate) fn end_when_done(&self, id: &str, process_id: &str) {
        let Ok(sandbox) = self.get(id) else { return };
        let Ok(p) = self.process(&sandbox, process_id) else {
            return;
        };
        let this = self.clone();
        let stop = self.shared.shutdown.clone();
        self.shared.tasks.spawn(async move {
            tokio::select! {
                _ = p.wait(Duration::from_secs(crate::wire::MAX_SANDBOX_TIMEOUT_S)) => {
                    this.end(&sandbox, super::EndReason::Terminated, None, false).await;
                }
                () = stop.cancelled() => {}
            }
        });
    }

    fn process(&self, sandbox: &Sandbox, process_id: &str) -> Result<Arc<Process>, SandboxError> {
        let n = process_id
            .strip_prefix('p')
            .and_then(|n| n.parse::<u64>().ok());
        let live = sandbox.live.lock().recover();
        n.and_then(|n| live.processes.get(&n).cloned())
            .ok_or_else(|| SandboxError::UnknownProcess {
                sandbox: sandbox.id.clone(),
                process: short(process_id),
            })
    }

    /// Starts `req.cmd` in sandbox `id`; waits up to `req.wait_s` for it.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, SandboxError> {
        let sandbox = self.get(id)?;
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(SandboxError::invalid(
                "cmd",
                "expected a command: [program, args...]",
            ));
        }
        if req.cmd.len() > MAX_ARGS
            || req.cmd.iter().map(String::len).sum::<usize>() > MAX_ARG_BYTES
            || req.cmd.iter().any(|a| a.contains('\0'))
        {
            return Err(SandboxError::invalid(
                "cmd",
                format!(
                    "at most {MAX_ARGS} arguments of {MAX_ARG_BYTES} bytes together, without NUL"
                ),
            ));
        }
        check_env("env", &req.env)?;
        let wait_s = req.wait_s.unwrap_or(0);
        if wait_s > MAX_SANDBOX_WAIT_S {
            return Err(SandboxError::invalid(
                "wait_s",
                format!(
                    "got {wait_s}; expected 0 to {MAX_SANDBOX_WAIT_S} (then wait on the process)"
                ),
            ));
        }
        if let Some(t) = req.timeout_s {
            if !(1..=MAX_SANDBOX_TIMEOUT_S).contains(&t) {
                return Err(SandboxError::invalid(
                    "timeout_s",
                    format!("got {t}; expected 1 to {MAX_SANDBOX_TIMEOUT_S} seconds"),
                ));
            }
        }
        let cwd = match &req.cwd {
            None => sandbox.workdir.clone(),
            Some(c) => self.existing_dir(&sandbox, c, "cwd").await?,
        };
        // The command line and the environment together, under what the
        // system takes (with room for the jail's own arguments).
        let size = req.cmd.iter().map(|a| a.len() + 1).sum::<usize>()
            + sandbox
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .chain(req.env.iter().map(|(k, v)| k.len() + v.len() + 2))
                .sum::<usize>();
        if size > MAX_EXEC_BYTES {
            return Err(SandboxError::invalid(
                "env",
                format!(
                    "the command and the environment come to {size} bytes; at most {MAX_EXEC_BYTES} are accepted together"
                ),
            ));
        }
        let env = self.env().await?;
        sandbox.touch()?;
        let n = sandbox.next_process.fetch_add(1, Ordering::Relaxed);
        let max = self.shared.config.max_processes;
        {
            let mut live = sandbox.live.lock().recover();
            if let Some(used_mib) = live.over_quota {
                return Err(SandboxError::OverQuota {
                    used_mib,
                    limit_mib: sandbox.request.limits.disk_mib,
                });
            }
            if live.processes.values().filter(|p| p.is_running()).count() >= max {
                return Err(SandboxError::TooManyProcesses { max });
            }
            // Forget the oldest ended ones past the bound.
            while live.processes.len() >= KEPT_PROCESSES {
                let Some(old) = live
                    .processes
                    .iter()
                    .find(|(_, p)| !p.is_running())
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                if let Some(p) = live.processes.remove(&old) {
                    let _ = std::fs::remove_file(&p.output);
                }
            }
        }
        let mut vars = sandbox.env.clone();
        vars.extend(req.env.clone());
        // A stdin given whole (not kept open) is read from a file: nothing
        // of it stays in this process's memory while the program has not
        // read it.
        let mut stdin = req.stdin.map(String::into_bytes);
        let stdin_file = match stdin.take_if(|_| !req.stdin_open) {
            Some(bytes) => {
                let path = sandbox.host.join("procs").join(format!("p{n}.stdin"));
                Some(
                    tokio::task::spawn_blocking(move || stdin_file(&path, &bytes))
                        .await
                        .map_err(std::io::Error::other)??,
                )
            }
            None => None,
        };
        let started = jail::start(JailSpec {
            bwrap: &env.bwrap,
            python: &env.python,
            binds: &sandbox.binds,
            read_only: &sandbox.read_only,
            network: matches!(
                sandbox.request.network,
                crate::wire::SandboxNetwork::All(true)
            ),
            cwd: &cwd,
            env: vars,
            cmd: &req.cmd,
            confined: sandbox.confined(),
            open_files: sandbox.request.limits.open_files.into(),
            // No one file passes the disk quota.
            file_size: Some(
                sandbox
                    .request
                    .limits
                    .file_size_mib
                    .unwrap_or(u64::MAX >> 20)
                    .min(sandbox.request.limits.disk_mib)
                    << 20,
            ),
            stdin: stdin_file,
        })
        .map_err(|e| match e.raw_os_error() {
            Some(libc::E2BIG) => SandboxError::invalid(
                "env",
                "the command line and environment together are past the system's limit",
            ),
            _ => e.into(),
        })?;
        let confined = sandbox.confined();
        let weak = Arc::downgrade(&sandbox);
        let p = process::spawn(
            started,
            Spawn {
                id: format!("p{n}"),
                cmd: req.cmd.clone(),
                output: sandbox.host.join("procs").join(format!("p{n}.out")),
                keep: sandbox.request.limits.output_mib << 20,
                stdin,
                stdin_open: req.stdin_open,
                timeout: req.timeout_s.map(Duration::from_secs),
                redact: self.shared.redact.clone(),
                oom_kills: Arc::new(move || confined.as_ref().map_or(0, |c| c.oom_kills())),
                // The idle clock starts again when a process ends.
                on_end: Box::new(move || {
                    if let Some(sandbox) = weak.upgrade() {
                        sandbox.live.lock().recover().last_active = std::time::Instant::now();
                        sandbox.wake.notify_one();
                    }
                }),
            },
            &self.shared.tasks,
        )?;
        {
            let mut live = sandbox.live.lock().recover();
            live.processes.insert(n, p.clone());
            if live.ended.is_some() {
                // Ended while it started: it goes with the sandbox.
                let reason = live.ended.as_ref().map(|e| e.reason);
                drop(live);
                if let Some(reason) = reason {
                    p.stop(process::Stop::SandboxEnded(reason));
                }
            }
        }
        Ok(self.answer(&p, Duration::from_secs(wait_s)).await)
    }

    async fn answer(&self, p: &Process, wait: Duration) -> ExecResult {
        let ended = p.wait(wait).await;
        let mut result = ExecResult {
            process: p.view(),
            stdout: None,
            stderr: None,
            truncated: false,
        };
        if ended.is_some() {
            let path = p.output.clone();
            let (out, err, cut) =
                tokio::task::spawn_blocking(move || process::tails(&path, MAX_ANSWER_OUTPUT))
                    .await
                    .unwrap_or_default();
            result.stdout = Some(out);
            result.stderr = Some(err);
            result.truncated = cut || p.dropped.load(Ordering::Relaxed) > 0;
        }
        result
    }

    /// A process, waiting up to `wait_s` for it to end (its output with it
    /// once it has).
    pub async fn wait_process(
        &self,
        id: &str,
        process_id: &str,
        wait_s: u64,
    ) -> Result<ExecResult, SandboxError> {
        if wait_s > MAX_SANDBOX_WAIT_S {
            return Err(SandboxError::invalid(
                "wait_s",
                format!("got {wait_s}; expected 0 to {MAX_SANDBOX_WAIT_S}"),
            ));
        }
        let sandbox = self.get(id)?;
        let p = self.process(&sandbox, process_id)?;
        Ok(self.answer(&p, Duration::from_secs(wait_s)).await)
    }

    /// A process as it is now.
    pub fn process_view(&self, id: &str, process_id: &str) -> Result<ProcessView, SandboxError> {
        let sandbox = self.get(id)?;
        Ok(self.process(&sandbox, process_id)?.view())
    }

    /// Writes to a process's stdin (closing it after with `eof`).
    pub async fn write_stdin(
        &self,
        id: &str,
        process_id: &str,
        req: StdinRequest,
    ) -> Result<ProcessView, SandboxError> {
        use base64::Engine;
        use tokio::io::AsyncWriteExt;
        let sandbox = self.get(id)?;
        let p = self.process(&sandbox, process_id)?;
        sandbox.touch()?;
        let bytes = match (req.data, req.data_b64) {
            (Some(_), Some(_)) => {
                return Err(SandboxError::invalid(
                    "data",
                    "give data or data_b64, not both",
                ))
            }
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| SandboxError::invalid("data_b64", format!("not base64: {e}")))?,
            (None, None) => Vec::new(),
        };
        let mut stdin = p.stdin.lock().await;
        let Some(pipe) = stdin.as_mut() else {
            return Err(SandboxError::invalid(
                "process_id",
                format!(
                    "process {} has no open stdin (it ended, stdin was closed, or it was started without stdin_open)",
                    p.id
                ),
            ));
        };
        // A process that never reads cannot hold the request forever.
        let written = tokio::time::timeout(Duration::from_secs(10), pipe.write_all(&bytes)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => *stdin = None,
            Err(_) => {
                return Err(SandboxError::invalid(
                    "data",
                    "the process did not read its stdin for 10 s; nothing more was written",
                ))
            }
        }
        if req.eof {
            *stdin = None;
        }
        drop(stdin);
        Ok(p.view())
    }

    /// Sends a signal to a process (default SIGKILL).
    pub async fn kill_process(
        &self,
        id: &str,
        process_id: &str,
        signal: Option<&serde_json::Value>,
    ) -> Result<ProcessView, SandboxError> {
        let signal = parse_signal(signal)?;
        let sandbox = self.get(id)?;
        let p = self.process(&sandbox, process_id)?;
        if p.is_running() {
            p.signal(signal).await;
        }
        Ok(p.view())
    }

    /// A process's output from byte `offset` of its output file: the chunks
    /// there now, and when `follow`, those that come, until it ends.
    pub fn output(
        &self,
        id: &str,
        process_id: &str,
        offset: u64,
        follow: bool,
    ) -> Result<impl FutStream<Item = OutputEvent> + Send + 'static, SandboxError> {
        let sandbox = self.get(id)?;
        let p = self.process(&sandbox, process_id)?;
        let permit = if follow { Some(self.follower()?) } else { None };
        let written = p.written.subscribe();
        let ended = p.ended.subscribe();
        struct St {
            p: Arc<Process>,
            at: u64,
            written: tokio::sync::watch::Receiver<u64>,
            ended: tokio::sync::watch::Receiver<
                Option<(crate::wire::Outcome, chrono::DateTime<chrono::Utc>)>,
            >,
            queue: std::collections::VecDeque<OutputChunk>,
            done: bool,
            follow: bool,
            _permit: Option<tokio::sync::OwnedSemaphorePermit>,
        }
        let st = St {
            p,
            at: offset,
            written,
            ended,
            queue: Default::default(),
            done: false,
            follow,
            _permit: permit,
        };
        Ok(stream::unfold(st, |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                if let Some(chunk) = st.queue.pop_front() {
                    st.at = chunk.next;
                    return Some((OutputEvent::Chunk(chunk), st));
                }
                let finished = st.ended.borrow().clone();
                let path = st.p.output.clone();
                let at = st.at;
                let chunks =
                    tokio::task::spawn_blocking(move || process::read_chunks(&path, at, 256 << 10))
                        .await
                        .unwrap_or_default();
                if !chunks.is_empty() {
                    st.queue.extend(chunks);
                    continue;
                }
                if let Some((outcome, _)) = finished {
                    st.done = true;
                    return Some((OutputEvent::End(outcome), st));
                }
                if !st.follow {
                    return None;
                }
                tokio::select! {
                    r = st.written.changed() => { let _ = r; }
                    r = st.ended.changed() => { let _ = r; }
                }
            }
        }))
    }
}

/// What a process's output stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    /// A chunk of stdout or stderr.
    Chunk(OutputChunk),
    /// It ended, with this outcome.
    End(crate::wire::Outcome),
}

/// `bytes` written to a new private file at `path`, opened again for
/// reading and unlinked: a process's stdin that lives as long as its
/// descriptor.
fn stdin_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::persist::FILE_MODE)
        .open(path)?;
    file.write_all(bytes)?;
    let reader = std::fs::File::open(path);
    let _ = std::fs::remove_file(path);
    reader
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signals_by_number_or_name() {
        assert_eq!(parse_signal(None).unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal(Some(&json!("term"))).unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal(Some(&json!("SIGINT"))).unwrap(), libc::SIGINT);
        assert_eq!(parse_signal(Some(&json!(15))).unwrap(), 15);
        let e = parse_signal(Some(&json!(99))).unwrap_err().to_string();
        assert!(e.contains("signal") && e.contains("TERM"), "{e}");
        assert!(parse_signal(Some(&json!("NOPE"))).is_err());
    }
}
