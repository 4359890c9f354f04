//! Task bookkeeping at scale: one runtime holding 100,000 finished tasks.
//! One JSON line per figure: the process's RSS, `GET /tasks?limit=100`,
//! `GET /tasks?status=failed&limit=100` and `GET /metrics` latency over the
//! real HTTP server on loopback, `GET /status/{id}` of one of them, the
//! journal's bytes per task, and the time a restart on the same data dir
//! takes to come up (in a process of its own) and its RSS then.
//!
//! Run: `cargo bench --bench tasks` (`BENCH_TASKS_N` sets the number of
//! tasks, default 100,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use modal_agents::api::{app, ApiConfig};
use modal_agents::runtime::Retention;
use modal_agents::{FunctionSpec, Runtime, TaskId};
use serde_json::json;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_micros()
}

/// `n` sequential GETs of `path`; (p50, p99) in microseconds.
async fn latency(http: &reqwest::Client, url: &str, path: &str, n: usize) -> (u128, u128) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http
            .get(format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.bytes().await.expect("body");
        times.push(t.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

async fn serve(rt: &Runtime) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let config = ApiConfig {
        tokens: vec![TOKEN.to_owned()],
        ..ApiConfig::default()
    };
    let router = app(rt.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    (
        url,
        tokio::spawn(async move { axum::serve(listener, router).await }),
    )
}

/// Set in the child that restarts on the parent's data dir.
const RESTART_ENV: &str = "BENCH_TASKS_RESTART_DIR";

/// Starts a runtime on `dir` and prints how long it took and its RSS.
async fn restart(
    dir: &std::path::Path,
    n: usize,
    retention: Retention,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let again = Runtime::builder()
        .data_dir(dir)
        .retention(retention)
        .start()
        .await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let (listed, total) = again.tasks(None, 0, 1);
    assert!(!listed.is_empty() && total >= n, "{total}");
    println!(
        "{}",
        json!({"bench": "tasks_restart", "n": n, "ms": ms.round(), "tasks": total,
               "rss_mib": (rss_mib() * 10.0).round() / 10.0})
    );
    again.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("BENCH_TASKS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // Every task is kept (the default keeps 100,000).
    let retention = Retention {
        max_finished: n.max(100_000),
        ..Retention::default()
    };
    if let Some(dir) = std::env::var_os(RESTART_ENV) {
        return restart(std::path::Path::new(&dir), n, retention).await;
    }
    let dir = tempfile::tempdir()?;
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .retention(retention)
        .start()
        .await?;
    rt.deploy_function(FunctionSpec::new("f", "def f(x): return x\n"))
        .await?;

    // n finished calls, 64 in flight at a time.
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (rt, next) = (rt.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                rt.call("f", vec![json!(1)], Default::default())
                    .await
                    .expect("call");
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    println!(
        "{}",
        json!({"bench": "tasks_fill", "n": n, "per_sec": (n as f64 / started.elapsed().as_secs_f64()).round()})
    );
    println!(
        "{}",
        json!({"bench": "tasks_rss", "n": n, "rss_mib": (rss_mib() * 10.0).round() / 10.0})
    );

    let (url, server) = serve(&rt).await;
    let http = reqwest::Client::new();
    // One finished task near the middle, for the status line.
    let (page, _) = rt.tasks(None, n / 2, 1);
    let middle: TaskId = page.first().map(|r| r.task_id).expect("a task");
    let status = format!("/status/{middle}");
    for (name, path) in [
        ("tasks_list_page", "/tasks?limit=100"),
        ("tasks_list_rare_status", "/tasks?status=failed&limit=100"),
        ("tasks_metrics", "/metrics"),
        ("tasks_status", status.as_str()),
    ] {
        let (p50, p99) = latency(&http, &url, path, 200).await;
        println!(
            "{}",
            json!({"bench": name, "n": n, "requests": 200, "p50_us": p50, "p99_us": p99})
        );
    }
    server.abort();
    rt.shutdown().await;

    let journal = std::fs::metadata(dir.path().join("tasks.journal"))?.len()
        + dir_bytes(&dir.path().join("tasks"));
    println!(
        "{}",
        json!({"bench": "tasks_disk", "n": n, "bytes": journal, "bytes_per_task": journal / n as u64})
    );

    // The restart in a process of its own, as a server restarts: its RSS
    // is what holding the recovered tasks costs.
    let out = std::process::Command::new(std::env::current_exe()?)
        .env(RESTART_ENV, dir.path())
        .env("BENCH_TASKS_N", n.to_string())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}
