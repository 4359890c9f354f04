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
use tokio::io::{AsyncWriteExt, BufWriter};

pub(crate) const DATA_FILE: &str = "results.jsonl";
pub(crate) const INDEX_FILE: &str = "results.idx";

/// Appends results in order.
pub(crate) struct ResultWriter {
    data: BufWriter<tokio::fs::File>,
    index: BufWriter<tokio::fs::File>,
    end: u64,
    written: u64,
    line: Vec<u8>,
}

impl ResultWriter {
    pub(crate) async fn create(dir: &Path) -> io::Result<ResultWriter> {
        tokio::fs::create_dir_all(dir).await?;
        let data = tokio::fs::File::create(dir.join(DATA_FILE)).await?;
        let index = tokio::fs::File::create(dir.join(INDEX_FILE)).await?;
        Ok(ResultWriter {
            data: BufWriter::with_capacity(1 << 16, data),
            index: BufWriter::with_capacity(1 << 14, index),
            end: 0,
            written: 0,
            line: Vec::with_capacity(256),
        })
    }

    pub(crate) async fn push(&mut self, value: &Value) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, value).map_err(io::Error::other)?;
        self.line.push(b'\n');
        self.data.write_all(&self.line).await?;
        self.end += self.line.len() as u64;
        self.index.write_all(&self.end.to_le_bytes()).await?;
        self.written += 1;
        Ok(())
    }

    /// Flushes to the files; returns how many results are now readable.
    pub(crate) async fn flush(&mut self) -> io::Result<u64> {
        self.data.flush().await?;
        self.index.flush().await?;
        Ok(self.written)
    }
}

/// Reads results `offset .. offset + limit` (clamped to `available`).
pub(crate) fn read_page(dir: PathBuf, offset: u64, limit: u64, available: u64) -> io::Result<Vec<Value>> {
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
    let (start, ends) = if offset > 0 { (ends[0], &ends[1..]) } else { (0, &ends[..]) };
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
        assert_eq!(page, vec![json!({"i":0,"s":"x\ny"}), json!({"i":1,"s":"x\ny"}), json!({"i":2,"s":"x\ny"})]);
        let page = read_page(p.clone(), 997, 10, 1000).unwrap();
        assert_eq!(page.len(), 3);
        assert_eq!(page[2]["i"], 999);
        assert!(read_page(p.clone(), 1000, 10, 1000).unwrap().is_empty());
        assert_eq!(read_page(p, 500, 10, 505).unwrap().len(), 5);
    }
}
