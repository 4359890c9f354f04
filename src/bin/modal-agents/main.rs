//! `modal-agents`: serve the HTTP API, or drive a server from the shell.
//!
//! ```text
//! modal-agents serve [--addr 127.0.0.1:8080] [--data-dir DIR] [--insecure-no-auth] [--webhook-allow CIDR]
//! modal-agents deploy FILE.py --name NAME [--gpu T4] [--timeout 60] [--package numpy] ...
//! modal-agents run FUNCTION|FILE.py::FUNCTION [ARG ...] [--inputs FILE|-]  (one call, or a map printing results as they finish)
//! modal-agents spawn FUNCTION [ARG ...] [--kwargs JSON] [--wait]
//! modal-agents status|cancel|logs [-f] TASK_ID
//! modal-agents wait TASK_ID... [--any] [--timeout S]
//! modal-agents mcp [--data-dir DIR]     (MCP on stdio; with --url, forwarded)
//! modal-agents volume get|put|ls ...   modal-agents secret set|ls ...
//! ```
//! The server URL and token come from `--url`/`--token` or
//! `MODAL_AGENTS_URL`/`MODAL_AGENTS_TOKEN`. Exit status 0 on success, 1 with a
//! one-line reason on failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use modal_agents::client::Client;
use modal_agents::compute::{ModalBackend, ModalConfig};
use modal_agents::mcp::McpServer;
use modal_agents::spec::{BackendChoice, Limits};
use modal_agents::task::WaitMode;
use modal_agents::wire::{DeployRequest, VolumeMounts, DEFAULT_WAIT_S};
use modal_agents::{TaskId, TaskRecord, TaskStatus};
use serde_json::{json, Map, Value};

mod run;
mod sandbox;
mod serve;
mod tasks;

use serve::{serve, ServeArgs};

