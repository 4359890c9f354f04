//! The trust boundary, attacked the way agent-written code or an agent caller
//! would, against the real server binary: what a function leaves in its
//! volume (links to the database or out of the volume) can never make the
//! API read or write outside the volume.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use support::Api;

const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");
const TOKEN: &str = "hostile-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_a_function_plants_in_its_volume_are_never_followed() {
    let (dir, data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    // A secret the database holds, which the link would hand over.
    let (status, _) = api
        .send(
            Method::PUT,
            "/secrets/keys",
            Some(json!({"API_KEY": "sk-must-not-leak-123"})),
        )
        .await;
    assert!((200..300).contains(&status));
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // The function plants links with paths as the host sees them from the
    // volume's directory (DATA_DIR/volumes/v/files), relative so they work
    // sandboxed or not.
    let plant = "import json, os\ndef plant(outside):\n    root = json.loads(os.environ['MODAL_AGENTS_VOLUMES'])['/data']\n    os.symlink('../../../state.redb', os.path.join(root, 'db'))\n    os.symlink(outside, os.path.join(root, 'out'))\n    os.makedirs(os.path.join(root, 'real'), exist_ok=True)\n    os.symlink('../../../../state.redb', os.path.join(root, 'real', 'db2'))\n    return sorted(os.listdir(root))\n";
    api.post(
        "/deploy-function",
        json!({"function_code": plant, "function_name": "plant", "volumes": {"/data": "v"}}),
    )
    .await;
    let planted = api
        .post(
            "/spawn-task",
            json!({"function_name": "plant", "args": [outside.display().to_string()], "wait": true}),
        )
        .await;
    assert_eq!(planted["status"], "completed", "{planted}");

    // Reading through a link: no file, and never the database's bytes.
    for path in ["db", "real/db2", "out/anything"] {
        let (status, body) = api
            .send(Method::GET, &format!("/volumes/v/files/{path}"), None)
            .await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.to_string().contains("sk-must-not-leak"), "{path}");
    }
    let raw = api
        .http
        .get(format!("{}/volumes/v/files/db", api.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        !raw.windows(7).any(|w| w == b"sk-must"),
        "the database is not served"
    );
    // Writing through a linked directory is refused and lands nowhere.
    let (status, problem) = api
        .send(Method::PUT, "/volumes/v/files/out/planted", None)
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "path");
    assert!(!outside.join("planted").exists());
    // Links are not listed; a write at a link's name replaces the link.
    let listed = api.get("/volumes/v/files").await;
    assert!(!listed.to_string().contains("\"db\""), "{listed}");
    let r = api
        .http
        .put(format!("{}/volumes/v/files/db", api.url))
        .bearer_auth(TOKEN)
        .body("mine")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(api.text("/volumes/v/files/db").await, "mine");
    assert!(
        std::fs::metadata(data.join("state.redb")).unwrap().len() > 4,
        "the database itself is untouched"
    );
    // Deleting a link removes the link only.
    let (status, _) = api
        .send(Method::DELETE, "/volumes/v/files/real/db2", None)
        .await;
    assert!((200..300).contains(&status), "{status}");
    assert!(data.join("state.redb").exists());

    support::stop(&mut server);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_unknown_volumes_answer_404_and_create_nothing() {
    let (_dir, data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.id()))
            .unwrap()
            .count()
    };
    let before = fds();
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
    let volumes = std::fs::read_dir(data.join("volumes")).unwrap().count();
    assert_eq!(volumes, 0, "reads created no volume");
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
    support::stop(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_stay_bounded_whatever_callers_send() {
    let (_dir, _data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_frames_on_the_harness_pipe_never_crash_or_confuse_the_runtime() {
    let (_dir, _data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
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
    support::stop(&mut server);
}

/// Cores reserved now, from `/resources`.
async fn cpu_used(api: &Api) -> f64 {
    api.get("/resources").await["usage"]["cpu_used"]
        .as_f64()
        .unwrap()
}

/// Idle containers give back what they reserved: a function whose start
/// does not fit retires another function's idle container instead of
/// waiting forever; idle containers go after `scaledown_window`, except the
/// `min_containers` a function keeps warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_containers_give_back_what_they_reserved() {
    let (_dir, _data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    let total = api.get("/resources").await["capacity"]["cpus"]
        .as_f64()
        .unwrap();
    let deploy = |name: &'static str, cpu: f64, extra: serde_json::Value| {
        let api = &api;
        async move {
            let mut body = json!({"function_code": format!("def {name}():\n    return '{name}'\n"),
                                  "function_name": name, "cpu": cpu, "scaledown_window": 2});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            api.post("/deploy-function", body).await;
        }
    };
    let call = |name: &'static str| {
        let api = &api;
        async move {
            let task = api
                .post("/spawn-task", json!({"function_name": name, "wait": true}))
                .await;
            assert_eq!(task["result"], name, "{task}");
        }
    };
    // Two containers of half the machine each fill it; a third function
    // only runs if an idle container gives its half back.
    for name in ["a", "b", "c"] {
        deploy(name, total / 2.0, json!({})).await;
    }
    for name in ["a", "b", "c", "a"] {
        call(name).await;
    }

    // Bad values name the field and the value.
    for (field, value) in [("scaledown_window", json!(1)), ("min_containers", json!(3))] {
        let mut body = json!({"function_code": "def k():\n    return 1\n", "function_name": "k", "max_concurrency": 2});
        body[field] = value.clone();
        let (status, problem) = api.send(Method::POST, "/deploy-function", Some(body)).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains(&value.to_string()),
            "{problem}"
        );
    }

    // Idle containers retire after their 2 s window, except the one kept
    // warm by min_containers. `late` is called last: once its container has
    // gone, kept's (idle longer) would have gone too without min_containers.
    let quarter = total / 4.0;
    deploy("kept", quarter, json!({"min_containers": 1})).await;
    deploy("late", total / 8.0, json!({})).await;
    call("kept").await;
    call("late").await;
    support::eventually(Duration::from_secs(30), "idle containers retired", || {
        let api = &api;
        async move { cpu_used(api).await <= quarter + 1e-6 }
    })
    .await;
    let used = cpu_used(&api).await;
    assert!(
        (used - quarter).abs() < 1e-6,
        "only kept's container stays warm: {used} of {total} cores reserved"
    );
    let listed = api.get("/functions").await;
    let kept = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function_name"] == "kept")
        .unwrap();
    assert_eq!(kept["spec"]["min_containers"], 1, "{kept}");
    assert_eq!(kept["spec"]["scaledown_window"], 2, "{kept}");
    support::stop(&mut server);
}

/// An in-tree build backend that prints everything it can find that might
/// be a secret (its environment, the server's environment through /proc,
/// the server's token file), tries to write outside its build directory,
/// then fails so its last lines come back in the deploy's answer.
const LEAKY_BACKEND: &str = r#"
import os, sys

def _leak():
    found = dict(os.environ)
    ppid = os.getppid()
    for pid in {ppid, os.getpgid(0)} | {int(p) for p in os.listdir('/proc') if p.isdigit()}:
        try:
            with open('/proc/%d/environ' % pid, 'rb') as f:
                for kv in f.read().split(b'\0'):
                    k, _, v = kv.decode(errors='replace').partition('=')
                    if k:
                        found['proc%d_%s' % (pid, k)] = v
        except OSError:
            pass
    try:
        with open('ESCAPED_PATH', 'w') as f:
            f.write('escaped')
    except OSError:
        pass
    for k, v in sorted(found.items()):
        print('%s=%s' % (k, v))
    sys.stdout.flush()
    raise SystemExit('leaky build failed on purpose')

def get_requires_for_build_wheel(config_settings=None):
    _leak()

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _leak()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_builds_are_sandboxed_and_never_echo_secrets() {
    // Sandboxed, the build sees nothing of the server; unsandboxed, it can
    // read the server's environment through /proc, and redaction is what
    // keeps the tokens out of the answer and the log.
    for mode in ["auto", "off"] {
        leaky_build(mode).await;
    }
}

async fn leaky_build(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let escaped = dir.path().join("escaped");
    // An sdist in a find-links directory, as an index would serve it.
    let links = dir.path().join("links");
    std::fs::create_dir(&links).unwrap();
    let backend = LEAKY_BACKEND.replace("ESCAPED_PATH", escaped.to_str().unwrap());
    let made = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import io, sys, tarfile\n\
             files = {'pyproject.toml': sys.argv[2], 'leaky_backend.py': sys.argv[3],\n\
                      'PKG-INFO': 'Metadata-Version: 2.1\\nName: leaky\\nVersion: 0.1\\n'}\n\
             with tarfile.open(sys.argv[1], 'w:gz') as t:\n\
             \x20   for name, text in files.items():\n\
             \x20       data = text.encode()\n\
             \x20       info = tarfile.TarInfo('leaky-0.1/' + name)\n\
             \x20       info.size = len(data)\n\
             \x20       t.addfile(info, io.BytesIO(data))\n",
        )
        .arg(links.join("leaky-0.1.tar.gz"))
        .arg("[build-system]\nrequires = []\nbuild-backend = \"leaky_backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"leaky\"\nversion = \"0.1\"\n")
        .arg(&backend)
        .status()
        .unwrap();
    assert!(made.success());
    let modal_secret = "as-modal-token-secret-0123456789";
    let (_dir, data, mut server, api) = support::fresh(
        BIN,
        TOKEN,
        &[
            ("MODAL_TOKEN_ID", "ak-modal-token-id-0123456789"),
            ("MODAL_TOKEN_SECRET", modal_secret),
            ("LEAK_TARGET", "server-only-variable"),
            ("MODAL_AGENTS_SANDBOX", mode),
            ("PIP_FIND_LINKS", links.to_str().unwrap()),
            ("PIP_NO_INDEX", "1"),
        ],
    );
    let (status, _) = api
        .send(
            Method::PUT,
            "/secrets/keys",
            Some(json!({"API_KEY": "sk-stored-secret-0123456789"})),
        )
        .await;
    assert!((200..300).contains(&status));
    let (status, answer) = api
        .send(
            Method::POST,
            "/deploy-function",
            Some(
                json!({"function_code": "def f():\n    return 1\n", "function_name": "f",
                        "image_config": {"packages": ["leaky==0.1"]}}),
            ),
        )
        .await;
    assert!(status >= 400, "{answer}");
    let text = answer.to_string();
    assert!(text.contains("installer exited"), "{text}");
    let log: String = std::fs::read_dir(data.join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".build.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(log.contains("leaky build failed on purpose"), "{log}");
    for secret in [TOKEN, modal_secret, "sk-stored-secret-0123456789"] {
        assert!(!text.contains(secret), "{secret} in the answer: {text}");
        assert!(!log.contains(secret), "{secret} in the build log");
    }
    // The build's own environment is cleared: none of the server's variables.
    assert!(!log.contains(" LEAK_TARGET="), "{log}");
    if mode == "auto" && sandboxed(&api).await {
        assert!(
            !escaped.exists(),
            "a sandboxed build wrote outside its directory"
        );
        assert!(!log.contains("server-only-variable"), "{log}");
    }
    support::stop(&mut server);
}

/// Whether the server's containers run under bubblewrap.
async fn sandboxed(api: &Api) -> bool {
    api.get("/healthz").await["sandbox"] == "bubblewrap"
}

/// Without bubblewrap the server says so: `/healthz` and `/resources` name
/// the isolation, and a deploy whose limits it cannot enforce says which;
/// with bubblewrap neither carries a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_to_plain_processes_is_loud() {
    let code = json!({"function_code": "def f():\n    return 1\n", "function_name": "f"});
    for mode in ["off", "auto"] {
        let (_dir, _data, mut server, api) =
            support::fresh(BIN, TOKEN, &[("MODAL_AGENTS_SANDBOX", mode)]);
        let health = api.get("/healthz").await;
        let resources = api.get("/resources").await;
        let isolation = resources["capacity"]["isolation"].clone();
        assert_eq!(health["sandbox"], isolation, "{health} {resources}");
        let answer = api.post("/deploy-function", code.clone()).await;
        let warnings = answer["warnings"].to_string();
        if mode == "off" {
            assert_eq!(isolation, "none", "{resources}");
            assert!(warnings.contains("limits.network"), "{answer}");
            assert!(warnings.contains("without a sandbox"), "{answer}");
        } else if isolation == "bubblewrap" {
            assert!(answer.get("warnings").is_none(), "{answer}");
        }
        support::stop(&mut server);
    }
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
        time.sleep(0.3)
    return x
"#;

/// The timeout applies to each input of a map, not to a batch: inputs each
/// under it never fail together, the one past it fails alone, and no input
/// runs twice (bar the batch-mates of one that holds the GIL past it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_timeouts_are_per_input_and_nothing_runs_twice() {
    let (_dir, data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
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
    support::stop(&mut server);
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

/// A client trickling its headers (slowloris) or idling on a kept-alive
/// connection is cut off after the header-read timeout; others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, _data, mut server, api) =
        support::fresh(BIN, TOKEN, &[("MODAL_AGENTS_HEADER_READ_TIMEOUT", "1")]);
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
    support::stop(&mut server);
}

/// A request with an Idempotency-Key whose client goes away runs to the
/// end: the retry gets its response (409 only while it still runs), and the
/// work exists once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_outlives_a_dropped_client() {
    let (_dir, data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
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
    support::stop(&mut server);
}

/// Output without end: a call printing 300 MB without a newline, and 300 MB
/// written straight to fd 2, still answers; the task's log is capped with a
/// visible note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_output_is_capped_and_the_call_still_answers() {
    let (_dir, _data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
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
    support::stop(&mut server);
}

/// `memory: [request, limit]` is a real ceiling: an input that allocates
/// past it fails with OutOfMemory naming the limit, the container is
/// replaced and the next input runs; bad pairs name the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_is_a_real_ceiling() {
    let (_dir, _data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
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
    let spec = &api.get("/functions").await[0]["spec"]["resources"];
    assert_eq!(spec["memory_limit_mib"], 256, "{spec}");
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
    support::stop(&mut server);
}
