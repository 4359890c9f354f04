//! Python package images: one virtual environment per distinct package set,
//! built once (even when several deploys ask for it at the same moment) under
//! `WORK_DIR/../images/KEY`, with `uv` when it is on `PATH`, else `venv` and
//! `pip`. The build log is kept beside it as `build.log`; a failed build leaves
//! no environment behind and fails the deploy with the installer's message.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::compute::BackendError;

/// Environments by package-set key.
#[derive(Debug, Default)]
pub(crate) struct Images {
    building: DashMap<String, Arc<OnceCell<PathBuf>>>,
    builds: AtomicU64,
}

fn key(packages: &[String]) -> String {
    let mut sorted: Vec<&String> = packages.iter().collect();
    sorted.sort();
    sorted.dedup();
    let digest = Sha256::digest(
        sorted
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

async fn run(cmd: &mut Command, log: &Path) -> Result<(), String> {
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run the installer: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let mut previous = tokio::fs::read_to_string(log).await.unwrap_or_default();
    previous.push_str(&text);
    let _ = tokio::fs::write(log, previous).await;
    if out.status.success() {
        Ok(())
    } else {
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(6)..].join("\n");
        Err(format!("installer exited with {}: {tail}", out.status))
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

impl Images {
    /// How many environments this process has built.
    pub(crate) fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    /// The interpreter of the environment for `packages` (the base one when
    /// there are none), building it if needed.
    pub(crate) async fn python_for(
        &self,
        root: &Path,
        base: &Path,
        packages: &[String],
    ) -> Result<PathBuf, BackendError> {
        if packages.is_empty() {
            return Ok(base.to_path_buf());
        }
        let key = key(packages);
        let cell = self.building.entry(key.clone()).or_default().clone();
        let dir = root.join(&key);
        cell.get_or_try_init(|| self.build(dir, base, packages))
            .await
            .map(|d| d.join("bin").join("python"))
            .map_err(|log| BackendError::Image {
                packages: packages.join(" "),
                log,
            })
    }

    async fn build(
        &self,
        dir: PathBuf,
        base: &Path,
        packages: &[String],
    ) -> Result<PathBuf, String> {
        let ready = dir.join(".ready");
        if tokio::fs::metadata(&ready).await.is_ok() {
            return Ok(dir);
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| e.to_string())?;
        let log = dir.with_extension("build.log");
        let _ = tokio::fs::write(&log, format!("packages: {}\n", packages.join(" "))).await;
        tracing::info!(env = %dir.display(), packages = %packages.join(" "), "building a Python environment");
        let python = dir.join("bin").join("python");
        let result = if on_path("uv") {
            run(
                Command::new("uv")
                    .arg("venv")
                    .arg("--python")
                    .arg(base)
                    .arg(&dir),
                &log,
            )
            .await?;
            run(
                Command::new("uv")
                    .args(["pip", "install", "--python"])
                    .arg(&python)
                    .arg("--")
                    .args(packages),
                &log,
            )
            .await
        } else {
            run(Command::new(base).args(["-m", "venv"]).arg(&dir), &log).await?;
            run(
                Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        "--no-input",
                        "--",
                    ])
                    .args(packages),
                &log,
            )
            .await
        };
        if let Err(e) = result {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(format!("{e} (full log: {})", log.display()));
        }
        tokio::fs::write(&ready, b"")
            .await
            .map_err(|e| e.to_string())?;
        self.builds.fetch_add(1, Ordering::Relaxed);
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_order_and_duplicates() {
        let a = key(&["b==1".into(), "a".into()]);
        assert_eq!(a, key(&["a".into(), "b==1".into(), "a".into()]));
        assert_ne!(a, key(&["a".into()]));
    }
}
