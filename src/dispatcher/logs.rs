//! Per-task stdout/stderr files.

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::compute::LogStream;
use crate::persist::TaskDir;
use crate::task::TaskLogs;

/// Most bytes kept per stream and task; the rest is dropped with a note.
const MAX_LOG_BYTES: u64 = 16 << 20;

struct LogFile {
    file: tokio::fs::File,
    written: u64,
    truncated: bool,
}

/// Writes what a task's log sink receives until every sender is gone.
pub(crate) async fn write_logs(dir: TaskDir, mut rx: mpsc::UnboundedReceiver<(LogStream, String)>) {
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
        let bytes = text.as_bytes();
        let room = MAX_LOG_BYTES.saturating_sub(log.written) as usize;
        let result = if bytes.len() <= room {
            log.written += bytes.len() as u64;
            log.file.write_all(bytes).await
        } else {
            log.truncated = true;
            let note = format!("\n[modal-agents: log truncated at {MAX_LOG_BYTES} bytes]\n");
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let head = log.file.write_all(&bytes[..cut]).await;
            head.and(log.file.write_all(note.as_bytes()).await)
        };
        if let Err(e) = result {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write task logs");
        }
    }
    for log in files.iter_mut().flatten() {
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
