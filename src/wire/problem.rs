//! The problem document every error answer is (RFC 9457), with its kind
//! typed: the server sets it, the client reads it back as the same enum, so
//! no one decides anything from an error's text.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// The prefix of every problem type this server sets.
const PREFIX: &str = "urn:modal-agents:problem:";

macro_rules! kinds {
    ($($(#[doc = $doc:literal])+ $name:ident = $slug:literal,)*) => {
        /// What kind of problem an answer is: its `type`, as
        /// `urn:modal-agents:problem:<slug>`.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ProblemKind {
            $($(#[doc = $doc])+ $name,)*
            /// A `type` this client does not know (a newer server's).
            Other(String),
        }

        impl ProblemKind {
            /// The slug after the common prefix (`validation`).
            pub fn slug(&self) -> &str {
                match self {
                    $(ProblemKind::$name => $slug,)*
                    ProblemKind::Other(uri) => uri.strip_prefix(PREFIX).unwrap_or(uri),
                }
            }

            fn from_uri(uri: &str) -> ProblemKind {
                match uri.strip_prefix(PREFIX) {
                    $(Some($slug) => ProblemKind::$name,)*
                    _ => ProblemKind::Other(uri.to_owned()),
                }
            }
        }
    };
}

kinds! {
    /// The request is not well-formed (a bad path, query or JSON).
    BadRequest = "bad-request",
    /// A field holds a value that is not accepted (`field` names it).
    Validation = "validation",
    /// What was asked for does not exist.
    NotFound = "not-found",
    /// No agent tool has that name.
    UnknownTool = "unknown-tool",
    /// The request conflicts with the current state.
    Conflict = "conflict",
    /// The sandbox has ended (`ended` says why and when).
    SandboxEnded = "sandbox-ended",
    /// An `If-Match` precondition failed.
    PreconditionFailed = "precondition-failed",
    /// No valid bearer token.
    Unauthorized = "unauthorized",
    /// Refused for where it comes from (origin, host).
    Forbidden = "forbidden",
    /// The body is over the limit.
    TooLarge = "too-large",
    /// The body is not of the expected content type.
    UnsupportedMediaType = "unsupported-media-type",
    /// The path exists, not with this method.
    MethodNotAllowed = "method-not-allowed",
    /// This caller holds as much as it may (`Retry-After` says when).
    TooManyRequests = "too-many-requests",
    /// The runtime cannot serve now.
    Unavailable = "unavailable",
    /// The server holds as much as it may (`Retry-After` says when).
    Saturated = "saturated",
    /// A refusal of the MCP transport itself.
    Mcp = "mcp",
    /// Something failed inside (its cause is logged, not shown).
    Internal = "internal",
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.slug())
    }
}

impl Serialize for ProblemKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ProblemKind::Other(uri) => s.serialize_str(uri),
            known => s.serialize_str(&format!("{PREFIX}{}", known.slug())),
        }
    }
}

impl<'de> Deserialize<'de> for ProblemKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|uri| ProblemKind::from_uri(&uri))
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// What kind of problem (`urn:modal-agents:problem:<slug>`).
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: ProblemKind,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time.
    pub detail: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For a sandbox that has ended: how and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<super::SandboxEnded>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_as_their_uri() {
        for kind in [
            ProblemKind::Validation,
            ProblemKind::UnknownTool,
            ProblemKind::Mcp,
        ] {
            let json = serde_json::to_value(&kind).unwrap();
            assert!(json.as_str().unwrap().starts_with(PREFIX), "{json}");
            assert_eq!(serde_json::from_value::<ProblemKind>(json).unwrap(), kind);
        }
        let newer: ProblemKind =
            serde_json::from_value(serde_json::json!("urn:elsewhere:thing")).unwrap();
        assert_eq!(newer, ProblemKind::Other("urn:elsewhere:thing".into()));
    }
}