#[derive(Parser)]
#[command(
    name = "modal-agents",
    version,
    about = "Deploy Python functions, run them in parallel, track tasks."
)]
struct Cli {
    /// The server (for every command but `serve`).
    #[arg(
        long,
        global = true,
        env = "MODAL_AGENTS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Bearer token; for `serve`, the accepted tokens, comma-separated.
    #[arg(
        long,
        global = true,
        env = "MODAL_AGENTS_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API server.
    Serve(ServeArgs),
    /// Speak MCP (the agent tools) on stdin/stdout, for an agent host such
    /// as Cursor: forwarded to the server at --url / MODAL_AGENTS_URL when
    /// one is given, else on a runtime embedded in this process.
    Mcp {
        /// The embedded runtime's data dir (without --url).
        #[arg(long, default_value = modal_agents::runtime::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Set from the command line: whether --data-dir was given.
        #[arg(skip)]
        data_dir_given: bool,
    },
    /// Modal: build the environment with the pinned `modal` SDK.
    #[command(subcommand)]
    Modal(ModalCommand),
    /// Deploy a function from a Python file.
    Deploy(DeployArgs),
    /// Call a function once, or map it over input lines printing results as
    /// they finish; FILE.py::FUNCTION deploys it first.
    Run(run::RunArgs),
    /// Start one call; print its task id (or, with --wait, its record).
    Spawn {
        /// The function.
        function: String,
        /// Positional arguments, each JSON (a bare word is a string).
        args: Vec<String>,
        /// Keyword arguments as a JSON object.
        #[arg(long)]
        kwargs: Option<String>,
        /// Wait for the result.
        #[arg(long)]
        wait: bool,
    },
    /// Show a task's record.
    Status {
        /// The task id.
        task_id: String,
    },
    /// Wait for tasks (all of them, or with --any the first to finish) and
    /// show them; exit 1 if the wait timed out or a finished task did not
    /// complete. The server waits; nothing polls.
    Wait {
        /// The task ids.
        #[arg(required = true, num_args = 1..)]
        task_ids: Vec<String>,
        /// Return when any one of them has finished.
        #[arg(long)]
        any: bool,
        /// Give up after this many seconds (default: no limit).
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Cancel a task.
    Cancel {
        /// The task id.
        task_id: String,
    },
    /// Print a task's stdout and stderr.
    Logs {
        /// The task id.
        task_id: String,
        /// Follow the output as it is printed, until the task ends (the
        /// exit code is then the task's, as with `wait`).
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Volume state and files.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// List the deployed functions.
    Functions,
    /// Undeploy functions (their tasks stay).
    Undeploy {
        /// The functions.
        #[arg(required = true, num_args = 1..)]
        names: Vec<String>,
    },
    /// List tasks, newest first.
    Tasks(tasks::TasksArgs),
    /// Print a map's results as JSON lines, in input order.
    Results(tasks::ResultsArgs),
    /// Call a function once and print its result.
    Call(tasks::CallArgs),
    /// Sandbox sessions: create, exec, ls, cp, snapshot, fork, diff, rm.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
}

#[derive(Subcommand)]
enum ModalCommand {
    /// Build (or reuse) the virtual environment with the pinned `modal` SDK
    /// and print its interpreter.
    Setup {
        /// Where the environment lives (the server's default: DATA_DIR/modal).
        #[arg(long, default_value = "modal-agents-data/modal")]
        cache_dir: PathBuf,
    },
}

#[derive(Args)]
struct DeployArgs {
    /// The Python file.
    file: PathBuf,
    /// The function's name (defaults to the file's stem).
    #[arg(long)]
    name: Option<String>,
    /// Where it runs: local, modal or auto (default auto).
    #[arg(long)]
    backend: Option<BackendChoice>,
    /// GPU type, e.g. T4 or A100-80GB:2 (repeat for a fallback list).
    #[arg(long)]
    gpu: Vec<String>,
    /// Timeout in seconds.
    #[arg(long)]
    timeout: Option<u32>,
    /// pip requirement (repeatable).
    #[arg(long = "package")]
    packages: Vec<String>,
    /// Secret name (repeatable).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Volume: NAME (mounted at /volumes/NAME) or /mount=NAME (repeatable).
    #[arg(long = "volume")]
    volumes: Vec<String>,
    /// Retries of a failed input.
    #[arg(long)]
    retries: Option<u32>,
    /// Containers at most.
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// A container limit as KEY=VALUE (repeatable): memory_mib, cpu_s,
    /// open_files, file_size_mib, processes, network=true|false.
    #[arg(long = "limit")]
    limits: Vec<String>,
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Print a key's value and version (or, with --file, a file's bytes).
    Get {
        /// The volume.
        volume: String,
        /// The key (or the file's path).
        key: String,
        /// KEY is a file's path: its bytes go to standard output.
        #[arg(long)]
        file: bool,
    },
    /// Write a key (VALUE is JSON; a bare word is a string), or with --file
    /// a file from a local one (VALUE is its path, `-` for standard input).
    Put {
        /// The volume.
        volume: String,
        /// The key (or the file's path in the volume).
        key: String,
        /// The value (or, with --file, the local file).
        value: String,
        /// Only if the key still has this version.
        #[arg(long, conflicts_with = "file")]
        if_match: Option<u64>,
        /// KEY is a file's path and VALUE the local file to upload.
        #[arg(long)]
        file: bool,
    },
    /// Upload what changed to the Modal Volume of the same name.
    Push {
        /// The volume.
        volume: String,
    },
    /// Download what changed in the Modal Volume of the same name.
    Pull {
        /// The volume.
        volume: String,
    },
    /// Delete a key (or, with --file, a file).
    Rm {
        /// The volume.
        volume: String,
        /// The key (or the file's path).
        key: String,
        /// KEY is a file's path.
        #[arg(long)]
        file: bool,
    },
    /// List keys (or files, with --files).
    Ls {
        /// The volume.
        volume: String,
        /// Only keys or paths starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// List files instead of keys.
        #[arg(long)]
        files: bool,
    },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Store a secret: KEY=VALUE pairs.
    Set {
        /// The secret's name.
        name: String,
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// List secrets (names and keys; never values).
    Ls,
    /// Remove a secret.
    Rm {
        /// The secret's name.
        name: String,
    },
}

/// A command-line value: JSON, or a bare word as a string. What starts
/// like JSON (`{`, `[`, `"`) but does not parse is an error, not a string.
fn json_arg(raw: &str) -> Result<Value, String> {
    match serde_json::from_str(raw) {
        Ok(value) => Ok(value),
        Err(e) if raw.trim_start().starts_with(['{', '[', '"']) => Err(format!(
            "{:?} is not valid JSON ({e}); to pass it as text, give it as a JSON string",
            clip_line(raw)
        )),
        Err(_) => Ok(Value::String(raw.to_owned())),
    }
}

/// `text` cut to a line's worth, for an error that repeats it.
fn clip_line(text: &str) -> String {
    let mut cut: String = text.chars().take(80).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

/// `--kwargs` as an object; anything else says what it got.
pub(crate) fn kwargs_arg(raw: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!(
            "--kwargs: expected a JSON object such as '{{\"x\": 1}}', got {}",
            clip_line(&other.to_string())
        )),
        Err(e) => Err(format!(
            "--kwargs: not valid JSON ({e}); expected an object such as '{{\"x\": 1}}'"
        )),
    }
}

fn task_id(raw: &str) -> Result<TaskId, String> {
    raw.parse().map_err(|_| format!("{raw:?} is not a task id"))
}

/// One rule for every command that waits: exit 0 only when the task
/// completed; otherwise say how it ended (exit 1).
fn finished(record: &TaskRecord) -> Result<(), String> {
    match record.status {
        TaskStatus::Completed => Ok(()),
        _ => Err(ended(record)),
    }
}

/// How a task that did not complete ended: its status and error, then the
/// remote traceback when there is one.
pub(crate) fn ended(record: &TaskRecord) -> String {
    let mut said = format!("task {} {}", record.task_id, record.status);
    if let Some(e) = &record.error {
        said.push_str(&format!(": {e}"));
        if let Some(tb) = e.traceback.as_deref().filter(|t| !t.trim().is_empty()) {
            said.push('\n');
            said.push_str(tb.trim_end());
        }
    }
    said
}

/// `wait`: server-side waits of at most 55 s each until the condition
/// holds or `timeout` passes; one task prints its record, several their
/// summaries.
async fn wait(
    client: &Client,
    ids: &[TaskId],
    mode: WaitMode,
    timeout: Option<f64>,
) -> Result<(), String> {
    let err = |e: modal_agents::client::ClientError| e.to_string();
    if let Some(t) = timeout.filter(|t| !(t.is_finite() && *t >= 0.0)) {
        return Err(format!("--timeout: got {t}; expected seconds, 0 or more"));
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t));
    let outcome = loop {
        let left = deadline.map_or(Duration::from_secs_f64(DEFAULT_WAIT_S), |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_secs_f64(DEFAULT_WAIT_S))
        });
        let outcome = client
            .wait_tasks(ids, mode, Some(left))
            .await
            .map_err(err)?;
        if outcome.done || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break outcome;
        }
    };
    if let [id] = ids {
        let record = client.status(*id).await.map_err(err)?;
        print_json(&record)?;
        if !outcome.done {
            return Err(format!("task {id} did not finish in time"));
        }
        return finished(&record);
    }
    print_json(&outcome)?;
    if !outcome.done {
        return Err(format!(
            "{} of {} tasks finished in time",
            outcome.finished,
            ids.len()
        ));
    }
    match outcome
        .tasks
        .iter()
        .find(|t| t.status.is_terminal() && t.status != TaskStatus::Completed)
    {
        Some(t) => Err(t.summary.clone()),
        None => Ok(()),
    }
}

