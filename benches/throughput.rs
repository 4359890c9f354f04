//! Throughput and latency of the local backend, one JSON line per figure.
//!
//! Run: `cargo bench --bench throughput` (`BENCH_MAP_N` sets the map size,
//! default 1,000,000; `BENCH_ONLY=roundtrip` runs only the figures with that
//! in their name: `map` both maps, `map_trivial` the streamed one alone,
//! whose `peak_rss_mib` is then the runtime's alone, e.g. at
//! `BENCH_MAP_N=10000000`). Compare with `python3 benches/peer_pool.py`; cold starts
//! with the `bare_python_start` line, a bare `python3 -c pass`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modal_agents::compute::{LocalBackend, LocalConfig, SandboxMode};
use modal_agents::{FunctionSpec, Runtime, RuntimeError, TaskStatus};
use serde_json::{json, Map};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_micros()
}

async fn map_trivial(rt: &Runtime, n: u64, suffix: &str) -> Result<(), RuntimeError> {
    rt.deploy_function(FunctionSpec::new("f", "def f(x): return x * 2\n"))
        .await?;
    // Warm, as the peer's Pool is before its timed map: a map of 1,000
    // first, so both containers are up.
    let warm = rt
        .run_parallel("f", (0..1000).map(|i| json!(i)).collect())
        .await?;
    rt.wait(warm, None).await?;
    let inputs = futures_util::stream::iter((0..n).map(|i| json!(i)));
    let started = Instant::now();
    let id = rt.run_parallel_stream("f", inputs, Some(n)).await?;
    let record = rt.wait(id, None).await?;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(record.status, TaskStatus::Completed);
    let check = rt.results(id, n - 1, 1).await?;
    assert_eq!(check.results, vec![json!((n - 1) * 2)]);
    println!(
        "{}",
        json!({
            "bench": format!("local_map_trivial{suffix}"), "n": n, "containers": 2,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "per_sec": (n as f64 / seconds).round(),
            "peak_rss_mib": (peak_rss_mib() * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

/// The same map through `run_parallel` with a `Vec`, whose inputs are stored
/// before it starts so a restart can resume it.
async fn map_stored(rt: &Runtime, n: u64) -> Result<(), RuntimeError> {
    let inputs: Vec<serde_json::Value> = (0..n).map(|i| json!(i)).collect();
    let started = Instant::now();
    let id = rt.run_parallel("f", inputs).await?;
    let record = rt.wait(id, None).await?;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(record.status, TaskStatus::Completed);
    println!(
        "{}",
        json!({
            "bench": "local_map_trivial_stored_inputs", "n": n, "containers": 2,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "per_sec": (n as f64 / seconds).round(),
        })
    );
    Ok(())
}

async fn call_roundtrip(rt: &Runtime, n: usize, suffix: &str) -> Result<(), RuntimeError> {
    rt.deploy_function(FunctionSpec::new("echo", "def echo(x): return x\n"))
        .await?;
    for i in 0..100 {
        rt.call("echo", vec![json!(i)], Map::new()).await?;
    }
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        rt.call("echo", vec![json!(i)], Map::new()).await?;
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{}",
        json!({
            "bench": format!("local_call_roundtrip{suffix}"), "n": n,
            "p50_us": percentile(&times, 0.5), "p99_us": percentile(&times, 0.99),
        })
    );
    Ok(())
}

/// Deploy of a new function to its first result. With `standby`, each sample
/// first lets the backend's blank standby container come up (a runtime
/// between deploys); without, every sample starts an interpreter.
async fn cold_start(
    rt: &Runtime,
    backend: &LocalBackend,
    standby: bool,
    suffix: &str,
) -> Result<(), RuntimeError> {
    // The interpreter path is resolved once per backend; warm that first.
    rt.deploy_function(FunctionSpec::new("warm", "def warm(): return 0\n"))
        .await?;
    let mut samples = Vec::new();
    for i in 0..5 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while standby && backend.standby_ready() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let name = format!("cold_{i}");
        let started = Instant::now();
        rt.deploy_function(FunctionSpec::new(
            &name,
            format!("def {name}(x): return x + 1\n"),
        ))
        .await?;
        rt.call(&name, vec![json!(1)], Map::new()).await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    let bench = if standby {
        format!("local_cold_start{suffix}")
    } else {
        format!("local_cold_start_no_standby{suffix}")
    };
    println!(
        "{}",
        json!({"bench": bench, "ms": (samples[2].as_secs_f64() * 1e4).round() / 10.0,
               "samples": samples.len()})
    );
    Ok(())
}

/// What cold starts are measured against: a bare `python3 -c pass`, the
/// median of 11, in this run on this machine. The interpreter is the one
/// `python3` names, resolved first as the runtime resolves it (a version
/// manager's shim in front of it, pyenv's here, is a shell script that
/// more than doubles the start).
fn bare_python_start() {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8(out.stdout).expect("path");
    let python = python.trim();
    let mut samples: Vec<Duration> = (0..11)
        .map(|_| {
            let started = Instant::now();
            let status = std::process::Command::new(python)
                .args(["-c", "pass"])
                .status()
                .expect("python3");
            assert!(status.success());
            started.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "{}",
        json!({"bench": "bare_python_start", "peer": "python3 -c pass",
               "ms": (samples[5].as_secs_f64() * 1e4).round() / 10.0, "samples": samples.len()})
    );
}

async fn runtime(
    dir: &Path,
    standby: usize,
    sandbox: SandboxMode,
) -> Result<(Runtime, Arc<LocalBackend>), RuntimeError> {
    let backend = Arc::new(LocalBackend::new(LocalConfig {
        pool_size: 2,
        standby,
        sandbox,
        work_dir: dir.join("containers"),
        ..LocalConfig::default()
    }));
    let rt = Runtime::builder()
        .data_dir(dir)
        .backend(backend.clone())
        .start()
        .await?;
    Ok((rt, backend))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::var("BENCH_MAP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // BENCH_ONLY=roundtrip (say) runs the figures whose name has that in it.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| name.contains(only.as_str());
    let dir = tempfile::tempdir()?;
    if run("bare") {
        bare_python_start();
    }
    // Plain processes, as multiprocessing.Pool runs them (benches/peer_pool.py).
    let (rt, backend) = runtime(dir.path(), 1, SandboxMode::Off).await?;
    if run("map_trivial") {
        map_trivial(&rt, n, "").await?;
    }
    if run("map_stored") {
        map_stored(&rt, n).await?;
    }
    if run("roundtrip") {
        let calls = std::env::var("BENCH_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        call_roundtrip(&rt, calls, "").await?;
    }
    if run("cold_start") {
        cold_start(&rt, &backend, true, "").await?;
    }
    rt.shutdown().await;
    if run("cold_start_no_standby") {
        let (rt, backend) = runtime(&dir.path().join("no-standby"), 0, SandboxMode::Off).await?;
        cold_start(&rt, &backend, false, "").await?;
        rt.shutdown().await;
    }
    if !run("sandboxed") {
        return Ok(());
    }
    // Under bubblewrap, when it works here (containers start per function,
    // so there is no standby).
    let (rt, backend) = runtime(&dir.path().join("sandboxed"), 0, SandboxMode::Auto).await?;
    map_trivial(&rt, n, "_sandboxed").await?;
    call_roundtrip(&rt, 2000, "_sandboxed").await?;
    cold_start(&rt, &backend, false, "_sandboxed").await?;
    if backend.sandboxed() != Some(true) {
        eprintln!("bubblewrap is not usable here: the _sandboxed figures are unsandboxed");
    }
    rt.shutdown().await;
    Ok(())
}
