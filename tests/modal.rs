//! The Modal backend, offline, through the REAL pinned `modal` SDK and CLI
//! (built by `scripts/test` under `target/modal-sdk`) talking to the
//! Modal-protocol test server (`tests/modal_server`, on 127.0.0.1), which runs
//! deployed functions for real in bubblewrap containers:
//! - here: generated apps of a matrix of specs deploy and answer; invalid
//!   specs and missing credentials never reach the SDK;
//! - `modal/calls.rs`: calls, errors and tracebacks, spawn and wait, logs,
//!   attempts from Modal's retries, timeouts, cancellation on Modal;
//! - `modal/maps.rs`: ordered maps with failures and unencodable results in
//!   their own slots;
//! - `modal/lifecycle.rs`: user code never runs on the host, undeploy stops
//!   the app, volume sync, auto routing, refused tokens, a call surviving a
//!   SIGKILL of our server.

#[path = "support/modal_server.rs"]
mod modal_server;
mod support;

mod modal {
    mod calls;
    mod lifecycle;
    mod maps;
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modal_agents::compute::{
    ModalBackend, ModalConfig, ModalCredentials, APP_OBJECT, MODAL_SDK_VERSION,
};
use modal_agents::spec::{BackendChoice, GpuSpec, Limits, RetryPolicy};
use modal_agents::{FunctionSpec, Runtime, RuntimeError};
use modal_server::{ModalServer, TOKEN_SECRET};
use serde_json::{json, Map, Value};

const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");

/// The interpreter with the real pinned SDK (built once, shared by tests).
async fn real_sdk() -> PathBuf {
    let backend = ModalBackend::new(ModalConfig {
        cache_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/modal-sdk"),
        ..ModalConfig::default()
    });
    backend
        .sdk_python()
        .await
        .expect("the pinned modal SDK installs")
}

fn credentials(secret: &str) -> Option<ModalCredentials> {
    Some(ModalCredentials {
        token_id: "ak-test".into(),
        token_secret: secret.into(),
        source: "test".into(),
    })
}

const TRICKY: &str = r##"# -*- coding: utf-8 -*-
DOC = '''Triple """ quotes, an escaped \''' and \\ backslashes.'''
GREETING = 'h\u00e9llo — 世界 \n "quoted" \t'
RAW = r'C:\path\to\x'
EMPTY = ""

def tricky(x):
    return f"{GREETING} {RAW} {x} {DOC}"
"##;

fn matrix() -> Vec<FunctionSpec> {
    let limits = Limits {
        network: Some(false),
        ..Limits::default()
    };
    vec![
        FunctionSpec::new("plain", "def plain(x):\n    return x\n"),
        FunctionSpec::new("tricky", TRICKY).timeout_s(86_400),
        FunctionSpec::new("gpu_one", "def gpu_one():\n    return 1\n")
            .gpu("T4".parse().unwrap())
            .cpu(0.5)
            .memory_mib(512),
        FunctionSpec::new("gpu_count", "def gpu_count():\n    return 1\n")
            .gpu("H100:2".parse().unwrap()),
        FunctionSpec::new("gpu_fallback", "def gpu_fallback():\n    return 1\n")
            .gpu(GpuSpec::fallback(["A100-80GB", "L40S:2", "A10G"]).unwrap()),
        FunctionSpec::new("retrying", "def retrying():\n    return 1\n")
            .retry_policy(RetryPolicy {
                max_retries: 10,
                initial_delay_s: 0.5,
                backoff_coefficient: 3.0,
                max_delay_s: 30.0,
            })
            .timeout_s(1),
        FunctionSpec::new(
            "with-everything",
            "import os\ndef run():\n    return os.environ.get('K')\n",
        )
        .entrypoint("run")
        .secret("keys")
        .secret("workspace-secret")
        .volume("/data", "shared")
        .volume("/models", "weights")
        .python_package("six==1.16.0")
        .max_concurrency(3)
        .limits(limits),
    ]
}

/// A runtime whose Modal backend drives the real SDK against `server`.
async fn runtime_on(server: &ModalServer, dir: &Path, secret: &str) -> Runtime {
    Runtime::builder()
        .data_dir(dir)
        .modal(modal_config(server, dir, secret).await)
        .start()
        .await
        .unwrap()
}

async fn modal_config(server: &ModalServer, dir: &Path, secret: &str) -> ModalConfig {
    ModalConfig {
        credentials: credentials(secret),
        python: Some(real_sdk().await),
        server_url: Some(server.url.clone()),
        cache_dir: dir.join("modal"),
        ..ModalConfig::default()
    }
}

/// The real `modal` CLI, pointed at `server`.
fn modal_cli(
    python: &Path,
    server: &ModalServer,
    home: &Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(python)
        .args(["-m", "modal"])
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", "/usr/bin:/bin")
        .env("MODAL_CONFIG_PATH", home.join("none.toml"))
        .env("MODAL_SERVER_URL", &server.url)
        .env("MODAL_TOKEN_ID", modal_server::TOKEN_ID)
        .env("MODAL_TOKEN_SECRET", modal_server::TOKEN_SECRET)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_apps_deploy_through_the_real_cli_and_answer() {
    let python = real_sdk().await;
    let version = std::process::Command::new(&python)
        .args(["-c", "import modal; print(modal.__version__)"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        MODAL_SDK_VERSION
    );
    let server = ModalServer::start(&python);
    let dir = tempfile::tempdir().unwrap();
    // A secret of the Modal workspace, made with the real CLI.
    let out = modal_cli(
        &python,
        &server,
        dir.path(),
        &["secret", "create", "workspace-secret", "W=from-modal"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rt = runtime_on(&server, dir.path(), TOKEN_SECRET).await;
    rt.secrets().set("keys", [("K", "from-runtime")]).unwrap();
    // Every option of the matrix goes through `modal deploy` (GPUs, CPU and
    // memory, retries, volumes, both kinds of secret, packages, limits).
    for spec in matrix() {
        let name = spec.name.clone();
        let info = rt
            .deploy_function(spec.backend(BackendChoice::Modal))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.backend, "modal");
    }
    assert_eq!(
        rt.call("plain", vec![json!({"a": [1, 2]})], Map::new())
            .await
            .unwrap(),
        json!({"a": [1, 2]})
    );
    assert_eq!(
        rt.call("tricky", vec![json!("x")], Map::new())
            .await
            .unwrap(),
        json!(concat!(
            "h\u{e9}llo — 世界 \n \"quoted\" \t C:\\path\\to\\x x ",
            "Triple \"\"\" quotes, an escaped ''' and \\ backslashes."
        ))
    );
    for name in ["gpu_one", "gpu_count", "gpu_fallback", "retrying"] {
        assert_eq!(
            rt.call(name, vec![], Map::new()).await.unwrap(),
            json!(1),
            "{name}"
        );
    }
    // The runtime's secret reaches the function in its environment.
    assert_eq!(
        rt.call("with-everything", vec![], Map::new())
            .await
            .unwrap(),
        json!("from-runtime")
    );
    // None of the generated app files holds the user's code.
    for spec in matrix() {
        let app = std::fs::read_to_string(
            dir.path()
                .join(format!("modal/apps/ma_app_{}.py", spec.name)),
        )
        .unwrap();
        let body = spec
            .code
            .lines()
            .find(|l| l.trim_start().starts_with("return"))
            .unwrap();
        assert!(
            !app.contains(body.trim()),
            "{}: the app file carries the code",
            spec.name
        );
        assert!(app.contains(APP_OBJECT));
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_and_missing_credentials_never_reach_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("modal-cache");
    // A Modal backend whose "SDK" does not exist: reaching it would fail
    // differently (and slowly), so each error below comes from before it.
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .modal(ModalConfig {
            credentials: None,
            python: Some("/nonexistent/python".into()),
            cache_dir: cache.clone(),
            ..ModalConfig::default()
        })
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let bad = FunctionSpec::new("bad", "def bad():\n    return 1\n")
        .backend(BackendChoice::Modal)
        .timeout_s(0);
    let err = rt.deploy_function(bad).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Spec(e) if e.field() == "timeout_s"),
        "{err}"
    );
    let err = modal_deploy_error(&rt).await;
    assert!(
        err.contains("MODAL_TOKEN_ID") && err.contains("modal token new"),
        "{err}"
    );
    // `auto` with a GPU this machine lacks names the GPU and how to enable Modal.
    let err = rt
        .deploy_function(
            FunctionSpec::new("big", "def big():\n    return 1\n").gpu("H100:8".parse().unwrap()),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("H100") && err.contains("MODAL_TOKEN_ID"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "failed at once");
    assert!(!cache.join("apps").exists(), "no app file was written");
    let modal = rt.resources().modal;
    assert!(modal.configured && !modal.credentials, "{modal:?}");
    let err = rt.push_volume("shared").await.unwrap_err().to_string();
    assert!(err.contains("MODAL_TOKEN_ID"), "{err}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_through_the_api_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let token = "modal-creds-token-0123456789";
    let home_s = home.display().to_string();
    let (mut server, url) = support::serve_with(
        BIN,
        &dir.path().join("data"),
        token,
        &[
            ("HOME", &home_s),
            ("MODAL_TOKEN_ID", ""),
            ("MODAL_TOKEN_SECRET", ""),
        ],
    );
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{url}/deploy-function"))
        .bearer_auth(token)
        .json(&json!({"function_code": "def f():\n    return 1\n", "function_name": "f", "backend": "modal"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["field"], "backend", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("MODAL_TOKEN_SECRET"),
        "{problem}"
    );

    let file = dir.path().join("f.py");
    std::fs::write(&file, "def f():\n    return 1\n").unwrap();
    let deploy = |backend: &str| {
        std::process::Command::new(BIN)
            .args([
                "deploy",
                "--backend",
                backend,
                "--url",
                &url,
                "--token",
                token,
            ])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = deploy("modal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("modal token new"), "{stderr}");
    let out = deploy("cloud");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("local, modal or auto"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
    support::kill(server.id(), libc::SIGTERM);
    server.wait().unwrap();
}

/// Why deploying a trivial function on Modal fails.
async fn modal_deploy_error(rt: &Runtime) -> String {
    let spec = FunctionSpec::new("f", "def f():\n    return 1\n").backend(BackendChoice::Modal);
    rt.deploy_function(spec).await.unwrap_err().to_string()
}