/// `mcp`: the MCP server on stdio, over a running server or an embedded
/// runtime (stopped cleanly when the client closes stdin).
async fn mcp(url: Option<&str>, token: Option<&str>, data_dir: &Path) -> Result<(), String> {
    if let Some(url) = url {
        let client = Client::new(url, token).map_err(|e| e.to_string())?;
        // Checked now, not at the agent's first tool call: the server is
        // there and takes the token.
        client.tools().await.map_err(|e| {
            format!("cannot forward MCP to the server at {url}: {e} (MODAL_AGENTS_URL / --url says where it is, MODAL_AGENTS_TOKEN / --token the token)")
        })?;
        return McpServer::remote(client)
            .serve_stdio()
            .await
            .map_err(|e| e.to_string());
    }
    let runtime = modal_agents::Runtime::builder()
        .data_dir(data_dir)
        .secrets_key(secrets_key_from_env()?)
        .start()
        .await
        .map_err(|e| match e {
            modal_agents::RuntimeError::DataDirInUse { .. } => {
                format!(
                    "data dir {} is in use by another modal-agents runtime (a server, or \
                     another `modal-agents mcp`); stop it, pass --data-dir for another \
                     directory, or --url to use that server",
                    data_dir.display()
                )
            }
            e => e.to_string(),
        })?;
    let served = McpServer::local(runtime.clone()).serve_stdio().await;
    runtime.shutdown().await;
    served.map_err(|e| e.to_string())
}

