//! A map's results on disk, in input order, readable page by page while the
//! map runs.
//!
//! `results.jsonl` holds one JSON value per line; `results.idx` holds, per
//! result, the little-endian `u64` byte offset where its line ends. A page is
//! two positioned reads, whatever the map's size, and nothing of a map's
//! results stays in memory beyond the writer's buffer.
//!
//! Writes are ordered: a batch of lines is in the data file before the index
//! entries that point at it are written, so a crash can leave data past the
//! index but never an index entry past the data. Both files are fsynced before
//! the map's end is recorded. [`recover`] checks both after a restart and cuts
//! them back to the last result that reads back whole.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::persist::{private_dir, TaskDir, FILE_MODE};
use crate::task::MAX_RESULT_BYTES;

/// Bytes buffered in memory before they are written out.
const BUFFER: usize = 1 << 18;

/// What [`ResultWriter::buffer`] did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buffered {
    /// Buffered; there is room for more.
    Room,
    /// Buffered; the buffer is full and should be written out with
    /// [`ResultWriter::flush`].
    Full,
    /// Not buffered: it is this many bytes as JSON, over
    /// [`MAX_RESULT_BYTES`].
    TooLarge(usize),
}

/// Appends results in order. Buffering only serializes into memory; the
/// files are written when the buffer fills or on [`ResultWriter::flush`],
/// data then index, in one blocking call.
pub(crate) struct ResultWriter {
    /// Data and index files; out while a flush has them.
    files: Option<(std::fs::File, std::fs::File)>,
    data: Vec<u8>,
    index: Vec<u8>,
    end: u64,
    pushed: u64,
    dir: TaskDir,
}

fn open(path: &Path, truncate: bool) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).mode(FILE_MODE);
    if truncate {
        options.write(true).truncate(true);
    } else {
        options.append(true);
    }
    options.open(path)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

impl ResultWriter {
    fn with(files: (std::fs::File, std::fs::File), dir: &TaskDir, end: u64, pushed: u64) -> Self {
        ResultWriter {
            files: Some(files),
            data: Vec::with_capacity(BUFFER),
            index: Vec::with_capacity(BUFFER / 8),
            end,
            pushed,
            dir: dir.clone(),
        }
    }

    pub(crate) async fn create(dir: &TaskDir) -> io::Result<ResultWriter> {
        let d = dir.clone();
        let files = blocking(move || {
            private_dir(&d)?;
            Ok((open(&d.results(), true)?, open(&d.results_index(), true)?))
        })
        .await?;
        Ok(ResultWriter::with(files, dir, 0, 0))
    }

    /// Reopens a map's results to append after what [`recover`] found.
    pub(crate) async fn resume(dir: &TaskDir, stored: Stored) -> io::Result<ResultWriter> {
        if stored.count == 0 {
            return ResultWriter::create(dir).await;
        }
        let d = dir.clone();
        let files =
            blocking(move || Ok((open(&d.results(), false)?, open(&d.results_index(), false)?)))
                .await?;
        Ok(ResultWriter::with(
            files,
            dir,
            stored.data_len,
            stored.count,
        ))
    }

    /// Appends one result, writing the buffer out when it is full.
    #[cfg(test)]
    pub(crate) async fn push(&mut self, value: &Value) -> io::Result<()> {
        if self.buffer(value)? == Buffered::Full {
            self.flush().await?;
        }
        Ok(())
    }

    /// Appends one result to the buffer (no I/O), unless it is larger than
    /// [`MAX_RESULT_BYTES`] as JSON: then nothing is appended and it is
    /// [`Buffered::TooLarge`] (the caller appends its error instead).
    #[inline(always)]
    pub(crate) fn buffer(&mut self, value: &Value) -> io::Result<Buffered> {
        let before = self.data.len();
        serde_json::to_writer(&mut self.data, value).map_err(io::Error::other)?;
        let len = self.data.len() - before;
        if len > MAX_RESULT_BYTES {
            self.data.truncate(before);
            return Ok(Buffered::TooLarge(len));
        }
        self.data.push(b'\n');
        self.end += (len + 1) as u64;
        self.index.extend_from_slice(&self.end.to_le_bytes());
        self.pushed += 1;
        Ok(if self.data.len() >= BUFFER {
            Buffered::Full
        } else {
            Buffered::Room
        })
    }

    /// Writes everything buffered to the files, data before index; returns
    /// how many results are now readable.
    pub(crate) async fn flush(&mut self) -> io::Result<u64> {
        self.io(false).await
    }

    /// Writes and fsyncs everything buffered (data first).
    #[cfg(test)]
    pub(crate) async fn sync(&mut self) -> io::Result<u64> {
        self.io(true).await
    }

