//! Attacks on what keeps a function in its place: links planted in
//! volumes, package builds that hunt for secrets, the fallback to plain
//! processes, and idle containers hoarding the machine.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::support::{self, Api};
use super::{Server, Target, BIN, TOKEN};

/// One of the attacks `every_attack_in_a_row_leaves_the_server_whole` makes in a row against one server.
pub(crate) async fn attack_links_a_function_plants_in_its_volume_are_never_followed(
    t: &Target<'_>,
) {
    let (api, data, dir) = (t.api, t.data, t.dir);
    // A secret the database holds, which the link would hand over.
    let (status, _) = api
        .send(
            Method::PUT,
            "/secrets/keys",
            Some(json!({"API_KEY": "sk-must-not-leak-123"})),
        )
        .await;
    assert!((200..300).contains(&status));
    let outside = dir.join("outside");
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
    // Unsandboxed, the build can read the server's environment through
    // /proc, and redaction is what keeps the tokens out of the answer and
    // the log. Sandboxed (the default, "auto"), it sees nothing of the
    // server: `every_attack_in_a_row_leaves_the_server_whole` runs it so.
    leaky_build("off").await;
}

/// Puts the leaky sdist in a find-links directory under `dir`; returns
/// that directory.
pub(crate) fn leaky_sdist(dir: &std::path::Path) -> std::path::PathBuf {
    let escaped = dir.join("escaped");
    let backend = LEAKY_BACKEND.replace("ESCAPED_PATH", escaped.to_str().unwrap());
    sdist(dir, "leaky", &backend)
}

/// An sdist of project `name` 0.1 built by the PEP 517 backend `backend`
/// (its source), in a find-links directory under `dir` (returned), as an
/// index would serve it.
fn sdist(dir: &std::path::Path, name: &str, backend: &str) -> std::path::PathBuf {
    let links = dir.join("links");
    std::fs::create_dir_all(&links).unwrap();
    let made = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import io, sys, tarfile\n\
             name = sys.argv[4]\n\
             files = {'pyproject.toml': sys.argv[2], name + '_backend.py': sys.argv[3],\n\
                      'PKG-INFO': 'Metadata-Version: 2.1\\nName: %s\\nVersion: 0.1\\n' % name}\n\
             with tarfile.open(sys.argv[1], 'w:gz') as t:\n\
             \x20   for path, text in files.items():\n\
             \x20       data = text.encode()\n\
             \x20       info = tarfile.TarInfo(name + '-0.1/' + path)\n\
             \x20       info.size = len(data)\n\
             \x20       t.addfile(info, io.BytesIO(data))\n",
        )
        .arg(links.join(format!("{name}-0.1.tar.gz")))
        .arg(format!("[build-system]\nrequires = []\nbuild-backend = \"{name}_backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"{name}\"\nversion = \"0.1\"\n"))
        .arg(backend)
        .arg(name)
        .status()
        .unwrap();
    assert!(made.success());
    links
}

