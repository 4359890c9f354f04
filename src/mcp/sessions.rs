//! MCP sessions over Streamable HTTP, with a ceiling: at most
//! [`McpLimits::max_sessions`] live sessions, at most
//! [`McpLimits::max_sessions_per_token`] per bearer token, a short expiry
//! for a session whose client never completed the handshake, and an idle
//! expiry for the rest. rmcp's [`LocalSessionManager`] keeps the sessions;
//! this wraps it and counts them.
//!
//! A session is paid for before it exists: the `/mcp` guard reserves a
//! place for an `initialize` request ([`Sessions::reserve`]), answering 429
//! or 503 when there is none, and hands the reservation to
//! [`SessionManager::create_session`] through a task-local, so a burst of
//! initializes can never overshoot the ceiling.

use crate::sync::Recover;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::Stream;
use rmcp::model::{ClientJsonRpcMessage, ClientNotification, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionId, SessionManager,
};

/// Bounds on the MCP sessions of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpLimits {
    /// Most live sessions on the server (default 1,000); an `initialize`
    /// past it is answered 503 with `Retry-After`.
    pub max_sessions: usize,
    /// Most live sessions one bearer token holds (default 64; without
    /// authentication every client shares one count); an `initialize` past
    /// it is answered 429 with `Retry-After`.
    pub max_sessions_per_token: usize,
    /// How long a new session may take to send `notifications/initialized`
    /// before it is closed (default 10 s).
    pub init_timeout: Duration,
    /// How long an initialized session may sit idle before it is closed
    /// (default 300 s).
    pub idle_timeout: Duration,
    /// Largest `initialize` request body in bytes (default 16 KiB); every
    /// other JSON-RPC message may be as large as the API's body limit.
    pub max_initialize_bytes: usize,
}

impl Default for McpLimits {
    fn default() -> Self {
        McpLimits {
            max_sessions: 1_000,
            max_sessions_per_token: 64,
            init_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_initialize_bytes: 16 << 10,
        }
    }
}

/// Whose session it is: the index of the bearer token that opened it
/// (`None` without authentication).
pub(crate) type Owner = Option<[u8; 16]>;

/// Why no session could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// rmcp's own session store failed.
    #[error(transparent)]
    Local(#[from] LocalSessionManagerError),
    /// The server holds as many sessions as it may.
    #[error("the server holds its maximum of {max} MCP sessions")]
    Full {
        /// The ceiling.
        max: usize,
    },
    /// This token holds as many sessions as it may.
    #[error("this token holds its maximum of {max} MCP sessions")]
    PerToken {
        /// The ceiling.
        max: usize,
    },
}

#[derive(Default)]
struct Live {
    sessions: HashMap<SessionId, Session>,
    /// Open HTTP streams (requests answered as SSE, GET streams) per
    /// session.
    streams: HashMap<SessionId, usize>,
    /// Sessions and reservations per owner.
    per_owner: HashMap<Owner, usize>,
    /// Places reserved for sessions not created yet.
    reserved: usize,
}

struct Session {
    owner: Owner,
    initialized: bool,
}

impl Live {
    fn release(&mut self, owner: Owner) {
        if let Some(n) = self.per_owner.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                self.per_owner.remove(&owner);
            }
        }
    }
}

/// The bounded session manager of `/mcp`.
pub(crate) struct Sessions {
    inner: LocalSessionManager,
    limits: McpLimits,
    live: Mutex<Live>,
    me: Weak<Sessions>,
}

tokio::task_local! {
    /// The place the `/mcp` guard reserved for the session the request
    /// being served creates.
    static RESERVED: RefCell<Option<Reservation>>;
}

/// One open stream of a session, given back when dropped.
pub(crate) struct OpenStream {
    sessions: Arc<Sessions>,
    id: SessionId,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut live = self.sessions.lock();
        if let Some(n) = live.streams.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                live.streams.remove(&self.id);
            }
        }
    }
}

/// Most HTTP streams one session holds open at once.
pub(crate) const MAX_STREAMS_PER_SESSION: usize = 16;

/// A place for one session, given back when dropped unused.
pub(crate) struct Reservation {
    sessions: Arc<Sessions>,
    owner: Owner,
    used: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.used {
            let mut live = self.sessions.lock();
            live.reserved -= 1;
            live.release(self.owner);
        }
    }
}

impl Reservation {
    /// Runs `work` (the request that will create the session) with this
    /// place set aside for it.
    pub(crate) async fn scope<F: std::future::Future>(self, work: F) -> F::Output {
        RESERVED.scope(RefCell::new(Some(self)), work).await
    }
}

