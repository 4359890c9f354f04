//! The agent tools over a runtime on a ScriptedBackend (functions are Rust
//! closures, no python3), called the way an LLM would call them.

mod support;

use modal_agents::tools::CommandError;
use modal_agents::{Runtime, Tools};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_tool_flow() {
    let t = support::scripted(&[]).await;
    t.scripts
        .script("square", |a, _| Ok(json!(a[0].as_i64().unwrap().pow(2))))
        .script("train", |a, kw| {
            Ok(json!({"steps": a[0], "lr": kw.get("lr").cloned().unwrap_or(json!(0.1))}))
        });
    let tools = Tools::new(t.rt.clone());
    let defs = tools.definitions();
    let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "deploy_modal_function",
            "spawn_parallel_tasks",
            "request_gpu_task",
            "coordinate_state"
        ],
        "the seed's four first"
    );
    assert_eq!(
        names.len(),
        27,
        "the seed's, the task and volume tools and the sandbox tools"
    );
    for d in &defs {
        let props = d.input_schema["properties"].as_object().unwrap();
        let required = d.input_schema["required"].as_array().cloned();
        for required in required.unwrap_or_default() {
            assert!(
                props.contains_key(required.as_str().unwrap()),
                "{}: {required}",
                d.name
            );
        }
    }

    let deployed = tools
        .call(
            "deploy_modal_function",
            json!({"function_code": "def square(x):\n    return x * x\n", "function_name": "square",
                   "timeout": 60, "volumes": ["scratch"], "retries": 1}),
        )
        .await
        .unwrap();
    assert_eq!(deployed["status"], "registered");
    assert_eq!(
        t.rt.function("square").unwrap().spec.volumes["/volumes/scratch"],
        "scratch"
    );

    let out = tools
        .call(
            "spawn_parallel_tasks",
            json!({"function_name": "square", "inputs": [1, 2, 3, 4], "wait": true}),
        )
        .await
        .unwrap();
    assert_eq!(
        (out["num_tasks"].clone(), out["status"].clone()),
        (json!(4), json!("completed"))
    );
    assert_eq!(out["results"], json!([1, 4, 9, 16]));
    let pending = tools
        .call(
            "spawn_parallel_tasks",
            json!({"function_name": "square", "inputs": [5]}),
        )
        .await
        .unwrap();
    // Without wait (the default, as for every tool that takes it): the
    // map's id at once.
    assert_eq!(pending["status"], "pending");
    let id = pending["task_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        t.rt.wait(id, None).await.unwrap().status,
        modal_agents::TaskStatus::Completed
    );

    tools
        .call(
            "deploy_modal_function",
            json!({"function_code": "def train(steps, lr=0.1):\n    return {'steps': steps, 'lr': lr}\n",
                   "function_name": "train", "gpu": "T4"}),
        )
        .await
        .unwrap();
    let gpu = tools
        .call(
            "request_gpu_task",
            json!({"function_ref": "train", "args": [10], "kwargs": {"lr": 0.5}}),
        )
        .await
        .unwrap();
    assert_eq!(gpu["result"], json!({"steps": 10, "lr": 0.5}));
    assert_eq!(gpu["gpu"], "T4");
    let err = tools
        .call("request_gpu_task", json!({"function_name": "square"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommandError::InvalidArguments { field, .. } if field == "function_name"),
        "{err}"
    );

    let state = |args| tools.call("coordinate_state", args);
    let w = state(
        json!({"volume_name": "team", "operation": "write", "key": "plan", "value": {"step": 1}}),
    )
    .await
    .unwrap();
    assert_eq!(w["version"], 1);
    let r = state(json!({"volume_name": "team", "operation": "read", "key": "plan"}))
        .await
        .unwrap();
    assert_eq!(
        (r["value"].clone(), r["version"].clone()),
        (json!({"step": 1}), json!(1))
    );
    // The seed's `data` is accepted for `value`.
    let c = state(json!({"volume_name": "team", "operation": "cas", "key": "plan", "data": {"step": 2}, "expected_version": 1})).await.unwrap();
    assert_eq!(c["version"], 2);
    let stale = state(json!({"volume_name": "team", "operation": "cas", "key": "plan", "data": {"step": 3}, "expected_version": 1})).await;
    assert!(stale.unwrap_err().to_string().contains("version conflict"));
    // Versions start at 1: 0 is refused naming the field (it was taken for
    // a conflict with "absent").
    let zero = state(json!({"volume_name": "team", "operation": "cas", "key": "plan", "value": 1, "expected_version": 0})).await;
    let zero = zero.unwrap_err().to_string();
    assert!(
        zero.contains("`expected_version`") && zero.contains("got 0"),
        "{zero}"
    );
    let l = state(json!({"volume_name": "team", "operation": "list", "key": "pl"}))
        .await
        .unwrap();
    assert_eq!(l["keys"], json!(["plan"]));
    // `prefix`, as list_volume_files names it, says the same for a list.
    let l = state(json!({"volume_name": "team", "operation": "list", "prefix": "pl"}))
        .await
        .unwrap();
    assert_eq!(l["keys"], json!(["plan"]));
    let d = state(json!({"volume_name": "team", "operation": "delete", "key": "plan"}))
        .await
        .unwrap();
    assert_eq!(d["deleted"], true);
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_name_the_field() {
    let t = support::scripted(&["nope"]).await;
    let tools = Tools::new(t.rt.clone());
    let field_of = |e: CommandError| match e {
        CommandError::InvalidArguments { field, .. } => field,
        other => panic!("{other}"),
    };
    let cases = [
        (
            "deploy_modal_function",
            json!({"function_name": "f"}),
            "function_code",
        ),
        (
            "deploy_modal_function",
            json!({"function_code": "def f(): pass", "function_name": "f", "timeout": 0}),
            "timeout",
        ),
        (
            "deploy_modal_function",
            json!({"function_code": "def f(): pass", "function_name": "f", "gpu": "V100"}),
            "gpu",
        ),
        (
            "deploy_modal_function",
            json!({"function_code": "def f(): pass", "function_name": "f", "image_packages": ["-e ."]}),
            "image_packages[0]",
        ),
        (
            "deploy_modal_function",
            json!({"function_code": "def f(): pass", "function_name": "f", "timeout": "soon"}),
            "timeout",
        ),
        (
            "deploy_modal_function",
            json!({"function_code": "def f(): pass", "function_name": "f", "scaledown_window": 0}),
            "scaledown_window",
        ),
        (
            "deploy_modal_function",
            json!({"function_code": "def f(): pass", "function_name": "f", "max_concurrency": 1, "min_containers": 2}),
            "min_containers",
        ),
        (
            "deploy_modal_function",
            json!({"function_code": "def f(): pass", "function_name": "f", "memory": [1024, 512]}),
            "memory[1]",
        ),
        (
            "deploy_modal_function",
            json!({"function_code": "def f(): pass", "function_name": "f", "memory": {"lots": true}}),
            "memory",
        ),
        (
            "spawn_parallel_tasks",
            json!({"function_ref": "f"}),
            "inputs",
        ),
        (
            "coordinate_state",
            json!({"volume_name": "v", "operation": "read"}),
            "key",
        ),
        (
            "coordinate_state",
            json!({"volume_name": "v", "operation": "write", "key": "k"}),
            "value",
        ),
        (
            "coordinate_state",
            json!({"volume_name": "v", "operation": "read", "key": "k", "bogus": 1}),
            "bogus",
        ),
    ];
    for (tool, args, field) in cases {
        let err = tools.call(tool, args.clone()).await.unwrap_err();
        let text = err.to_string();
        assert_eq!(field_of(err), field, "{tool} {args}: {text}");
    }
    let err = tools
        .call("rm_rf", json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown tool `rm_rf`") && err.contains("coordinate_state"),
        "{err}"
    );
    let err = tools
        .call(
            "spawn_parallel_tasks",
            json!({"function_ref": "nope", "inputs": []}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`nope` is not deployed"), "{err}");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retry_return_the_first_answer() {
    let t = support::scripted(&[]).await;
    t.scripts
        .script("inc", |a, _| Ok(json!(a[0].as_i64().unwrap() + 1)));
    let tools = Tools::new(t.rt.clone());
    let deploy = json!({"function_code": "def inc(x):\n    return x + 1\n", "function_name": "inc",
                        "idempotency_key": "deploy-inc-1"});
    let first = tools
        .call("deploy_modal_function", deploy.clone())
        .await
        .unwrap();
    let again = tools.call("deploy_modal_function", deploy).await.unwrap();
    assert_eq!(first["function_id"], again["function_id"], "deployed once");

    // Concurrent retries of one spawn create one task.
    let spawn = json!({"function_name": "inc", "args": [1], "idempotency_key": "spawn-7"});
    let (a, b) = tokio::join!(
        tools.call("spawn_task", spawn.clone()),
        tools.call("spawn_task", spawn.clone())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a["task_id"], b["task_id"]);
    assert_eq!(t.rt.tasks(None, 0, 100).1, 1, "one task");
    // `function_ref` names the function here too, as in the seed's tools.
    let by_ref = tools
        .call(
            "spawn_task",
            json!({"function_ref": "inc", "args": [4], "wait": true}),
        )
        .await
        .unwrap();
    assert_eq!(by_ref["result"], 5, "{by_ref}");

    // The same key with other arguments is refused, naming the key.
    let other = json!({"function_name": "inc", "args": [2], "idempotency_key": "spawn-7"});
    let e = tools.call("spawn_task", other).await.unwrap_err();
    assert!(
        matches!(&e, CommandError::InvalidArguments { field, .. } if field == "idempotency_key"),
        "{e}"
    );
    let e = tools
        .call(
            "spawn_task",
            json!({"function_name": "inc", "idempotency_key": ""}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("1 to 255"), "{e}");
    // A failed call is not remembered: the same key may try again.
    let missing = json!({"function_name": "nope", "idempotency_key": "k-missing"});
    assert!(tools.call("spawn_task", missing.clone()).await.is_err());
    t.rt.deploy_function(modal_agents::FunctionSpec::new(
        "nope",
        "def nope():\n    return 1\n",
    ))
    .await
    .unwrap();
    assert!(tools.call("spawn_task", missing).await.is_ok());
    // Reading tools take no key.
    let e = tools
        .call("list_functions", json!({"idempotency_key": "x"}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("idempotency_key"), "{e}");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_file_tools_refuse_hostile_paths_and_content() {
    let t = support::scripted(&["nope"]).await;
    let tools = Tools::new(t.rt.clone());
    for path in [
        "../escape.txt",
        "/etc/passwd",
        "a/../../b",
        "a//b",
        "nul\u{0}byte",
    ] {
        let e = tools
            .call(
                "write_volume_file",
                json!({"volume_name": "v", "path": path, "text": "x"}),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, CommandError::Volume { .. }), "{path:?}: {e}");
        let e = tools
            .call(
                "read_volume_file",
                json!({"volume_name": "v", "path": path}),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, CommandError::Volume { .. }), "{path:?}: {e}");
    }
    for (args, field) in [
        (
            json!({"volume_name": "v", "path": "a", "content": "x", "content_base64": "eA=="}),
            "content",
        ),
        (json!({"volume_name": "v", "path": "a"}), "content"),
        (
            json!({"volume_name": "v", "path": "a", "content_base64": "not base64!"}),
            "content_base64",
        ),
        // The old names still work, and both of one pair is refused.
        (
            json!({"volume_name": "v", "path": "a", "text": "x", "content": "y"}),
            "content",
        ),
        (
            json!({"volume_name": "../v", "path": "a", "text": "x"}),
            "volume_name",
        ),
    ] {
        let e = tools.call("write_volume_file", args).await.unwrap_err();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    // Binary content comes back as content_base64, text as content.
    tools
        .call(
            "write_volume_file",
            json!({"volume_name": "v", "path": "b.bin", "content_base64": "/wA="}),
        )
        .await
        .unwrap();
    let read = tools
        .call(
            "read_volume_file",
            json!({"volume_name": "v", "path": "b.bin"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (read["content_base64"].clone(), read["size"].clone()),
        (json!("/wA="), json!(2))
    );
    t.rt.shutdown().await;
}

/// An idempotency key outlives a restart: the same keyed call on the
/// restarted runtime answers as the first did (the same task, not a
/// second one), and the key with other arguments is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_call_is_answered_again_after_a_restart() {
    use modal_agents::compute::ScriptedBackend;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let scripts = Arc::new(ScriptedBackend::new());
        scripts.script("f", |a, _| Ok(a[0].clone()));
        Runtime::builder()
            .data_dir(dir.path())
            .backend(Arc::new(scripts))
            .start()
            .await
            .unwrap()
    };
    let call = |rt: Runtime, x: i64| async move {
        Tools::new(rt)
            .call(
                "spawn_task",
                json!({"function_name": "f", "args": [x], "idempotency_key": "once"}),
            )
            .await
    };
    let rt = start().await;
    Tools::new(rt.clone())
        .call(
            "deploy_modal_function",
            json!({"function_code": "def f(x):\n    return x\n", "function_name": "f"}),
        )
        .await
        .unwrap();
    let first = call(rt.clone(), 1).await.unwrap();
    rt.shutdown().await;
    let rt = start().await;
    let again = call(rt.clone(), 1).await.unwrap();
    assert_eq!(again["task_id"], first["task_id"], "{again}");
    let other = call(rt.clone(), 2).await.unwrap_err();
    assert!(other.to_string().contains("idempotency_key"), "{other}");
    assert_eq!(rt.tasks(None, 0, 10).1, 1, "one task in all");
    rt.shutdown().await;
}

/// A tool that waits for a task answers within its bound (55 s unless the
/// host says otherwise) with the task still running, never past a host's
/// tool timeout; the task goes on and wait_tasks follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tools_answer_within_their_bound_with_the_task_running() {
    let t = support::scripted(&[]).await;
    let (open, opened) = tokio::sync::watch::channel(false);
    t.scripts.script_async("gate", move |_, _| {
        let mut opened = opened.clone();
        Box::pin(async move {
            let _ = opened.wait_for(|o| *o).await;
            Ok(json!("through"))
        })
    });
    let tools = Tools::new(t.rt.clone()).with_tool_wait(Some(0.5));
    tools
        .call(
            "deploy_modal_function",
            json!({"function_code": "def gate(*a):\n    pass\n", "function_name": "gate"}),
        )
        .await
        .unwrap();
    let call = tools
        .call("spawn_task", json!({"function_name": "gate", "wait": true}))
        .await
        .unwrap();
    assert_eq!(call["status"], "running", "{call}");
    let map = tools
        .call(
            "spawn_parallel_tasks",
            json!({"function_name": "gate", "inputs": [1, 2], "wait": true}),
        )
        .await
        .unwrap();
    assert_eq!(map["status"], "running", "{map}");
    open.send_replace(true);
    let done = tools
        .call(
            "wait_tasks",
            json!({"task_ids": [call["task_id"], map["task_id"]], "timeout_s": 30}),
        )
        .await
        .unwrap();
    assert_eq!(done["done"], true, "{done}");
    let call = tools
        .call("spawn_task", json!({"function_name": "gate", "wait": true}))
        .await
        .unwrap();
    assert_eq!(
        (call["status"].clone(), call["result"].clone()),
        (json!("completed"), json!("through"))
    );
    t.rt.shutdown().await;
}

/// A tool's answer goes whole into a model's context: a page of results
/// holds at most 1 MiB of them (one at least), and next_offset says where
/// the rest begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_pages_for_a_model_hold_at_most_a_mebibyte() {
    let t = support::scripted(&[]).await;
    t.scripts.script("wide", |a, _| {
        Ok(json!("x".repeat(a[0].as_u64().unwrap() as usize)))
    });
    let tools = Tools::new(t.rt.clone());
    tools
        .call(
            "deploy_modal_function",
            json!({"function_code": "def wide(n):\n    pass\n", "function_name": "wide"}),
        )
        .await
        .unwrap();
    let map = tools
        .call(
            "spawn_parallel_tasks",
            json!({"function_name": "wide", "inputs": [600000, 600000, 600000, 10], "wait": true}),
        )
        .await
        .unwrap();
    assert_eq!(map["status"], "completed", "{}", &map.to_string()[..200]);
    assert_eq!(map["results"].as_array().unwrap().len(), 1);
    assert_eq!(map["next_offset"], 1);
    let mut offset = 1;
    let mut seen = 1;
    while let Some(next) = Some(offset).filter(|o| *o < 4) {
        let page = tools
            .call(
                "get_task_results",
                json!({"task_id": map["task_id"], "offset": next}),
            )
            .await
            .unwrap();
        assert!(page.to_string().len() < 1_100_000);
        seen += page["results"].as_array().unwrap().len();
        offset = page["next_offset"].as_u64().unwrap_or(4);
    }
    assert_eq!(seen, 4);
    // A page of shared state too.
    for key in ["w1", "w2", "w3"] {
        tools
            .call(
                "coordinate_state",
                json!({"volume_name": "wide", "operation": "write", "key": key, "value": "y".repeat(600_000)}),
            )
            .await
            .unwrap();
    }
    let listed = tools
        .call(
            "coordinate_state",
            json!({"volume_name": "wide", "operation": "list"}),
        )
        .await
        .unwrap();
    assert!(
        listed.to_string().len() < 1_300_000,
        "{} bytes",
        listed.to_string().len()
    );
    assert!(listed["next_after"].is_string(), "the rest is a page away");
    t.rt.shutdown().await;
}

/// Models send null for the arguments they leave out: such an argument is
/// one not given, whatever its type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_arguments_are_arguments_left_out() {
    let t = support::scripted(&["echo"]).await;
    let tools = Tools::new(t.rt.clone());
    tools
        .call(
            "deploy_modal_function",
            json!({"function_code": "def echo(x=None):\n    return x\n", "function_name": "echo",
                   "gpu": null, "timeout": null, "retries": null, "secrets": null}),
        )
        .await
        .unwrap();
    let listed = tools
        .call("list_functions", json!({"include_code": null}))
        .await
        .unwrap();
    assert!(listed.to_string().contains("echo"), "{listed}");
    let done = tools
        .call(
            "spawn_task",
            json!({"function_name": "echo", "args": [3], "kwargs": null, "wait": true,
                   "wait_timeout": null, "idempotency_key": null}),
        )
        .await
        .unwrap();
    assert_eq!(done["result"], 3, "{done}");
    let listed = tools
        .call(
            "coordinate_state",
            json!({"volume_name": "v", "operation": "list", "key": null, "after": null, "limit": null}),
        )
        .await
        .unwrap();
    assert!(listed.is_object(), "{listed}");
    // A required argument given as null is said to be null, not missing.
    let e = tools
        .call(
            "deploy_modal_function",
            json!({"function_name": "f", "function_code": null}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CommandError::InvalidArguments { field, message, .. }
            if field == "function_code" && message.starts_with("got null")),
        "{e}"
    );
    t.rt.shutdown().await;
}
