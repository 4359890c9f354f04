//! The agent tools over MCP, driven by the official MCP Python SDK (`mcp`,
//! installed by `scripts/test` under `target/py-venv`) as an agent host
//! would: Streamable HTTP at `/mcp` of the API server, and stdio through
//! `modal-agents mcp`. Over HTTP and forwarded, the server runs in this
//! process over a ScriptedBackend (`double`, `nap`, `kilo` and `f` are
//! Rust closures, no python3); over stdio on an embedded runtime the whole
//! path runs end to end on python3 containers. The session (tests/mcp/client.py)
//! lists tools, deploys, maps 1,000 inputs, spawns and waits, does a CAS,
//! sends a bad argument and an unknown tool; over HTTP it is first refused
//! without a token and from a browser origin.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "mcp-test-token-0123456789";
const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");

/// The API server over a ScriptedBackend in this process, accepting
/// `tokens`: `double(x)` doubles, `nap(s)` sleeps `s` seconds and returns it
/// (cancellable), `kilo(i)` returns 1 KiB, `f` is the identity. Its URL, and
/// what keeps it alive.
async fn scripted_server(tokens: &[&str]) -> (String, support::ScriptedRuntime) {
    use serde_json::json;
    let t = support::scripted(&["f"]).await;
    t.scripts
        .script("double", |a, _| Ok(json!(a[0].as_i64().unwrap_or(0) * 2)))
        .script("kilo", |_, _| Ok(json!("k".repeat(1024))))
        .script_async("nap", |a, _| {
            let s = a.first().and_then(serde_json::Value::as_f64).unwrap_or(0.0);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs_f64(s)).await;
                Ok(json!(s))
            })
        });
    let router = modal_agents::api::app(
        t.rt.clone(),
        modal_agents::api::ApiConfig {
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            ..modal_agents::api::ApiConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, t)
}

/// [`session`] off the async test's threads.
async fn session_async(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        session(&args)
    })
    .await
    .unwrap()
}

fn python() -> PathBuf {
    support::venv_bin("python")
}

/// Runs the client session with `args`; its exit status and output,
/// killed past two minutes.
fn session(args: &[&str]) -> (bool, String) {
    // Over a runtime of its own (not forwarded) a waited map tells progress.
    let local = args[0] == "http" || !args.contains(&"--url");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("EXPECT_MAP_PROGRESS", if local { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = support::output_text(&out);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_session_over_streamable_http() {
    let (url, _t) = scripted_server(&[TOKEN]).await;
    let (ok, out) = session_async(vec!["http".into(), format!("{url}/mcp"), TOKEN.into()]).await;
    assert!(ok && out.contains("all ok"), "{out}");
    assert!(out.contains("ok a missing token is 401"), "{out}");
    assert!(out.contains("ok a browser origin is refused"), "{out}");
    assert!(out.contains("ok a waited map sends progress"), "{out}");
    assert!(
        out.contains("ok a waited sandbox exec sends progress"),
        "{out}"
    );
}

/// `modal-agents mcp` on an embedded runtime in `dir`, its stdin and
/// stdout piped.
fn mcp_on_stdio(dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new(BIN)
        .args(["mcp", "--data-dir"])
        .arg(dir.join("data"))
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Over stdio every line gets an answer: one that is not a JSON-RPC
/// message (not JSON, not UTF-8, too deep, an array) is a JSON-RPC error
/// with a null id, and the session goes on (it used to be dropped while the
/// host waited for ever).
#[test]
fn every_stdio_line_gets_an_answer() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut child = mcp_on_stdio(dir.path());
    let mut stdin = child.stdin.take().unwrap();
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    writeln!(stdin, "{init}").unwrap();
    stdin
        .write_all(b"garbage\n{\"id\":9,\"name\":\"x\xff\"}\n[1]\n")
        .unwrap();
    writeln!(stdin, "{}", "[".repeat(100_000)).unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":2,"method":"ping"}}"#).unwrap();
    // Arguments that are not an object: invalid params, to the call's id
    // (rmcp alone said "method not found: tools/call").
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"list_functions","arguments":[1,2]}}}}"#
    )
    .unwrap();
    drop(stdin);
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let answers: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(child.wait().unwrap().success());
    let errors: Vec<i64> = answers
        .iter()
        .filter(|a| a["id"].is_null())
        .map(|a| a["error"]["code"].as_i64().unwrap())
        .collect();
    assert_eq!(errors, [-32700, -32700, -32600, -32700], "{answers:?}");
    for id in [1, 2] {
        assert!(
            answers
                .iter()
                .any(|a| a["id"] == id && a.get("result").is_some()),
            "{answers:?}"
        );
    }
    let bad = answers.iter().find(|a| a["id"] == 3).expect("answer to 3");
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`params.arguments`"),
        "{bad}"
    );
}

