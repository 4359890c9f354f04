//! Routing between the local backend and Modal: each function's
//! [`BackendChoice`] decides where it is deployed, and every later call,
//! map, spawn, wait and cancel goes where it was deployed.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value};

use super::modal::ModalBackend;
use super::{
    BackendError, CallBackend, CallContext, CallId, CallOutcome, Capacity, ComputeBackend,
    Deployment, MapItem, Usage,
};
use crate::spec::{BackendChoice, FunctionSpec, SpecError};

/// Where a function was deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Local,
    Modal,
}

/// The runtime's backend: a local one, and Modal when configured.
pub(crate) struct BackendRouter {
    local: Arc<dyn ComputeBackend>,
    modal: Option<Arc<ModalBackend>>,
    placed: DashMap<String, Placement>,
}

impl std::fmt::Debug for BackendRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendRouter")
            .field("local", &self.local.name())
            .field("modal", &self.modal.is_some())
            .finish_non_exhaustive()
    }
}

/// Why Modal cannot take a function.
fn no_modal(modal: Option<&ModalBackend>) -> BackendError {
    match modal {
        None => BackendError::NoBackend(
            "the function asks for backend `modal` but this runtime has no Modal backend \
             (RuntimeBuilder::modal, or `serve` with Modal credentials)"
                .into(),
        ),
        Some(_) => BackendError::ModalCredentials(super::modal::HOW_TO_SET.into()),
    }
}

impl BackendRouter {
    pub(crate) fn new(
        local: Arc<dyn ComputeBackend>,
        modal: Option<Arc<ModalBackend>>,
    ) -> BackendRouter {
        BackendRouter {
            local,
            modal,
            placed: DashMap::new(),
        }
    }

    fn usable_modal(&self) -> Option<&Arc<ModalBackend>> {
        self.modal.as_ref().filter(|m| m.has_credentials())
    }

    /// Where `spec` goes: `auto` runs locally when this machine can ever run
    /// it, else on Modal when credentials exist, else fails naming what was
    /// asked (and how to enable Modal).
    async fn place(&self, spec: &FunctionSpec) -> Result<Placement, BackendError> {
        match spec.backend {
            BackendChoice::Local => Ok(Placement::Local),
            BackendChoice::Modal => match self.usable_modal() {
                Some(_) => Ok(Placement::Modal),
                None => Err(no_modal(self.modal.as_deref())),
            },
            BackendChoice::Auto => match self.local.check_resources(spec).await {
                Ok(()) => Ok(Placement::Local),
                Err(_) if self.usable_modal().is_some() => Ok(Placement::Modal),
                Err(SpecError::Invalid {
                    field,
                    value,
                    expected,
                }) if self.modal.is_some() => Err(BackendError::Code(SpecError::Invalid {
                    field,
                    value,
                    expected: format!(
                        "{expected}; Modal could run it, but has no credentials: {}",
                        super::modal::HOW_TO_SET
                    ),
                })),
                Err(e) => Err(BackendError::Code(e)),
            },
        }
    }

    fn backend_of(&self, function: &str) -> Result<&dyn ComputeBackend, BackendError> {
        match self.placed.get(function).map(|p| *p) {
            Some(Placement::Modal) => match &self.modal {
                Some(m) => Ok(m.as_ref()),
                None => Err(BackendError::UnknownFunction(function.to_owned())),
            },
            Some(Placement::Local) => Ok(self.local.as_ref()),
            None => Err(BackendError::UnknownFunction(function.to_owned())),
        }
    }

    /// The backend the call says it runs on.
    fn backend_of_call(&self, call: &CallId) -> Result<&dyn ComputeBackend, BackendError> {
        match (call.backend, &self.modal) {
            (CallBackend::Modal, Some(m)) => Ok(m.as_ref()),
            (CallBackend::Modal, None) => Err(BackendError::UnknownCall(call.clone())),
            (CallBackend::Local, _) => Ok(self.local.as_ref()),
        }
    }
}

#[async_trait]
impl ComputeBackend for BackendRouter {
    fn name(&self) -> &'static str {
        self.local.name()
    }

    fn placement(&self, function: &str) -> &'static str {
        match self.placed.get(function).map(|p| *p) {
            Some(Placement::Modal) => "modal",
            _ => self.local.name(),
        }
    }

    fn capacity(&self) -> Capacity {
        self.local.capacity()
    }

    fn detached_calls(&self, function: &str) -> bool {
        self.backend_of(function)
            .is_ok_and(|b| b.detached_calls(function))
    }

    fn unenforced(&self, spec: &FunctionSpec) -> Vec<String> {
        match self.placed.get(&spec.name).map(|p| *p) {
            Some(Placement::Modal) => Vec::new(),
            _ => self.local.unenforced(spec),
        }
    }

    async fn start(&self, redact: &crate::redact::Redactor) -> Result<(), BackendError> {
        self.local.start(redact).await
    }

    async fn check_resources(&self, spec: &FunctionSpec) -> Result<(), SpecError> {
        match spec.backend {
            BackendChoice::Modal => Ok(()),
            BackendChoice::Auto if self.usable_modal().is_some() => Ok(()),
            _ => self.local.check_resources(spec).await,
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.local.usage()
    }

    async fn deploy(&self, d: Deployment) -> Result<(), BackendError> {
        let placement = self.place(&d.spec).await?;
        let name = d.spec.name.clone();
        match placement {
            Placement::Local => {
                if let Some(secret) = d.remote_secrets.first() {
                    return Err(BackendError::Code(SpecError::invalid(
                        "secrets",
                        secret,
                        "the name of a secret in the runtime's store (secrets that only \
                         exist in a Modal workspace need backend `modal`)",
                    )));
                }
                self.local.deploy(d).await?;
            }
            Placement::Modal => {
                let modal = self.modal.as_ref().expect("placed on a configured Modal");
                modal.deploy(d).await?;
            }
        }
        if let Some(old) = self.placed.insert(name.clone(), placement) {
            if old != placement {
                // It moved: stop it where it was.
                let previous = match old {
                    Placement::Local => Some(self.local.as_ref()),
                    Placement::Modal => self.modal.as_deref().map(|m| m as &dyn ComputeBackend),
                };
                if let Some(previous) = previous {
                    let _ = previous.undeploy(&name).await;
                }
            }
        }
        Ok(())
    }

    async fn undeploy(&self, function: &str) -> Result<(), BackendError> {
        let result = self.backend_of(function)?.undeploy(function).await;
        self.placed.remove(function);
        result
    }

    async fn call(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: CallContext,
    ) -> Result<CallOutcome, BackendError> {
        self.backend_of(function)?
            .call(function, args, kwargs, ctx)
            .await
    }

    async fn map(
        &self,
        function: &str,
        inputs: BoxStream<'static, Value>,
        ctx: CallContext,
    ) -> Result<BoxStream<'static, Vec<MapItem>>, BackendError> {
        self.backend_of(function)?.map(function, inputs, ctx).await
    }

    async fn spawn(
        &self,
        function: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        ctx: CallContext,
    ) -> Result<CallId, BackendError> {
        self.backend_of(function)?
            .spawn(function, args, kwargs, ctx)
            .await
    }

    async fn wait(&self, call: &CallId) -> Result<CallOutcome, BackendError> {
        self.backend_of_call(call)?.wait(call).await
    }

    async fn cancel(&self, call: &CallId) -> Result<(), BackendError> {
        self.backend_of_call(call)?.cancel(call).await
    }

    async fn shutdown(&self) {
        if let Some(modal) = &self.modal {
            modal.shutdown().await;
        }
        self.local.shutdown().await;
    }
}
