//! `coordinate_state`: versioned shared state in a volume, as agents use it.

use serde_json::{Map, Value};

use super::{CommandError, Commands};
use crate::wire::{CoordinateState, StateOperation, StateResult};

fn required_key(key: Option<String>, op: &str) -> Result<String, CommandError> {
    key.ok_or_else(|| CommandError::invalid(NAME, "key", format!("required for operation `{op}`")))
}

const NAME: &str = "coordinate_state";

impl Commands {
    /// Reads, writes, lists, deletes or compare-and-swaps state in a volume.
    pub(super) async fn coordinate_state(
        &self,
        a: CoordinateState,
    ) -> Result<StateResult, CommandError> {
        let volumes = self.runtime.volumes();
        let err = |source| CommandError::Volume {
            tool: NAME.into(),
            source,
        };
        let volume = &a.volume_name;
        let answer = match a.operation {
            StateOperation::Read => {
                let key = required_key(a.key, "read")?;
                let found = volumes.read(volume, &key).await.map_err(err)?;
                StateResult {
                    key: Some(key),
                    found: Some(found.is_some()),
                    version: found.as_ref().map(|v| v.version),
                    value: found.map(|v| v.value),
                    ..StateResult::default()
                }
            }
            StateOperation::Write | StateOperation::Cas => {
                let cas = matches!(a.operation, StateOperation::Cas);
                let op = if cas { "cas" } else { "write" };
                let key = required_key(a.key, op)?;
                let data = a.value.ok_or_else(|| {
                    CommandError::invalid(NAME, "value", format!("required for operation `{op}`"))
                })?;
                if cas && a.expected_version == Some(0) {
                    return Err(CommandError::invalid(
                        NAME,
                        "expected_version",
                        "got 0; expected a version, 1 or more (versions start at 1), or none for \"must not exist\"",
                    ));
                }
                let version = if cas {
                    volumes
                        .compare_and_swap(volume, &key, a.expected_version, data)
                        .await
                } else {
                    volumes.write(volume, &key, data).await
                }
                .map_err(err)?;
                StateResult {
                    key: Some(key),
                    version: Some(version),
                    status: Some("written".into()),
                    ..StateResult::default()
                }
            }
            StateOperation::List => {
                let prefix = a.key.unwrap_or_default();
                let limit = crate::wire::list_limit(a.limit)
                    .map_err(|e| CommandError::invalid(NAME, "limit", e))?;
                let page = crate::volume::StatePage {
                    prefix: prefix.clone(),
                    after: a.after,
                    limit: limit as usize,
                    // A tool's answer goes whole into a model's context.
                    max_bytes: super::MAX_TOOL_RESULT_BYTES as usize,
                };
                let (entries, more) = volumes.list_page(volume, page).await.map_err(err)?;
                let next_after = more
                    .then(|| entries.last().map(|(k, _)| k.clone()))
                    .flatten();
                let keys = entries.iter().map(|(k, _)| k.clone()).collect();
                let data: Map<String, Value> =
                    entries.into_iter().map(|(k, v)| (k, v.value)).collect();
                StateResult {
                    prefix: Some(prefix),
                    keys: Some(keys),
                    data: Some(data),
                    next_after,
                    ..StateResult::default()
                }
            }
            StateOperation::Delete => {
                let key = required_key(a.key, "delete")?;
                let version = volumes.delete(volume, &key).await.map_err(err)?;
                StateResult {
                    key: Some(key),
                    deleted: Some(version > 0),
                    ..StateResult::default()
                }
            }
        };
        Ok(answer)
    }
}
