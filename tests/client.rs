//! The typed client against a real server: every call family, the
//! StatusMonitor over several tasks, and retries on 429/503.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use modal_agents::api::{app, ApiConfig};
use modal_agents::client::{Client, ClientError, StatusMonitor};
use modal_agents::wire::DeployRequest;
use modal_agents::TaskStatus;
use serde_json::{json, Map};

const TOKEN: &str = "client-test-token-0123456789";

/// The client of a server over the local backend (python3 containers), for
/// what runs code end to end: secrets in its environment, live prints, files
/// it writes.
async fn server() -> (Client, support::TestRuntime) {
    let t = support::start(2).await;
    (client_of(&t.rt).await, t)
}

/// The client of a server over a ScriptedBackend (no python3), for what
/// runs no code.
async fn scripted_server() -> (Client, support::ScriptedRuntime) {
    let t = support::scripted(&[]).await;
    (client_of(&t.rt).await, t)
}

async fn client_of(rt: &modal_agents::Runtime) -> Client {
    let router = app(
        rt.clone(),
        ApiConfig {
            tokens: vec![TOKEN.into()],
            ..ApiConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Client::new(&url, Some(TOKEN)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_and_a_status_monitor() {
    let (c, t) = server().await;
    assert_eq!(c.health().await.unwrap()["status"], "ok");
    let mut req = DeployRequest::new(
        "nap",
        "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n",
    );
    req.timeout = Some(30);
    let deployed = c.deploy(&req).await.unwrap();
    assert_eq!(deployed.status, "registered");
    let map = c
        .run_parallel("nap", vec![json!(0), json!(0.01)], true)
        .await
        .unwrap();
    assert_eq!(
        (map.status, map.results.clone()),
        (TaskStatus::Completed, Some(vec![json!(0), json!(0.01)]))
    );

    let mut monitor = StatusMonitor::new(c.clone(), Duration::from_millis(20));
    let mut ids = Vec::new();
    for s in [0.05, 0.1, 0.15] {
        let record = c
            .spawn("nap", vec![json!(s)], Map::new(), false)
            .await
            .unwrap();
        monitor.watch(record.task_id);
        ids.push(record.task_id);
    }
    let mut completed = Vec::new();
    let mut transitions = 0;
    while let Some(t) = monitor.next().await {
        let t = t.unwrap();
        transitions += 1;
        assert_ne!(t.from, Some(t.to));
        if t.to == TaskStatus::Completed {
            completed.push(t.task_id);
        }
    }
    let first = ids[0];
    completed.sort();
    ids.sort();
    assert_eq!(
        completed, ids,
        "every watched task reported completing once"
    );
    assert!(transitions >= 3);
    assert_eq!(monitor.pending(), 0);

    let record = c.wait(first, Some(Duration::from_secs(10))).await.unwrap();
    assert_eq!(record.result, Some(json!(0.05)));
    let page = c.results(map.task_id, 1, 10).await.unwrap();
    assert_eq!(page.results, vec![json!(0.01)]);
    let list = c.tasks(Some(TaskStatus::Completed), 0, 100).await.unwrap();
    assert_eq!(list.total, 4);

    let entry = c.volume_put("v", "k", json!({"a": 1}), None).await.unwrap();
    assert_eq!(entry.version, 1);
    let err = c.volume_put("v", "k", json!(2), Some(9)).await.unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 412, .. }), "{err}");
    assert_eq!(
        c.volume_get("v", "k").await.unwrap().unwrap().value,
        json!({"a": 1})
    );
    assert!(c.volume_get("v", "missing").await.unwrap().is_none());
    c.file_put("v", "a/b.txt", b"bytes".to_vec()).await.unwrap();
    assert_eq!(c.file_get("v", "a/b.txt").await.unwrap(), b"bytes");
    assert_eq!(c.file_list("v", "a/").await.unwrap()[0].path, "a/b.txt");

    let mut values = BTreeMap::new();
    values.insert("TOKEN".to_string(), "s3cr3t-value".to_string());
    c.secret_set("svc", &values).await.unwrap();
    assert_eq!(c.secrets().await.unwrap()[0].keys, ["TOKEN"]);
    let mut with_secret = DeployRequest::new(
        "env",
        "import os\ndef env():\n    return os.environ['TOKEN']\n",
    );
    with_secret.secrets = vec!["svc".into()];
    c.deploy(&with_secret).await.unwrap();
    let record = c.spawn("env", vec![], Map::new(), true).await.unwrap();
    assert_eq!(
        record.result,
        Some(json!("s3cr3t-value")),
        "the function sees it"
    );
    for body in [
        serde_json::to_string(&c.functions().await.unwrap()).unwrap(),
        serde_json::to_string(&c.resources().await.unwrap()).unwrap(),
        serde_json::to_string(&c.secrets().await.unwrap()).unwrap(),
    ] {
        assert!(
            !body.contains("s3cr3t-value"),
            "no secret value in API answers: {body}"
        );
    }
    let tools = c.tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "wait_tasks"), "{tools:?}");
    assert!(tools.iter().all(|t| t.output_schema.is_some()));
    let err = c
        .spawn("missing", vec![], Map::new(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, .. }),
        "{err}"
    );
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_429_and_503() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let record = json!({
        "task_id": "6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11", "function_name": "f", "kind": "call",
        "status": "completed", "created_at": "2026-01-01T00:00:00Z", "started_at": null,
        "finished_at": null, "attempts": 1, "result": 1, "error": null, "progress": null,
        "backend_call_id": null
    });
    let router = axum::Router::new().route(
        "/status/{id}",
        axum::routing::get(move || {
            let counter = counter.clone();
            let record = record.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                match n {
                    0 => (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "0")],
                        String::new(),
                    ),
                    1 => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "0")],
                        String::new(),
                    ),
                    _ => (
                        axum::http::StatusCode::OK,
                        [("retry-after", "0")],
                        record.to_string(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = Client::new(&url, None).unwrap();
    let id = "6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11".parse().unwrap();
    let record = client.status(id).await.unwrap();
    assert_eq!(record.result, Some(json!(1)));
    assert_eq!(hits.load(Ordering::SeqCst), 3, "two retries, then success");
    hits.store(0, Ordering::SeqCst);
    let err = client.with_max_retries(1).status(id).await.unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 503, .. }), "{err}");
    assert!(Client::new("ftp://x", None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_live_and_resume_where_they_stopped() {
    use futures_util::StreamExt;
    use modal_agents::client::LogEvent;
    let (c, t) = server().await;
    // One long call: its prints stream while it runs, in order.
    let chatty = "import time\ndef chatty(n):\n    for i in range(n):\n        print(f'step {i}', flush=True)\n        time.sleep(0.3)\n    return n\n";
    c.deploy(&DeployRequest::new("chatty", chatty))
        .await
        .unwrap();
    let call = c
        .spawn("chatty", vec![json!(4)], Map::new(), false)
        .await
        .unwrap()
        .task_id;
    let events = c.follow_logs(call, Default::default()).await.unwrap();
    futures_util::pin_mut!(events);
    let (mut printed, mut while_running) = (String::new(), false);
    while let Some(event) = events.next().await {
        if let LogEvent::Output(chunk) = event.unwrap() {
            if printed.is_empty() {
                while_running = !t.rt.status(call).unwrap().status.is_terminal();
            }
            printed.push_str(&chunk.text);
        }
    }
    assert!(while_running, "a call's first line arrived while it ran");
    assert_eq!(printed, "step 0\nstep 1\nstep 2\nstep 3\n");

    // A map's output streams input by input.
    let code = "import sys, time\ndef talk(i):\n    time.sleep(0.3)\n    print(f'line {i}', flush=True)\n    if i == 3:\n        print('fin \u{e9}', file=sys.stderr)\n    return i\n";
    c.deploy(&DeployRequest::new("talk", code)).await.unwrap();
    let inputs = (0..6).map(|i| json!(i)).collect();
    let id = c.run_parallel("talk", inputs, false).await.unwrap().task_id;
    let events = c.follow_logs(id, Default::default()).await.unwrap();
    futures_util::pin_mut!(events);
    let (mut stdout, mut stderr, mut first_next, mut live, mut end) =
        (String::new(), String::new(), None, false, None);
    while let Some(event) = events.next().await {
        match event.unwrap() {
            LogEvent::Output(chunk) => {
                if first_next.is_none() && chunk.stream == "stdout" {
                    first_next = Some(chunk.next);
                    // The first line arrives while the map still runs.
                    live = !t.rt.status(id).unwrap().status.is_terminal();
                }
                match chunk.stream.as_str() {
                    "stdout" => stdout.push_str(&chunk.text),
                    _ => stderr.push_str(&chunk.text),
                }
            }
            LogEvent::End(status) => end = Some(status),
        }
    }
    assert!(live, "the output streamed while the task ran");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["line 0", "line 1", "line 2", "line 3", "line 4", "line 5"]
    );
    assert_eq!(stderr, "fin \u{e9}\n");
    assert_eq!(end.as_deref(), Some("completed"));

    // Resumed after the first chunk: the rest, nothing twice.
    let rest = c.follow_logs(id, first_next.unwrap()).await.unwrap();
    let rest: Vec<_> = rest.collect().await;
    let resumed: String = rest
        .iter()
        .filter_map(|e| match e {
            Ok(LogEvent::Output(c)) if c.stream == "stdout" => Some(c.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        format!(
            "{}{resumed}",
            &stdout[..first_next.unwrap().stdout as usize]
        ),
        stdout,
        "resumed exactly where the first chunk ended"
    );
    assert!(matches!(rest.last(), Some(Ok(LogEvent::End(_)))));

    // A resume point that is not one is a clear error.
    let raw = reqwest::Client::new()
        .get(format!("{}/tasks/{id}/logs?follow=true", c.base_url()))
        .bearer_auth(TOKEN)
        .header("last-event-id", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 422);
    let problem: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(problem["field"], "Last-Event-ID", "{problem}");
    t.rt.shutdown().await;
}

/// A volume of 2,500 files is listed a page at a time: 1000 by default
/// with a `Link: rel="next"` to the rest, `limit` bounded and named when
/// wrong, every file exactly once and in order; the client pages through
/// all of them, and the tool answers `next_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_file_listings_come_a_page_at_a_time() {
    let (c, t) = server().await;
    let code = "import json, os\ndef fill(n):\n    root = json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/v']\n    for i in range(n):\n        d = os.path.join(root, 'd%d' % (i % 7))\n        os.makedirs(d, exist_ok=True)\n        open(os.path.join(d, 'f %04d' % i), 'w').close()\n    return n\n";
    let mut req = DeployRequest::new("fill", code);
    req.volumes = Some(modal_agents::wire::VolumeMounts::Mounts(
        [("/v".to_owned(), "many".to_owned())].into(),
    ));
    c.deploy(&req).await.unwrap();
    let record = c
        .spawn("fill", vec![json!(2500)], Map::new(), true)
        .await
        .unwrap();
    assert_eq!(record.status, TaskStatus::Completed, "{record:?}");
    let http = reqwest::Client::new();
    let mut url = format!("{}/volumes/many/files", c.base_url());
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let r = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let next = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Vec<serde_json::Value> = r.json().await.unwrap();
        pages += 1;
        assert!(page.len() <= 1000);
        seen.extend(page.iter().map(|f| f["path"].as_str().unwrap().to_owned()));
        match next {
            Some(link) => {
                let path = link
                    .strip_prefix('<')
                    .and_then(|l| l.split_once('>'))
                    .map(|(p, rest)| {
                        assert_eq!(rest, "; rel=\"next\"");
                        p.to_owned()
                    })
                    .unwrap();
                url = format!("{}{path}", c.base_url());
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 2500);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "in order, each once");
    for bad in ["0", "10001", "x"] {
        let r = http
            .get(format!("{}/volumes/many/files?limit={bad}", c.base_url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "limit={bad}");
        assert!(r.text().await.unwrap().contains("limit"));
    }
    assert_eq!(c.file_list("many", "").await.unwrap().len(), 2500);
    assert_eq!(c.file_list("many", "d3/").await.unwrap().len(), 357);
    let answer = c
        .tool(
            "list_volume_files",
            json!({"volume_name": "many", "limit": 10}),
        )
        .await
        .unwrap();
    assert_eq!(answer["files"].as_array().unwrap().len(), 10);
    let after = answer["next_after"].as_str().unwrap();
    let answer = c
        .tool(
            "list_volume_files",
            json!({"volume_name": "many", "limit": 10, "after": after}),
        )
        .await
        .unwrap();
    assert!(answer["files"][0]["path"].as_str().unwrap() > after);
    t.rt.shutdown().await;
}

/// A volume's keys are listed a page at a time too: `limit` keys, or about
/// 8 MiB of values (at least one entry), then `next_after`; the client and
/// the `coordinate_state` tool page through every key exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_key_listings_come_a_page_at_a_time() {
    let (c, t) = scripted_server().await;
    for i in 0..30 {
        c.volume_put("keys", &format!("k{i:02}"), json!(i), None)
            .await
            .unwrap();
    }
    // Ten values of nearly 1 MiB: a page stops at about 8 MiB.
    let big = "b".repeat((1 << 20) - 64);
    for i in 0..10 {
        c.volume_put("keys", &format!("z{i}"), json!(big), None)
            .await
            .unwrap();
    }
    let http = reqwest::Client::new();
    let get = |query: String| {
        let http = http.clone();
        let url = format!("{}/volumes/keys/state?{query}", c.base_url());
        async move {
            let r = http.get(url).bearer_auth(TOKEN).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let mut keys = Vec::new();
    let mut query = "prefix=k&limit=7".to_owned();
    loop {
        let (status, page) = get(query.clone()).await;
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 7);
        keys.extend(
            entries
                .iter()
                .map(|e| e["key"].as_str().unwrap().to_owned()),
        );
        match page["next_after"].as_str() {
            Some(after) => query = format!("prefix=k&limit=7&after={after}"),
            None => break,
        }
    }
    let want: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();
    assert_eq!(keys, want);
    let (_, page) = get("prefix=z".into()).await;
    let n = page["entries"].as_array().unwrap().len();
    assert!((1..10).contains(&n), "{n} values of 1 MiB in one page");
    assert_eq!(page["next_after"], format!("z{}", n - 1));
    let (status, page) = get("limit=0".into()).await;
    assert_eq!(status, 422);
    assert!(page.to_string().contains("limit"), "{page}");
    // The client pages through all 40.
    assert_eq!(c.volume_list("keys", "").await.unwrap().len(), 40);
    let answer = c
        .tool(
            "coordinate_state",
            json!({"volume_name": "keys", "operation": "list", "key": "k", "limit": 25}),
        )
        .await
        .unwrap();
    assert_eq!(answer["keys"].as_array().unwrap().len(), 25);
    assert_eq!(answer["next_after"], "k24");
    t.rt.shutdown().await;
}

/// Listing functions with their code carries at most 8 MiB of it: past
/// that a function is listed with `code_omitted` (its own route has it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_listing_with_code_is_bounded() {
    let (c, t) = scripted_server().await;
    let padding = format!("# {}\n", "p".repeat((1 << 20) - 4096));
    for i in 0..9 {
        let code = format!("{padding}def f{i}():\n    return {i}\n");
        c.deploy(&DeployRequest::new(format!("f{i}"), code))
            .await
            .unwrap();
    }
    let api = support::Api::new(c.base_url().to_owned(), TOKEN);
    let listed = api.get("/functions?include_code=true").await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 9);
    let with_code = listed
        .iter()
        .filter(|f| f["spec"]["code"].is_string())
        .count();
    let omitted = listed
        .iter()
        .filter(|f| f["spec"]["code_omitted"] == true)
        .count();
    assert_eq!(
        (with_code, omitted),
        (8, 1),
        "{with_code} with code, {omitted} without"
    );
    // Without the flag, no code at all.
    let listed = api.get("/functions").await;
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["spec"].get("code").is_none() && f["spec"].get("code_omitted").is_none()));
    t.rt.shutdown().await;
}
