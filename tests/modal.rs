//! The Modal backend, offline. Two kinds of checks:
//! - with the REAL pinned `modal` SDK (built by `.ci/run` under
//!   `target/modal-sdk`): every generated app file of a matrix of specs
//!   imports cleanly and `modal deploy` on it stops exactly at the
//!   missing-token error; invalid specs never reach the SDK; missing
//!   credentials fail at once through the runtime, the API and the CLI.
//! - with `tests/modal_standin`, a minimal stand-in for the SDK clearly named
//!   as such, the bridge logic a live Modal would be needed for: calls, error
//!   mapping, ordered maps, spawn/poll/cancel, volume sync, routing.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modal_agents::{
    app_file, BackendChoice, FunctionSpec, GpuSpec, Limits, ModalBackend, ModalConfig,
    ModalCredentials, RetryPolicy, Runtime, RuntimeError, APP_OBJECT, MODAL_SDK_VERSION,
};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_apps_import_under_the_real_sdk_and_deploy_stops_at_the_token() {
    let python = real_sdk().await;
    let version = std::process::Command::new(&python)
        .args(["-c", "import modal; print(modal.__version__)"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        MODAL_SDK_VERSION
    );
    let dir = tempfile::tempdir().unwrap();
    let mut checks = Vec::new();
    for mut spec in matrix() {
        if spec.name == "with-everything" {
            spec.image.apt_packages.push("ffmpeg".into());
        }
        spec.validate().unwrap();
        let remote: Vec<String> = spec
            .secrets
            .iter()
            .filter(|s| *s != "keys")
            .cloned()
            .collect();
        let file = dir.path().join(format!("{}.py", spec.name));
        std::fs::write(
            &file,
            app_file(
                &spec,
                &spec.name,
                spec.secrets.contains(&"keys".into()),
                &remote,
            ),
        )
        .unwrap();
        let python = python.clone();
        let home = dir.path().to_path_buf();
        checks.push(tokio::task::spawn_blocking(move || {
            // 1. It imports under the real SDK; the function is a modal.Function
            //    and the embedded code is exactly the spec's.
            let probe = format!(
                "import importlib.util, sys, modal\n\
                 spec = importlib.util.spec_from_file_location('app', {file:?})\n\
                 m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n\
                 f = getattr(m, {entry:?})\n\
                 assert isinstance(f, modal.Function), type(f)\n\
                 sys.stdout.write(m.__ma_source)\n",
                file = file.display().to_string(),
                entry = spec.python_entrypoint(),
            );
            let out = std::process::Command::new(&python)
                .args(["-c", &probe])
                .env_clear()
                .env("HOME", &home)
                .env("MODAL_CONFIG_PATH", home.join("none.toml"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                spec.name,
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                spec.code,
                "{}: code survives",
                spec.name
            );
            // 2. `modal deploy` gets as far as authentication, no further.
            let out = std::process::Command::new(&python)
                .args(["-m", "modal", "deploy"])
                .arg(format!("{}::{}", file.display(), APP_OBJECT))
                .env_clear()
                .env("HOME", &home)
                .env("PATH", "/usr/bin:/bin")
                .env("MODAL_CONFIG_PATH", home.join("none.toml"))
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !out.status.success(),
                "{}: deploy cannot succeed offline",
                spec.name
            );
            assert!(
                text.contains("Token missing"),
                "{}: stopped elsewhere:\n{text}",
                spec.name
            );
        }));
    }
    for check in checks {
        check.await.unwrap();
    }
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

/// A runtime whose Modal backend drives the STAND-IN SDK.
async fn standin_runtime(dir: &Path, secret: &str) -> Runtime {
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/modal_standin");
    Runtime::builder()
        .data_dir(dir)
        .modal(ModalConfig {
            credentials: credentials(secret),
            python: Some("python3".into()),
            sdk_path: Some(standin),
            cache_dir: dir.join("modal"),
            poll_interval: Duration::from_millis(20),
            map_window: 64,
            ..ModalConfig::default()
        })
        .start()
        .await
        .unwrap()
}

const WORK: &str = r#"
import random, time

def work(x):
    time.sleep(random.random() * 0.002)
    if x == 7:
        raise ValueError(f"seven is not allowed ({x})")
    return x * 2

def slow(s):
    time.sleep(s)
    return s
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_calls_maps_spawns_and_errors_with_the_standin() {
    let dir = tempfile::tempdir().unwrap();
    let rt = standin_runtime(dir.path(), "as-ok").await;
    let info = rt
        .deploy_function(FunctionSpec::new("work", WORK).backend(BackendChoice::Modal))
        .await
        .unwrap();
    assert_eq!(info.backend, "modal");
    assert_eq!(
        rt.call("work", vec![json!(21)], Map::new()).await.unwrap(),
        json!(42)
    );
    let err = rt
        .call("work", vec![json!(7)], Map::new())
        .await
        .unwrap_err();
    let RuntimeError::TaskFailed { error, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(error.kind, "ValueError");
    assert!(error.message.contains("seven"), "{error:?}");
    assert!(error
        .traceback
        .unwrap_or_default()
        .contains("raise ValueError"));

    // A map streams in order, exactly once, the failing input in its slot.
    let n = 3000u64;
    let id = rt
        .run_parallel("work", (0..n).map(|i| json!(i)).collect())
        .await
        .unwrap();
    let record = rt.wait(id, Some(Duration::from_secs(120))).await.unwrap();
    let progress = record.progress.unwrap();
    assert_eq!(
        (progress.completed, progress.failed),
        (n - 1, 1),
        "{progress:?}"
    );
    let mut results = Vec::new();
    let mut offset = 0;
    while offset < n {
        let page = rt.results(id, offset, 1000).await.unwrap();
        offset += page.results.len() as u64;
        results.extend(page.results);
    }
    assert_eq!(results.len() as u64, n);
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            assert_eq!(r["error"]["type"], "ValueError", "{r}");
        } else {
            assert_eq!(r, &json!(i * 2), "slot {i}");
        }
    }

    // Results JSON cannot carry (NaN, Infinity, nested too deep) are errors
    // in their own slots; every other input keeps its own result.
    rt.deploy_function(
        FunctionSpec::new(
            "odd",
            "def odd(x):\n    if x == 1:\n        return float('nan')\n    if x == 2:\n        return float('inf')\n    if x == 3:\n        v = 0\n        for _ in range(200):\n            v = [v]\n        return v\n    return x\n",
        )
        .backend(BackendChoice::Modal),
    )
    .await
    .unwrap();
    let id = rt
        .run_parallel("odd", (0..8).map(|i| json!(i)).collect())
        .await
        .unwrap();
    rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
    let page = rt.results(id, 0, 100).await.unwrap();
    assert_eq!(page.results.len(), 8, "{:?}", page.results);
    for (i, r) in page.results.iter().enumerate() {
        if (1..=3).contains(&i) {
            assert_eq!(r["error"]["type"], "ResultNotSerializable", "slot {i}: {r}");
        } else {
            assert_eq!(r, &json!(i), "slot {i}");
        }
    }

    // Timeouts map to TimeoutError; spawn, poll and cancel go through FunctionCall ids.
    rt.deploy_function(
        FunctionSpec::new("slow", WORK)
            .timeout_s(1)
            .backend(BackendChoice::Modal),
    )
    .await
    .unwrap();
    let err = rt
        .call("slow", vec![json!(5)], Map::new())
        .await
        .unwrap_err();
    let RuntimeError::TaskFailed { error, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(error.kind, "TimeoutError", "{error:?}");
    let spawned = rt.spawn("work", vec![json!(5)], Map::new()).await.unwrap();
    let done = rt
        .wait(spawned, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(done.result, Some(json!(10)));
    let call_id = done.backend_call_id.unwrap_or_default();
    assert!(
        call_id.starts_with("fc-"),
        "the FunctionCall id is in the record: {call_id}"
    );
    let spawned = rt
        .spawn("slow", vec![json!(0.9)], Map::new())
        .await
        .unwrap();
    rt.cancel(spawned).await.unwrap();
    let cancelled = rt
        .wait(spawned, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(
        cancelled.status,
        modal_agents::TaskStatus::Cancelled,
        "{cancelled:?}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_volume_sync_and_refused_tokens_with_the_standin() {
    let dir = tempfile::tempdir().unwrap();
    let rt = standin_runtime(dir.path(), "as-ok").await;
    // auto: what this machine can run stays local; a GPU it lacks goes to Modal.
    let local = rt
        .deploy_function(FunctionSpec::new(
            "here",
            "def here():\n    return 'local'\n",
        ))
        .await
        .unwrap();
    assert_eq!(local.backend, "local");
    assert!(rt.resources().modal.credentials);
    let remote = rt
        .deploy_function(
            FunctionSpec::new("there", "def there():\n    return 'modal'\n")
                .gpu("H100:8".parse().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(remote.backend, "modal");
    assert_eq!(
        rt.call("there", vec![], Map::new()).await.unwrap(),
        json!("modal")
    );
    assert_eq!(
        rt.call("here", vec![], Map::new()).await.unwrap(),
        json!("local")
    );

    // `modal deploy` never runs the user's code on this machine, next to the
    // operator's token: module-level code that would leak it does not run
    // at deploy; its errors still show, from a parse.
    let marker = dir.path().join("ran-on-host");
    let leaky = format!(
        "import os\nopen({:?}, 'w').write(os.environ.get('MODAL_TOKEN_SECRET', ''))\ndef leaky():\n    return 1\n",
        marker.display().to_string()
    );
    rt.deploy_function(FunctionSpec::new("leaky", leaky).backend(BackendChoice::Modal))
        .await
        .unwrap();
    assert!(
        !marker.exists(),
        "the deploy ran the user's code on the host"
    );
    let err = rt
        .deploy_function(
            FunctionSpec::new("broken", "def broken(:\n    pass\n").backend(BackendChoice::Modal),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::Spec(modal_agents::SpecError::Syntax { line: 1, .. })
        ),
        "{err}"
    );
    let err = rt
        .deploy_function(
            FunctionSpec::new("absent", "def other():\n    pass\n").backend(BackendChoice::Modal),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");

    // Undeploy stops the app on Modal (it is not left deployed, and billing).
    let apps = dir.path().join("modal/standin/apps");
    let deployed = |dir: &std::path::Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    rt.deploy_function(
        FunctionSpec::new("brief", "def brief():\n    return 1\n").backend(BackendChoice::Modal),
    )
    .await
    .unwrap();
    let before = deployed(&apps);
    rt.undeploy_function("brief").await.unwrap();
    assert_eq!(deployed(&apps), before - 1, "the app was stopped");

    // Volumes: changed files go up, files changed there come down.
    let files = rt.volume_dir("shared");
    std::fs::create_dir_all(files.join("sub")).unwrap();
    std::fs::write(files.join("a.txt"), "alpha").unwrap();
    std::fs::write(files.join("sub/b.txt"), "beta").unwrap();
    let pushed = rt.push_volume("shared").await.unwrap();
    assert_eq!(
        pushed.copied,
        vec!["a.txt".to_owned(), "sub/b.txt".to_owned()]
    );
    assert!(
        rt.push_volume("shared").await.unwrap().copied.is_empty(),
        "nothing changed"
    );
    std::fs::remove_file(files.join("a.txt")).unwrap();
    assert_eq!(
        rt.push_volume("shared").await.unwrap().deleted,
        vec!["a.txt".to_owned()]
    );
    let remote_dir = dir.path().join("modal/standin/volumes/shared");
    assert!(!remote_dir.join("a.txt").exists());
    // Links planted in the volume are never followed by a sync: a linked
    // file is not uploaded, and a linked directory is not written through.
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "host secret").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), files.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, files.join("linked")).unwrap();
    rt.push_volume("shared").await.unwrap();
    assert!(!remote_dir.join("leak.txt").exists());
    assert!(!remote_dir.join("linked").exists());
    std::fs::create_dir_all(remote_dir.join("linked")).unwrap();
    std::fs::write(remote_dir.join("linked/planted.txt"), "through the link").unwrap();
    std::fs::write(remote_dir.join("c.txt"), "from modal").unwrap();
    let pulled = rt.pull_volume("shared").await.unwrap();
    assert_eq!(
        pulled.copied,
        vec![
            "c.txt".to_owned(),
            "linked/planted.txt".to_owned(),
            "sub/b.txt".to_owned()
        ]
    );
    assert!(
        !outside.join("planted.txt").exists(),
        "a pull wrote through a link"
    );
    assert_eq!(
        std::fs::read_to_string(files.join("c.txt")).unwrap(),
        "from modal"
    );
    rt.shutdown().await;

    // A token Modal refuses fails the deploy with the credentials error.
    let dir = tempfile::tempdir().unwrap();
    let rt = standin_runtime(dir.path(), "as-revoked").await;
    let started = Instant::now();
    let err = modal_deploy_error(&rt).await;
    assert!(
        err.contains("refused the credentials") && err.contains("modal token new"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modal_call_in_flight_survives_a_sigkill_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // `serve` finds the SDK through --modal-python / MODAL_AGENTS_MODAL_PYTHON:
    // a wrapper that puts the stand-in first on the import path.
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/modal_standin");
    let wrapper = dir.path().join("python-standin");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nPYTHONPATH={} exec python3 \"$@\"\n",
            standin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (home_s, wrapper_s) = (home.display().to_string(), wrapper.display().to_string());
    let env = [
        ("HOME", home_s.as_str()),
        ("MODAL_TOKEN_ID", "ak-test"),
        ("MODAL_TOKEN_SECRET", "as-ok"),
        ("MODAL_AGENTS_MODAL_PYTHON", wrapper_s.as_str()),
    ];
    let token = "modal-durable-token-0123456789";
    let (mut server, url) = support::serve_with(BIN, &data, token, &env);
    let http = reqwest::Client::new();
    let post = |url: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let gate = dir.path().join("gate");
    let code = format!(
        "import os, time\ndef gated():\n    with open({runs:?}, 'a') as f:\n        f.write('run\\n')\n    while not os.path.exists({gate:?}):\n        time.sleep(0.01)\n    return 'opened'\n",
        runs = dir.path().join("runs").display().to_string(),
        gate = gate.display().to_string(),
    );
    post(
        format!("{url}/deploy-function"),
        json!({"function_code": code, "function_name": "gated", "backend": "modal"}),
    )
    .await;
    let task = post(
        format!("{url}/spawn-task"),
        json!({"function_name": "gated"}),
    )
    .await;
    let task_id = task["task_id"].as_str().unwrap().to_owned();
    // The FunctionCall id is journaled before the kill.
    let journal = data.join("tasks.journal");
    support::eventually(
        Duration::from_secs(30),
        "the call id in the journal",
        || async { std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"fc-")) },
    )
    .await;
    support::kill(server.id(), libc::SIGKILL);
    server.wait().unwrap();

    std::fs::write(&gate, "").unwrap();
    let (mut server, url) = support::serve_with(BIN, &data, token, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        assert!(
            Instant::now() < deadline,
            "the task never finished after the restart"
        );
        let s: Value = http
            .get(format!("{url}/status/{task_id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["status"] == "completed" || s["status"] == "failed" {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["result"], "opened");
    assert_eq!(status["attempts"], 1, "waited for, not run again: {status}");
    let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the function ran once");
    support::kill(server.id(), libc::SIGTERM);
    server.wait().unwrap();
}

/// A caller that gives up on a waited `call` cancels the call on Modal too,
/// not only its own wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_on_a_call_cancels_it_remotely() {
    use modal_agents::{CallContext, ComputeBackend, Deployment};
    let dir = tempfile::tempdir().unwrap();
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/modal_standin");
    let backend = ModalBackend::new(ModalConfig {
        credentials: credentials("as-ok"),
        python: Some("python3".into()),
        sdk_path: Some(standin),
        cache_dir: dir.path().join("modal"),
        poll_interval: Duration::from_millis(20),
        ..ModalConfig::default()
    });
    backend
        .deploy(Deployment {
            spec: FunctionSpec::new("slow", WORK).backend(BackendChoice::Modal),
            secret_env: Default::default(),
            volume_dirs: Default::default(),
            remote_secrets: Vec::new(),
            warm: true,
            redact: Default::default(),
        })
        .await
        .unwrap();
    let ctx = CallContext::default();
    let cancel = ctx.cancel.clone();
    let calls = dir.path().join("modal/standin/calls");
    // The stand-in marks a remote call's life with files in calls/.
    let marked = |ext: &'static str| {
        let calls = calls.clone();
        move || {
            let calls = calls.clone();
            async move {
                std::fs::read_dir(&calls)
                    .map(|d| {
                        d.flatten()
                            .any(|e| e.path().extension().is_some_and(|x| x == ext))
                    })
                    .unwrap_or(false)
            }
        }
    };
    let started = marked("pid");
    let watcher = tokio::spawn(async move {
        // Once the remote call exists, the caller gives up.
        support::eventually(Duration::from_secs(30), "the remote call to start", started).await;
        cancel.cancel();
    });
    let outcome = backend
        .call("slow", vec![json!(30)], Map::new(), ctx)
        .await
        .unwrap();
    watcher.await.unwrap();
    assert_eq!(outcome.result.unwrap_err().kind, "Cancelled");
    support::eventually(
        Duration::from_secs(10),
        "the remote call cancelled",
        marked("cancelled"),
    )
    .await;
    backend.shutdown().await;
}
