//! Recovery from what a crash, a careless caller or a damaged disk leaves
//! behind, through the server binary: deep values are refused where they
//! enter and a bad journal line never costs the records after it; damaged
//! result and input files never stop a start; a SIGTERM stops within its
//! bound and loses nothing that a kill -9 would keep; a task the server goes
//! down under is charged an attempt, so it cannot crash-loop the server.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::Api;

const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");
const TOKEN: &str = "recovery-token-0123456789";

/// A value `levels` arrays deep around a 1.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |v, _| json!([v]))
}

/// A function that waits until the file `open` exists in its volume
/// `gate`, then doubles `x`; inputs below `free` do not wait.
const GATE: &str = "import json, os, time\ndef gate(x=0, free=0):\n    root = json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/gate']\n    while x >= free and not os.path.exists(os.path.join(root, 'open')):\n        time.sleep(0.01)\n    return x * 2\n";

async fn deploy(api: &Api, name: &str, code: &str, extra: Value) {
    let mut body = json!({"function_code": code, "function_name": name});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    api.post("/deploy-function", body).await;
}

fn open_gate(data: &Path) {
    std::fs::write(data.join("volumes/gate/files/open"), "").unwrap();
}

async fn restart(server: &mut std::process::Child, signal: i32, data: &Path, api: Api) -> Api {
    support::kill(server.id(), signal);
    server.wait().unwrap();
    let (next, url) = support::serve(BIN, data, TOKEN);
    *server = next;
    api.at(url)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_values_are_refused_and_a_bad_journal_line_costs_nothing_else() {
    let (_dir, data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    deploy(&api, "echo", "def echo(x):\n    return x\n", json!({})).await;
    deploy(
        &api,
        "deep",
        "def deep(n):\n    v = 1\n    for _ in range(n):\n        v = [v]\n    return v\n",
        json!({}),
    )
    .await;

    // Arguments nesting deeper than the bound are refused with the field
    // named (serde_json alone accepts 126 levels and cannot read them back
    // inside a journal line).
    let (status, problem) = api
        .send(
            Method::POST,
            "/spawn-task",
            Some(json!({"function_name": "echo", "args": [nested(120)]})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "args[0]", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("at most 64"));
    let (status, problem) = api
        .send(
            Method::POST,
            "/run-parallel",
            Some(json!({"function_name": "echo", "inputs": [1, nested(100)]})),
        )
        .await;
    assert_eq!(
        (status, problem["field"].clone()),
        (422, json!("inputs[1]"))
    );
    let (status, problem) = api
        .send(
            Method::PUT,
            "/volumes/v/state/k",
            Some(json!({"value": nested(90)})),
        )
        .await;
    assert_eq!((status, problem["field"].clone()), (422, json!("value")));

    // The deepest accepted value goes through and reads back.
    let ok = api
        .post(
            "/spawn-task",
            json!({"function_name": "echo", "args": [nested(64)], "wait": true}),
        )
        .await;
    assert_eq!(ok["result"], nested(64));
    // A result nesting deeper is the task's error, not a poisoned record; in
    // a map it is the input's error and every other input keeps its result.
    let too_deep = api
        .post(
            "/spawn-task",
            json!({"function_name": "deep", "args": [120], "wait": true}),
        )
        .await;
    assert_eq!(too_deep["status"], "failed", "{too_deep}");
    assert_eq!(too_deep["error"]["type"], "ResultTooDeep");
    let map = api
        .post(
            "/run-parallel",
            json!({"function_name": "deep", "inputs": [1, 100, 2], "wait": true}),
        )
        .await;
    let results = map["results"].as_array().unwrap();
    assert_eq!(results[0], nested(1));
    assert_eq!(results[1]["error"]["type"], "ResultTooDeep");
    assert_eq!(results[2], nested(2));
    let later = api.spawn_each("echo", 5).await;

    // Everything is back after a kill -9.
    let api = restart(&mut server, libc::SIGKILL, &data, api).await;
    let ids = [&ok, &too_deep, &map].map(|t| t["task_id"].as_str().unwrap().to_owned());
    for id in ids.iter().chain(&later) {
        let (status, _) = api.send(Method::GET, &format!("/status/{id}"), None).await;
        assert_eq!(status, 200, "task {id} survives the restart");
    }
    assert_eq!(
        api.get(&format!("/status/{}", ids[0])).await["result"],
        nested(64)
    );

    // A line that cannot be read in the middle of the journal (one an older
    // version wrote, or a damaged sector) is set aside; every record before
    // and after it is kept.
    support::kill(server.id(), libc::SIGTERM);
    server.wait().unwrap();
    let journal = data.join("tasks.journal");
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 4, "{}", lines.len());
    let bad = format!("{{\"r\": {}}}", "[".repeat(200) + &"]".repeat(200));
    let mut damaged: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    damaged.insert(2, bad.clone());
    std::fs::write(&journal, damaged.join("\n") + "\n").unwrap();
    let (next, url) = support::serve(BIN, &data, TOKEN);
    server = next;
    let api = api.at(url);
    for id in ids.iter().chain(&later) {
        let t = api.get(&format!("/status/{id}")).await;
        assert_ne!(t["status"], "pending", "{t}");
    }
    let quarantine = std::fs::read_to_string(data.join("tasks.journal.quarantine")).unwrap();
    assert_eq!(quarantine, format!("{bad}\n"));
    assert_eq!(mode(&journal), 0o600);
    // Where secret values live (sealed only with MODAL_AGENTS_SECRETS_KEY):
    // readable by the server's user alone, as README says.
    assert_eq!(mode(&data.join("state.redb")), 0o600);
    let fresh = api
        .post(
            "/spawn-task",
            json!({"function_name": "echo", "args": ["after"], "wait": true}),
        )
        .await;
    assert_eq!(fresh["result"], "after");

    support::stop(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_result_and_input_files_never_stop_a_start() {
    let (_dir, data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    deploy(&api, "work", "def work(x):\n    return x * 2\n", json!({})).await;
    // Inputs from 500 on wait for the gate.
    deploy(
        &api,
        "half",
        &GATE.replace("def gate(x=0, free=0)", "def half(x, free=500)"),
        json!({"volumes": {"/gate": "gate"}}),
    )
    .await;

    // A finished map, and a map stopped half way.
    let done = api
        .post(
            "/run-parallel",
            json!({"function_name": "work", "inputs": (0..2000).collect::<Vec<_>>(), "wait": true}),
        )
        .await;
    assert_eq!(done["status"], "completed", "{}", done["status"]);
    let done_id = done["task_id"].as_str().unwrap().to_owned();
    let half = api
        .post(
            "/run-parallel",
            json!({"function_name": "half", "inputs": (0..1000).collect::<Vec<_>>()}),
        )
        .await;
    let half_id = half["task_id"].as_str().unwrap().to_owned();
    api.until(
        &format!("/status/{half_id}/results?offset=99&limit=1"),
        "the first 100 results on disk",
        |v| v["results"].as_array().is_some_and(|r| r.len() == 1),
    )
    .await;
    support::kill(server.id(), libc::SIGKILL);
    server.wait().unwrap();

    let tasks = data.join("tasks");
    // The running map: an index entry past its data (what unordered writes
    // left), and an input line that no longer parses.
    let half_dir = tasks.join(&half_id);
    let data_len = std::fs::metadata(half_dir.join("results.jsonl"))
        .unwrap()
        .len();
    let mut index = std::fs::read(half_dir.join("results.idx")).unwrap();
    index.extend_from_slice(&(data_len + 4096).to_le_bytes());
    std::fs::write(half_dir.join("results.idx"), index).unwrap();
    let inputs = std::fs::read_to_string(half_dir.join("inputs.jsonl")).unwrap();
    let mut lines: Vec<&str> = inputs.lines().collect();
    lines[700] = "{not json";
    std::fs::write(half_dir.join("inputs.jsonl"), lines.join("\n") + "\n").unwrap();
    // The finished map: its data cut in half.
    let done_data = tasks.join(&done_id).join("results.jsonl");
    let len = std::fs::metadata(&done_data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&done_data)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    open_gate(&data);

    let (next, url) = support::serve(BIN, &data, TOKEN);
    server = next;
    let api = api.at(url);
    // The damaged finished map says so, and keeps what reads back whole.
    let finished = api.get(&format!("/status/{done_id}")).await;
    assert_eq!(finished["status"], "failed", "{finished}");
    assert_eq!(finished["error"]["type"], "StorageError");
    let kept = api.all_results(&done_id).await;
    assert!(kept.len() > 500 && kept.len() < 2000, "{}", kept.len());
    for (i, r) in kept.iter().enumerate() {
        assert_eq!(r, &json!(i * 2), "slot {i}");
    }
    // The running map resumes after its last whole result; the unreadable
    // input fails in its own slot and every other input has its result.
    let record = api
        .until(&format!("/status/{half_id}"), "the map to end", |v| {
            v["status"] != "pending" && v["status"] != "running"
        })
        .await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["type"], "MapInputsFailed", "{record}");
    assert_eq!(record["progress"]["failed"], 1, "{record}");
    assert_eq!(record["progress"]["completed"], 999, "{record}");
    let results = api.all_results(&half_id).await;
    assert_eq!(results.len(), 1000);
    for (i, r) in results.iter().enumerate() {
        if i == 700 {
            assert_eq!(r["error"]["type"], "InputUnreadable", "{r}");
        } else {
            assert_eq!(r, &json!(i * 2), "slot {i}");
        }
    }
    // Task files are private.
    assert_eq!(mode(&tasks), 0o700);
    assert_eq!(mode(&half_dir), 0o700);
    assert_eq!(mode(&half_dir.join("results.jsonl")), 0o600);
    assert_eq!(mode(&data.join("volumes")), 0o700);
    assert_eq!(mode(&data.join("volumes/gate/files")), 0o700);

    support::stop(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_within_its_bound_and_everything_resumes() {
    let (_dir, data, mut server, api) =
        support::fresh(BIN, TOKEN, &[("MODAL_AGENTS_SHUTDOWN_TIMEOUT", "10")]);
    deploy(&api, "gate", GATE, json!({"volumes": {"/gate": "gate"}})).await;
    deploy(
        &api,
        "work",
        "import time\ndef work(x):\n    time.sleep(0.0003)\n    return x * 2\n",
        json!({}),
    )
    .await;

    // A caller waiting without a timeout on a call that cannot finish yet.
    let waiting = tokio::spawn({
        let (http, url) = (api.http.clone(), api.url.clone());
        async move {
            let r = http
                .post(format!("{url}/spawn-task"))
                .bearer_auth(TOKEN)
                .json(&json!({"function_name": "gate", "args": [1], "wait": true}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    let n = 20_000u64;
    let map_id = api.map_under_way("work", n, 2_000).await;
    api.until("/tasks?status=running", "the gated call running", |v| {
        v["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["function_name"] == "gate"))
    })
    .await;

    let asked = Instant::now();
    support::kill(server.id(), libc::SIGTERM);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "the server did not stop within its 10 s bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    // The waiting caller got an answer: accepted, with the task to follow.
    let (code, body) = waiting.await.unwrap();
    assert_eq!(code, 202, "{body}");
    let call_id = body["task_id"].as_str().unwrap().to_owned();
    assert!(
        body["status"] == "running" || body["status"] == "pending",
        "{body}"
    );

    open_gate(&data);
    let (next, url) = support::serve(BIN, &data, TOKEN);
    server = next;
    let api = api.at(url);
    let call = api
        .until(&format!("/status/{call_id}"), "the call resumed", |v| {
            v["status"] == "completed"
        })
        .await;
    assert_eq!(call["result"], 2);
    assert_eq!(
        call["attempts"], 1,
        "a graceful stop is not charged to the task: {call}"
    );
    let record = api
        .until(&format!("/status/{map_id}"), "the map to finish", |v| {
            v["status"] != "pending" && v["status"] != "running"
        })
        .await;
    assert_eq!(record["status"], "completed", "not cancelled: {record}");
    let results = api.all_results(&map_id).await;
    assert_eq!(results.len() as u64, n);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r, &json!(i as u64 * 2), "slot {i}");
    }

    support::stop(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_finished_tasks_their_files_and_webhooks_for_good() {
    let (_dir, data, mut server, api) = support::fresh(
        BIN,
        TOKEN,
        &[
            ("MODAL_AGENTS_RETENTION_MAX", "3"),
            ("MODAL_AGENTS_RETENTION_SWEEP", "0.2"),
            ("MODAL_AGENTS_WEBHOOK_ALLOW", "127.0.0.0/8"),
        ],
    );
    let (hook, _receiver) = support::receiver(Vec::new()).await;
    deploy(
        &api,
        "echo",
        "def echo(x):\n    print('echo', x)\n    return x\n",
        json!({}),
    )
    .await;

    // The oldest: a map (result files) with a delivered webhook.
    let map = api
        .post(
            "/run-parallel",
            json!({"function_name": "echo", "inputs": (0..100).collect::<Vec<_>>(), "wait": true}),
        )
        .await;
    let map_id = map["task_id"].as_str().unwrap().to_owned();
    let map_dir = data.join("tasks").join(&map_id);
    assert!(map_dir.join("results.jsonl").exists());
    let hook = api
        .post("/webhook", json!({"task_id": map_id, "webhook_url": hook}))
        .await;
    let hook_id = hook["webhook_id"].as_str().unwrap().to_owned();
    api.until(&format!("/webhooks/{hook_id}"), "the delivery", |v| {
        v["state"] == "delivered"
    })
    .await;
    let calls = api.spawn_each("echo", 5).await;

    // Only the three newest finished tasks stay, with nothing left of the
    // others: record, files, webhook registration.
    api.until("/tasks?status=completed", "the sweep", |v| v["total"] == 3)
        .await;
    let listed = api.get("/tasks").await;
    let ids: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [&calls[4], &calls[3], &calls[2]], "newest first");
    for gone in [&map_id, &calls[0], &calls[1]] {
        let (status, _) = api
            .send(Method::GET, &format!("/status/{gone}"), None)
            .await;
        assert_eq!(status, 404, "{gone} removed");
        // Files go once the removal is on disk, just after the records.
        let files = data.join("tasks").join(gone);
        support::eventually(Duration::from_secs(10), "the files removed", || {
            let gone = !files.exists();
            async move { gone }
        })
        .await;
    }
    let (status, _) = api
        .send(Method::GET, &format!("/webhooks/{hook_id}"), None)
        .await;
    assert_eq!(
        status, 404,
        "the removed task's webhook registration went with it"
    );
    let logs = api.get(&format!("/tasks/{}/logs", calls[4])).await;
    assert!(logs.to_string().contains("echo 4"), "{logs}");

    // For good: a restart does not bring them back.
    let api = restart(&mut server, libc::SIGKILL, &data, api).await;
    let (status, _) = api
        .send(Method::GET, &format!("/status/{map_id}"), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(api.get("/tasks").await["total"], 3);
    let metrics = api.text("/metrics").await;
    assert!(
        metrics.contains("modal_agents_tasks{status=\"completed\"} 3"),
        "{metrics}"
    );

    support::stop(&mut server);
}

/// A task running whenever the server goes down (as if it took the server
/// down) is charged an attempt each time and given up past its retries
/// (one re-run is always allowed), instead of re-queued at every start; a
/// map's next input likewise, the rest of the map going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_server_goes_down_under_is_charged_and_given_up() {
    let (_dir, data, mut server, mut api) = support::fresh(BIN, TOKEN, &[]);
    // Input 3 (or a call) waits for the gate; the others return at once.
    let stuck = GATE
        .replace("def gate(x=0, free=0)", "def stuck(x)")
        .replace("while x >= free and", "while x == 3 and");
    deploy(&api, "stuck", &stuck, json!({"volumes": {"/gate": "gate"}})).await;
    let call = api
        .post(
            "/spawn-task",
            json!({"function_name": "stuck", "args": [3]}),
        )
        .await;
    let call_id = call["task_id"].as_str().unwrap().to_owned();
    let map = api
        .post(
            "/run-parallel",
            json!({"function_name": "stuck", "inputs": [0, 1, 2, 3, 4]}),
        )
        .await;
    let map_id = map["task_id"].as_str().unwrap().to_owned();
    for round in 1..=2u64 {
        api.until(&format!("/status/{call_id}"), "the call running", |v| {
            v["status"] == "running"
        })
        .await;
        api.until(
            &format!("/status/{map_id}/results?offset=2&limit=1"),
            "the map stuck on input 3",
            |v| v["results"].as_array().is_some_and(|r| r.len() == 1),
        )
        .await;
        api.until(&format!("/status/{map_id}"), "the map running", |v| {
            v["status"] == "running"
        })
        .await;
        api = restart(&mut server, libc::SIGKILL, &data, api).await;
        if round == 1 {
            // One re-run is free: it runs again, as its second attempt.
            api.until(
                &format!("/status/{call_id}"),
                "the call's second attempt",
                |v| v["status"] == "running" && v["attempts"] == 2,
            )
            .await;
        } else {
            let record = api.get(&format!("/status/{call_id}")).await;
            assert_eq!(record["status"], "failed", "{record}");
            assert_eq!(record["error"]["type"], "RuntimeLost", "{record}");
            assert_eq!(record["attempts"], 2, "{record}");
        }
    }
    // The map gave up its stuck input and went on with the rest.
    let record = api
        .until(&format!("/status/{map_id}"), "the map to finish", |v| {
            v["status"] != "pending" && v["status"] != "running"
        })
        .await;
    let results = api.all_results(&map_id).await;
    assert_eq!(results.len(), 5, "{record}");
    assert_eq!(&results[..3], &[json!(0), json!(2), json!(4)]);
    assert_eq!(results[3]["error"]["type"], "RuntimeLost", "{results:?}");
    assert_eq!(results[4], json!(8));
    // The given-up call is not run again: opening the gate changes nothing.
    open_gate(&data);
    let record = api.get(&format!("/status/{call_id}")).await;
    assert_eq!(record["status"], "failed", "{record}");
    support::stop(&mut server);
}
