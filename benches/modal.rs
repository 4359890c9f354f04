//! The Modal backend's own cost, against the Modal-protocol test server
//! (`tests/modal_server`) with the real pinned SDK, one JSON line per figure:
//! - `modal_call_bridge_overhead`: a trivial call (spawn + wait) end to end,
//!   minus the server's own handling of it (from the call's creation to its
//!   output, container run included): what the runtime, the bridge process,
//!   the SDK and gRPC add per call;
//! - `modal_spawn_to_first_poll`: from `spawn` to the call id being known,
//!   when the first wait on it can go out;
//! - `modal_map`: a map of trivial inputs with the default window (1,000 in
//!   flight), inputs per second.
//!
//! Run: `cargo bench --bench modal` (`BENCH_MODAL_CALLS`, default 200;
//! `BENCH_MODAL_MAP_N`, default 10000). Needs the SDK environment that
//! `scripts/test` builds under `target/modal-sdk`, and bubblewrap.

#[path = "../tests/support/modal_server.rs"]
mod modal_server;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use modal_agents::compute::{
    CallContext, ComputeBackend, Deployment, ModalBackend, ModalConfig, ModalCredentials,
};
use modal_agents::spec::BackendChoice;
use modal_agents::FunctionSpec;
use modal_server::ModalServer;
use serde_json::{json, Map};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_micros()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls = env_usize("BENCH_MODAL_CALLS", 200);
    let map_n = env_usize("BENCH_MODAL_MAP_N", 10_000);
    let python = ModalBackend::new(ModalConfig {
        cache_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/modal-sdk"),
        ..ModalConfig::default()
    })
    .sdk_python()
    .await
    .expect("the pinned modal SDK installs");
    let server = ModalServer::start(&python);
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = ModalBackend::new(ModalConfig {
        credentials: Some(ModalCredentials {
            token_id: modal_server::TOKEN_ID.into(),
            token_secret: modal_server::TOKEN_SECRET.into(),
            source: "bench".into(),
        }),
        python: Some(python),
        server_url: Some(server.url.clone()),
        cache_dir: dir.path().join("modal"),
        ..ModalConfig::default()
    });
    backend
        .deploy(Deployment::new(
            FunctionSpec::new("double", "def double(x):\n    return x * 2\n")
                .backend(BackendChoice::Modal),
        ))
        .await
        .expect("deploy");

    let call = |i: usize| {
        let backend = &backend;
        async move {
            let started = Instant::now();
            let id = backend
                .spawn("double", vec![json!(i)], Map::new(), CallContext::default())
                .await
                .expect("spawn");
            let spawned = started.elapsed();
            let outcome = backend.wait(&id).await.expect("wait");
            assert_eq!(outcome.result.expect("result"), json!(i * 2));
            (id, spawned, started.elapsed())
        }
    };
    // Warm: the bridge, the SDK's client and a container.
    for i in 0..20 {
        call(i).await;
    }
    let mut measured = Vec::with_capacity(calls);
    for i in 0..calls {
        measured.push(call(i).await);
    }
    let state = server.state().await;
    let (mut overhead, mut totals, mut handled, mut spawns) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, spawned, total) in measured {
        let own = state["calls"][&id.id]["handled_s"]
            .as_f64()
            .expect("the server timed the call");
        let own = Duration::from_secs_f64(own);
        overhead.push(total.saturating_sub(own));
        totals.push(total);
        handled.push(own);
        spawns.push(spawned);
    }
    for v in [&mut overhead, &mut totals, &mut handled, &mut spawns] {
        v.sort();
    }
    println!(
        "{}",
        json!({"bench": "modal_call_bridge_overhead", "n": calls,
               "p50_us": percentile(&overhead, 0.5), "p99_us": percentile(&overhead, 0.99),
               "call_p50_us": percentile(&totals, 0.5), "server_p50_us": percentile(&handled, 0.5)})
    );
    println!(
        "{}",
        json!({"bench": "modal_spawn_to_first_poll", "n": calls,
               "p50_us": percentile(&spawns, 0.5), "p99_us": percentile(&spawns, 0.99)})
    );

    let inputs = futures_util::stream::iter((0..map_n).map(|i| json!(i))).boxed();
    let started = Instant::now();
    let mut results = backend
        .map("double", inputs, CallContext::default())
        .await
        .expect("map");
    let mut seen = 0usize;
    while let Some(chunk) = results.next().await {
        for item in chunk {
            assert_eq!(item.index as usize, seen);
            assert_eq!(item.result.expect("result"), json!(seen * 2));
            seen += 1;
        }
    }
    assert_eq!(seen, map_n);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"bench": "modal_map", "n": map_n, "window": 1000,
               "seconds": (secs * 1000.0).round() / 1000.0,
               "per_sec": (map_n as f64 / secs).round()})
    );
    backend.shutdown().await;
}
