//! Master-worker coordination (the seed's pattern 3) on the local backend, no
//! account needed: a master splits a job of 480 analysis, validation and
//! checksum tasks over four workers, one of which crashes once on purpose;
//! the supervisor restarts it and the master re-runs its task elsewhere.
//! Shows live progress, then a summary, and stores the aggregate in a volume.
//!
//! Run: `cargo run --release --example master_worker`
//! (`MODAL_AGENTS_DATA_DIR` picks the data dir; default `./modal-agents-data`.)

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use modal_agents::agents::{AgentEvent, AgentTask, MasterConfig};
use modal_agents::runtime::DEFAULT_DATA_DIR;
use modal_agents::Runtime;
use serde_json::{json, Value};

const WORDS: &[&str] = &[
    "agents",
    "deploy",
    "functions",
    "volumes",
    "workers",
    "results",
    "parallel",
    "tasks",
    "master",
    "compute",
    "python",
    "rust",
    "actor",
    "supervisor",
    "restart",
    "progress",
];

/// A deterministic corpus: documents, sensor series, records and blocks,
/// interleaved the way a real queue would mix them.
fn build_job() -> Vec<AgentTask> {
    let mut documents = Vec::new();
    for i in 0..160usize {
        let words: Vec<&str> = (0..4000 + 150 * (i % 40))
            .map(|j| WORDS[(i * 7 + j * 3 + j / 11) % WORDS.len()])
            .collect();
        let text = words
            .chunks(9)
            .map(|c| c.join(" "))
            .collect::<Vec<_>>()
            .join(". ");
        documents.push(AgentTask::new("analysis", json!({"doc": i, "text": text})));
    }
    let mut series = Vec::new();
    for i in 0..160usize {
        let values: Vec<f64> = (0..20_000)
            .map(|j| ((i * 31 + j * 17) % 997) as f64 / 3.0)
            .collect();
        series.push(AgentTask::new(
            "analysis",
            json!({"series": i, "values": values}),
        ));
    }
    let mut records = Vec::new();
    for i in 0..120usize {
        let mut record = json!({"id": i, "name": format!("user-{i}"), "age": 18 + i % 70});
        if i % 9 == 0 {
            record["age"] = json!("unknown");
        }
        if i % 13 == 0 {
            record.as_object_mut().expect("object").remove("name");
        }
        records.push(AgentTask::new(
            "validation",
            json!({"record": record, "schema": {
                "required": ["id", "name", "age"],
                "types": {"id": "int", "name": "str", "age": "int"},
                "ranges": {"age": [18, 80]},
            }}),
        ));
    }
    let blocks: Vec<AgentTask> = (0..40usize)
        .map(|i| AgentTask::new("checksum", json!({"block": i, "crash": i == 17})))
        .collect();
    let mut queues = [documents, series, records, blocks].map(|q| q.into_iter());
    let mut tasks = Vec::new();
    loop {
        let before = tasks.len();
        for q in queues.iter_mut() {
            tasks.extend(q.next());
        }
        if tasks.len() == before {
            return tasks;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::ERROR)
        .with_writer(std::io::stderr)
        .init();
    // The deliberate crash below is a panic; say it in one line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        eprintln!("\n  panic: {msg}");
    }));
    let data_dir =
        std::env::var("MODAL_AGENTS_DATA_DIR").unwrap_or_else(|_| DEFAULT_DATA_DIR.into());
    let started = Instant::now();
    let rt = Runtime::builder().data_dir(&data_dir).start().await?;
    let agents = rt.agents();

    // A user-registered handler, in Rust; its first run of block 17 crashes
    // the worker on purpose.
    let crashed = Arc::new(AtomicBool::new(false));
    agents.register_handler("checksum", move |_rt: Runtime, task: AgentTask| {
        let crashed = crashed.clone();
        async move {
            if task.data["crash"] == json!(true) && !crashed.swap(true, Ordering::SeqCst) {
                panic!("worker crashing on purpose on block {}", task.data["block"]);
            }
            let block = task.data["block"].as_u64().unwrap_or(0);
            let sum = (0..10_000u64).fold(block, |acc, x| acc.wrapping_mul(31).wrapping_add(x));
            Ok(json!({"block": block, "checksum": format!("{sum:016x}")}))
        }
    });

    let mut workers = Vec::new();
    for i in 1..=4 {
        workers.push(agents.spawn_worker(&format!("worker-{i}")).await?);
    }
    let master = agents
        .spawn_master("master", MasterConfig::default())
        .await?;
    let mut events = agents.events();
    let tasks = build_job();
    println!(
        "master: {} tasks over {} workers (data dir {data_dir})",
        tasks.len(),
        workers.len()
    );

    let job = master.submit(tasks, &workers).await?;
    let mut progress = master.progress(&job).ok_or("job vanished")?;
    let report = master.wait(&job);
    tokio::pin!(report);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let report = loop {
        tokio::select! {
            report = &mut report => break report?,
            _ = tick.tick() => {}
        }
        let p = *progress.borrow_and_update();
        print!(
            "\r  progress {:>3}/{} done, {} running, {} failed, {} retries",
            p.done, p.total, p.running, p.failed, p.retries
        );
        std::io::stdout().flush()?;
        while let Ok(event) = events.try_recv() {
            if let AgentEvent::Restarted { id, .. } = event {
                println!(
                    "\n  supervisor restarted {id}; the master re-runs its task on another worker"
                );
            }
        }
    };
    let p = *progress.borrow();
    println!(
        "\r  progress {:>3}/{} done, {} running, {} failed, {} retries",
        p.done, p.total, p.running, p.failed, p.retries
    );

    let invalid = report
        .results
        .iter()
        .filter(|r| r.result.as_ref().and_then(|v| v.get("valid")) == Some(&Value::Bool(false)))
        .count();
    println!("summary");
    println!(
        "  tasks      {} completed, {} failed",
        report.completed, report.failed
    );
    println!("  retries    {}", report.retries);
    println!(
        "  wall time  {} ms (whole run {:.2?})",
        report.wall_ms,
        started.elapsed()
    );
    println!("  records    {invalid} of 120 failed validation");
    for (worker, stats) in &report.per_worker {
        println!(
            "  {worker:<10} {:>4} tasks, {} failed attempts",
            stats.completed, stats.failed_attempts
        );
    }
    println!(
        "  aggregate  volume `{}`, key `{}`, file `{}`",
        report.stored_at["volume"].as_str().unwrap_or("?"),
        report.stored_at["key"].as_str().unwrap_or("?"),
        report.stored_at["file"].as_str().unwrap_or("?"),
    );
    for failed in report.results.iter().filter(|r| r.error.is_some()).take(5) {
        println!(
            "  failed     task {} ({}) after {} attempts on {}: {}",
            failed.index,
            failed.kind,
            failed.attempts,
            failed.worker.as_deref().unwrap_or("?"),
            failed.error.as_deref().unwrap_or_default()
        );
    }
    rt.shutdown().await;
    if report.failed == 0 {
        Ok(())
    } else {
        Err(format!("{} tasks failed", report.failed).into())
    }
}