/// `logs -f`: output as it is printed (stdout to stdout, stderr to
/// stderr), then the task's end as `wait` reports it.
async fn follow_logs(client: &Client, id: TaskId) -> Result<(), String> {
    use futures_util::StreamExt as _;
    use modal_agents::client::LogEvent;
    let events = client
        .follow_logs(id, Default::default())
        .await
        .map_err(|e| e.to_string())?;
    futures_util::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event.map_err(|e| e.to_string())? {
            LogEvent::Output(chunk) if chunk.stream == "stderr" => {
                eprint!("{}", chunk.text);
                let _ = std::io::stderr().flush();
            }
            LogEvent::Output(chunk) => {
                print!("{}", chunk.text);
                let _ = std::io::stdout().flush();
            }
            LogEvent::End(_) => break,
        }
    }
    finished(&client.status(id).await.map_err(|e| e.to_string())?)
}

fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

async fn deploy(client: &Client, args: DeployArgs) -> Result<(), String> {
    let code = run::read_local(&args.file, modal_agents::spec::MAX_CODE_BYTES)?;
    let name = match args.name {
        Some(n) => n,
        None => args
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or("--name is required")?,
    };
    let mut request = DeployRequest::new(name, code);
    request.timeout = args.timeout;
    request.retries = args.retries.map(|n| json!(n));
    request.max_concurrency = args.max_concurrency;
    request.backend = args.backend;
    if !args.limits.is_empty() {
        request.limits = Some(parse_limits(&args.limits)?);
    }
    request.secrets = args.secrets;
    request.gpu = match args.gpu.len() {
        0 => None,
        1 => Some(json!(args.gpu[0])),
        _ => Some(json!(args.gpu)),
    };
    request.image_config.packages = args.packages;
    if !args.volumes.is_empty() {
        let mounts = args
            .volumes
            .iter()
            .map(|v| match v.split_once('=') {
                Some((mount, name)) => (mount.to_owned(), name.to_owned()),
                None => (format!("/volumes/{v}"), v.clone()),
            })
            .collect();
        request.volumes = Some(VolumeMounts::Mounts(mounts));
    }
    let deployed = client.deploy(&request).await.map_err(|e| e.to_string())?;
    print_json(&deployed)
}

