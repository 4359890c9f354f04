//! A map's results on disk, in input order, readable page by page while the
//! map runs.
//!
//! `results.jsonl` holds one JSON value per line; `results.idx` holds, per
//! result, the little-endian `u64` byte offset where its line ends. A page is
//! two positioned reads, whatever the map's size, and nothing of a map's
//! results stays in memory beyond the writer's buffer.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::AsyncWriteExt;

pub(crate) const DATA_FILE: &str = "results.jsonl";
pub(crate) const INDEX_FILE: &str = "results.idx";

/// Bytes buffered in memory before they are written out.
const BUFFER: usize = 1 << 18;

/// Appends results in order. Pushing only serializes into memory; the files
/// are written when the buffer fills or on [`ResultWriter::flush`].
pub(crate) struct ResultWriter {
    data_file: tokio::fs::File,
    index_file: tokio::fs::File,
    data: Vec<u8>,
    index: Vec<u8>,
    end: u64,
    pushed: u64,
}

impl ResultWriter {
    pub(crate) async fn create(dir: &Path) -> io::Result<ResultWriter> {
        tokio::fs::create_dir_all(dir).await?;
        let data = tokio::fs::File::create(dir.join(DATA_FILE)).await?;
        let index = tokio::fs::File::create(dir.join(INDEX_FILE)).await?;
        Ok(ResultWriter {
            data_file: data,
            index_file: index,
            data: Vec::with_capacity(BUFFER),
            index: Vec::with_capacity(BUFFER / 8),
            end: 0,
            pushed: 0,
        })
    }

    /// Reopens a map's results to append after the first `at` (dropping any
    /// partial tail a crash left).
    pub(crate) async fn resume(dir: &Path, at: u64) -> io::Result<ResultWriter> {
        let (blocking_dir, at2) = (dir.to_path_buf(), at);
        let end = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let dir = blocking_dir;
            let index = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(INDEX_FILE))?;
            index.set_len(at2 * 8)?;
            let end = if at2 == 0 {
                0
            } else {
                let mut raw = [0u8; 8];
                let mut f = &index;
                f.seek(SeekFrom::Start((at2 - 1) * 8))?;
                f.read_exact(&mut raw)?;
                u64::from_le_bytes(raw)
            };
            let data = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join(DATA_FILE))?;
            data.set_len(end)?;
            Ok(end)
        })
        .await
        .map_err(io::Error::other)??;
        let data = tokio::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(DATA_FILE))
            .await?;
        let index = tokio::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(INDEX_FILE))
            .await?;
        Ok(ResultWriter {
            data_file: data,
            index_file: index,
            data: Vec::with_capacity(BUFFER),
            index: Vec::with_capacity(BUFFER / 8),
            end,
            pushed: at,
        })
    }

    /// Appends one result; writes the buffer out when it is full.
    pub(crate) async fn push(&mut self, value: &Value) -> io::Result<()> {
        let before = self.data.len();
        serde_json::to_writer(&mut self.data, value).map_err(io::Error::other)?;
        self.data.push(b'\n');
        self.end += (self.data.len() - before) as u64;
        self.index.extend_from_slice(&self.end.to_le_bytes());
        self.pushed += 1;
        if self.data.len() >= BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes everything pushed to the files; returns how many results are
    /// now readable.
    pub(crate) async fn flush(&mut self) -> io::Result<u64> {
        self.data_file.write_all(&self.data).await?;
        self.data.clear();
        self.index_file.write_all(&self.index).await?;
        self.index.clear();
        // tokio's File finishes a write in the background; flush waits for it.
        self.data_file.flush().await?;
        self.index_file.flush().await?;
        Ok(self.pushed)
    }
}

/// How many results a map has on disk (whole index entries).
pub(crate) fn stored_count(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(INDEX_FILE)).map_or(0, |m| m.len() / 8)
}

/// `(completed, failed)` among the first `n` stored results.
pub(crate) fn count_outcomes(dir: &Path, n: u64) -> io::Result<(u64, u64)> {
    let mut failed = 0;
    let mut offset = 0;
    while offset < n {
        let page = read_page(dir.to_path_buf(), offset, 10_000, n)?;
        failed += page
            .iter()
            .filter(|v| {
                v.as_object()
                    .is_some_and(|o| o.len() == 1 && o.contains_key("error"))
            })
            .count() as u64;
        offset += page.len().max(1) as u64;
    }
    Ok((n - failed, failed))
}

/// Reads results `offset .. offset + limit` (clamped to `available`).
pub(crate) fn read_page(
    dir: PathBuf,
    offset: u64,
    limit: u64,
    available: u64,
) -> io::Result<Vec<Value>> {
    let end = offset.saturating_add(limit).min(available);
    if offset >= end {
        return Ok(Vec::new());
    }
    let count = (end - offset) as usize;
    let mut index = File::open(dir.join(INDEX_FILE))?;
    // The end offset of the result before `offset` is where this page starts.
    let first_entry = offset.saturating_sub(1);
    index.seek(SeekFrom::Start(first_entry * 8))?;
    let entries = count + usize::from(offset > 0);
    let mut raw = vec![0u8; entries * 8];
    index.read_exact(&mut raw)?;
    let ends: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect();
    let (start, ends) = if offset > 0 {
        (ends[0], &ends[1..])
    } else {
        (0, &ends[..])
    };
    let stop = *ends.last().expect("at least one entry");
    let mut data = File::open(dir.join(DATA_FILE))?;
    data.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; (stop - start) as usize];
    data.read_exact(&mut buf)?;
    buf.split(|b| *b == b'\n')
        .take(count)
        .map(|line| serde_json::from_slice(line).map_err(io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn pages_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ResultWriter::create(dir.path()).await.unwrap();
        for i in 0..1000 {
            w.push(&json!({"i": i, "s": "x\ny"})).await.unwrap();
        }
        assert_eq!(w.flush().await.unwrap(), 1000);
        let p = dir.path().to_path_buf();
        let page = read_page(p.clone(), 0, 3, 1000).unwrap();
        assert_eq!(
            page,
            vec![
                json!({"i":0,"s":"x\ny"}),
                json!({"i":1,"s":"x\ny"}),
                json!({"i":2,"s":"x\ny"})
            ]
        );
        let page = read_page(p.clone(), 997, 10, 1000).unwrap();
        assert_eq!(page.len(), 3);
        assert_eq!(page[2]["i"], 999);
        assert!(read_page(p.clone(), 1000, 10, 1000).unwrap().is_empty());
        assert_eq!(read_page(p, 500, 10, 505).unwrap().len(), 5);
    }
}
