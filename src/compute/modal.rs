//! The Modal backend: functions run on Modal (modal.com) through the
//! official `modal` Python SDK, pinned to [`MODAL_SDK_VERSION`].
//!
//! Modal defines functions only from Python, so for each deployed function
//! this backend writes an app file ([`app_file`]) and runs `modal deploy` on
//! it; calls, maps, spawns, polls and cancels go through one long-lived bridge
//! process (`bridge.py`, shipped in the crate) that drives
//! `modal.Function.from_name(..).remote/.map/.spawn` and
//! `modal.FunctionCall.from_id(..).get/.cancel`, answering in JSON. Both run
//! in a virtual environment with the pinned SDK, built once under
//! [`ModalConfig::cache_dir`] (or the one [`ModalConfig::python`] points to).
//!
//! Credentials are explicit ([`ModalCredentials`], which
//! [`ModalCredentials::discover`] reads from `MODAL_TOKEN_ID` /
//! `MODAL_TOKEN_SECRET` or `~/.modal.toml`); without them every operation
//! fails at once with [`BackendError::ModalCredentials`], saying how to set
//! them, and no process is started. Every bridge request is bounded by a
//! timeout.
//!
//! Errors from Modal become the same [`TaskError`](crate::task::TaskError) shape as
//! the local backend's: the user's exception type and traceback, or
//! `TimeoutError`, `ResourceExhausted`, `AuthError`, `FunctionNotFound`,
//! `Cancelled`.

mod app_file;
mod backend;
mod bridge;
mod check;
mod credentials;
mod setup;
mod sync;

use std::path::PathBuf;
use std::time::Duration;

pub use self::app_file::{app_file, APP_OBJECT};
pub use self::backend::ModalBackend;
pub use self::credentials::ModalCredentials;
pub(crate) use self::credentials::HOW_TO_SET;
pub use self::sync::SyncReport;

/// The `modal` SDK version the backend installs and is checked against.
pub const MODAL_SDK_VERSION: &str = "1.6.4";

/// Settings of the Modal backend.
#[derive(Debug, Clone)]
pub struct ModalConfig {
    /// Credentials; `None` makes every operation fail with an error that says
    /// how to set them (default: none — see [`ModalCredentials::discover`]).
    pub credentials: Option<ModalCredentials>,
    /// A Python interpreter that already has the `modal` SDK (a virtual
    /// environment's `bin/python`); default: one built on first use under
    /// `cache_dir`.
    pub python: Option<PathBuf>,
    /// Where the SDK's virtual environment and generated app files live
    /// (default: `modal-agents` in the system temp dir; the runtime puts it
    /// under its data dir).
    pub cache_dir: PathBuf,
    /// The Modal API server the SDK talks to, as `MODAL_SERVER_URL` (default:
    /// none, the SDK's own: `https://api.modal.com`). The tests point it at
    /// the Modal-protocol test server on 127.0.0.1.
    pub server_url: Option<String>,
    /// The Modal environment to deploy to and look functions up in (default:
    /// the workspace's default).
    pub environment: Option<String>,
    /// Bound on control requests (lookups, polls, cancels, volume listings)
    /// and the extra time a call may take beyond its function's timeout
    /// (default 60 s).
    pub request_timeout: Duration,
    /// Bound on `modal deploy` (default 15 min: image builds run then).
    pub deploy_timeout: Duration,
    /// Map inputs in flight at once (default 1000, the most Modal accepts per
    /// `map` call without back-pressure).
    pub map_window: usize,
    /// How long one wait for a spawned call's outcome blocks on Modal before
    /// it is asked again (default 50 s, under Modal's 55 s bound on an output
    /// request; at most half of `request_timeout`). Outcomes arrive as soon
    /// as Modal has them, whatever this is.
    pub wait_slice: Duration,
}

impl Default for ModalConfig {
    fn default() -> Self {
        ModalConfig {
            credentials: None,
            python: None,
            cache_dir: std::env::temp_dir().join("modal-agents").join("modal"),
            server_url: None,
            environment: None,
            request_timeout: Duration::from_secs(60),
            deploy_timeout: Duration::from_secs(15 * 60),
            map_window: 1000,
            wait_slice: Duration::from_secs(50),
        }
    }
}
