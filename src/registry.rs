//! The function registry: which functions are deployed, with their specs.
//!
//! A plain handle over a shared table (the shape of mini-redis `Db`): one
//! map write is already atomic, so nothing here needs an actor. The durable
//! copy lives in the store: a deploy is written there before it enters the
//! table (a failed write leaves no live function); an undeploy leaves the
//! table first (the function stops being callable at once) and then the
//! store.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::spec::FunctionSpec;

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

/// The deployed functions by name. Cheap to clone; clones share the table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Functions {
    table: Arc<DashMap<String, FunctionInfo>>,
}

impl Functions {
    /// Adds or replaces a function.
    pub(crate) fn register(&self, info: FunctionInfo) {
        self.table.insert(info.function_name.clone(), info);
    }

    /// Removes a function; returns what was removed.
    pub(crate) fn remove(&self, name: &str) -> Option<FunctionInfo> {
        self.table.remove(name).map(|(_, info)| info)
    }

    pub(crate) fn get(&self, name: &str) -> Option<FunctionInfo> {
        self.table.get(name).map(|e| e.clone())
    }

    /// Every function, sorted by name.
    pub(crate) fn list(&self) -> Vec<FunctionInfo> {
        let mut all: Vec<FunctionInfo> = self.table.iter().map(|e| e.clone()).collect();
        all.sort_by(|a, b| a.function_name.cmp(&b.function_name));
        all
    }
}
