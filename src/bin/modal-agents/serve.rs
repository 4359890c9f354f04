//! `modal-agents serve`: the HTTP API over a runtime with the local backend
//! and, when credentials are found, Modal.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use modal_agents::api::{self, ApiConfig, Cidr};
use modal_agents::{
    LocalConfig, ModalConfig, ModalCredentials, Runtime, SandboxMode, DEFAULT_DATA_DIR,
};

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
    /// Non-public webhook targets to allow, as CIDR blocks (repeat or comma-separate).
    #[arg(long, env = "MODAL_AGENTS_WEBHOOK_ALLOW", value_delimiter = ',')]
    webhook_allow: Vec<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    body_limit: usize,
    /// Run containers under bubblewrap: auto (when it works), required, off.
    #[arg(long, env = "MODAL_AGENTS_SANDBOX", default_value = "auto")]
    sandbox: SandboxMode,
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
        webhook_allow,
        ..ApiConfig::default()
    };
    config.check().map_err(|e| e.to_string())?;
    if config.tokens.is_empty() {
        tracing::warn!("serving WITHOUT authentication (--insecure-no-auth)");
    }
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let runtime = Runtime::builder()
        .data_dir(&args.data_dir)
        .local_config(LocalConfig {
            sandbox: args.sandbox,
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
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    let served = api::serve(listener, app, shutdown).await;
    runtime.shutdown().await;
    served.map_err(|e| e.to_string())
}
