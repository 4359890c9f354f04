//! A sandbox's disk quota (`limits.disk_mib`): what its own files (its
//! workdir and `/tmp`, as the host keeps them) take is measured each second
//! while a process runs there; past the quota the running processes end
//! `disk_quota_exceeded` and no process starts until files are removed. No
//! one file passes it at all: it is every process's file-size limit too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::process::Stop;
use super::Sandbox;
use crate::sync::Recover;

/// How often a sandbox with a running process is measured.
const EVERY: Duration = Duration::from_secs(1);

/// Measures `sandbox` until it ends or the runtime stops.
pub(crate) async fn watch(shutdown: CancellationToken, sandbox: Arc<Sandbox>) {
    let limit_mib = sandbox.request.limits.disk_mib;
    let limit = limit_mib.saturating_mul(1 << 20);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let running: Vec<_> = {
            let live = sandbox.live.lock().recover();
            if live.ended.is_some() {
                return;
            }
            // Idle and under the quota: nothing can have grown (the files
            // API checks its own writes).
            if live.over_quota.is_none() && !live.processes.values().any(|p| p.is_running()) {
                continue;
            }
            live.processes
                .values()
                .filter(|p| p.is_running())
                .cloned()
                .collect()
        };
        let measured = sandbox.clone();
        let Ok(used) =
            tokio::task::spawn_blocking(move || used(&measured, limit.saturating_add(1))).await
        else {
            continue;
        };
        let over = used > limit;
        sandbox.live.lock().recover().over_quota = over.then_some(used >> 20);
        if over {
            tracing::info!(sandbox = %sandbox.id, used_mib = used >> 20, limit_mib, "sandbox over its disk quota; its processes are stopped");
            for p in running {
                p.stop(Stop::DiskQuota(limit_mib));
            }
        }
    }
}

/// Bytes `sandbox`'s own files (its workdir and `/tmp`) take, counted up
/// to a little past `stop`.
pub(crate) fn used(sandbox: &Sandbox, stop: u64) -> u64 {
    [sandbox.host.join("work"), sandbox.host.join("tmp")]
        .iter()
        .fold(0u64, |sum, d| sum.saturating_add(usage(d, stop)))
}

/// Bytes the files under `dir` take on disk (links not followed), counted
/// up to a little past `stop` (no need to walk a million files to know).
pub(crate) fn usage(dir: &Path, stop: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            // What it takes, not what it says (a sparse file takes little).
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                pending.push(entry.path());
            }
            if total > stop {
                return total;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_what_files_take_and_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("b"), vec![1u8; 1 << 20]).unwrap();
        // A sparse file of 1 GiB takes next to nothing.
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let all = usage(dir.path(), u64::MAX);
        assert!((2 << 20..3 << 20).contains(&all), "{all}");
        assert!(usage(dir.path(), 1) < all || all <= 1 << 20);
    }
}
