//! The OpenAPI document is the contract: schemathesis 4 (every check, a
//! fixed seed, thousands of cases) fuzzes the API server from its
//! `/openapi.json` and finds nothing; tests/contract/schemathesis.toml
//! lists the few requests the schema cannot tell apart from accepted ones,
//! each with its reason. The server runs in this process over a
//! ScriptedBackend (functions are Rust closures: no python3 behind the
//! API), served as `modal-agents serve` serves it (`api::serve_with`, the
//! header-read timeout included); sandboxes are real.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "contract-test-token-0123456789";

use support::venv_bin;

/// The API server over a ScriptedBackend, with `my_function(x) = 2x`, a
/// T4 GPU, and room for every sandbox the fuzzer creates (past the
/// capacity is a documented 503, which the not-a-server-error check would
/// count). Its URL, and what keeps it alive.
async fn scripted_server() -> (String, support::ScriptedRuntime) {
    let t = support::scripted_with(
        &[],
        modal_agents::sandbox::SandboxConfig {
            max_sandboxes: 100_000,
            // A generated requirement that pip would look for (an index is
            // out of reach here) is a 422 in seconds, inside the fuzzer's
            // 10 s read timeout even on a loaded machine.
            image_build_timeout: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await;
    t.scripts.script("my_function", |a, _| {
        Ok(serde_json::json!(
            a.first().and_then(serde_json::Value::as_i64).unwrap_or(0) * 2
        ))
    });
    let app = modal_agents::api::app(
        t.rt.clone(),
        modal_agents::api::ApiConfig {
            tokens: vec![TOKEN.to_owned()],
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(modal_agents::api::serve_with(
        listener,
        app,
        std::future::pending(),
        Duration::from_secs(15),
    ));
    (url, t)
}

/// `cmd`'s output, run off the async test's threads.
async fn output(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_the_api() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let (url, t) = scripted_server().await;
    let mut cmd = Command::new(venv_bin("schemathesis"));
    cmd.arg("--config-file")
        .arg(root.join("tests/contract/schemathesis.toml"))
        .args([
            "run",
            &format!("{url}/openapi.json"),
            "--checks",
            "all",
            "--no-color",
        ])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .current_dir(dir.path());
    let out = output(cmd).await;
    t.rt.shutdown().await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: u64 = text
        .lines()
        .find_map(|l| l.trim().split(" generated").next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no case count in {text}"));
    assert!(generated >= 1000, "only {generated} cases: {text}");
    assert!(!text.contains("failures"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_document_runs_the_seed_flow() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let (url, t) = scripted_server().await;
    let fetch = "import sys, urllib.request as u; r = u.Request(sys.argv[1], \
                 headers={'authorization': 'Bearer ' + sys.argv[2]}); \
                 open('openapi.json', 'wb').write(u.urlopen(r).read())";
    let mut cmd = Command::new(venv_bin("python"));
    cmd.args(["-c", fetch, &format!("{url}/openapi.json"), TOKEN])
        .current_dir(dir.path());
    assert!(output(cmd).await.status.success());
    let mut cmd = Command::new(venv_bin("openapi-python-client"));
    cmd.args([
        "generate",
        "--path",
        "openapi.json",
        "--meta",
        "none",
        "--output-path",
        "client",
    ])
    .current_dir(dir.path());
    let generated = output(cmd).await;
    assert!(
        generated.status.success() && dir.path().join("client/api").exists(),
        "{}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(root.join("tests/contract/generated_flow.py"))
        .current_dir(dir.path())
        .env("PYTHONPATH", dir.path())
        .env("MODAL_AGENTS_URL", &url)
        .env("MODAL_AGENTS_TOKEN", TOKEN);
    let out = output(cmd).await;
    t.rt.shutdown().await;
    let text = support::output_text(&out);
    assert!(out.status.success() && text.contains("all ok"), "{text}");
}
