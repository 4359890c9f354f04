//! Attacks on the server's ceilings by a caller holding a valid token: MCP
//! sessions opened by the thousand or with huge handshakes, names echoed
//! back, browser pages of other origins and rebound host names, results
//! and log followers that would grow memory, and secrets a function was
//! given trying to leave through any output.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::support::{self, Api};
use super::{Target, BIN};

/// The environment every attack here expects of its server: small MCP
/// ceilings so they are reached quickly.
pub(crate) const BOUNDS_ENV: &[(&str, &str)] = &[
    ("MODAL_AGENTS_MCP_MAX_SESSIONS_PER_TOKEN", "16"),
    ("MODAL_AGENTS_MCP_INIT_TIMEOUT", "1"),
    ("MODAL_AGENTS_WEBHOOK_ALLOW", "127.0.0.1/32"),
];

/// A `/proc/PID/status` figure in bytes (`VmRSS:`, `RssAnon:`, ...).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib << 10
}

/// The server's resident memory in bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The server's resident memory that is its own (heap, stacks: anonymous),
/// not pages of its program file read in as more of its code runs.
pub(crate) fn rss_anon(pid: u32) -> u64 {
    status_bytes(pid, "RssAnon:")
}

/// A gauge from `/metrics`.
async fn gauge(api: &Api, name: &str) -> u64 {
    let text = api.text("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Posts one JSON-RPC message to `/mcp` (in `session`, if any); returns the
/// status, the session header and the body as text.
async fn mcp(api: &Api, session: Option<&str>, body: &Value) -> (u16, Option<String>, String) {
    let mut req = api
        .http
        .post(format!("{}/mcp", api.url))
        .bearer_auth(&api.token)
        .header("accept", "application/json, text/event-stream")
        .json(body);
    if let Some(s) = session {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-06-18");
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, id, r.text().await.unwrap())
}

/// A new MCP session that completed its handshake; its id.
pub(crate) async fn mcp_session(api: &Api) -> String {
    let (status, id, body) = mcp(api, None, &initialize("hostile")).await;
    assert_eq!(status, 200, "{body}");
    let id = id.expect("a session id");
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, body) = mcp(api, Some(&id), &done).await;
    assert_eq!(status, 202, "{body}");
    id
}

/// Calls `tool` in `session`; the answer as the client receives it (SSE).
pub(crate) async fn mcp_tool(api: &Api, session: &str, tool: &str, args: Value) -> String {
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": tool, "arguments": args}});
    let (status, _, body) = mcp(api, Some(session), &call).await;
    assert_eq!(status, 200, "{tool}: {body}");
    body
}

fn initialize(client_name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": client_name, "version": "1"}}})
}

/// MCP sessions have a ceiling per token, a short life when the
/// handshake is never completed, a small `initialize`, and names echoed
/// back cut short.
///
/// One of the attacks `every_bound_holds_in_a_row` makes in a row against one server (the server has [`BOUNDS_ENV`]).
pub(crate) async fn attack_mcp_sessions_are_bounded(t: &Target<'_>) {
    let api = t.api;
    let open = || gauge(api, "modal_agents_mcp_sessions");
    let rss_before = rss(t.pid);
    // One session that completes its handshake.
    let (status, kept, body) = mcp(api, None, &initialize("kept")).await;
    assert_eq!(status, 200, "{body}");
    let kept = kept.expect("a session id");
    let (status, _, body) = mcp(
        api,
        Some(&kept),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // Thousands of initializes that never complete, with handshakes just
    // under the limit: never more than 16 live at once for this token
    // (those that expire make room for more).
    let name = "n".repeat(15 << 10);
    let mut refused = 0;
    for i in 0..2_000 {
        let (status, _, body) = mcp(api, None, &initialize(&name)).await;
        match status {
            200 => {}
            429 => {
                refused += 1;
                assert!(body.contains("16 live MCP sessions"), "{body}");
            }
            other => panic!("initialize answered {other}: {body}"),
        }
        if i % 100 == 0 {
            let live = open().await;
            assert!(live <= 16, "{live} sessions live for one token");
        }
    }
    assert!(refused > 1_000, "only {refused} of 2,000 refused");
    // The refusal says when to try again, as problem+json.
    let r = api
        .http
        .post(format!("{}/mcp", api.url))
        .bearer_auth(&api.token)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize("x"))
        .send()
        .await
        .unwrap();
    if r.status() == 429 {
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    // The uncompleted ones expire; the completed one stays and works.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while open().await > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "uninitialized sessions never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, body) = mcp(api, Some(&kept), &list).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("spawn_task"),
        "{}",
        &body[..body.len().min(300)]
    );
    // A handshake over the limit is refused before any session exists.
    let (status, id, body) = mcp(api, None, &initialize(&"x".repeat(1 << 20))).await;
    assert_eq!(status, 413, "{}", &body[..body.len().min(300)]);
    assert!(id.is_none() && body.len() < 2_000, "{body}");
    // Nor is a session initialized again: each new client info would stay
    // with it (8 of 30 MB each once took the RSS up 250 MB for good).
    let (status, _, body) = mcp(api, Some(&kept), &initialize(&"x".repeat(1 << 20))).await;
    assert_eq!(status, 413, "{}", &body[..body.len().min(300)]);
    let (status, _, body) = mcp(api, Some(&kept), &initialize("again")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("initialized once"), "{body}");
    // An unknown tool's name is echoed cut short.
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "t".repeat(100_000), "arguments": {}}});
    let (status, _, body) = mcp(api, Some(&kept), &call).await;
    assert!(status == 200 || status == 404, "{status}");
    assert!(body.len() < 4_000, "{} bytes echoed", body.len());
    assert!(body.contains("unknown tool"), "{body}");
    // A long method or id, JSON that is not JSON, a huge argument name:
    // refused or answered short, never repeated whole.
    for (body, field) in [
        (
            json!({"jsonrpc": "2.0", "id": 4, "method": "m".repeat(1 << 20)}),
            "method",
        ),
        (
            json!({"jsonrpc": "2.0", "id": "i".repeat(1 << 20), "method": "ping"}),
            "id",
        ),
    ] {
        let (status, _, text) = mcp(api, Some(&kept), &body).await;
        assert_eq!(status, 422, "{}", &text[..text.len().min(300)]);
        assert!(text.contains(field) && text.len() < 2_000, "{text}");
    }
    let r = api
        .http
        .post(format!("{}/mcp", api.url))
        .bearer_auth(&api.token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &kept)
        .body("{not json")
        .send()
        .await
        .unwrap();
    // What cannot be read is answered as JSON-RPC says: a parse error with
    // a null id.
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (answer["id"].clone(), answer["error"]["code"].clone()),
        (Value::Null, json!(-32700)),
        "{answer}"
    );
    let huge_key = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "list_functions", "arguments": {"k".repeat(1 << 20): 1}}});
    let (_, _, text) = mcp(api, Some(&kept), &huge_key).await;
    assert!(text.len() < 10_000, "{} bytes echoed", text.len());
    // A session holds at most 16 streams at once.
    let mut held = Vec::new();
    for _ in 0..16 {
        let r = api
            .http
            .get(format!("{}/mcp", api.url))
            .bearer_auth(&api.token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &kept)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let r = api
        .http
        .get(format!("{}/mcp", api.url))
        .bearer_auth(&api.token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &kept)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    drop(held);
    // A session ends with 200, once; then it is not found (problem+json).
    for want in [200, 404] {
        let r = api
            .http
            .delete(format!("{}/mcp", api.url))
            .bearer_auth(&api.token)
            .header("mcp-session-id", &kept)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
    }
    // Memory: the burst left nothing behind worth counting.
    let grown = rss(t.pid).saturating_sub(rss_before);
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
}

