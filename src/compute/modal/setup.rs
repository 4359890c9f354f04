//! The Python environment with the pinned `modal` SDK: the one the user
//! points to, or one built once under the cache dir (with `uv` when on
//! `PATH`, else venv + pip), shared by processes through a file lock.

use std::path::{Path, PathBuf};

use super::{ModalConfig, MODAL_SDK_VERSION};
use crate::compute::local::images::{Builder, Images};
use crate::compute::local::resolve_python;
use crate::compute::BackendError;
use crate::redact::Redactor;

/// The interpreter that runs the bridge and `modal deploy`.
pub(crate) async fn sdk_python(config: &ModalConfig) -> Result<PathBuf, BackendError> {
    if let Some(python) = &config.python {
        check_sdk(python).await?;
        return Ok(python.clone());
    }
    let root = config.cache_dir.join("sdk");
    tokio::fs::create_dir_all(&root).await?;
    let lock = lock(&root.join(".lock")).await?;
    let (base, _) = resolve_python(None).await?;
    let requirement = format!("modal=={MODAL_SDK_VERSION}");
    // The operator's own pinned SDK: built unsandboxed (it is not code an
    // agent wrote), still with a cleared environment and a time limit.
    let builder = Builder {
        bwrap: None,
        redact: &Redactor::default(),
        timeout: std::time::Duration::from_secs(15 * 60),
    };
    let python = Images::default()
        .python_for(&root, &base, &[requirement], builder)
        .await
        .map_err(|e| BackendError::Modal(format!("installing the modal SDK failed: {e}")))?;
    drop(lock);
    check_sdk(&python).await?;
    Ok(python)
}

/// Checks that `python` imports `modal`, saying which version it has.
async fn check_sdk(python: &Path) -> Result<(), BackendError> {
    let mut cmd = tokio::process::Command::new(python);
    cmd.args(["-c", "import modal; print(modal.__version__)"])
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| BackendError::Modal(format!("cannot run {}: {e}", python.display())))?;
    if !out.status.success() {
        return Err(BackendError::Modal(format!(
            "{} cannot import the modal SDK (pip install modal=={MODAL_SDK_VERSION}): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if version != MODAL_SDK_VERSION {
        tracing::warn!(%version, pinned = MODAL_SDK_VERSION, "the modal SDK differs from the version this backend is checked against");
    }
    Ok(())
}

/// An exclusive `flock` on `path`, held until the file is dropped.
async fn lock(path: &Path) -> Result<std::fs::File, BackendError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this closure owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            Ok(file)
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await
    .map_err(|e| BackendError::Modal(e.to_string()))?
    .map_err(BackendError::Io)
}
