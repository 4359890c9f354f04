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

/// The server's resident memory in bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib << 10
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

alone!(
    /// MCP sessions have a ceiling per token, a short life when the
    /// handshake is never completed, a small `initialize`, and names echoed
    /// back cut short.
    mcp_sessions_are_bounded => attack_mcp_sessions_are_bounded, BOUNDS_ENV
);

/// The attack of [`mcp_sessions_are_bounded`], against a server started
/// with [`BOUNDS_ENV`].
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
    // An unknown tool's name is echoed cut short.
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "t".repeat(100_000), "arguments": {}}});
    let (status, _, body) = mcp(api, Some(&kept), &call).await;
    assert!(status == 200 || status == 404, "{status}");
    assert!(body.len() < 4_000, "{} bytes echoed", body.len());
    assert!(body.contains("unknown tool"), "{body}");
    // Memory: the burst left nothing behind worth counting.
    let grown = rss(t.pid).saturating_sub(rss_before);
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
}

alone!(
    /// A browser page of another origin is refused on every route; without
    /// authentication, so is a `Host` that is not loopback (DNS rebinding).
    foreign_origins_and_rebound_hosts_are_refused => attack_foreign_origins_and_rebound_hosts_are_refused
);

/// The attack of [`foreign_origins_and_rebound_hosts_are_refused`], against
/// any server (it starts one without authentication of its own).
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