impl Sessions {
    pub(crate) fn new(limits: McpLimits) -> Arc<Sessions> {
        let mut inner = LocalSessionManager::default();
        inner.session_config.keep_alive = Some(limits.idle_timeout);
        inner.session_config.init_timeout = Some(limits.init_timeout);
        Arc::new_cyclic(|me| Sessions {
            inner,
            limits,
            live: Mutex::new(Live::default()),
            me: me.clone(),
        })
    }

    pub(crate) fn limits(&self) -> &McpLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().recover()
    }

    /// How many sessions are open (reservations not counted).
    pub(crate) fn open(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Sets a place aside for a session of `owner`, or says why there is none.
    pub(crate) fn reserve(self: &Arc<Self>, owner: Owner) -> Result<Reservation, SessionError> {
        let mut live = self.lock();
        if live.sessions.len() + live.reserved >= self.limits.max_sessions {
            return Err(SessionError::Full {
                max: self.limits.max_sessions,
            });
        }
        let held = live.per_owner.get(&owner).copied().unwrap_or(0);
        if held >= self.limits.max_sessions_per_token {
            return Err(SessionError::PerToken {
                max: self.limits.max_sessions_per_token,
            });
        }
        *live.per_owner.entry(owner).or_default() += 1;
        live.reserved += 1;
        Ok(Reservation {
            sessions: self.clone(),
            owner,
            used: false,
        })
    }

    /// Whether session `id` is another owner's (a token may use only the
    /// sessions it started; an unknown id is no one's).
    pub(crate) fn is_others(&self, id: &str, owner: Owner) -> bool {
        self.lock()
            .sessions
            .get(id)
            .is_some_and(|s| s.owner != owner)
    }

    /// Whether `id` is a live session.
    pub(crate) fn is_open(&self, id: &str) -> bool {
        self.lock().sessions.contains_key(id)
    }

    /// A place for one more stream of session `id`, or `None` when it holds
    /// [`MAX_STREAMS_PER_SESSION`] already (or is not a session: rmcp
    /// answers that).
    pub(crate) fn open_stream(self: &Arc<Self>, id: &str) -> Option<OpenStream> {
        let mut live = self.lock();
        let id: SessionId = live.sessions.get_key_value(id)?.0.clone();
        let n = live.streams.entry(id.clone()).or_default();
        if *n >= MAX_STREAMS_PER_SESSION {
            return None;
        }
        *n += 1;
        Some(OpenStream {
            sessions: self.clone(),
            id,
        })
    }

    /// Forgets a session (idempotent: a session ends once).
    fn forget(&self, id: &SessionId) {
        let mut live = self.lock();
        if let Some(session) = live.sessions.remove(id) {
            live.release(session.owner);
        }
    }

    /// Closes `id` if its client has not completed the handshake by now.
    async fn expire_if_uninitialized(&self, id: SessionId) {
        let stale = self
            .lock()
            .sessions
            .get(&id)
            .is_some_and(|s| !s.initialized);
        if stale {
            tracing::debug!(session_id = %id, "closing an MCP session that never completed its handshake");
            if let Err(error) = self.close_session(&id).await {
                tracing::debug!(session_id = %id, %error, "closing an uninitialized MCP session");
            }
        }
    }
}

impl SessionManager for Sessions {
    type Error = SessionError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let me = self.me.upgrade().ok_or(SessionError::Full { max: 0 })?;
        let reserved = RESERVED.try_with(|r| r.borrow_mut().take()).ok().flatten();
        // A session created other than through the guard is counted too.
        let mut reservation = match reserved {
            Some(r) => r,
            None => me.reserve(None)?,
        };
        let (id, transport) = self.inner.create_session().await?;
        {
            let mut live = self.lock();
            live.reserved -= 1;
            live.sessions.insert(
                id.clone(),
                Session {
                    owner: reservation.owner,
                    initialized: false,
                },
            );
            reservation.used = true;
        }
        let (weak, expiring, after) = (self.me.clone(), id.clone(), self.limits.init_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(sessions) = weak.upgrade() {
                sessions.expire_if_uninitialized(expiring).await;
            }
        });
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.inner.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        Ok(self.inner.has_session(id).await?)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.forget(id);
        Ok(self.inner.close_session(id).await?)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_stream(id, message).await?)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        if let ClientJsonRpcMessage::Notification(n) = &message {
            if matches!(
                n.notification,
                ClientNotification::InitializedNotification(_)
            ) {
                if let Some(session) = self.lock().sessions.get_mut(id) {
                    session.initialized = true;
                }
            }
        }
        Ok(self.inner.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_standalone_stream(id).await?)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.resume(id, last_event_id).await?)
    }
}