/// A client that gives up while its sandbox's packages build (a build that
/// never ends) takes nothing with it: the build is stopped, and the
/// sandbox's place and name are free again for the next create. A
/// `run_code` caller that leaves mid-run takes its sandbox with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_gone_mid_create_or_mid_run_code_frees_the_sandbox_place() {
    let dir = tempfile::tempdir().unwrap();
    let links = sdist(
        dir.path(),
        "slowbuild",
        "import time\ndef get_requires_for_build_wheel(config_settings=None):\n    time.sleep(600)\n    return []\n",
    );
    let links = links.display().to_string();
    let server = Server::start(&[
        ("PIP_FIND_LINKS", &links),
        ("PIP_NO_INDEX", "1"),
        ("MODAL_AGENTS_MAX_SANDBOXES", "1"),
    ]);
    let api = server.target().api;
    let gave_up = api
        .http
        .post(format!("{}/sandboxes", api.url))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "held", "image": {"python_packages": ["slowbuild==0.1"]}}))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(gave_up.is_err(), "the build was to outlast the client");
    // The server notices the closed connection and drops the request.
    let made = std::sync::Mutex::new(serde_json::Value::Null);
    support::eventually(
        Duration::from_secs(15),
        "a create after the abandoned one",
        || async {
            let (status, view) = api
                .send(Method::POST, "/sandboxes", Some(json!({"name": "held"})))
                .await;
            *made.lock().unwrap() = view;
            status == 201
        },
    )
    .await;
    assert_eq!(made.lock().unwrap()["name"], "held");
    support::eventually(
        Duration::from_secs(10),
        "the abandoned build stopped",
        || async { support::processes_with("slowbuild").is_empty() },
    )
    .await;

    // A `run_code` whose caller leaves mid-run ends its sandbox then, not at
    // its lifetime's end: the one place is free again within seconds.
    let held = made.lock().unwrap()["sandbox_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = api
        .send(Method::DELETE, &format!("/sandboxes/{held}"), None)
        .await;
    assert_eq!(status, 200);
    let gave_up = api
        .http
        .post(format!("{}/tools/run_code", api.url))
        .bearer_auth(TOKEN)
        .json(&json!({"code": "sleep 300", "language": "sh", "timeout_s": 600}))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(gave_up.is_err(), "the snippet was to outlast the client");
    support::eventually(
        Duration::from_secs(15),
        "a create after the abandoned run_code",
        || async {
            let (status, _) = api.send(Method::POST, "/sandboxes", Some(json!({}))).await;
            status == 201
        },
    )
    .await;
    server.stop();
}

/// The server environment a leaky build attack needs.
pub(crate) fn leaky_env(links: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("MODAL_TOKEN_ID", "ak-modal-token-id-0123456789".into()),
        ("MODAL_TOKEN_SECRET", MODAL_SECRET.into()),
        ("LEAK_TARGET", "server-only-variable".into()),
        ("PIP_FIND_LINKS", links.display().to_string()),
        ("PIP_NO_INDEX", "1".into()),
    ]
}

const MODAL_SECRET: &str = "as-modal-token-secret-0123456789";

async fn leaky_build(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let links = leaky_sdist(dir.path());
    let mut env = leaky_env(&links);
    env.push(("MODAL_AGENTS_SANDBOX", mode.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env);
    attack_leaky_build(&server.target()).await;
    server.stop();
}

/// A package build that prints every secret it can find never gets one
/// into the deploy's answer or the build log; sandboxed, it writes nothing
/// outside its directory. (The server runs with [`leaky_env`].)
pub(crate) async fn attack_leaky_build(t: &Target<'_>) {
    let (api, data) = (t.api, t.data);
    let escaped = t.dir.join("escaped");
    let modal_secret = MODAL_SECRET;
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
    if sandboxed(api).await {
        assert!(
            !escaped.exists(),
            "a sandboxed build wrote outside its directory"
        );
        assert!(!log.contains("server-only-variable"), "{log}");
    }
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

    // A call waiting for the room its own function's busy container holds
    // gets that container once it is free: it is reused, never retired for
    // a cold one (each container has a token of its own).
    api.post(
        "/deploy-function",
        json!({"function_code": "import time, uuid\nTOKEN = uuid.uuid4().hex\ndef whole(_):\n    time.sleep(0.3)\n    return TOKEN\n",
               "function_name": "whole", "cpu": total, "max_concurrency": 2}),
    )
    .await;
    for round in 0..3 {
        let map = api
            .post(
                "/run-parallel",
                json!({"function_name": "whole", "inputs": [round, round], "wait": true}),
            )
            .await;
        let tokens = api.all_results(map["task_id"].as_str().unwrap()).await;
        assert_eq!(tokens.len(), 2, "{map}");
        assert_eq!(
            tokens[0], tokens[1],
            "round {round}: a cold container replaced a free warm one"
        );
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
