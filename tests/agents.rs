//! Agents on a real runtime: the master/worker pattern with built-in Python
//! handlers, crashes of workers, masters and runtime children, retries and
//! give-ups, and the aggregate in a volume.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use modal_agents::agents::{AgentError, AgentEvent, AgentTask, MasterConfig, WorkerHandle};
use modal_agents::runtime::RuntimeChild;
use modal_agents::{Agents, Runtime};
use serde_json::json;

fn job(n: usize) -> Vec<AgentTask> {
    (0..n)
        .map(|i| match i % 3 {
            0 => AgentTask::new("analysis", json!({"text": format!("Task {i}. The quick brown fox jumps.")})),
            1 => AgentTask::new("analysis", json!({"values": [i, i + 1, i + 2]})),
            _ => AgentTask::new(
                "validation",
                json!({"record": {"id": i, "name": "x"}, "schema": {"required": ["id", "name", "email"], "types": {"id": "int"}}}),
            ),
        })
        .collect()
}

async fn workers(rt: &Runtime, n: usize) -> Vec<WorkerHandle> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            rt.agents()
                .spawn_worker(&format!("worker-{i}"))
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_spreads_tasks_and_aggregates() {
    let t = support::start(2).await;
    let agents = t.rt.agents();
    let pool = workers(&t.rt, 3).await;
    let master = agents
        .spawn_master("master", MasterConfig::default())
        .await
        .unwrap();
    let report = master.run(job(60), &pool).await.unwrap();
    assert_eq!(
        (
            report.total,
            report.completed,
            report.failed,
            report.retries
        ),
        (60, 60, 0, 0)
    );
    for r in &report.results {
        let result = r.result.as_ref().unwrap();
        match r.index % 3 {
            0 => assert_eq!(result["words"], json!(7), "{result}"),
            1 => assert_eq!(result["mean"], json!(r.index as f64 + 1.0), "{result}"),
            _ => assert_eq!(result["errors"], json!(["missing required field 'email'"])),
        }
    }
    assert_eq!(report.per_worker.len(), 3);
    for (worker, stats) in &report.per_worker {
        assert!(stats.completed >= 1, "{worker} took part: {stats:?}");
    }
    let summary =
        t.rt.volumes()
            .read("agents", &format!("jobs/{}", report.job_id))
            .await
            .unwrap();
    assert_eq!(summary.unwrap().value["completed"], json!(60));
    let file = report.stored_at["file"].as_str().unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&t.rt.volumes().get_file("agents", file).await.unwrap()).unwrap();
    assert_eq!(stored.as_array().unwrap().len(), 60);
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_crash_reruns_its_task_elsewhere_once() {
    let t = support::start(2).await;
    let agents = t.rt.agents();
    let mut events = agents.events();
    let crashed = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let (c, r) = (crashed.clone(), runs.clone());
    agents.register_handler("flaky", move |_rt: Runtime, task: AgentTask| {
        let (c, r) = (c.clone(), r.clone());
        async move {
            if task.data["crash"] == json!(true) && !c.swap(true, Ordering::SeqCst) {
                panic!("deliberate crash");
            }
            r.fetch_add(1, Ordering::SeqCst);
            Ok(json!({"echo": task.data}))
        }
    });
    let pool = workers(&t.rt, 2).await;
    let master = agents
        .spawn_master("m", MasterConfig::default())
        .await
        .unwrap();
    let mut tasks: Vec<AgentTask> = (0..20)
        .map(|i| AgentTask::new("flaky", json!({"i": i})))
        .collect();
    tasks[7] = AgentTask::new("flaky", json!({"i": 7, "crash": true}));
    let report = master.run(tasks, &pool).await.unwrap();
    assert_eq!((report.completed, report.failed), (20, 0));
    assert!(report.retries >= 1, "{report:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        20,
        "every task completed exactly once"
    );
    let seventh = &report.results[7];
    assert_eq!(seventh.attempts, 2);
    let failed_on: Vec<&String> = report
        .per_worker
        .iter()
        .filter(|(_, s)| s.failed_attempts > 0)
        .map(|(w, _)| w)
        .collect();
    assert_eq!(failed_on.len(), 1);
    assert_ne!(
        seventh.worker.as_ref(),
        Some(failed_on[0]),
        "re-run on another worker"
    );
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, AgentEvent::Restarted { ref id, .. } if id == failed_on[0]),
        "{event:?}"
    );
    // The restarted worker serves again.
    let again = pool[0]
        .run(AgentTask::new("flaky", json!({})), Duration::from_secs(30))
        .await;
    assert!(again.unwrap().is_ok());
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_compute_is_retried_then_reported() {
    let t = support::start(2).await;
    let agents = t.rt.agents();
    let pool = workers(&t.rt, 2).await;
    let config = MasterConfig {
        max_attempts: 2,
        ..MasterConfig::default()
    };
    let master = agents.spawn_master("m", config).await.unwrap();
    let tasks = vec![
        AgentTask::new("analysis", json!({"values": []})),
        AgentTask::new("analysis", json!({"values": [1, 2, 3]})),
        AgentTask::new("no-such-type", json!({})),
    ];
    let report = master.run(tasks, &pool).await.unwrap();
    assert_eq!((report.completed, report.failed), (1, 2));
    let empty = &report.results[0];
    assert_eq!(empty.attempts, 2);
    assert!(
        empty.error.as_ref().unwrap().contains("ValueError"),
        "{empty:?}"
    );
    assert!(report.results[2]
        .error
        .as_ref()
        .unwrap()
        .contains("no handler for task type"));
    assert_eq!(
        report.results[1].result.as_ref().unwrap()["median"],
        json!(2.0)
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_crash_mid_job_loses_nothing() {
    let t = support::start(2).await;
    let agents = t.rt.agents();
    agents.register_handler("slow", |_rt: Runtime, task: AgentTask| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(task.data)
    });
    let pool = workers(&t.rt, 2).await;
    let master = agents
        .spawn_master("m", MasterConfig::default())
        .await
        .unwrap();
    let tasks: Vec<AgentTask> = (0..40).map(|i| AgentTask::new("slow", json!(i))).collect();
    let job = master.submit(tasks, &pool).await.unwrap();
    let mut progress = master.progress(&job).unwrap();
    while progress.borrow_and_update().done < 10 {
        progress.changed().await.unwrap();
    }
    agents.inject_fault("m");
    let report = master.wait(&job).await.unwrap();
    assert_eq!(report.completed, 40);
    let values: Vec<_> = report
        .results
        .iter()
        .map(|r| r.result.clone().unwrap())
        .collect();
    assert_eq!(values, (0..40).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(
        agents.list().iter().find(|a| a.id == "m").unwrap().restarts,
        1
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_children_of_the_one_supervisor() {
    let t = support::start(1).await;
    let agents = t.rt.agents();
    agents.register_handler("echo", |_rt: Runtime, task: AgentTask| async move {
        Ok(task.data)
    });
    let worker = agents.spawn_worker("w").await.unwrap();
    // Every handle over the runtime sees the same agents.
    assert_eq!(Agents::new(&t.rt).list(), agents.list());

    // A runtime child's failure (an open volume's) leaves the agents running.
    t.rt.volumes().write("shared", "k", json!(1)).await.unwrap();
    t.rt.inject_fault(RuntimeChild::Volumes);
    let rt = t.rt.clone();
    support::eventually(
        Duration::from_secs(10),
        "volume store restarted",
        move || {
            let rt = rt.clone();
            async move { rt.restarts().await.unwrap() == 1 }
        },
    )
    .await;
    let out = worker
        .run(AgentTask::new("echo", json!(5)), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(out.unwrap(), json!(5));

    // An agent's failure is its own: restarted on its budget, counted on
    // the agent, not on the runtime's children.
    let mut events = agents.events();
    agents.inject_fault("w");
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, AgentEvent::Restarted { id, restarts: 1, .. } if id == "w"),
        "{event:?}"
    );
    assert_eq!(agents.list()[0].restarts, 1);
    assert_eq!(t.rt.restarts().await.unwrap(), 1);
    let out = worker
        .run(AgentTask::new("echo", json!(6)), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(out.unwrap(), json!(6));
    assert!(agents.stop("w").await.unwrap());
    assert!(Agents::new(&t.rt).list().is_empty());
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, AgentEvent::Stopped { id, .. } if id == "w"),
        "{event:?}"
    );
    assert!(!agents.stop("w").await.unwrap(), "already gone");
    // The id is free again, for a new agent with a fresh count.
    agents.spawn_worker("w").await.unwrap();
    assert_eq!(agents.list()[0].restarts, 0);
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_policy_and_give_up() {
    let (rt, _dir) = support::start_strict().await;
    let agents = rt.agents();
    let err = agents.spawn_worker("bad id").await.unwrap_err();
    assert!(matches!(err, AgentError::Id(_)), "{err:?}");
    agents.spawn_worker("w").await.unwrap();
    let err = agents.spawn_worker("w").await.unwrap_err();
    assert!(matches!(err, AgentError::Duplicate(_)), "{err:?}");
    let mut events = agents.events();
    agents.inject_fault("w");
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first, AgentEvent::Restarted { restarts: 1, .. }),
        "{first:?}"
    );
    agents.inject_fault("w");
    let second = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(second, AgentEvent::GaveUp { ref id, .. } if id == "w"),
        "{second:?}"
    );
    assert!(agents.list().is_empty());
    assert!(
        rt.is_running(),
        "an agent's failures do not stop the runtime"
    );
    rt.shutdown().await;
}
