//! Attacks by the code a function runs on the harness and its resources:
//! forged frames on the harness's pipe, memory and output without end,
//! inputs past their timeout, and a redeploy under a running map.

use reqwest::Method;
use serde_json::json;

use super::support;
use super::{Target, BIN, TOKEN};

/// A function that writes frames of its own on the harness's reply pipe,
/// with the request number dug out of the harness's frame so they pass the
/// sequence check: a list claiming 2^31-1 items, 250,000 nested tuples, a
/// 2 GiB length, or an extra well-formed reply.
const FORGE: &str = r#"
import marshal, struct, sys

def forge(kind, n=0):
    harness = sys._getframe(1).f_locals
    seq, out = harness["seq"][0], harness["proto_out"]
    if kind == "length":
        body = b"{" + marshal.dumps("ok", 2) + b"[" + struct.pack("<I", 0x7FFFFFFF) + b"N0"
    elif kind == "deep":
        body = b"{" + marshal.dumps("ok", 2) + b")\x01" * 250000 + b"N0"
    elif kind == "extra":
        body = b"{" + marshal.dumps("ok", 2) + marshal.dumps("forged", 2) + b"0"
    elif kind == "huge":
        out.write(seq + struct.pack(">I", 0x7FFFFFFF))
        out.flush()
        return None
    else:
        return n * 2
    out.write(seq + struct.pack(">I", len(body)) + body)
    out.flush()
    return n * 2
"#;

/// One of the attacks `every_attack_in_a_row_leaves_the_server_whole` makes in a row against one server.
pub(crate) async fn attack_forged_frames_on_the_harness_pipe_never_crash_or_confuse_the_runtime(
    t: &Target<'_>,
) {
    let api = t.api;
    api.post(
        "/deploy-function",
        json!({"function_code": FORGE, "function_name": "forge", "max_concurrency": 1}),
    )
    .await;
    api.post(
        "/deploy-function",
        json!({"function_code": "def plain(x):\n    return x + 1\n", "function_name": "plain"}),
    )
    .await;
    let call = |function: &'static str, args: serde_json::Value| {
        let api = &api;
        async move {
            api.post(
                "/spawn-task",
                json!({"function_name": function, "args": args, "wait": true}),
            )
            .await
        }
    };
    for kind in ["length", "deep", "huge"] {
        let task = call("forge", json!([kind, 1])).await;
        assert_eq!(task["status"], "failed", "{kind}: {task}");
        assert_eq!(task["error"]["type"], "ProtocolError", "{kind}: {task}");
    }
    // An extra reply is this function's own answer to make; the real one it
    // leaves in the pipe never answers a later request.
    let task = call("forge", json!(["extra", 1])).await;
    assert_eq!(task["status"], "completed", "{task}");
    for i in 0..5 {
        let task = call("forge", json!(["none", i])).await;
        if task["status"] == "completed" {
            assert_eq!(task["result"], json!(i * 2), "{task}");
        } else {
            assert_eq!(task["error"]["type"], "ProtocolError", "{task}");
        }
    }
    let task = call("forge", json!(["none", 21])).await;
    assert_eq!(task["result"], 42, "{task}");
    let task = call("plain", json!([1])).await;
    assert_eq!(task["result"], 2, "{task}");
    // Maps: the forged frame answers a batch; the map still ends, each input
    // with its own result or a protocol error, and the server stays up.
    let task = api
        .post(
            "/run-parallel",
            json!({"function_name": "forge", "inputs": ["length", "none"], "wait": true}),
        )
        .await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(
        task["results"][0]["error"]["type"], "ProtocolError",
        "{task}"
    );
    assert_eq!(task["results"][1], 0, "{task}");
    assert_eq!(api.get("/healthz").await["status"], "ok");
}

