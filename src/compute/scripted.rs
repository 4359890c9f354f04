//! [`ScriptedBackend`]: a compute backend that runs Rust closures instead of
//! Python, for fast tests of the layers above it (dispatcher, tracker, map
//! progress, agents, the API) with no `python3` and no process. It keeps the
//! trait's contract (ordered maps in chunks, spawn/wait/cancel, attempts per
//! the spec's retries) and counts what it ran; it is never a substitute for
//! the real backends, whose own tests run real processes.
//!
//! Shipped with `#[cfg(test)]` and the `testing` feature, the way apalis
//! ships its memory backend.

use crate::sync::Recover;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

use super::{
    BackendError, CallContext, CallId, CallOutcome, Capacity, ComputeBackend, Deployment,
    Isolation, MapItem,
};
use crate::spec::FunctionSpec;
use crate::task::TaskError;

/// A scripted function: positional and keyword arguments in, a value or the
/// function's error out.
pub type Script = Arc<
    dyn Fn(Vec<Value>, Map<String, Value>) -> BoxFuture<'static, Result<Value, TaskError>>
        + Send
        + Sync,
>;

/// Runs deployed functions as the Rust closures scripted for them.
#[derive(Default)]
pub struct ScriptedBackend {
    scripts: Mutex<HashMap<String, Script>>,
    deployed: Mutex<HashMap<String, FunctionSpec>>,
    spawned: Mutex<HashMap<String, JoinHandle<CallOutcome>>>,
    next_call: AtomicU64,
    runs: Mutex<HashMap<String, u64>>,
    gpus: Vec<String>,
}

impl std::fmt::Debug for ScriptedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedBackend")
            .field("deployed", &self.lock_deployed().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ScriptedBackend {
    /// A backend with nothing scripted.
    pub fn new() -> ScriptedBackend {
        ScriptedBackend::default()
    }

    /// The backend with these GPU models in its capacity (none by
    /// default), so functions asking for one deploy.
    pub fn with_gpus<S: Into<String>>(mut self, gpus: impl IntoIterator<Item = S>) -> Self {
        self.gpus = gpus.into_iter().map(Into::into).collect();
        self
    }

    /// Scripts function `name` with a synchronous closure.
    pub fn script(
        &self,
        name: &str,
        f: impl Fn(&[Value], &Map<String, Value>) -> Result<Value, TaskError> + Send + Sync + 'static,
    ) -> &Self {
        let f = Arc::new(f);
        self.script_async(name, move |args, kwargs| {
            let result = f(&args, &kwargs);
            Box::pin(async move { result })
        })
    }

    /// Scripts function `name` with a closure returning a future (one that
    /// waits on something the test controls, say).
    pub fn script_async(
        &self,
        name: &str,
        f: impl Fn(Vec<Value>, Map<String, Value>) -> BoxFuture<'static, Result<Value, TaskError>>
            + Send
            + Sync
            + 'static,
    ) -> &Self {
        self.scripts
            .lock()
            .recover()
            .insert(name.to_owned(), Arc::new(f));
        self
    }

    /// How many times function `name` ran (attempts included).
    pub fn runs(&self, name: &str) -> u64 {
        self.runs.lock().recover().get(name).copied().unwrap_or(0)
    }

    fn lock_deployed(&self) -> std::sync::MutexGuard<'_, HashMap<String, FunctionSpec>> {
        self.deployed.lock().recover()
    }

    /// The function's script and spec, if it is deployed.
    fn function(&self, name: &str) -> Result<(Script, FunctionSpec), BackendError> {
        let spec = self
            .lock_deployed()
            .get(name)
            .cloned()
            .ok_or_else(|| BackendError::UnknownFunction(name.to_owned()))?;
        let script = self
            .scripts
            .lock()
            .recover()
            .get(name)
            .cloned()
            .ok_or_else(|| BackendError::UnknownFunction(name.to_owned()))?;
        Ok((script, spec))
    }

    /// Runs the script once per attempt the spec's retries allow.
    fn run(
        self: &Arc<Self>,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<BoxFuture<'static, CallOutcome>, BackendError> {
        let (script, spec) = self.function(name)?;
        let (me, name) = (self.clone(), name.to_owned());
        Ok(Box::pin(async move {
            let mut attempts = 0;
            loop {
                attempts += 1;
                *me.runs.lock().recover().entry(name.clone()).or_default() += 1;
                let result = script(args.clone(), kwargs.clone()).await;
                if result.is_ok() || attempts > spec.retries.max_retries {
                    return CallOutcome { result, attempts };
                }
            }
        }))
    }
}