/// A browser page of another origin is refused on every route; without
/// authentication, so is a `Host` that is not loopback (DNS rebinding).
///
/// One of the attacks `every_bound_holds_in_a_row` makes in a row against one server.
pub(crate) async fn attack_foreign_origins_and_rebound_hosts_are_refused(t: &Target<'_>) {
    let api = t.api;
    let deploy = json!({"function_code": "def from_a_page():\n    return 1\n", "function_name": "from_a_page"});
    for (method, path) in [
        (Method::POST, "/deploy-function"),
        (Method::GET, "/healthz"),
        (Method::GET, "/tasks"),
        (Method::POST, "/mcp"),
    ] {
        let r = api
            .http
            .request(method.clone(), format!("{}{path}", api.url))
            .bearer_auth(&api.token)
            .header("origin", "http://attacker.example")
            .json(&deploy)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    assert_eq!(
        api.send(Method::GET, "/functions/from_a_page", None)
            .await
            .0,
        404
    );
    // Without authentication: the rebinding shape is refused, loopback is not.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--insecure-no-auth",
            "--addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("MODAL_AGENTS_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_owned()
    };
    let port = url.rsplit(':').next().unwrap().to_owned();
    let http = reqwest::Client::new();
    let rebound = http
        .post(format!("{url}/deploy-function"))
        .header("host", format!("attacker.example:{port}"))
        .header("origin", format!("http://attacker.example:{port}"))
        .json(&deploy)
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let text = rebound.text().await.unwrap();
    assert!(text.contains("--allowed-host"), "{text}");
    let local = http
        .post(format!("{url}/deploy-function"))
        .json(&deploy)
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200, "{}", local.text().await.unwrap());
    support::stop(&mut child);
}

