//! The agent tools over the Model Context Protocol, on the official Rust
//! SDK (`rmcp`): Streamable HTTP at `POST /mcp` of the HTTP API (behind
//! its bearer tokens; a browser `Origin` is refused), and stdio
//! (`modal-agents mcp`), served from an embedded runtime or forwarded to a
//! running server.
//!
//! Every tool has an `inputSchema` and an `outputSchema` derived from its
//! [`wire`](crate::wire) types; an answer is `structuredContent` plus a
//! short text for a model to read. Bad arguments are a tool error
//! (`isError`) that names the field and what is accepted, so the model can
//! correct itself; an unknown tool is a protocol error. `wait_tasks` sends
//! progress notifications when the client gave a progress token.

mod check;
mod http;
mod sessions;
mod stdio;

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    Implementation, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ServerCapabilities, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError};
use crate::runtime::Runtime;
use crate::task::TaskId;
use crate::tools::{CommandError, Tools};
use crate::wire::ToolDefinition;

pub(crate) use http::{guard, service};
pub use sessions::McpLimits;
pub(crate) use sessions::Sessions;

/// Longest text summary of an answer (the whole answer is in
/// `structuredContent`).
const MAX_SUMMARY: usize = 4_000;

/// How often a long wait tells the client where it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Where the tools run.
#[derive(Debug, Clone)]
enum Host {
    /// On a runtime in this process.
    Local(Tools),
    /// On a running server, through its HTTP API.
    Remote(Client),
}

/// The MCP server: the agent tools of one runtime, or of a remote server.
#[derive(Clone)]
pub struct McpServer {
    host: Host,
    /// Tool calls running as MCP tasks (the Tasks extension), shared by
    /// every session of this server.
    tasks: rmcp::task_manager::TaskManager,
    /// When recent ones were created: at most [`MAX_KEPT_TASKS`] per
    /// [`TASK_TTL`], so the outcomes kept stay bounded.
    created: Arc<Window>,
}

/// Most MCP tasks created per [`TASK_TTL`] (each keeps at most
/// [`MAX_TASK_ANSWER`] of its answer); past it a call is answered the
/// ordinary way.
const MAX_KEPT_TASKS: usize = 1024;

/// Recent MCP tasks: when each was created, and whose it is.
#[derive(Default)]
struct Window {
    times: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
    owners: std::sync::Mutex<Owners>,
}

/// Each recent task's caller, and when it was created.
type Owners = std::collections::HashMap<String, (crate::commands::Caller, std::time::Instant)>;

impl Window {
    /// Counts one more task, unless [`MAX_KEPT_TASKS`] were made within
    /// [`TASK_TTL`].
    fn admit(&self) -> bool {
        use crate::sync::Recover as _;
        let now = std::time::Instant::now();
        let mut times = self.times.lock().recover();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > TASK_TTL)
        {
            times.pop_front();
        }
        if times.len() >= MAX_KEPT_TASKS {
            return false;
        }
        times.push_back(now);
        true
    }

    /// Notes that task `id` is `caller`'s (forgetting those past twice
    /// [`TASK_TTL`], when their outcome is gone too).
    fn own(&self, id: &str, caller: crate::commands::Caller) {
        use crate::sync::Recover as _;
        let now = std::time::Instant::now();
        let mut owners = self.owners.lock().recover();
        owners.retain(|_, (_, at)| now.duration_since(*at) < 2 * TASK_TTL);
        owners.insert(id.to_owned(), (caller, now));
    }

    /// Whether task `id` is another caller's than `caller`.
    fn is_others(&self, id: &str, caller: crate::commands::Caller) -> bool {
        use crate::sync::Recover as _;
        self.owners
            .lock()
            .recover()
            .get(id)
            .is_some_and(|(owner, _)| *owner != caller)
    }
}

/// The caller a request comes from (over Streamable HTTP, the token the
/// API's auth matched).
fn caller_of(context: &RequestContext<RoleServer>) -> crate::commands::Caller {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<crate::commands::Caller>())
        .copied()
        .unwrap_or_default()
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// The tools that run as an MCP task when the client speaks the Tasks
/// extension: those that may wait longer than a host's tool timeout.
const TASK_TOOLS: &[&str] = &[
    "deploy_modal_function",
    "spawn_parallel_tasks",
    "request_gpu_task",
    "spawn_task",
    "wait_tasks",
    "sandbox_exec",
    "wait_sandbox_process",
    "run_code",
];

/// Most tool calls running as tasks at once on one server; past it a call
/// runs as an ordinary (waited-for) call.
const MAX_RUNNING_TASKS: usize = 64;

/// How long a task's outcome is kept after it was created (then it may be
/// forgotten; the runtime's own task records stay).
const TASK_TTL: Duration = Duration::from_secs(30 * 60);

