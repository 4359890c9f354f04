//! The smallest useful embedding of modal-agents in an agent program: start a
//! runtime, deploy a function from a code string, fan it out over inputs, and
//! keep shared state in a volume.
//!
//! Run: `cargo run --release --example embed`

use modal_agents::{FunctionSpec, Runtime};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join("modal-agents-embed");
    let rt = Runtime::builder().data_dir(&dir).start().await?;

    rt.deploy_function(FunctionSpec::new(
        "word_count",
        "def word_count(text):\n    return len(text.split())\n",
    ))
    .await?;
    let docs = ["the quick brown fox", "jumps over", "the lazy dog"];
    let map = rt
        .run_parallel("word_count", docs.iter().map(|d| json!(d)).collect())
        .await?;
    rt.wait(map, None).await?;
    let counts = rt.results(map, 0, 100).await?.results;
    let total: u64 = counts.iter().filter_map(|c| c.as_u64()).sum();

    let version = rt
        .volumes()
        .write("notes", "word-total", json!(total))
        .await?;
    println!("counts {counts:?}, total {total} (stored as version {version} of notes/word-total)");
    rt.shutdown().await;
    Ok(())
}
