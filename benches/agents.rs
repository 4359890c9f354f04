//! The agents at speed, one JSON line per figure, each beside what bounds
//! it on this machine:
//!
//! - `agents_master_worker`: tasks per second through a master and four
//!   workers with a trivial Rust handler, beside `ractor_roundtrip`, one
//!   raw ractor call to an echo actor;
//! - `agents_cas_storm`: 8 agents incrementing one key by compare-and-swap
//!   (`BENCH_CAS_EACH`, default 10,000 each), beside `raw_fsync`, a small
//!   append and fsync of a file, which every committed swap pays.
//!
//! Run: `cargo bench --bench agents` (`BENCH_AGENT_TASKS` sets the job size,
//! default 20,000).

use std::io::Write;
use std::time::{Duration, Instant};

use modal_agents::agents::{AgentTask, MasterConfig};
use modal_agents::volume::VolumeError;
use modal_agents::Runtime;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;

fn env_n(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Echo;

impl Actor for Echo {
    type Msg = (u64, RpcReplyPort<u64>);
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        (n, reply): Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(n);
        Ok(())
    }
}

async fn ractor_roundtrip(n: u64) {
    let (echo, _) = Actor::spawn(None, Echo, ()).await.expect("echo");
    let started = Instant::now();
    for i in 0..n {
        let back = echo.call(|reply| (i, reply), None).await.expect("call");
        assert!(matches!(back, ractor::rpc::CallResult::Success(v) if v == i));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"ractor_roundtrip\",\"n\":{n},\"per_sec\":{:.0},\"mean_us\":{:.2}}}",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
    echo.stop(None);
}

async fn master_worker(rt: &Runtime, n: u64) {
    let agents = rt.agents();
    agents.register_handler("noop", |_rt: Runtime, task: AgentTask| async move {
        Ok(task.data)
    });
    let mut workers = Vec::new();
    for i in 0..4 {
        workers.push(agents.spawn_worker(&format!("w{i}")).await.expect("worker"));
    }
    let master = agents
        .spawn_master("m", MasterConfig::default())
        .await
        .expect("master");
    let tasks: Vec<AgentTask> = (0..n).map(|i| AgentTask::new("noop", json!(i))).collect();
    let started = Instant::now();
    let report = master.run(tasks, &workers).await.expect("job");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(report.completed as u64, n, "{report:?}");
    println!(
        "{{\"bench\":\"agents_master_worker\",\"workers\":4,\"n\":{n},\"per_sec\":{:.0},\"seconds\":{secs:.3}}}",
        n as f64 / secs
    );
}

async fn cas_storm(rt: &Runtime, agents: u64, each: u64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..agents {
        let volumes = rt.volumes().clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..each {
                loop {
                    let current = volumes.read("storm", "n").await.expect("read");
                    let (n, expected) = match &current {
                        Some(v) => (v.value.as_u64().unwrap_or(0), Some(v.version)),
                        None => (0, None),
                    };
                    match volumes
                        .compare_and_swap("storm", "n", expected, json!(n + 1))
                        .await
                    {
                        Ok(_) => break,
                        Err(VolumeError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.expect("agent");
    }
    let secs = started.elapsed().as_secs_f64();
    let total = agents * each;
    let last = rt
        .volumes()
        .read("storm", "n")
        .await
        .expect("read")
        .expect("value");
    assert_eq!(last.value, json!(total));
    println!(
        "{{\"bench\":\"agents_cas_storm\",\"agents\":{agents},\"n\":{total},\"per_sec\":{:.0},\"conflicts\":{conflicts},\"seconds\":{secs:.3}}}",
        total as f64 / secs
    );
}

fn raw_fsync(dir: &std::path::Path, n: u64) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync.log"))
        .expect("file");
    let started = Instant::now();
    for i in 0..n {
        writeln!(file, "{{\"k\":\"n\",\"v\":{i}}}").expect("write");
        file.sync_data().expect("fsync");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"raw_fsync\",\"n\":{n},\"per_sec\":{:.0},\"mean_us\":{:.1}}}",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = Runtime::builder()
        .data_dir(dir.path().join("data"))
        .shutdown_timeout(Duration::from_secs(5))
        .start()
        .await
        .expect("runtime");
    ractor_roundtrip(env_n("BENCH_RACTOR_N", 100_000)).await;
    master_worker(&rt, env_n("BENCH_AGENT_TASKS", 20_000)).await;
    raw_fsync(dir.path(), env_n("BENCH_FSYNC_N", 2_000));
    cas_storm(&rt, 8, env_n("BENCH_CAS_EACH", 10_000)).await;
    rt.shutdown().await;
}
