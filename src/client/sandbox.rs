//! The typed client's sandbox calls: the same operations and names as the
//! HTTP API, the runtime handle and the agent tools.

use reqwest::Method;
use serde_json::{json, Value};

use super::{path_segments, Client, ClientError};
use crate::wire::{
    CreateSandbox, ExecRequest, ExecResult, Forked, ProcessView, SandboxFileEntry, SandboxFileList,
    SandboxList, SandboxView, SnapshotDiff, SnapshotInfo, SnapshotList, StdinRequest,
};

impl Client {
    /// `POST /sandboxes`.
    pub async fn sandbox_create(
        &self,
        request: &CreateSandbox,
    ) -> Result<SandboxView, ClientError> {
        let body = Self::body(request)?;
        self.json(Method::POST, "/sandboxes", Some(&body)).await
    }

    /// `GET /sandboxes` (every sandbox, newest first).
    pub async fn sandboxes(&self) -> Result<Vec<SandboxView>, ClientError> {
        let list: SandboxList = self.json(Method::GET, "/sandboxes", None).await?;
        Ok(list.sandboxes)
    }

    /// `GET /sandboxes/{id}`.
    pub async fn sandbox(&self, id: &str) -> Result<SandboxView, ClientError> {
        self.json(Method::GET, &format!("/sandboxes/{id}"), None)
            .await
    }

    /// `DELETE /sandboxes/{id}` (idempotent).
    pub async fn sandbox_terminate(&self, id: &str) -> Result<SandboxView, ClientError> {
        self.json(Method::DELETE, &format!("/sandboxes/{id}"), None)
            .await
    }

    /// `POST /sandboxes/{id}/exec`.
    pub async fn sandbox_exec(
        &self,
        id: &str,
        request: &ExecRequest,
    ) -> Result<ExecResult, ClientError> {
        let body = Self::body(request)?;
        self.json(Method::POST, &format!("/sandboxes/{id}/exec"), Some(&body))
            .await
    }

    /// `GET /sandboxes/{id}/processes/{pid}?wait_s=` (0..=55).
    pub async fn sandbox_process(
        &self,
        id: &str,
        process_id: &str,
        wait_s: u64,
    ) -> Result<ExecResult, ClientError> {
        self.json(
            Method::GET,
            &format!("/sandboxes/{id}/processes/{process_id}?wait_s={wait_s}"),
            None,
        )
        .await
    }

    /// Waits for a process to end, asking again every 55 s.
    pub async fn sandbox_wait(
        &self,
        id: &str,
        process_id: &str,
    ) -> Result<ExecResult, ClientError> {
        loop {
            let r = self.sandbox_process(id, process_id, 55).await?;
            if r.process.outcome.is_some() {
                return Ok(r);
            }
        }
    }

    /// `POST /sandboxes/{id}/processes/{pid}/stdin`.
    pub async fn sandbox_stdin(
        &self,
        id: &str,
        process_id: &str,
        request: &StdinRequest,
    ) -> Result<ProcessView, ClientError> {
        let body = Self::body(request)?;
        self.json(
            Method::POST,
            &format!("/sandboxes/{id}/processes/{process_id}/stdin"),
            Some(&body),
        )
        .await
    }

    /// `POST /sandboxes/{id}/processes/{pid}/kill` (`signal` a number or a
    /// name; none is KILL).
    pub async fn sandbox_kill(
        &self,
        id: &str,
        process_id: &str,
        signal: Option<Value>,
    ) -> Result<ProcessView, ClientError> {
        let body = json!({ "signal": signal });
        self.json(
            Method::POST,
            &format!("/sandboxes/{id}/processes/{process_id}/kill"),
            Some(&body),
        )
        .await
    }

