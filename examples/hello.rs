//! Hello, modal-agents: deploy a Python function from a code string, call it,
//! and map it over a thousand inputs on warm local containers, with live
//! progress.
//!
//! Run: `cargo run --release --example hello`

use std::time::{Duration, Instant};

use modal_agents::{FunctionSpec, Runtime, TaskStatus};
use serde_json::{json, Map};

const CODE: &str = r#"
import math

def score(n):
    """A small CPU-bound job: the number of primes below n."""
    sieve = bytearray([1]) * n
    sieve[:2] = b"\0\0"
    for i in range(2, int(math.isqrt(n)) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(range(i * i, n, i)))
    return {"n": n, "primes": sum(sieve)}
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let data_dir = std::env::temp_dir().join("modal-agents-hello");
    let rt = Runtime::builder().data_dir(&data_dir).start().await?;

    let info = rt
        .deploy_function(FunctionSpec::new("score", CODE).timeout_s(60))
        .await?;
    println!("deployed {} ({})", info.function_name, info.function_id);

    let one = rt.call("score", vec![json!(100)], Map::new()).await?;
    println!("score(100) = {one}");

    let started = Instant::now();
    let inputs = (1..=1000).map(|i| json!(i * 100)).collect();
    let map = rt.run_parallel("score", inputs).await?;
    loop {
        let record = rt.status(map)?;
        let p = record.progress.unwrap_or_default();
        print!("\r{:>5}/{} done, {} running", p.done(), p.total, p.running);
        if record.status.is_terminal() {
            println!();
            break;
        }
        let _ = rt.wait(map, Some(Duration::from_millis(100))).await;
    }
    let record = rt.status(map)?;
    let page = rt.results(map, 995, 5).await?;
    println!(
        "map {} in {:.2?}; last results: {}",
        record.status,
        started.elapsed(),
        serde_json::to_string(&page.results)?
    );
    rt.shutdown().await;
    if record.status == TaskStatus::Completed {
        Ok(())
    } else {
        Err(format!("map ended {}", record.status).into())
    }
}
