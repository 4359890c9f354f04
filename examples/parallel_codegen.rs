//! Parallel code generation (the seed's pattern 2): three codegen agents turn
//! component specs into a Python package and a Rust crate on a volume; every
//! Python component is compiled and imported in a container before it is
//! accepted, and the finished package is imported as a whole.
//!
//! Run: `cargo run --release --example parallel_codegen`
//! (`MODAL_AGENTS_DATA_DIR` picks the data dir; default `./modal-agents-data`.)

use std::sync::Arc;

use modal_agents::agents::{CodegenTask, TemplateGenerator};
use modal_agents::runtime::DEFAULT_DATA_DIR;
use modal_agents::Runtime;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let data_dir =
        std::env::var("MODAL_AGENTS_DATA_DIR").unwrap_or_else(|_| DEFAULT_DATA_DIR.into());
    let rt = Runtime::builder().data_dir(&data_dir).start().await?;
    let agents = rt.agents();
    let mut codegen = Vec::new();
    for i in 1..=3 {
        codegen.push(
            agents
                .spawn_codegen(
                    &format!("codegen-{i}"),
                    Arc::new(TemplateGenerator),
                    "codegen",
                )
                .await?,
        );
    }

    let tasks: Vec<CodegenTask> = serde_json::from_value(json!([
        {"component": "Processor", "type": "class", "spec": {
            "doc": "Cleans and counts records.",
            "fields": [{"name": "name", "type": "str"}, {"name": "processed", "type": "int", "default": 0}],
            "methods": [{"name": "process", "args": [{"name": "record", "type": "dict"}], "returns": "dict",
                         "doc": "Strip string values and count the record.",
                         "body": "self.processed += 1\nreturn {k: v.strip() if isinstance(v, str) else v for k, v in record.items()}"}]}},
        {"component": "Client", "type": "class", "spec": {
            "doc": "Builds API URLs.",
            "fields": [{"name": "base_url", "type": "str"}, {"name": "timeout", "type": "float", "default": 30.0}],
            "methods": [{"name": "url", "args": [{"name": "path", "type": "str"}], "returns": "str",
                         "body": "return self.base_url.rstrip('/') + '/' + path.lstrip('/')"}]}},
        {"component": "checksum", "type": "function", "spec": {
            "doc": "Adler-32 of a text.",
            "args": [{"name": "text", "type": "str"}], "returns": "int",
            "body": "import zlib\nreturn zlib.adler32(text.encode())"}},
        {"component": "settings", "type": "module", "spec": {
            "doc": "Shared settings.",
            "constants": {"MAX_BATCH": 512, "REGION": "eu"},
            "functions": [{"name": "batch_size", "args": [{"name": "n", "type": "int"}], "returns": "int",
                           "body": "return max(1, min(n, MAX_BATCH))"}]}},
        {"component": "Event", "type": "class", "language": "rust", "spec": {
            "doc": "An event record.",
            "fields": [{"name": "id", "type": "int"}, {"name": "kind", "type": "str"}],
            "methods": [{"name": "is_error", "returns": "bool", "body": "self.kind == \"error\""}]}},
        {"component": "clamp", "type": "function", "language": "rust", "spec": {
            "args": [{"name": "x", "type": "int"}, {"name": "hi", "type": "int"}], "returns": "int",
            "body": "x.clamp(0, hi)"}}
    ]))?;
    println!(
        "generating {} components with {} agents",
        tasks.len(),
        codegen.len()
    );
    let report = agents
        .generate_package("agentkit", "codegen", tasks, &codegen)
        .await?;
    for c in &report.components {
        println!(
            "  {:<10} {:<7} {:>3} lines  {:<28} by {}",
            c.component,
            format!("{:?}", c.language).to_lowercase(),
            c.lines,
            c.path,
            c.agent
        );
    }
    for f in &report.failures {
        println!("  rejected: {} ({})", f["component"], f["error"]);
    }
    if let Some(py) = &report.python {
        println!(
            "python package: {} imports cleanly: {}, exports {}",
            py["init"], py["imports_cleanly"], py["exports"]
        );
    }
    if let Some(rs) = &report.rust {
        println!(
            "rust crate: {} parses: {}, modules {}",
            rs["lib"], rs["parses"], rs["modules"]
        );
    }
    println!(
        "files in volume `codegen` under {}",
        rt.volume_dir("codegen").display()
    );
    rt.shutdown().await;
    let ok = report.failures.is_empty()
        && report
            .python
            .as_ref()
            .is_some_and(|p| p["imports_cleanly"] == json!(true));
    if ok {
        Ok(())
    } else {
        Err("code generation had failures".into())
    }
}
