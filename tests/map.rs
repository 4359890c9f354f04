//! Parallel maps on real `python3` containers: ordering, paging, crashes,
//! retries, cancellation and the concurrency limit.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use modal_agents::spec::RetryPolicy;
use modal_agents::{FunctionSpec, Runtime, TaskId, TaskStatus};
use serde_json::{json, Map, Value};

/// Reads every result of a finished map, page by page.
async fn all_results(rt: &Runtime, id: TaskId, page: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut offset = Some(0);
    while let Some(at) = offset {
        let p = rt.results(id, at, page).await.unwrap();
        assert_eq!(p.offset, at);
        out.extend(p.results);
        offset = p.next_offset;
    }
    out
}

fn fast_retries(n: u32) -> RetryPolicy {
    RetryPolicy::new(n).backoff(0.0, 1.0, 1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_of_ten_thousand_is_exact_and_ordered() {
    let t = support::start(2).await;
    t.rt.deploy_function(FunctionSpec::new(
        "square",
        "def square(x):\n    return {'x': x, 'sq': x * x}\n",
    ))
    .await
    .unwrap();
    let n = 10_000u64;
    let id =
        t.rt.run_parallel("square", (0..n).map(|i| json!(i)).collect())
            .await
            .unwrap();
    let record = t.rt.wait(id, Some(Duration::from_secs(120))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Completed, "{record:?}");
    let progress = record.progress.unwrap();
    assert_eq!(
        (progress.total, progress.completed, progress.failed),
        (n, n, 0)
    );
    assert_eq!((progress.pending, progress.running), (0, 0));
    let results = all_results(&t.rt, id, 777).await;
    assert_eq!(results.len(), n as usize);
    for (i, r) in results.iter().enumerate() {
        let i = i as u64;
        assert_eq!(r, &json!({"x": i, "sq": i * i}), "slot {i}");
    }
    let last = t.rt.results(id, n - 1, 100).await.unwrap();
    assert_eq!(
        (last.results.len(), last.total, last.next_offset),
        (1, n, None)
    );
    t.rt.shutdown().await;
}

/// Each input passed as a list of positional arguments (a starmap) or an
/// object of keyword arguments; a failure's traceback starts in the
/// function's code, not in the harness; an input of the wrong shape is
/// refused before anything runs, naming its index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_as_args_or_kwargs() {
    use modal_agents::task::InputsAs;
    let t = support::start(2).await;
    let code = "def line(a, b=10, *, scale=1):\n    return (a * b + 1) * scale\n";
    t.rt.deploy_function(FunctionSpec::new("line", code))
        .await
        .unwrap();
    let run = |inputs: Vec<Value>, how| {
        let rt = t.rt.clone();
        async move {
            let id = rt.run_parallel_as("line", inputs, how).await.unwrap();
            rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
            all_results(&rt, id, 100).await
        }
    };
    let results = run(
        vec![json!([1, 2]), json!([3]), json!([1, 2, 3])],
        InputsAs::Args,
    )
    .await;
    assert_eq!(results[0], json!(3));
    assert_eq!(results[1], json!(31));
    assert_eq!(results[2]["error"]["type"], "TypeError", "{results:?}");
    let results = run(
        vec![
            json!({"a": 2}),
            json!({"a": 1, "b": 1, "scale": 5}),
            json!({"c": 1}),
        ],
        InputsAs::Kwargs,
    )
    .await;
    assert_eq!(results[0], json!(21));
    assert_eq!(results[1], json!(10));
    let error = &results[2]["error"];
    assert_eq!(error["type"], "TypeError", "{results:?}");
    assert!(
        error["message"].as_str().unwrap().contains("'c'"),
        "{error}"
    );
    assert!(
        !error["traceback"]
            .as_str()
            .unwrap_or("")
            .contains("harness"),
        "{error}"
    );
    // A failure inside the function: the traceback names its line.
    let results = run(vec![json!(["x", "y"])], InputsAs::Args).await;
    let traceback = results[0]["error"]["traceback"].as_str().unwrap();
    assert!(traceback.contains("in line"), "{traceback}");
    for (inputs, how, index) in [
        (vec![json!([1]), json!(2)], InputsAs::Args, 1),
        (
            vec![json!({"a": 1}), json!({"a": 1}), json!([1])],
            InputsAs::Kwargs,
            2,
        ),
    ] {
        let err =
            t.rt.run_parallel_as("line", inputs, how)
                .await
                .unwrap_err()
                .to_string();
        assert!(err.contains(&format!("inputs[{index}]")), "{err}");
    }
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_inputs_keep_their_slot_and_the_rest_succeed() {
    let t = support::start(2).await;
    let code = "def inv(x):\n    return 1 / x\n";
    t.rt.deploy_function(FunctionSpec::new("inv", code))
        .await
        .unwrap();
    let inputs = vec![json!(1), json!(0), json!(4), json!(0), json!(2)];
    let id = t.rt.run_parallel("inv", inputs).await.unwrap();
    let record = t.rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.error.as_ref().unwrap().kind, "MapInputsFailed");
    let progress = record.progress.unwrap();
    assert_eq!((progress.completed, progress.failed), (3, 2));
    let results = all_results(&t.rt, id, 10).await;
    assert_eq!(results[0], json!(1.0));
    assert_eq!(results[1]["error"]["type"], "ZeroDivisionError");
    assert_eq!(results[2], json!(0.25));
    assert_eq!(results[3]["error"]["type"], "ZeroDivisionError");
    assert_eq!(results[4], json!(0.5));
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_killed_from_outside_mid_map_loses_nothing() {
    let t = support::start(2).await;
    let code = "import time\ndef slow_double(x):\n    time.sleep(0.0004)\n    return x * 2\n";
    t.rt.deploy_function(FunctionSpec::new("slow_double", code).retry_policy(fast_retries(3)))
        .await
        .unwrap();
    let n = 10_000u64;
    let id =
        t.rt.run_parallel("slow_double", (0..n).map(|i| json!(i)).collect())
            .await
            .unwrap();
    let rt = t.rt.clone();
    support::eventually(Duration::from_secs(60), "map under way", move || {
        let rt = rt.clone();
        async move { rt.status(id).unwrap().progress.unwrap().completed > 1_000 }
    })
    .await;
    let victims = t.backend.container_pids();
    assert!(!victims.is_empty());
    assert_eq!(
        t.rt.status(id).unwrap().status,
        TaskStatus::Running,
        "killed mid-map"
    );
    for pid in &victims {
        support::kill(*pid, libc::SIGKILL);
    }
    let record = t.rt.wait(id, Some(Duration::from_secs(120))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Completed, "{record:?}");
    assert!(record.progress.unwrap().completed == n);
    let results = all_results(&t.rt, id, 4096).await;
    assert_eq!(results.len(), n as usize, "every result exactly once");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r, &json!(i as u64 * 2), "slot {i}");
    }
    let now: HashSet<u32> = t.backend.container_pids().into_iter().collect();
    assert!(
        victims.iter().all(|p| !now.contains(p)),
        "killed containers were replaced"
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_inputs_are_retried_then_isolated() {
    let t = support::start(2).await;
    // Input 5 kills its container on the first attempt only (a marker file in
    // a volume remembers); input 13 segfaults on every attempt.
    let code = r#"
import ctypes, json, os
def fragile(x):
    root = json.loads(os.environ["MODAL_AGENTS_VOLUMES"])["/state"]
    marker = os.path.join(root, "crashed-once")
    if x == 5 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    if x == 13:
        ctypes.string_at(0)
    return x + 100
"#;
    t.rt.deploy_function(
        FunctionSpec::new("fragile", code)
            .volume("/state", "fragile-state")
            .retry_policy(fast_retries(2)),
    )
    .await
    .unwrap();
    let id =
        t.rt.run_parallel("fragile", (0..40).map(|i| json!(i)).collect())
            .await
            .unwrap();
    let record = t.rt.wait(id, Some(Duration::from_secs(120))).await.unwrap();
    let progress = record.progress.unwrap();
    assert_eq!((progress.completed, progress.failed), (39, 1), "{record:?}");
    let results = all_results(&t.rt, id, 100).await;
    for (i, r) in results.iter().enumerate() {
        if i == 13 {
            assert_eq!(r["error"]["type"], "ContainerCrashed", "{r}");
            let message = r["error"]["message"].as_str().unwrap();
            assert!(message.contains("SIGSEGV"), "{message}");
        } else {
            assert_eq!(r, &json!(i + 100), "slot {i}");
        }
    }
    // A single call that crashes once succeeds on its retry, counting attempts.
    std::fs::remove_file(t.rt.volume_dir("fragile-state").join("crashed-once")).unwrap();
    let call =
        t.rt.spawn("fragile", vec![json!(5)], Map::new())
            .await
            .unwrap();
    let record =
        t.rt.wait(call, Some(Duration::from_secs(60)))
            .await
            .unwrap();
    assert_eq!(record.result, Some(json!(105)));
    assert_eq!(record.attempts, 2);
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_map_stops_it() {
    let t = support::start(2).await;
    let code = "import time\ndef tick(x):\n    time.sleep(0.01)\n    return x\n";
    t.rt.deploy_function(FunctionSpec::new("tick", code))
        .await
        .unwrap();
    let n = 10_000u64;
    let id =
        t.rt.run_parallel("tick", (0..n).map(|i| json!(i)).collect())
            .await
            .unwrap();
    let rt = t.rt.clone();
    support::eventually(Duration::from_secs(60), "some inputs done", move || {
        let rt = rt.clone();
        async move { rt.status(id).unwrap().progress.unwrap().completed >= 50 }
    })
    .await;
    let record = t.rt.cancel(id).await.unwrap();
    assert_eq!(record.status, TaskStatus::Cancelled);
    let progress = record.progress.unwrap();
    assert!(
        progress.completed < n && progress.completed >= 50,
        "{progress:?}"
    );
    assert_eq!(progress.running, 0);
    assert_eq!(progress.pending, n - progress.completed);
    // The results finished before the cancel stay readable, in order.
    let page = t.rt.results(id, 0, 50).await.unwrap();
    assert_eq!(page.results, (0..50).map(|i| json!(i)).collect::<Vec<_>>());
    // Nothing keeps running: the count does not move and the runtime serves new work.
    let frozen = t.rt.status(id).unwrap().progress.unwrap();
    assert_eq!(frozen, progress);
    assert_eq!(
        t.rt.call("tick", vec![json!(7)], Map::new()).await.unwrap(),
        json!(7)
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_call() {
    let t = support::start(1).await;
    let code = "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n";
    t.rt.deploy_function(FunctionSpec::new("nap", code))
        .await
        .unwrap();
    let id =
        t.rt.spawn("nap", vec![json!(300)], Map::new())
            .await
            .unwrap();
    let rt = t.rt.clone();
    support::eventually(Duration::from_secs(20), "call running", move || {
        let rt = rt.clone();
        async move { rt.status(id).unwrap().status == TaskStatus::Running }
    })
    .await;
    let started = std::time::Instant::now();
    let record = t.rt.cancel(id).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(record.status, TaskStatus::Cancelled);
    assert_eq!(record.error.unwrap().kind, "Cancelled");
    assert_eq!(
        t.rt.call("nap", vec![json!(0)], Map::new()).await.unwrap(),
        json!(0)
    );
    t.rt.shutdown().await;
}

/// Largest number of (start, end) intervals that overlap at one instant.
fn max_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut events: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut now, mut best) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        best = best.max(now);
    }
    best as usize
}

fn intervals(values: &[Value]) -> Vec<(f64, f64)> {
    values
        .iter()
        .map(|v| (v[0].as_f64().unwrap(), v[1].as_f64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_is_honoured() {
    let t = support::start(4).await;
    let code = "import time\ndef span(x):\n    s = time.time()\n    time.sleep(0.25)\n    return [s, time.time()]\n";
    t.rt.deploy_function(FunctionSpec::new("span", code).max_concurrency(2))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            t.rt.spawn("span", vec![json!(i)], Map::new())
                .await
                .unwrap(),
        );
    }
    let mut spans = Vec::new();
    for id in ids {
        spans.push(
            t.rt.wait(id, Some(Duration::from_secs(60)))
                .await
                .unwrap()
                .result
                .unwrap(),
        );
    }
    assert_eq!(
        max_overlap(&intervals(&spans)),
        2,
        "calls: at most 2 at once, and 2 used"
    );
    let map =
        t.rt.run_parallel("span", (0..8).map(|i| json!(i)).collect())
            .await
            .unwrap();
    t.rt.wait(map, Some(Duration::from_secs(60))).await.unwrap();
    let results = all_results(&t.rt, map, 100).await;
    assert_eq!(
        max_overlap(&intervals(&results)),
        2,
        "map: at most 2 at once"
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_inputs_with_unknown_total() {
    let t = support::start(2).await;
    t.rt.deploy_function(FunctionSpec::new("neg", "def neg(x):\n    return -x\n"))
        .await
        .unwrap();
    let inputs = futures_util::stream::iter((0..2_500).map(|i| json!(i)));
    let id = t.rt.run_parallel_stream("neg", inputs, None).await.unwrap();
    let record = t.rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.progress.unwrap().total, 2_500);
    let results = all_results(&t.rt, id, 1000).await;
    assert_eq!(results, (0..2_500).map(|i| json!(-i)).collect::<Vec<_>>());
    let empty = t.rt.run_parallel("neg", Vec::new()).await.unwrap();
    let record =
        t.rt.wait(empty, Some(Duration::from_secs(30)))
            .await
            .unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.progress.unwrap().total, 0);
    let page = t.rt.results(empty, 0, 10).await.unwrap();
    assert!(page.results.is_empty() && page.next_offset.is_none());
    let err = t.rt.results(TaskId::new(), 0, 10).await.unwrap_err();
    assert!(err.to_string().contains("no task"), "{err}");
    t.rt.shutdown().await;
}

/// Kills a random container of a 20,000-input map up to 100 times; every
/// input must still end with its one result (10 retries, and the function
/// never fails by itself).
async fn kill_containers_at_random(t: support::TestRuntime) {
    let code = "import time\ndef triple(x):\n    time.sleep(0.0002)\n    return x * 3\n";
    t.rt.deploy_function(FunctionSpec::new("triple", code).retry_policy(fast_retries(10)))
        .await
        .unwrap();
    let n = 20_000u64;
    let id =
        t.rt.run_parallel("triple", (0..n).map(|i| json!(i)).collect())
            .await
            .unwrap();
    let mut kills = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while kills < 100 && tokio::time::Instant::now() < deadline {
        if t.rt.status(id).unwrap().status.is_terminal() {
            break;
        }
        let pids = t.backend.container_pids();
        if let Some(pid) = pids.get(fastrand::usize(..pids.len().max(1))) {
            support::kill(*pid, libc::SIGKILL);
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(5 + fastrand::u64(..20))).await;
    }
    let record = t.rt.wait(id, Some(Duration::from_secs(180))).await.unwrap();
    assert!(kills >= 50, "the map outlived at least 50 kills ({kills})");
    assert_eq!(record.status, TaskStatus::Completed, "{record:?}");
    let results = all_results(&t.rt, id, 5000).await;
    assert_eq!(results.len() as u64, n);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r, &json!(i as u64 * 3), "slot {i}");
    }
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_random_container_kills_lose_and_duplicate_nothing() {
    kill_containers_at_random(support::start(2).await).await;
}

/// The same kills where a container takes ~90 ms to start (as sandboxed
/// containers, which have no standby, do on slower machines), so many kills
/// land on containers that are starting or idle: those charge no input an
/// attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_of_slow_starting_containers_charge_no_innocent_input() {
    use std::os::unix::fs::PermissionsExt;
    let slow = tempfile::tempdir().unwrap();
    let python = slow.path().join("slow-python");
    // The backend asks its interpreter for the real executable once; the
    // wrapper names itself there, so every container starts through it.
    std::fs::write(
        &python,
        "#!/bin/sh\ncase \"$2\" in *sys.base_prefix*) python3 \"$@\" | sed \"1s|.*|$0|\"; exit;; esac\nsleep 0.09\nexec python3 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A script outside the sandbox's mounts: containers run as plain
    // processes here, which is all the kills need.
    let t = support::start_with_config(modal_agents::compute::LocalConfig {
        pool_size: 2,
        python: Some(python),
        standby: 0,
        sandbox: modal_agents::compute::SandboxMode::Off,
        ..modal_agents::compute::LocalConfig::default()
    })
    .await;
    kill_containers_at_random(t).await;
}

/// One slow input holds back only so many bytes of later results (they
/// leave in input order): with input 0 stuck, the inputs after it that run
/// stop at about 64 MiB of results, not at the count of inputs the window
/// takes (65,536 of 32 KB each had been 2 GB); once it ends, all are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_input_holds_back_a_bounded_number_of_bytes() {
    let t = support::start(2).await;
    let code = r#"
import json, os, time
def held(x):
    root = json.loads(os.environ["MODAL_AGENTS_VOLUMES"])["/held"]
    if x == 0:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(root, "open")) and time.time() < deadline:
            time.sleep(0.01)
    else:
        with open(os.path.join(root, "runs"), "a") as f:
            f.write(".")
    return "y" * 65536
"#;
    t.rt.deploy_function(FunctionSpec::new("held", code).volume("/held", "held"))
        .await
        .unwrap();
    let n = 3000u64;
    let id =
        t.rt.run_parallel("held", (0..n).map(|i| json!(i)).collect())
            .await
            .unwrap();
    let runs = t.rt.volume_dir("held").join("runs");
    let count = || std::fs::metadata(&runs).map_or(0, |m| m.len());
    // Until the count of inputs run stops moving.
    let (mut last, mut since) = (u64::MAX, std::time::Instant::now());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while since.elapsed() < Duration::from_secs(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "runs never settled: {}",
            count()
        );
        if count() != last {
            (last, since) = (count(), std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 64 MiB held is 1,024 results of 64 KiB; batches in flight add at most
    // 4 x 8 MiB more.
    assert!(
        last > 0 && last < 2000,
        "{last} inputs ran behind the stuck one"
    );
    std::fs::write(t.rt.volume_dir("held").join("open"), "").unwrap();
    let record = t.rt.wait(id, Some(Duration::from_secs(120))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Completed, "{record:?}");
    for at in [0, 1, n / 2, n - 1] {
        let page = t.rt.results(id, at, 1).await.unwrap();
        assert_eq!(
            page.results[0].as_str().map(str::len),
            Some(65536),
            "slot {at}"
        );
    }
    assert_eq!(count(), n - 1, "every other input ran once");
    t.rt.shutdown().await;
}

/// A function whose code can no longer start (its import now exits, or
/// crashes in C) fails a map at once, each input with
/// `ContainerStartFailed` saying why: a start that fails by its own doing
/// is not retried as if killed from outside (each input had been tried a
/// hundred times), and after three in a row none is tried for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_can_no_longer_start_fails_its_map_at_once() {
    let t = support::start(2).await;
    for (name, breaks, says) in [
        ("exits", "os._exit(9)", "code 9"),
        ("crashes", "import ctypes; ctypes.string_at(0)", "SIGSEGV"),
    ] {
        let code = format!(
            "import json, os\nif os.path.exists(os.path.join(json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/flag'], '{name}')):\n    {breaks}\ndef {name}(x):\n    return x\n"
        );
        t.rt.deploy_function(FunctionSpec::new(name, code).volume("/flag", "flag"))
            .await
            .unwrap();
        std::fs::write(t.rt.volume_dir("flag").join(name), "").unwrap();
        // The containers started before: gone, so every input needs a new one.
        for pid in t.backend.container_pids() {
            support::kill(pid, libc::SIGKILL);
        }
        let n = 100u64;
        let id =
            t.rt.run_parallel(name, (0..n).map(|i| json!(i)).collect())
                .await
                .unwrap();
        let record = t.rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
        assert!(record.status.is_terminal(), "{record:?}");
        assert_eq!(record.progress.unwrap().failed, n, "{name}: {record:?}");
        for r in all_results(&t.rt, id, 100).await {
            assert_eq!(r["error"]["type"], "ContainerStartFailed", "{r}");
            let message = r["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{name}: {message}");
        }
    }
    t.rt.shutdown().await;
}

/// Starts that keep failing do not fail inputs a container still alive can
/// run: once the pool stops starting new ones, inputs wait for the one it
/// has (only the inputs whose own starts failed are charged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_wait_for_a_live_container_when_starts_keep_failing() {
    let t = support::start(2).await;
    // Input 0 keeps the live container busy for a second, while the other
    // batches try (and fail) to start their own.
    let code = "import json, os, time\nif os.path.exists(os.path.join(json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/flag'], 'broken')):\n    os._exit(9)\ndef g(x):\n    if x == 0:\n        time.sleep(1)\n    return x * 2\n";
    t.rt.deploy_function(FunctionSpec::new("g", code).volume("/flag", "flag"))
        .await
        .unwrap();
    // The container the deploy warmed stays; any new one exits at import.
    std::fs::write(t.rt.volume_dir("flag").join("broken"), "").unwrap();
    let n = 50u64;
    let id =
        t.rt.run_parallel("g", (0..n).map(|i| json!(i)).collect())
            .await
            .unwrap();
    let record = t.rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
    let progress = record.progress.unwrap();
    assert!(
        progress.failed <= 3,
        "only the inputs whose own starts failed: {progress:?}"
    );
    assert_eq!(progress.completed + progress.failed, n);
    for (i, r) in all_results(&t.rt, id, 100).await.iter().enumerate() {
        if r.get("error").is_none() {
            assert_eq!(r, &json!(i as u64 * 2), "slot {i}");
        }
    }
    t.rt.shutdown().await;
}