impl McpServer {
    /// Serves the tools of `runtime`.
    pub fn local(runtime: Runtime) -> McpServer {
        McpServer {
            host: Host::Local(Tools::new(runtime)),
            tasks: Default::default(),
            created: Default::default(),
        }
    }

    /// Forwards every tool call to the server `client` speaks to.
    pub fn remote(client: Client) -> McpServer {
        McpServer {
            host: Host::Remote(client),
            tasks: Default::default(),
            created: Default::default(),
        }
    }

    /// Speaks MCP on stdin and stdout until the client closes them.
    /// Every line that is not a JSON-RPC message is answered with an
    /// error (never dropped while the host waits).
    pub async fn serve_stdio(self) -> Result<(), std::io::Error> {
        stdio::serve(self).await
    }

    /// How many of `ids` have finished, for progress notes.
    async fn finished(&self, ids: &[TaskId]) -> usize {
        let mut finished = 0;
        for &id in ids {
            let status = match &self.host {
                Host::Local(tools) => tools.runtime().status(id).ok().map(|r| r.status),
                Host::Remote(client) => client.status(id).await.ok().map(|r| r.status),
            };
            finished += usize::from(status.is_some_and(|s| s.is_terminal()));
        }
        finished
    }

    async fn definitions(&self) -> Result<Vec<ToolDefinition>, ErrorData> {
        match &self.host {
            Host::Local(tools) => Ok(tools.definitions()),
            Host::Remote(client) => client
                .tools()
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None)),
        }
    }

    /// Runs a tool: its answer, or the text of a tool error.
    async fn run(
        &self,
        caller: crate::commands::Caller,
        name: &str,
        args: Value,
    ) -> Result<Result<Value, String>, ErrorData> {
        match &self.host {
            Host::Local(tools) => match tools.clone().for_caller(caller).call(name, args).await {
                Ok(v) => Ok(Ok(v)),
                Err(e @ CommandError::UnknownTool { .. }) => {
                    Err(ErrorData::invalid_params(e.to_string(), None))
                }
                // Whatever it repeats of the call, the text is bounded.
                Err(e) => Ok(Err(crate::value::clip(
                    &e.to_string(),
                    crate::api::MAX_DETAIL,
                )
                .into_owned())),
            },
            Host::Remote(client) => match client.tool(name, args).await {
                Ok(v) => Ok(Ok(v)),
                Err(ClientError::Api {
                    kind: crate::wire::ProblemKind::UnknownTool,
                    detail,
                    ..
                }) => Err(ErrorData::invalid_params(detail, None)),
                Err(ClientError::Api { detail, field, .. }) => Ok(Err(match field {
                    Some(f) => format!("invalid `{f}`: {detail}"),
                    None => detail,
                })),
                Err(e) => Ok(Err(e.to_string())),
            },
        }
    }
}

/// A tool definition as MCP lists it.
fn to_mcp(def: ToolDefinition) -> Tool {
    let object = |v: Value| match v {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(serde_json::Map::new()),
    };
    use crate::commands::Effect;
    let mut tool = Tool::new(def.name, def.description, object(def.input_schema));
    if let Some(output) = def.output_schema {
        tool = tool.with_raw_output_schema(object(output));
    }
    // What a host may run without asking: the reading tools; one that only
    // adds is not destructive (MCP's default is that a tool may be).
    let annotations = match def.effect {
        Effect::Reads => rmcp::model::ToolAnnotations::new().read_only(true),
        Effect::Adds => rmcp::model::ToolAnnotations::new()
            .read_only(false)
            .destructive(false),
        Effect::Changes => rmcp::model::ToolAnnotations::new()
            .read_only(false)
            .destructive(true),
    };
    tool.annotate(annotations)
}

