//! [`ModalBackend`]: the [`ComputeBackend`] over the bridge and `modal deploy`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Mutex as AsyncMutex, OnceCell};
use tokio_util::sync::CancellationToken;

use super::app_file::{app_file, secret_values, SECRET_VALUES_ENV};
use super::bridge::{answer_of, task_error, Bridge, BridgeArgs};
use super::credentials::HOW_TO_SET;
use super::{setup, ModalConfig, ModalCredentials};
use crate::compute::{
    BackendError, CallContext, CallId, CallOutcome, Capacity, ComputeBackend, Deployment, LogSink,
    LogStream, MapItem,
};
use crate::spec::{FunctionSpec, GPU_TYPES};
use crate::task::{ErrorKind, TaskError};

/// A deployed function: its spec and Modal app.
#[derive(Debug, Clone)]
struct Deployed {
    spec: FunctionSpec,
    app: String,
}

/// Runs functions on Modal (modal.com) through the official `modal` Python
/// SDK, pinned to [`MODAL_SDK_VERSION`](crate::compute::MODAL_SDK_VERSION).
///
/// Modal defines functions only from Python, so each deployed function
/// becomes a generated app file ([`app_file`](crate::compute::app_file)) deployed with
/// `modal deploy`; calls, maps, spawns, polls and cancels go through one
/// long-lived bridge process driving `modal.Function.from_name(..)` and
/// `modal.FunctionCall.from_id(..)`. Both run in a virtual environment with the
/// pinned SDK, built once under [`ModalConfig::cache_dir`] unless
/// [`ModalConfig::python`] points to one.
///
/// Credentials are explicit ([`ModalConfig::credentials`];
/// [`ModalCredentials::discover`] reads them like the `modal` CLI). Without
/// them every operation fails at once with
/// [`BackendError::ModalCredentials`], saying how to set them, and no process
/// starts. Every bridge request is bounded by a timeout. Modal's errors become
/// the local backend's [`TaskError`] shape.
#[derive(Debug)]
pub struct ModalBackend {
    pub(super) config: ModalConfig,
    python: OnceCell<PathBuf>,
    checker: OnceCell<super::check::Checker>,
    bridge: AsyncMutex<Option<Arc<Bridge>>>,
    functions: DashMap<String, Deployed>,
    /// Spawned calls whose logs are being followed: the follower's request
    /// id and task, awaited when the call's outcome is taken.
    followers: DashMap<String, tokio::task::JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl ModalBackend {
    /// A backend with the given settings; nothing starts until first use.
    pub fn new(config: ModalConfig) -> ModalBackend {
        ModalBackend {
            config,
            python: OnceCell::new(),
            checker: OnceCell::new(),
            bridge: AsyncMutex::new(None),
            functions: DashMap::new(),
            followers: DashMap::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Whether credentials are configured (not whether Modal accepts them).
    pub fn has_credentials(&self) -> bool {
        self.config.credentials.is_some()
    }

    pub(crate) fn credentials(&self) -> Result<&ModalCredentials, BackendError> {
        self.config
            .credentials
            .as_ref()
            .ok_or_else(|| BackendError::ModalCredentials(HOW_TO_SET.to_owned()))
    }

    /// The interpreter with the SDK, building its environment on first use.
    pub async fn sdk_python(&self) -> Result<PathBuf, BackendError> {
        self.python
            .get_or_try_init(|| setup::sdk_python(&self.config))
            .await
            .cloned()
    }

    /// The environment of the bridge and `modal deploy`: only what the SDK
    /// needs, with the credentials given explicitly (the user's own
    /// `~/.modal.toml` is not read behind the configuration's back).
    fn env(&self, credentials: &ModalCredentials) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "PATH".to_owned(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            ),
            (
                "HOME".to_owned(),
                self.config.cache_dir.display().to_string(),
            ),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
            ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
            ("MODAL_TOKEN_ID".to_owned(), credentials.token_id.clone()),
            (
                "MODAL_TOKEN_SECRET".to_owned(),
                credentials.token_secret.clone(),
            ),
            (
                "MODAL_CONFIG_PATH".to_owned(),
                self.config
                    .cache_dir
                    .join("modal.toml")
                    .display()
                    .to_string(),
            ),
        ];
        if let Some(environment) = &self.config.environment {
            env.push(("MODAL_ENVIRONMENT".to_owned(), environment.clone()));
        }
        if let Some(url) = &self.config.server_url {
            env.push(("MODAL_SERVER_URL".to_owned(), url.clone()));
        }
        env
    }

    pub(crate) async fn bridge(&self) -> Result<Arc<Bridge>, BackendError> {
        if self.shutdown.is_cancelled() {
            return Err(BackendError::Closed);
        }
        let credentials = self.credentials()?.clone();
        let mut slot = self.bridge.lock().await;
        if let Some(bridge) = slot.as_ref().filter(|b| !b.is_dead()) {
            return Ok(bridge.clone());
        }
        let python = self.sdk_python().await?;
        let bridge = Arc::new(Bridge::start(&BridgeArgs {
            python,
            env: self.env(&credentials),
        })?);
        *slot = Some(bridge.clone());
        Ok(bridge)
    }

    fn deployed(&self, function: &str) -> Result<Deployed, BackendError> {
        if self.shutdown.is_cancelled() {
            return Err(BackendError::Closed);
        }
        self.functions
            .get(function)
            .map(|d| d.clone())
            .ok_or_else(|| BackendError::UnknownFunction(function.to_owned()))
    }

    /// Runs `modal deploy` on the function's generated app file.
    async fn modal_deploy(&self, d: &Deployment, app: &str) -> Result<(), BackendError> {
        let credentials = self.credentials()?.clone();
        let python = self.sdk_python().await?;
        let dir = self.config.cache_dir.join("apps");
        tokio::fs::create_dir_all(&dir).await?;
        // Prefixed, so no app file can shadow a module the SDK imports.
        let file = dir.join(format!("ma_app_{}.py", d.spec.name));
        let code_file = dir.join(format!("ma_app_{}.code.py", d.spec.name));
        // Modal runs the code only in its containers; here it is parsed,
        // never run, so errors in it still show at deploy.
        let checker = self
            .checker
            .get_or_try_init(|| super::check::Checker::new(&python))
            .await?;
        super::check::check_code(checker, &d.spec).await?;
        tokio::fs::write(&code_file, &d.spec.code).await?;
        let text = app_file(
            &d.spec,
            app,
            &code_file.display().to_string(),
            !d.secret_env.is_empty(),
            &d.remote_secrets,
        );
        tokio::fs::write(&file, text).await?;
        let mut cmd = tokio::process::Command::new(&python);
        cmd.args(["-I", "-c", MODAL_CLI, "deploy"])
            .arg(format!(
                "{}::{}",
                file.display(),
                super::app_file::APP_OBJECT
            ))
            .current_dir(&dir)
            .env_clear()
            .envs(self.env(&credentials))
            .env(SECRET_VALUES_ENV, secret_values(&d.secret_env))
            .kill_on_drop(true);
        if let Some(environment) = &self.config.environment {
            cmd.args(["--env", environment]);
        }
        let out = tokio::time::timeout(self.config.deploy_timeout, cmd.output())
            .await
            .map_err(|_| {
                BackendError::Modal(format!(
                    "`modal deploy` of {} did not finish within {} s",
                    d.spec.name,
                    self.config.deploy_timeout.as_secs()
                ))
            })?
            .map_err(|e| BackendError::Modal(format!("cannot run modal deploy: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        // What goes back to the caller never carries a secret value.
        let refused = out.status.code() == Some(AUTH_REFUSED);
        Err(deploy_error(&d.redact.redact(&text), refused, &credentials))
    }

    fn timeout_for(&self, spec: &FunctionSpec) -> Duration {
        let attempts = u64::from(spec.retries.max_retries) + 1;
        Duration::from_secs(u64::from(spec.timeout_s) * attempts) + self.config.request_timeout
    }

    /// How long one `wait` blocks on Modal before it is asked again.
    fn wait_slice(&self) -> Duration {
        self.config.wait_slice.min(self.config.request_timeout / 2)
    }

    /// Streams a spawned call's stdout/stderr into `sink` as Modal delivers
    /// them, until the call ends.
    fn follow_logs(&self, bridge: &Bridge, call: &CallId, sink: LogSink) {
        let Ok((_, mut answers)) = bridge.open(json!({"op": "follow_logs", "call_id": call.id}))
        else {
            return;
        };
        let task = tokio::spawn(async move {
            while let Some(msg) = answers.recv().await {
                let Some(log) = msg.get("log") else { break };
                let stream = if log[0] == "stderr" {
                    LogStream::Stderr
                } else {
                    LogStream::Stdout
                };
                sink.write(stream, log[1].as_str().unwrap_or_default().to_owned());
            }
        });
        self.followers.insert(call.id.clone(), task);
    }

    /// Lets the call's log follower take in the last lines (bounded), so a
    /// finished task's logs are complete; then stops it.
    async fn logs_done(&self, call: &CallId) {
        let Some((_, mut task)) = self.followers.remove(&call.id) else {
            return;
        };
        if tokio::time::timeout(LOG_DRAIN, &mut task).await.is_err() {
            // The bridge's side ends with the call's log stream; its
            // answers then go nowhere.
            task.abort();
        }
    }

    /// One control request to the bridge; Modal's errors become backend errors.
    pub(crate) async fn control(&self, msg: Value) -> Result<Value, BackendError> {
        let bridge = self.bridge().await?;
        bridge
            .request(msg, self.config.request_timeout)
            .await?
            .map_err(|e| modal_error(&e))
    }

    /// Makes the bridge look `function` up afresh: after a deploy or an
    /// undeploy its cached handle names the old app.
    async fn forget(&self, d: &Deployed) {
        if let Some(bridge) = self.bridge.lock().await.as_ref() {
            let _ = bridge.send(&json!({"id": 0, "op": "forget", "app": d.app,
                                        "function": d.spec.python_entrypoint()}));
        }
    }
}

/// The Modal CLI, run as `modal` is, except that the SDK's own
/// `AuthError` (a missing, malformed or refused token) ends it with
/// [`AUTH_REFUSED`]: a typed outcome, not a phrase to look for.
const MODAL_CLI: &str = "import sys\nimport modal.__main__ as m\nfrom modal.exception import AuthError\ninner = m.entrypoint_cli\ndef cli(*a, **k):\n    try:\n        return inner(*a, **k)\n    except AuthError as e:\n        print('AuthError:', e, file=sys.stderr)\n        sys.exit(77)\nm.entrypoint_cli = cli\nsys.argv[0] = 'modal'\nm.main()\n";

/// [`MODAL_CLI`]'s exit code when Modal refused the credentials.
const AUTH_REFUSED: i32 = 77;

/// A failed `modal deploy`, with credentials problems (`refused`) told
/// apart.
fn deploy_error(output: &str, refused: bool, credentials: &ModalCredentials) -> BackendError {
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n");
    if refused {
        BackendError::ModalCredentials(format!(
            "Modal refused the credentials from {} ({}); {HOW_TO_SET}",
            credentials.source,
            tail.lines().last().unwrap_or_default()
        ))
    } else {
        BackendError::Modal(format!("`modal deploy` failed:\n{tail}"))
    }
}

/// A Modal error on a control request as a backend error.
fn modal_error(e: &TaskError) -> BackendError {
    if e.kind == ErrorKind::AuthError {
        BackendError::ModalCredentials(format!(
            "Modal refused the credentials ({}); {HOW_TO_SET}",
            e.message
        ))
    } else {
        BackendError::Modal(format!("{}: {}", e.kind, e.message))
    }
}

/// The most a finished call's outcome waits for its last log lines.
const LOG_DRAIN: Duration = Duration::from_secs(5);

fn cancelled() -> TaskError {
    TaskError::new(crate::task::ErrorKind::Cancelled, "the task was cancelled")
}

#[async_trait]
impl ComputeBackend for ModalBackend {
    fn name(&self) -> &'static str {
        "modal"
    }

    fn capacity(&self) -> Capacity {
        // Modal scales out on demand: no fixed cores or memory to report.
        Capacity {
            backend: "modal".into(),
            cpus: 0.0,
            memory_mib: 0,
            gpus: GPU_TYPES
                .replace(" (alias A10G)", "")
                .split(", ")
                .map(str::to_owned)
                .collect(),
            default_pool_size: 0,
            isolation: crate::compute::Isolation::Modal,
        }
    }

    async fn deploy(&self, d: Deployment) -> Result<(), BackendError> {
        if self.shutdown.is_cancelled() {
            return Err(BackendError::Closed);
        }
        self.credentials()?;
        let app = d.spec.name.clone();
        // `warm: false` is a restarted runtime registering what it had: the
        // app is still deployed on Modal, so it is only looked up again.
        if d.warm {
            self.modal_deploy(&d, &app).await?;
            for (mount, dir) in &d.volume_dirs {
                if let Some(name) = d.spec.volumes.get(mount) {
                    self.push_volume(name, dir).await?;
                }
            }
        }
        let deployed = Deployed { spec: d.spec, app };
        self.forget(&deployed).await;
        self.functions.insert(deployed.spec.name.clone(), deployed);
        Ok(())
    }

    async fn undeploy(&self, function: &str) -> Result<(), BackendError> {
        let (_, deployed) = self
            .functions
            .remove(function)
            .ok_or_else(|| BackendError::UnknownFunction(function.to_owned()))?;
        self.forget(&deployed).await;
        // Stopping the app on Modal is best effort: the function is gone here.
        if let (Ok(credentials), Ok(python)) = (self.credentials(), self.sdk_python().await) {
            let stop = tokio::process::Command::new(python)
                // --yes: without a terminal the CLI's confirmation aborts.
                .args(["-I", "-m", "modal", "app", "stop", "--yes", &deployed.app])
                .env_clear()
                .envs(self.env(credentials))
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(self.config.request_timeout, stop).await {
                Ok(Ok(out)) if out.status.success() => {}
                other => {
                    tracing::warn!(app = %deployed.app, ?other, "could not stop the Modal app")
                }
            }
        }
        Ok(())
    }

    async fn call(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: CallContext,
    ) -> Result<CallOutcome, BackendError> {
        let d = self.deployed(function)?;
        let cancel = ctx.cancel.clone();
        let call = self.spawn(function, args, kwargs, ctx).await?;
        // A caller that gives up (or outlives the function's time) cancels
        // the call on Modal too, not only its own wait.
        let bound = self.timeout_for(&d.spec);
        let gave_up = tokio::select! {
            outcome = tokio::time::timeout(bound, self.wait(&call)) => match outcome {
                Ok(outcome) => return outcome,
                Err(_) => TaskError::new(
                    crate::task::ErrorKind::TimeoutError,
                    format!("no outcome from Modal within {} s", bound.as_secs()),
                ),
            },
            () = cancel.cancelled() => cancelled(),
        };
        if let Err(e) = self.cancel(&call).await {
            tracing::warn!(call_id = %call, error = %e, "could not cancel the Modal call");
        }
        self.logs_done(&call).await;
        Ok(CallOutcome {
            result: Err(gave_up),
            attempts: 1,
        })
    }

    async fn map(
        &self,
        function: &str,
        inputs: BoxStream<'static, Value>,
        ctx: CallContext,
    ) -> Result<BoxStream<'static, Vec<MapItem>>, BackendError> {
        let d = self.deployed(function)?;
        let bridge = self.bridge().await?;
        let window = self.config.map_window.max(1);
        let (id, answers) = bridge.open(json!({"op": "map", "app": d.app,
            "function": d.spec.python_entrypoint(), "window": window, "as": ctx.inputs_as}))?;
        let (out, rx) = mpsc::channel(4);
        tokio::spawn(run_map(bridge, id, answers, inputs, out, ctx));
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        })
        .boxed())
    }

    async fn spawn(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: CallContext,
    ) -> Result<CallId, BackendError> {
        let d = self.deployed(function)?;
        let bridge = self.bridge().await?;
        let id = bridge
            .request(
                json!({"op": "spawn", "app": d.app, "function": d.spec.python_entrypoint(),
                       "args": args, "kwargs": kwargs}),
                self.config.request_timeout,
            )
            .await?
            .map_err(|e| modal_error(&e))?;
        let id = id
            .as_str()
            .ok_or_else(|| BackendError::Modal(format!("spawn answered {id}, not a call id")))?;
        let call = CallId::modal(id);
        self.follow_logs(&bridge, &call, ctx.logs);
        Ok(call)
    }

    async fn wait(&self, call: &CallId) -> Result<CallOutcome, BackendError> {
        // Each request blocks on Modal until the output exists or the slice
        // ends: an outcome arrives as soon as Modal has it, with no polling
        // interval in between.
        let slice = self.wait_slice();
        loop {
            let bridge = self.bridge().await?;
            let request = bridge.request(
                json!({"op": "wait", "call_id": call.id, "timeout": slice.as_secs_f64()}),
                self.config.request_timeout + slice,
            );
            let answer = tokio::select! {
                answer = request => answer,
                () = self.shutdown.cancelled() => Err(BackendError::Closed),
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    self.logs_done(call).await;
                    return Err(e);
                }
            };
            match answer {
                Ok(state) if state["done"] == json!(true) => {
                    let attempts = state["attempts"]
                        .as_u64()
                        .map_or(1, |n| n.clamp(1, u64::from(u32::MAX)) as u32);
                    let result = answer_of(&state["result"]);
                    self.logs_done(call).await;
                    return Ok(CallOutcome { result, attempts });
                }
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::AuthError => {
                    self.logs_done(call).await;
                    return Err(modal_error(&e));
                }
                Err(e) => {
                    self.logs_done(call).await;
                    return Ok(CallOutcome {
                        result: Err(e),
                        attempts: 1,
                    });
                }
            }
        }
    }

    async fn cancel(&self, call: &CallId) -> Result<(), BackendError> {
        self.control(json!({"op": "cancel", "call_id": call.id}))
            .await
            .map(drop)
    }

    async fn shutdown(&self) {
        self.shutdown.cancel();
        self.followers.retain(|_, task| {
            task.abort();
            false
        });
        if let Some(bridge) = self.bridge.lock().await.take() {
            bridge.kill();
        }
    }
}

