//! Calls through the real SDK against the Modal-protocol test server.

use std::time::Duration;

use modal_agents::compute::{CallContext, ComputeBackend, Deployment, ModalBackend};
use modal_agents::spec::{BackendChoice, RetryPolicy};
use modal_agents::{FunctionSpec, RuntimeError, TaskStatus};
use serde_json::{json, Map};

use crate::{modal_config, real_sdk, runtime_on, support, ModalServer, TOKEN_SECRET};

const WORK: &str = r#"
import sys, time

def work(x):
    print(f"working on {x}")
    print(f"warning about {x}", file=sys.stderr)
    if x == 7:
        raise ValueError(f"seven is not allowed ({x})")
    return x * 2

def size(s):
    return {"length": len(s), "echo": s}

def slow(s):
    print("sleeping", flush=True)
    time.sleep(s)
    return s
"#;

/// Fails its first two attempts (counted in a volume all its containers
/// share), then answers with the attempt number.
const FLAKY: &str = r#"
import os

def flaky():
    path = "/state/count"
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(n + 1))
    if n < 2:
        raise RuntimeError(f"attempt {n + 1} fails")
    return n + 1
"#;

fn modal(spec: FunctionSpec) -> FunctionSpec {
    spec.backend(BackendChoice::Modal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_errors_spawns_logs_retries_and_timeouts() {
    let server = ModalServer::start(&real_sdk().await);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on(&server, dir.path(), TOKEN_SECRET).await;
    rt.deploy_function(modal(FunctionSpec::new("work", WORK)))
        .await
        .unwrap();
    assert_eq!(
        rt.call("work", vec![json!(21)], Map::new()).await.unwrap(),
        json!(42)
    );

    // Arguments and results past Modal's inline limit (2 MiB) travel as
    // blobs, both ways.
    rt.deploy_function(modal(FunctionSpec::new("size", WORK)))
        .await
        .unwrap();
    let big = "é".repeat(1_500_000);
    let answer = rt.call("size", vec![json!(big)], Map::new()).await.unwrap();
    assert_eq!(answer["length"], 1_500_000);
    assert_eq!(answer["echo"], json!(big));
    let blobs = server.state().await["blobs"].as_u64().unwrap();
    assert!(
        blobs >= 2,
        "the argument and the result went as blobs: {blobs}"
    );

    // The user's exception: its type, message and a traceback into the
    // user's own file and line.
    let err = rt
        .call("work", vec![json!(7)], Map::new())
        .await
        .unwrap_err();
    let RuntimeError::TaskFailed { error, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(error.kind, "ValueError");
    assert_eq!(error.message, "seven is not allowed (7)");
    let traceback = error.traceback.unwrap_or_default();
    assert!(
        traceback.contains("work.py\", line 8") && traceback.contains("raise ValueError"),
        "{traceback}"
    );

    // Spawn: the task runs on Modal (its FunctionCall id recorded) and its
    // stdout/stderr are the task's logs, as for a local task.
    rt.deploy_function(modal(FunctionSpec::new("slow", WORK)))
        .await
        .unwrap();
    let id = rt
        .spawn("slow", vec![json!(1.5)], Map::new())
        .await
        .unwrap();
    support::eventually(Duration::from_secs(30), "the spawned call runs", || async {
        let record = rt.status(id).unwrap();
        record.status == TaskStatus::Running
            && record.backend_call_id.is_some_and(|c| c.starts_with("fc-"))
    })
    .await;
    let done = rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(done.result, Some(json!(1.5)), "{done:?}");
    assert_eq!(done.attempts, 1);
    let id = rt.spawn("work", vec![json!(5)], Map::new()).await.unwrap();
    let done = rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(done.result, Some(json!(10)));
    let logs = rt.logs(id).await.unwrap();
    assert_eq!(logs.stdout, "working on 5\n", "{logs:?}");
    assert_eq!(logs.stderr, "warning about 5\n", "{logs:?}");

    // Modal's retries are the task's attempts.
    let flaky = FunctionSpec::new("flaky", FLAKY)
        .volume("/state", "flaky-state")
        .retry_policy(RetryPolicy {
            max_retries: 3,
            initial_delay_s: 0.0,
            backoff_coefficient: 1.0,
            max_delay_s: 1.0,
        });
    rt.deploy_function(modal(flaky)).await.unwrap();
    let id = rt.spawn("flaky", vec![], Map::new()).await.unwrap();
    let done = rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(done.result, Some(json!(3)), "{done:?}");
    assert_eq!(done.attempts, 3, "{done:?}");

    // The function's timeout: TimeoutError, and its container is gone.
    rt.deploy_function(modal(FunctionSpec::new("slow", WORK).timeout_s(1)))
        .await
        .unwrap();
    let err = rt
        .call("slow", vec![json!(30)], Map::new())
        .await
        .unwrap_err();
    let RuntimeError::TaskFailed { error, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(error.kind, "TimeoutError", "{error:?}");
    assert!(error.message.contains("timeout of 1s"), "{error:?}");

    // Cancelling a running task cancels its call on Modal: the input stops
    // and the container running it is killed.
    rt.deploy_function(modal(FunctionSpec::new("slow", WORK).timeout_s(120)))
        .await
        .unwrap();
    let id = rt.spawn("slow", vec![json!(60)], Map::new()).await.unwrap();
    let call_id = running_call(&server, &rt, id).await;
    rt.cancel(id).await.unwrap();
    let cancelled = rt.wait(id, Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled, "{cancelled:?}");
    let state = server.state().await;
    assert_eq!(state["calls"][&call_id]["cancelled"], true, "{state}");
    assert_eq!(state["calls"][&call_id]["running"], 0, "{state}");
    rt.shutdown().await;
}

/// The FunctionCall id of task `id` once the server runs its input.
async fn running_call(
    server: &ModalServer,
    rt: &modal_agents::Runtime,
    id: modal_agents::TaskId,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = rt.status(id).ok().and_then(|r| r.backend_call_id) {
            if server.state().await["calls"][&found]["running"] == 1 {
                return found;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the call never ran on the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A caller that gives up on a waited `call` cancels the call on Modal too,
/// not only its own wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_on_a_call_cancels_it_remotely() {
    let server = ModalServer::start(&real_sdk().await);
    let dir = tempfile::tempdir().unwrap();
    let backend = ModalBackend::new(modal_config(&server, dir.path(), TOKEN_SECRET).await);
    backend
        .deploy(Deployment::new(modal(FunctionSpec::new("slow", WORK))))
        .await
        .unwrap();
    let ctx = CallContext::default();
    let cancel = ctx.cancel.clone();
    let http = server.http.clone();
    let watcher = tokio::spawn(async move {
        // Once the remote call runs, the caller gives up.
        support::eventually(Duration::from_secs(30), "the remote call to run", || {
            let http = http.clone();
            async move { running_calls(&http).await > 0 }
        })
        .await;
        cancel.cancel();
    });
    let outcome = backend
        .call("slow", vec![json!(60)], Map::new(), ctx)
        .await
        .unwrap();
    watcher.await.unwrap();
    assert_eq!(outcome.result.unwrap_err().kind, "Cancelled");
    let state = server.state().await;
    let calls = state["calls"].as_object().unwrap();
    assert_eq!(calls.len(), 1, "{state}");
    let call = calls.values().next().unwrap();
    assert_eq!(call["cancelled"], true, "{state}");
    assert_eq!(call["running"], 0, "{state}");
    backend.shutdown().await;
}

async fn running_calls(http: &str) -> u64 {
    let state: serde_json::Value = reqwest::get(format!("{http}/_state"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    state["calls"]
        .as_object()
        .map(|c| c.values().filter_map(|v| v["running"].as_u64()).sum())
        .unwrap_or(0)
}