/// `memory: [request, limit]` is a real ceiling: an input that allocates
/// past it fails with OutOfMemory naming the limit, the container is
/// replaced and the next input runs; bad pairs name the field.
///
/// One of the attacks `every_attack_in_a_row_leaves_the_server_whole` makes in a row against one server.
pub(crate) async fn attack_a_memory_limit_is_a_real_ceiling(t: &Target<'_>) {
    let api = t.api;
    let code = "def grab(mib):\n    block = bytearray(mib << 20)\n    for i in range(0, len(block), 4096):\n        block[i] = 1\n    return len(block) >> 20\n";
    let answer = api
        .post(
            "/deploy-function",
            json!({"function_code": code, "function_name": "grab", "memory": [128, 256]}),
        )
        .await;
    assert_eq!(answer["status"], "registered", "{answer}");
    let call = |mib: u64| {
        let api = &api;
        async move {
            api.post(
                "/spawn-task",
                json!({"function_name": "grab", "args": [mib], "wait": true}),
            )
            .await
        }
    };
    let task = call(1024).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["type"], "OutOfMemory", "{task}");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("256 MiB"),
        "{task}"
    );
    assert_eq!(call(64).await["result"], 64);
    let functions = api.get("/functions").await;
    let grab = functions
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function_name"] == "grab")
        .unwrap();
    assert_eq!(grab["spec"]["resources"]["memory_limit_mib"], 256, "{grab}");
    for (bad, field) in [
        (json!([512, 256]), "memory[1]"),
        (json!("lots"), "memory"),
        (json!([128]), "memory"),
    ] {
        let (status, problem) = api
            .send(
                Method::POST,
                "/deploy-function",
                Some(json!({"function_code": code, "function_name": "grab2", "memory": bad})),
            )
            .await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
}

/// Output without end: a call printing 300 MB without a newline, and 300 MB
/// written straight to fd 2, still answers; the task's log is capped with a
/// visible note.
///
/// One of the attacks `every_attack_in_a_row_leaves_the_server_whole` makes in a row against one server.
pub(crate) async fn attack_endless_output_is_capped_and_the_call_still_answers(t: &Target<'_>) {
    let api = t.api;
    let code = "import os, sys\ndef loud(n):\n    chunk = 'x' * (1 << 20)\n    for _ in range(n):\n        sys.stdout.write(chunk)\n    os.write(2, b'y' * (n << 20))\n    return n\n";
    api.post(
        "/deploy-function",
        json!({"function_code": code, "function_name": "loud"}),
    )
    .await;
    let task = api
        .post(
            "/spawn-task",
            json!({"function_name": "loud", "args": [300], "wait": true}),
        )
        .await;
    assert_eq!(
        task["result"],
        300,
        "{}",
        task.to_string().chars().take(300).collect::<String>()
    );
    let id = task["task_id"].as_str().unwrap();
    let logs = api.get(&format!("/tasks/{id}/logs")).await;
    let stdout = logs["stdout"].as_str().unwrap();
    assert!(stdout.len() <= (17 << 20), "{}", stdout.len());
    assert!(
        stdout.contains("output truncated: 306184192 more characters dropped"),
        "no truncation note"
    );
    // Bytes written to the captured stdout are the function's TypeError, as
    // with a real text stream, never a crash of the harness.
    let code = "import sys\ndef raw():\n    sys.stdout.write(b'bytes')\n";
    api.post(
        "/deploy-function",
        json!({"function_code": code, "function_name": "raw"}),
    )
    .await;
    let task = api
        .post("/spawn-task", json!({"function_name": "raw", "wait": true}))
        .await;
    assert_eq!(task["error"]["type"], "TypeError", "{task}");
}

/// Logs each run of an input in its volume, then: inputs from 1000 take
/// 0.3 s, 2000 sleeps far past the timeout, 3000 holds the GIL in C
/// (catastrophic regex backtracking) past it.
const SLOW: &str = r#"
import json, os, re, time

def slow(x):
    root = json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/runs']
    with open(os.path.join(root, 'runs.log'), 'a') as f:
        f.write('%d\n' % x)
    if x == 2000:
        time.sleep(60)
    elif x == 3000:
        re.match(r'(a+)+$', 'a' * 64 + 'b')
    elif x >= 1000:
        time.sleep(0.15)
    return x
"#;

