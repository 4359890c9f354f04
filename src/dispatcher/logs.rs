//! Per-task stdout/stderr files, and the feed followers of a running
//! task's output read from.
//!
//! The writer appends what a task prints to its files and tells the task's
//! [`LogFeed`], which keeps the last [`FEED_RING`] bytes of each stream in
//! memory while the task runs, so a follower is woken by the write itself
//! and copies the new bytes without touching the files. Only a follower
//! that starts (or falls) more than the ring behind reads the files.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::compute::LogStream;
use crate::persist::TaskDir;
use crate::redact::Redactor;
use crate::sync::Recover;
use crate::task::{TaskId, TaskLogs};

/// Most recent bytes of each stream a running task keeps in memory.
pub(crate) const FEED_RING: usize = 64 << 10;

#[derive(Default)]
struct StreamFeed {
    /// Bytes written to the file so far.
    total: u64,
    /// The file offset of `ring[0]`.
    base: u64,
    ring: VecDeque<u8>,
}

#[derive(Default)]
struct FeedState {
    streams: [StreamFeed; 2],
    ended: bool,
}

/// What a running task has written, for its followers.
pub(crate) struct LogFeed {
    state: Mutex<FeedState>,
    changed: watch::Sender<u64>,
}

/// What [`LogFeed::take`] found past a follower's offset.
pub(crate) enum Taken {
    /// New text (whole characters), the offset moved past it.
    Text(String),
    /// The follower is before what the feed keeps: read the file.
    Behind,
    /// Nothing new.
    Nothing,
}

/// The feeds of the tasks whose logs are being written, by task.
pub(crate) type LogFeeds = Arc<DashMap<TaskId, Arc<LogFeed>>>;

/// A task's feed, in the map of feeds until dropped (then ended).
pub(crate) struct Published(LogFeeds, TaskId, Arc<LogFeed>);

impl Drop for Published {
    fn drop(&mut self) {
        self.2.end();
        self.0.remove_if(&self.1, |_, f| Arc::ptr_eq(f, &self.2));
    }
}

/// Makes task `id`'s feed findable by its followers, before it starts.
pub(crate) fn publish(feeds: &LogFeeds, id: TaskId) -> Published {
    let feed = LogFeed::new();
    feeds.insert(id, feed.clone());
    Published(feeds.clone(), id, feed)
}