    /// `PUT /sandboxes/{id}/files/{path}`.
    pub async fn sandbox_file_put(
        &self,
        id: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<SandboxFileEntry, ClientError> {
        self.put_bytes(
            &format!("/sandboxes/{id}/files/{}", path_segments(path)?),
            bytes,
        )
        .await
    }

    /// `GET /sandboxes/{id}/files/{path}`.
    pub async fn sandbox_file_get(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let response = self
            .send(
                Method::GET,
                &format!("/sandboxes/{id}/files/{}", path_segments(path)?),
                None,
                &[],
            )
            .await?;
        if !response.status().is_success() {
            return Err(Self::problem(response).await);
        }
        Ok(response.bytes().await?.to_vec())
    }

    /// `DELETE /sandboxes/{id}/files/{path}` (a directory with all in it).
    pub async fn sandbox_file_delete(&self, id: &str, path: &str) -> Result<Value, ClientError> {
        self.json(
            Method::DELETE,
            &format!("/sandboxes/{id}/files/{}", path_segments(path)?),
            None,
        )
        .await
    }

    /// `GET /sandboxes/{id}/files?path=` (default the workdir).
    pub async fn sandbox_files(
        &self,
        id: &str,
        dir: Option<&str>,
    ) -> Result<SandboxFileList, ClientError> {
        let query = dir.map_or(String::new(), |d| {
            format!("?path={}", crate::value::percent_encode(d))
        });
        self.json(Method::GET, &format!("/sandboxes/{id}/files{query}"), None)
            .await
    }

    /// `PUT /sandboxes/{id}/dirs/{path}`.
    pub async fn sandbox_mkdir(
        &self,
        id: &str,
        path: &str,
    ) -> Result<SandboxFileEntry, ClientError> {
        self.json(
            Method::PUT,
            &format!("/sandboxes/{id}/dirs/{}", path_segments(path)?),
            None,
        )
        .await
    }

    /// `POST /sandboxes/{id}/keepalive`.
    pub async fn sandbox_keepalive(
        &self,
        id: &str,
        extend_s: u64,
    ) -> Result<SandboxView, ClientError> {
        let body = json!({ "extend_s": extend_s });
        self.json(
            Method::POST,
            &format!("/sandboxes/{id}/keepalive"),
            Some(&body),
        )
        .await
    }

    /// `POST /sandboxes/{id}/snapshot`.
    pub async fn sandbox_snapshot(&self, id: &str) -> Result<SnapshotInfo, ClientError> {
        self.json(Method::POST, &format!("/sandboxes/{id}/snapshot"), None)
            .await
    }

    /// `POST /sandboxes/{id}/fork`.
    pub async fn sandbox_fork(&self, id: &str, count: u32) -> Result<Forked, ClientError> {
        let body = json!({ "count": count });
        self.json(Method::POST, &format!("/sandboxes/{id}/fork"), Some(&body))
            .await
    }

    /// `GET /snapshots`.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, ClientError> {
        let list: SnapshotList = self.json(Method::GET, "/snapshots", None).await?;
        Ok(list.snapshots)
    }

    /// `GET /snapshots/{from}/diff/{to}`.
    pub async fn snapshot_diff(&self, from: &str, to: &str) -> Result<SnapshotDiff, ClientError> {
        self.json(Method::GET, &format!("/snapshots/{from}/diff/{to}"), None)
            .await
    }

    /// `DELETE /snapshots/{id}`.
    pub async fn snapshot_delete(&self, id: &str) -> Result<Value, ClientError> {
        self.json(Method::DELETE, &format!("/snapshots/{id}"), None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_segments() {
        assert_eq!(path_segments("/tmp/a b?.txt").unwrap(), "/tmp/a%20b%3F.txt");
        assert_eq!(path_segments("src/%x#y").unwrap(), "src/%25x%23y");
        for bad in ["a/../../other/state/k", "./x", "a/.", ".."] {
            assert!(
                matches!(path_segments(bad), Err(ClientError::InvalidPath { .. })),
                "{bad}"
            );
        }
        assert_eq!(path_segments("a..b/.hidden").unwrap(), "a..b/.hidden");
    }
}
