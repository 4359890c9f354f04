//! The Modal-protocol test server (`tests/modal_server/server.py`) as a
//! child process: started under the pinned SDK's interpreter, it listens on
//! 127.0.0.1 and prints its URLs; dropping it closes its stdin, on which it
//! stops every container and exits.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The token the server accepts.
pub const TOKEN_ID: &str = "ak-test";
pub const TOKEN_SECRET: &str = "as-4f1c9e7d2b8a";

pub struct ModalServer {
    child: Child,
    /// What `MODAL_SERVER_URL` is set to (gRPC over HTTP/2).
    pub url: String,
    /// Blobs, volume blocks and `/_state`.
    pub http: String,
    pub state_dir: tempfile::TempDir,
}

impl ModalServer {
    /// Starts the server with `python` (the pinned SDK's interpreter).
    pub fn start(python: &Path) -> ModalServer {
        let state_dir = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/modal_server/server.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg("--state")
            .arg(state_dir.path())
            .args(["--token-id", TOKEN_ID, "--token-secret", TOKEN_SECRET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the Modal test server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the Modal test server prints its URLs within 60 s");
        let urls: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the Modal test server printed {line:?}: {e}"));
        ModalServer {
            child,
            url: urls["url"].as_str().expect("url").to_owned(),
            http: urls["http"].as_str().expect("http").to_owned(),
            state_dir,
        }
    }

    /// The server's view of apps, calls, containers and volumes.
    pub async fn state(&self) -> Value {
        reqwest::get(format!("{}/_state", self.http))
            .await
            .expect("the state endpoint answers")
            .json()
            .await
            .expect("state is JSON")
    }

    /// The apps in `state` named `name` and their states.
    pub async fn app_states(&self, name: &str) -> Vec<String> {
        let state = self.state().await;
        state["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["name"] == name)
            .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for ModalServer {
    fn drop(&mut self) {
        // Closing stdin asks it to stop its containers and exit.
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
