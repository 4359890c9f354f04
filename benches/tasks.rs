//! Task bookkeeping at scale: one runtime holding 100,000 finished tasks.
//! One JSON line per figure: the process's RSS, `GET /tasks?limit=100`,
//! `GET /tasks?status=failed&limit=100` and `GET /metrics` latency over the
//! real HTTP server on loopback, and the time a restart on the same data dir
//! takes to come up.
//!
//! Run: `cargo bench --bench tasks` (`BENCH_TASKS_N` sets the number of
//! tasks, default 100,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use modal_agents::api::{app, ApiConfig};
use modal_agents::{FunctionSpec, Runtime};
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("BENCH_TASKS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let rt = Runtime::builder().data_dir(dir.path()).start().await?;
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
    for (name, path) in [
        ("tasks_list_page", "/tasks?limit=100"),
        ("tasks_list_rare_status", "/tasks?status=failed&limit=100"),
        ("tasks_metrics", "/metrics"),
    ] {
        let (p50, p99) = latency(&http, &url, path, 200).await;
        println!(
            "{}",
            json!({"bench": name, "n": n, "requests": 200, "p50_us": p50, "p99_us": p99})
        );
    }
    server.abort();
    rt.shutdown().await;

    let started = Instant::now();
    let again = Runtime::builder().data_dir(dir.path()).start().await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let (listed, total) = again.tasks(None, 0, 1);
    assert!(!listed.is_empty() && total >= n.min(100_000), "{total}");
    println!(
        "{}",
        json!({"bench": "tasks_restart", "n": n, "ms": ms.round(), "tasks": total})
    );
    again.shutdown().await;
    Ok(())
}
