//! The master's routing and retries over the in-memory ScriptedBackend and
//! Rust task handlers: no python3, no process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::agents::{AgentTask, MasterConfig};
use crate::compute::ScriptedBackend;
use crate::runtime::Runtime;

async fn runtime() -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Arc::new(ScriptedBackend::new());
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .backend(Arc::new(backend))
        .start()
        .await
        .expect("runtime starts");
    (rt, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_spread_over_the_least_loaded_workers() {
    let (rt, _dir) = runtime().await;
    let agents = rt.agents();
    agents.register_handler("nap", |_rt: Runtime, task: AgentTask| async move {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        Ok(task.data)
    });
    let mut pool = Vec::new();
    for i in 0..3 {
        pool.push(agents.spawn_worker(&format!("w{i}")).await.unwrap());
    }
    let master = agents
        .spawn_master("m", MasterConfig::default())
        .await
        .unwrap();
    let tasks = (0..30).map(|i| AgentTask::new("nap", json!(i))).collect();
    let report = master.run(tasks, &pool).await.unwrap();
    assert_eq!(
        (report.completed, report.failed, report.retries),
        (30, 0, 0)
    );
    for (i, r) in report.results.iter().enumerate() {
        assert_eq!(r.result, Some(json!(i)), "task {i} kept its own result");
    }
    assert_eq!(report.per_worker.len(), 3, "{:?}", report.per_worker);
    for (worker, stats) in &report.per_worker {
        assert!(
            (5..=15).contains(&stats.completed),
            "{worker} got {} of 30: the load is not spread",
            stats.completed
        );
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_worker_crashes_runs_again_elsewhere() {
    let (rt, _dir) = runtime().await;
    let agents = rt.agents();
    let crashed = Arc::new(AtomicBool::new(false));
    let once = crashed.clone();
    agents.register_handler("fragile", move |_rt: Runtime, task: AgentTask| {
        let once = once.clone();
        async move {
            if task.data == json!(0) && !once.swap(true, Ordering::SeqCst) {
                panic!("the worker goes down with task 0");
            }
            Ok(task.data)
        }
    });
    let mut pool = Vec::new();
    for i in 0..2 {
        pool.push(agents.spawn_worker(&format!("w{i}")).await.unwrap());
    }
    let master = agents
        .spawn_master("m", MasterConfig::default())
        .await
        .unwrap();
    let tasks = (0..6)
        .map(|i| AgentTask::new("fragile", json!(i)))
        .collect();
    let report = master.run(tasks, &pool).await.unwrap();
    assert!(crashed.load(Ordering::SeqCst));
    assert_eq!((report.completed, report.failed), (6, 0), "{report:?}");
    assert!(report.retries >= 1, "task 0 ran again: {report:?}");
    assert_eq!(report.results[0].result, Some(json!(0)));
    assert!(report.results[0].attempts >= 2);
    rt.shutdown().await;
}
