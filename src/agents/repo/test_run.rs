//! A repository's tests, run in a sandbox: the repository's files (not its
//! `.git`) are copied into a fresh sandbox, the test command runs there with
//! a timeout, and its typed outcome is recorded in the repositories' volume
//! (`repo-tests/NAME`), so an agent (or a person) can read why it failed.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{RepoCreatorConfig, RepoResult};
use crate::agents::{AgentError, Agents};
use crate::wire::{CreateSandbox, ExecRequest, Outcome};

/// Most bytes of each stream a recorded run keeps (its end: 16 KiB).
const KEPT_OUTPUT: usize = 16 << 10;

/// A repository's test run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoTestRun {
    /// The repository.
    pub repo: String,
    /// The commit tested.
    pub commit: String,
    /// The command.
    pub command: Vec<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Whether it exited 0.
    pub passed: bool,
    /// The end of its stdout.
    pub stdout: String,
    /// The end of its stderr.
    pub stderr: String,
    /// The sandbox it ran in (terminated since).
    pub sandbox_id: String,
}

fn tail(text: String) -> String {
    if text.len() <= KEPT_OUTPUT {
        return text;
    }
    let mut from = text.len() - KEPT_OUTPUT;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    text[from..].to_owned()
}

impl Agents {
    /// Runs `command` (an argv list) over `repo`'s files in a new sandbox,
    /// at most `timeout_s` seconds, and records the run in `config`'s volume
    /// under `repo-tests/NAME`.
    pub async fn run_repo_tests(
        &self,
        repo: &RepoResult,
        command: Vec<String>,
        timeout_s: u64,
        config: &RepoCreatorConfig,
    ) -> Result<RepoTestRun, AgentError> {
        let sandboxes = self.runtime.sandboxes();
        let sandbox = sandboxes
            .create(CreateSandbox {
                timeout_s: Some(timeout_s.saturating_add(120).min(86_400)),
                snapshot_on_end: false,
                tags: [("repo".to_owned(), repo.name.clone())].into(),
                ..Default::default()
            })
            .await?;
        let id = sandbox.sandbox_id;
        let run = async {
            let root = crate::volume::beneath::Root::existing(&repo.path)
                .map_err(|e| AgentError::Handler(format!("repository {}: {e}", repo.name)))?;
            let mut files = Vec::new();
            root.walk(&mut |path, _, walked| {
                if let crate::volume::beneath::Walked::File(mut f) = walked {
                    if !(path == ".git" || path.starts_with(".git/")) {
                        let mut bytes = Vec::new();
                        std::io::Read::read_to_end(&mut f, &mut bytes)?;
                        files.push((path.to_owned(), bytes));
                    }
                }
                Ok(())
            })
            .map_err(|e| AgentError::Handler(format!("repository {}: {e}", repo.name)))?;
            for (path, bytes) in files {
                sandboxes.write_file(&id, &path, bytes).await?;
            }
            let started = sandboxes
                .exec(
                    &id,
                    ExecRequest {
                        cmd: command.clone(),
                        timeout_s: Some(timeout_s.max(1)),
                        wait_s: Some(0),
                        ..Default::default()
                    },
                )
                .await?;
            let pid = started.process.process_id;
            loop {
                let r = sandboxes.wait_process(&id, &pid, 55).await?;
                if let Some(outcome) = r.process.outcome {
                    return Ok::<_, AgentError>(RepoTestRun {
                        repo: repo.name.clone(),
                        commit: repo.commit.clone(),
                        command: command.clone(),
                        passed: outcome.success(),
                        outcome,
                        stdout: tail(r.stdout.unwrap_or_default()),
                        stderr: tail(r.stderr.unwrap_or_default()),
                        sandbox_id: id.clone(),
                    });
                }
            }
        };
        let result = run.await;
        let _ = sandboxes.terminate(&id).await;
        let run = result?;
        self.runtime
            .volumes()
            .write(
                &config.volume,
                &format!("repo-tests/{}", repo.name),
                json!(run),
            )
            .await?;
        Ok(run)
    }
}
