//! A sandbox's files, from outside: paths are workdir-relative or absolute
//! inside the sandbox, and resolve to one of its writable places (its
//! workdir, its `/tmp`, a volume it mounts). Every operation walks from that
//! place's root without following a link ([`Root`]), so a link the code
//! planted never leads outside.

use std::sync::Arc;

use chrono::{TimeZone, Utc};

use super::{short, Sandbox, SandboxError, Sandboxes};
use crate::volume::beneath::{Kind, Root};
use crate::wire::{SandboxFileEntry, SandboxFileList};

/// Most entries one recursive remove deletes.
const MAX_REMOVE_ENTRIES: u64 = 1_000_000;

/// A path inside a sandbox, resolved: the host root of the place holding
/// it, the path below that root, and the path as the sandbox sees it.
pub(crate) struct Resolved {
    root: std::path::PathBuf,
    rel: String,
    inside: String,
}

/// `path` made absolute inside the sandbox (relative to `workdir`), with
/// `.` and `..` applied; none when it would climb above `/`.
fn normalize(workdir: &str, path: &str) -> Option<String> {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{workdir}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

impl Sandboxes {
    /// Where `path` is inside `sandbox`, checked.
    pub(crate) fn resolve(
        &self,
        sandbox: &Sandbox,
        path: &str,
        field: &str,
    ) -> Result<Resolved, SandboxError> {
        if path.len() > 4096 || path.contains('\0') {
            return Err(SandboxError::invalid(
                field,
                "a path of at most 4096 bytes without NUL",
            ));
        }
        let inside = normalize(&sandbox.workdir, path).ok_or_else(|| {
            SandboxError::invalid(
                field,
                format!("{:?} climbs above the sandbox's root", short(path)),
            )
        })?;
        // The longest mount holding it.
        let mut best: Option<(&std::path::PathBuf, &String)> = None;
        for (host, mount) in &sandbox.binds {
            let holds = inside == *mount || inside.starts_with(&format!("{mount}/"));
            if holds && best.is_none_or(|(_, m)| m.len() < mount.len()) {
                best = Some((host, mount));
            }
        }
        let Some((host, mount)) = best else {
            let places: Vec<&str> = sandbox.binds.iter().map(|(_, m)| m.as_str()).collect();
            return Err(SandboxError::invalid(
                field,
                format!(
                    "{:?} is not in a place this API reaches; paths are workdir-relative or under {}",
                    short(&inside),
                    places.join(", ")
                ),
            ));
        };
        let rel = inside[mount.len()..].trim_start_matches('/').to_owned();
        Ok(Resolved {
            root: host.clone(),
            rel,
            inside,
        })
    }

    /// `path` as an absolute path inside the sandbox, which must be an
    /// existing directory (a cwd, say).
    pub(crate) async fn existing_dir(
        &self,
        sandbox: &Arc<Sandbox>,
        path: &str,
        field: &'static str,
    ) -> Result<String, SandboxError> {
        let resolved = self.resolve(sandbox, path, field)?;
        let inside = resolved.inside.clone();
        let is_dir = tokio::task::spawn_blocking(move || {
            Root::existing(&resolved.root)
                .and_then(|root| root.meta(&resolved.rel))
                .map(|m| m.is_some_and(|m| m.kind == Kind::Dir))
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if is_dir {
            Ok(inside)
        } else {
            Err(SandboxError::invalid(
                field,
                format!("{} is not a directory in the sandbox", short(&inside)),
            ))
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        id: &str,
        path: &str,
        f: impl FnOnce(&Root, &Resolved, &Arc<Sandbox>) -> Result<T, SandboxError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let sandbox = self.get(id)?;
        sandbox.touch()?;
        let resolved = self.resolve(&sandbox, path, "path")?;
        tokio::task::spawn_blocking(move || {
            let root = Root::existing(&resolved.root)?;
            f(&root, &resolved, &sandbox)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Opens the regular file at `path` for reading, with its size (at most
    /// the files API's limit).
    pub async fn open_file(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(std::fs::File, u64), SandboxError> {
        let max = self.shared.config.max_file_bytes;
        self.blocking(id, path, move |root, r, _| {
            if r.rel.is_empty() {
                return Err(SandboxError::NoSuchFile(format!(
                    "{} is a directory",
                    r.inside
                )));
            }
            let (file, size) = root.open_file(&r.rel).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    // A link is there, but is never followed: said so.
                    let link = matches!(root.meta(&r.rel), Ok(Some(m)) if m.kind == Kind::Link);
                    SandboxError::NoSuchFile(if link {
                        format!(
                            "{} is a link, and the files API never follows links; read the file it points to by that file's path",
                            short(&r.inside)
                        )
                    } else {
                        format!("no file at {}", short(&r.inside))
                    })
                }
                _ => e.into(),
            })?;
            if size > max {
                return Err(SandboxError::FileTooLarge { size, max });
            }
            Ok((file, size))
        })
        .await
    }

    /// The file at `path` as chunks of bytes, with the values of known
    /// secrets redacted while it is UTF-8 text (a binary file passes as it
    /// is from its first byte that is not text): a process given a secret
    /// cannot hand its value out through a file.
    pub async fn read_file_redacted(
        &self,
        id: &str,
        path: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>, SandboxError> {
        use std::io::Read;
        let (file, size) = self.open_file(id, path).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let redact = self.shared.redact.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = file.take(size);
            let mut buf = vec![0u8; 64 << 10];
            let mut pending: Vec<u8> = Vec::new();
            let mut binary = false;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                let eof = n == 0;
                pending.extend_from_slice(&buf[..n]);
                let out = if binary {
                    std::mem::take(&mut pending)
                } else {
                    let valid = match std::str::from_utf8(&pending) {
                        Ok(_) => pending.len(),
                        Err(e) if e.error_len().is_none() && !eof => e.valid_up_to(),
                        Err(e) => {
                            binary = true;
                            e.valid_up_to()
                        }
                    };
                    let text = std::str::from_utf8(&pending[..valid]).unwrap_or_default();
                    let hold = if eof || binary {
                        0
                    } else {
                        redact.unfinished_tail(text)
                    };
                    let mut out = redact
                        .redact(&text[..text.len() - hold])
                        .into_owned()
                        .into_bytes();
                    let rest = pending.split_off(valid - hold);
                    pending = rest;
                    if binary {
                        out.append(&mut pending);
                    }
                    out
                };
                if !out.is_empty() && tx.blocking_send(Ok(out)).is_err() {
                    return;
                }
                if eof {
                    if !pending.is_empty() {
                        let _ = tx.blocking_send(Ok(pending));
                    }
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Reads the file at `path` whole.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, SandboxError> {
        let (file, size) = self.open_file(id, path).await?;
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut out = Vec::with_capacity(size as usize);
            file.take(size).read_to_end(&mut out)?;
            Ok(out)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Writes `bytes` to `path` (atomically, making missing directories).
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<SandboxFileEntry, SandboxError> {
        let max = self.shared.config.max_file_bytes;
        if bytes.len() as u64 > max {
            return Err(SandboxError::FileTooLarge {
                size: bytes.len() as u64,
                max,
            });
        }
        self.blocking(id, path, move |root, r, sandbox| {
            if r.rel.is_empty() {
                return Err(SandboxError::invalid(
                    "path",
                    format!("{} is a directory", r.inside),
                ));
            }
            // A write that would take the sandbox's files past its disk
            // quota is refused (what it replaces is counted as freed).
            let limit_mib = sandbox.request.limits.disk_mib;
            let limit = limit_mib.saturating_mul(1 << 20);
            let used = super::quota::used(sandbox, limit);
            let replaced = root.meta(&r.rel)?.map_or(0, |m| m.size);
            if used
                .saturating_sub(replaced)
                .saturating_add(bytes.len() as u64)
                > limit
            {
                return Err(SandboxError::OverQuota {
                    used_mib: (used.saturating_add(bytes.len() as u64)) >> 20,
                    limit_mib,
                });
            }
            if root.meta(&r.rel)?.is_some_and(|m| m.kind == Kind::Dir) {
                return Err(SandboxError::invalid(
                    "path",
                    format!("{} is a directory", short(&r.inside)),
                ));
            }
            root.write_mode(&r.rel, &bytes, 0o644)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOTDIR | libc::ELOOP | libc::EEXIST | libc::EISDIR) => {
                        SandboxError::invalid(
                            "path",
                            format!(
                                "{} is in the way (a file or a link on its path)",
                                short(&r.inside)
                            ),
                        )
                    }
                    _ => e.into(),
                })?;
            entry(root, r)
        })
        .await
    }

    /// Makes the directory `path` and its parents.
    pub async fn make_dir(&self, id: &str, path: &str) -> Result<SandboxFileEntry, SandboxError> {
        self.blocking(id, path, |root, r, _| {
            root.mkdir(&r.rel).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR | libc::ELOOP | libc::EEXIST) => SandboxError::invalid(
                    "path",
                    format!("{} is in the way (a file or a link)", short(&r.inside)),
                ),
                _ => e.into(),
            })?;
            entry(root, r)
        })
        .await
    }

    /// Removes `path`, recursively when it is a directory; false when
    /// nothing was there.
    pub async fn remove_file(&self, id: &str, path: &str) -> Result<bool, SandboxError> {
        self.blocking(id, path, |root, r, _| {
            if r.rel.is_empty() {
                return Err(SandboxError::invalid(
                    "path",
                    format!(
                        "{} is a root of the sandbox and cannot be removed",
                        r.inside
                    ),
                ));
            }
            Ok(root.remove_all(&r.rel, MAX_REMOVE_ENTRIES)?)
        })
        .await
    }

    /// The entries of the directory `path` (default the workdir).
    pub async fn list_files(
        &self,
        id: &str,
        path: Option<&str>,
    ) -> Result<SandboxFileList, SandboxError> {
        let path = path.unwrap_or(".").to_owned();
        self.blocking(id, &path, |root, r, _| {
            let entries = root.list_dir(&r.rel).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    SandboxError::NoSuchFile(format!("no directory at {}", short(&r.inside)))
                }
                _ => e.into(),
            })?;
            let base = r.inside.trim_end_matches('/');
            Ok(SandboxFileList {
                path: r.inside.clone(),
                entries: entries
                    .into_iter()
                    .take(10_000)
                    .map(|(name, m)| SandboxFileEntry {
                        path: format!("{base}/{name}"),
                        name,
                        size: m.size,
                        mode: m.mode,
                        mtime: ms(m.modified_ms),
                        is_dir: m.kind == Kind::Dir,
                        is_link: m.kind == Kind::Link,
                    })
                    .collect(),
            })
        })
        .await
    }
}

fn ms(millis: u64) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(millis as i64)
        .single()
        .unwrap_or_default()
}

fn entry(root: &Root, r: &Resolved) -> Result<SandboxFileEntry, SandboxError> {
    let m = root
        .meta(&r.rel)?
        .ok_or_else(|| SandboxError::NoSuchFile(format!("no file at {}", short(&r.inside))))?;
    Ok(SandboxFileEntry {
        name: r.inside.rsplit('/').next().unwrap_or_default().to_owned(),
        path: r.inside.clone(),
        size: m.size,
        mode: m.mode,
        mtime: ms(m.modified_ms),
        is_dir: m.kind == Kind::Dir,
        is_link: m.kind == Kind::Link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_inside_the_sandbox() {
        assert_eq!(
            normalize("/workspace", "a/b").as_deref(),
            Some("/workspace/a/b")
        );
        assert_eq!(
            normalize("/workspace", "../tmp/x").as_deref(),
            Some("/tmp/x")
        );
        assert_eq!(
            normalize("/workspace", "/etc/passwd").as_deref(),
            Some("/etc/passwd")
        );
        assert_eq!(normalize("/workspace", "../../.."), None);
        assert_eq!(normalize("/workspace", ".").as_deref(), Some("/workspace"));
    }
}
