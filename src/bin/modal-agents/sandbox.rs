//! `modal-agents sandbox ...`: sandbox sessions from the command line.

use std::process::ExitCode;

use clap::Subcommand;
use modal_agents::client::Client;
use modal_agents::wire::{CreateSandbox, ExecRequest, Outcome};

#[derive(Subcommand)]
pub(crate) enum SandboxCommand {
    /// Create a sandbox; print its id.
    Create {
        /// Lifetime in seconds (default 300, max 86400).
        #[arg(long)]
        timeout: Option<u64>,
        /// End it after this many idle seconds.
        #[arg(long)]
        idle_timeout: Option<u64>,
        /// A name, unique among live sandboxes.
        #[arg(long)]
        name: Option<String>,
        /// Allow network access.
        #[arg(long)]
        network: bool,
        /// Memory ceiling in MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// Start from this snapshot.
        #[arg(long)]
        from_snapshot: Option<String>,
    },
    /// Run a command in a sandbox; print its output and exit with its code
    /// (124 for a timeout, like timeout(1), 128+N for signal N).
    Exec {
        /// The sandbox.
        sandbox_id: String,
        /// Kill it after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Working directory inside the sandbox.
        #[arg(long)]
        cwd: Option<String>,
        /// Send this command's stdin (read to its end, at most 16 MiB of
        /// UTF-8) as the process's stdin; without it the process's stdin is
        /// empty.
        #[arg(long)]
        stdin: bool,
        /// The command and its arguments (after `--`).
        #[arg(required = true, num_args = 1.., last = true)]
        cmd: Vec<String>,
    },
    /// List sandboxes.
    Ls,
    /// Copy a file into (`LOCAL SANDBOX:PATH`) or out of
    /// (`SANDBOX:PATH LOCAL`) a sandbox; `-` is stdin or stdout.
    Cp {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Snapshot a sandbox's workdir; print the snapshot id.
    Snapshot {
        /// The sandbox.
        sandbox_id: String,
    },
    /// Make COUNT new sandboxes from a sandbox's files; print their ids.
    Fork {
        /// The sandbox.
        sandbox_id: String,
        /// How many (1-16).
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Show what changed between two snapshots (unified diffs).
    Diff {
        /// The first snapshot.
        from: String,
        /// The second.
        to: String,
    },
    /// Terminate sandboxes.
    Rm {
        /// The sandboxes.
        #[arg(required = true, num_args = 1..)]
        sandbox_ids: Vec<String>,
    },
}

/// The exit code for a process's outcome, and a note for stderr when it is
/// not a plain exit.
fn exit_code(outcome: &Outcome) -> (u8, Option<String>) {
    match outcome {
        Outcome::Exited { code } => ((*code).clamp(0, 255) as u8, None),
        Outcome::Signaled { signal } => (
            (128 + signal).clamp(0, 255) as u8,
            Some(format!("signaled: killed by signal {signal}")),
        ),
        Outcome::TimedOut { after_s } => (
            124,
            Some(format!("timed_out: its timeout of {after_s} s ran out")),
        ),
        Outcome::OutOfMemory => (137, Some("out_of_memory: killed for memory".into())),
        Outcome::DiskQuotaExceeded { limit_mib } => (
            137,
            Some(format!(
                "disk_quota_exceeded: the sandbox's files passed its quota of {limit_mib} MiB"
            )),
        ),
        Outcome::SandboxEnded { reason } => (
            125,
            Some(format!("sandbox_ended: the sandbox ended ({reason})")),
        ),
    }
}

fn split_remote(arg: &str) -> Option<(&str, &str)> {
    let (id, path) = arg.split_once(':')?;
    id.starts_with("sb-").then_some((id, path))
}

pub(crate) async fn run(client: &Client, cmd: SandboxCommand) -> Result<ExitCode, String> {
    let err = |e: modal_agents::client::ClientError| e.to_string();
    match cmd {
        SandboxCommand::Create {
            timeout,
            idle_timeout,
            name,
            network,
            memory,
            from_snapshot,
        } => {
            let sb = client
                .sandbox_create(&CreateSandbox {
                    timeout_s: timeout,
                    idle_timeout_s: idle_timeout,
                    name,
                    network: modal_agents::wire::SandboxNetwork::All(network),
                    memory,
                    from_snapshot,
                    ..Default::default()
                })
                .await
                .map_err(err)?;
            println!("{}", sb.sandbox_id);
        }
        SandboxCommand::Exec {
            sandbox_id,
            timeout,
            cwd,
            stdin,
            cmd,
        } => {
            let stdin = if stdin { Some(read_stdin()?) } else { None };
            let started = client
                .sandbox_exec(
                    &sandbox_id,
                    &ExecRequest {
                        cmd,
                        cwd,
                        stdin,
                        timeout_s: timeout,
                        wait_s: Some(55),
                        ..Default::default()
                    },
                )
                .await
                .map_err(err)?;
            let done = if started.process.outcome.is_some() {
                started
            } else {
                client
                    .sandbox_wait(&sandbox_id, &started.process.process_id)
                    .await
                    .map_err(err)?
            };
            use std::io::Write;
            let _ = std::io::stdout().write_all(done.stdout.unwrap_or_default().as_bytes());
            let _ = std::io::stderr().write_all(done.stderr.unwrap_or_default().as_bytes());
            let outcome = done.process.outcome.unwrap_or(Outcome::Exited { code: 1 });
            let (code, note) = exit_code(&outcome);
            if let Some(note) = note {
                eprintln!("modal-agents: {note}");
            }
            return Ok(ExitCode::from(code));
        }
        SandboxCommand::Ls => {
            for sb in client.sandboxes().await.map_err(err)? {
                let state = match &sb.ended {
                    Some(e) => format!("ended ({})", e.reason),
                    None => "running".into(),
                };
                println!(
                    "{}\t{}\t{state}\texpires {}",
                    sb.sandbox_id,
                    sb.name.as_deref().unwrap_or("-"),
                    sb.expires_at.format("%Y-%m-%d %H:%M:%S")
                );
            }
        }
        SandboxCommand::Cp { from, to } => match (split_remote(&from), split_remote(&to)) {
            (None, Some((id, path))) => {
                let bytes = if from == "-" {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .map_err(|e| e.to_string())?;
                    buf
                } else {
                    std::fs::read(&from).map_err(|e| format!("{from}: {e}"))?
                };
                let entry = client.sandbox_file_put(id, path, bytes).await.map_err(err)?;
                eprintln!("{} ({} bytes)", entry.path, entry.size);
            }
            (Some((id, path)), None) => {
                let bytes = client.sandbox_file_get(id, path).await.map_err(err)?;
                if to == "-" {
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes).map_err(|e| e.to_string())?;
                } else {
                    std::fs::write(&to, bytes).map_err(|e| format!("{to}: {e}"))?;
                }
            }
            _ => {
                return Err(format!(
                    "cp copies between this machine and a sandbox: one of {from:?} and {to:?} must be SANDBOX_ID:PATH (sb-...), the other a local path or -"
                ))
            }
        },
        SandboxCommand::Snapshot { sandbox_id } => {
            let snap = client.sandbox_snapshot(&sandbox_id).await.map_err(err)?;
            println!("{}", snap.snapshot_id);
        }
        SandboxCommand::Fork { sandbox_id, count } => {
            let forked = client.sandbox_fork(&sandbox_id, count).await.map_err(err)?;
            for sb in forked.sandboxes {
                println!("{}", sb.sandbox_id);
            }
        }
        SandboxCommand::Diff { from, to } => {
            let diff = client.snapshot_diff(&from, &to).await.map_err(err)?;
            for (mark, changes) in [("A", &diff.added), ("M", &diff.changed), ("D", &diff.removed)] {
                for c in changes {
                    println!("{mark} {}", c.path);
                }
            }
            for c in diff.added.iter().chain(&diff.changed).chain(&diff.removed) {
                if let Some(text) = &c.diff {
                    print!("{text}");
                }
            }
        }
        SandboxCommand::Rm { sandbox_ids } => {
            for id in sandbox_ids {
                let sb = client.sandbox_terminate(&id).await.map_err(err)?;
                let reason = sb.ended.map_or("ending".into(), |e| e.reason.to_string());
                println!("{id}\t{reason}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// This command's stdin, to its end: at most 16 MiB, as UTF-8.
fn read_stdin() -> Result<String, String> {
    use std::io::Read;
    const MAX: u64 = 16 << 20;
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("--stdin: {e}"))?;
    if bytes.len() as u64 > MAX {
        return Err(format!("--stdin: over {MAX} bytes; copy the data in with `sandbox cp` and redirect from the file"));
    }
    String::from_utf8(bytes).map_err(|_| "--stdin: not UTF-8 text; copy binary data in with `sandbox cp` and redirect from the file".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_exit_codes_that_say_what_happened() {
        assert_eq!(exit_code(&Outcome::Exited { code: 3 }).0, 3);
        let (code, note) = exit_code(&Outcome::TimedOut { after_s: 2.0 });
        assert_eq!(code, 124);
        assert!(note.unwrap().contains("timed_out"));
        assert_eq!(exit_code(&Outcome::Signaled { signal: 9 }).0, 137);
        assert_eq!(split_remote("sb-1:/x/y"), Some(("sb-1", "/x/y")));
        assert_eq!(split_remote("./local:file"), None);
    }
}