async fn run_command(cli: Cli, url_given: bool) -> Result<(), String> {
    let cli = match cli.command {
        Command::Serve(args) => return serve(args, cli.token).await,
        Command::Mcp {
            data_dir,
            data_dir_given,
        } => {
            if url_given && data_dir_given {
                return Err(format!(
                    "mcp: give --url (or MODAL_AGENTS_URL, set to {}) to forward to a server, or --data-dir to embed a runtime, not both",
                    cli.url
                ));
            }
            let url = url_given.then_some(cli.url.as_str());
            return mcp(url, cli.token.as_deref(), &data_dir).await;
        }
        Command::Modal(ModalCommand::Setup { cache_dir }) => {
            let backend = ModalBackend::new(ModalConfig {
                cache_dir,
                ..ModalConfig::default()
            });
            let python = backend.sdk_python().await.map_err(|e| e.to_string())?;
            println!("{}", python.display());
            return Ok(());
        }
        _ => cli,
    };
    let client = Client::new(&cli.url, cli.token.as_deref()).map_err(|e| e.to_string())?;
    let err = |e: modal_agents::client::ClientError| e.to_string();
    match cli.command {
        Command::Serve(_)
        | Command::Modal(_)
        | Command::Mcp { .. }
        | Command::Sandbox(_)
        | Command::Run(_) => {
            unreachable!("handled above")
        }
        Command::Deploy(args) => deploy(&client, args).await,
        Command::Functions => tasks::functions(&client).await,
        Command::Undeploy { names } => tasks::undeploy(&client, &names).await,
        Command::Tasks(args) => tasks::tasks(&client, args).await,
        Command::Results(args) => tasks::results(&client, args).await,
        Command::Call(args) => tasks::call(&client, args).await,
        Command::Spawn {
            function,
            args,
            kwargs,
            wait,
        } => {
            let kwargs = match kwargs {
                None => Map::new(),
                Some(k) => kwargs_arg(&k)?,
            };
            let args = args.iter().map(|a| json_arg(a)).collect::<Result<_, _>>()?;
            let record = client
                .spawn(&function, args, kwargs, wait)
                .await
                .map_err(err)?;
            if wait {
                print_json(&record)?;
                finished(&record)
            } else {
                println!("{}", record.task_id);
                Ok(())
            }
        }
        Command::Status { task_id: id } => {
            let mut record = client.status(task_id(&id)?).await.map_err(err)?;
            // A map's status is its summary and progress; its results are
            // paged by `results`, not printed here a line each.
            if record.kind == modal_agents::task::TaskKind::Map && record.result.take().is_some() {
                eprintln!(
                    "its results: modal-agents results {} (JSON lines in input order; --failed for the failures)",
                    record.task_id
                );
            }
            print_json(&record)
        }
        Command::Wait {
            task_ids,
            any,
            timeout,
        } => {
            let ids = task_ids
                .iter()
                .map(|id| task_id(id))
                .collect::<Result<Vec<_>, _>>()?;
            let mode = if any { WaitMode::Any } else { WaitMode::All };
            wait(&client, &ids, mode, timeout).await
        }
        Command::Cancel { task_id: id } => {
            let record = client.cancel(task_id(&id)?).await.map_err(err)?;
            print_json(&record)?;
            if record.status != TaskStatus::Cancelled {
                eprintln!(
                    "modal-agents: task {} had already ended ({}): nothing was cancelled",
                    record.task_id, record.status
                );
            }
            Ok(())
        }
        Command::Logs {
            task_id: id,
            follow: false,
        } => {
            let logs = client.logs(task_id(&id)?).await.map_err(err)?;
            print!("{}", logs.stdout);
            eprint!("{}", logs.stderr);
            Ok(())
        }
        Command::Logs {
            task_id: id,
            follow: true,
        } => follow_logs(&client, task_id(&id)?).await,
        Command::Volume(VolumeCommand::Get {
            volume,
            key,
            file: true,
        }) => {
            let bytes = client.file_get(&volume, &key).await.map_err(err)?;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| format!("writing {key}: {e}"))
        }
        Command::Volume(VolumeCommand::Put {
            volume,
            key,
            value,
            file: true,
            ..
        }) => {
            // Within the server's request limit (its default): a larger
            // file is refused here, naming it, not sent to be refused.
            let max = 32 << 20;
            let bytes = if value == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(std::io::stdin().lock(), max as u64 + 1),
                    &mut bytes,
                )
                .map_err(|e| format!("standard input: {e}"))?;
                if bytes.len() > max {
                    return Err(format!("standard input: over the {max} bytes accepted"));
                }
                bytes
            } else {
                run::read_local_bytes(std::path::Path::new(&value), max)?
            };
            print_json(&client.file_put(&volume, &key, bytes).await.map_err(err)?)
        }
        Command::Volume(VolumeCommand::Get {
            volume,
            key,
            file: false,
        }) => match client.volume_get(&volume, &key).await.map_err(err)? {
            Some(entry) => print_json(&entry),
            None => Err(format!("no key {key:?} in volume `{volume}`")),
        },
        Command::Volume(VolumeCommand::Put {
            volume,
            key,
            value,
            if_match,
            file: false,
        }) => print_json(
            &client
                .volume_put(&volume, &key, json_arg(&value)?, if_match)
                .await
                .map_err(err)?,
        ),
        Command::Volume(VolumeCommand::Push { volume }) => {
            print_json(&client.volume_push(&volume).await.map_err(err)?)
        }
        Command::Volume(VolumeCommand::Pull { volume }) => {
            print_json(&client.volume_pull(&volume).await.map_err(err)?)
        }
        Command::Volume(VolumeCommand::Rm { volume, key, file }) => {
            let answer = if file {
                client.file_delete(&volume, &key).await
            } else {
                client.volume_delete(&volume, &key).await
            }
            .map_err(err)?;
            if answer["deleted"] == json!(true) {
                println!("deleted {key}");
                Ok(())
            } else {
                Err(format!("nothing at {key:?} in volume `{volume}`"))
            }
        }
        Command::Volume(VolumeCommand::Ls {
            volume,
            prefix,
            files,
        }) => {
            if files {
                for f in client.file_list(&volume, &prefix).await.map_err(err)? {
                    println!("{}\t{}", f.size, f.path);
                }
            } else {
                for e in client.volume_list(&volume, &prefix).await.map_err(err)? {
                    println!("{}\tv{}\t{}", e.key, e.version, e.value);
                }
            }
            Ok(())
        }
        Command::Secret(SecretCommand::Set { name, pairs }) => {
            let mut values = BTreeMap::new();
            for pair in pairs {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
                values.insert(k.to_owned(), v.to_owned());
            }
            let info = client.secret_set(&name, &values).await.map_err(err)?;
            println!("secret {} set ({} keys)", info.name, info.keys.len());
            Ok(())
        }
        Command::Secret(SecretCommand::Rm { name }) => {
            client.secret_delete(&name).await.map_err(err)?;
            println!("secret {name} removed");
            Ok(())
        }
        Command::Secret(SecretCommand::Ls) => {
            for s in client.secrets().await.map_err(err)? {
                println!("{}\t{}", s.name, s.keys.join(","));
            }
            Ok(())
        }
    }
}

