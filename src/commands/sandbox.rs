//! The sandbox commands: create, exec, wait, files, snapshot, fork, diff,
//! keepalive, terminate and list, over [`Sandboxes`](crate::sandbox::Sandboxes).

use super::{CommandError, Commands, MAX_TOOL_FILE_BYTES};
use crate::sandbox::SandboxError;
use crate::wire::{
    CreateSandbox, DiffSnapshots, ExecResult, ForkSandbox, Forked, KeepaliveSandbox,
    ListSandboxFiles, ListSandboxes, RunCode, RunCodeResult, SandboxExec, SandboxFileContent,
    SandboxFileEntry, SandboxFileList, SandboxFileRef, SandboxList, SandboxNetwork,
    SandboxProcessRef, SandboxRef, SandboxView, SnapshotDiff, SnapshotInfo, WriteSandboxFile,
    DEFAULT_RUN_CODE_TIMEOUT_S, MAX_RUN_CODE_BYTES, MAX_RUN_CODE_TIMEOUT_S,
};

fn err(tool: &'static str) -> impl Fn(SandboxError) -> CommandError {
    move |source| CommandError::Sandbox {
        tool: tool.to_owned(),
        source,
    }
}

impl Commands {
    /// `create_sandbox`.
    pub async fn create_sandbox(&self, a: CreateSandbox) -> Result<SandboxView, CommandError> {
        self.runtime
            .sandboxes()
            .create(a)
            .await
            .map_err(err("create_sandbox"))
    }

    /// `sandbox_exec`: starts a command; waits up to `wait_s` (the tool's
    /// default 55) for it.
    pub(super) async fn sandbox_exec(&self, a: SandboxExec) -> Result<ExecResult, CommandError> {
        const TOOL: &str = "sandbox_exec";
        let (id, mut exec) = a.into_parts();
        let sandboxes = self.runtime.sandboxes();
        let Some(progress) = self.progress.clone() else {
            return sandboxes.exec(&id, exec).await.map_err(err(TOOL));
        };
        // Told about once a second while it waits: seconds waited of wait_s.
        let wait = exec.wait_s.take().unwrap_or(0);
        exec.wait_s = Some(0);
        let started = std::time::Instant::now();
        let mut result = sandboxes.exec(&id, exec).await.map_err(err(TOOL))?;
        let pid = result.process.process_id.clone();
        while result.process.outcome.is_none() && started.elapsed().as_secs() < wait {
            result = sandboxes
                .wait_process(&id, &pid, 1)
                .await
                .map_err(err(TOOL))?;
            progress(started.elapsed().as_secs().min(wait), wait);
        }
        Ok(result)
    }

    /// `wait_sandbox_process`.
    pub(super) async fn wait_sandbox_process(
        &self,
        a: SandboxProcessRef,
    ) -> Result<ExecResult, CommandError> {
        self.runtime
            .sandboxes()
            .wait_process(&a.sandbox_id, &a.process_id, a.wait_s)
            .await
            .map_err(err("wait_sandbox_process"))
    }

