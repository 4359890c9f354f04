use super::*;
use crate::compute::ScriptedBackend;
use crate::runtime::Runtime;
use crate::spec::{FunctionSpec, RetryPolicy};
use crate::task::TaskStatus;

// The dispatcher's coordination over the in-memory ScriptedBackend: no
// python3, no processes, each test in well under a second.

async fn runtime(backend: &Arc<ScriptedBackend>) -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .backend(Arc::new(backend.clone()))
        .start()
        .await
        .expect("runtime starts");
    (rt, dir)
}

fn spec(name: &str) -> FunctionSpec {
    FunctionSpec::new(name, format!("def {name}(*a):\n    pass\n"))
}

/// A job that panics fails its task (it never stays running), and the
/// runtime goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_panics_fails_its_task() {
    let backend = Arc::new(ScriptedBackend::new());
    backend.script("boom", |args, _| {
        if args[0] == 3 {
            panic!("a bug in the runtime's own code");
        }
        Ok(args[0].clone())
    });
    let (rt, _dir) = runtime(&backend).await;
    rt.deploy_function(spec("boom")).await.unwrap();
    let id = rt
        .run_parallel("boom", (0..5).map(|i| serde_json::json!(i)).collect())
        .await
        .unwrap();
    let record = rt.wait(id, Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Failed, "{record:?}");
    assert_eq!(
        record.error.unwrap().kind,
        crate::task::ErrorKind::InternalError
    );
    let call = rt
        .spawn("boom", vec![serde_json::json!(1)], Map::new())
        .await
        .unwrap();
    let record = rt.wait(call, Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(record.result, Some(serde_json::json!(1)));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_counts_every_input_once_and_keeps_failures_in_their_slots() {
    let backend = Arc::new(ScriptedBackend::new());
    backend.script("double", |args, _| {
        let x = args[0].as_i64().unwrap_or_default();
        if x % 10 == 3 {
            Err(TaskError::new(
                crate::task::ErrorKind::other("ValueError"),
                format!("{x} is unlucky"),
            ))
        } else {
            Ok(serde_json::json!(x * 2))
        }
    });
    let (rt, _dir) = runtime(&backend).await;
    rt.deploy_function(spec("double")).await.unwrap();
    let id = rt
        .run_parallel("double", (0..200).map(|i| serde_json::json!(i)).collect())
        .await
        .unwrap();
    let record = rt.wait(id, Some(Duration::from_secs(30))).await.unwrap();
    // A map with failed inputs ends failed, saying how many.
    assert_eq!(record.status, TaskStatus::Failed, "{record:?}");
    assert_eq!(record.error.as_ref().unwrap().kind, "MapInputsFailed");
    let progress = record.progress.unwrap();
    assert_eq!(
        (
            progress.total,
            progress.completed,
            progress.failed,
            progress.pending,
            progress.running
        ),
        (200, 180, 20, 0, 0),
        "{progress:?}"
    );
    let page = rt.results(id, 0, 1000).await.unwrap();
    assert_eq!(page.results.len(), 200);
    for (i, r) in page.results.iter().enumerate() {
        if i % 10 == 3 {
            assert_eq!(r["error"]["type"], "ValueError", "slot {i}: {r}");
        } else {
            assert_eq!(r, &serde_json::json!(i * 2), "slot {i}");
        }
    }
    assert_eq!(backend.runs("double"), 200, "each input ran once");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_the_tasks_attempts() {
    let backend = Arc::new(ScriptedBackend::new());
    let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = failures.clone();
    backend.script("flaky", move |_, _| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Err(TaskError::new(
                crate::task::ErrorKind::other("RuntimeError"),
                "not yet",
            ))
        } else {
            Ok(serde_json::json!("done"))
        }
    });
    let (rt, _dir) = runtime(&backend).await;
    rt.deploy_function(spec("flaky").retry_policy(RetryPolicy::new(3)))
        .await
        .unwrap();
    let id = rt.spawn("flaky", Vec::new(), Map::new()).await.unwrap();
    let record = rt.wait(id, Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(record.result, Some(serde_json::json!("done")), "{record:?}");
    assert_eq!(record.attempts, 3);
    // A function that keeps failing ends failed, its error kept.
    backend.script("broken", |_, _| {
        Err(TaskError::new(
            crate::task::ErrorKind::other("KeyError"),
            "'k'",
        ))
    });
    rt.deploy_function(spec("broken").retry_policy(RetryPolicy::new(1)))
        .await
        .unwrap();
    let id = rt.spawn("broken", Vec::new(), Map::new()).await.unwrap();
    let record = rt.wait(id, Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.attempts, 2);
    let error = record.error.unwrap();
    assert_eq!(
        (error.kind.as_str(), error.message.as_str()),
        ("KeyError", "'k'")
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_cancelled() {
    let backend = Arc::new(ScriptedBackend::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let signal = started.clone();
    backend.script_async("hang", move |_, _| {
        let signal = signal.clone();
        Box::pin(async move {
            signal.notify_one();
            std::future::pending::<()>().await;
            Ok(Value::Null)
        })
    });
    let (rt, _dir) = runtime(&backend).await;
    rt.deploy_function(spec("hang")).await.unwrap();
    let id = rt.spawn("hang", Vec::new(), Map::new()).await.unwrap();
    started.notified().await;
    rt.cancel(id).await.unwrap();
    let record = rt.wait(id, Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Cancelled, "{record:?}");
    rt.shutdown().await;
}
