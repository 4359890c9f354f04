//! The volume file commands: read, write and list files in a volume.

use base64::Engine;

use super::{CommandError, Commands};
use crate::volume::FileStat;
use crate::wire::{ListVolumeFiles, VolumeFile, VolumeFileList, VolumeFileRef, WriteVolumeFile};

/// Largest file `read_volume_file` returns (1 MiB); a larger one is read
/// over HTTP, streamed (`GET /volumes/{name}/files/{path}`).
pub const MAX_TOOL_FILE_BYTES: u64 = 1 << 20;

fn volume_error(tool: &'static str) -> impl Fn(crate::volume::VolumeError) -> CommandError {
    move |source| CommandError::Volume {
        tool: tool.to_owned(),
        source,
    }
}

/// A file's bytes as a tool answers them: `text` when they are UTF-8, else
/// `base64`.
pub(super) fn encode(bytes: Vec<u8>) -> (Option<String>, Option<String>) {
    match String::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(e) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
        ),
    }
}

/// A file's content as a tool takes it: exactly one of `content` or
/// `content_base64`.
pub(super) fn decode(
    tool: &str,
    text: Option<String>,
    base64: Option<String>,
) -> Result<Vec<u8>, CommandError> {
    match (text, base64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| {
                CommandError::invalid(
                    tool,
                    "content_base64",
                    format!("not base64 ({e}); expected standard base64 with padding"),
                )
            }),
        _ => Err(CommandError::invalid(
            tool,
            "content",
            "give the content as exactly one of `content` (text) or `content_base64`",
        )),
    }
}

impl Commands {
    /// `read_volume_file`: a file of at most [`MAX_TOOL_FILE_BYTES`] as text
    /// (or base64); a larger one is refused, naming the HTTP route that
    /// streams it.
    pub(super) async fn read_file_for_tool(
        &self,
        a: VolumeFileRef,
    ) -> Result<VolumeFile, CommandError> {
        const TOOL: &str = "read_volume_file";
        let (file, size) = self
            .runtime
            .volumes()
            .open_file(&a.volume_name, &a.path)
            .await
            .map_err(volume_error(TOOL))?;
        if size > MAX_TOOL_FILE_BYTES {
            return Err(CommandError::TooLarge {
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
                .map_err(|source| CommandError::Volume {
                    tool: TOOL.into(),
                    source: crate::volume::VolumeError::Io {
                        volume: a.volume_name.clone(),
                        source,
                    },
                })?;
        }
        let size = bytes.len() as u64;
        let (text, base64) = encode(bytes);
        Ok(VolumeFile {
            path: a.path,
            size,
            content: text,
            content_base64: base64,
        })
    }

    /// Writes a file (given as text or base64) atomically.
    pub(super) async fn write_file(&self, a: WriteVolumeFile) -> Result<FileStat, CommandError> {
        const TOOL: &str = "write_volume_file";
        let bytes = decode(TOOL, a.content, a.content_base64)?;
        self.runtime
            .volumes()
            .put_file(&a.volume_name, &a.path, bytes)
            .await
            .map_err(volume_error(TOOL))
    }

    /// The files of a volume under a prefix.
    pub async fn list_files(&self, a: ListVolumeFiles) -> Result<VolumeFileList, CommandError> {
        const NAME: &str = "list_volume_files";
        let limit = crate::wire::list_limit(a.limit)
            .map_err(|e| CommandError::invalid(NAME, "limit", e))?;
        let (files, more) = self
            .runtime
            .volumes()
            .list_files_page(
                &a.volume_name,
                &a.prefix,
                a.after.as_deref(),
                limit as usize,
            )
            .await
            .map_err(volume_error(NAME))?;
        let next_after = more.then(|| files.last().map(|f| f.path.clone())).flatten();
        Ok(VolumeFileList { files, next_after })
    }
}
