//! # modal-agents
//!
//! An actor runtime in which agent programs deploy Python functions from code
//! strings and run them on warm local Python containers (or on Modal), one call
//! or a whole parallel map at a time, with every task tracked.
//!
//! ## Layout
//!
//! The headline types are re-exported here; everything else lives in the
//! module that owns it.
//!
//! - [`runtime`]: the [`Runtime`] handle and its [`RuntimeBuilder`]; start,
//!   deploy, spawn, call, map, status, wait, results, cancel, shutdown; its
//!   restart policy, resource report and errors.
//! - [`spec`]: [`FunctionSpec`] and its parts (resources, GPUs, image,
//!   retries, limits, backend), validated before any backend sees them.
//! - [`task`]: [`TaskId`], [`TaskStatus`], [`TaskRecord`], [`TaskError`],
//!   map progress and result pages.
//! - [`compute`]: the [`ComputeBackend`](compute::ComputeBackend) trait, the
//!   local backend (warm `python3` containers under bubblewrap) and the Modal
//!   backend (Modal through the pinned official SDK).
//! - [`volume`]: [`Volumes`], versioned state, files and watches.
//! - [`sandbox`]: [`Sandboxes`]: long-lived sandbox sessions for
//!   agent-written code (exec with live output, files, lifetimes, one typed
//!   outcome per process, content-addressed snapshots, forks and diffs).
//! - [`agents`]: [`Agents`]: master, worker, codegen and repo-creator actors,
//!   children of the runtime's supervisor, above the runtime.
//! - [`wire`]: every request and response the API, the client and the tools
//!   exchange, with their schemas.
//! - [`tools`]: the seed's agent tools ([`Tools`]); [`api`]: the axum HTTP
//!   service; [`client`]: its typed client.
//! - [`secrets`], [`redact`]: secrets functions draw on, and what keeps
//!   their values out of logs and answers; [`webhooks`]: signed
//!   task-completion webhooks, a runtime service.
//!
//! Inside (not public): the one supervisor and the shape every actor takes
//! (`supervisor`), the function registry, the task tracker and its journal,
//! the dispatcher, the redb store and the persistence kit (`persist`, with
//! the data dir's layout).
//!
//! ## Example
//!
//! ```no_run
//! use modal_agents::{FunctionSpec, Runtime};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::builder().data_dir("/tmp/modal-agents-demo").start().await?;
//! rt.deploy_function(FunctionSpec::new("double", "def double(x):\n    return x * 2\n"))
//!     .await?;
//! assert_eq!(rt.call("double", vec![json!(21)], Default::default()).await?, json!(42));
//! let map = rt.run_parallel("double", (0..100).map(|i| json!(i)).collect()).await?;
//! rt.wait(map, None).await?;
//! let page = rt.results(map, 0, 10).await?;
//! assert_eq!(page.results[3], json!(6));
//! rt.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod agents;
pub mod api;
pub mod client;
pub mod commands;
pub mod compute;
mod dispatcher;
pub mod mcp;
mod persist;
pub mod redact;
mod registry;
pub mod runtime;
pub mod sandbox;
pub mod secrets;
pub mod spec;
mod store;
mod supervisor;
mod sync;
pub mod task;
pub mod tools;
mod tracker;
mod value;
pub mod volume;
pub mod webhooks;
pub mod wire;

pub use agents::Agents;
pub use runtime::{Runtime, RuntimeBuilder, RuntimeError};
pub use sandbox::Sandboxes;
pub use spec::{FunctionSpec, SpecError};
pub use task::{TaskError, TaskId, TaskRecord, TaskStatus};
pub use tools::Tools;
pub use volume::Volumes;
