//! The HTTP API against a real server on 127.0.0.1:0 (and via `oneshot`),
//! over a ScriptedBackend (no python3) except the seed's examples end to end:
//! the seed's examples verbatim, auth, problem+json for bad input,
//! idempotency, volumes with optimistic concurrency, secrets, tools, signed
//! webhooks with retries and SSRF refusal, OpenAPI and metrics.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use modal_agents::api::{app, ApiConfig, Cidr};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";

struct Server {
    url: String,
    http: reqwest::Client,
    rt: modal_agents::Runtime,
    /// What the runtime's backend and data dir live in.
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

impl Server {
    /// The API over a ScriptedBackend on which `f` is the identity.
    async fn start(config: ApiConfig) -> Server {
        let t = support::scripted(&["f"]).await;
        Server::serve(t.rt.clone(), config, Box::new(t)).await
    }

    /// End to end: the API over the local backend's python3 containers.
    async fn local() -> Server {
        let t = support::start(2).await;
        let config = ApiConfig {
            tokens: vec![TOKEN.into()],
            ..ApiConfig::default()
        };
        Server::serve(t.rt.clone(), config, Box::new(t)).await
    }

    async fn serve(
        rt: modal_agents::Runtime,
        config: ApiConfig,
        keep: Box<dyn std::any::Any + Send + Sync>,
    ) -> Server {
        let router = app(rt.clone(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Server {
            url,
            http: reqwest::Client::new(),
            rt,
            _keep: keep,
        }
    }

    async fn default() -> Server {
        Server::start(ApiConfig {
            tokens: vec![TOKEN.into()],
            ..ApiConfig::default()
        })
        .await
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        read(r).await
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        read(self.req(reqwest::Method::GET, path).send().await.unwrap()).await
    }
}

async fn read(r: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

fn assert_problem(status: StatusCode, headers: &HeaderMap, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{body}"
    );
    assert_eq!(body["status"], expected.as_u16(), "{body}");
    assert!(body["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:modal-agents:problem:"));
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_examples_verbatim() {
    let s = Server::local().await;
    let (status, _, body) = s
        .req(reqwest::Method::PUT, "/secrets/api-keys")
        .json(&json!({"API_KEY": "k-123"}))
        .send()
        .await
        .map(|r| async { read(r).await })
        .unwrap()
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // POST /deploy-function, the seed's request.
    let (status, _, body) = s
        .post(
            "/deploy-function",
            json!({
              "function_code": "def my_function(x): return x * 2",
              "function_name": "my_function",
              "image_config": {"packages": ["numpy"]},
              "gpu": "T4",
              "timeout": 3600,
              "secrets": ["api-keys"],
              "volumes": ["my-volume"]
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["function_name"].clone(), body["status"].clone()),
        (json!("my_function"), json!("registered"))
    );
    assert!(body["function_id"].as_str().unwrap().len() == 36);
    // POST /run-parallel
    let (status, _, body) = s
        .post(
            "/run-parallel",
            json!({"function_name": "my_function", "inputs": [1, 2, 3, 4, 5], "wait": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["num_tasks"], 5);
    assert_eq!(body["status"], "completed");
    assert_eq!(body["results"], json!([2, 4, 6, 8, 10]));
    // POST /spawn-task: 202 + Location, then GET /status/{task_id}.
    let (status, headers, body) = s
        .post(
            "/spawn-task",
            json!({"function_name": "my_function", "args": [42], "kwargs": {"param": "value"}, "wait": false}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task_id = body["task_id"].as_str().unwrap().to_owned();
    assert_eq!(headers["location"], format!("/status/{task_id}"));
    assert_eq!(body["function_name"], "my_function");
    let record =
        s.rt.wait(task_id.parse().unwrap(), Some(Duration::from_secs(30)))
            .await
            .unwrap();
    let (status, _, body) = s.get(&format!("/status/{task_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["task_id"], task_id);
    assert_eq!(
        body["status"], "failed",
        "my_function takes no `param`: {body}"
    );
    assert_eq!(body["error"]["type"], "TypeError");
    assert_eq!(body["status"], json!(record.status));
    for field in [
        "created_at",
        "started_at",
        "finished_at",
        "attempts",
        "result",
    ] {
        assert!(body.get(field).is_some(), "{field} in {body}");
    }
    // Waiting spawn with a result.
    let (status, _, body) = s
        .post(
            "/spawn-task",
            json!({"function_name": "my_function", "args": [21], "wait": true}),
        )
        .await;
    assert_eq!(
        (status, body["result"].clone()),
        (StatusCode::OK, json!(42)),
        "{body}"
    );
    // A map's results, paged.
    let (_, _, body) = s
        .post(
            "/run-parallel",
            json!({"function_name": "my_function", "inputs": (0..25).collect::<Vec<_>>()}),
        )
        .await;
    let id = body["task_id"].as_str().unwrap().to_owned();
    s.rt.wait(id.parse().unwrap(), Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let (_, _, page) = s
        .get(&format!("/status/{id}/results?offset=20&limit=10"))
        .await;
    assert_eq!(page["results"], json!([40, 42, 44, 46, 48]));
    assert_eq!(
        (page["total"].clone(), page["next_offset"].clone()),
        (json!(25), Value::Null)
    );
    // The seed's contract: a finished map's status carries its results.
    let (_, _, map) = s.get(&format!("/status/{id}")).await;
    let doubled: Vec<i64> = (0..25).map(|i| i * 2).collect();
    assert_eq!(map["result"], json!(doubled), "{map}");
    assert!(map.get("results_url").is_none(), "{map}");
    // Past 10,000 results, where to page them instead.
    let (_, _, body) = s
        .post(
            "/run-parallel",
            json!({"function_name": "my_function", "inputs": (0..10_001).collect::<Vec<_>>(), "wait": true}),
        )
        .await;
    assert_eq!(body["status"], "completed", "{}", body["status"]);
    let big = body["task_id"].as_str().unwrap().to_owned();
    let (_, _, map) = s.get(&format!("/status/{big}")).await;
    assert_eq!(map["result"], Value::Null);
    let url = map["results_url"].as_str().unwrap();
    let (_, _, page) = s.get(url).await;
    assert_eq!(page["results"][999], json!(1998));
    assert_eq!(page["next_offset"], 1000);
    // Waiting on several tasks at once, server-side.
    let slow =
        s.rt.deploy_function(modal_agents::FunctionSpec::new(
            "slow",
            "import time\ndef slow(x):\n    time.sleep(x)\n    return x\n",
        ))
        .await;
    assert!(slow.is_ok(), "{slow:?}");
    let (_, _, a) = s
        .post("/spawn-task", json!({"function_name": "slow", "args": [0]}))
        .await;
    let (_, _, b) = s
        .post(
            "/spawn-task",
            json!({"function_name": "slow", "args": [60]}),
        )
        .await;
    let (fast, sleepy) = (a["task_id"].clone(), b["task_id"].clone());
    let (status, _, body) = s
        .post(
            "/tasks/wait",
            json!({"task_ids": [fast, sleepy], "mode": "any", "timeout_s": 30}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["done"].clone(), body["finished"].clone()),
        (json!(true), json!(1)),
        "{body}"
    );
    assert_eq!(body["tasks"][0]["status"], "completed", "{body}");
    assert!(
        body["tasks"][1]["summary"]
            .as_str()
            .unwrap()
            .contains("`slow`"),
        "{body}"
    );
    let (status, _, body) = s
        .post(
            "/tasks/wait",
            json!({"task_ids": [fast, sleepy], "timeout_s": 0.2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["done"], false,
        "all: the slow one is still running: {body}"
    );
    for (bad, field) in [
        (json!({"task_ids": []}), "task_ids"),
        (json!({"task_ids": [fast], "timeout_s": 601}), "timeout_s"),
        (json!({"task_ids": [fast], "mode": "some"}), "mode"),
    ] {
        let (status, _, body) = s.post("/tasks/wait", bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["field"], field, "{body}");
    }
    let (status, _, _) = s
        .post(
            "/tasks/wait",
            json!({"task_ids": ["6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11"]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = s
        .post(
            &format!("/tasks/{}/cancel", sleepy.as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Functions, tasks, logs, cancel, resources.
    let (_, _, fns) = s.get("/functions").await;
    assert_eq!(fns[0]["function_name"], "my_function");
    // One timestamp format everywhere: UTC with `Z`, as task records say it.
    let deployed = fns[0]["deployed_at"].as_str().unwrap();
    assert!(deployed.ends_with('Z'), "{deployed}");
    let (_, _, tasks) = s.get("/tasks?status=failed").await;
    assert_eq!(tasks["total"], 1);
    let (status, _, _) = s.get(&format!("/tasks/{task_id}/logs")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, res) = s.get("/resources").await;
    assert!(res["capacity"]["cpus"].as_f64().unwrap() >= 1.0, "{res}");
    assert_eq!(res["gpu_requests"][0]["gpu"], "T4");
    let (status, _, _) = s
        .req(reqwest::Method::DELETE, "/functions/my_function")
        .send()
        .await
        .map(|r| async { read(r).await })
        .unwrap()
        .await;
    assert_eq!(status, StatusCode::OK);
    // The local backend reads the code it is given: a syntax error, or code
    // without the function named, is a problem naming the field.
    for (code, field) in [
        ("def f(: pass", "function_code"),
        ("def g(): pass", "function_name"),
    ] {
        let (status, headers, problem) = s
            .post(
                "/deploy-function",
                json!({"function_code": code, "function_name": "f"}),
            )
            .await;
        assert_problem(status, &headers, &problem, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["field"], field, "{code}: {problem}");
    }
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_bad_input_are_problems() {
    let s = Server::start(ApiConfig {
        tokens: vec![TOKEN.into()],
        body_limit: 4096,
        ..ApiConfig::default()
    })
    .await;
    // No token, wrong token.
    for token in [None, Some("wrong-token-0123456789")] {
        let mut r = s.http.get(format!("{}/functions", s.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let (status, headers, body) = read(r.send().await.unwrap()).await;
        assert_problem(status, &headers, &body, StatusCode::UNAUTHORIZED);
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"modal-agents\"");
    }
    let health = s
        .http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let post_raw = |path: &str, ct: &str, body: &str| {
        s.req(reqwest::Method::POST, path)
            .header("content-type", ct)
            .body(body.to_owned())
            .send()
    };
    let (status, headers, body) = read(
        post_raw("/deploy-function", "application/json", "{not json")
            .await
            .unwrap(),
    )
    .await;
    assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    let (status, headers, body) = read(
        post_raw("/deploy-function", "text/plain", "{}")
            .await
            .unwrap(),
    )
    .await;
    assert_problem(status, &headers, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = format!(
        "{{\"function_code\": \"{}\", \"function_name\": \"f\"}}",
        "x".repeat(5000)
    );
    let (status, headers, body) = read(
        post_raw("/deploy-function", "application/json", &big)
            .await
            .unwrap(),
    )
    .await;
    assert_problem(status, &headers, &body, StatusCode::PAYLOAD_TOO_LARGE);

    let cases = [
        (
            "/deploy-function",
            json!({"function_code": "def f(): pass", "function_name": "f", "gpus": "T4"}),
            "gpus",
        ),
        // A number where a name goes: serde calls it syntax; it is a field.
        (
            "/run-parallel",
            json!({"function_name": "f", "inputs": [1], "inputs_as": 5}),
            "inputs_as",
        ),
        (
            "/deploy-function",
            json!({"function_name": "f"}),
            "function_code",
        ),
        (
            "/deploy-function",
            json!({"function_code": "def f(): pass", "function_name": "f", "timeout": "1h"}),
            "timeout",
        ),
        (
            "/deploy-function",
            json!({"function_code": "def f(): pass", "function_name": "f", "timeout": 0}),
            "timeout",
        ),
        (
            "/deploy-function",
            json!({"function_code": "def f(): pass", "function_name": "f", "gpu": "V100"}),
            "gpu",
        ),
        (
            "/deploy-function",
            json!({"function_code": "def f(): pass", "function_name": "f", "secrets": ["nope"]}),
            "secrets",
        ),
        (
            "/deploy-function",
            json!({"function_code": "def f(): pass", "function_name": "f", "limits": {"processes": 1}}),
            "limits.processes",
        ),
        (
            "/deploy-function",
            json!({"function_code": "def f(): pass", "function_name": "f", "limits": {"forks": 1}}),
            "limits.forks",
        ),
        (
            "/run-parallel",
            json!({"function_name": "f", "inputs": "1,2"}),
            "inputs",
        ),
        (
            "/spawn-task",
            json!({"function_name": "f", "args": [], "wait": false, "wait_timeout": -1}),
            "wait_timeout",
        ),
        (
            "/webhook",
            json!({"task_id": "not-a-uuid", "webhook_url": "https://example.com"}),
            "task_id",
        ),
    ];
    for (path, body, field) in cases {
        let (status, headers, problem) = s.post(path, body.clone()).await;
        assert_problem(status, &headers, &problem, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["field"], field, "{path} {body}: {problem}");
        // Said in JSON's words: no parser position, no Rust type name.
        let detail = problem["detail"].as_str().unwrap();
        for rust in [
            " column ",
            "expected u32",
            "expected u64",
            "struct ",
            "sequence",
        ] {
            assert!(!detail.contains(rust), "{path} {body}: {detail}");
        }
    }
    let (status, headers, body) = s
        .post("/spawn-task", json!({"function_name": "ghost"}))
        .await;
    assert_problem(status, &headers, &body, StatusCode::NOT_FOUND);
    let (status, headers, body) = s.get("/status/6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11").await;
    assert_problem(status, &headers, &body, StatusCode::NOT_FOUND);
    let (status, headers, body) = s.get("/no/such/route").await;
    assert_problem(status, &headers, &body, StatusCode::NOT_FOUND);
    let r = s
        .req(reqwest::Method::DELETE, "/spawn-task")
        .send()
        .await
        .unwrap();
    let (status, headers, body) = read(r).await;
    assert_problem(status, &headers, &body, StatusCode::METHOD_NOT_ALLOWED);
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_and_refuse_changes() {
    let s = Server::default().await;
    s.post(
        "/deploy-function",
        json!({"function_code": "def f(x): return x", "function_name": "f"}),
    )
    .await;
    let send = |body: Value| {
        s.req(reqwest::Method::POST, "/spawn-task")
            .header("idempotency-key", "k-1")
            .json(&body)
            .send()
    };
    let (status, _, first) = read(
        send(json!({"function_name": "f", "args": [1]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, headers, again) = read(
        send(json!({"function_name": "f", "args": [1]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        again["task_id"], first["task_id"],
        "same task, not a second one"
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    let (status, headers, problem) = read(
        send(json!({"function_name": "f", "args": [2]}))
            .await
            .unwrap(),
    )
    .await;
    assert_problem(status, &headers, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "Idempotency-Key");
    let (_, _, tasks) = s.get("/tasks").await;
    assert_eq!(tasks["total"], 1, "one task created");

    // A tool that creates work takes the header too: the same rule.
    let tool = |key: &'static str, body: Value| {
        s.req(reqwest::Method::POST, "/tools/spawn_task")
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let (status, _, first) = read(
        tool("t-1", json!({"function_name": "f", "args": [3]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, headers, again) = read(
        tool("t-1", json!({"function_name": "f", "args": [3]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again["task_id"], first["task_id"], "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    let (status, _, problem) = read(
        tool("t-1", json!({"function_name": "f", "args": [4]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    // The header and the argument must agree.
    let (status, _, problem) = read(
        tool(
            "t-2",
            json!({"function_name": "f", "args": [5], "idempotency_key": "t-3"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("header"),
        "{problem}"
    );
    let (_, _, tasks) = s.get("/tasks").await;
    assert_eq!(tasks["total"], 2, "one more task, once");
    // A key is visible ASCII, as documented; a tool that creates nothing
    // ignores the header, whatever it holds.
    let (status, _, problem) = read(
        tool("in ner", json!({"function_name": "f", "args": [6]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "Idempotency-Key", "{problem}");
    let long = "k".repeat(300);
    let (status, _, listed) = read(
        s.req(reqwest::Method::POST, "/tools/list_functions")
            .header("idempotency-key", long.as_str())
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_secrets_and_tools_over_http() {
    let s = Server::default().await;
    let put = |path: &str, body: Value, if_match: Option<&str>| {
        let mut r = s.req(reqwest::Method::PUT, path).json(&body);
        if let Some(v) = if_match {
            r = r.header("if-match", v);
        }
        r.send()
    };
    let (status, headers, body) = read(
        put(
            "/volumes/team/state/plan/step",
            json!({"value": {"n": 1}}),
            None,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::OK, json!(1)),
        "{body}"
    );
    assert_eq!(headers["etag"], "\"1\"");
    let (status, headers, problem) = read(
        put(
            "/volumes/team/state/plan/step",
            json!({"value": 2}),
            Some("7"),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_problem(status, &headers, &problem, StatusCode::PRECONDITION_FAILED);
    let (status, _, body) = read(
        put(
            "/volumes/team/state/plan/step",
            json!({"value": 2}),
            Some("\"1\""),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::OK, json!(2))
    );
    let create_only = s
        .req(reqwest::Method::PUT, "/volumes/team/state/plan/step")
        .header("if-none-match", "*")
        .json(&json!({"value": 3}));
    let (status, _, _) = read(create_only.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (_, _, got) = s.get("/volumes/team/state/plan/step").await;
    assert_eq!(
        (got["value"].clone(), got["version"].clone()),
        (json!(2), json!(2))
    );
    let (_, _, listing) = s.get("/volumes/team/state?prefix=plan/").await;
    assert_eq!(listing["entries"][0]["key"], "plan/step");
    let r = s
        .req(reqwest::Method::PUT, "/volumes/team/files/docs/a.txt")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = s
        .req(reqwest::Method::GET, "/volumes/team/files/docs/a.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    let (_, _, files) = s.get("/volumes/team/files").await;
    assert_eq!(files[0]["path"], "docs/a.txt");
    let (status, headers, problem) = s.get("/volumes/team/files/missing.txt").await;
    assert_problem(status, &headers, &problem, StatusCode::NOT_FOUND);

    let r = s
        .req(reqwest::Method::PUT, "/secrets/db")
        .json(&json!({"DB_PASSWORD": "hunter2-secret"}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains("hunter2"), "values never returned: {text}");
    let (_, _, secrets) = s.get("/secrets").await;
    assert_eq!(secrets, json!([{"name": "db", "keys": ["DB_PASSWORD"]}]));
    // A secret a deployed function uses stays until that function goes
    // (without it, the function could not start, nor come back at a restart).
    let (status, _, _) = s
        .post(
            "/deploy-function",
            json!({"function_code": "def uses_db(): pass", "function_name": "uses_db", "secrets": ["db"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let r = s
        .req(reqwest::Method::DELETE, "/secrets/db")
        .send()
        .await
        .unwrap();
    let (status, headers, problem) = read(r).await;
    assert_problem(status, &headers, &problem, StatusCode::CONFLICT);
    assert!(
        problem["detail"].as_str().unwrap().contains("uses_db"),
        "{problem}"
    );
    let r = s
        .req(reqwest::Method::DELETE, "/functions/uses_db")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = s
        .req(reqwest::Method::DELETE, "/secrets/db")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = s
        .req(reqwest::Method::PUT, "/secrets/db")
        .json(&json!({"DB_PASSWORD": "hunter2-secret"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let (status, _, out) = s
        .post(
            "/tools/coordinate_state",
            json!({"volume_name": "team", "operation": "read", "key": "plan/step"}),
        )
        .await;
    assert_eq!((status, out["value"].clone()), (StatusCode::OK, json!(2)));
    let (status, headers, problem) = s
        .post("/tools/coordinate_state", json!({"volume_name": "team"}))
        .await;
    assert_problem(status, &headers, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "operation");
    let (_, _, defs) = s.get("/tools").await;
    let names: Vec<&str> = defs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for seed in [
        "deploy_modal_function",
        "spawn_parallel_tasks",
        "request_gpu_task",
        "coordinate_state",
        "wait_tasks",
    ] {
        assert!(names.contains(&seed), "{names:?}");
    }
    assert!(defs
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["output_schema"]["type"] == "object"));

    let (_, _, doc) = s.get("/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/deploy-function",
        "/run-parallel",
        "/spawn-task",
        "/status/{task_id}",
        "/webhook",
        "/volumes/{name}/state/{key}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(doc["components"]["schemas"].get("DeployRequest").is_some());
    let metrics = s
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("modal_agents_http_requests_total{method=\"PUT\",route=\"/volumes/{name}/state/{*key}\",status=\"412\"}"), "{metrics}");
    s.rt.shutdown().await;
}

async fn webhook_state(s: &Server, id: &str, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, view) = s.get(&format!("/webhooks/{id}")).await;
        if view["state"] == want {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook never reached {want}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server whose webhooks may reach 127.0.0.1 (the test's receivers),
/// retrying quickly, at most `max_attempts` times.
async fn webhook_server(max_attempts: u32) -> Server {
    Server::start(ApiConfig {
        tokens: vec![TOKEN.into()],
        webhooks: modal_agents::webhooks::WebhookConfig {
            allow: vec!["127.0.0.0/8".parse::<Cidr>().unwrap()],
            backoff: Duration::from_millis(20),
            max_attempts,
            ..Default::default()
        },
        ..ApiConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_retry_and_verify() {
    let s = webhook_server(4).await;
    s.post(
        "/deploy-function",
        json!({"function_code": "def f(x): return x", "function_name": "f"}),
    )
    .await;
    let (_, _, task) = s
        .post("/spawn-task", json!({"function_name": "f", "args": [7]}))
        .await;
    let task_id = task["task_id"].as_str().unwrap().to_owned();
    let (url, rx) = support::receiver(vec![500, 503]).await;
    let (status, _, reg) = s
        .post("/webhook", json!({"task_id": task_id, "webhook_url": url}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    let secret = reg["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = reg["webhook_id"].as_str().unwrap().to_owned();
    let view = webhook_state(&s, &id, "delivered").await;
    assert!(view.get("secret").is_none(), "the secret is shown once");
    let statuses: Vec<Value> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(500), json!(503), json!(200)]);
    let seen = rx.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let wh = standardwebhooks::Webhook::new(&secret).unwrap();
    let ids: Vec<&str> = seen
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one message id across retries"
    );
    for (headers, body) in &seen {
        let mut hm = headers.clone();
        wh.verify(body.as_bytes(), &hm)
            .expect("valid Standard Webhooks signature");
        hm.insert("webhook-signature", "v1,AAAA".parse().unwrap());
        assert!(wh.verify(body.as_bytes(), &hm).is_err());
    }
    let payload: Value = serde_json::from_str(&seen[2].1).unwrap();
    assert_eq!(payload["type"], "task.completed");
    assert_eq!(
        (
            payload["data"]["task_id"].clone(),
            payload["data"]["status"].clone()
        ),
        (json!(task_id), json!("completed"))
    );

    // 410 disables the endpoint after one attempt.
    let (url, _) = support::receiver(vec![410]).await;
    let (_, _, reg) = s
        .post("/webhook", json!({"task_id": task_id, "webhook_url": url}))
        .await;
    let view = webhook_state(&s, reg["webhook_id"].as_str().unwrap(), "disabled").await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1);
    // A failing endpoint is given up after max attempts.
    let (url, _) = support::receiver(vec![500; 10]).await;
    let (_, _, reg) = s
        .post("/webhook", json!({"task_id": task_id, "webhook_url": url}))
        .await;
    let view = webhook_state(&s, reg["webhook_id"].as_str().unwrap(), "failed").await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 4);
    s.rt.shutdown().await;
}

/// A sandbox's webhook: `sandbox.expiring` at once for a sandbox already
/// within the notice (retried past a 500), then `sandbox.ended` with its
/// reason, each its own signed message; the registration ends delivered.
/// Neither or both of `task_id` and `sandbox_id` is a 422 naming the
/// field; an unknown sandbox is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_webhooks_say_expiring_then_ended() {
    let s = webhook_server(3).await;
    let (status, _, sbx) = s
        .post(
            "/sandboxes",
            json!({"timeout_s": 2, "snapshot_on_end": false}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sbx}");
    let id = sbx["sandbox_id"].as_str().unwrap().to_owned();
    let (url, rx) = support::receiver(vec![500]).await;
    let (status, _, reg) = s
        .post("/webhook", json!({"sandbox_id": id, "webhook_url": url}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    assert_eq!(reg["sandbox_id"], json!(id));
    assert!(reg.get("task_id").is_none(), "{reg}");
    let secret = reg["secret"].as_str().unwrap().to_owned();
    let view = webhook_state(&s, reg["webhook_id"].as_str().unwrap(), "delivered").await;
    let attempts: Vec<(Value, Value)> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["event"].clone(), a["status"].clone()))
        .collect();
    assert_eq!(
        attempts,
        [
            (json!("sandbox.expiring"), json!(500)),
            (json!("sandbox.expiring"), json!(200)),
            (json!("sandbox.ended"), json!(200)),
        ]
    );
    let seen = rx.seen.lock().unwrap().clone();
    let wh = standardwebhooks::Webhook::new(&secret).unwrap();
    for (headers, body) in &seen {
        wh.verify(body.as_bytes(), headers).expect("signed");
    }
    let ids: Vec<&str> = seen
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    assert!(ids[0] == ids[1] && ids[1] != ids[2], "{ids:?}");
    assert_eq!(
        ids[0], reg["message_id"],
        "the first message under the id answered"
    );
    let last: Value = serde_json::from_str(&seen[2].1).unwrap();
    assert_eq!(last["type"], "sandbox.ended");
    assert_eq!(last["data"]["sandbox_id"], json!(id));
    assert_eq!(
        last["data"]["ended"]["reason"], "lifetime_expired",
        "{last}"
    );
    let first: Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(first["type"], "sandbox.expiring");
    assert_eq!(first["data"]["expires_at"], sbx["expires_at"]);

    for body in [
        json!({"webhook_url": url}),
        json!({"sandbox_id": id, "task_id": "6f1e1a3c-59b8-4f0e-9d8c-1b3f0c9b2a11", "webhook_url": url}),
    ] {
        let (status, headers, problem) = s.post("/webhook", body).await;
        assert_problem(status, &headers, &problem, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["field"], "task_id", "{problem}");
    }
    let (status, headers, problem) = s
        .post(
            "/webhook",
            json!({"sandbox_id": "sb-none", "webhook_url": url}),
        )
        .await;
    assert_problem(status, &headers, &problem, StatusCode::NOT_FOUND);
    // A URL is at most 2 KiB (every failed attempt names it).
    let long = format!("{url}?{}", "a".repeat(2100));
    let (status, headers, problem) = s
        .post("/webhook", json!({"sandbox_id": id, "webhook_url": long}))
        .await;
    assert_problem(status, &headers, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "webhook_url", "{problem}");
    // At most 32 registrations per sandbox (or task), even when they come
    // all at once: past it a 409.
    let tries = (0..40).map(|_| s.post("/webhook", json!({"sandbox_id": id, "webhook_url": url})));
    let answers = futures_util::future::join_all(tries).await;
    let created = answers
        .iter()
        .filter(|(status, _, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, modal_agents::webhooks::MAX_PER_TARGET - 1);
    let (status, headers, problem) = answers
        .into_iter()
        .find(|(status, _, _)| *status != StatusCode::CREATED)
        .unwrap();
    assert_problem(status, &headers, &problem, StatusCode::CONFLICT);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("32 webhook registrations"),
        "{problem}"
    );
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_targets_must_be_public() {
    let s = Server::default().await;
    s.post(
        "/deploy-function",
        json!({"function_code": "def f(x): return x", "function_name": "f"}),
    )
    .await;
    let (_, _, task) = s
        .post("/spawn-task", json!({"function_name": "f", "args": [1]}))
        .await;
    let (hook, rx) = support::receiver(vec![]).await;
    for url in [
        hook.as_str(),
        "http://10.0.0.1/x",
        "http://[::1]:9/x",
        "http://169.254.169.254/latest",
        "ftp://example.com/x",
        "http://user:pw@127.0.0.1/",
    ] {
        let (status, headers, problem) = s
            .post(
                "/webhook",
                json!({"task_id": task["task_id"], "webhook_url": url}),
            )
            .await;
        assert_problem(status, &headers, &problem, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["field"], "webhook_url", "{url}: {problem}");
    }
    assert!(rx.seen.lock().unwrap().is_empty());
    s.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_routes_and_config_checks() {
    let t = support::scripted(&[]).await;
    let router = app(
        t.rt.clone(),
        ApiConfig {
            tokens: vec![TOKEN.into()],
            ..ApiConfig::default()
        },
    );
    let ok = router
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let denied = router
        .clone()
        .oneshot(Request::get("/resources").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    let allowed = router
        .oneshot(
            Request::get("/resources")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    assert!(ApiConfig::default()
        .check()
        .unwrap_err()
        .to_string()
        .contains("--insecure-no-auth"));
    assert!(ApiConfig {
        tokens: vec!["short".into()],
        ..ApiConfig::default()
    }
    .check()
    .is_err());
    assert!(ApiConfig {
        allow_no_auth: true,
        ..ApiConfig::default()
    }
    .check()
    .is_ok());
    t.rt.shutdown().await;
}

/// Webhooks are a service of the runtime: an embedded runtime delivers them
/// with no HTTP app, and stops its deliveries when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_runtime_delivers_webhooks_without_the_http_app() {
    use modal_agents::webhooks::{WebhookConfig, WebhookError, Webhooks};
    use modal_agents::wire::WebhookState;
    let t = support::scripted(&["f"]).await;
    let hooks = Webhooks::start(
        &t.rt,
        WebhookConfig {
            allow: vec!["127.0.0.0/8".parse::<Cidr>().unwrap()],
            backoff: Duration::from_millis(20),
            ..WebhookConfig::default()
        },
    );
    t.rt.deploy_function(modal_agents::FunctionSpec::new("f", "def f(x): return x"))
        .await
        .unwrap();
    let task =
        t.rt.spawn("f", vec![json!(1)], serde_json::Map::new())
            .await
            .unwrap();
    let (url, rx) = support::receiver(vec![503]).await;
    let view = hooks.register(task, &url).await.unwrap();
    assert!(view.secret.is_some());
    support::eventually(Duration::from_secs(30), "the delivery", || async {
        hooks
            .get(&view.webhook_id)
            .is_some_and(|v| v.state == WebhookState::Delivered)
    })
    .await;
    assert_eq!(
        rx.seen.lock().unwrap().len(),
        2,
        "one retry, then delivered"
    );
    // Counted once the delivered state is stored.
    support::eventually(Duration::from_secs(10), "the delivery counted", || async {
        hooks.counts() == (1, 0)
    })
    .await;
    // A private target outside the allow-list is refused by the service too.
    let err = hooks
        .register(task, "http://10.0.0.1/hook")
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::Target(_)), "{err}");
    t.rt.shutdown().await;
}

/// The OpenAPI document is the contract: every path parameter declared
/// with what the server accepts, every error a problem+json document, the
/// statuses any protected operation may answer listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_declares_what_the_server_does() {
    let s = Server::default().await;
    let (_, _, doc) = s.get("/openapi.json").await;
    let mut operations = 0;
    // Each operation has its own id (code generators name methods by it).
    let mut ids = std::collections::HashMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            if let Some(id) = op["operationId"].as_str() {
                if let Some(other) = ids.insert(id.to_owned(), format!("{method} {path}")) {
                    panic!("operationId {id} is both {other} and {method} {path}");
                }
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for name in &names {
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == *name && p["in"] == "path" && p["required"] == true),
                    "{method} {path}: `{name}` is not declared"
                );
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"]
                            .get("application/problem+json")
                            .is_some(),
                        "{method} {path} {status}: {response}"
                    );
                }
            }
            if path != "/healthz" {
                assert!(op["responses"].get("401").is_some(), "{method} {path}");
            }
        }
    }
    assert!(operations >= 33, "{operations}");
    // What the schema says of a path parameter is what the server does.
    let task_id = &doc["paths"]["/status/{task_id}"]["get"]["parameters"][0]["schema"];
    assert!(
        task_id["pattern"]
            .as_str()
            .unwrap()
            .contains("[0-9a-fA-F]{8}"),
        "{task_id}"
    );
    let (status, _, _) = s.get("/status/not-a-uuid").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    s.rt.shutdown().await;
}