/// Peak resident memory since the last [`reset_peak`], in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib << 10
}

/// Starts measuring [`peak_rss`] from now.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// A GET's status and body bytes.
async fn raw_get(api: &Api, path: &str) -> (u16, Vec<u8>) {
    let r = api
        .http
        .get(format!("{}{path}", api.url))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// Results over 4 KiB live in the task's files, not in memory, the
/// journal or any listing; past 64 MiB they are refused; large volume
/// files stream over HTTP and are refused by the MCP tool.
///
/// One of the attacks `every_bound_holds_in_a_row` makes in a row against one server.
pub(crate) async fn attack_large_results_stay_out_of_memory_and_listings(t: &Target<'_>) {
    let api = t.api;
    api.post(
        "/deploy-function",
        json!({"function_code": "def big(n):\n    return 'x' * n\n", "function_name": "big"}),
    )
    .await;
    let rss_before = rss(t.pid);
    // 300 calls of 1 MB results: held in memory they would be more than
    // twice the bound below.
    const MB: u64 = 1_000_000;
    let mut ids = Vec::new();
    for _ in 0..300 {
        let task = api
            .post("/spawn-task", json!({"function_name": "big", "args": [MB]}))
            .await;
        ids.push(task["task_id"].as_str().unwrap().to_owned());
    }
    let waited = api
        .post("/tasks/wait", json!({"task_ids": ids, "timeout_s": 300}))
        .await;
    assert_eq!(waited["done"], true, "{}", waited["finished"]);
    assert!(
        waited.to_string().len() < 1 << 20,
        "the wait answer is {} bytes",
        waited.to_string().len()
    );
    let grown = rss(t.pid).saturating_sub(rss_before);
    assert!(
        grown < 128 << 20,
        "300 MB of results grew the RSS {} MiB",
        grown >> 20
    );
    // Mid-sized results (60 KB, under the old 64 KiB inline bound) stay
    // out of memory too: 600 of them would be 36 MB there.
    let rss_before = rss_anon(t.pid);
    let mut mid = Vec::new();
    for _ in 0..600 {
        let task = api
            .post(
                "/spawn-task",
                json!({"function_name": "big", "args": [60_000]}),
            )
            .await;
        mid.push(task["task_id"].as_str().unwrap().to_owned());
    }
    let waited = api
        .post("/tasks/wait", json!({"task_ids": mid, "timeout_s": 300}))
        .await;
    assert_eq!(waited["done"], true);
    let grown = rss_anon(t.pid).saturating_sub(rss_before);
    assert!(
        grown < 16 << 20,
        "36 MB of mid-sized results grew the RSS {} MiB",
        grown >> 20
    );
    // Listings carry no results, with or without the flag (these are not
    // small enough to be in a record).
    for path in [
        "/tasks?limit=1000",
        "/tasks?limit=1000&include_results=true",
    ] {
        let (status, body) = raw_get(api, path).await;
        assert_eq!(status, 200);
        assert!(body.len() < 1 << 20, "{path} answered {} bytes", body.len());
    }
    let journal = std::fs::metadata(t.data.join("tasks.journal"))
        .unwrap()
        .len();
    assert!(journal < 16 << 20, "the journal holds {journal} bytes");
    // One status streams its result from the file.
    let (status, body) = raw_get(api, &format!("/status/{}", ids[7])).await;
    assert_eq!(status, 200);
    let one: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(one["result"].as_str().map(str::len), Some(MB as usize));
    assert_eq!(one["result_ref"]["bytes"], MB + 2);
    // Over MCP: a listing-sized wait stays small; a status carries a result
    // up to 1 MiB.
    let session = mcp_session(api).await;
    let text = mcp_tool(api, &session, "wait_tasks", json!({"task_ids": ids})).await;
    assert!(
        text.len() < 1 << 20,
        "wait_tasks answered {} bytes",
        text.len()
    );
    let text = mcp_tool(api, &session, "get_task_status", json!({"task_id": ids[3]})).await;
    assert!(
        text.contains(&"x".repeat(1000)),
        "the result is in the answer"
    );
    // Errors are listed in short: the message cut, no traceback.
    let raiser = "def raiser(n):\n    if n:\n        return raiser(n - 1)\n    raise ValueError('e' * 20000)\n";
    api.post(
        "/deploy-function",
        json!({"function_code": raiser, "function_name": "raiser"}),
    )
    .await;
    let mut failed = Vec::new();
    for _ in 0..50 {
        let task = api
            .post(
                "/spawn-task",
                json!({"function_name": "raiser", "args": [300], "wait": true}),
            )
            .await;
        assert_eq!(task["status"], "failed");
        failed.push(task);
    }
    assert!(failed[0]["error"]["traceback"].as_str().unwrap().len() > 8_000);
    let (_, body) = raw_get(api, "/tasks?status=failed&limit=1000").await;
    let listed = serde_json::from_slice::<Value>(&body).unwrap()["tasks"]
        .as_array()
        .unwrap()
        .len();
    assert!(listed >= 50);
    assert!(
        body.len() < listed * 2_000,
        "{listed} failed tasks listed in {} bytes",
        body.len()
    );
    // A map of large results is paged by bytes.
    let map = api
        .post(
            "/run-parallel",
            json!({"function_name": "big", "inputs": vec![MB; 40], "wait": true}),
        )
        .await;
    let map_id = map["task_id"].as_str().unwrap();
    assert!(
        map.to_string().len() < 9 << 20,
        "run-parallel answered {} bytes",
        map.to_string().len()
    );
    let (_, body) = raw_get(api, &format!("/status/{map_id}")).await;
    let view: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        view["result"].is_null() && view["results_url"].is_string(),
        "{}",
        &view.to_string()[..300]
    );
    let (_, body) = raw_get(api, &format!("/status/{map_id}/results?limit=1000")).await;
    let page: Value = serde_json::from_slice(&body).unwrap();
    let n = page["results"].as_array().unwrap().len();
    assert!(
        (1..40).contains(&n) && page["next_offset"] == n,
        "{n} results, next {}",
        page["next_offset"]
    );
    assert!(
        body.len() <= (8 << 20) + (MB as usize) + 4096,
        "a page of {} bytes",
        body.len()
    );
    // Past 64 MiB: refused, for a call and for one input of a map.
    let over = 65 << 20;
    let call = api
        .post(
            "/spawn-task",
            json!({"function_name": "big", "args": [over], "wait": true}),
        )
        .await;
    assert_eq!(call["status"], "failed", "{}", call["status"]);
    assert_eq!(call["error"]["type"], "ResultTooLarge", "{}", call["error"]);
    let map = api
        .post(
            "/run-parallel",
            json!({"function_name": "big", "inputs": [1, over, 2], "wait": true}),
        )
        .await;
    assert_eq!(map["results"][0], "x");
    assert_eq!(map["results"][1]["error"]["type"], "ResultTooLarge");
    assert_eq!(map["results"][2], "xx");
    // A 30 MB volume file streams over HTTP; five readers at once do not
    // cost five copies of it.
    let file = vec![b'v'; 30 << 20];
    let r = api
        .http
        .put(format!("{}/volumes/bigfiles/files/big.bin", api.url))
        .bearer_auth(&api.token)
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    reset_peak(t.pid);
    let base = rss(t.pid);
    let reads = (0..5).map(|_| raw_get(api, "/volumes/bigfiles/files/big.bin"));
    for (status, body) in futures_util::future::join_all(reads).await {
        assert_eq!(status, 200);
        assert!(body == file, "the file came back changed");
    }
    let peak = peak_rss(t.pid).saturating_sub(base);
    assert!(
        peak < 48 << 20,
        "five reads of a 30 MB file peaked {} MiB over",
        peak >> 20
    );
    // The MCP tool refuses it, naming the streaming route.
    let text = mcp_tool(
        api,
        &session,
        "read_volume_file",
        json!({"volume_name": "bigfiles", "path": "big.bin"}),
    )
    .await;
    assert!(
        text.contains("isError") && text.contains("GET /volumes/bigfiles/files/big.bin"),
        "{}",
        &text[..text.len().min(500)]
    );
    assert!(text.len() < 4096);
}