/// A short text of an answer, for a model to read.
fn summary(tool: &str, answer: &Value) -> String {
    if tool == "wait_tasks" {
        let head = if answer["done"] == true {
            "done"
        } else {
            "not done yet (timed out); call wait_tasks again"
        };
        let lines = answer["tasks"]
            .as_array()
            .map(|tasks| {
                tasks
                    .iter()
                    .filter_map(|t| t["summary"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        return format!("{head}\n{lines}");
    }
    let text = answer.to_string();
    if text.len() <= MAX_SUMMARY {
        return text;
    }
    let mut cut = MAX_SUMMARY;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}… (cut; the whole answer is in structuredContent)",
        &text[..cut]
    )
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> InitializeResult {
        // Calls run as MCP tasks only on this process's runtime: one that
        // is cancelled then cancels the runtime tasks it started.
        let capabilities = match self.host {
            Host::Local(_) => ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
            Host::Remote(_) => ServerCapabilities::builder().enable_tools().build(),
        };
        InitializeResult::new(capabilities)
            .with_server_info(Implementation::new(
                "modal-agents",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Run Python on warm containers: deploy_modal_function, then spawn_task or \
                 spawn_parallel_tasks; wait_tasks waits for tasks without polling; \
                 coordinate_state and the volume file tools share state between agents.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self.definitions().await?.into_iter().map(to_mcp).collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        if let Some(task) = self.as_task(&name, &request, &context) {
            return Ok(CallToolResponse::Task(rmcp::model::CreateTaskResult::new(
                task,
            )));
        }
        let args = request.arguments.map(Value::Object).unwrap_or(Value::Null);
        let progress = match Self::progress_token_of(&context) {
            Some(token) if name == "wait_tasks" => {
                let ids: Vec<TaskId> = args["task_ids"]
                    .as_array()
                    .map(|ids| {
                        ids.iter()
                            .filter_map(|v| v.as_str()?.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                let stop = CancellationToken::new();
                let (me, peer) = (self.clone(), context.peer.clone());
                let guard = stop.clone().drop_guard();
                tokio::spawn(async move {
                    let total = ids.len() as f64;
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(PROGRESS_EVERY) => {}
                        }
                        let finished = me.finished(&ids).await;
                        let note = ProgressNotificationParam::new(token.clone(), finished as f64)
                            .with_total(total);
                        if peer.notify_progress(note).await.is_err() {
                            return;
                        }
                    }
                });
                Some(guard)
            }
            _ => None,
        };
        // A map (or a sandbox exec) waited for tells its progress through
        // the tools' hook.
        let map_progress = match (&self.host, Self::progress_token_of(&context)) {
            (Host::Local(tools), Some(token))
                if matches!(
                    name.as_str(),
                    "spawn_parallel_tasks" | "sandbox_exec" | "run_code"
                ) =>
            {
                let peer = context.peer.clone();
                let hook: crate::tools::Progress = Arc::new(move |done, total| {
                    let note = ProgressNotificationParam::new(token.clone(), done as f64)
                        .with_total(total as f64);
                    let peer = peer.clone();
                    tokio::spawn(async move {
                        let _ = peer.notify_progress(note).await;
                    });
                });
                Some(McpServer {
                    host: Host::Local(tools.clone().with_progress(hook)),
                    tasks: self.tasks.clone(),
                    created: self.created.clone(),
                })
            }
            _ => None,
        };
        // Over Streamable HTTP, the token the API's auth matched: its
        // idempotency keys are its own.
        let caller = caller_of(&context);
        let outcome = map_progress
            .as_ref()
            .unwrap_or(self)
            .run(caller, &name, args)
            .await?;
        drop(progress);
        Ok(tool_result(&name, outcome).into())
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, ErrorData> {
        self.mine(&request.task_id, &context)?;
        Ok(rmcp::model::GetTaskResult::new(
            self.tasks.get_task(&request.task_id)?,
        ))
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.mine(&request.task_id, &context)?;
        self.tasks.cancel_task(&request.task_id)
    }
}

/// A tool's outcome as MCP answers it: the answer in `structuredContent`
/// with a short text, or a tool error.
fn tool_result(name: &str, outcome: Result<Value, String>) -> CallToolResult {
    match outcome {
        Ok(answer) => {
            let text = summary(name, &answer);
            let mut result = CallToolResult::structured(answer);
            result.content = vec![ContentBlock::text(text)];
            result
        }
        Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
    }
}

impl McpServer {
    /// Refuses another token's task as if it did not exist.
    fn mine(&self, id: &str, context: &RequestContext<RoleServer>) -> Result<(), ErrorData> {
        if self.created.is_others(id, caller_of(context)) {
            return Err(ErrorData::invalid_params(
                format!("unknown task {}", crate::value::clip(id, 128)),
                None,
            ));
        }
        Ok(())
    }

    /// Starts a long tool call as an MCP task when the client speaks the
    /// Tasks extension (and fewer than [`MAX_RUNNING_TASKS`] run): the call
    /// goes on in the background, `tasks/get` tells its state and then its
    /// result, and `tasks/cancel` stops it and cancels every runtime task it
    /// started. Otherwise the call runs as usual.
    /// Leaves a progress token out of the answer when it is past a few
    /// hundred bytes: each notification repeats it (a 1 MB token had made
    /// 5 MB of notifications in 6 s).
    fn progress_token_of(
        context: &RequestContext<RoleServer>,
    ) -> Option<rmcp::model::ProgressToken> {
        const MAX_TOKEN: usize = 256;
        context.meta.get_progress_token().filter(|t| match &t.0 {
            rmcp::model::NumberOrString::String(s) => s.len() <= MAX_TOKEN,
            rmcp::model::NumberOrString::Number(_) => true,
        })
    }

    fn as_task(
        &self,
        name: &str,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Option<rmcp::model::Task> {
        let Host::Local(tools) = &self.host else {
            return None;
        };
        let wanted = TASK_TOOLS.contains(&name)
            && context
                .client_capabilities()
                .is_some_and(|c| c.supports_tasks());
        if !wanted || self.tasks.running_task_count() >= MAX_RUNNING_TASKS || !self.created.admit()
        {
            return None;
        }
        let caller = caller_of(context);
        let runtime = tools.runtime().clone();
        let tools = tools.clone();
        let (name, args) = (
            name.to_owned(),
            request
                .arguments
                .clone()
                .map(Value::Object)
                .unwrap_or(Value::Null),
        );
        let options = rmcp::task_manager::TaskOptions::new()
            .with_ttl_ms(TASK_TTL.as_millis() as u64)
            .with_poll_interval_ms(500);
        let (tasks, created) = (self.tasks.clone(), self.created.clone());
        let owners = self.created.clone();
        let task = self.tasks.spawn(options, move |task| {
            // The runtime tasks the call starts: named in the task's status,
            // and cancelled with it, even one started after the cancel (the
            // call runs on, to where it notes what it started, and is not
            // dropped half-way).
            let started = Arc::new(Started {
                ids: std::sync::Mutex::new(Vec::new()),
                cancelled: std::sync::atomic::AtomicBool::new(false),
            });
            let hook: crate::commands::Started = {
                let (started, runtime, task) = (started.clone(), runtime.clone(), task.clone());
                Arc::new(move |id| {
                    task.set_status_message(format!("running: task {id}"));
                    if started.note(id) {
                        let runtime = runtime.clone();
                        tokio::spawn(async move {
                            let _ = runtime.cancel(id).await;
                        });
                    }
                })
            };
            let server = McpServer {
                host: Host::Local(tools.with_started(hook).with_tool_wait(None)),
                tasks,
                created,
            };
            let run = tokio::spawn(async move {
                let outcome = server.run(caller, &name, args).await;
                outcome.map(|o| tool_result(&name, o.map(kept_small)))
            });
            Box::pin(async move {
                tokio::select! {
                    outcome = run => match outcome {
                        Ok(Ok(result)) => Ok(result),
                        Ok(Err(e)) => Err(rmcp::task_manager::TaskExit::Error(e)),
                        Err(e) => Err(rmcp::task_manager::TaskExit::Error(ErrorData::internal_error(
                            format!("the tool call ended abnormally: {e}"),
                            None,
                        ))),
                    },
                    () = task.cancelled() => {
                        for id in started.cancel_all() {
                            let _ = runtime.cancel(id).await;
                        }
                        Err(rmcp::task_manager::TaskExit::Cancelled)
                    }
                }
            })
        });
        owners.own(&task.task_id, caller);
        Some(task)
    }
}

/// Most bytes of a tool's answer an MCP task keeps until it is read (its
/// outcome stays [`TASK_TTL`]).
const MAX_TASK_ANSWER: usize = 96 << 10;

/// An answer an MCP task keeps: whole when small, else without its large
/// parts (results, a result, output), which `omitted` names; the tools that
/// read them (get_task_results, get_task_status, get_task_logs) still can.
fn kept_small(mut answer: Value) -> Value {
    if crate::value::json_size(&answer) <= MAX_TASK_ANSWER {
        return answer;
    }
    let mut omitted = Vec::new();
    if let Some(map) = answer.as_object_mut() {
        for key in ["results", "result", "stdout", "stderr"] {
            if map.remove(key).is_some() {
                omitted.push(Value::String(key.into()));
            }
        }
        map.insert("omitted".into(), Value::Array(omitted));
    }
    answer
}

/// The runtime tasks an MCP task's call started, and whether it was
/// cancelled.
struct Started {
    ids: std::sync::Mutex<Vec<TaskId>>,
    cancelled: std::sync::atomic::AtomicBool,
}

impl Started {
    /// Notes `id`; true when the call was cancelled already (so `id` must be
    /// cancelled now).
    fn note(&self, id: TaskId) -> bool {
        use crate::sync::Recover as _;
        let mut ids = self.ids.lock().recover();
        ids.push(id);
        self.cancelled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks the call cancelled; the ids it started so far.
    fn cancel_all(&self) -> Vec<TaskId> {
        use crate::sync::Recover as _;
        let ids = self.ids.lock().recover();
        self.cancelled
            .store(true, std::sync::atomic::Ordering::Release);
        ids.clone()
    }
}
