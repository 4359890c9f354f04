//! The bridge process: `bridge.py` under the SDK's interpreter, spoken to in
//! JSON lines. Many requests are in flight at once; each answer is routed to
//! its request by id. If the process dies, every waiting request fails with
//! the tail of its stderr, and the next request starts a new one.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::compute::BackendError;
use crate::sync::Recover;
use crate::task::TaskError;

/// The bridge's source, shipped inside the crate.
const BRIDGE: &str = include_str!("bridge.py");

/// How the bridge is started.
#[derive(Debug, Clone)]
pub(crate) struct BridgeArgs {
    pub(crate) python: PathBuf,
    /// The whole environment of the process.
    pub(crate) env: Vec<(String, String)>,
}

/// A running bridge process.
#[derive(Debug)]
pub(crate) struct Bridge {
    child: Mutex<Option<Child>>,
    writer: mpsc::UnboundedSender<String>,
    pending: Arc<DashMap<u64, mpsc::UnboundedSender<Value>>>,
    next: AtomicU64,
    dead: Arc<AtomicBool>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// An answer to a one-shot request: Modal's (or the function's) error, or a value.
pub(crate) type Answer = Result<Value, TaskError>;

impl Bridge {
    pub(crate) fn start(args: &BridgeArgs) -> Result<Bridge, BackendError> {
        let mut cmd = Command::new(&args.python);
        // -I: nothing from the working directory or PYTHON* variables is
        // imported in place of the SDK.
        cmd.args(["-I", "-c"])
            .arg(BRIDGE)
            .arg("modal-agents-bridge")
            .env_clear()
            .envs(args.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; the bridge dies with the runtime.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            BackendError::Modal(format!(
                "cannot start the bridge ({}): {e}",
                args.python.display()
            ))
        })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let pending: Arc<DashMap<u64, mpsc::UnboundedSender<Value>>> = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let tail = Arc::new(Mutex::new(VecDeque::new()));

        let (writer, mut lines) = mpsc::unbounded_channel::<String>();
        let dead_w = dead.clone();
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    dead_w.store(true, Ordering::SeqCst);
                    break;
                }
            }
        });
        let (routes, dead_r) = (pending.clone(), dead.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let msg = match serde_json::from_str::<Value>(&line) {
                    Ok(msg) => msg,
                    Err(e) => {
                        // The bridge writes strict JSON; should a line still
                        // be unreadable, its request fails rather than waits.
                        tracing::warn!(error = %e, "the bridge wrote a line that is not JSON");
                        match line_id(&line) {
                            Some(id) => json!({"id": id, "err": {"type": "ProtocolError",
                                "message": format!("the Modal bridge sent an unreadable answer ({e})")}}),
                            None => continue,
                        }
                    }
                };
                let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                    continue;
                };
                let last = msg.get("ok").is_some() || msg.get("err").is_some();
                let route = if last {
                    routes.remove(&id).map(|(_, tx)| tx)
                } else {
                    routes.get(&id).map(|tx| tx.clone())
                };
                if let Some(tx) = route {
                    let _ = tx.send(msg);
                }
            }
            dead_r.store(true, Ordering::SeqCst);
            // Dropping the senders tells every waiter the bridge is gone.
            routes.clear();
        });
        let tail_w = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "modal_agents::bridge", "{line}");
                let mut tail = tail_w.lock().recover();
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Ok(Bridge {
            child: Mutex::new(Some(child)),
            writer,
            pending,
            next: AtomicU64::new(1),
            dead,
            stderr: tail,
        })
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn gone(&self) -> BackendError {
        let tail = self.stderr.lock().recover();
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        BackendError::Modal(format!("the bridge process exited: {}", tail.join("\n")))
    }

    /// Sends `msg` (an object; its `id` is set here) and returns the id and
    /// the channel its answers arrive on.
    pub(crate) fn open(
        &self,
        mut msg: Value,
    ) -> Result<(u64, mpsc::UnboundedReceiver<Value>), BackendError> {
        if self.is_dead() {
            return Err(self.gone());
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        msg["id"] = json!(id);
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending.insert(id, tx);
        self.send(&msg)?;
        Ok((id, rx))
    }

    /// Sends a message that gets no answer routed back (map inputs).
    pub(crate) fn send(&self, msg: &Value) -> Result<(), BackendError> {
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.send(line).map_err(|_| self.gone())
    }

    /// One request, its answer within `timeout`.
    pub(crate) async fn request(
        &self,
        msg: Value,
        timeout: Duration,
    ) -> Result<Answer, BackendError> {
        let op = msg["op"].as_str().unwrap_or("?").to_owned();
        let (id, mut rx) = self.open(msg)?;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(answer)) => Ok(answer_of(&answer)),
            Ok(None) => Err(self.gone()),
            Err(_) => {
                self.pending.remove(&id);
                Err(BackendError::Modal(format!(
                    "the bridge did not answer `{op}` within {} s",
                    timeout.as_secs()
                )))
            }
        }
    }

    pub(crate) fn kill(&self) {
        if let Some(mut child) = self.child.lock().recover().take() {
            let _ = child.start_kill();
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(child) = self.child.get_mut().ok().and_then(Option::as_mut) {
            let _ = child.start_kill();
        }
    }
}

/// The request id a line starts with (`{"id":N,` as the bridge writes it).
fn line_id(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"id\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// `{"ok": v}` or `{"err": {...}}` as a result.
pub(crate) fn answer_of(msg: &Value) -> Answer {
    match msg.get("err") {
        Some(err) => Err(task_error(err)),
        None => Ok(msg.get("ok").cloned().unwrap_or(Value::Null)),
    }
}

pub(crate) fn task_error(err: &Value) -> TaskError {
    let kind = err["type"].as_str().map_or(
        crate::task::ErrorKind::ModalError,
        crate::task::ErrorKind::from_name,
    );
    let mut e = TaskError::new(kind, err["message"].as_str().unwrap_or_default());
    e.traceback = err["traceback"].as_str().map(str::to_owned);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_line_still_names_its_request() {
        assert_eq!(line_id(r#"{"id":42,"ok":"\ud800"}"#), Some(42));
        assert_eq!(line_id(r#"{"id":7}"#), Some(7));
        assert_eq!(line_id(r#"{"ok":1}"#), None);
        assert_eq!(line_id("garbage"), None);
    }
}
