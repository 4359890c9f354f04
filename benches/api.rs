//! HTTP API throughput on loopback, one JSON line per figure:
//! `POST /spawn-task` with `wait: true` on a trivial function, and
//! `GET /status/{id}`, each with 16 concurrent clients; then the same load
//! against a FastAPI + uvicorn server of the seed's design
//! (`benches/peer_fastapi.py`) when fastapi and uvicorn are importable.
//!
//! Run: `cargo bench --bench api` (`BENCH_API_N` sets requests per phase,
//! default 4000; `BENCH_ONLY=spawn` or `BENCH_ONLY=status` runs one phase). The peer runs under `BENCH_PEER_PYTHON`, else
//! `target/bench-venv/bin/python` when it exists (`python3 -m venv
//! target/bench-venv && target/bench-venv/bin/pip install fastapi uvicorn`),
//! else `python3`.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use modal_agents::api::{app, ApiConfig};
use modal_agents::Runtime;
use serde_json::{json, Value};

const TOKEN: &str = "bench-token-0123456789abcdef";
const AUTHORIZATION: &str = "Bearer bench-token-0123456789abcdef";
const CONCURRENCY: usize = 16;

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_micros()
}

/// One request of the load, built once: every worker sends the same bytes.
#[derive(Clone)]
struct Shot {
    method: hyper::Method,
    path: String,
    body: Option<bytes::Bytes>,
}

/// The load generator, the same for both servers: `CONCURRENCY` workers,
/// each on one keep-alive HTTP/1.1 connection, sending a request built
/// once (no URL parsing or JSON encoding per request, as wrk or oha do),
/// so the figure is the server's, not the generator's.
async fn load(addr: &str, n: usize, shot: Shot) -> (f64, Vec<Duration>) {
    use http_body_util::{BodyExt, Full};
    let per = n / CONCURRENCY;
    let mut senders = Vec::new();
    for _ in 0..CONCURRENCY {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        senders.push(sender);
    }
    let started = Instant::now();
    let mut workers = Vec::new();
    for mut sender in senders {
        let (shot, host) = (shot.clone(), addr.to_owned());
        workers.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(per);
            for _ in 0..per {
                let mut req = hyper::Request::builder()
                    .method(shot.method.clone())
                    .uri(shot.path.as_str())
                    .header(hyper::header::HOST, host.as_str())
                    .header(hyper::header::AUTHORIZATION, AUTHORIZATION);
                if shot.body.is_some() {
                    req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                }
                let req = req
                    .body(Full::new(shot.body.clone().unwrap_or_default()))
                    .expect("request");
                let t = Instant::now();
                sender.ready().await.expect("connection");
                let r = sender.send_request(req).await.expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                r.into_body().collect().await.expect("body");
                times.push(t.elapsed());
            }
            times
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / secs, all)
}

async fn measure(server: &str, url: &str, n: usize) {
    let http = reqwest::Client::new();
    let deploy = http
        .post(format!("{url}/deploy-function"))
        .bearer_auth(TOKEN)
        .json(&json!({"function_code": "def f(x): return x", "function_name": "f"}))
        .send()
        .await
        .expect("deploy");
    assert!(deploy.status().is_success());
    let spawn_url = format!("{url}/spawn-task");
    let body = json!({"function_name": "f", "args": [1], "wait": true});
    let warm = http
        .post(&spawn_url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("warm");
    let task: Value = warm.json().await.expect("task");
    let addr = url.trim_start_matches("http://");
    let spawn = Shot {
        method: hyper::Method::POST,
        path: "/spawn-task".into(),
        body: Some(serde_json::to_vec(&body).expect("body").into()),
    };
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if "api_spawn_task_wait".contains(only.as_str()) {
        let (rate, times) = load(addr, n, spawn).await;
        println!(
            "{}",
            json!({"bench": "api_spawn_task_wait", "server": server, "n": times.len(), "concurrency": CONCURRENCY,
               "per_sec": rate.round(), "p50_us": percentile(&times, 0.5), "p99_us": percentile(&times, 0.99)})
        );
    }
    if !"api_status".contains(only.as_str()) {
        return;
    }
    let status = Shot {
        method: hyper::Method::GET,
        path: format!("/status/{}", task["task_id"].as_str().expect("task id")),
        body: None,
    };
    let (rate, times) = load(addr, n * 4, status).await;
    println!(
        "{}",
        json!({"bench": "api_status", "server": server, "n": times.len(), "concurrency": CONCURRENCY,
               "per_sec": rate.round(), "p50_us": percentile(&times, 0.5), "p99_us": percentile(&times, 0.99)})
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("BENCH_API_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let dir = tempfile::tempdir()?;
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .pool_size(2)
        .start()
        .await?;
    let router = app(
        rt.clone(),
        ApiConfig {
            tokens: vec![TOKEN.into()],
            ..ApiConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    measure("modal-agents", &url, n).await;
    server.abort();
    rt.shutdown().await;

    let peer = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer_fastapi.py");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // Its own process group, so its pool workers go with it.
    // The interpreter with fastapi and uvicorn: BENCH_PEER_PYTHON, else
    // target/bench-venv's when there is one, else python3.
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-venv/bin/python");
    let python = std::env::var("BENCH_PEER_PYTHON").unwrap_or_else(|_| {
        if std::path::Path::new(venv).exists() {
            venv.to_owned()
        } else {
            "python3".to_owned()
        }
    });
    let mut child = match std::process::Command::new(python)
        .args([peer, &port.to_string(), TOKEN])
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peer not run: {e}");
            return Ok(());
        }
    };
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("peer not run (fastapi and uvicorn importable?): {status}");
            return Ok(());
        }
        if http.get(format!("{url}/docs")).send().await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("peer did not start");
            stop(&mut child);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    measure("fastapi+uvicorn", &url, n / 4).await;
    stop(&mut child);
    Ok(())
}

fn stop(child: &mut std::process::Child) {
    // SAFETY: signals the process group this bench created for the peer.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}
