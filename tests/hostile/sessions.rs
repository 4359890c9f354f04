//! Sandbox sessions attacked the way agent-written code would: fork and
//! memory bombs, endless output, writes outside the workdir, network with
//! the network off, a stdin never closed, a flood of creates past capacity,
//! and a kill -9 of the server with 20 live sandboxes.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::support::{self, Api};
use super::{BIN, TOKEN};

async fn create(api: &Api, body: Value) -> String {
    let (status, v) = api.send(Method::POST, "/sandboxes", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    v["sandbox_id"].as_str().unwrap().to_owned()
}

async fn exec(api: &Api, id: &str, body: Value) -> Value {
    let (status, v) = api
        .send(Method::POST, &format!("/sandboxes/{id}/exec"), Some(body))
        .await;
    assert!(status == 200 || status == 202, "{status} {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_and_floods_end_typed_and_the_sandbox_lives_on() {
    let (_dir, data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    let id = create(
        &api,
        json!({"memory": 256, "limits": {"processes": 64, "output_mib": 1}}),
    )
    .await;

    // A fork bomb meets the process ceiling and its own timeout.
    let bomb = exec(
        &api,
        &id,
        json!({"cmd": ["sh", "-c", "b() { b | b & }; b; sleep 30"], "timeout_s": 3, "wait_s": 30}),
    )
    .await;
    assert!(bomb["outcome"]["kind"].is_string(), "{bomb}");
    eprintln!("fork bomb: {}", bomb["outcome"]);
    let after = exec(&api, &id, json!({"cmd": ["echo", "alive"], "wait_s": 30})).await;
    assert_eq!(after["stdout"], "alive\n", "{after}");

    // A memory bomb is killed for memory; the sandbox says so and lives on.
    let mem = exec(
        &api,
        &id,
        json!({"cmd": ["python3", "-c", "x = b'x' * (1 << 30)"], "timeout_s": 30, "wait_s": 40}),
    )
    .await;
    let view = api.get(&format!("/sandboxes/{id}")).await;
    eprintln!(
        "memory bomb: {}, oom kills {}",
        mem["outcome"], view["oom_kills"]
    );
    if view["oom_kills"].as_u64() > Some(0) {
        assert_eq!(mem["outcome"]["kind"], "out_of_memory", "{mem}");
    } else {
        // No memory cgroup on this machine: Python's own MemoryError.
        assert_eq!(mem["outcome"]["kind"], "exited", "{mem}");
    }
    assert_eq!(view["state"], "running");

    // Endless output: bounded on disk and in the answer, counted in full.
    let flood = exec(
        &api,
        &id,
        json!({"cmd": ["yes", "flood"], "timeout_s": 2, "wait_s": 30}),
    )
    .await;
    assert_eq!(
        flood["outcome"]["kind"], "timed_out",
        "{}",
        flood["outcome"]
    );
    assert!(flood["stdout_bytes"].as_u64().unwrap() > 2 << 20);
    assert!(flood["stdout"].as_str().unwrap().len() <= 1 << 20);
    assert_eq!(flood["truncated"], true);
    let outputs = data.join("sandboxes").join(&id).join("procs");
    let on_disk: u64 = std::fs::read_dir(outputs)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk < 4 << 20, "{on_disk} bytes of output kept");

    // A stdin never closed: its own timeout ends it.
    let cat = exec(
        &api,
        &id,
        json!({"cmd": ["cat"], "stdin_open": true, "timeout_s": 1, "wait_s": 20}),
    )
    .await;
    assert_eq!(cat["outcome"], json!({"kind": "timed_out", "after_s": 1.0}));

    // Writes outside the workdir fail; the host sees nothing.
    let host = data.join("planted");
    let script = format!(
        "echo x > /usr/x; echo x > /etc/x; echo x > {}; echo x > /workspace/ok",
        host.display()
    );
    exec(
        &api,
        &id,
        json!({"cmd": ["sh", "-c", script], "wait_s": 20}),
    )
    .await;
    assert!(!host.exists() && !std::path::Path::new("/usr/x").exists());
    let listed = api.get(&format!("/sandboxes/{id}/files")).await;
    assert_eq!(listed["entries"][0]["name"], "ok");

    // No network unless asked: not even the server on this host's loopback.
    let port = api.url.rsplit(':').next().unwrap().to_owned();
    let probe =
        format!("import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)");
    let net = exec(
        &api,
        &id,
        json!({"cmd": ["python3", "-c", probe], "wait_s": 20}),
    )
    .await;
    assert_eq!(net["outcome"]["kind"], "exited");
    assert_ne!(net["outcome"]["code"], 0, "{net}");
    assert!(net["stderr"].as_str().unwrap().contains("Error"), "{net}");
    support::stop(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_past_capacity_are_refused_at_once() {
    let (_dir, _data, mut server, api) =
        support::fresh(BIN, TOKEN, &[("MODAL_AGENTS_MAX_SANDBOXES", "10")]);
    let started = Instant::now();
    let creates = (0..100).map(|_| {
        let api = &api;
        async move {
            let r = api
                .http
                .post(format!("{}/sandboxes", api.url))
                .bearer_auth(TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry)
        }
    });
    let answers = futures_util::future::join_all(creates).await;
    let made = answers.iter().filter(|(s, _)| *s == 201).count();
    let refused = answers
        .iter()
        .filter(|(s, retry)| *s == 503 && *retry)
        .count();
    assert_eq!((made, refused), (10, 90), "{answers:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    support::stop(&mut server);
}

/// Processes running `sleep MARKER` (not the jails whose arguments name it).
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| c == format!("sleep\0{marker}\0").as_bytes())
                .unwrap_or(false)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_with_20_live_sandboxes_leaves_no_process_and_lists_all_20() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, url) = support::serve_with(BIN, &data, TOKEN, &[]);
    let api = Api::new(url, TOKEN);
    let marker = "987654.321";
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = create(&api, json!({"name": format!("live-{i}")})).await;
        api.http
            .put(format!("{}/sandboxes/{id}/files/mine.txt", api.url))
            .bearer_auth(TOKEN)
            .body(format!("file {i}"))
            .send()
            .await
            .unwrap();
        exec(&api, &id, json!({"cmd": ["sleep", marker]})).await;
        ids.push(id);
    }
    support::eventually(Duration::from_secs(20), "20 sleepers", || async {
        processes_with(marker) >= 20
    })
    .await;
    support::kill(server.id(), libc::SIGKILL);
    server.wait().unwrap();
    support::eventually(Duration::from_secs(20), "no sleeper left", || async {
        processes_with(marker) == 0
    })
    .await;
    let (mut server, url) = support::serve_with(BIN, &data, TOKEN, &[]);
    let api = api.at(url);
    assert_eq!(processes_with(marker), 0, "none after the restart");
    let listed = api.get("/sandboxes").await;
    let all = listed["sandboxes"].as_array().unwrap();
    assert_eq!(all.len(), 20);
    for sb in all {
        assert_eq!(sb["state"], "ended");
        assert_eq!(sb["ended"]["reason"], "runtime_restarted", "{sb}");
        // The files were still on disk: snapshotted at the restart.
        assert!(sb["ended"]["snapshot_id"].is_string(), "{sb}");
    }
    let snap = all[0]["ended"]["snapshot_id"].as_str().unwrap();
    let revived = create(&api, json!({"from_snapshot": snap})).await;
    let text = api
        .text(&format!("/sandboxes/{revived}/files/mine.txt"))
        .await;
    assert!(text.starts_with("file "), "{text}");
    support::stop(&mut server);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// What the first hostile pass over sandboxes found, each held now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_hostile_pass_found_stays_fixed() {
    let (_dir, data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    // Nested mounts (whatever sorts between them) and a volume over the
    // workdir are refused before anything is made.
    for body in [
        json!({"volumes": {"/a": "v1", "/a-b": "v2", "/a/c/d": "v3"}}),
        json!({"volumes": {"/workspace": "v1"}}),
        json!({"workdir": "/a/c", "volumes": {"/a": "v1", "/a-b": "v2"}}),
    ] {
        let (status, p) = api.send(Method::POST, "/sandboxes", Some(body)).await;
        assert_eq!(status, 422, "{p}");
    }
    // A secret's value a process writes into a file stays out of what the
    // files API and the tools hand back.
    let (status, _) = api
        .send(
            Method::PUT,
            "/secrets/keys",
            Some(json!({"API_KEY": "sk-must-not-leak-4567"})),
        )
        .await;
    assert!((200..300).contains(&status));
    let holder = create(&api, json!({"secrets": ["keys"]})).await;
    exec(
        &api,
        &holder,
        json!({"cmd": ["sh", "-c", "echo key=$API_KEY > leak.txt"], "wait_s": 20}),
    )
    .await;
    let text = api
        .text(&format!("/sandboxes/{holder}/files/leak.txt"))
        .await;
    assert!(
        text.starts_with("key=") && !text.contains("sk-must-not-leak"),
        "{text}"
    );
    let read = api
        .post(
            "/tools/read_sandbox_file",
            json!({"sandbox_id": holder, "path": "leak.txt"}),
        )
        .await;
    assert!(!read.to_string().contains("sk-must-not-leak"), "{read}");

    // A process that is running is activity: idle expiry waits for it.
    // (The exec must come within the idle timeout of the create, under
    // whatever load the machine has: 3 s.)
    let idle = create(&api, json!({"idle_timeout_s": 3})).await;
    let slow = exec(&api, &idle, json!({"cmd": ["sleep", "5"], "wait_s": 20})).await;
    assert_eq!(
        slow["outcome"],
        json!({"kind": "exited", "code": 0}),
        "{slow}"
    );

    // The rest in a sandbox that does not idle out between steps, with room
    // in its disk quota for the sparse file below (a sparse file's size is
    // what the file-size limit sees).
    let id = create(&api, json!({"limits": {"disk_mib": 16384}})).await;

    // Code cannot write the wrapper's report, nor see the server's
    // descriptors.
    let forged = exec(
        &api,
        &id,
        json!({"cmd": ["sh", "-c", "printf 'exit 0' > /proc/1/fd/3; exit 7"], "wait_s": 20}),
    )
    .await;
    assert_eq!(
        forged["outcome"],
        json!({"kind": "exited", "code": 7}),
        "{forged}"
    );
    let fds = exec(
        &api,
        &id,
        json!({"cmd": ["ls", "/proc/self/fd"], "wait_s": 20}),
    )
    .await;
    let listed: Vec<&str> = fds["stdout"].as_str().unwrap().lines().collect();
    assert!(listed.len() <= 4, "descriptors inside: {listed:?}");

    // A sparse file past the snapshot limit is refused before a byte is
    // copied.
    exec(
        &api,
        &id,
        json!({"cmd": ["truncate", "-s", "9G", "sparse"], "wait_s": 20}),
    )
    .await;
    let started = Instant::now();
    let (status, p) = api
        .send(Method::POST, &format!("/sandboxes/{id}/snapshot"), None)
        .await;
    assert_eq!(status, 422, "{p}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let blobs: u64 = std::fs::read_dir(data.join("snapshots/blobs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(blobs < 1 << 20, "{blobs} bytes of blobs");
    api.send(
        Method::DELETE,
        &format!("/sandboxes/{id}/files/sparse"),
        None,
    )
    .await;

    // A write under a regular file is a 422, not a 500.
    api.http
        .put(format!("{}/sandboxes/{id}/files/plain", api.url))
        .bearer_auth(TOKEN)
        .body("x")
        .send()
        .await
        .unwrap();
    let under = api
        .http
        .put(format!("{}/sandboxes/{id}/files/plain/x", api.url))
        .bearer_auth(TOKEN)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(under.status(), 422);

    // A signal sent the moment a process starts is not lost.
    let sleeper = exec(&api, &id, json!({"cmd": ["sleep", "30"]})).await;
    let pid = sleeper["process_id"].as_str().unwrap();
    api.post(
        &format!("/sandboxes/{id}/processes/{pid}/kill"),
        json!({"signal": "TERM"}),
    )
    .await;
    let ended = api
        .get(&format!("/sandboxes/{id}/processes/{pid}?wait_s=20"))
        .await;
    assert_eq!(
        ended["outcome"],
        json!({"kind": "signaled", "signal": 15}),
        "{ended}"
    );

    // Past the system's limits, or a cwd that is not there: 422 naming it.
    let big: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("V{i}"), json!("x".repeat(100_000))))
        .collect();
    let (status, p) = api
        .send(
            Method::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["true"], "env": big})),
        )
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("env")), "{p}");
    let (status, p) = api
        .send(Method::POST, "/sandboxes", Some(json!({"env": big})))
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("env")), "{p}");
    let (status, p) = api
        .send(
            Method::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["pwd"], "cwd": "/tmp/not-there"})),
        )
        .await;
    assert_eq!((status, p["field"].as_str()), (422, Some("cwd")), "{p}");

    // Execs hold no descriptor once they end, and a sandbox none once it
    // has ended.
    let before = open_fds(server.id());
    for _ in 0..40 {
        exec(&api, &id, json!({"cmd": ["true"], "wait_s": 20})).await;
    }
    api.send(Method::DELETE, &format!("/sandboxes/{id}"), None)
        .await;
    let after = open_fds(server.id());
    assert!(after <= before + 4, "descriptors {before} -> {after}");
    support::stop(&mut server);
}
