//! Per-task stdout/stderr files.

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::compute::LogStream;
use crate::persist::TaskDir;
use crate::redact::Redactor;
use crate::task::TaskLogs;

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
    /// Appends `text`, up to [`MAX_LOG_BYTES`] in all (then a note).
    async fn append(&mut self, text: &str) -> io::Result<()> {
        if self.truncated || text.is_empty() {
            return Ok(());
        }
        let bytes = text.as_bytes();
        let room = MAX_LOG_BYTES.saturating_sub(self.written) as usize;
        if bytes.len() <= room {
            self.written += bytes.len() as u64;
            return self.file.write_all(bytes).await;
        }
        self.truncated = true;
        let note = format!("\n[modal-agents: log truncated at {MAX_LOG_BYTES} bytes]\n");
        let mut cut = room;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        self.file.write_all(&bytes[..cut]).await?;
        self.file.write_all(note.as_bytes()).await
    }
}

/// Writes what a task's log sink receives until every sender is gone, every
/// secret value `redact` knows replaced (a value split across two pieces of
/// output included).
pub(crate) async fn write_logs(
    dir: TaskDir,
    mut rx: mpsc::UnboundedReceiver<(LogStream, String)>,
    redact: Redactor,
) {
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
        if let Err(e) = log.append(&text).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write task logs");
        }
    }
    for log in files.iter_mut().flatten() {
        let held = std::mem::take(&mut log.held);
        if let Err(e) = log.append(&held).await {
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
