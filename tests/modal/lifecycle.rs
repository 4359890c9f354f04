//! Deploys, undeploys, volumes, routing and tokens through the real SDK and
//! CLI against the Modal-protocol test server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use modal_agents::spec::BackendChoice;
use modal_agents::{FunctionSpec, RuntimeError};
use serde_json::{json, Map, Value};

use crate::{modal_deploy_error, real_sdk, runtime_on, support, ModalServer, BIN, TOKEN_SECRET};

fn modal(spec: FunctionSpec) -> FunctionSpec {
    spec.backend(BackendChoice::Modal)
}

/// The server-side directory of Modal Volume `name`.
async fn remote_volume(server: &ModalServer, name: &str) -> PathBuf {
    let state = server.state().await;
    PathBuf::from(
        state["volumes"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no volume {name} in {state}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_code_stays_off_the_host_and_undeploy_stops_the_app() {
    let server = ModalServer::start(&real_sdk().await);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on(&server, dir.path(), TOKEN_SECRET).await;

    // Module-level code that would hand the operator's token to the caller
    // never runs at deploy (the deploy succeeds); in Modal's container the
    // token is not there to take, and nothing returned carries it.
    let leaky = "import os\nprint(os.environ['MODAL_TOKEN_SECRET'])\nraise SystemExit(1)\ndef leaky():\n    return 1\n";
    rt.deploy_function(modal(FunctionSpec::new("leaky", leaky)))
        .await
        .unwrap();
    let err = rt
        .call("leaky", vec![], Map::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("MODAL_TOKEN_SECRET"), "{err}");
    assert!(!err.contains(TOKEN_SECRET), "the token leaked: {err}");
    // Nor does code smuggled back in a result or an exception: what a
    // container sends is unpickled here only as plain values, so an object
    // whose pickle runs code reaches the host as an error, for a call and a
    // map alike; `sys.exit` in the function, text that is not valid Unicode
    // and integers JSON cannot hold are that call's error, and the bridge
    // (shared by every call) carries on.
    let marker = dir.path().join("ran-on-host");
    let hostile = format!(
        r#"
import sys
MARKER = {marker:?}

class Payload:
    def __reduce__(self):
        return (exec, ("open(%r, 'w').write('ran')" % MARKER,))

class PayloadError(Exception):
    def __reduce__(self):
        return (exec, ("open(%r, 'w').write('ran')" % MARKER,))

def hostile(kind):
    if kind == "result":
        return Payload()
    if kind == "error":
        raise PayloadError("boom")
    if kind == "exit":
        sys.exit(3)
    if kind == "surrogate":
        return "a\udc80b"
    if kind == "huge":
        return 10 ** 400
    return kind
"#,
        marker = marker.display().to_string()
    );
    rt.deploy_function(modal(FunctionSpec::new("hostile", hostile)))
        .await
        .unwrap();
    for (kind, expected) in [
        ("result", "ResultNotSerializable"),
        ("error", "PayloadError"),
        ("exit", "SystemExit"),
        ("surrogate", "ResultNotSerializable"),
        ("huge", "ResultNotSerializable"),
    ] {
        let err = rt
            .call("hostile", vec![json!(kind)], Map::new())
            .await
            .unwrap_err();
        let RuntimeError::TaskFailed { error, .. } = err else {
            panic!("{kind}: {err}")
        };
        assert_eq!(error.kind, expected, "{kind}: {error:?}");
    }
    let id = rt
        .run_parallel(
            "hostile",
            vec![json!("result"), json!("ok"), json!("error")],
        )
        .await
        .unwrap();
    rt.wait(id, Some(Duration::from_secs(60))).await.unwrap();
    let page = rt.results(id, 0, 10).await.unwrap();
    assert_eq!(page.results[0]["error"]["type"], "ResultNotSerializable");
    assert_eq!(page.results[1], json!("ok"));
    assert_eq!(page.results[2]["error"]["type"], "PayloadError");
    assert_eq!(page.results[2]["error"]["message"], "boom");
    assert!(!marker.exists(), "a result's pickle ran code on the host");
    assert_eq!(
        rt.call("hostile", vec![json!("still here")], Map::new())
            .await
            .unwrap(),
        json!("still here")
    );

    // Errors in the code still show at deploy, from a parse.
    let err = rt
        .deploy_function(modal(FunctionSpec::new(
            "broken",
            "def broken(:\n    pass\n",
        )))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::Spec(modal_agents::SpecError::Syntax { line: 1, .. })
        ),
        "{err}"
    );
    let err = rt
        .deploy_function(modal(FunctionSpec::new(
            "absent",
            "def other():\n    pass\n",
        )))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");

    // Undeploy stops the app on Modal (not left deployed, and billing).
    rt.deploy_function(modal(FunctionSpec::new(
        "brief",
        "def brief():\n    return 1\n",
    )))
    .await
    .unwrap();
    assert_eq!(server.app_states("brief").await, ["APP_STATE_DEPLOYED"]);
    rt.undeploy_function("brief").await.unwrap();
    assert_eq!(server.app_states("brief").await, ["APP_STATE_STOPPED"]);
    rt.shutdown().await;

    // A token Modal refuses fails the deploy with the credentials error.
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on(&server, dir.path(), "as-revoked").await;
    let started = Instant::now();
    let err = modal_deploy_error(&rt).await;
    assert!(
        err.contains("refused the credentials") && err.contains("modal token new"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_volume_sync() {
    let server = ModalServer::start(&real_sdk().await);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_on(&server, dir.path(), TOKEN_SECRET).await;
    // auto: what this machine can run stays local; a GPU it lacks goes to Modal.
    let local = rt
        .deploy_function(FunctionSpec::new(
            "here",
            "def here():\n    return 'local'\n",
        ))
        .await
        .unwrap();
    assert_eq!(local.backend, "local");
    assert!(rt.resources().modal.credentials);
    let remote = rt
        .deploy_function(
            FunctionSpec::new("there", "def there():\n    return 'modal'\n")
                .gpu("H100:8".parse().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(remote.backend, "modal");
    assert_eq!(
        rt.call("there", vec![], Map::new()).await.unwrap(),
        json!("modal")
    );
    assert_eq!(
        rt.call("here", vec![], Map::new()).await.unwrap(),
        json!("local")
    );

    // Volumes: changed files go up, files changed there come down.
    let files = rt.volume_dir("shared");
    std::fs::create_dir_all(files.join("sub")).unwrap();
    std::fs::write(files.join("a.txt"), "alpha").unwrap();
    std::fs::write(files.join("sub/b.txt"), "beta").unwrap();
    let pushed = rt.push_volume("shared").await.unwrap();
    assert_eq!(
        pushed.copied,
        vec!["a.txt".to_owned(), "sub/b.txt".to_owned()]
    );
    assert!(
        rt.push_volume("shared").await.unwrap().copied.is_empty(),
        "nothing changed"
    );
    // A function on Modal sees them at its mount path and writes back.
    let code = "def touch():\n    data = open('/data/sub/b.txt').read()\n    with open('/data/c.txt', 'w') as f:\n        f.write('from modal')\n    return data\n";
    rt.deploy_function(modal(
        FunctionSpec::new("touch", code).volume("/data", "shared"),
    ))
    .await
    .unwrap();
    assert_eq!(
        rt.call("touch", vec![], Map::new()).await.unwrap(),
        json!("beta")
    );
    std::fs::remove_file(files.join("a.txt")).unwrap();
    assert_eq!(
        rt.push_volume("shared").await.unwrap().deleted,
        vec!["a.txt".to_owned()]
    );
    let remote_dir = remote_volume(&server, "shared").await;
    assert!(!remote_dir.join("a.txt").exists());
    // Links planted in the volume are never followed by a sync: a linked
    // file is not uploaded, and a linked directory is not written through.
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "host secret").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), files.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, files.join("linked")).unwrap();
    rt.push_volume("shared").await.unwrap();
    assert!(!remote_dir.join("leak.txt").exists());
    assert!(!remote_dir.join("linked").exists());
    std::fs::create_dir_all(remote_dir.join("linked")).unwrap();
    std::fs::write(remote_dir.join("linked/planted.txt"), "through the link").unwrap();
    let pulled = rt.pull_volume("shared").await.unwrap();
    assert_eq!(
        pulled.copied,
        vec![
            "c.txt".to_owned(),
            "linked/planted.txt".to_owned(),
            // Modal's copy has the upload's time, so it is taken again.
            "sub/b.txt".to_owned()
        ]
    );
    assert!(
        !outside.join("planted.txt").exists(),
        "a pull wrote through a link"
    );
    assert_eq!(
        std::fs::read_to_string(files.join("c.txt")).unwrap(),
        "from modal"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modal_call_in_flight_survives_a_sigkill_of_the_server() {
    let python = real_sdk().await;
    let modal = ModalServer::start(&python);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (home_s, python_s) = (home.display().to_string(), python.display().to_string());
    let env = [
        ("HOME", home_s.as_str()),
        ("MODAL_TOKEN_ID", crate::modal_server::TOKEN_ID),
        ("MODAL_TOKEN_SECRET", TOKEN_SECRET),
        ("MODAL_AGENTS_MODAL_PYTHON", python_s.as_str()),
        ("MODAL_SERVER_URL", modal.url.as_str()),
    ];
    let token = "modal-durable-token-0123456789";
    let (mut server, url) = support::serve_with(BIN, &data, token, &env);
    let http = reqwest::Client::new();
    let post = |url: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    // The function waits for a gate file in its volume, counting its runs there.
    let code = "import os, time\ndef gated():\n    with open('/gate/runs', 'a') as f:\n        f.write('run\\n')\n    while not os.path.exists('/gate/open'):\n        time.sleep(0.01)\n    return 'opened'\n";
    post(
        format!("{url}/deploy-function"),
        json!({"function_code": code, "function_name": "gated", "backend": "modal",
               "volumes": {"/gate": "gate"}}),
    )
    .await;
    let task = post(
        format!("{url}/spawn-task"),
        json!({"function_name": "gated"}),
    )
    .await;
    let task_id = task["task_id"].as_str().unwrap().to_owned();
    // The FunctionCall id is journaled before the kill.
    let journal = data.join("tasks.journal");
    support::eventually(
        Duration::from_secs(60),
        "the call id in the journal",
        || async { std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"fc-")) },
    )
    .await;
    let gate = remote_volume(&modal, "gate").await;
    support::eventually(Duration::from_secs(60), "the call to run", || async {
        gate.join("runs").exists()
    })
    .await;
    support::kill(server.id(), libc::SIGKILL);
    server.wait().unwrap();

    std::fs::write(gate.join("open"), "").unwrap();
    let (mut server, url) = support::serve_with(BIN, &data, token, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        assert!(
            Instant::now() < deadline,
            "the task never finished after the restart"
        );
        let s: Value = http
            .get(format!("{url}/status/{task_id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["status"] == "completed" || s["status"] == "failed" {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["result"], "opened");
    assert_eq!(status["attempts"], 1, "waited for, not run again: {status}");
    let runs = std::fs::read_to_string(gate.join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the function ran once");
    support::kill(server.id(), libc::SIGTERM);
    server.wait().unwrap();
}
