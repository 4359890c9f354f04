//! What a container starts from: the interpreter, its environment, and the
//! machine's size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::compute::{BackendError, Deployment};

/// What every container's environment starts from; nothing else of the
/// runtime's environment reaches a container.
pub(super) fn base_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for key in ["PATH", "HOME", "LANG", "TZ"] {
        if let Ok(v) = std::env::var(key) {
            env.push((key.to_owned(), v));
        }
    }
    if !env.iter().any(|(k, _)| k == "LANG") {
        env.push(("LANG".into(), "C.UTF-8".into()));
    }
    env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    env
}

/// The function's own environment, set when its code is loaded.
/// Sandboxed, volumes are at their mount paths; otherwise at their host dirs.
pub(super) fn function_env(d: &Deployment, sandboxed: bool) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("MODAL_AGENTS_FUNCTION".into(), d.spec.name.clone());
    let volumes: BTreeMap<&String, String> = d
        .volume_dirs
        .iter()
        .map(|(mount, dir)| {
            let at = if sandboxed {
                mount.clone()
            } else {
                dir.display().to_string()
            };
            (mount, at)
        })
        .collect();
    env.insert(
        "MODAL_AGENTS_VOLUMES".into(),
        serde_json::to_string(&volumes).expect("string map serializes"),
    );
    env.extend(d.secret_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The interpreter's real executable and the directories it needs (its
/// prefixes), resolved once so shims such as pyenv's cost nothing per container.
pub(crate) async fn resolve_python(
    configured: Option<PathBuf>,
) -> Result<(PathBuf, Vec<PathBuf>), BackendError> {
    let candidate = configured.unwrap_or_else(|| PathBuf::from("python3"));
    let failed = |reason: String| BackendError::ContainerStart {
        function: String::new(),
        reason,
    };
    let out = tokio::process::Command::new(&candidate)
        .args([
            "-c",
            "import os, sys; print(sys.executable); print(os.path.realpath(sys.executable)); \
             print(sys.prefix); print(sys.base_prefix)",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed(format!("cannot run {}: {e}", candidate.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let Some(executable) = lines.next().filter(|_| out.status.success()) else {
        return Err(failed(format!(
            "{} did not report its executable: {}",
            candidate.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    };
    let mut roots: Vec<PathBuf> = Vec::new();
    for line in lines {
        let path = PathBuf::from(line);
        // The real executable's directory, and each prefix.
        let root = if path.is_file() {
            path.parent().map(Path::to_path_buf).unwrap_or(path)
        } else {
            path
        };
        if !roots.iter().any(|r| root.starts_with(r)) {
            roots.retain(|r| !r.starts_with(&root));
            roots.push(root);
        }
    }
    Ok((PathBuf::from(executable), roots))
}

pub(super) fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// The memory ceiling of a container whose function sets no limit: 80% of
/// the machine, so no single container can push the machine into the
/// kernel's OOM killer (and take the runtime with it).
pub(super) fn default_memory_ceiling_mib() -> u64 {
    (total_memory_mib() / 5 * 4).max(256)
}

pub(super) fn total_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