/// Feeds a map's inputs to the bridge as it grants credit and forwards its
/// results in order. If the map fails as a whole, every input without a
/// result gets that error, so each input still has exactly one outcome.
async fn run_map(
    bridge: Arc<Bridge>,
    id: u64,
    mut answers: mpsc::UnboundedReceiver<Value>,
    mut inputs: BoxStream<'static, Value>,
    out: mpsc::Sender<Vec<MapItem>>,
    ctx: CallContext,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut sent, mut done, mut ended) = (0u64, 0u64, false);
    let failure = loop {
        let msg = tokio::select! {
            msg = answers.recv() => msg,
            () = ctx.cancel.cancelled() => {
                let _ = bridge.send(&json!({"id": 0, "op": "abort", "target": id}));
                return;
            }
        };
        let Some(msg) = msg else {
            break TaskError::new(
                crate::task::ErrorKind::ModalError,
                "the bridge process exited during the map",
            );
        };
        if let Some(credit) = msg.get("credit").and_then(Value::as_u64) {
            let mut batch = Vec::new();
            while !ended && (batch.len() as u64) < credit {
                match inputs.next().await {
                    Some(v) => batch.push(v),
                    None => ended = true,
                }
            }
            sent += batch.len() as u64;
            ctx.meter.submitted.store(sent, Relaxed);
            ctx.meter.running.store(sent - done, Relaxed);
            if !batch.is_empty() {
                let _ = bridge.send(&json!({"op": "inputs", "target": id, "inputs": batch}));
            }
            if ended {
                let _ = bridge.send(&json!({"op": "end", "target": id}));
            }
        } else if let Some(item) = msg.get("item") {
            // Results come in input order, each with its input's index: one
            // the bridge could not deliver is an error in its own slot, and
            // the results after it stay on their own inputs.
            let index = item[0].as_u64().unwrap_or(done);
            let mut items = Vec::new();
            while done < index.min(sent) {
                items.push(MapItem {
                    index: done,
                    result: Err(TaskError::new(
                        crate::task::ErrorKind::ProtocolError,
                        "the result of this input could not be read from the Modal bridge",
                    )),
                    attempts: 1,
                });
                done += 1;
            }
            if index == done {
                items.push(MapItem {
                    index,
                    result: answer_of(&item[1]),
                    attempts: 1,
                });
                done += 1;
            } else {
                tracing::warn!(index, done, "a Modal map result out of order was dropped");
            }
            if out.send(items).await.is_err() {
                let _ = bridge.send(&json!({"id": 0, "op": "abort", "target": id}));
                return;
            }
            ctx.meter.running.store(sent.saturating_sub(done), Relaxed);
        } else if let Some(err) = msg.get("err") {
            break task_error(err);
        } else if msg.get("ok").is_some() {
            if done < sent {
                // The map ended without some results: each still gets one.
                break TaskError::new(
                    crate::task::ErrorKind::ProtocolError,
                    "the Modal map ended without this input's result",
                );
            }
            return;
        }
    };
    // Every input without a result fails with the map's error.
    let mut index = done;
    loop {
        if index >= sent {
            if ended || inputs.next().await.is_none() {
                return;
            }
            sent += 1;
        }
        let item = MapItem {
            index,
            result: Err(failure.clone()),
            attempts: 1,
        };
        if out.send(vec![item]).await.is_err() {
            return;
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> ModalCredentials {
        ModalCredentials {
            token_id: "ak-1".into(),
            token_secret: "as-1".into(),
            source: "environment".into(),
        }
    }

    #[test]
    fn deploy_failures_tell_credentials_apart() {
        let refused = deploy_error(
            "Building...\nAuthError: Token missing. Could not authenticate client.\n",
            true,
            &creds(),
        );
        let text = refused.to_string();
        assert!(
            matches!(refused, BackendError::ModalCredentials(_)),
            "{text}"
        );
        assert!(
            text.contains("environment") && text.contains("modal token new"),
            "{text}"
        );
        let other = deploy_error(
            "Step 3/4: pip install nope==0\nERROR: No matching distribution found for nope==0\n",
            false,
            &creds(),
        );
        assert!(
            matches!(&other, BackendError::Modal(m) if m.contains("No matching distribution")),
            "{other}"
        );
    }

    #[tokio::test]
    async fn without_credentials_nothing_starts() {
        let backend = ModalBackend::new(ModalConfig {
            python: Some("/nonexistent/python".into()),
            ..ModalConfig::default()
        });
        let err = backend
            .call("f", Vec::new(), Map::new(), CallContext::default())
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::UnknownFunction(_)), "{err}");
        let err = backend.cancel(&CallId::modal("fc-1")).await.unwrap_err();
        assert!(
            matches!(&err, BackendError::ModalCredentials(m) if m.contains("MODAL_TOKEN_ID")),
            "{err}"
        );
    }
}