impl LogFeed {
    fn new() -> Arc<LogFeed> {
        Arc::new(LogFeed {
            state: Mutex::default(),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().recover()
    }

    /// Wakes on every write and at the end.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the task's output is all written.
    pub(crate) fn ended(&self) -> bool {
        self.lock().ended
    }

    /// `bytes` were appended to `stream`'s file.
    fn wrote(&self, stream: LogStream, bytes: &[u8]) {
        {
            let mut state = self.lock();
            let s = &mut state.streams[stream as usize];
            s.total += bytes.len() as u64;
            let keep = &bytes[bytes.len().saturating_sub(FEED_RING)..];
            s.ring.extend(keep);
            let over = s.ring.len().saturating_sub(FEED_RING);
            s.ring.drain(..over);
            s.base = s.total - s.ring.len() as u64;
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn end(&self) {
        self.lock().ended = true;
        self.changed.send_modify(|n| *n += 1);
    }

    /// What `stream` has past `*at`, up to `max` bytes of whole characters
    /// (a character cut at the end waits for its last bytes unless `all`).
    pub(crate) fn take(&self, stream: LogStream, at: &mut u64, max: usize, all: bool) -> Taken {
        let state = self.lock();
        let s = &state.streams[stream as usize];
        if *at < s.base {
            return Taken::Behind;
        }
        if *at >= s.total {
            return Taken::Nothing;
        }
        let from = (*at - s.base) as usize;
        let to = s.ring.len().min(from + max);
        let bytes: Vec<u8> = s.ring.range(from..to).copied().collect();
        drop(state);
        let whole = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(e) if e.error_len().is_none() && !all => e.valid_up_to(),
            Err(_) => bytes.len(),
        };
        if whole == 0 {
            return Taken::Nothing;
        }
        *at += whole as u64;
        Taken::Text(String::from_utf8_lossy(&bytes[..whole]).into_owned())
    }
}

/// Most bytes kept per stream and task; the rest is dropped with a note.
const MAX_LOG_BYTES: u64 = 16 << 20;

struct LogFile {
    file: tokio::fs::File,
    written: u64,
    truncated: bool,
    /// The end of what came so far that could be the start of a secret
    /// value: written with the next piece (or at the end), once it is known
    /// whether the value is completed and so redacted.
    held: String,
}

impl LogFile {
    /// Appends `text`, up to [`MAX_LOG_BYTES`] in all (then a note), and
    /// tells `feed` once it is in the file.
    async fn append(&mut self, text: &str, feed: &LogFeed, stream: LogStream) -> io::Result<()> {
        if self.truncated || text.is_empty() {
            return Ok(());
        }
        let bytes = text.as_bytes();
        let room = MAX_LOG_BYTES.saturating_sub(self.written) as usize;
        let written = if bytes.len() <= room {
            self.written += bytes.len() as u64;
            bytes.to_vec()
        } else {
            self.truncated = true;
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let mut out = bytes[..cut].to_vec();
            out.extend_from_slice(
                format!("\n[modal-agents: log truncated at {MAX_LOG_BYTES} bytes]\n").as_bytes(),
            );
            out
        };
        self.file.write_all(&written).await?;
        // In the file (not only on its way there) before followers hear of
        // it: one catching up from the file finds it.
        self.file.flush().await?;
        feed.wrote(stream, &written);
        Ok(())
    }
}

/// Writes what a task's log sink receives until every sender is gone, every
/// secret value `redact` knows replaced (a value split across two pieces of
/// output included).
pub(crate) async fn write_logs(
    dir: TaskDir,
    mut rx: mpsc::UnboundedReceiver<(LogStream, String)>,
    redact: Redactor,
    feed: Published,
) {
    let feed = &feed.2;
    let mut files: [Option<LogFile>; 2] = [None, None];
    while let Some((stream, text)) = rx.recv().await {
        let slot = &mut files[stream as usize];
        if slot.is_none() {
            match open(&dir, stream).await {
                Ok(file) => {
                    *slot = Some(LogFile {
                        file,
                        written: 0,
                        truncated: false,
                        held: String::new(),
                    })
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot write task logs");
                    continue;
                }
            }
        }
        let log = slot.as_mut().expect("opened above");
        if log.truncated {
            continue;
        }
        let mut text = if log.held.is_empty() {
            text
        } else {
            std::mem::take(&mut log.held) + &text
        };
        redact.redact_in_place(&mut text);
        let hold = redact.unfinished_tail(&text);
        if hold > 0 {
            log.held = text.split_off(text.len() - hold);
        }
        if let Err(e) = log.append(&text, feed, stream).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write task logs");
        }
    }
    for (log, stream) in files.iter_mut().zip([LogStream::Stdout, LogStream::Stderr]) {
        let Some(log) = log else { continue };
        let held = std::mem::take(&mut log.held);
        if let Err(e) = log.append(&held, feed, stream).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write task logs");
        }
        let _ = log.file.flush().await;
    }
}

async fn open(dir: &TaskDir, stream: LogStream) -> io::Result<tokio::fs::File> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || crate::persist::private_dir(&d))
        .await
        .map_err(io::Error::other)??;
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::persist::FILE_MODE)
        .open(dir.log(stream))
        .await
}

/// Reads a task's logs (empty where it printed nothing).
pub(crate) async fn read_logs(dir: &TaskDir) -> io::Result<TaskLogs> {
    let mut logs = TaskLogs::default();
    for (stream, out) in [
        (LogStream::Stdout, &mut logs.stdout),
        (LogStream::Stderr, &mut logs.stderr),
    ] {
        match tokio::fs::read(dir.log(stream)).await {
            Ok(bytes) => *out = String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(logs)
}
