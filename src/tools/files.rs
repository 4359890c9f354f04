//! The volume file tools: read, write and list files in a volume.

use base64::Engine;
use serde_json::{json, Value};

use super::{ToolError, Tools};
use crate::wire::{ListVolumeFiles, VolumeFile, VolumeFileList, VolumeFileRef, WriteVolumeFile};

/// Largest file `read_volume_file` returns (1 MiB); a larger one is read
/// over HTTP, streamed (`GET /volumes/{name}/files/{path}`).
pub const MAX_TOOL_FILE_BYTES: u64 = 1 << 20;

fn volume_error(tool: &'static str) -> impl Fn(crate::volume::VolumeError) -> ToolError {
    move |source| ToolError::Volume {
        tool: tool.to_owned(),
        source,
    }
}

impl Tools {
    pub(super) async fn read_file(&self, a: VolumeFileRef) -> Result<Value, ToolError> {
        const TOOL: &str = "read_volume_file";
        let (file, size) = self
            .runtime
            .volumes()
            .open_file(&a.volume_name, &a.path)
            .await
            .map_err(volume_error(TOOL))?;
        if size > MAX_TOOL_FILE_BYTES {
            return Err(ToolError::TooLarge {
                tool: TOOL.into(),
                what: format!(
                    "file `{}`",
                    crate::value::clip(&a.path, crate::value::MAX_ECHO)
                ),
                size,
                max: MAX_TOOL_FILE_BYTES,
                instead: format!(
                    "read it over HTTP, streamed: GET /volumes/{}/files/{}",
                    a.volume_name, a.path
                ),
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        {
            use tokio::io::AsyncReadExt;
            file.take(MAX_TOOL_FILE_BYTES)
                .read_to_end(&mut bytes)
                .await
                .map_err(|source| ToolError::Volume {
                    tool: TOOL.into(),
                    source: crate::volume::VolumeError::Io {
                        volume: a.volume_name.clone(),
                        source,
                    },
                })?;
        }
        let size = bytes.len() as u64;
        let (text, base64) = match String::from_utf8(bytes) {
            Ok(text) => (Some(text), None),
            Err(e) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
            ),
        };
        Ok(json!(VolumeFile {
            path: a.path,
            size,
            text,
            base64
        }))
    }

    pub(super) async fn write_file(&self, a: WriteVolumeFile) -> Result<Value, ToolError> {
        const TOOL: &str = "write_volume_file";
        let bytes = match (a.text, a.base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| ToolError::InvalidArguments {
                    tool: TOOL.into(),
                    field: "base64".into(),
                    message: format!("not base64 ({e}); expected standard base64 with padding"),
                })?,
            _ => {
                return Err(ToolError::InvalidArguments {
                    tool: TOOL.into(),
                    field: "text".into(),
                    message: "give the content as exactly one of `text` or `base64`".into(),
                })
            }
        };
        let stat = self
            .runtime
            .volumes()
            .put_file(&a.volume_name, &a.path, bytes)
            .await
            .map_err(volume_error(TOOL))?;
        Ok(json!(stat))
    }

    pub(super) async fn list_files(&self, a: ListVolumeFiles) -> Result<Value, ToolError> {
        let files = self
            .runtime
            .volumes()
            .list_files(&a.volume_name, &a.prefix)
            .await
            .map_err(volume_error("list_volume_files"))?;
        Ok(json!(VolumeFileList { files }))
    }
}
