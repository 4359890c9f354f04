//! A volume's files: relative paths under its `files/` directory, replaced
//! atomically (temp file, fsync, rename, fsync of the directory).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::VolumeError;

/// Metadata of one file in a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileStat {
    /// Path relative to the volume root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

/// Checks a volume-relative path and joins it to `root`: relative, no `..`,
/// no empty or `.` segments, at most 1024 bytes.
pub(crate) fn resolve(root: &Path, path: &str) -> Result<PathBuf, VolumeError> {
    let bad = |why: &str| VolumeError::BadPath {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    if path.is_empty() || path.len() > 1024 {
        return Err(bad("expected 1 to 1024 bytes"));
    }
    if path.starts_with('/') {
        return Err(bad(
            "expected a path relative to the volume root, not an absolute one",
        ));
    }
    if path.contains('\0') || path.contains('\\') {
        return Err(bad("NUL and backslash are not allowed"));
    }
    for part in path.split('/') {
        match part {
            "" => {
                return Err(bad(
                    "empty segments ('//' or a trailing '/') are not allowed",
                ))
            }
            "." | ".." => return Err(bad("'.' and '..' segments are not allowed")),
            _ => {}
        }
    }
    let joined = root.join(path);
    debug_assert!(joined
        .components()
        .skip(root.components().count())
        .all(|c| matches!(c, Component::Normal(_))));
    Ok(joined)
}

/// Writes `bytes` to `target` atomically.
pub(crate) fn put(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = target.parent().expect("a resolved path has a parent");
    std::fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .expect("a resolved path has a file name")
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, target)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn stat_of(root: &Path, path: &Path, meta: &std::fs::Metadata) -> FileStat {
    let rel = path.strip_prefix(root).unwrap_or(path);
    FileStat {
        path: rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        size: meta.len(),
        modified_ms: meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64),
    }
}

/// Metadata of one file, `None` if it does not exist.
pub(crate) fn stat(root: &Path, target: &Path) -> io::Result<Option<FileStat>> {
    match std::fs::metadata(target) {
        Ok(meta) if meta.is_file() => Ok(Some(stat_of(root, target, &meta))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every file under `root` whose relative path starts with `prefix`, sorted.
/// Temp files of writes in progress are not listed.
pub(crate) fn list(root: &Path, prefix: &str) -> io::Result<Vec<FileStat>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            let path = entry.path();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && !entry.file_name().to_string_lossy().starts_with(".") {
                let stat = stat_of(root, &path, &meta);
                if stat.path.starts_with(prefix) {
                    out.push(stat);
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        let root = Path::new("/v/files");
        assert_eq!(
            resolve(root, "a/b.txt").unwrap(),
            Path::new("/v/files/a/b.txt")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/",
            "./a",
            "a\\b",
        ] {
            let err = resolve(root, bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn put_replaces_atomically_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(&resolve(root, "a/x.txt").unwrap(), b"one").unwrap();
        put(&resolve(root, "a/x.txt").unwrap(), b"two!").unwrap();
        put(&resolve(root, "b.txt").unwrap(), b"").unwrap();
        assert_eq!(std::fs::read(root.join("a/x.txt")).unwrap(), b"two!");
        let all = list(root, "").unwrap();
        let names: Vec<&str> = all.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(names, ["a/x.txt", "b.txt"]);
        assert_eq!(all[0].size, 4);
        assert_eq!(list(root, "a/").unwrap().len(), 1);
        assert!(stat(root, &root.join("nope")).unwrap().is_none());
    }
}