    async fn io(&mut self, fsync: bool) -> io::Result<u64> {
        if self.data.is_empty() && !fsync {
            return Ok(self.pushed);
        }
        let (mut data_file, mut index_file) = self
            .files
            .take()
            .ok_or_else(|| io::Error::other("an earlier write of these results failed"))?;
        let (data, index) = (
            std::mem::take(&mut self.data),
            std::mem::take(&mut self.index),
        );
        let (files, data, index) = blocking(move || {
            use std::io::Write;
            data_file.write_all(&data)?;
            index_file.write_all(&index)?;
            if fsync {
                data_file.sync_data()?;
                index_file.sync_data()?;
            }
            Ok(((data_file, index_file), data, index))
        })
        .await?;
        self.files = Some(files);
        // The buffers come back to be reused.
        self.data = data;
        self.data.clear();
        self.index = index;
        self.index.clear();
        Ok(self.pushed)
    }

    /// The files, data first: the order they must reach the disk in.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.results(), self.dir.results_index()]
    }
}

/// What a map has on disk after [`recover`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Results that read back whole, from the first.
    pub(crate) count: u64,
    /// Of those, inputs that completed / failed.
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    /// Bytes of data those results take.
    pub(crate) data_len: u64,
    /// Whether anything past them was cut off.
    pub(crate) cut: bool,
}

/// How many results a map has on disk, by its index alone (no check).
pub(crate) fn indexed_count(dir: &TaskDir) -> u64 {
    std::fs::metadata(dir.results_index()).map_or(0, |m| m.len() / 8)
}

/// Checks a map's result files after a restart: every index entry must end
/// a line of the data file that parses, in order. Both files are cut back to
/// the last result that does, so the map can resume after it. Missing files
/// are a map with no results.
pub(crate) fn recover(dir: &TaskDir) -> io::Result<Stored> {
    let mut raw = Vec::new();
    match File::open(dir.results_index()) {
        Ok(mut f) => {
            f.read_to_end(&mut raw)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let entries = raw.len() as u64 / 8;
    let data_path = dir.results();
    let data_file_len = std::fs::metadata(&data_path).map_or(0, |m| m.len());
    let mut stored = Stored::default();
    if entries > 0 {
        let mut data = BufReader::with_capacity(1 << 16, File::open(&data_path)?);
        let mut line = Vec::new();
        for chunk in raw.chunks_exact(8) {
            let end = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
            if end <= stored.data_len || end > data_file_len {
                break;
            }
            line.clear();
            let n = data.read_until(b'\n', &mut line)? as u64;
            if stored.data_len + n != end || !line.ends_with(b"\n") {
                break;
            }
            let Ok(value) = serde_json::from_slice::<Value>(&line) else {
                break;
            };
            if is_error_slot(&value) {
                stored.failed += 1;
            } else {
                stored.completed += 1;
            }
            stored.count += 1;
            stored.data_len = end;
        }
    }
    let partial_entry = raw.len() % 8 != 0;
    if stored.count < entries || partial_entry || data_file_len > stored.data_len {
        stored.cut = true;
        if stored.count < entries {
            tracing::warn!(dir = %dir.display(), kept = stored.count, indexed = entries,
                "map results past the last whole result cut off; the map resumes after it");
        }
        let index = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.results_index());
        if let Ok(index) = index {
            index.set_len(stored.count * 8)?;
            index.sync_all()?;
        }
        let data = std::fs::OpenOptions::new().write(true).open(&data_path)?;
        data.set_len(stored.data_len)?;
        data.sync_all()?;
    }
    Ok(stored)
}

/// Cheap check of a finished map's files: `expected` index entries, the
/// last of which ends inside the data file.
pub(crate) fn looks_whole(dir: &TaskDir, expected: u64) -> bool {
    if indexed_count(dir) != expected {
        return false;
    }
    if expected == 0 {
        return true;
    }
    let last = (|| -> io::Result<u64> {
        let mut f = File::open(dir.results_index())?;
        f.seek(SeekFrom::Start((expected - 1) * 8))?;
        let mut raw = [0u8; 8];
        f.read_exact(&mut raw)?;
        Ok(u64::from_le_bytes(raw))
    })();
    let data_len = std::fs::metadata(dir.results()).map_or(0, |m| m.len());
    last.is_ok_and(|end| end == data_len)
}

/// Whether a stored result is a failed input's `{"error": {...}}`.
fn is_error_slot(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key("error"))
}

