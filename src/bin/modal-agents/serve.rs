//! `modal-agents serve`: the HTTP API over a runtime with the local backend
//! and, when credentials are found, Modal.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use modal_agents::api::{self, ApiConfig, Cidr};
use modal_agents::compute::{GpuDevice, LocalConfig, ModalConfig, ModalCredentials, SandboxMode};
use modal_agents::runtime::{Retention, DEFAULT_DATA_DIR};
use modal_agents::Runtime;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "MODAL_AGENTS_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,
    /// Where tasks, volumes and containers live.
    #[arg(long, env = "MODAL_AGENTS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Serve without authentication (never on a shared network).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Host names a server without authentication also answers to, besides
    /// localhost, 127.0.0.1 and [::1] (repeat or comma-separate).
    #[arg(
        long = "allowed-host",
        env = "MODAL_AGENTS_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// Non-public webhook targets to allow, as CIDR blocks (repeat or comma-separate).
    #[arg(long, env = "MODAL_AGENTS_WEBHOOK_ALLOW", value_delimiter = ',')]
    webhook_allow: Vec<String>,
    /// Largest request body in bytes (MCP messages too).
    #[arg(long, env = "MODAL_AGENTS_BODY_LIMIT", default_value_t = 32 << 20)]
    body_limit: usize,
    /// The GPUs to use, as INDEX:NAME (e.g. `0:NVIDIA A100-SXM4-80GB`),
    /// instead of those `nvidia-smi` finds: to give this server only some of
    /// the machine's GPUs (repeat or comma-separate).
    #[arg(long = "gpu", env = "MODAL_AGENTS_GPUS", value_delimiter = ',', value_parser = parse_gpu)]
    gpus: Vec<GpuDevice>,
    /// Run containers under bubblewrap: auto (when it works), required, off.
    #[arg(long, env = "MODAL_AGENTS_SANDBOX", default_value = "auto")]
    sandbox: SandboxMode,
    /// Seconds a client may take to send a request's headers, and a kept-alive
    /// connection may sit idle (slowloris guard).
    #[arg(long, env = "MODAL_AGENTS_HEADER_READ_TIMEOUT", default_value_t = 15.0,
          value_parser = parse_seconds)]
    header_read_timeout: f64,
    /// Seconds a SIGTERM/Ctrl-C stop may take; unfinished tasks resume at
    /// the next start either way.
    #[arg(long, env = "MODAL_AGENTS_SHUTDOWN_TIMEOUT", default_value_t = 30.0,
          value_parser = parse_seconds)]
    shutdown_timeout: f64,
    /// Days finished tasks (records, result and log files, webhook
    /// registrations) are kept.
    #[arg(long, env = "MODAL_AGENTS_RETENTION_DAYS", default_value_t = 7.0,
          value_parser = parse_days)]
    retention_days: f64,
    /// Most finished tasks kept; the oldest go first.
    #[arg(long, env = "MODAL_AGENTS_RETENTION_MAX", default_value_t = 100_000)]
    retention_max: usize,
    /// Seconds between retention sweeps (one also runs at start).
    #[arg(long, env = "MODAL_AGENTS_RETENTION_SWEEP", default_value_t = 60.0,
          value_parser = parse_seconds)]
    retention_sweep: f64,
    /// Most live MCP sessions at /mcp (overall).
    #[arg(long, env = "MODAL_AGENTS_MCP_MAX_SESSIONS", default_value_t = 1_000)]
    mcp_max_sessions: usize,
    /// Most live MCP sessions one token holds.
    #[arg(
        long,
        env = "MODAL_AGENTS_MCP_MAX_SESSIONS_PER_TOKEN",
        default_value_t = 64
    )]
    mcp_max_sessions_per_token: usize,
    /// Seconds a new MCP session may take to complete its handshake.
    #[arg(long, env = "MODAL_AGENTS_MCP_INIT_TIMEOUT", default_value_t = 10.0,
          value_parser = parse_seconds)]
    mcp_init_timeout: f64,
    /// Seconds an MCP session may sit idle before it is closed.
    #[arg(long, env = "MODAL_AGENTS_MCP_IDLE_TIMEOUT", default_value_t = 300.0,
          value_parser = parse_seconds)]
    mcp_idle_timeout: f64,
    /// Most followers of one task's logs at once (SSE, `logs -f`).
    #[arg(
        long,
        env = "MODAL_AGENTS_MAX_FOLLOWERS_PER_TASK",
        default_value_t = 512
    )]
    max_followers_per_task: usize,
    /// Most followers of task logs at once, over all tasks.
    #[arg(long, env = "MODAL_AGENTS_MAX_FOLLOWERS", default_value_t = 2048)]
    max_followers: usize,
    /// Most live sandboxes at once; past it a create is 503 with Retry-After.
    #[arg(long, env = "MODAL_AGENTS_MAX_SANDBOXES", default_value_t = 32)]
    max_sandboxes: usize,
    /// Most running processes per sandbox; past it an exec is 429.
    #[arg(long, env = "MODAL_AGENTS_MAX_SANDBOX_PROCESSES", default_value_t = 64)]
    max_sandbox_processes: usize,
    #[command(flatten)]
    modal: ModalArgs,
}

