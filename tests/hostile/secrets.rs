//! Secrets a function was given, trying every way out: raised in an
//! exception, turned into one by a conversion, printed to stdout and to
//! fd 2 (split across pieces of output, too), left on fd 2 for the next
//! call's crash excerpt, raised while the code loads, and failed map
//! inputs. None may reach an answer, a log stream, the MCP text, a webhook
//! body or the server's own log; at rest, a key seals them.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::bounds::{mcp_session, mcp_tool};
use super::support::{self, Api};
use super::{Target, BIN, TOKEN};

/// The secret value every function here is given.
const SECRET: &str = "sk-leak-0123456789abcdef";

const CODE: &str = r#"
import os, sys, time

def leaky(mode):
    secret = os.environ["LEAK"]
    if mode == "raise":
        raise ValueError("the key is " + secret)
    if mode == "convert":
        return int(secret)
    if mode == "print":
        print("stdout says", secret)
        print("stderr says", secret, file=sys.stderr)
        # Split across two pieces of live output.
        sys.stdout.write("split " + secret[:7])
        sys.stdout.flush()
        time.sleep(0.25)
        sys.stdout.write(secret[7:] + " done\n")
        os.write(2, ("fd2 says " + secret + "\n").encode())
        return "printed"
    if mode == "fd2":
        os.write(2, ("left behind " + secret + "\n").encode())
        return os.getpid()
    if mode == "crash":
        os.write(2, b"the crash's own line\n")
        os._exit(3)
    if mode == "capped":
        # The harness keeps 8 Mi characters of a request's prints: the cap
        # falls inside the secret.
        sys.stdout.write("x" * ((8 << 20) - 10) + secret + "\n")
        return "capped"
    if mode == "long_line":
        # A container's stderr line is kept to 4096 bytes: the cut falls
        # inside the secret.
        os.write(2, ("A" * 4080 + secret + "\n").encode())
        os._exit(3)
    if mode == "repr":
        raise KeyError(os.environ["MULTI"])
    return os.getpid()
"#;

/// A second secret, with a newline: Python's repr escapes it.
const MULTI: &str = "multi\nline-secret-ZZ9";

async fn spawn(api: &Api, args: Value) -> Value {
    api.post(
        "/spawn-task",
        json!({"function_name": "leaky", "args": args, "wait": true}),
    )
    .await
}

/// Asserts `text` holds no trace of the secrets (nor the first ten
/// characters of one, which a cut could leave).
fn clean(what: &str, text: &str) {
    let show = || &text[text.len().saturating_sub(400)..];
    for secret in [SECRET, MULTI, "multi\\nline-secret"] {
        assert!(!text.contains(secret), "{what} leaks a secret: {}", show());
    }
    assert!(
        !text.contains(&SECRET[7..]) && !text.contains(&SECRET[..10]),
        "{what} leaks part of the secret: {}",
        show()
    );
}

