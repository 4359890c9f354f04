//! Runtime volumes mirrored to and from Modal Volumes of the same name, so
//! agents keep one view of shared files whichever backend ran the work.
//! Only what changed moves: a manifest per volume (under the cache dir)
//! remembers the size and modification time last seen on each side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ModalBackend;
use crate::compute::BackendError;

/// Size and modification time (seconds) of a file.
type Stamp = (u64, i64);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    local: BTreeMap<String, Stamp>,
    remote: BTreeMap<String, Stamp>,
}

/// What a sync moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Files sent or fetched.
    pub copied: Vec<String>,
    /// Files removed on the other side.
    pub deleted: Vec<String>,
}

fn manifest_path(backend: &ModalBackend, volume: &str) -> PathBuf {
    backend
        .config
        .cache_dir
        .join("sync")
        .join(format!("{volume}.json"))
}

async fn load(path: &Path) -> Manifest {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            // Saved atomically, so only a foreign hand makes this: the next
            // sync starts over (every file compared again), loudly.
            tracing::warn!(path = %path.display(), error = %e, "unreadable volume sync manifest; starting over");
            Manifest::default()
        }),
        Err(_) => Manifest::default(),
    }
}

/// Saves the manifest atomically and durably (`persist::write_atomic`): a
/// crash leaves the old one or the new one, never a torn file.
async fn save(path: &Path, manifest: &Manifest) -> Result<(), BackendError> {
    let bytes = serde_json::to_vec(manifest).expect("manifest serializes");
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            crate::persist::private_dir(dir)?;
        }
        crate::persist::write_atomic(&path, |out| std::io::Write::write_all(out, &bytes))
    })
    .await
    .map_err(|e| BackendError::Io(std::io::Error::other(e)))??;
    Ok(())
}

/// Every regular file under `dir`, by path relative to it.
fn scan(dir: &Path) -> std::io::Result<BTreeMap<String, Stamp>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(dir)
                    .expect("under dir")
                    .display()
                    .to_string();
                out.insert(rel, (meta.len(), meta.mtime()));
            }
        }
    }
    Ok(out)
}

/// [`scan`] off the async threads.
async fn scan_dir(dir: &Path) -> Result<BTreeMap<String, Stamp>, BackendError> {
    let root = dir.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || scan(&root))
        .await
        .map_err(|e| BackendError::Modal(e.to_string()))??)
}

/// Uploads the files of `dir` that changed since the last sync to the Modal
/// Volume `volume` (created if missing) and deletes there what was deleted here.
async fn push(
    backend: &ModalBackend,
    volume: &str,
    dir: &Path,
) -> Result<SyncReport, BackendError> {
    backend.credentials()?;
    let path = manifest_path(backend, volume);
    let mut manifest = load(&path).await;
    let now = scan_dir(dir).await?;
    let copied: Vec<String> = now
        .iter()
        .filter(|(rel, stamp)| manifest.local.get(*rel) != Some(stamp))
        .map(|(rel, _)| rel.clone())
        .collect();
    let deleted: Vec<String> = manifest
        .local
        .keys()
        .filter(|rel| !now.contains_key(*rel))
        .cloned()
        .collect();
    if !copied.is_empty() || !deleted.is_empty() {
        let files: Vec<(String, String)> = copied
            .iter()
            .map(|rel| (rel.clone(), format!("/{rel}")))
            .collect();
        let delete: Vec<String> = deleted.iter().map(|rel| format!("/{rel}")).collect();
        backend
            .control(json!({"op": "volume_put", "volume": volume, "root": dir,
                            "files": files, "delete": delete}))
            .await?;
    }
    manifest.local = now;
    save(&path, &manifest).await?;
    Ok(SyncReport { copied, deleted })
}

/// Downloads the files of the Modal Volume `volume` that changed there since
/// the last sync into `dir`.
async fn pull(
    backend: &ModalBackend,
    volume: &str,
    dir: &Path,
) -> Result<SyncReport, BackendError> {
    backend.credentials()?;
    let path = manifest_path(backend, volume);
    let mut manifest = load(&path).await;
    let listing = backend
        .control(json!({"op": "volume_list", "volume": volume}))
        .await?;
    let mut remote = BTreeMap::new();
    for entry in listing.as_array().into_iter().flatten() {
        let rel = entry[0]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        // Names that would land outside the volume's directory are skipped.
        if rel.is_empty()
            || rel
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            tracing::warn!(volume, path = %rel, "skipping a Modal volume entry with an unsafe path");
            continue;
        }
        let stamp = (
            entry[1].as_u64().unwrap_or(0),
            entry[2].as_f64().unwrap_or(0.0) as i64,
        );
        remote.insert(rel, stamp);
    }
    let copied: Vec<String> = remote
        .iter()
        .filter(|(rel, stamp)| manifest.remote.get(*rel) != Some(stamp))
        .map(|(rel, _)| rel.clone())
        .collect();
    if !copied.is_empty() {
        let files: Vec<(String, String)> = copied
            .iter()
            .map(|rel| (format!("/{rel}"), rel.clone()))
            .collect();
        tokio::fs::create_dir_all(dir).await?;
        backend
            .control(json!({"op": "volume_get", "volume": volume, "root": dir, "files": files}))
            .await?;
    }
    manifest.remote = remote;
    manifest.local = scan_dir(dir).await?;
    save(&path, &manifest).await?;
    Ok(SyncReport {
        copied,
        deleted: Vec::new(),
    })
}

impl ModalBackend {
    /// Uploads what changed in `dir` to the Modal Volume `volume`.
    pub async fn push_volume(&self, volume: &str, dir: &Path) -> Result<SyncReport, BackendError> {
        push(self, volume, dir).await
    }

    /// Downloads what changed in the Modal Volume `volume` into `dir`.
    pub async fn pull_volume(&self, volume: &str, dir: &Path) -> Result<SyncReport, BackendError> {
        pull(self, volume, dir).await
    }
}
