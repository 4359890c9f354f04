//! Helpers shared by the integration tests: a runtime on a temp dir, and
//! process inspection through /proc.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use modal_agents::compute::{GpuDevice, LocalBackend, LocalConfig, ScriptedBackend};
use modal_agents::Runtime;
use tempfile::TempDir;

/// A runtime with a local backend of `pool_size` containers per function,
/// plus the backend itself (to find its containers) and the temp data dir.
pub struct TestRuntime {
    pub rt: Runtime,
    pub backend: Arc<LocalBackend>,
    pub dir: TempDir,
}

/// The runtime tests use: `pool_size` containers per function, and one
/// declared T4 at index 0 (so GPU functions deploy on machines without one;
/// containers of such functions get `CUDA_VISIBLE_DEVICES=0`).
pub async fn start(pool_size: usize) -> TestRuntime {
    start_with_gpus(
        pool_size,
        vec![GpuDevice {
            index: 0,
            name: "Tesla T4".into(),
        }],
    )
    .await
}

pub async fn start_with_gpus(pool_size: usize, gpus: Vec<GpuDevice>) -> TestRuntime {
    start_with_config(LocalConfig {
        pool_size,
        gpus: Some(gpus),
        ..LocalConfig::default()
    })
    .await
}

/// A runtime over a local backend with `config` (its work dir goes under the
/// temp data dir).
pub async fn start_with_config(config: LocalConfig) -> TestRuntime {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Arc::new(LocalBackend::new(LocalConfig {
        work_dir: dir.path().join("containers"),
        ..config
    }));
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .backend(backend.clone())
        .start()
        .await
        .expect("runtime starts");
    TestRuntime { rt, backend, dir }
}

/// A runtime over a [`ScriptedBackend`]: functions are the Rust closures
/// the test scripts under their names (no python3, no process), for tests
/// of the layers above compute (HTTP, tools, MCP, clients).
pub struct ScriptedRuntime {
    pub rt: Runtime,
    pub scripts: Arc<ScriptedBackend>,
    pub dir: TempDir,
}

/// A runtime over a fresh [`ScriptedBackend`] on a temp data dir, with
/// the identity scripted under each name in `identities` (`f(x) -> x`), and
/// one T4 GPU (as [`start`] declares one).
pub async fn scripted(identities: &[&str]) -> ScriptedRuntime {
    scripted_with(identities, modal_agents::sandbox::SandboxConfig::default()).await
}

/// [`scripted`], with sandboxes configured as `sandboxes` says.
pub async fn scripted_with(
    identities: &[&str],
    sandboxes: modal_agents::sandbox::SandboxConfig,
) -> ScriptedRuntime {
    let dir = tempfile::tempdir().expect("temp dir");
    let scripts = Arc::new(ScriptedBackend::new().with_gpus(["T4"]));
    for name in identities {
        scripts.script(name, |args, _| {
            Ok(args.first().cloned().unwrap_or(serde_json::Value::Null))
        });
    }
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .backend(Arc::new(scripts.clone()))
        .sandbox_config(sandboxes)
        .start()
        .await
        .expect("runtime starts");
    ScriptedRuntime { rt, scripts, dir }
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) && !is_zombie(pid) {
            pids.push(pid);
        }
    }
    pids
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Polls `check` every 20 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid this test found; no memory is touched.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Starts `modal-agents serve` (the built binary `bin`) on 127.0.0.1:0 over
/// `data_dir` with `token`; returns the child and the URL it printed.
pub fn serve(bin: &str, data_dir: &std::path::Path, token: &str) -> (std::process::Child, String) {
    serve_with(bin, data_dir, token, &[])
}

/// [`serve`] with extra environment variables.
pub fn serve_with(
    bin: &str,
    data_dir: &std::path::Path,
    token: &str,
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    serve_logging(bin, data_dir, token, env, None)
}

/// [`serve_with`], its log (at the server's default level, as an operator
/// would run it) written to `log` when given; without one, warnings only,
/// thrown away.
pub fn serve_logging(
    bin: &str,
    data_dir: &std::path::Path,
    token: &str,
    env: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(bin);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill
    // the server when the test's thread ends, so a failed test leaves no
    // server (and so no container) behind.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("MODAL_AGENTS_TOKEN", token)
        .envs(env.iter().copied())
        .env_remove("MODAL_AGENTS_ADDR")
        .stdout(std::process::Stdio::piped());
    match log {
        Some(path) => {
            command
                .env_remove("RUST_LOG")
                .stderr(std::fs::File::create(path).expect("the log file"));
        }
        None => {
            command
                .env("RUST_LOG", "warn")
                .stderr(std::process::Stdio::null());
        }
    }
    let mut child = command.spawn().expect("the server starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("the server prints its address");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    (child, url)
}

/// A runtime whose supervisor allows one restart a minute (to reach
/// escalation and give-up paths quickly); keep the temp dir alive with it.
pub async fn start_strict() -> (Runtime, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .pool_size(1)
        .restart_policy(modal_agents::runtime::RestartPolicy {
            max_restarts: 1,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(1),
        })
        .start()
        .await
        .expect("runtime starts");
    (rt, dir)
}

/// A webhook receiver on 127.0.0.1: keeps every delivery (headers, body) and
/// answers with the given status codes in turn, then 200.
#[derive(Clone, Default)]
pub struct Receiver {
    pub seen: Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
    answers: Arc<std::sync::Mutex<Vec<u16>>>,
}

impl Receiver {
    /// The deliveries that carried `webhook-id: message_id`.
    pub fn deliveries_of(&self, message_id: &str) -> Vec<(axum::http::HeaderMap, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(h, _)| h["webhook-id"] == message_id)
            .cloned()
            .collect()
    }
}

