//! A volume's files: the paths callers may name (relative, no `..`), and
//! their metadata. The operations themselves are in `beneath`, which never
//! follows a link.

use std::path::{Component, Path, PathBuf};

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
        path: crate::value::clip(path, crate::value::MAX_ECHO).into_owned(),
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
}