/// The backend as the runtime holds it: calls need an `Arc` of it.
#[async_trait]
impl ComputeBackend for Arc<ScriptedBackend> {
    fn name(&self) -> &'static str {
        "local"
    }

    fn capacity(&self) -> Capacity {
        Capacity {
            backend: "local".into(),
            cpus: 2.0,
            memory_mib: 1024,
            gpus: self.gpus.clone(),
            default_pool_size: 2,
            isolation: Isolation::None,
        }
    }

    async fn deploy(&self, deployment: Deployment) -> Result<(), BackendError> {
        let spec = deployment.spec;
        self.lock_deployed().insert(spec.name.clone(), spec);
        Ok(())
    }

    async fn undeploy(&self, function: &str) -> Result<(), BackendError> {
        self.lock_deployed()
            .remove(function)
            .map(drop)
            .ok_or_else(|| BackendError::UnknownFunction(function.to_owned()))
    }

    async fn call(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: CallContext,
    ) -> Result<CallOutcome, BackendError> {
        let run = self.run(function, args, kwargs)?;
        Ok(tokio::select! {
            outcome = run => outcome,
            () = ctx.cancel.cancelled() => cancelled(),
        })
    }

    async fn map(
        &self,
        function: &str,
        inputs: BoxStream<'static, Value>,
        ctx: CallContext,
    ) -> Result<BoxStream<'static, Vec<MapItem>>, BackendError> {
        self.function(function)?;
        let (me, function) = (self.clone(), function.to_owned());
        let items = inputs.enumerate().then(move |(index, input)| {
            let (me, function, ctx) = (me.clone(), function.clone(), ctx.clone());
            async move {
                ctx.meter.submitted.fetch_add(1, Ordering::Relaxed);
                let (args, kwargs) = match (ctx.inputs_as, input) {
                    (crate::task::InputsAs::Args, Value::Array(args)) => (args, Map::new()),
                    (crate::task::InputsAs::Kwargs, Value::Object(kwargs)) => (Vec::new(), kwargs),
                    (_, input) => (vec![input], Map::new()),
                };
                let outcome = match me.run(&function, args, kwargs) {
                    Ok(run) => tokio::select! {
                        outcome = run => outcome,
                        () = ctx.cancel.cancelled() => cancelled(),
                    },
                    Err(e) => CallOutcome {
                        result: Err(TaskError::new(
                            crate::task::ErrorKind::BackendError,
                            e.to_string(),
                        )),
                        attempts: 1,
                    },
                };
                vec![MapItem {
                    index: index as u64,
                    result: outcome.result,
                    attempts: outcome.attempts,
                }]
            }
        });
        Ok(items.boxed())
    }

    async fn spawn(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        _ctx: CallContext,
    ) -> Result<CallId, BackendError> {
        let run = self.run(function, args, kwargs)?;
        let id = format!("sc-{}", self.next_call.fetch_add(1, Ordering::Relaxed));
        self.spawned
            .lock()
            .recover()
            .insert(id.clone(), tokio::spawn(run));
        Ok(CallId::local(id))
    }

    async fn wait(&self, call: &CallId) -> Result<CallOutcome, BackendError> {
        let handle = self
            .spawned
            .lock()
            .recover()
            .remove(&call.id)
            .ok_or_else(|| BackendError::UnknownCall(call.clone()))?;
        Ok(handle.await.unwrap_or_else(|_| cancelled()))
    }

    async fn cancel(&self, call: &CallId) -> Result<(), BackendError> {
        match self.spawned.lock().recover().get(&call.id) {
            Some(handle) => {
                handle.abort();
                Ok(())
            }
            None => Err(BackendError::UnknownCall(call.clone())),
        }
    }

    async fn shutdown(&self) {
        for (_, handle) in self.spawned.lock().recover().drain() {
            handle.abort();
        }
    }
}

fn cancelled() -> CallOutcome {
    CallOutcome {
        result: Err(TaskError::new(
            crate::task::ErrorKind::Cancelled,
            "the task was cancelled",
        )),
        attempts: 1,
    }
}