/// Starts a [`Receiver`]; returns its URL (`http://127.0.0.1:PORT/hook`).
pub async fn receiver(answers: Vec<u16>) -> (String, Receiver) {
    let r = Receiver {
        answers: Arc::new(std::sync::Mutex::new(answers)),
        ..Receiver::default()
    };
    let state = r.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let state = state.clone();
            async move {
                state.seen.lock().unwrap().push((headers, body));
                let mut answers = state.answers.lock().unwrap();
                let code = if answers.is_empty() {
                    200
                } else {
                    answers.remove(0)
                };
                axum::http::StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, r)
}

/// A client of a server the test started, with its token.
pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Api {
    pub fn new(url: String, token: &str) -> Api {
        Api {
            // Every request is bounded, so a test never hangs on one.
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            url,
            token: token.to_owned(),
        }
    }

    /// The same client against a restarted server.
    pub fn at(self, url: String) -> Api {
        Api { url, ..self }
    }

    /// Sends a request; returns the status and the JSON body (null if none).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// POSTs and asserts success.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, v) = self.send(reqwest::Method::POST, path, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    }

    /// GETs and asserts success.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let (status, v) = self.send(reqwest::Method::GET, path, None).await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    }

    /// GETs `path` until `done` holds (3 minutes at most).
    pub async fn until(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let v = self.get(path).await;
            if done(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GETs `path` as text and asserts success.
    pub async fn text(&self, path: &str) -> String {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.text().await.unwrap()
    }

    /// Starts a map of `function` over `0..n` and waits until more than
    /// `done` of its inputs completed; returns its id.
    pub async fn map_under_way(&self, function: &str, n: u64, done: u64) -> String {
        let map = self
            .post(
                "/run-parallel",
                serde_json::json!({"function_name": function, "inputs": (0..n).collect::<Vec<_>>()}),
            )
            .await;
        let id = map["task_id"].as_str().unwrap().to_owned();
        self.until(&format!("/status/{id}"), "the map under way", |v| {
            v["progress"]["completed"].as_u64().unwrap_or(0) > done
        })
        .await;
        id
    }

    /// Every result of a map, page by page.
    pub async fn all_results(&self, task_id: &str) -> Vec<serde_json::Value> {
        let mut results = Vec::new();
        let mut offset = Some(0u64);
        while let Some(at) = offset {
            let page = self
                .get(&format!(
                    "/status/{task_id}/results?offset={at}&limit=10000"
                ))
                .await;
            results.extend(page["results"].as_array().unwrap().iter().cloned());
            offset = page["next_offset"].as_u64();
        }
        results
    }
}

/// The server binary `bin` on a fresh data dir with `env`: the temp dir
/// (keep it), the data dir, the server and its client.
pub fn fresh(
    bin: &str,
    token: &str,
    env: &[(&str, &str)],
) -> (TempDir, std::path::PathBuf, std::process::Child, Api) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, url) = serve_with(bin, &data, token, env);
    (dir, data, server, Api::new(url, token))
}

/// Stops a server with SIGTERM and asserts it exits cleanly.
pub fn stop(server: &mut std::process::Child) {
    kill(server.id(), libc::SIGTERM);
    assert!(server.wait().unwrap().success());
}

impl Api {
    /// Runs `function(i)` for `i` in `0..n`, waiting for each; their ids.
    pub async fn spawn_each(&self, function: &str, n: u64) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let t = self
                .post(
                    "/spawn-task",
                    serde_json::json!({"function_name": function, "args": [i], "wait": true}),
                )
                .await;
            ids.push(t["task_id"].as_str().unwrap().to_owned());
        }
        ids
    }
}

/// A program of the Python test environment `scripts/test` builds in
/// `target/py-venv` (python, schemathesis, openapi-python-client).
pub fn venv_bin(name: &str) -> std::path::PathBuf {
    let bin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/py-venv/bin")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test, which installs the Python test environment",
        bin.display()
    );
    bin
}

/// A finished process's stdout then stderr, as text, for assertions.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