/// A progress token past a few hundred bytes gets no progress
/// notifications (each would repeat it); the call itself is answered.
#[test]
fn a_huge_progress_token_is_not_repeated() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut child = mcp_on_stdio(dir.path());
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut send = |v: serde_json::Value| writeln!(stdin, "{v}").unwrap();
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    );
    send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "deploy_modal_function", "arguments": {
            "function_code": "import time\ndef slow(x):\n    time.sleep(2.5)\n    return x\n",
            "function_name": "slow"}}}),
    );
    let mut answered = |id: i64, lines: &mut Vec<String>| loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        lines.push(line);
        if v["id"] == id {
            return v;
        }
    };
    let mut lines = Vec::new();
    let deployed = answered(2, &mut lines);
    assert!(deployed["result"]["isError"] != true, "{deployed}");
    let token = "t".repeat(1000);
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "_meta": {"progressToken": token},
        "name": "spawn_parallel_tasks",
        "arguments": {"function_name": "slow", "inputs": [1], "wait": true}}}),
    );
    let done = answered(3, &mut lines);
    assert_eq!(
        done["result"]["structuredContent"]["status"], "completed",
        "{done}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("notifications/progress")),
        "{lines:?}"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn an_agent_session_over_stdio_on_an_embedded_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, out) = session(&["stdio", BIN, "mcp", "--data-dir", data]);
    assert!(ok && out.contains("all ok"), "{out}");
    assert!(out.contains("ok map 1,000 inputs"), "{out}");
    assert!(out.contains("ok a waited map sends progress"), "{out}");
    assert!(
        out.contains("ok a waited sandbox exec sends progress"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_session_over_stdio_forwarded_to_a_server() {
    let (url, t) = scripted_server(&[TOKEN]).await;
    let args = ["stdio", BIN, "--url", &url, "--token", TOKEN, "mcp"];
    let (ok, out) = session_async(args.iter().map(|a| (*a).to_owned()).collect()).await;
    assert!(ok && out.contains("all ok"), "{out}");
    // The server the session ran on has the function it deployed.
    assert!(t.rt.function("double").is_some(), "{out}");
}

#[test]
fn mcp_says_when_its_data_dir_is_held_by_another_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, _url) = support::serve(BIN, &data, TOKEN);
    let out = Command::new(BIN)
        .args(["mcp", "--data-dir"])
        .arg(&data)
        .env_remove("MODAL_AGENTS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    support::stop(&mut server);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("in use by another modal-agents runtime"),
        "{err}"
    );
}