/// Makes large allocations (a result, a file, a request body: over 256
/// KiB) come from and go back to the kernel directly, and keeps glibc to
/// one heap per core. By default glibc raises that threshold as such blocks
/// are freed and then serves them from its heaps, and gives each of the
/// blocking pool's threads a heap of its own: both keep memory after a
/// burst of large values, and the server would stay at its high-water mark.
fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        libc::mallopt(libc::M_ARENA_MAX, cores.clamp(1, 64) as libc::c_int);
    }
}

/// Gives the kernel back, every 2 s, the heap pages glibc holds free
/// (after a burst of requests they would otherwise stay with the process;
/// a trim of this server's few arenas takes microseconds).
fn trim_heap_now_and_then() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let _ = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(2));
            // SAFETY: malloc_trim only returns free memory to the kernel.
            unsafe {
                libc::malloc_trim(0);
            }
        });
}

fn main() -> ExitCode {
    return_large_allocations();
    trim_heap_now_and_then();

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            // rmcp logs every session's whole client info at INFO: only its
            // warnings by default.
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target("rmcp", tracing::Level::WARN)
        });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only for a terminal: logs sent to a file or a pipe
                // carry no escape codes.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    // `mcp` forwards only to a server named on purpose (flag or variable),
    // not to the default address.
    let url_given = matches
        .value_source("url")
        .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
    let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // A command whose output goes to a closed pipe (`| head -1`) ends
    // quietly, as a shell tool does, instead of panicking at the next
    // print. `serve` and `mcp` keep ignoring SIGPIPE: a client that went
    // away is an error on its own connection, never the process's end;
    // `run` too: it sees the closed pipe as an error of its write, and
    // cancels what it started before it ends.
    if !matches!(
        cli.command,
        Command::Serve(_) | Command::Mcp { .. } | Command::Run(_)
    ) {
        // SAFETY: only sets the signal's disposition back to the default.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Command::Mcp { data_dir_given, .. } = &mut cli.command {
        *data_dir_given = matches
            .subcommand_matches("mcp")
            .and_then(|m| m.value_source("data_dir"))
            .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
    }
    // Blocking-pool threads (file and fsync work) go after 2 s idle, not
    // tokio's 10 s: their stacks and arenas are memory a quiet server
    // gives back soon after a burst.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("modal-agents: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (had_token, server) = (cli.token.is_some(), cli.url.clone());
    let result = match cli.command {
        // A sandbox exec exits with its process's code.
        Command::Sandbox(cmd) => runtime.block_on(async {
            let client = Client::new(&cli.url, cli.token.as_deref()).map_err(|e| e.to_string())?;
            sandbox::run(&client, cmd).await
        }),
        // A map exits 130 when interrupted.
        Command::Run(args) => runtime.block_on(async {
            let client = Client::new(&cli.url, cli.token.as_deref()).map_err(|e| e.to_string())?;
            run::run(&client, args).await
        }),
        command => {
            let cli = Cli {
                url: cli.url,
                token: cli.token,
                command,
            };
            runtime
                .block_on(run_command(cli, url_given))
                .map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(why) => {
            // Whole: a failed package build's last lines are the point.
            eprintln!("modal-agents: {why}");
            if why.starts_with("401:") && had_token {
                eprintln!(
                    "modal-agents: the server refused the token given (--token or MODAL_AGENTS_TOKEN); use one it was started with"
                );
            } else if why.starts_with("401:") {
                eprintln!(
                    "modal-agents: the server wants a token: set MODAL_AGENTS_TOKEN or pass --token"
                );
            } else if why.starts_with("cannot reach the server") {
                eprintln!(
                    "modal-agents: is it running at {server}? --url (or MODAL_AGENTS_URL) says where it is; `modal-agents serve` starts one"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// The key secrets are sealed with at rest, from `MODAL_AGENTS_SECRETS_KEY`
/// and, while rotating, `MODAL_AGENTS_SECRETS_KEY_PREVIOUS` (comma-separated).
/// Read from the environment only: a key on the command line would show in
/// `ps`.
pub(crate) fn secrets_key_from_env() -> Result<modal_agents::secrets::SecretsKey, String> {
    let current = std::env::var("MODAL_AGENTS_SECRETS_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());
    let previous: Vec<String> = std::env::var("MODAL_AGENTS_SECRETS_KEY_PREVIOUS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    modal_agents::secrets::SecretsKey::new(current.as_deref(), &previous).map_err(|e| e.to_string())
}

/// `--limit KEY=VALUE` flags as [`Limits`]; errors name the flag and key.
fn parse_limits(flags: &[String]) -> Result<Limits, String> {
    let mut object = Map::new();
    for flag in flags {
        let (key, value) = flag.split_once('=').ok_or_else(|| {
            format!("--limit {flag:?}: expected KEY=VALUE, such as memory_mib=512")
        })?;
        let value = serde_json::from_str::<Value>(value.trim())
            .map_err(|_| format!("--limit {key}: {value:?} is not a number or true/false"))?;
        object.insert(key.trim().to_owned(), value);
    }
    serde_json::from_value(Value::Object(object)).map_err(|e| format!("--limit: {e}"))
}
