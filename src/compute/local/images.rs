//! Python package images: one virtual environment per distinct package set,
//! built once (even when several deploys ask for it at the same moment) under
//! `WORK_DIR/../images/KEY`, with `uv` when it is on `PATH`, else `venv` and
//! `pip`. The build log is kept beside it as `build.log`; a failed build leaves
//! no environment behind and fails the deploy with the installer's message.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio::sync::OnceCell;

use super::sandbox::{Bwrap, Jail};
use crate::compute::BackendError;
use crate::redact::Redactor;

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

/// How package builds run: sandboxed where bubblewrap is (network on, the
/// environment's directory the only place it can write), always with a
/// cleared environment and a time limit, and with known secrets redacted from
/// what is kept or returned.
#[derive(Clone)]
pub(crate) struct Builder<'a> {
    pub(crate) bwrap: Option<&'a Arc<Bwrap>>,
    pub(crate) redact: &'a Redactor,
    pub(crate) timeout: Duration,
}

/// The installer's configuration from the runtime's environment (indexes,
/// find-links, certificates, proxies): all a build gets besides `PATH`.
fn installer_env() -> Vec<(String, String)> {
    const EXACT: &[&str] = &[
        "PATH",
        "LANG",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
    ];
    std::env::vars()
        .filter(|(k, _)| {
            EXACT.contains(&k.as_str()) || k.starts_with("PIP_") || k.starts_with("UV_")
        })
        .collect()
}

/// Scrubs the installer's own credentials from build output: the values of
/// variables whose names say they are secret, and the `user:password@` of
/// any URL in its configuration (an index with a token in it).
fn redact_installer_secrets(text: &str) -> String {
    let redactor = Redactor::default();
    for (key, value) in installer_env() {
        let upper = key.to_ascii_uppercase();
        if ["TOKEN", "PASSWORD", "SECRET", "AUTH", "KEY", "CREDENTIAL"]
            .iter()
            .any(|w| upper.contains(w))
        {
            redactor.add(value.clone());
        }
        for url in value.split([' ', ',']) {
            if let Some((_, rest)) = url.split_once("://") {
                if let Some((userinfo, _)) = rest.split_once('@') {
                    redactor.add(userinfo.to_owned());
                }
            }
        }
    }
    redactor.redact(text).into_owned()
}

impl Builder<'_> {
    /// A build step: `program` sandboxed (when possible) with `dir` writable.
    fn command(&self, program: &Path, dir: &Path) -> Command {
        let env = installer_env();
        let mut cmd = match self.bwrap {
            Some(bwrap) => {
                // Read-only: the installer and what its configuration names
                // (a find-links directory, a certificate bundle).
                let mut read_only: Vec<PathBuf> = Vec::new();
                let mut show = |p: PathBuf| {
                    if p.is_absolute() && p.exists() && !read_only.contains(&p) {
                        read_only.push(p);
                    }
                };
                if let Some(dir) = program.parent() {
                    show(dir.to_path_buf());
                }
                show(PathBuf::from("/etc/pip.conf"));
                for (_, v) in &env {
                    for part in v.split([' ', ',']) {
                        show(PathBuf::from(part.trim_start_matches("file://")));
                    }
                }
                Jail {
                    bwrap: bwrap.clone(),
                    binds: vec![(dir.to_path_buf(), dir.display().to_string())],
                    read_only,
                    network: true,
                    gpu: false,
                }
                .command(program, &[])
            }
            None => Command::new(program),
        };
        cmd.env_clear()
            .envs(env)
            .env("HOME", dir)
            .env("PIP_NO_CACHE_DIR", "1")
            .env("UV_NO_CACHE", "1")
            .current_dir(dir)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// Runs one build step within the time limit, appending its output
    /// (redacted) to `log`; on failure, the last lines (redacted).
    async fn run(&self, cmd: &mut Command, log: &Path) -> Result<(), String> {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run the installer: {e}"))?;
        // The step's whole process group goes when the step does: at its
        // limit, and when the build is dropped (its caller gone).
        let mut group = GroupKill(child.id());
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => {
                group.0 = None;
                out.map_err(|e| format!("the installer failed: {e}"))?
            }
            Err(_) => {
                drop(group);
                return Err(format!(
                    "the package build ran past its limit of {} s and was stopped",
                    self.timeout.as_secs()
                ));
            }
        };
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let text = redact_installer_secrets(&self.redact.redact(&text));
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
}

/// Kills the process group its pid leads, when dropped holding one.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            // SAFETY: kill(2) on the process group the step leads (it was
            // started with `process_group(0)` and not yet waited for).
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
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
        builder: Builder<'_>,
    ) -> Result<PathBuf, BackendError> {
        if packages.is_empty() {
            return Ok(base.to_path_buf());
        }
        let key = key(packages);
        let cell = self.building.entry(key.clone()).or_default().clone();
        let dir = root.join(&key);
        cell.get_or_try_init(|| self.build(dir, base, packages, builder))
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
        b: Builder<'_>,
    ) -> Result<PathBuf, String> {
        // Absolute: the build steps run in `dir` (a relative root would
        // point elsewhere from there).
        let dir = std::path::absolute(&dir).map_err(|e| e.to_string())?;
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
        let result = match which("uv") {
            Some(uv) => {
                b.run(
                    b.command(&uv, &dir)
                        .arg("venv")
                        .arg("--python")
                        .arg(base)
                        .arg(&dir),
                    &log,
                )
                .await?;
                b.run(
                    b.command(&uv, &dir)
                        .args(["pip", "install", "--python"])
                        .arg(&python)
                        .arg("--")
                        .args(packages),
                    &log,
                )
                .await
            }
            None => {
                b.run(b.command(base, &dir).args(["-m", "venv"]).arg(&dir), &log)
                    .await?;
                b.run(
                    b.command(&python, &dir)
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
            }
        };
        if let Err(e) = result {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            // The log's name, not where the server keeps it: the reader
            // may be a remote client or a model.
            let name = log
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Err(format!(
                "{e} (full log: {name} among the server's image build logs)"
            ));
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

    /// A relative root (the Modal SDK's `target/modal-sdk`) builds where
    /// it says, though the build steps run inside the environment's dir.
    #[tokio::test]
    async fn a_relative_root_builds_in_place() {
        let name = format!("target/test-images-{}", uuid::Uuid::new_v4().simple());
        let root = Path::new(&name);
        let (base, _) = super::super::resolve_python(None).await.unwrap();
        let builder = Builder {
            bwrap: None,
            redact: &Redactor::default(),
            timeout: Duration::from_secs(600),
        };
        let python = Images::default()
            // `pip` is in every venv already: the build needs no index.
            .python_for(root, &base, &["pip".to_owned()], builder)
            .await;
        let cleanup = std::fs::remove_dir_all(root);
        let python = python.unwrap();
        assert!(python.is_absolute(), "{}", python.display());
        assert!(
            python.starts_with(std::path::absolute(root).unwrap()),
            "{}",
            python.display()
        );
        cleanup.unwrap();
    }

    #[test]
    fn keys_ignore_order_and_duplicates() {
        let a = key(&["b==1".into(), "a".into()]);
        assert_eq!(a, key(&["a".into(), "b==1".into(), "a".into()]));
        assert_ne!(a, key(&["a".into()]));
    }
}
