//! Runs every bundled example end to end (cargo builds them for `cargo test`)
//! in a fresh data dir, and checks what it reports.

use std::path::PathBuf;
use std::time::Duration;

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    profile_dir.join("examples").join(name)
}

async fn run(name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(example(name))
            .current_dir(dir.path())
            .env("MODAL_AGENTS_DATA_DIR", dir.path().join("data"))
            .env_remove("RUST_BACKTRACE")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} did not finish in 300 s"))
    .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_worker_example() {
    let out = run("master_worker").await;
    assert!(out.contains("tasks      480 completed, 0 failed"), "{out}");
    assert!(
        out.contains("supervisor restarted worker-"),
        "the planned crash happened: {out}"
    );
    let retries: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("retries"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a retries line");
    assert!(retries >= 1, "{out}");
    assert!(
        out.contains("aggregate  volume `agents`, key `jobs/"),
        "{out}"
    );
    assert_eq!(
        out.matches("  worker-").count(),
        4,
        "per-worker lines: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_codegen_example() {
    let out = run("parallel_codegen").await;
    assert!(out.contains("imports cleanly: true"), "{out}");
    assert!(out.contains("parses: true"), "{out}");
    assert!(!out.contains("rejected"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_repo_creation_example() {
    let out = run("parallel_repo_creation").await;
    assert_eq!(out.matches("(created)").count(), 4, "{out}");
    assert_eq!(out.matches("(already there)").count(), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sandbox_example() {
    let out = run("agent_sandbox").await;
    assert!(out.contains("attempt 1: Exited { code: 1 }"), "{out}");
    assert!(out.contains("AssertionError"), "{out}");
    assert!(out.contains("attempt 2: Exited { code: 0 }"), "{out}");
    assert_eq!(out.matches("tests pass").count(), 1, "{out}");
    assert!(
        out.contains("+    return max(set(xs), key=xs.count)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_and_hello_examples() {
    let out = run("embed").await;
    assert!(out.contains("total 9"), "{out}");
    let out = run("hello").await;
    assert!(out.contains("map completed"), "{out}");
}
