//! The crash matrix: the server binary is killed with SIGKILL at 24 random
//! moments of a mixed workload (calls, maps including one of 20,000 inputs,
//! volume compare-and-swap increments, file writes, webhook registrations),
//! then with SIGTERM at a few more. After every restart the server is up,
//! every acknowledged task exists and nothing that had finished went back;
//! at the end no call that was journaled as done ran again (each call
//! appends its tag to a volume file when it runs), every map has exactly
//! its inputs' results in input order, the counter equals the acknowledged increments, every
//! acknowledged file is there, and every webhook was delivered. (A task the
//! server is killed under is charged an attempt; the functions here allow
//! 10 retries, more than any one task is killed under.)

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::Api;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");
const TOKEN: &str = "crash-matrix-token-0123456789";
const ENV: [(&str, &str); 2] = [
    ("MODAL_AGENTS_WEBHOOK_ALLOW", "127.0.0.0/8"),
    ("MODAL_AGENTS_SHUTDOWN_TIMEOUT", "10"),
];

/// Appends its tag to `runs.log` in its volume (one line per run), then
/// returns it.
const REC: &str = "import json, os\ndef rec(tag):\n    root = json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/runs']\n    with open(os.path.join(root, 'runs.log'), 'a') as f:\n        f.write(tag + '\\n')\n    return tag\n";
const DBL: &str = "import time\ndef dbl(x):\n    time.sleep(0.0005)\n    return x * 2\n";

/// What the server acknowledged, across every round.
#[derive(Default)]
struct Acked {
    /// Call task id -> its tag.
    calls: Vec<(String, String)>,
    /// Map task id -> its inputs.
    maps: Vec<(String, Vec<u64>)>,
    /// Increments the server answered 200 to.
    increments: u64,
    /// An increment was under way when the server went down.
    increment_in_flight: bool,
    /// Volume file -> content.
    files: Vec<(String, String)>,
    /// Webhook message ids.
    webhooks: Vec<String>,
    /// Status and result of every task seen finished after a restart (so
    /// journaled as done).
    finished: HashMap<String, (Value, Value)>,
    /// How often each such call had run when it was seen so.
    runs_when_done: HashMap<String, u64>,
}

type Shared = Arc<Mutex<Acked>>;

impl Acked {
    /// Every acknowledged task, calls then maps.
    fn task_ids(&self) -> Vec<String> {
        self.calls
            .iter()
            .map(|(id, _)| id.clone())
            .chain(self.maps.iter().map(|(id, _)| id.clone()))
            .collect()
    }
}

