//! The function registry: which functions are deployed, with their specs.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::spec::FunctionSpec;
use crate::supervisor::{ChildError, Slot};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A deployed function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// A fresh id per deployment.
    pub function_id: Uuid,
    /// The function's name.
    pub function_name: String,
    /// The backend it runs on.
    pub backend: String,
    /// When it was deployed.
    pub deployed_at: DateTime<Utc>,
    /// Its spec (secret values are not part of a spec, only names).
    pub spec: FunctionSpec,
    /// What of the spec the backend it was placed on does not enforce
    /// (without a sandbox, `limits.network: false`, say), one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The registry's contents, shared with its handle so that a restarted
/// registry actor starts from exactly what the failed one had.
pub(crate) type FunctionTable = Arc<DashMap<String, FunctionInfo>>;

/// The registry actor: the single writer of the function table.
pub(crate) struct FunctionRegistry;

/// Messages of the [`FunctionRegistry`].
pub(crate) enum FunctionRegistryMsg {
    /// Adds or replaces a function.
    Register(Box<FunctionInfo>, RpcReplyPort<()>),
    /// Removes a function; answers what was removed.
    Remove(String, RpcReplyPort<Option<FunctionInfo>>),
    /// Panics (fault injection).
    InjectPanic,
}

/// The registry as a child of the root supervisor, and its handle.
pub(crate) fn child(
    table: FunctionTable,
) -> (
    FunctionRegistryHandle,
    Box<dyn crate::supervisor::ChildSpec>,
) {
    let (slot, spec) = crate::supervisor::child(
        crate::supervisor::RuntimeChild::Registry,
        || FunctionRegistry,
        FunctionRegistryArgs {
            table: table.clone(),
        },
        || FunctionRegistryMsg::InjectPanic,
    );
    (FunctionRegistryHandle::new(slot, table), spec)
}

/// Arguments of the [`FunctionRegistry`].
#[derive(Clone)]
pub(crate) struct FunctionRegistryArgs {
    pub(crate) table: FunctionTable,
}

/// State of the [`FunctionRegistry`].
pub(crate) struct FunctionRegistryState {
    table: FunctionTable,
}

impl Actor for FunctionRegistry {
    type Msg = FunctionRegistryMsg;
    type State = FunctionRegistryState;
    type Arguments = FunctionRegistryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(FunctionRegistryState { table: args.table })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            FunctionRegistryMsg::Register(info, reply) => {
                state.table.insert(info.function_name.clone(), *info);
                let _ = reply.send(());
            }
            FunctionRegistryMsg::Remove(name, reply) => {
                let _ = reply.send(state.table.remove(&name).map(|(_, info)| info));
            }
            FunctionRegistryMsg::InjectPanic => panic!("fault injected into the function registry"),
        }
        Ok(())
    }
}

/// A cloneable handle to the [`FunctionRegistry`]. Reads go to the shared
/// table; writes go through the actor.
#[derive(Clone)]
pub(crate) struct FunctionRegistryHandle {
    slot: Slot<FunctionRegistryMsg>,
    table: FunctionTable,
}

impl FunctionRegistryHandle {
    pub(crate) fn new(slot: Slot<FunctionRegistryMsg>, table: FunctionTable) -> Self {
        FunctionRegistryHandle { slot, table }
    }

    pub(crate) async fn register(&self, info: FunctionInfo) -> Result<(), ChildError> {
        self.slot
            .call(CALL_TIMEOUT, |reply| {
                FunctionRegistryMsg::Register(Box::new(info.clone()), reply)
            })
            .await
    }

    pub(crate) async fn remove(&self, name: &str) -> Result<Option<FunctionInfo>, ChildError> {
        self.slot
            .call(CALL_TIMEOUT, |reply| {
                FunctionRegistryMsg::Remove(name.to_owned(), reply)
            })
            .await
    }

    pub(crate) fn get(&self, name: &str) -> Option<FunctionInfo> {
        self.table.get(name).map(|e| e.clone())
    }

    pub(crate) fn list(&self) -> Vec<FunctionInfo> {
        let mut all: Vec<FunctionInfo> = self.table.iter().map(|e| e.clone()).collect();
        all.sort_by(|a, b| a.function_name.cmp(&b.function_name));
        all
    }
}