/// Modal settings of `serve`; credentials come from MODAL_TOKEN_ID /
/// MODAL_TOKEN_SECRET or ~/.modal.toml.
#[derive(Args)]
struct ModalArgs {
    /// An interpreter that has the `modal` SDK (default: build one under DATA_DIR/modal).
    #[arg(long, env = "MODAL_AGENTS_MODAL_PYTHON")]
    modal_python: Option<PathBuf>,
    /// The Modal API server (default: the SDK's own, https://api.modal.com).
    #[arg(long, env = "MODAL_SERVER_URL")]
    modal_server_url: Option<String>,
    /// The Modal environment to deploy to.
    #[arg(long, env = "MODAL_ENVIRONMENT")]
    modal_environment: Option<String>,
    /// Disable the Modal backend.
    #[arg(long)]
    no_modal: bool,
}

pub(crate) async fn serve(args: ServeArgs, token: Option<String>) -> Result<(), String> {
    let tokens: Vec<String> = token
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let webhook_allow = args
        .webhook_allow
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--webhook-allow: {e}"))?;
    let config = ApiConfig {
        tokens,
        allow_no_auth: args.insecure_no_auth,
        body_limit: args.body_limit,
        webhooks: modal_agents::webhooks::WebhookConfig {
            allow: webhook_allow,
            ..Default::default()
        },
        allowed_hosts: args
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect(),
        mcp: modal_agents::mcp::McpLimits {
            max_sessions: args.mcp_max_sessions,
            max_sessions_per_token: args.mcp_max_sessions_per_token,
            init_timeout: Duration::from_secs_f64(args.mcp_init_timeout.max(0.1)),
            idle_timeout: Duration::from_secs_f64(args.mcp_idle_timeout.max(1.0)),
            ..Default::default()
        },
    };
    config.check().map_err(|e| e.to_string())?;
    if config.tokens.is_empty() {
        tracing::warn!("serving WITHOUT authentication (--insecure-no-auth)");
    }
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let bound = Duration::from_secs_f64(args.shutdown_timeout);
    let secrets_key = crate::secrets_key_from_env()?;
    if let Some(id) = secrets_key.key_id() {
        tracing::info!(key_id = id, "secrets are sealed at rest");
    }
    let runtime = Runtime::builder()
        .data_dir(&args.data_dir)
        .secrets_key(secrets_key)
        .follow_limits(modal_agents::runtime::FollowLimits {
            per_task: args.max_followers_per_task,
            total: args.max_followers,
        })
        .sandbox_config(modal_agents::sandbox::SandboxConfig {
            max_sandboxes: args.max_sandboxes,
            max_processes: args.max_sandbox_processes,
            ..Default::default()
        })
        .shutdown_timeout(bound)
        .retention(Retention {
            max_age: Duration::from_secs_f64(args.retention_days * 86_400.0),
            max_finished: args.retention_max,
            sweep_every: Duration::from_secs_f64(args.retention_sweep.max(0.1)),
        })
        .local_config(LocalConfig {
            sandbox: args.sandbox,
            gpus: (!args.gpus.is_empty()).then(|| args.gpus.clone()),
            ..LocalConfig::default()
        });
    let runtime = if args.modal.no_modal {
        runtime
    } else {
        let credentials = ModalCredentials::discover();
        match &credentials {
            Some(c) => tracing::info!(source = %c.source, "Modal credentials found"),
            None => tracing::info!("no Modal credentials: functions can only run locally"),
        }
        runtime.modal(ModalConfig {
            credentials,
            python: args.modal.modal_python.clone(),
            environment: args.modal.modal_environment.clone(),
            server_url: args.modal.modal_server_url.clone(),
            ..ModalConfig::default()
        })
    };
    let runtime = runtime.start().await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "modal-agents listening on http://{addr} (data dir {})",
        args.data_dir.display()
    );
    let _ = std::io::stdout().flush();
    let app = api::app(runtime.clone(), config);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            stop.cancel();
        }
    });
    // The runtime stops as soon as the signal comes, so requests waiting on
    // tasks answer (202: the task resumes after a restart) and connections
    // drain.
    let stopping = tokio::spawn({
        let (runtime, stop) = (runtime.clone(), stop.clone());
        async move {
            stop.cancelled().await;
            runtime.shutdown().await;
        }
    });
    let served = api::serve_with(
        listener,
        app,
        stop.clone().cancelled_owned(),
        Duration::from_secs_f64(args.header_read_timeout.max(0.1)),
    );
    tokio::pin!(served);
    let served = tokio::select! {
        served = &mut served => served,
        () = async { stop.cancelled().await; tokio::time::sleep(bound).await } => {
            tracing::warn!(bound_s = bound.as_secs_f64(), "requests still open at the shutdown bound; closing them");
            Ok(())
        }
    };
    stop.cancel();
    // The runtime's own stop is bounded by the same bound, plus the time to
    // reap containers and write the journal.
    if tokio::time::timeout(bound + Duration::from_secs(10), stopping)
        .await
        .is_err()
    {
        tracing::warn!("the runtime did not stop in time; exiting anyway");
    }
    served.map_err(|e| e.to_string())
}

fn parse_gpu(raw: &str) -> Result<GpuDevice, String> {
    let bad = || format!("got {raw:?}; expected INDEX:NAME, such as \"0:NVIDIA T4\"");
    let (index, name) = raw.split_once(':').ok_or_else(bad)?;
    let index = index.trim().parse::<u32>().map_err(|_| bad())?;
    if name.trim().is_empty() {
        return Err(bad());
    }
    Ok(GpuDevice {
        index,
        name: name.trim().to_owned(),
    })
}

fn parse_days(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(d) if d.is_finite() && (0.0..=36_500.0).contains(&d) => Ok(d),
        _ => Err(format!("got {raw:?}; expected days from 0 to 36500")),
    }
}

fn parse_seconds(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!("got {raw:?}; expected seconds from 0 to 3600")),
    }
}