fn ok(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Sends a request; `None` when the server is gone.
async fn try_send(
    api: &Api,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let mut req = api
        .http
        .request(method, format!("{}{path}", api.url))
        .bearer_auth(&api.token)
        .timeout(Duration::from_secs(30));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.ok()?;
    let status = r.status().as_u16();
    let text = r.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn calls(api: Arc<Api>, acked: Shared, hook: String, round: u32, stop: CancellationToken) {
    let mut i = 0;
    while !stop.is_cancelled() {
        let tag = format!("r{round}-c{i}");
        i += 1;
        let body = json!({"function_name": "rec", "args": [tag]});
        let Some((status, v)) = try_send(&api, Method::POST, "/spawn-task", Some(body)).await
        else {
            return;
        };
        if status == 503 {
            return; // stopping: not created
        }
        assert!(ok(status), "spawn: {status} {v}");
        let id = v["task_id"].as_str().unwrap().to_owned();
        acked.lock().unwrap().calls.push((id.clone(), tag));
        if i % 5 == 0 {
            let body = json!({"task_id": id, "webhook_url": hook});
            let Some((status, v)) = try_send(&api, Method::POST, "/webhook", Some(body)).await
            else {
                return;
            };
            if status == 503 {
                return;
            }
            assert!(ok(status), "webhook: {status} {v}");
            let message = v["message_id"].as_str().unwrap().to_owned();
            acked.lock().unwrap().webhooks.push(message);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn increments(api: Arc<Api>, acked: Shared, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let current = match try_send(&api, Method::GET, "/volumes/counter/state/n", None).await {
            None => return,
            Some((200, v)) => Some((v["value"].as_u64().unwrap(), v["version"].as_u64().unwrap())),
            Some((404, _)) => None,
            Some((503, _)) => return,
            Some((status, v)) => panic!("read counter: {status} {v}"),
        };
        let (next, precondition) = match current {
            Some((n, version)) => (n + 1, ("If-Match", version.to_string())),
            None => (1, ("If-None-Match", "*".to_owned())),
        };
        acked.lock().unwrap().increment_in_flight = true;
        let sent = api
            .http
            .put(format!("{}/volumes/counter/state/n", api.url))
            .bearer_auth(&api.token)
            .header(precondition.0, precondition.1)
            .json(&json!({"value": next}))
            .send()
            .await;
        let Ok(r) = sent else { return };
        let status = r.status().as_u16();
        let mut a = acked.lock().unwrap();
        a.increment_in_flight = false;
        match status {
            200 => {
                a.increments += 1;
                assert_eq!(
                    a.increments, next,
                    "the counter follows the acknowledged increments"
                );
            }
            412 => {}
            // Stopping: the outcome is settled by reading the counter after
            // the restart.
            503 => {
                a.increment_in_flight = true;
                return;
            }
            other => panic!("increment: {other}"),
        }
    }
}

async fn files(api: Arc<Api>, acked: Shared, round: u32, stop: CancellationToken) {
    let mut i = 0;
    while !stop.is_cancelled() {
        let (path, content) = (
            format!("r{round}/f{i}.txt"),
            format!("round {round} file {i}"),
        );
        i += 1;
        let sent = api
            .http
            .put(format!("{}/volumes/files/files/{path}", api.url))
            .bearer_auth(&api.token)
            .body(content.clone())
            .send()
            .await;
        let Ok(r) = sent else { return };
        if r.status().is_success() {
            acked.lock().unwrap().files.push((path, content));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn start_map(api: &Api, acked: &Shared, inputs: Vec<u64>) {
    let body = json!({"function_name": "dbl", "inputs": inputs});
    if let Some((status, v)) = try_send(api, Method::POST, "/run-parallel", Some(body)).await {
        if status == 503 {
            return;
        }
        assert!(ok(status), "map: {status} {v}");
        let id = v["task_id"].as_str().unwrap().to_owned();
        acked.lock().unwrap().maps.push((id, inputs));
    }
}

/// Every acknowledged task exists, and every task seen finished before is
/// finished the same way.
async fn check_after_restart(api: &Api, acked: &Shared, data: &Path) {
    let mut newly_done = Vec::new();
    let ids = acked.lock().unwrap().task_ids();
    for id in ids {
        let (status, v) = api.send(Method::GET, &format!("/status/{id}"), None).await;
        assert_eq!(
            status, 200,
            "acknowledged task {id} exists after the restart: {v}"
        );
        let terminal =
            ["completed", "failed", "cancelled"].contains(&v["status"].as_str().unwrap());
        let mut a = acked.lock().unwrap();
        match a.finished.get(&id) {
            Some(before) => assert_eq!(
                before,
                &(v["status"].clone(), v["result"].clone()),
                "task {id} stays as it finished"
            ),
            None if terminal => {
                if let Some(tag) = v["result"].as_str() {
                    newly_done.push(tag.to_owned());
                }
                a.finished
                    .insert(id, (v["status"].clone(), v["result"].clone()));
            }
            None => {}
        }
    }
    // Counted once they are seen done: no run may be added from now on.
    let runs = runs_of(data);
    let mut a = acked.lock().unwrap();
    for tag in newly_done {
        let ran = runs.get(&tag).copied().unwrap_or(0);
        a.runs_when_done.insert(tag, ran);
    }
}

fn runs_of(data: &Path) -> HashMap<String, u64> {
    let mut runs = HashMap::new();
    let log = std::fs::read_to_string(data.join("volumes/runs/files/runs.log")).unwrap_or_default();
    for tag in log.lines() {
        *runs.entry(tag.to_owned()).or_default() += 1;
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_repeats_nothing() {
    let seed = fastrand::u64(..);
    println!("crash matrix seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (hook, receiver) = support::receiver(Vec::new()).await;
    let acked = Shared::default();
    let (mut server, url) = support::serve_with(BIN, &data, TOKEN, &ENV);
    let mut api = Arc::new(Api::new(url, TOKEN));
    api.post(
        "/deploy-function",
        json!({"function_code": REC, "function_name": "rec", "volumes": {"/runs": "runs"}, "retries": 10}),
    )
    .await;
    api.post(
        "/deploy-function",
        json!({"function_code": DBL, "function_name": "dbl", "retries": 10}),
    )
    .await;
    start_map(&api, &acked, (0..20_000).collect()).await;

    let began = Instant::now();
    let kills = 24;
    let terms = 3;
    for round in 0..kills + terms {
        assert!(
            began.elapsed() < Duration::from_secs(600),
            "the matrix is bounded in time"
        );
        let stop = CancellationToken::new();
        let workers = [
            tokio::spawn(calls(
                api.clone(),
                acked.clone(),
                hook.clone(),
                round,
                stop.clone(),
            )),
            tokio::spawn(increments(api.clone(), acked.clone(), stop.clone())),
            tokio::spawn(files(api.clone(), acked.clone(), round, stop.clone())),
        ];
        start_map(
            &api,
            &acked,
            (0..300).map(|i| u64::from(round) * 1000 + i).collect(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50 + rng.u64(..400))).await;
        if round < kills {
            support::kill(server.id(), libc::SIGKILL);
            server.wait().unwrap();
        } else {
            let asked = Instant::now();
            support::kill(server.id(), libc::SIGTERM);
            let status = server.wait().unwrap();
            assert!(status.success(), "SIGTERM is a clean stop: {status}");
            assert!(
                asked.elapsed() < Duration::from_secs(15),
                "stopped within its 10 s bound: {:?}",
                asked.elapsed()
            );
        }
        stop.cancel();
        for (name, w) in ["calls", "increments", "files"].into_iter().zip(workers) {
            tokio::time::timeout(Duration::from_secs(90), w)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the {name} worker did not stop"))
                .unwrap();
        }
        println!("round {round} stopped at {:?}", began.elapsed());
        // The next start must come up, with everything acknowledged in it.
        let (next, url) = support::serve_with(BIN, &data, TOKEN, &ENV);
        server = next;
        api = Arc::new(Api::new(url, TOKEN));
        check_after_restart(&api, &acked, &data).await;
        println!("round {round} restarted at {:?}", began.elapsed());
        // An increment cut off by the stop was applied or not, never half:
        // the counter says which.
        let in_flight = std::mem::take(&mut acked.lock().unwrap().increment_in_flight);
        if in_flight {
            let v = api.get("/volumes/counter/state/n").await["value"]
                .as_u64()
                .unwrap();
            let mut a = acked.lock().unwrap();
            assert!(
                v == a.increments || v == a.increments + 1,
                "counter {v}, acknowledged {}",
                a.increments
            );
            a.increments = v;
        }
    }

    // Let everything finish, then check every outcome.
    let ids = acked.lock().unwrap().task_ids();
    let mut records = HashMap::new();
    for id in &ids {
        let v = api
            .until(&format!("/status/{id}"), "every task to finish", |v| {
                v["status"] != "pending" && v["status"] != "running"
            })
            .await;
        records.insert(id.clone(), v);
    }
    let (calls, runs_when_done, maps, increments, files, webhooks) = {
        let a = acked.lock().unwrap();
        (
            a.calls.clone(),
            a.runs_when_done.clone(),
            a.maps.clone(),
            a.increments,
            a.files.clone(),
            a.webhooks.clone(),
        )
    };
    let runs = runs_of(&data);
    for (id, tag) in &calls {
        let r = &records[id];
        assert_eq!(
            (r["status"].clone(), r["result"].clone()),
            (json!("completed"), json!(tag)),
            "{r}"
        );
        // It ran, and once journaled as done it never ran again. (It may
        // have run more often than `attempts` says: a run whose start was
        // not yet journaled when the server was killed is not counted.)
        let ran = runs.get(tag).copied().unwrap_or(0);
        assert!(ran >= 1, "{tag} never ran: {r}");
        if let Some(before) = runs_when_done.get(tag) {
            assert_eq!(
                ran, *before,
                "{tag} ran again after it was journaled as done: {r}"
            );
        }
    }
    for (id, inputs) in &maps {
        assert_eq!(records[id]["status"], "completed", "{}", records[id]);
        let results = api.all_results(id).await;
        let expected: Vec<Value> = inputs.iter().map(|x| json!(x * 2)).collect();
        assert!(
            results == expected,
            "map {id}: {} results for {} inputs, in order: {}",
            results.len(),
            inputs.len(),
            results == expected
        );
    }
    let counter = api.get("/volumes/counter/state/n").await;
    assert_eq!(
        counter["value"], increments,
        "the counter equals the acknowledged increments"
    );
    for (path, content) in &files {
        let got = api.text(&format!("/volumes/files/files/{path}")).await;
        assert_eq!(&got, content, "{path}");
    }
    for message in &webhooks {
        let delivered = async {
            support::eventually(Duration::from_secs(60), "every webhook delivered", || {
                let n = receiver.deliveries_of(message).len();
                async move { n >= 1 }
            })
            .await
        };
        delivered.await;
    }
    println!(
        "crash matrix: {kills} kills + {terms} stops, {} calls, {} maps, {increments} increments, {} files, {} webhooks",
        ids.len() - maps.len(),
        maps.len(),
        files.len(),
        webhooks.len()
    );
    support::stop(&mut server);
}
