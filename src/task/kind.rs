//! [`ErrorKind`]: what kind of failure a [`TaskError`](super::TaskError) is.
//! The runtime's own kinds are variants, compared as such; the function's
//! exception type (`ValueError`) is [`ErrorKind::Other`]. On the wire a kind
//! is its name, as it always was (`"type": "TimeoutError"`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! kinds {
    ($($(#[doc = $doc:literal])+ $name:ident,)*) => {
        /// What kind of failure a task error is.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $($(#[doc = $doc])+ $name,)*
            /// The function's own exception type (`ValueError`, a class of
            /// its own), or a kind this runtime does not name.
            Other(String),
        }

        impl ErrorKind {
            /// The kind's name, as the wire carries it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorKind::$name => stringify!($name),)*
                    ErrorKind::Other(name) => name,
                }
            }
        }

        impl ErrorKind {
            /// The kind a name stands for: the runtime's own kind of that
            /// name, else [`ErrorKind::Other`] (a function's exception type).
            /// For names read off the wire or from a backend, never for the
            /// runtime's own kinds, which are constructed as variants.
            pub fn from_name(name: &str) -> ErrorKind {
                match name {
                    $(stringify!($name) => ErrorKind::$name,)*
                    other => ErrorKind::Other(other.to_owned()),
                }
            }
        }
    };
}

kinds! {
    /// The task was cancelled (by a caller, or because its call was).
    Cancelled,
    /// The function ran past its timeout.
    TimeoutError,
    /// No container could be started for the function.
    ContainerStartFailed,
    /// The container running the input died.
    ContainerCrashed,
    /// The container ran out of its memory limit.
    OutOfMemory,
    /// The function returned something JSON cannot carry.
    ResultNotSerializable,
    /// The result nests deeper than the runtime stores.
    ResultTooDeep,
    /// The result is larger than is taken back.
    ResultTooLarge,
    /// A backend broke its protocol (an unreadable answer).
    ProtocolError,
    /// The compute backend failed (not the function).
    BackendError,
    /// Modal, or the bridge to it, failed.
    ModalError,
    /// Modal refused the credentials.
    AuthError,
    /// Modal ran out of a resource.
    ResourceExhausted,
    /// Modal does not know the function.
    FunctionNotFound,
    /// Modal no longer holds the call's result.
    OutputExpired,
    /// The function was undeployed under the task.
    FunctionUndeployed,
    /// The task could not be handed to the dispatcher.
    DispatchFailed,
    /// The task was accepted but not created.
    NotCreated,
    /// The runtime went down under the task more often than it may.
    RuntimeLost,
    /// The runtime stopped under the task.
    RuntimeShutdown,
    /// The task was lost at a restart.
    LostAtRestart,
    /// The task's record could not be read back.
    RecordUnreadable,
    /// A map input could not be read back.
    InputUnreadable,
    /// A map ended without every input's outcome.
    MapIncomplete,
    /// Some of a map's inputs failed (each error is in its slot).
    MapInputsFailed,
    /// The runtime's storage failed.
    StorageError,
    /// Something failed inside the runtime.
    InternalError,
    /// No error was recorded.
    Unknown,
}

impl ErrorKind {
    /// A function's own exception type (`ValueError`).
    pub fn other(name: impl Into<String>) -> ErrorKind {
        ErrorKind::Other(name.into())
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ErrorKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ErrorKind, D::Error> {
        String::deserialize(d).map(|name| ErrorKind::from_name(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_names_on_the_wire() {
        for kind in [ErrorKind::Cancelled, ErrorKind::MapInputsFailed] {
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<ErrorKind>(&text).unwrap(), kind);
        }
        assert_eq!(
            serde_json::to_string(&ErrorKind::TimeoutError).unwrap(),
            "\"TimeoutError\""
        );
        let user: ErrorKind = serde_json::from_str("\"ValueError\"").unwrap();
        assert_eq!(user, ErrorKind::Other("ValueError".into()));
        assert_eq!(user, "ValueError");
        assert_eq!(ErrorKind::from_name("Cancelled"), ErrorKind::Cancelled);
    }
}