/// Reads the one JSON-RPC answer of a Streamable HTTP POST (JSON or SSE).
async fn rpc(url: &str, headers: &[(&str, &str)], body: serde_json::Value) -> serde_json::Value {
    let mut request = reqwest::Client::new()
        .post(url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let text = request.send().await.unwrap().text().await.unwrap();
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .unwrap_or(text.trim());
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Over HTTP, what rmcp cannot type is answered as JSON-RPC says: a
/// `tools/call` whose arguments are no object gets invalid params to its
/// id (rmcp said "method not found"), an object with no `method` that is
/// no answer gets invalid request (rmcp said HTTP 415), unreadable JSON a
/// parse error with a null id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_json_rpc_errors_over_http() {
    let (url, _t) = scripted_server(&[TOKEN]).await;
    let url = format!("{url}/mcp");
    let post = |body: String| {
        reqwest::Client::new()
            .post(&url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"spawn_task","arguments":[1,2]}}"#.to_owned(),
            200,
            serde_json::json!(7),
            -32602,
            "`params.arguments`",
        ),
        (
            r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":"spawn_task"}"#.to_owned(),
            200,
            serde_json::json!(8),
            -32602,
            "`params` of tools/call",
        ),
        (
            r#"{"jsonrpc":"2.0","id":9}"#.to_owned(),
            400,
            serde_json::json!(9),
            -32600,
            "no `method`",
        ),
        (
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{}1{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
            400,
            serde_json::Value::Null,
            -32700,
            "recursion limit",
        ),
        (
            "[1]".to_owned(),
            400,
            serde_json::Value::Null,
            -32600,
            "not a JSON-RPC message",
        ),
    ];
    // A notification with bad params is accepted and dropped, never
    // answered; an answer whose result is null is no refusal.
    let note = post(r#"{"jsonrpc":"2.0","method":"tools/call","params":"x"}"#.to_owned())
        .await
        .unwrap();
    assert_eq!(note.status().as_u16(), 202);
    assert!(note.text().await.unwrap().is_empty());
    let answer = post(r#"{"jsonrpc":"2.0","id":5,"result":null}"#.to_owned())
        .await
        .unwrap();
    // (rmcp's own answer follows: this one has no session.)
    let text = answer.text().await.unwrap();
    assert!(!text.contains("no `method`"), "{text}");
    for (body, status, id, code, says) in cases {
        let response = post(body).await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(says),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_protocol_revision_connects() {
    let (url, _t) = scripted_server(&[TOKEN]).await;
    let url = format!("{url}/mcp");
    for version in ["2025-06-18", "2025-11-25"] {
        let answer = rpc(
            &url,
            &[],
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": version, "capabilities": {},
                "clientInfo": {"name": "probe", "version": "1"}}}),
        )
        .await;
        assert_eq!(answer["result"]["protocolVersion"], version, "{answer}");
        assert_eq!(answer["result"]["serverInfo"]["name"], "modal-agents");
    }
    // The stateless revision: discovery first, then a request with no
    // session, each carrying its protocol metadata.
    let meta = serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "probe", "version": "1"},
    });
    let stateless = [("mcp-protocol-version", "2026-07-28")];
    let discovered = rpc(
        &url,
        &[stateless[0], ("mcp-method", "server/discover")],
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover",
                           "params": {"_meta": meta}}),
    )
    .await;
    assert!(discovered.get("result").is_some(), "{discovered}");
    let listed = rpc(
        &url,
        &[stateless[0], ("mcp-method", "tools/list")],
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                           "params": {"_meta": meta}}),
    )
    .await;
    let tools = listed["result"]["tools"].as_array().expect("tools");
    assert!(tools.iter().any(|t| t["name"] == "wait_tasks"), "{listed}");
    // Annotations tell a host what a tool may do: reading tools are read
    // only, one that only adds is not destructive, one that runs code or
    // ends things may be.
    let hints = |name: &str| {
        let tool = tools.iter().find(|t| t["name"] == name).expect(name);
        let a = &tool["annotations"];
        (a["readOnlyHint"].as_bool(), a["destructiveHint"].as_bool())
    };
    assert_eq!(hints("get_task_status"), (Some(true), None));
    assert_eq!(hints("list_sandboxes"), (Some(true), None));
    assert_eq!(hints("create_sandbox"), (Some(false), Some(false)));
    assert_eq!(hints("terminate_sandbox"), (Some(false), Some(true)));
    assert_eq!(hints("spawn_task"), (Some(false), Some(true)));
}

/// Long tool calls as MCP tasks (the Tasks extension on revision
/// 2026-07-28, with the official Python SDK): a waited call comes back at
/// once as a task, `tasks/get` delivers its result, `tasks/cancel` cancels
/// it and the runtime task it started (tests/mcp/tasks_client.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_tool_calls_run_as_mcp_tasks() {
    const OTHER: &str = "another-token-0123456789abcdef";
    let (url, _t) = scripted_server(&[TOKEN, OTHER]).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/tasks_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .args([&format!("{url}/mcp"), TOKEN, OTHER])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let text = support::output_text(&out);
    assert!(out.status.success() && text.contains("all ok"), "{text}");
    assert!(
        text.contains("ok and the runtime task it started"),
        "{text}"
    );
}