/// The server's CPU time so far, in clock ticks (user + system).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The server's thread count.
fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// The server's CPU use over `window`, in percent of one core.
async fn cpu_percent(pid: u32, window: Duration) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    (cpu_ticks(pid) - before) as f64 / ticks / window.as_secs_f64() * 100.0
}

/// Opens a follower of `id`'s logs; its status and, for a 200, a task that
/// reads the stream to its end and returns the text.
async fn follow(
    api: &Api,
    id: &str,
) -> (u16, Option<String>, Option<tokio::task::JoinHandle<String>>) {
    let r = api
        .http
        .get(format!("{}/tasks/{id}/logs?follow=true", api.url))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    if status != 200 {
        return (status, retry, None);
    }
    let reader = tokio::spawn(async move {
        let mut r = r;
        let mut text = Vec::new();
        while let Ok(Some(chunk)) = r.chunk().await {
            text.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    (status, retry, Some(reader))
}

/// Followers allowed by [`FOLLOWERS_ENV`]: per task and in all.
pub(crate) const FOLLOWERS_ENV: &[(&str, &str)] = &[
    ("MODAL_AGENTS_MAX_FOLLOWERS_PER_TASK", "310"),
    ("MODAL_AGENTS_MAX_FOLLOWERS", "320"),
];

/// A server-wide ceiling on MCP sessions below the per-token one.
/// and a request limit of 1 MiB.
const SESSIONS_ENV: &[(&str, &str)] = &[
    ("MODAL_AGENTS_MCP_MAX_SESSIONS", "3"),
    ("MODAL_AGENTS_BODY_LIMIT", "1048576"),
    (
        "MODAL_AGENTS_TOKEN",
        "hostile-token-0123456789,other-token-0123456789abcdef",
    ),
];

alone!(
    /// Past the server's ceiling on live MCP sessions, whoever asks, an
    /// `initialize` is refused with 503 and Retry-After, as problem+json;
    /// an ended session makes room. A message past the request limit is
    /// refused (413) before it reaches a session.
    mcp_sessions_have_a_ceiling_for_the_server => attack_mcp_sessions_have_a_ceiling_for_the_server, SESSIONS_ENV
);

/// The attack of [`mcp_sessions_have_a_ceiling_for_the_server`].
pub(crate) async fn attack_mcp_sessions_have_a_ceiling_for_the_server(t: &Target<'_>) {
    let api = t.api;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, id, body) = mcp(api, None, &initialize(&format!("c{i}"))).await;
        assert_eq!(status, 200, "{body}");
        ids.push(id.expect("a session id"));
    }
    let r = api
        .http
        .post(format!("{}/mcp", api.url))
        .bearer_auth(&api.token)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize("fourth"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let text = r.text().await.unwrap();
    assert!(text.contains("sessions"), "{text}");
    let r = api
        .http
        .delete(format!("{}/mcp", api.url))
        .bearer_auth(&api.token)
        .header("mcp-session-id", &ids[0])
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _, body) = mcp(api, None, &initialize("room")).await;
    assert_eq!(status, 200, "{body}");
    // Another token cannot use (or end) this token's session: to it, the
    // session does not exist.
    for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
        let r = api
            .http
            .request(method.clone(), format!("{}/mcp", api.url))
            .bearer_auth("other-token-0123456789abcdef")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &ids[1])
            .header("mcp-protocol-version", "2025-06-18")
            .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method}");
    }
    let (status, _, body) = mcp(
        api,
        Some(&ids[1]),
        &json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
    )
    .await;
    assert_eq!(
        status,
        200,
        "the owner still can: {}",
        &body[..body.len().min(200)]
    );
    let huge = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "list_functions", "arguments": {"pad": "p".repeat(2 << 20)}}});
    let (status, _, body) = mcp(api, Some(&ids[1]), &huge).await;
    assert_eq!(status, 413, "{}", &body[..body.len().min(300)]);
    assert!(body.contains("1048576"), "{body}");
}

