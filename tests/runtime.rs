//! The runtime against real `python3` containers: deploy, call, errors,
//! secrets, volumes, logs, supervision and shutdown.

mod support;

use std::time::Duration;

use modal_agents::runtime::RuntimeChild;
use modal_agents::{FunctionSpec, RuntimeError, SpecError, TaskStatus};
use serde_json::{json, Map, Value};

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_call_with_args_and_kwargs() {
    let t = support::start(2).await;
    let info = t
        .rt
        .deploy_function(FunctionSpec::new(
            "greet",
            "def greet(name, punctuation='.', *, times=1):\n    print('greeting', name)\n    return (f'hello {name}' + punctuation) * times\n",
        ))
        .await
        .unwrap();
    assert_eq!(info.function_name, "greet");
    assert_eq!(t.rt.functions().len(), 1);

    let out =
        t.rt.call("greet", vec![json!("ada")], Map::new())
            .await
            .unwrap();
    assert_eq!(out, json!("hello ada."));
    let out =
        t.rt.call(
            "greet",
            vec![json!("bo"), json!("!")],
            kwargs(json!({"times": 2})),
        )
        .await
        .unwrap();
    assert_eq!(out, json!("hello bo!hello bo!"));

    let id =
        t.rt.spawn("greet", vec![json!("cy")], Map::new())
            .await
            .unwrap();
    let record = t.rt.wait(id, Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.result, Some(json!("hello cy.")));
    assert_eq!(record.attempts, 1);
    assert!(record.started_at.is_some() && record.finished_at.is_some());
    assert!(
        record.backend_call_id.is_none(),
        "a local call keeps no id: it names nothing after the call"
    );
    let logs = t.rt.logs(id).await.unwrap();
    assert_eq!(logs.stdout, "greeting cy\n");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_functions_and_none_results() {
    let t = support::start(1).await;
    let code = "import asyncio\nasync def slow_add(a, b):\n    await asyncio.sleep(0.01)\n    return a + b\n";
    t.rt.deploy_function(FunctionSpec::new("slow_add", code))
        .await
        .unwrap();
    let out =
        t.rt.call("slow_add", vec![json!(2), json!(3)], Map::new())
            .await
            .unwrap();
    assert_eq!(out, json!(5));
    t.rt.deploy_function(FunctionSpec::new("nothing", "def nothing():\n    pass\n"))
        .await
        .unwrap();
    assert_eq!(
        t.rt.call("nothing", vec![], Map::new()).await.unwrap(),
        Value::Null
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_become_task_errors_with_traceback() {
    let t = support::start(1).await;
    let code =
        "def check(x):\n    if x < 0:\n        raise ValueError(f'negative: {x}')\n    return x\n";
    t.rt.deploy_function(FunctionSpec::new("check", code))
        .await
        .unwrap();
    let err =
        t.rt.call("check", vec![json!(-4)], Map::new())
            .await
            .unwrap_err();
    let RuntimeError::TaskFailed { task_id, error } = err else {
        panic!("{err:?}")
    };
    assert_eq!(error.kind, "ValueError");
    assert_eq!(error.message, "negative: -4");
    let tb = error.traceback.expect("a traceback");
    assert!(tb.contains("check.py\", line 3, in check"), "{tb}");
    assert!(tb.contains("raise ValueError"), "source line shown: {tb}");
    assert!(!tb.contains("harness"), "harness frames hidden: {tb}");
    let record = t.rt.status(task_id).unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    // The container survives an exception and keeps serving.
    assert_eq!(
        t.rt.call("check", vec![json!(4)], Map::new())
            .await
            .unwrap(),
        json!(4)
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_errors_are_reported_at_deploy() {
    let t = support::start(1).await;
    let err =
        t.rt.deploy_function(FunctionSpec::new(
            "f",
            "def f(x):\n    return (x +\n\ndef g(: pass\n",
        ))
        .await
        .unwrap_err();
    match err {
        RuntimeError::Spec(SpecError::Syntax { line, column, .. }) => {
            assert!(line >= 2, "line {line}");
            assert!(column >= 1, "column {column}");
        }
        other => panic!("{other:?}"),
    }
    let err =
        t.rt.deploy_function(FunctionSpec::new("f", "def g(x):\n    return x\nh = 3\n"))
            .await
            .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RuntimeError::Spec(SpecError::MissingFunction { .. })),
        "{err:?}"
    );
    assert!(text.contains("`f`") && text.contains("g"), "{text}");
    let err =
        t.rt.deploy_function(FunctionSpec::new(
            "f",
            "import no_such_module_xyz\ndef f(): pass\n",
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ModuleNotFoundError"), "{err}");
    let err =
        t.rt.deploy_function(FunctionSpec::new("f", "def f(): pass").timeout_s(0))
            .await;
    assert!(err.unwrap_err().to_string().contains("timeout_s"));
    assert!(
        t.rt.functions().is_empty(),
        "nothing registered after failed deploys"
    );
    let err = t.rt.spawn("f", vec![], Map::new()).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::UnknownFunction(ref f) if f == "f"),
        "{err:?}"
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_results_are_clear_task_errors() {
    let t = support::start(1).await;
    let code = r#"
import collections, enum, math
class Color(enum.IntEnum):
    RED = 1
Point = collections.namedtuple("Point", "x y")
def odd(kind):
    return {
        "set": {1, 2}, "nan": math.nan, "obj": object(), "bytes": b"x", "nested": {"a": [1, {2}]},
        "enum": Color.RED, "ordered": collections.OrderedDict(b=1, a=2), "point": Point(1, 2),
        "int_keys": {1: "one", None: "none"},
    }[kind]
"#;
    t.rt.deploy_function(FunctionSpec::new("odd", code))
        .await
        .unwrap();
    // What JSON can hold comes back as JSON would have it.
    for (kind, expected) in [
        ("enum", json!(1)),
        ("ordered", json!({"b": 1, "a": 2})),
        ("point", json!([1, 2])),
        ("int_keys", json!({"1": "one", "null": "none"})),
    ] {
        let out =
            t.rt.call("odd", vec![json!(kind)], Map::new())
                .await
                .unwrap();
        assert_eq!(out, expected, "{kind}");
    }
    for kind in ["set", "nan", "obj", "bytes", "nested"] {
        let err =
            t.rt.call("odd", vec![json!(kind)], Map::new())
                .await
                .unwrap_err();
        let RuntimeError::TaskFailed { error, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(error.kind, "ResultNotSerializable", "{kind}");
        assert!(
            error.message.contains("not JSON-serializable"),
            "{}",
            error.message
        );
    }
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_and_replaces_the_container() {
    let t = support::start(1).await;
    let code = "import time, uuid\nCONTAINER = uuid.uuid4().hex\ndef nap(s):\n    time.sleep(s)\n    return CONTAINER\n";
    t.rt.deploy_function(FunctionSpec::new("nap", code).timeout_s(1))
        .await
        .unwrap();
    let before = t.rt.call("nap", vec![json!(0)], Map::new()).await.unwrap();
    let old_pids = t.backend.container_pids();
    assert!(!old_pids.is_empty());
    let started = std::time::Instant::now();
    let err =
        t.rt.call("nap", vec![json!(60)], Map::new())
            .await
            .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    let RuntimeError::TaskFailed { error, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(error.kind, "TimeoutError");
    support::eventually(
        Duration::from_secs(10),
        "timed-out container gone",
        || async {
            let alive = support::processes_with(t.backend.instance_tag());
            !old_pids.iter().any(|p| alive.contains(p))
        },
    )
    .await;
    let after = t.rt.call("nap", vec![json!(0)], Map::new()).await.unwrap();
    assert_ne!(after, before, "a fresh container serves the next call");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_only_functions_that_declare_them() {
    let t = support::start(1).await;
    t.rt.secrets()
        .set("api-keys", [("API_TOKEN", "tok-123")])
        .unwrap();
    let code = "import os\ndef env(k):\n    return os.environ.get(k)\n";
    t.rt.deploy_function(
        FunctionSpec::new("with_secret", code)
            .entrypoint("env")
            .secret("api-keys"),
    )
    .await
    .unwrap();
    t.rt.deploy_function(FunctionSpec::new("without", code).entrypoint("env"))
        .await
        .unwrap();
    let get = |f: &'static str, k: &'static str| {
        let rt = t.rt.clone();
        async move { rt.call(f, vec![json!(k)], Map::new()).await.unwrap() }
    };
    assert_eq!(get("with_secret", "API_TOKEN").await, json!("tok-123"));
    assert_eq!(get("without", "API_TOKEN").await, Value::Null);
    // The runtime's own environment does not leak into containers.
    assert!(std::env::var("CARGO_PKG_NAME").is_ok() || std::env::var("PATH").is_ok());
    assert_eq!(get("without", "CARGO_MANIFEST_DIR").await, Value::Null);
    let err =
        t.rt.deploy_function(
            FunctionSpec::new("needs", code)
                .entrypoint("env")
                .secret("nope"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Secret(_)), "{err:?}");
    assert!(err.to_string().contains("unknown secret `nope`"), "{err}");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_shared_directories() {
    let t = support::start(1).await;
    let code = r#"
import json, os
def save(name, text):
    root = json.loads(os.environ["MODAL_AGENTS_VOLUMES"])["/data"]
    with open(os.path.join(root, name), "w") as f:
        f.write(text)
    return sorted(os.listdir(root))
"#;
    t.rt.deploy_function(FunctionSpec::new("save", code).volume("/data", "shared"))
        .await
        .unwrap();
    let listing =
        t.rt.call("save", vec![json!("a.txt"), json!("hi")], Map::new())
            .await
            .unwrap();
    assert_eq!(listing, json!(["a.txt"]));
    let on_host = std::fs::read_to_string(t.rt.volume_dir("shared").join("a.txt")).unwrap();
    assert_eq!(on_host, "hi");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_volume_store_is_restarted_without_losing_state() {
    let t = support::start(1).await;
    t.rt.deploy_function(FunctionSpec::new("inc", "def inc(x):\n    return x + 1\n"))
        .await
        .unwrap();
    let first = t.rt.spawn("inc", vec![json!(1)], Map::new()).await.unwrap();
    t.rt.wait(first, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    t.rt.volumes().write("kept", "k", json!(1)).await.unwrap();
    t.rt.inject_fault(RuntimeChild::Volumes);
    let rt = t.rt.clone();
    support::eventually(
        Duration::from_secs(10),
        "volume store restarted",
        move || {
            let rt = rt.clone();
            async move { rt.restarts().await.unwrap() == 1 }
        },
    )
    .await;
    assert!(t.rt.is_running());
    // Nothing lost: functions, records and volume state are intact, and
    // the restarted store serves new work.
    assert_eq!(t.rt.functions().len(), 1);
    assert_eq!(t.rt.status(first).unwrap().result, Some(json!(2)));
    assert_eq!(
        t.rt.volumes()
            .read("kept", "k")
            .await
            .unwrap()
            .unwrap()
            .value,
        json!(1)
    );
    let out = t.rt.call("inc", vec![json!(5)], Map::new()).await.unwrap();
    assert_eq!(out, json!(6));
    t.rt.shutdown().await;
}

/// A volume that fails more often than its budget allows is given up on,
/// not escalated: the runtime goes on, and the next use opens the volume
/// afresh from its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_failing_past_its_budget_is_reopened_not_escalated() {
    let (rt, _dir) = support::start_strict().await;
    rt.volumes().write("v", "k", json!(1)).await.unwrap();
    rt.inject_fault(RuntimeChild::Volumes);
    let probe = rt.clone();
    support::eventually(Duration::from_secs(10), "first restart", move || {
        let rt = probe.clone();
        async move { rt.restarts().await.unwrap_or(0) == 1 }
    })
    .await;
    // The second failure within the window spends the budget.
    rt.inject_fault(RuntimeChild::Volumes);
    let probe = rt.clone();
    support::eventually(Duration::from_secs(10), "volume reopened", move || {
        let rt = probe.clone();
        async move {
            rt.volumes()
                .read("v", "k")
                .await
                .is_ok_and(|v| v.is_some_and(|v| v.value == json!(1)))
        }
    })
    .await;
    assert!(rt.is_running());
    assert_eq!(rt.volumes().write("v", "k", json!(2)).await.unwrap(), 2);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_python_process_behind() {
    let t = support::start(2).await;
    let tag = t.backend.instance_tag().to_owned();
    t.rt.deploy_function(FunctionSpec::new(
        "nap",
        "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n",
    ))
    .await
    .unwrap();
    t.rt.deploy_function(FunctionSpec::new("idle", "def idle(): return 1\n"))
        .await
        .unwrap();
    let long_call =
        t.rt.spawn("nap", vec![json!(300)], Map::new())
            .await
            .unwrap();
    let map = t.rt.run_parallel("nap", vec![json!(300); 4]).await.unwrap();
    let rt = t.rt.clone();
    support::eventually(Duration::from_secs(20), "both tasks running", move || {
        let rt = rt.clone();
        async move {
            rt.status(map).unwrap().progress.unwrap().running > 0
                && rt.status(long_call).unwrap().status == TaskStatus::Running
        }
    })
    .await;
    assert!(
        support::processes_with(&tag).len() >= 2,
        "containers are up"
    );
    let started = std::time::Instant::now();
    t.rt.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown is prompt"
    );
    // Shutdown returns once each container's bubblewrap is reaped; what
    // ran inside its jail dies with it (PDEATHSIG, the pid namespace's
    // end) a moment later, which a loaded machine can make visible.
    support::eventually(Duration::from_secs(5), "no container left", || {
        let tag = tag.clone();
        async move { support::processes_with(&tag).is_empty() }
    })
    .await;
    assert!(t.backend.container_pids().is_empty());
    // A stop is not a cancel: the tasks are left unfinished, back to
    // pending with the attempt they were on not charged, for the next start
    // to resume (tests/recovery.rs).
    for id in [long_call, map] {
        let record = t.rt.status(id).unwrap();
        assert_eq!(record.status, TaskStatus::Pending);
        assert_eq!(record.attempts, 0, "{record:?}");
    }
    let err = t.rt.spawn("idle", vec![], Map::new()).await.unwrap_err();
    assert!(matches!(err, RuntimeError::ShutDown), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_packages_get_a_cached_environment() {
    let t = support::start(1).await;
    let code = "import six\ndef which():\n    return [six.__version__, six.__file__]\n";
    let spec = |name: &str| {
        FunctionSpec::new(name, code)
            .entrypoint("which")
            .python_package("six==1.16.0")
    };
    // Two deploys of the same package set at once build it once.
    let (a, b) = tokio::join!(
        t.rt.deploy_function(spec("six_a")),
        t.rt.deploy_function(spec("six_b"))
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(t.backend.image_builds(), 1);
    let out = t.rt.call("six_b", vec![], Map::new()).await.unwrap();
    assert_eq!(out[0], json!("1.16.0"));
    let file = out[1].as_str().unwrap();
    assert!(
        file.contains("/images/"),
        "imported from the environment: {file}"
    );
    let logs: Vec<_> = std::fs::read_dir(t.dir.path().join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".build.log"))
        .collect();
    assert_eq!(logs.len(), 1, "the build log is kept");
    // A package that does not exist fails the deploy with the installer's words.
    let bad = FunctionSpec::new("bad_pkg", "def bad_pkg(): pass")
        .python_package("modal-agents-no-such-package-xyz==0.0.1");
    let err = t.rt.deploy_function(bad).await.unwrap_err().to_string();
    assert!(err.contains("modal-agents-no-such-package-xyz"), "{err}");
    assert!(err.contains("installer exited"), "{err}");
    assert!(t.rt.function("bad_pkg").is_none());
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_checked_assigned_and_reported() {
    // No GPU here: a GPU function is refused naming what was asked and what exists.
    let t = support::start_with_gpus(1, vec![]).await;
    let err =
        t.rt.deploy_function(
            FunctionSpec::new("train", "def train(): pass").gpu("A100:2".parse().unwrap()),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("A100:2") && err.contains("no GPU"), "{err}");
    let cores = t.rt.capacity().cpus;
    let err =
        t.rt.deploy_function(FunctionSpec::new("big", "def big(): pass").cpu(cores + 1.0))
            .await
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("resources.cpu") && err.contains(&format!("this machine has {cores}")),
        "{err}"
    );
    let err =
        t.rt.request_compute_resources(cores * 4.0, 1.0, 60)
            .await
            .unwrap_err()
            .to_string();
    assert!(err.contains("resources.cpu"), "{err}");
    t.rt.request_compute_resources(0.5, 0.5, 60).await.unwrap();
    t.rt.shutdown().await;

    // Two declared GPUs: containers get their own device through CUDA_VISIBLE_DEVICES.
    let gpus = vec![
        modal_agents::compute::GpuDevice {
            index: 0,
            name: "Tesla T4".into(),
        },
        modal_agents::compute::GpuDevice {
            index: 1,
            name: "Tesla T4".into(),
        },
    ];
    let t = support::start_with_gpus(2, gpus).await;
    let code = "import os, time\ndef dev(s):\n    time.sleep(s)\n    return os.environ.get('CUDA_VISIBLE_DEVICES')\n";
    t.rt.deploy_function(
        FunctionSpec::new("dev", code)
            .gpu("T4".parse().unwrap())
            .max_concurrency(2),
    )
    .await
    .unwrap();
    let a =
        t.rt.spawn("dev", vec![json!(0.3)], Map::new())
            .await
            .unwrap();
    let b =
        t.rt.spawn("dev", vec![json!(0.3)], Map::new())
            .await
            .unwrap();
    let rt = t.rt.clone();
    support::eventually(Duration::from_secs(20), "both GPUs in use", move || {
        let rt = rt.clone();
        async move {
            rt.resources()
                .usage
                .is_some_and(|u| u.gpus.iter().all(|g| g.in_use))
        }
    })
    .await;
    let mut devices = vec![
        t.rt.wait(a, None).await.unwrap().result.unwrap(),
        t.rt.wait(b, None).await.unwrap().result.unwrap(),
    ];
    devices.sort_by_key(|d| d.to_string());
    assert_eq!(
        devices,
        [json!("0"), json!("1")],
        "each container has its own GPU"
    );
    let report = t.rt.resources();
    let usage = report.usage.unwrap();
    assert_eq!(report.capacity.gpus, ["Tesla T4", "Tesla T4"]);
    assert!(
        usage.cpu_used > 0.0 && usage.memory_used_mib >= 128,
        "{usage:?}"
    );
    let seed =
        t.rt.request_gpu_resources("T4", 1, Some("dev"))
            .await
            .unwrap();
    assert_eq!(seed.gpu.to_string(), "T4");
    assert_eq!(seed.function_name.as_deref(), Some("dev"));
    let err =
        t.rt.request_gpu_resources("H100", 1, None)
            .await
            .unwrap_err()
            .to_string();
    assert!(err.contains("Tesla T4"), "names what exists: {err}");
    t.rt.create_volume("models").await.unwrap();
    assert!(t
        .rt
        .volumes()
        .list_volumes()
        .contains(&"models".to_string()));
    t.rt.secrets().set("hf", [("HF_TOKEN", "t")]).unwrap();
    let info = t.rt.mount_secrets(&["hf".into()], "dev").await.unwrap();
    assert_eq!(info.spec.secrets, ["hf"]);
    assert!(t.rt.mount_secrets(&["nope".into()], "dev").await.is_err());
    t.rt.shutdown().await;
}

/// A line printed to each stream reaches a follower while the function
/// still runs (a timer sends waiting output), not when the next print comes
/// or the call ends; cancelled, the call keeps what it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_reaches_followers_while_the_function_sleeps() {
    use futures_util::StreamExt;
    let t = support::start(1).await;
    let code = "import sys, time\ndef quiet():\n    print('out-line')\n    print('err-line', file=sys.stderr)\n    time.sleep(30)\n";
    t.rt.deploy_function(FunctionSpec::new("quiet", code))
        .await
        .unwrap();
    let id = t.rt.spawn("quiet", vec![], Map::new()).await.unwrap();
    let started = std::time::Instant::now();
    let chunks = t.rt.follow_logs(id, Default::default()).unwrap();
    futures_util::pin_mut!(chunks);
    let (mut out, mut err) = (false, false);
    while !(out && err) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), chunks.next())
            .await
            .expect("a line within the function's sleep")
            .expect("the stream goes on while the task runs");
        out |= chunk.stream == "stdout" && chunk.text.contains("out-line");
        err |= chunk.stream == "stderr" && chunk.text.contains("err-line");
    }
    let took = started.elapsed();
    eprintln!("both lines followed after {took:?} (the function sleeps 30 s)");
    assert!(took < Duration::from_secs(5), "{took:?}");
    t.rt.cancel(id).await.unwrap();
    let logs = t.rt.logs(id).await.unwrap();
    assert!(
        logs.stdout.contains("out-line") && logs.stderr.contains("err-line"),
        "{logs:?}"
    );
    t.rt.shutdown().await;
}

/// Nothing printed is lost while the timer sends waiting output: a function
/// writing without pause (no line ends, so only the timer sends) gets every
/// character it wrote into its logs. A write landing while the timer sent
/// used to go to the list being sent and vanish (CI lost "out last").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_the_output_timer_are_all_kept() {
    let t = support::start(1).await;
    let code = "import sys, time\ndef chatter():\n    n = 0\n    end = time.monotonic() + 3\n    while n < 4000000 and time.monotonic() < end:\n        sys.stdout.write('x')\n        n += 1\n    return n\n";
    t.rt.deploy_function(FunctionSpec::new("chatter", code))
        .await
        .unwrap();
    let id = t.rt.spawn("chatter", vec![], Map::new()).await.unwrap();
    let written =
        t.rt.wait(id, Some(Duration::from_secs(60)))
            .await
            .unwrap()
            .result
            .unwrap()
            .as_u64()
            .unwrap() as usize;
    let logs = t.rt.logs(id).await.unwrap();
    let kept = logs.stdout.bytes().filter(|b| *b == b'x').count();
    eprintln!("{written} characters written, {kept} kept");
    assert!(written > 1000, "{written}");
    assert_eq!(kept, written, "characters lost or added");
    t.rt.shutdown().await;
}

/// What reaches file descriptor 2 rather than Python's `sys.stderr` (a
/// subprocess's output, `os.write(2, ...)`, a C extension) is in the
/// call's own logs, and only in its own: the next call on the same
/// container does not get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_on_file_descriptor_2_is_in_the_calls_own_logs() {
    let t = support::start(1).await;
    let code = "import os, subprocess\ndef noisy(tag):\n    os.write(2, ('fd2 ' + tag + '\\n').encode())\n    subprocess.run(['sh', '-c', 'echo sub-out ' + tag + '; echo; echo sub-err ' + tag + ' >&2'], check=True)\n    return tag\n";
    t.rt.deploy_function(FunctionSpec::new("noisy", code).max_concurrency(1))
        .await
        .unwrap();
    let mut logs = Vec::new();
    for tag in ["first", "second"] {
        let id =
            t.rt.spawn("noisy", vec![serde_json::json!(tag)], Map::new())
                .await
                .unwrap();
        let record = t.rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
        assert_eq!(record.status, TaskStatus::Completed, "{record:?}");
        // The lines reach the logs as the reader takes them from the pipe.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let stderr = loop {
            let stderr = t.rt.logs(id).await.unwrap().stderr;
            if stderr.contains(&format!("sub-err {tag}")) {
                break stderr;
            }
            assert!(std::time::Instant::now() < deadline, "{stderr:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        logs.push(stderr);
    }
    assert_eq!(
        logs[0], "fd2 first\nsub-out first\n\nsub-err first\n",
        "{logs:?}"
    );
    assert_eq!(
        logs[1], "fd2 second\nsub-out second\n\nsub-err second\n",
        "{logs:?}"
    );
    t.rt.shutdown().await;
}

/// 100,000 lines on file descriptor 2 (7 MB, under the 16 MiB log cap) all
/// reach the call's logs: sent a read at a time, not a message per line
/// (which lost a third of them and held ~64 bytes a line in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_file_descriptor_2_is_kept_whole() {
    let t = support::start(1).await;
    let code = "import os\ndef flood():\n    block = b''.join(b'line %06d ' % i + b'x' * 58 + b'\\n' for i in range(1000))\n    for _ in range(100):\n        os.write(2, block)\n    return 1\n";
    t.rt.deploy_function(FunctionSpec::new("flood", code))
        .await
        .unwrap();
    let id = t.rt.spawn("flood", vec![], Map::new()).await.unwrap();
    let record = t.rt.wait(id, Some(Duration::from_secs(120))).await.unwrap();
    assert_eq!(record.status, TaskStatus::Completed, "{record:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let stderr = t.rt.logs(id).await.unwrap().stderr;
        let lines = stderr.lines().filter(|l| l.starts_with("line ")).count();
        if lines >= 100_000 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines, 100_000);
    t.rt.shutdown().await;
}