/// Reads results `offset..offset + limit` (fewer past `available`, the
/// results readable now), stopping before the page would pass `max_bytes`
/// of data: at least one result, whatever its size, so every page moves on.
pub(crate) fn read_page(
    dir: TaskDir,
    offset: u64,
    limit: u64,
    available: u64,
    max_bytes: u64,
) -> io::Result<Vec<Value>> {
    let end = offset.saturating_add(limit).min(available);
    if offset >= end {
        return Ok(Vec::new());
    }
    let count = (end - offset) as usize;
    let mut index = File::open(dir.results_index())?;
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
    // Offsets come from disk: they must increase and stay inside the data.
    let data_len = std::fs::metadata(dir.results())?.len();
    let increasing =
        ends.windows(2).all(|w| w[0] < w[1]) && ends.first().is_none_or(|e| *e > start);
    if !increasing || *ends.last().expect("at least one entry") > data_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the results index does not match the results data",
        ));
    }
    let fit = ends
        .iter()
        .take_while(|e| **e - start <= max_bytes)
        .count()
        .max(1);
    let stop = ends[fit - 1];
    let mut data = File::open(dir.results())?;
    data.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; (stop - start) as usize];
    data.read_exact(&mut buf)?;
    buf.split(|b| *b == b'\n')
        .take(fit)
        .map(|line| serde_json::from_slice(line).map_err(io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_page_stops_at_its_byte_bound_and_always_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let d = TaskDir::new(dir.path().to_path_buf());
        let mut w = ResultWriter::create(&d).await.unwrap();
        for i in 0..10 {
            w.push(&json!("x".repeat(100 + i))).await.unwrap();
        }
        w.sync().await.unwrap();
        // Each line is 103 to 112 bytes with its newline.
        let page = read_page(d.clone(), 0, 10, 10, 350).unwrap();
        assert_eq!(page.len(), 3);
        let page = read_page(d.clone(), 3, 10, 10, 1).unwrap();
        assert_eq!(page, vec![json!("x".repeat(103))], "one, however large");
        assert_eq!(read_page(d, 0, 10, 10, 1 << 20).unwrap().len(), 10);
    }

    #[tokio::test]
    async fn pages_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ResultWriter::create(&TaskDir::new(dir.path().to_path_buf()))
            .await
            .unwrap();
        for i in 0..1000 {
            w.push(&json!({"i": i, "s": "x\ny"})).await.unwrap();
        }
        assert_eq!(w.flush().await.unwrap(), 1000);
        let p = TaskDir::new(dir.path().to_path_buf());
        let page = read_page(p.clone(), 0, 3, 1000, u64::MAX).unwrap();
        assert_eq!(
            page,
            vec![
                json!({"i":0,"s":"x\ny"}),
                json!({"i":1,"s":"x\ny"}),
                json!({"i":2,"s":"x\ny"})
            ]
        );
        let page = read_page(p.clone(), 997, 10, 1000, u64::MAX).unwrap();
        assert_eq!(page.len(), 3);
        assert_eq!(page[2]["i"], 999);
        assert!(read_page(p.clone(), 1000, 10, 1000, u64::MAX)
            .unwrap()
            .is_empty());
        assert_eq!(read_page(p, 500, 10, 505, u64::MAX).unwrap().len(), 5);
    }

    async fn hundred(dir: &TaskDir) {
        let mut w = ResultWriter::create(dir).await.unwrap();
        for i in 0..100 {
            let v = if i % 10 == 0 {
                json!({"error": {"type": "ValueError"}})
            } else {
                json!(i)
            };
            w.push(&v).await.unwrap();
        }
        w.sync().await.unwrap();
    }

    fn append(path: PathBuf, bytes: &[u8]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[tokio::test]
    async fn recovery_cuts_back_to_the_last_whole_result() {
        let dir = tempfile::tempdir().unwrap();
        let d = &TaskDir::new(dir.path().to_path_buf());
        hundred(d).await;
        assert!(looks_whole(d, 100));
        let whole = recover(d).unwrap();
        assert_eq!(
            (whole.count, whole.completed, whole.failed, whole.cut),
            (100, 90, 10, false)
        );

        // Data past the index (a crash between the two writes) is cut off.
        append(d.results(), b"101\n102\n");
        let r = recover(d).unwrap();
        assert_eq!((r.count, r.cut), (100, true));
        assert_eq!(r.data_len, whole.data_len);
        assert!(looks_whole(d, 100));

        // An index entry past the data is cut off.
        append(d.results_index(), &(whole.data_len + 50).to_le_bytes());
        assert!(!looks_whole(d, 101));
        assert_eq!(recover(d).unwrap().count, 100);

        // A damaged line in the middle: everything from it on is cut, and the
        // map resumes writing after the last good result.
        let page = read_page(d.clone(), 0, 50, 100, u64::MAX).unwrap();
        assert_eq!(page[49], json!(49));
        let mut raw = std::fs::read(d.results()).unwrap();
        let at = raw.len() / 2;
        raw[at] = 0x01;
        std::fs::write(d.results(), &raw).unwrap();
        let r = recover(d).unwrap();
        assert!(r.count < 100 && r.count > 40, "{r:?}");
        let mut w = ResultWriter::resume(d, r).await.unwrap();
        for i in r.count..100 {
            w.push(&json!(i)).await.unwrap();
        }
        assert_eq!(w.sync().await.unwrap(), 100);
        let page = read_page(d.clone(), 0, 100, 100, u64::MAX).unwrap();
        assert_eq!(page[99], json!(99));
        assert_eq!(recover(d).unwrap().count, 100);

        // No files at all: nothing stored.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            recover(&TaskDir::new(empty.path().to_path_buf())).unwrap(),
            Stored::default()
        );
    }
}
