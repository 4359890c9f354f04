//! Attacks by callers of the HTTP API: reads of volumes that do not exist,
//! junk methods for the metrics, slow and idle connections, dropped clients
//! holding an Idempotency-Key, webhook deliveries through a proxy, and bad
//! server flags.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::support::{self, Api};
use super::{Target, BIN, TOKEN};

/// One of the attacks `every_attack_in_a_row_leaves_the_server_whole` makes in a row against one server.
pub(crate) async fn attack_reads_of_unknown_volumes_answer_404_and_create_nothing(t: &Target<'_>) {
    let (api, data) = (t.api, t.data);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", t.pid))
            .unwrap()
            .count()
    };
    let before = fds();
    let volume_count = || {
        std::fs::read_dir(data.join("volumes"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let volumes_before = volume_count();
    for i in 0..1000 {
        let name = format!("nope{i}");
        for path in [
            format!("/volumes/{name}/state/k"),
            format!("/volumes/{name}/state"),
            format!("/volumes/{name}/files"),
            format!("/volumes/{name}/files/a.txt"),
        ] {
            let (status, body) = api.send(Method::GET, &path, None).await;
            assert_eq!(status, 404, "{path}: {body}");
        }
    }
    assert_eq!(volume_count(), volumes_before, "reads created no volume");
    assert!(
        fds() < before + 64,
        "open files bounded: {before} -> {}",
        fds()
    );
    // A write creates the volume; then its reads work.
    let (status, _) = api
        .send(
            Method::PUT,
            "/volumes/real/state/k",
            Some(json!({"value": 1})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.get("/volumes/real/state/k").await["value"], 1);
    assert_eq!(api.get("/volumes/real/files").await, json!([]));
}

/// One of the attacks `every_attack_in_a_row_leaves_the_server_whole` makes in a row against one server.
pub(crate) async fn attack_metrics_labels_stay_bounded_whatever_callers_send(t: &Target<'_>) {
    let api = t.api;
    let lines = |text: &str| text.lines().count();
    let before = lines(&api.text("/metrics").await);
    // 300 unauthenticated requests with made-up methods and paths.
    let http = reqwest::Client::new();
    for i in 0..300 {
        let method = Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        let _ = http
            .request(method, format!("{}/random/{i}", api.url))
            .send()
            .await
            .unwrap();
    }
    let after = lines(&api.text("/metrics").await);
    assert!(
        after <= before + 8,
        "metrics grew from {before} to {after} lines"
    );
}

/// A client trickling its headers (slowloris) or idling on a kept-alive
/// connection is cut off after the header-read timeout; others are served.
///
/// One of the attacks `every_attack_in_a_row_leaves_the_server_whole` makes in a row against one server.
pub(crate) async fn attack_slow_and_idle_connections_are_cut_off(t: &Target<'_>) {
    let api = t.api;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Others are served meanwhile.
    assert_eq!(api.get("/healthz").await["status"], "ok");
    for (name, conn) in [("slow", &mut slow), ("idle", &mut idle)] {
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).await.map(|_| rest)
        })
        .await;
        let rest = closed.unwrap_or_else(|_| panic!("the {name} connection was kept open"));
        // Closed (with at most a 408 for the slow one), never a response to
        // a request that was not finished.
        let text = String::from_utf8_lossy(rest.as_deref().unwrap_or_default()).into_owned();
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{name}: {text}"
        );
    }
}

/// A request with an Idempotency-Key whose client goes away runs to the
/// end: the retry gets its response (409 only while it still runs), and the
/// work exists once.
///
/// One of the attacks `every_attack_in_a_row_leaves_the_server_whole` makes in a row against one server.
pub(crate) async fn attack_an_idempotency_key_outlives_a_dropped_client(t: &Target<'_>) {
    let (api, data) = (t.api, t.data);
    let gate = "import json, os, time\ndef held(x):\n    root = json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/gate']\n    while not os.path.exists(os.path.join(root, 'open')):\n        time.sleep(0.01)\n    return x\n";
    api.post(
        "/deploy-function",
        json!({"function_code": gate, "function_name": "held", "volumes": {"/gate": "gate"}}),
    )
    .await;
    let body = json!({"function_name": "held", "args": [5], "wait": true});
    let send = || {
        api.http
            .post(format!("{}/spawn-task", api.url))
            .bearer_auth(TOKEN)
            .header("idempotency-key", "dropped-1")
            .json(&body)
            .send()
    };
    // The first client gives up while its call waits on the gate.
    let first = tokio::time::timeout(Duration::from_millis(300), send()).await;
    assert!(first.is_err(), "the call cannot have answered yet");
    std::fs::write(data.join("volumes/gate/files/open"), "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let replayed = loop {
        let r = send().await.unwrap();
        if r.status() != 409 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "409 forever");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(replayed.status(), 200);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    let task: serde_json::Value = replayed.json().await.unwrap();
    assert_eq!(task["result"], 5, "{task}");
    let listed = api.get("/tasks").await;
    let held = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["function_name"] == "held")
        .count();
    assert_eq!(held, 1, "the work exists once: {listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_never_go_through_a_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (target_url, target) = support::receiver(Vec::new()).await;
    let (proxy_url, proxy) = support::receiver(Vec::new()).await;
    let proxy_base = proxy_url.trim_end_matches("/hook").to_owned();
    let env = [
        ("MODAL_AGENTS_WEBHOOK_ALLOW", "127.0.0.0/8"),
        ("HTTP_PROXY", proxy_base.as_str()),
        ("http_proxy", proxy_base.as_str()),
        ("HTTPS_PROXY", proxy_base.as_str()),
        ("ALL_PROXY", proxy_base.as_str()),
    ];
    let (mut server, url) = support::serve_with(BIN, &data, TOKEN, &env);
    let api = Api::new(url, TOKEN);
    api.post(
        "/deploy-function",
        json!({"function_code": "def one():\n    return 1\n", "function_name": "one"}),
    )
    .await;
    let task = api
        .post("/spawn-task", json!({"function_name": "one", "wait": true}))
        .await;
    let hook = api
        .post(
            "/webhook",
            json!({"task_id": task["task_id"], "webhook_url": target_url}),
        )
        .await;
    let id = hook["webhook_id"].as_str().unwrap().to_owned();
    api.until(&format!("/webhooks/{id}"), "the delivery", |v| {
        v["state"] == "delivered"
    })
    .await;
    let message = hook["message_id"].as_str().unwrap();
    assert_eq!(target.deliveries_of(message).len(), 1, "delivered directly");
    assert!(
        proxy.seen.lock().unwrap().is_empty(),
        "nothing went through the proxy the environment names"
    );
    support::stop(&mut server);
}

#[test]
fn bad_stop_and_retention_settings_are_clear_errors() {
    for (flag, value, expected) in [
        (
            "--shutdown-timeout",
            "-1",
            "expected seconds from 0 to 3600",
        ),
        (
            "--shutdown-timeout",
            "NaN",
            "expected seconds from 0 to 3600",
        ),
        ("--retention-days", "1e9", "expected days from 0 to 36500"),
        (
            "--retention-sweep",
            "abc",
            "expected seconds from 0 to 3600",
        ),
        ("--retention-max", "-5", "--retention-max"),
        (
            "--header-read-timeout",
            "forever",
            "expected seconds from 0 to 3600",
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--addr", "127.0.0.1:0", &format!("{flag}={value}")])
            .env("MODAL_AGENTS_TOKEN", TOKEN)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(
            stderr.contains(flag) && stderr.contains(expected),
            "{flag} {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
