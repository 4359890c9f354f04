//! modal-agents (wip)
#![allow(missing_docs)]
mod compute;
mod spec;
mod task;
pub use compute::*;
pub use spec::*;
pub use task::*;
/// Secrets placeholder.
pub struct SecretStore;
