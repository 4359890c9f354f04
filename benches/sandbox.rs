//! Sandbox sessions at speed, one JSON line per figure:
//!
//! - `sandbox_create_to_first_exec`: create a sandbox and run `true` in it,
//!   p50/p99 over `BENCH_SANDBOX_N` (default 50) sandboxes, beside
//!   `bwrap_true`, a bare `bwrap ... true` on this machine;
//! - `sandbox_exec_true`: the round trip of `true` in a live sandbox;
//! - `sandbox_file_1mib`: a 1 MiB write and read back through the files API;
//! - `sandbox_snapshot` and `sandbox_fork`: a workdir of `BENCH_SANDBOX_FILES`
//!   files (default 10,000) holding 100 MiB, snapshotted (first time, and
//!   again unchanged) and forked once.
//!
//! Run: `cargo bench --bench sandbox`.

use std::time::Instant;

use modal_agents::wire::{CreateSandbox, ExecRequest};
use modal_agents::Runtime;

fn env_n(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn quantiles(mut us: Vec<f64>) -> (f64, f64) {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn truth() -> ExecRequest {
    ExecRequest {
        cmd: vec!["true".into()],
        wait_s: Some(30),
        ..Default::default()
    }
}

fn bare_bwrap(n: usize) -> (f64, f64) {
    let mut us = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let ok = std::process::Command::new("bwrap")
            .args([
                "--unshare-all",
                "--die-with-parent",
                "--ro-bind",
                "/usr",
                "/usr",
            ])
            .args([
                "--symlink",
                "usr/bin",
                "/bin",
                "--symlink",
                "usr/lib",
                "/lib",
            ])
            .args([
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
            ])
            .args(["--", "/usr/bin/true"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "bwrap runs");
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    quantiles(us)
}

#[tokio::main]
async fn main() {
    let n = env_n("BENCH_SANDBOX_N", 50) as usize;
    let files = env_n("BENCH_SANDBOX_FILES", 10_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .start()
        .await
        .expect("runtime");
    let sbx = rt.sandboxes();

    let (p50, p99) = bare_bwrap(n);
    println!("{{\"bench\":\"bwrap_true\",\"n\":{n},\"p50_us\":{p50:.0},\"p99_us\":{p99:.0}}}");

    let mut us = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let sb = sbx.create(CreateSandbox::default()).await.expect("create");
        let r = sbx.exec(&sb.sandbox_id, truth()).await.expect("exec");
        assert!(r.process.outcome.is_some_and(|o| o.success()));
        us.push(t.elapsed().as_secs_f64() * 1e6);
        sbx.terminate(&sb.sandbox_id).await.expect("terminate");
    }
    let (p50, p99) = quantiles(us);
    println!(
        "{{\"bench\":\"sandbox_create_to_first_exec\",\"n\":{n},\"p50_us\":{p50:.0},\"p99_us\":{p99:.0}}}"
    );

    let id = sbx
        .create(CreateSandbox::default())
        .await
        .expect("create")
        .sandbox_id;
    let mut us = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        sbx.exec(&id, truth()).await.expect("exec");
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (p50, p99) = quantiles(us);
    println!(
        "{{\"bench\":\"sandbox_exec_true\",\"n\":{n},\"p50_us\":{p50:.0},\"p99_us\":{p99:.0}}}"
    );

    let mib = vec![7u8; 1 << 20];
    let mut us = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        sbx.write_file(&id, "blob.bin", mib.clone())
            .await
            .expect("write");
        let back = sbx.read_file(&id, "blob.bin").await.expect("read");
        assert_eq!(back.len(), 1 << 20);
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (p50, p99) = quantiles(us);
    println!(
        "{{\"bench\":\"sandbox_file_1mib\",\"n\":{n},\"p50_us\":{p50:.0},\"p99_us\":{p99:.0}}}"
    );

    // A workdir of `files` files, 100 MiB in all, made inside the sandbox.
    let each = (100u64 << 20) / files;
    let script = format!(
        "import os\nfor i in range({files}):\n    d = 'tree/%03d' % (i % 100)\n    os.makedirs(d, exist_ok=True)\n    open('%s/f%d' % (d, i), 'wb').write(os.urandom({each}))\n"
    );
    let r = sbx
        .exec(
            &id,
            ExecRequest {
                cmd: vec!["python3".into(), "-c".into(), script],
                wait_s: Some(55),
                ..Default::default()
            },
        )
        .await
        .expect("fill");
    assert!(
        r.process.outcome.is_some_and(|o| o.success()),
        "fill: {:?}",
        r.stderr
    );
    for pass in ["first", "unchanged"] {
        let t = Instant::now();
        let snap = sbx.snapshot(&id).await.expect("snapshot");
        println!(
            "{{\"bench\":\"sandbox_snapshot\",\"pass\":\"{pass}\",\"files\":{},\"bytes\":{},\"new_bytes\":{},\"ms\":{:.0}}}",
            snap.files,
            snap.bytes,
            snap.new_bytes,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let t = Instant::now();
    let forked = sbx.fork(&id, 1).await.expect("fork");
    println!(
        "{{\"bench\":\"sandbox_fork\",\"files\":{files},\"count\":1,\"ms\":{:.0}}}",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(forked.sandboxes.len(), 1);
    rt.shutdown().await;
}