/// Every output a caller can read is redacted; the crash excerpt holds
/// only the crashing call's own output.
///
/// One of the attacks `every_bound_holds_in_a_row` makes in a row against one server.
pub(crate) async fn attack_secrets_never_leave_through_outputs(t: &Target<'_>) {
    let api = t.api;
    let (status, body) = api
        .send(Method::PUT, "/secrets/leak", Some(json!({"LEAK": SECRET})))
        .await;
    assert_eq!(status, 200, "{body}");
    api.post(
        "/deploy-function",
        json!({"function_code": CODE, "function_name": "leaky", "secrets": ["leak"], "max_concurrency": 1}),
    )
    .await;
    let (hook_url, hooks) = support::receiver(vec![]).await;
    let mut ids = Vec::new();
    for mode in ["raise", "convert", "print", "capped", "long_line", "repr"] {
        let task = spawn(api, json!([mode])).await;
        let id = task["task_id"].as_str().unwrap().to_owned();
        clean(&format!("spawn {mode}"), &task.to_string());
        api.post("/webhook", json!({"task_id": id, "webhook_url": hook_url}))
            .await;
        ids.push(id);
    }
    assert_eq!(ids.len(), 6);
    let failed = api.get(&format!("/status/{}", ids[0])).await;
    assert_eq!(failed["error"]["type"], "ValueError", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[REDACTED]"),
        "{failed}"
    );
    // Left on fd 2 by one call, then a crash in the next on the same
    // container: the crash's excerpt is its own.
    let pid = spawn(api, json!(["fd2"])).await["result"].clone();
    let crashed = spawn(api, json!(["crash"])).await;
    clean("a crash's excerpt", &crashed.to_string());
    let message = crashed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("the crash's own line"), "{crashed}");
    assert!(
        !message.contains("left behind") && !message.contains("REDACTED"),
        "another call's output in the excerpt: {crashed}"
    );
    assert!(pid.is_u64(), "{pid}");
    // A map whose inputs fail with the secret in their errors.
    let map = api
        .post(
            "/run-parallel",
            json!({"function_name": "leaky", "inputs": ["raise", "convert", "ok"], "wait": true}),
        )
        .await;
    clean("a map's results", &map.to_string());
    let map_id = map["task_id"].as_str().unwrap().to_owned();
    ids.push(map_id.clone());
    clean(
        "a map's status",
        &api.get(&format!("/status/{map_id}")).await.to_string(),
    );
    // Everything a caller reads.
    for id in &ids {
        for path in [
            format!("/status/{id}"),
            format!("/tasks/{id}/logs"),
            format!("/tasks/{id}/logs?follow=true"),
        ] {
            let text = api.text(&path).await;
            clean(&path, &text);
        }
    }
    let logs = api.get(&format!("/tasks/{}/logs", ids[2])).await;
    let stdout = logs["stdout"].as_str().unwrap();
    assert!(stdout.contains("stdout says [REDACTED]"), "{logs}");
    assert!(stdout.contains("split [REDACTED] done"), "{logs}");
    clean("/tasks", &api.text("/tasks?limit=1000").await);
    // Over MCP, as a model reads it.
    let session = mcp_session(api).await;
    for id in &ids {
        for tool in ["get_task_status", "get_task_logs"] {
            let text = mcp_tool(api, &session, tool, json!({"task_id": id})).await;
            clean(tool, &text);
        }
    }
    // Webhook bodies.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while hooks.seen.lock().unwrap().len() < 6 {
        assert!(std::time::Instant::now() < deadline, "webhooks never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (_, body) in hooks.seen.lock().unwrap().iter() {
        clean("a webhook body", body);
    }
    // Code that writes the secret on fd 2 and dies while it loads.
    let (status, body) = api
        .send(
            Method::POST,
            "/deploy-function",
            Some(json!({"function_name": "dies", "secrets": ["leak"],
                "function_code": "import os\nos.write(2, os.environ['LEAK'].encode() + b'\\nforged log line\\n')\nos._exit(1)\ndef dies():\n    pass\n"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "function_code", "{body}");
    clean("a container that died loading", &body.to_string());
    // Code that raises the secret while it loads.
    let (status, body) = api
        .send(
            Method::POST,
            "/deploy-function",
            Some(json!({"function_name": "loads", "secrets": ["leak"],
                "function_code": "import os\nraise RuntimeError(os.environ['LEAK'])\ndef loads():\n    pass\n"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    clean("a load error", &body.to_string());
    // The one exception: a function returning the secret hands it over.
    // (Not tested for absence: that is the function's choice.)
    if let Some(log) = &t.log {
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned();
        clean("the server log", &text);
    }
}

/// With MODAL_AGENTS_SECRETS_KEY, no secret value is in the data dir;
/// the server refuses to start without the key, and a rotation to a new
/// key keeps every secret.
///
/// One of the attacks `every_bound_holds_in_a_row` makes in a row against one server.
pub(crate) async fn attack_secrets_are_sealed_at_rest_and_keys_rotate(t: &Target<'_>) {
    const OLD: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const NEW: &str = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";
    let data = t.dir.join("sealed-data");
    let grep = |data: &std::path::Path| {
        let db = std::fs::read(data.join("state.redb")).unwrap();
        db.windows(SECRET.len()).any(|w| w == SECRET.as_bytes())
    };
    let start = |env: &[(&str, &str)]| support::serve_with(BIN, &data, TOKEN, env);
    let (mut server, url) = start(&[("MODAL_AGENTS_SECRETS_KEY", OLD)]);
    let api = Api::new(url, TOKEN);
    let (status, body) = api
        .send(Method::PUT, "/secrets/leak", Some(json!({"LEAK": SECRET})))
        .await;
    assert_eq!(status, 200, "{body}");
    api.post(
        "/deploy-function",
        json!({"function_code": "import os\ndef reads():\n    return os.environ['LEAK'][:7]\n",
               "function_name": "reads", "secrets": ["leak"]}),
    )
    .await;
    support::stop(&mut server);
    assert!(!grep(&data), "the secret is in state.redb in the clear");
    // Without the key the server says which variable to set.
    let out = std::process::Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .env_remove("MODAL_AGENTS_SECRETS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = support::output_text(&out);
    assert!(said.contains("MODAL_AGENTS_SECRETS_KEY"), "{said}");
    clean("a refused start", &said);
    // Rotation: the new key, the old one as previous; then the new alone.
    for env in [
        &[
            ("MODAL_AGENTS_SECRETS_KEY", NEW),
            ("MODAL_AGENTS_SECRETS_KEY_PREVIOUS", OLD),
        ][..],
        &[("MODAL_AGENTS_SECRETS_KEY", NEW)][..],
    ] {
        let (mut server, url) = start(env);
        let api = Api::new(url, TOKEN);
        let call = api
            .post(
                "/spawn-task",
                json!({"function_name": "reads", "args": [], "wait": true}),
            )
            .await;
        assert_eq!(call["result"], &SECRET[..7], "{call}");
        support::stop(&mut server);
        assert!(!grep(&data), "the secret is in state.redb in the clear");
    }
}

alone!(
    /// Secrets are small: a value past 16 KiB, a secret past 64 KiB and all
    /// of them past 1 MiB are refused naming the limit; with secrets at the
    /// limit the server still answers calls promptly (a 2 MB value once made
    /// every worker thread build the redactor for minutes).
    huge_secrets_are_refused_and_full_ones_stay_fast => attack_huge_secrets_are_refused_and_full_ones_stay_fast
);

pub(crate) async fn attack_huge_secrets_are_refused_and_full_ones_stay_fast(t: &Target<'_>) {
    let api = t.api;
    let put = |name: String, values: Value| async move {
        api.send(Method::PUT, &format!("/secrets/{name}"), Some(values))
            .await
    };
    let (status, body) = put("big".into(), json!({"K": "x".repeat(1 << 20)})).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("16384"), "{body}");
    let (status, body) = put(
        "wide".into(),
        json!({"A": "a".repeat(15_000), "B": "b".repeat(15_000), "C": "c".repeat(15_000),
               "D": "d".repeat(15_000), "E": "e".repeat(15_000)}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("65536"), "{body}");
    // Sixteen secrets of 60 KiB fill the store; the seventeenth does not fit.
    let mut refused = 0;
    for i in 0..17 {
        let values: serde_json::Map<String, Value> = (0..4)
            .map(|k| {
                (
                    format!("K{k}"),
                    json!(format!("{i}-{k}-{}", "s".repeat(15_500))),
                )
            })
            .collect();
        let (status, body) = put(format!("full{i}"), Value::Object(values)).await;
        match status {
            200 | 201 => {}
            422 => {
                refused += 1;
                assert!(body.to_string().contains("1048576"), "{body}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(refused, 1);
    // Calls that write to both streams still answer at once.
    api.post(
        "/deploy-function",
        json!({"function_code": "import os, sys\ndef noisy(i):\n    print('out', i)\n    print('err', i, file=sys.stderr)\n    os.write(2, b'fd2\\n')\n    return i\n",
               "function_name": "noisy", "secrets": ["full0", "full1"]}),
    )
    .await;
    let started = std::time::Instant::now();
    for i in 0..20 {
        let r = api
            .post(
                "/spawn-task",
                json!({"function_name": "noisy", "args": [i], "wait": true}),
            )
            .await;
        assert_eq!(r["result"], i, "{r}");
    }
    let took = started.elapsed();
    eprintln!("20 calls with 960 KiB of secrets: {took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    for i in 0..16 {
        put(format!("full{i}"), json!({"K": "short-value-0123"})).await;
    }
}
