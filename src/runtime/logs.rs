//! Following a task's output as it is written: chunks of stdout and stderr
//! from given byte offsets until the task has ended and everything it
//! printed has been read.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Runtime, RuntimeError};
use crate::compute::LogStream;
use crate::dispatcher::logs::LogFeed;
use crate::dispatcher::Taken;
use crate::persist::TaskDir;
use crate::sync::Recover;
use crate::task::TaskId;
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
    // Resumed inside a character: its rest is not text on its own.
    let partial = bytes
        .iter()
        .take(3)
        .take_while(|b| (**b & 0xC0) == 0x80)
        .count();
    if partial > 0 {
        *at += partial as u64;
        bytes.drain(..partial);
    }
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

/// How many followers of task logs a runtime serves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowLimits {
    /// Followers of one task (default 512).
    pub per_task: usize,
    /// Followers of all tasks together (default 2,048).
    pub total: usize,
}

impl Default for FollowLimits {
    fn default() -> Self {
        FollowLimits {
            per_task: 512,
            total: 2048,
        }
    }
}

/// How many followers read log files at once (to catch up).
const CATCH_UP_READS: usize = 2;

/// Which follower limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowScope {
    /// The task's own.
    Task(TaskId),
    /// The runtime's, over all tasks.
    Runtime,
}

/// The followers there are, per task and in all.
pub(crate) struct Followers {
    limits: FollowLimits,
    per_task: Mutex<HashMap<TaskId, usize>>,
    /// Turns at reading log files (catching up), shared by all followers.
    reads: tokio::sync::Semaphore,
}

/// One follower's place, given back when its stream is dropped.
struct Following {
    followers: Arc<Followers>,
    id: TaskId,
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut per_task = self.followers.lock();
        if let Some(n) = per_task.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                per_task.remove(&self.id);
            }
        }
    }
}

impl Followers {
    pub(crate) fn new(limits: FollowLimits) -> Arc<Followers> {
        Arc::new(Followers {
            limits,
            per_task: Mutex::default(),
            reads: tokio::sync::Semaphore::new(CATCH_UP_READS),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, usize>> {
        self.per_task.lock().recover()
    }

    fn admit(self: &Arc<Self>, id: TaskId) -> Result<Following, RuntimeError> {
        let mut per_task = self.lock();
        let total: usize = per_task.values().sum();
        if total >= self.limits.total {
            return Err(RuntimeError::TooManyFollowers {
                scope: FollowScope::Runtime,
                max: self.limits.total,
            });
        }
        let n = per_task.entry(id).or_default();
        if *n >= self.limits.per_task {
            return Err(RuntimeError::TooManyFollowers {
                scope: FollowScope::Task(id),
                max: self.limits.per_task,
            });
        }
        *n += 1;
        Ok(Following {
            followers: self.clone(),
            id,
        })
    }
}

/// A follower's place in a task's output.
struct Follower {
    runtime: Runtime,
    id: TaskId,
    dir: TaskDir,
    at: LogOffsets,
    /// The running task's feed, once it has one.
    feed: Option<(Arc<LogFeed>, tokio::sync::watch::Receiver<u64>)>,
    /// The task's status as it changes (`None`: forgotten by retention).
    status: Option<tokio::sync::watch::Receiver<crate::task::TaskStatus>>,
    stopping: tokio_util::sync::CancellationToken,
    _place: Following,
}

impl Follower {
    /// The next chunk, or `None` once the task has ended and all it wrote
    /// has been read. Woken by the writer, never by a timer.
    async fn next(&mut self) -> Option<LogChunk> {
        loop {
            if self.feed.is_none() {
                if let Some(feed) = self.runtime.inner.feeds.get(&self.id).map(|f| f.clone()) {
                    let rx = feed.subscribe();
                    self.feed = Some((feed, rx));
                }
            }
            // Everything is written once the feed has ended, or when there
            // is no feed and the task has finished (its logs are on disk).
            let written = match &self.feed {
                Some((feed, _)) => feed.ended(),
                None => self
                    .status
                    .as_ref()
                    .is_none_or(|s| s.borrow().is_terminal()),
            };
            for (stream, name) in [(LogStream::Stdout, "stdout"), (LogStream::Stderr, "stderr")] {
                let offset = match stream {
                    LogStream::Stdout => &mut self.at.stdout,
                    LogStream::Stderr => &mut self.at.stderr,
                };
                let taken = match &self.feed {
                    Some((feed, _)) => feed.take(stream, offset, MAX_CHUNK, written),
                    None => Taken::Behind,
                };
                let text = match taken {
                    Taken::Text(text) => Some(text),
                    Taken::Behind => {
                        // A few catch-up reads at a time, so many followers
                        // starting at once never take a thread each.
                        let _turn = self.runtime.inner.followers.reads.acquire().await;
                        read_more(&self.dir, stream, offset, written).await
                    }
                    Taken::Nothing => None,
                };
                if let Some(text) = text {
                    return Some(LogChunk {
                        stream: name.into(),
                        text,
                        next: self.at,
                    });
                }
            }
            if written {
                // The task's end is recorded just after its logs are: the
                // stream ends once it is, so `end` tells how it ended.
                if let Some(status) = self.status.as_mut() {
                    let ended = status.wait_for(|s| s.is_terminal());
                    let _ = tokio::time::timeout(END_GRACE, ended).await;
                }
                return None;
            }
            if self.stopping.is_cancelled() {
                return None;
            }
            match &mut self.feed {
                Some((_, rx)) => {
                    tokio::select! {
                        _ = rx.changed() => {}
                        () = self.stopping.cancelled() => {}
                    }
                }
                None => {
                    // Not started yet: wait for it to start (or end).
                    let status = self.status.as_mut()?;
                    tokio::select! {
                        _ = status.changed() => {}
                        () = self.stopping.cancelled() => {}
                    }
                }
            }
        }
    }
}

/// How long a follower that has read everything waits for the task's end
/// to be recorded.
const END_GRACE: Duration = Duration::from_secs(5);

impl Runtime {
    /// Task `id`'s output from `from` on, as it is written: the stream ends
    /// once the task has finished and all it printed has been read. A
    /// running task's followers are woken by its writes and read them from
    /// memory (catching up from the files only when more than 64 KiB
    /// behind); at most [`FollowLimits`] follow at once
    /// ([`RuntimeError::TooManyFollowers`] past them).
    pub fn follow_logs(
        &self,
        id: TaskId,
        from: LogOffsets,
    ) -> Result<impl Stream<Item = LogChunk> + Send + 'static, RuntimeError> {
        self.status(id)?;
        let place = self.inner.followers.admit(id)?;
        let follower = Follower {
            runtime: self.clone(),
            id,
            dir: self.inner.tracker.store().task_dir(id),
            at: from,
            feed: None,
            status: self.inner.tracker.watch(id),
            stopping: self.stopping(),
            _place: place,
        };
        Ok(stream::unfold(follower, |mut f| async move {
            let chunk = f.next().await?;
            Some((chunk, f))
        }))
    }
}
