//! Following a task's output as it is written: chunks of stdout and stderr
//! from given byte offsets until the task has ended and everything it
//! printed has been read.

use std::io::SeekFrom;
use std::time::Duration;

use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Runtime, RuntimeError};
use crate::compute::LogStream;
use crate::persist::TaskDir;
use crate::task::TaskId;

/// How often a followed log is checked for more while its task runs.
const TAIL_EVERY: Duration = Duration::from_millis(200);
/// Most bytes one chunk carries.
const MAX_CHUNK: usize = 64 << 10;

/// Where a reader of a task's logs is: bytes of stdout and stderr read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOffsets {
    /// Bytes of stdout read.
    pub stdout: u64,
    /// Bytes of stderr read.
    pub stderr: u64,
}

impl std::fmt::Display for LogOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.stdout, self.stderr)
    }
}

impl std::str::FromStr for LogOffsets {
    type Err = String;

    /// `"stdout:stderr"` byte offsets, as [`Display`](std::fmt::Display)
    /// writes them (an SSE event id).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("got {s:?}; expected two byte offsets as \"STDOUT:STDERR\"");
        let (out, err) = s.split_once(':').ok_or_else(bad)?;
        Ok(LogOffsets {
            stdout: out.trim().parse().map_err(|_| bad())?,
            stderr: err.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// A piece of a task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text (whole UTF-8 characters).
    pub text: String,
    /// Where a reader is after this chunk (resume from here).
    pub next: LogOffsets,
}

/// Reads what `stream` has past `*at`, up to [`MAX_CHUNK`] bytes of whole
/// characters (all that is left when `all`), moving `at` on.
async fn read_more(dir: &TaskDir, stream: LogStream, at: &mut u64, all: bool) -> Option<String> {
    let mut file = tokio::fs::File::open(dir.log(stream)).await.ok()?;
    file.seek(SeekFrom::Start(*at)).await.ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_CHUNK as u64)
        .read_to_end(&mut bytes)
        .await
        .ok()?;
    let whole = match std::str::from_utf8(&bytes) {
        Ok(_) => bytes.len(),
        // A character cut at the end waits for its last bytes.
        Err(e) if e.error_len().is_none() && !all => e.valid_up_to(),
        Err(_) => bytes.len(),
    };
    if whole == 0 {
        return None;
    }
    *at += whole as u64;
    Some(String::from_utf8_lossy(&bytes[..whole]).into_owned())
}

impl Runtime {
    /// Task `id`'s output from `from` on, as it is written: the stream ends
    /// once the task has finished and all it printed has been read.
    pub fn follow_logs(
        &self,
        id: TaskId,
        from: LogOffsets,
    ) -> Result<impl Stream<Item = LogChunk> + Send + 'static, RuntimeError> {
        self.status(id)?;
        let dir = self.inner.tracker.store().task_dir(id);
        let runtime = self.clone();
        let stopping = self.stopping();
        let state = (from, false);
        Ok(stream::unfold(state, move |(mut at, mut ended)| {
            let (dir, runtime, stopping) = (dir.clone(), runtime.clone(), stopping.clone());
            async move {
                loop {
                    let finished = ended;
                    for (stream, name) in
                        [(LogStream::Stdout, "stdout"), (LogStream::Stderr, "stderr")]
                    {
                        let offset = match stream {
                            LogStream::Stdout => &mut at.stdout,
                            LogStream::Stderr => &mut at.stderr,
                        };
                        if let Some(text) = read_more(&dir, stream, offset, finished).await {
                            let chunk = LogChunk {
                                stream: name.into(),
                                text,
                                next: at,
                            };
                            return Some((chunk, (at, ended)));
                        }
                    }
                    if ended || stopping.is_cancelled() {
                        return None;
                    }
                    // Nothing new: once the task has ended, one last read
                    // takes what its last moments wrote.
                    ended = runtime.status(id).map_or(true, |r| r.status.is_terminal());
                    if !ended {
                        let mut status = runtime.inner.tracker.watch(id);
                        let changed = async {
                            match status.as_mut() {
                                Some(rx) => {
                                    let _ = rx.changed().await;
                                }
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            () = changed => {}
                            () = tokio::time::sleep(TAIL_EVERY) => {}
                            () = stopping.cancelled() => {}
                        }
                    }
                }
            }
        }))
    }
}