/// The timeout applies to each input of a map, not to a batch: inputs each
/// under it never fail together, the one past it fails alone, and no input
/// runs twice (bar the batch-mates of one that holds the GIL past it).
///
/// One of the attacks `every_attack_in_a_row_leaves_the_server_whole` makes in a row against one server.
pub(crate) async fn attack_map_timeouts_are_per_input_and_nothing_runs_twice(t: &Target<'_>) {
    let (api, data) = (t.api, t.data);
    api.post(
        "/deploy-function",
        json!({"function_code": SLOW, "function_name": "slow", "timeout": 1,
               "max_concurrency": 1, "volumes": {"/runs": "runs"}}),
    )
    .await;
    let mut inputs: Vec<u64> = (0..300).collect();
    inputs.extend(1000..1010);
    inputs.push(2000);
    inputs.extend(300..310);
    let task = api
        .post(
            "/run-parallel",
            json!({"function_name": "slow", "inputs": inputs, "wait": true}),
        )
        .await;
    let id = task["task_id"].as_str().unwrap();
    let results = api.all_results(id).await;
    assert_eq!(results.len(), inputs.len());
    for (x, r) in inputs.iter().zip(&results) {
        if *x == 2000 {
            assert_eq!(r["error"]["type"], "TimeoutError", "{r}");
            assert!(
                r["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("timeout of 1 s"),
                "{r}"
            );
        } else {
            assert_eq!(r, &json!(x), "input {x}");
        }
    }
    let log = std::fs::read_to_string(data.join("volumes/runs/files/runs.log")).unwrap();
    let mut runs = std::collections::HashMap::new();
    for line in log.lines() {
        *runs.entry(line.to_owned()).or_insert(0) += 1;
    }
    for x in &inputs {
        assert_eq!(
            runs.get(&x.to_string()),
            Some(&1),
            "input {x} ran {:?} times",
            runs.get(&x.to_string())
        );
    }

    // An input holding the GIL past its timeout still fails alone.
    let task = api
        .post(
            "/run-parallel",
            json!({"function_name": "slow", "inputs": [1, 3000, 2], "wait": true}),
        )
        .await;
    let results = api.all_results(task["task_id"].as_str().unwrap()).await;
    assert_eq!(results[0], 1);
    assert!(results[1]["error"].is_object(), "{results:?}");
    assert_eq!(results[2], 2);
}

/// A redeploy while a map runs: the map finishes on the version it started
/// with, new work gets the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_does_not_break_a_running_map() {
    let (_dir, data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    let version = |factor: u32| {
        format!(
            "import json, os, time\ndef v(x):\n    root = json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/gate']\n    while x >= 50 and not os.path.exists(os.path.join(root, 'open')):\n        time.sleep(0.01)\n    return x * {factor}\n"
        )
    };
    let deploy = |factor: u32| {
        let (api, code) = (&api, version(factor));
        async move {
            api.post(
                "/deploy-function",
                json!({"function_code": code, "function_name": "v", "volumes": {"/gate": "gate"}}),
            )
            .await
        }
    };
    deploy(2).await;
    let map = api
        .post(
            "/run-parallel",
            json!({"function_name": "v", "inputs": (0..100).collect::<Vec<_>>()}),
        )
        .await;
    let id = map["task_id"].as_str().unwrap().to_owned();
    api.until(&format!("/status/{id}"), "the map under way", |v| {
        v["progress"]["completed"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    deploy(3).await;
    std::fs::write(data.join("volumes/gate/files/open"), "").unwrap();
    let record = api
        .until(&format!("/status/{id}"), "the map to finish", |v| {
            v["status"] != "pending" && v["status"] != "running"
        })
        .await;
    assert_eq!(record["status"], "completed", "{record}");
    let results = api.all_results(&id).await;
    for (x, r) in results.iter().enumerate() {
        assert_eq!(
            r,
            &json!(x * 2),
            "input {x} ran on the version the map started with"
        );
    }
    let task = api
        .post(
            "/spawn-task",
            json!({"function_name": "v", "args": [7], "wait": true}),
        )
        .await;
    assert_eq!(task["result"], 21, "{task}");
    support::stop(&mut server);
}
