//! Parallel repository creation (the seed's pattern 1): three repo-creator
//! agents create git repositories on a volume, each claimed through a
//! compare-and-swap so none is created twice, even when two agents get the
//! same config. Running it again is idempotent.
//!
//! Run: `cargo run --release --example parallel_repo_creation`
//! (`MODAL_AGENTS_DATA_DIR` picks the data dir; default `./modal-agents-data`.)

use modal_agents::agents::{RepoConfig, RepoCreatorConfig};
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
    let mut creators = Vec::new();
    for i in 1..=3 {
        let config = RepoCreatorConfig {
            author_name: format!("repo-agent-{i}"),
            ..RepoCreatorConfig::default()
        };
        creators.push(
            agents
                .spawn_repo_creator(&format!("repo-agent-{i}"), config)
                .await?,
        );
    }
    let mut configs: Vec<RepoConfig> = serde_json::from_value(json!([
        {"name": "billing-service", "files": {
            "README.md": "# billing-service\n\nInvoices and payments.\n",
            "src/app.py": "def handler(event):\n    return {'ok': True}\n",
            "requirements.txt": "requests\n"}},
        {"name": "web-frontend", "files": {
            "README.md": "# web-frontend\n", "package.json": "{\"name\": \"web-frontend\"}\n",
            "src/index.js": "console.log('hello');\n"}},
        {"name": "infra", "branch": "trunk", "message": "Bootstrap infrastructure", "files": {
            "main.tf": "terraform {}\n", "README.md": "# infra\n"}},
        {"name": "data-pipeline", "files": {"pipeline.py": "STEPS = ['extract', 'load']\n"}}
    ]))?;
    // The same config handed out twice: only one agent may create it.
    configs.push(configs[0].clone());
    println!(
        "creating {} repositories with {} agents",
        configs.len(),
        creators.len()
    );
    let results = agents.create_repos(configs, &creators).await;
    let mut failed = 0;
    for r in results {
        match r {
            Ok(r) => println!(
                "  {:<16} {} {}  {} files on {}  ({})",
                r.name,
                &r.commit[..12],
                r.branch,
                r.files,
                r.created_by,
                if r.created {
                    "created"
                } else {
                    "already there"
                }
            ),
            Err(e) => {
                failed += 1;
                println!("  failed: {e}");
            }
        }
    }
    println!("repositories under {}", rt.volume_dir("repos").display());
    rt.shutdown().await;
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} repositories failed").into())
    }
}
