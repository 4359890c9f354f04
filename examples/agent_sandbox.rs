//! An agent loop in a sandbox, the way a coding agent works: write code and
//! its tests, run the tests, read the failure, fix, run again until green;
//! then fork three variants of a change, keep the one whose tests pass and
//! print its diff against the starting point. The "model" here is a
//! template generator (a list of candidate edits), so it runs offline; the
//! loop only sees what a model would: the typed outcome and the test output.
//!
//! Run: `cargo run --release --example agent_sandbox`
//! (`MODAL_AGENTS_DATA_DIR` picks the data dir; default `./modal-agents-data`.)

use modal_agents::runtime::DEFAULT_DATA_DIR;
use modal_agents::wire::{CreateSandbox, ExecRequest, ExecResult, Outcome};
use modal_agents::{Runtime, Sandboxes};

const TESTS: &str = "import unittest\nfrom stats import mean, median\n\n\
class T(unittest.TestCase):\n    def test_mean(self):\n        self.assertEqual(mean([1, 2, 3, 4]), 2.5)\n\n    \
def test_median(self):\n        self.assertEqual(median([5, 1, 3]), 3)\n        self.assertEqual(median([4, 1, 3, 2]), 2.5)\n\n\
if __name__ == '__main__':\n    unittest.main()\n";

/// What the "model" writes, attempt by attempt: the first has a bug the
/// tests catch; the second fixes it.
const ATTEMPTS: &[&str] = &[
    "def mean(xs):\n    return sum(xs) // len(xs)\n\ndef median(xs):\n    xs = sorted(xs)\n    return xs[len(xs) // 2]\n",
    "def mean(xs):\n    return sum(xs) / len(xs)\n\ndef median(xs):\n    xs = sorted(xs)\n    n = len(xs)\n    mid = n // 2\n    return xs[mid] if n % 2 else (xs[mid - 1] + xs[mid]) / 2\n",
];

/// Three variants of a follow-up change (a `mode` function and its test):
/// only the last is right.
const VARIANTS: &[&str] = &[
    "\ndef mode(xs):\n    return max(xs)\n",
    "\ndef mode(xs):\n    return sorted(xs)[0]\n",
    "\ndef mode(xs):\n    return max(set(xs), key=xs.count)\n",
];

const MODE_TEST: &str = "import unittest\nfrom stats import mode\n\n\
class M(unittest.TestCase):\n    def test_mode(self):\n        self.assertEqual(mode([3, 1, 3, 2]), 3)\n        self.assertEqual(mode([1, 2, 2]), 2)\n        self.assertEqual(mode([7, 5, 5]), 5)\n";

async fn run_tests(sbx: &Sandboxes, id: &str) -> Result<ExecResult, Box<dyn std::error::Error>> {
    let run = ExecRequest {
        cmd: ["python3", "-m", "unittest", "-q"]
            .map(String::from)
            .to_vec(),
        timeout_s: Some(60),
        wait_s: Some(55),
        ..Default::default()
    };
    Ok(sbx.exec(id, run).await?)
}

fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap_or("")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir =
        std::env::var("MODAL_AGENTS_DATA_DIR").unwrap_or_else(|_| DEFAULT_DATA_DIR.to_owned());
    let rt = Runtime::builder().data_dir(&data_dir).start().await?;
    let sbx = rt.sandboxes().clone();
    let sb = sbx
        .create(CreateSandbox {
            timeout_s: Some(600),
            name: Some(format!("stats-agent-{}", std::process::id())),
            ..Default::default()
        })
        .await?;
    let id = sb.sandbox_id.clone();
    println!(
        "sandbox {id} (workdir {}, ends by {})",
        sb.workdir, sb.expires_at
    );
    sbx.write_file(&id, "test_stats.py", TESTS.as_bytes().to_vec())
        .await?;

    // Write, test, read the failure, fix, until green.
    let mut green = false;
    for (n, code) in ATTEMPTS.iter().enumerate() {
        sbx.write_file(&id, "stats.py", code.as_bytes().to_vec())
            .await?;
        let r = run_tests(&sbx, &id).await?;
        let outcome = r
            .process
            .outcome
            .clone()
            .unwrap_or(Outcome::Exited { code: -1 });
        let stderr = r.stderr.unwrap_or_default();
        println!("attempt {}: {outcome:?}: {}", n + 1, last_line(&stderr));
        if outcome.success() {
            green = true;
            break;
        }
        // What a model reads to fix its code: the failing assertion.
        if let Some(line) = stderr.lines().find(|l| l.starts_with("AssertionError")) {
            println!("  the tests say: {line}");
        }
    }
    if !green {
        return Err("no attempt made the tests pass".into());
    }
    let base = sbx.snapshot(&id).await?;
    println!(
        "green; snapshot {} ({} files)",
        base.snapshot_id, base.files
    );

    // Three variants of the next change, side by side; keep the one whose
    // tests pass.
    let forked = sbx.fork(&id, VARIANTS.len() as u32).await?;
    let mut winner = None;
    for (variant, child) in VARIANTS.iter().zip(&forked.sandboxes) {
        let cid = &child.sandbox_id;
        let code = format!("{}{variant}", ATTEMPTS[ATTEMPTS.len() - 1]);
        sbx.write_file(cid, "stats.py", code.into_bytes()).await?;
        sbx.write_file(cid, "test_mode.py", MODE_TEST.as_bytes().to_vec())
            .await?;
        let r = run_tests(&sbx, cid).await?;
        let ok = r.process.outcome.as_ref().is_some_and(Outcome::success);
        println!(
            "variant {cid}: {}",
            if ok { "tests pass" } else { "tests fail" }
        );
        if ok && winner.is_none() {
            winner = Some(cid.clone());
        } else {
            sbx.terminate(cid).await?;
        }
    }
    let winner = winner.ok_or("no variant passed its tests")?;
    let kept = sbx.snapshot(&winner).await?;
    let diff = sbx.diff(&base.snapshot_id, &kept.snapshot_id).await?;
    println!(
        "kept {winner}: {} added, {} changed, {} removed",
        diff.added.len(),
        diff.changed.len(),
        diff.removed.len()
    );
    for change in diff.added.iter().chain(&diff.changed) {
        if let Some(text) = &change.diff {
            print!("{text}");
        }
    }
    sbx.terminate(&winner).await?;
    sbx.terminate(&id).await?;
    rt.shutdown().await;
    Ok(())
}