/// 300 followers of a printing task are woken by its writes (no
/// polling, no thread each) and cost little; past the per-task and
/// overall limits a follower is refused with Retry-After.
///
/// One of the attacks `every_bound_holds_in_a_row` makes in a row against one server (the server has [`FOLLOWERS_ENV`]).
pub(crate) async fn attack_log_followers_are_cheap_and_capped(t: &Target<'_>) {
    let api = t.api;
    // The printers print until the test opens their gate (a file in a
    // volume), so the limits are checked while both are surely running,
    // however slow the machine.
    let code = "import json, os, sys, time\ndef printer():\n    gate = os.path.join(json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/gate'], 'open')\n    i = 0\n    while not os.path.exists(gate) and i < 2400:\n        print('out', i)\n        print('err', i, file=sys.stderr)\n        i += 1\n        time.sleep(0.05)\n    print('out last')\n    print('err last', file=sys.stderr)\n    return i\n";
    api.post(
        "/deploy-function",
        json!({"function_code": code, "function_name": "printer", "volumes": {"/gate": "followers-gate"}}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let task = api
            .post("/spawn-task", json!({"function_name": "printer"}))
            .await;
        ids.push(task["task_id"].as_str().unwrap().to_owned());
    }
    let (id, other) = (ids[0].clone(), ids[1].clone());
    for id in &ids {
        api.until(&format!("/status/{id}"), "the printer running", |v| {
            v["status"] == "running"
        })
        .await;
    }
    let alone = cpu_percent(t.pid, Duration::from_secs(2)).await;
    let threads_alone = threads(t.pid);
    let mut readers = Vec::new();
    for _ in 0..300 {
        let (status, _, reader) = follow(api, &id).await;
        assert_eq!(status, 200);
        readers.push(reader.unwrap());
    }
    let followed = cpu_percent(t.pid, Duration::from_secs(2)).await;
    let threads_followed = threads(t.pid);
    eprintln!(
        "printing task: {alone:.1}% CPU and {threads_alone} threads alone, {followed:.1}% and {threads_followed} threads with 300 followers"
    );
    // A guard against polling coming back (each follower reading files on
    // a timer cost ~30% in a release build): this is a debug build, ten
    // times slower. The release figure is `cargo bench --bench followers`.
    assert!(
        followed - alone < 40.0,
        "300 followers cost {:.1}% CPU",
        followed - alone
    );
    // No thread per follower (at most the log writer's own may come and
    // go meanwhile).
    assert!(
        threads_followed <= threads_alone + 2,
        "threads {threads_alone} -> {threads_followed}"
    );
    // Past the limits: 429 for this task, 503 for the server, each with
    // Retry-After.
    for _ in 0..10 {
        let (status, _, reader) = follow(api, &id).await;
        assert_eq!(status, 200);
        readers.push(reader.unwrap());
    }
    let (status, retry, _) = follow(api, &id).await;
    assert_eq!(status, 429);
    assert!(retry.is_some());
    for _ in 0..10 {
        let (status, _, reader) = follow(api, &other).await;
        assert_eq!(status, 200);
        readers.push(reader.unwrap());
    }
    let (status, retry, _) = follow(api, &other).await;
    assert_eq!(status, 503, "past the server's limit");
    assert!(retry.is_some());
    let opened = api
        .http
        .put(format!("{}/volumes/followers-gate/files/open", api.url))
        .bearer_auth(&api.token)
        .body("")
        .send()
        .await
        .unwrap();
    assert!(opened.status().is_success(), "{}", opened.status());
    // Every follower gets all of it, then the end.
    for reader in readers {
        let text = reader.await.unwrap();
        assert!(
            text.contains("out 0") && text.contains("out last"),
            "{}",
            &text[text.len().saturating_sub(300)..]
        );
        assert!(text.contains("err 0") && text.contains("err last"));
        assert!(
            text.contains("event: end\ndata: completed"),
            "{}",
            &text[text.len().saturating_sub(300)..]
        );
    }
    // The places are given back.
    let (status, _, reader) = follow(api, &id).await;
    assert_eq!(status, 200);
    reader.unwrap().await.unwrap();
}