    /// `read_sandbox_file`: at most [`MAX_TOOL_FILE_BYTES`], as text or
    /// base64; a larger file is read over HTTP.
    pub(super) async fn read_sandbox_file(
        &self,
        a: SandboxFileRef,
    ) -> Result<SandboxFileContent, CommandError> {
        const TOOL: &str = "read_sandbox_file";
        let sandboxes = self.runtime.sandboxes();
        let (file, size) = sandboxes
            .open_file(&a.sandbox_id, &a.path)
            .await
            .map_err(err(TOOL))?;
        if size > MAX_TOOL_FILE_BYTES {
            return Err(CommandError::TooLarge {
                tool: TOOL.into(),
                what: format!(
                    "file `{}`",
                    crate::value::clip(&a.path, crate::value::MAX_ECHO)
                ),
                size,
                max: MAX_TOOL_FILE_BYTES,
                instead: format!(
                    "read it over HTTP: GET /sandboxes/{}/files/{}",
                    a.sandbox_id,
                    a.path.trim_start_matches('/')
                ),
            });
        }
        // Read from the file already opened (and checked), not opened again.
        let bytes = tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::with_capacity(size as usize);
            std::io::Read::read_to_end(&mut std::io::Read::take(file, size), &mut bytes)
                .map(|_| bytes)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| err(TOOL)(SandboxError::Io(e)))?;
        let size = bytes.len() as u64;
        let (text, base64) = super::files::encode(bytes);
        // A secret's value a process wrote into the file stays out.
        let text = text.map(|t| self.runtime.redactor().redact(&t).into_owned());
        Ok(SandboxFileContent {
            path: a.path,
            size,
            content: text,
            content_base64: base64,
        })
    }

    /// `write_sandbox_file`: text or base64.
    pub(super) async fn write_sandbox_file(
        &self,
        a: WriteSandboxFile,
    ) -> Result<SandboxFileEntry, CommandError> {
        const TOOL: &str = "write_sandbox_file";
        let bytes = super::files::decode(TOOL, a.content, a.content_base64)?;
        self.runtime
            .sandboxes()
            .write_file(&a.sandbox_id, &a.path, bytes)
            .await
            .map_err(err(TOOL))
    }

    /// `list_sandbox_files`.
    pub(super) async fn list_sandbox_files(
        &self,
        a: ListSandboxFiles,
    ) -> Result<SandboxFileList, CommandError> {
        self.runtime
            .sandboxes()
            .list_files(&a.sandbox_id, a.path.as_deref())
            .await
            .map_err(err("list_sandbox_files"))
    }

    /// `snapshot_sandbox`.
    pub(super) async fn snapshot_sandbox(
        &self,
        a: SandboxRef,
    ) -> Result<SnapshotInfo, CommandError> {
        self.runtime
            .sandboxes()
            .snapshot(&a.sandbox_id)
            .await
            .map_err(err("snapshot_sandbox"))
    }

    /// `fork_sandbox`.
    pub(super) async fn fork_sandbox(&self, a: ForkSandbox) -> Result<Forked, CommandError> {
        self.runtime
            .sandboxes()
            .fork(&a.sandbox_id, a.count)
            .await
            .map_err(err("fork_sandbox"))
    }

    /// `diff_snapshots`.
    pub(super) async fn diff_snapshots(
        &self,
        a: DiffSnapshots,
    ) -> Result<SnapshotDiff, CommandError> {
        self.runtime
            .sandboxes()
            .diff(&a.from, &a.to)
            .await
            .map_err(err("diff_snapshots"))
    }

    /// `keepalive_sandbox`.
    pub(super) async fn keepalive_sandbox(
        &self,
        a: KeepaliveSandbox,
    ) -> Result<SandboxView, CommandError> {
        self.runtime
            .sandboxes()
            .keepalive(&a.sandbox_id, a.extend_s)
            .map_err(err("keepalive_sandbox"))
    }

    /// `terminate_sandbox`.
    pub(super) async fn terminate_sandbox(
        &self,
        a: SandboxRef,
    ) -> Result<SandboxView, CommandError> {
        self.runtime
            .sandboxes()
            .terminate(&a.sandbox_id)
            .await
            .map_err(err("terminate_sandbox"))
    }

    /// `list_sandboxes`.
    pub(super) async fn list_sandboxes(
        &self,
        a: ListSandboxes,
    ) -> Result<SandboxList, CommandError> {
        Ok(SandboxList {
            sandboxes: self.runtime.sandboxes().list(&a),
        })
    }

    /// `run_code`: the snippet written into a sandbox made for it and run
    /// there once; the sandbox ends as soon as the snippet does (at once
    /// when it ended within the wait, else when it ends later, its own
    /// timeout at the latest).
    pub(super) async fn run_code(&self, a: RunCode) -> Result<RunCodeResult, CommandError> {
        const TOOL: &str = "run_code";
        let timeout_s = a.timeout_s.unwrap_or(DEFAULT_RUN_CODE_TIMEOUT_S);
        if !(1..=MAX_RUN_CODE_TIMEOUT_S).contains(&timeout_s) {
            return Err(CommandError::invalid(
                TOOL,
                "timeout_s",
                format!("got {timeout_s}; expected 1 to {MAX_RUN_CODE_TIMEOUT_S} seconds"),
            ));
        }
        if a.code.trim().is_empty() || a.code.len() > MAX_RUN_CODE_BYTES {
            return Err(CommandError::invalid(
                TOOL,
                "code",
                format!(
                    "got {} bytes{}; expected 1 to {MAX_RUN_CODE_BYTES} bytes of source",
                    a.code.len(),
                    if a.code.is_empty() || !a.code.trim().is_empty() {
                        ""
                    } else {
                        ", all blank"
                    }
                ),
            ));
        }
        let sandboxes = self.runtime.sandboxes();
        let mut tags = std::collections::BTreeMap::new();
        tags.insert("run_code".to_owned(), "true".to_owned());
        let created = sandboxes
            .create(CreateSandbox {
                // Time to write the file and start it, past its own timeout.
                timeout_s: Some(timeout_s + RUN_CODE_GRACE_S),
                network: SandboxNetwork::All(a.network),
                env: a.env,
                tags,
                snapshot_on_end: false,
                ..CreateSandbox::default()
            })
            .await
            .map_err(err(TOOL))?;
        let id = created.sandbox_id;
        // A caller gone before the snippet is seen through (a client that
        // disconnects) takes the sandbox with it.
        let mut made = Discard {
            sandboxes: sandboxes.clone(),
            id: Some(id.clone()),
        };
        let (file, cmd) = a.language.file_and_command();
        let ran = async {
            sandboxes
                .write_file(&id, file, a.code.into_bytes())
                .await
                .map_err(err(TOOL))?;
            self.sandbox_exec(SandboxExec {
                sandbox_id: id.clone(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                stdin: a.stdin,
                env: Default::default(),
                cwd: None,
                timeout_s: Some(timeout_s),
                wait_s: a.wait_s,
            })
            .await
        }
        .await;
        made.id = None;
        match &ran {
            Ok(r) if r.process.outcome.is_none() => {
                sandboxes.end_when_done(&id, &r.process.process_id);
            }
            _ => {
                let _ = sandboxes.terminate(&id).await;
            }
        }
        ran.map(|exec| RunCodeResult {
            sandbox_id: id,
            exec,
        })
        .map_err(|e| match e {
            // The exec's own refusal (wait_s out of range) is this tool's.
            CommandError::Sandbox { source, .. } => err(TOOL)(source),
            other => other,
        })
    }
}

/// Seconds a `run_code` sandbox lives past the snippet's own timeout.
const RUN_CODE_GRACE_S: u64 = 30;

/// Terminates sandbox `id` (when still set) on drop.
struct Discard {
    sandboxes: crate::sandbox::Sandboxes,
    id: Option<String>,
}

impl Drop for Discard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let sandboxes = self.sandboxes.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = sandboxes.terminate(&id).await;
            });
        }
    }
}
