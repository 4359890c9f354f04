//! Sandbox sessions through the runtime handle: real bubblewrap jails, real
//! processes, real files. Exec and its one typed outcome, output kept past
//! the end, files that never follow a link out, lifetimes that end only for
//! a reported reason (snapshotting first), snapshots, forks and diffs, and a
//! restart that lists every sandbox that was live.

mod support;

use std::time::Duration;

use modal_agents::sandbox::{OutputEvent, SandboxConfig, SandboxError};
use modal_agents::wire::{
    CreateSandbox, EndReason, ExecRequest, ListSandboxes, Outcome, SandboxState,
};
use modal_agents::Runtime;

async fn runtime(dir: &std::path::Path, config: SandboxConfig) -> Runtime {
    Runtime::builder()
        .data_dir(dir)
        .sandbox_config(config)
        .start()
        .await
        .expect("runtime starts")
}

fn cmd(args: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: args.iter().map(|s| s.to_string()).collect(),
        wait_s: Some(30),
        ..Default::default()
    }
}

fn sh(script: &str) -> ExecRequest {
    cmd(&["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_outcomes_are_typed_and_output_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let sbx = rt.sandboxes();
    let sb = sbx.create(CreateSandbox::default()).await.unwrap();
    assert_eq!(sb.state, SandboxState::Running);
    assert_eq!(sb.workdir, "/workspace");
    let id = sb.sandbox_id.clone();

    let r = sbx
        .exec(&id, sh("echo out; echo err >&2; pwd; exit 3"))
        .await
        .unwrap();
    assert_eq!(r.process.outcome, Some(Outcome::Exited { code: 3 }));
    assert_eq!(r.stdout.as_deref(), Some("out\n/workspace\n"));
    assert_eq!(r.stderr.as_deref(), Some("err\n"));

    // Stdin larger than a pipe holds is fed beside the output and the
    // clock: a program that prints a lot before it reads finishes, and one
    // that never reads still times out (both hung before).
    let big = "s".repeat(1 << 20);
    let r = sbx
        .exec(
            &id,
            ExecRequest {
                stdin: Some(big.clone()),
                ..cmd(&[
                    "python3",
                    "-c",
                    "import sys; sys.stdout.write('o' * (1 << 20)); print(len(sys.stdin.read()))",
                ])
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r.process.outcome,
        Some(Outcome::Exited { code: 0 }),
        "{r:?}"
    );
    assert!(r.stdout.as_deref().unwrap().ends_with("1048576\n"));
    let r = sbx
        .exec(
            &id,
            ExecRequest {
                stdin: Some(big),
                timeout_s: Some(1),
                ..cmd(&["sleep", "60"])
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(r.process.outcome, Some(Outcome::TimedOut { .. })),
        "{:?}",
        r.process
    );

    // A program that exits 137 is not one killed by SIGKILL, and neither is
    // a timeout.
    let r = sbx.exec(&id, sh("exit 137")).await.unwrap();
    assert_eq!(r.process.outcome, Some(Outcome::Exited { code: 137 }));
    let r = sbx.exec(&id, sh("kill -9 $$")).await.unwrap();
    assert_eq!(r.process.outcome, Some(Outcome::Signaled { signal: 9 }));
    let mut slow = sh("echo before; sleep 30");
    slow.timeout_s = Some(1);
    let r = sbx.exec(&id, slow).await.unwrap();
    assert_eq!(r.process.outcome, Some(Outcome::TimedOut { after_s: 1.0 }));
    assert_eq!(
        r.stdout.as_deref(),
        Some("before\n"),
        "output before the end is kept"
    );
    let r = sbx.exec(&id, cmd(&["no-such-program"])).await.unwrap();
    assert_eq!(r.process.outcome, Some(Outcome::Exited { code: 127 }));
    assert!(r.stderr.unwrap().contains("no-such-program"));

    // Files written by one process are there for the next, and for the API.
    sbx.exec(&id, sh("mkdir -p src && echo 'print(6*7)' > src/main.py"))
        .await
        .unwrap();
    let r = sbx
        .exec(&id, cmd(&["python3", "src/main.py"]))
        .await
        .unwrap();
    assert_eq!(r.stdout.as_deref(), Some("42\n"));
    assert_eq!(
        sbx.read_file(&id, "src/main.py").await.unwrap(),
        b"print(6*7)\n"
    );
    sbx.write_file(&id, "/workspace/data.txt", b"hello".to_vec())
        .await
        .unwrap();
    let r = sbx.exec(&id, cmd(&["cat", "data.txt"])).await.unwrap();
    assert_eq!(r.stdout.as_deref(), Some("hello"));
    let list = sbx.list_files(&id, None).await.unwrap();
    let names: Vec<&str> = list.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["data.txt", "src"]);
    assert!(list.entries[1].is_dir);

    // Stdin kept open, written later, then closed.
    let mut cat = cmd(&["cat"]);
    cat.stdin_open = true;
    cat.wait_s = Some(0);
    let started = sbx.exec(&id, cat).await.unwrap();
    let pid = started.process.process_id.clone();
    sbx.write_stdin(
        &id,
        &pid,
        modal_agents::wire::StdinRequest {
            data: Some("piped".into()),
            eof: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let done = sbx.wait_process(&id, &pid, 30).await.unwrap();
    assert_eq!(done.stdout.as_deref(), Some("piped"));

    // Output followed live, then the end with the outcome.
    let mut live = sh("for i in 1 2 3; do echo line$i; sleep 0.1; done");
    live.wait_s = Some(0);
    let started = sbx.exec(&id, live).await.unwrap();
    let stream = sbx
        .output(&id, &started.process.process_id, 0, true)
        .unwrap();
    let events: Vec<OutputEvent> = futures_util::StreamExt::collect(stream).await;
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            OutputEvent::Chunk(c) => Some(c.text.clone()),
            OutputEvent::End(_) => None,
        })
        .collect();
    assert_eq!(text, "line1\nline2\nline3\n");
    assert_eq!(
        events.last(),
        Some(&OutputEvent::End(Outcome::Exited { code: 0 }))
    );

    // Terminated: idempotent, and a 409-kind error carrying the reason.
    let ended = sbx.terminate(&id).await.unwrap();
    assert_eq!(ended.ended.as_ref().unwrap().reason, EndReason::Terminated);
    sbx.terminate(&id).await.unwrap();
    match sbx.exec(&id, cmd(&["true"])).await {
        Err(SandboxError::Ended { ended, .. }) => assert_eq!(ended.reason, EndReason::Terminated),
        other => panic!("exec after terminate: {other:?}"),
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_never_lead_out_and_paths_stay_inside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("host-secret"), "do not read").unwrap();
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let sbx = rt.sandboxes();
    let id = sbx
        .create(CreateSandbox::default())
        .await
        .unwrap()
        .sandbox_id;
    let target = dir.path().join("host-secret");
    let script = format!(
        "ln -s {} leak; ln -s / root; ln -s /etc/passwd pw",
        target.display()
    );
    sbx.exec(&id, sh(&script)).await.unwrap();
    for path in ["leak", "root/etc/passwd", "pw"] {
        let e = sbx.read_file(&id, path).await.unwrap_err();
        assert!(matches!(e, SandboxError::NoSuchFile(_)), "{path}: {e}");
    }
    // A link read is said to be a link (it was "no file at").
    let e = sbx.read_file(&id, "pw").await.unwrap_err().to_string();
    assert!(
        e.contains("is a link") && e.contains("never follows links"),
        "{e}"
    );
    // A write through a link replaces the link, never its target.
    sbx.write_file(&id, "leak", b"x".to_vec()).await.unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "do not read");
    for path in ["/etc/passwd", "../../..", "/usr/bin/python3"] {
        let e = sbx.read_file(&id, path).await.unwrap_err();
        assert!(matches!(e, SandboxError::Invalid { .. }), "{path}: {e}");
    }
    // Inside, the host's files are not there at all.
    let r = sbx
        .exec(&id, cmd(&["cat", &target.display().to_string()]))
        .await
        .unwrap();
    assert_eq!(r.process.outcome, Some(Outcome::Exited { code: 1 }));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_fork_and_diff() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let sbx = rt.sandboxes();
    let id = sbx
        .create(CreateSandbox::default())
        .await
        .unwrap()
        .sandbox_id;
    sbx.write_file(&id, "app.py", b"def f():\n    return 1\n".to_vec())
        .await
        .unwrap();
    let base = sbx.snapshot(&id).await.unwrap();
    let forked = sbx.fork(&id, 3).await.unwrap();
    assert_eq!(forked.sandboxes.len(), 3);
    let again = sbx.snapshot(&id).await.unwrap();
    assert_eq!(again.new_bytes, 0, "unchanged files cost nothing");
    let child = &forked.sandboxes[1].sandbox_id;
    assert_eq!(
        sbx.read_file(child, "app.py").await.unwrap(),
        b"def f():\n    return 1\n"
    );
    sbx.write_file(child, "app.py", b"def f():\n    return 2\n".to_vec())
        .await
        .unwrap();
    sbx.write_file(child, "test.py", b"ok\n".to_vec())
        .await
        .unwrap();
    let snap = sbx.snapshot(child).await.unwrap();
    let diff = sbx
        .diff(&base.snapshot_id, &snap.snapshot_id)
        .await
        .unwrap();
    assert_eq!(diff.added.len(), 1);
    assert_eq!(diff.changed[0].path, "app.py");
    let text = diff.changed[0].diff.as_deref().unwrap();
    assert!(
        text.contains("-    return 1") && text.contains("+    return 2"),
        "{text}"
    );
    // The parent is untouched by its fork.
    assert_eq!(
        sbx.read_file(&id, "app.py").await.unwrap(),
        b"def f():\n    return 1\n"
    );
    rt.shutdown().await;
}

/// The disk quota: a process that keeps writing files ends
/// `disk_quota_exceeded` within a second of passing it; nothing starts
/// while the files are over it (a 409 naming `limits.disk_mib`); removing
/// them lets processes run again. One file can never pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_quota_stops_writers_and_holds_until_files_go() {
    use modal_agents::wire::SandboxLimits;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let sbx = rt.sandboxes();
    let id = sbx
        .create(CreateSandbox {
            limits: SandboxLimits {
                disk_mib: 8,
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap()
        .sandbox_id;
    // One file past the quota: the file-size limit stops it at once.
    let r = sbx
        .exec(&id, sh("head -c 20971520 /dev/zero > one.bin"))
        .await
        .unwrap();
    assert!(
        !r.process.outcome.as_ref().unwrap().success()
            && r.stderr.as_deref().unwrap_or("").contains("File too large"),
        "{:?} {:?}",
        r.process.outcome,
        r.stderr
    );
    sbx.remove_file(&id, "one.bin").await.unwrap();
    // Many files, each under it.
    let r = sbx
        .exec(
            &id,
            sh("i=0; while :; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); sleep 0.05; done"),
        )
        .await
        .unwrap();
    assert_eq!(
        r.process.outcome,
        Some(Outcome::DiskQuotaExceeded { limit_mib: 8 })
    );
    let refused = sbx.exec(&id, cmd(&["true"])).await.unwrap_err();
    assert!(
        matches!(refused, SandboxError::OverQuota { limit_mib: 8, .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("limits.disk_mib"), "{refused}");
    for entry in sbx.list_files(&id, None).await.unwrap().entries {
        sbx.remove_file(&id, &entry.name).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match sbx.exec(&id, cmd(&["true"])).await {
            Ok(r) => {
                assert!(r.process.outcome.unwrap().success());
                break;
            }
            Err(SandboxError::OverQuota { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The files API keeps to it too.
    let refused = sbx
        .write_file(&id, "big.bin", vec![0u8; 9 << 20])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, SandboxError::OverQuota { limit_mib: 8, .. }),
        "{refused}"
    );
    sbx.write_file(&id, "small.bin", vec![0u8; 1 << 20])
        .await
        .unwrap();
    rt.shutdown().await;
}

/// Keepalives of a few seconds at a time inside the last minute do not say
/// `sandbox.expiring` once each: it is said once per entry into the notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_within_the_notice_say_expiring_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let sbx = rt.sandboxes();
    let id = sbx
        .create(CreateSandbox {
            timeout_s: Some(30),
            ..Default::default()
        })
        .await
        .unwrap()
        .sandbox_id;
    let (_, mut events) = sbx.events(&id).unwrap();
    for _ in 0..5 {
        sbx.keepalive(&id, 1).unwrap();
        // An exec between keepalives: time for the lifetime's watcher to
        // speak if it were going to.
        assert!(sbx
            .exec(&id, cmd(&["true"]))
            .await
            .unwrap()
            .process
            .outcome
            .is_some());
    }
    sbx.terminate(&id).await.unwrap();
    let mut expiring = 0;
    loop {
        let event = events.recv().await.unwrap();
        if event.event == "sandbox.ended" {
            break;
        }
        assert_eq!(event.event, "sandbox.expiring");
        expiring += 1;
    }
    assert!(expiring <= 1, "{expiring} expiring events");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_end_on_time_with_a_reason_and_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let config = SandboxConfig {
        expiring_notice: Duration::from_secs(1),
        ..SandboxConfig::default()
    };
    let rt = runtime(dir.path(), config).await;
    let sbx = rt.sandboxes();
    let too_long = sbx
        .create(CreateSandbox {
            timeout_s: Some(86_401),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&too_long, SandboxError::Invalid { field, message } if field == "timeout_s" && message.contains("86400")),
        "{too_long}"
    );
    let sb = sbx
        .create(CreateSandbox {
            timeout_s: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = sb.sandbox_id.clone();
    let (_, mut events) = sbx.events(&id).unwrap();
    sbx.write_file(&id, "work.txt", b"precious".to_vec())
        .await
        .unwrap();
    let mut long = sh("sleep 60");
    long.wait_s = Some(0);
    let p = sbx.exec(&id, long).await.unwrap().process.process_id;
    let expiring = events.recv().await.unwrap();
    assert_eq!(expiring.event, "sandbox.expiring");
    let ended = events.recv().await.unwrap();
    assert_eq!(ended.event, "sandbox.ended");
    let at = ended.sandbox.ended.as_ref().unwrap().at;
    assert!(at >= sb.expires_at, "not a moment early");
    assert!(
        (at - sb.expires_at).num_milliseconds() < 1000,
        "not a second late: {at} vs {}",
        sb.expires_at
    );
    let view = sbx.view(&id).unwrap();
    let ended = view.ended.unwrap();
    assert_eq!(ended.reason, EndReason::LifetimeExpired);
    let snap = ended.snapshot_id.expect("a snapshot before the end");
    let process = sbx.wait_process(&id, &p, 10).await.unwrap();
    assert_eq!(
        process.process.outcome,
        Some(Outcome::SandboxEnded {
            reason: EndReason::LifetimeExpired
        })
    );
    // Its files live on in the snapshot.
    let next = sbx
        .create(CreateSandbox {
            from_snapshot: Some(snap),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        sbx.read_file(&next.sandbox_id, "work.txt").await.unwrap(),
        b"precious"
    );

    // Idle: ended for that reason.
    let idle = sbx
        .create(CreateSandbox {
            idle_timeout_s: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    support::eventually(Duration::from_secs(10), "idle expiry", || {
        let v = sbx.view(&idle.sandbox_id).unwrap();
        async move { v.ended.map(|e| e.reason) == Some(EndReason::IdleExpired) }
    })
    .await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_lists_every_live_sandbox_as_ended() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let sb = rt
            .sandboxes()
            .create(CreateSandbox {
                name: Some(format!("box-{i}")),
                ..Default::default()
            })
            .await
            .unwrap();
        rt.sandboxes()
            .write_file(&sb.sandbox_id, "f.txt", vec![b'a' + i as u8])
            .await
            .unwrap();
        ids.push(sb.sandbox_id);
    }
    let taken = rt
        .sandboxes()
        .create(CreateSandbox {
            name: Some("box-0".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&taken, SandboxError::NameTaken { holder, .. } if *holder == ids[0]),
        "{taken}"
    );
    rt.shutdown().await;
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let all = rt.sandboxes().list(&ListSandboxes::default());
    assert_eq!(all.len(), 3);
    for view in &all {
        let ended = view.ended.as_ref().unwrap();
        assert_eq!(ended.reason, EndReason::RuntimeRestarted);
        assert!(
            ended.snapshot_id.is_some(),
            "snapshotted at the graceful stop"
        );
    }
    // The name is free again.
    rt.sandboxes()
        .create(CreateSandbox {
            name: Some("box-0".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    rt.shutdown().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");
const TOKEN: &str = "sandbox-token-0123456789";

/// The contract over HTTP and the agent tools, against the server binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_and_the_tools_speak_the_contract() {
    use reqwest::Method;
    use serde_json::json;
    let (_dir, _data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    let (status, sb) = api
        .send(
            Method::POST,
            "/sandboxes",
            Some(json!({"name": "web", "tags": {"team": "a"}})),
        )
        .await;
    assert_eq!(status, 201, "{sb}");
    let id = sb["sandbox_id"].as_str().unwrap().to_owned();
    assert_eq!(sb["state"], "running");
    // Past a maximum: 422 naming the field and the maximum.
    let (status, p) = api
        .send(
            Method::POST,
            "/sandboxes",
            Some(json!({"timeout_s": 100000})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(p["field"], "timeout_s");
    assert!(p["detail"].as_str().unwrap().contains("86400"), "{p}");
    // The name is held.
    let (status, p) = api
        .send(Method::POST, "/sandboxes", Some(json!({"name": "web"})))
        .await;
    assert_eq!(status, 409);
    assert!(p["detail"].as_str().unwrap().contains(&id), "{p}");

    let r = api
        .post(
            &format!("/sandboxes/{id}/exec"),
            json!({"cmd": ["sh", "-c", "echo hi; exit 4"], "wait_s": 20}),
        )
        .await;
    assert_eq!(r["outcome"], json!({"kind": "exited", "code": 4}));
    assert_eq!(r["stdout"], "hi\n");
    // A running process: 202, then its output followed as SSE to the end.
    let (status, r) = api
        .send(
            Method::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["sh", "-c", "echo a; sleep 0.3; echo b >&2; sleep 30"], "timeout_s": 1})),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let pid = r["process_id"].as_str().unwrap().to_owned();
    let sse = api
        .text(&format!(
            "/sandboxes/{id}/processes/{pid}/output?follow=true"
        ))
        .await;
    assert!(
        sse.contains("event: stdout") && sse.contains("\"a\\n\""),
        "{sse}"
    );
    assert!(sse.contains("event: stderr"), "{sse}");
    assert!(
        sse.contains("event: end\ndata: {\"kind\":\"timed_out\",\"after_s\":1.0}"),
        "{sse}"
    );

    // Files: put, list, get, a link out refused as absent, mkdir, delete.
    let put = api
        .http
        .put(format!("{}/sandboxes/{id}/files/src/app.py", api.url))
        .bearer_auth(TOKEN)
        .body("print('ok')\n")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let listed = api.get(&format!("/sandboxes/{id}/files?path=src")).await;
    assert_eq!(listed["entries"][0]["name"], "app.py");
    assert_eq!(
        api.text(&format!("/sandboxes/{id}/files/src/app.py")).await,
        "print('ok')\n"
    );
    let (status, _) = api
        .send(
            Method::GET,
            &format!("/sandboxes/{id}/files/etc/passwd"),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // The same operations as agent tools.
    let tool = |name: &'static str, args: serde_json::Value| {
        let api = &api;
        async move { api.post(&format!("/tools/{name}"), args).await }
    };
    let r = tool(
        "sandbox_exec",
        json!({"sandbox_id": id, "cmd": ["python3", "src/app.py"]}),
    )
    .await;
    assert_eq!(r["stdout"], "ok\n", "{r}");
    let snap_a = tool("snapshot_sandbox", json!({"sandbox_id": id})).await;
    tool(
        "write_sandbox_file",
        json!({"sandbox_id": id, "path": "src/app.py", "content": "print('changed')\n"}),
    )
    .await;
    let forked = tool("fork_sandbox", json!({"sandbox_id": id, "count": 2})).await;
    assert_eq!(forked["sandboxes"].as_array().unwrap().len(), 2);
    let diff = tool(
        "diff_snapshots",
        json!({"from": snap_a["snapshot_id"], "to": forked["snapshot_id"]}),
    )
    .await;
    assert_eq!(diff["changed"][0]["path"], "src/app.py", "{diff}");
    let read = tool(
        "read_sandbox_file",
        json!({"sandbox_id": forked["sandboxes"][0]["sandbox_id"], "path": "src/app.py"}),
    )
    .await;
    assert_eq!(read["content"], "print('changed')\n");
    // Forks keep their parent's tags.
    let listed = tool("list_sandboxes", json!({"tag": "team=a"})).await;
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 3);
    let listed = tool("list_sandboxes", json!({"name": "web"})).await;
    assert_eq!(listed["sandboxes"][0]["sandbox_id"], id.as_str());
    let kept = tool(
        "keepalive_sandbox",
        json!({"sandbox_id": id, "extend_s": 60}),
    )
    .await;
    assert!(kept["expires_at"].as_str().unwrap() > sb["expires_at"].as_str().unwrap());

    // Ended: DELETE is idempotent, and exec is a 409 carrying the reason.
    for _ in 0..2 {
        let (status, v) = api
            .send(Method::DELETE, &format!("/sandboxes/{id}"), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(v["ended"]["reason"], "terminated");
    }
    let (status, p) = api
        .send(
            Method::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["true"]})),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(p["ended"]["reason"], "terminated", "{p}");
    let openapi = api.get("/openapi.json").await;
    assert!(openapi["paths"]["/sandboxes/{sandbox_id}/exec"]["post"].is_object());
    support::stop(&mut server);
}

/// `modal-agents sandbox ...` through pipes against the server binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_sandboxes_and_exec_exits_with_the_code() {
    let (dir, _data, mut server, api) = support::fresh(BIN, TOKEN, &[]);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["--url", &api.url, "--token", TOKEN, "sandbox"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, id, _) = cli(&["create", "--name", "cli-box"]);
    assert_eq!(code, 0);
    let id = id.trim().to_owned();
    let (code, out, _) = cli(&["exec", &id, "--", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!((code, out.as_str()), (3, "hi\n"));
    // `--stdin` sends what is piped in; without it the process reads nothing.
    let mut piped = std::process::Command::new(BIN)
        .args([
            "--url", &api.url, "--token", TOKEN, "sandbox", "exec", &id, "--stdin", "--", "wc",
            "-l",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        piped
            .stdin
            .take()
            .unwrap()
            .write_all(b"one\ntwo\n")
            .unwrap();
    }
    let out = piped.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    let (code, out, _) = cli(&["exec", &id, "--", "wc", "-l"]);
    assert_eq!((code, out.trim()), (0, "0"));
    let (code, _, err) = cli(&["exec", &id, "--timeout", "1", "--", "sleep", "5"]);
    assert_eq!(code, 124);
    assert!(err.contains("timed_out"), "{err}");
    let local = dir.path().join("in.txt");
    std::fs::write(&local, "from the host\n").unwrap();
    let (code, _, err) = cli(&["cp", local.to_str().unwrap(), &format!("{id}:notes/in.txt")]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli(&["cp", &format!("{id}:notes/in.txt"), "-"]);
    assert_eq!(out, "from the host\n");
    let (_, a, _) = cli(&["snapshot", &id]);
    cli(&["exec", &id, "--", "sh", "-c", "echo more >> notes/in.txt"]);
    let (_, forks, _) = cli(&["fork", &id, "--count", "2"]);
    assert_eq!(forks.lines().count(), 2);
    let (_, b, _) = cli(&["snapshot", &id]);
    let (code, diff, _) = cli(&["diff", a.trim(), b.trim()]);
    assert_eq!(code, 0);
    assert!(
        diff.contains("M notes/in.txt") && diff.contains("+more"),
        "{diff}"
    );
    let (_, listed, _) = cli(&["ls"]);
    assert!(listed.contains("cli-box"), "{listed}");
    let (code, out, _) = cli(&["rm", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("terminated"), "{out}");
    // Without the right token: the error says what sets it.
    let out = std::process::Command::new(BIN)
        .args([
            "--url",
            &api.url,
            "--token",
            "wrong-token-0123456789",
            "sandbox",
            "ls",
        ])
        .env_remove("MODAL_AGENTS_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("401") && err.contains("MODAL_AGENTS_TOKEN"),
        "{err}"
    );
    support::stop(&mut server);
}

/// A repo-creator's repository, tested in a sandbox: the typed outcome is
/// recorded in the repositories' volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_is_tested_in_a_sandbox_and_its_outcome_recorded() {
    use modal_agents::agents::{RepoConfig, RepoCreatorConfig};
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let agents = rt.agents();
    let creator = agents
        .spawn_repo_creator("creator", RepoCreatorConfig::default())
        .await
        .unwrap();
    let test = "import unittest\nfrom calc import add\n\nclass T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 2), 4)\n";
    let mut results = Vec::new();
    for (name, body) in [("good", "a + b"), ("bad", "a - b")] {
        let config = RepoConfig {
            name: name.into(),
            files: [
                (
                    "calc.py".to_owned(),
                    format!("def add(a, b):\n    return {body}\n"),
                ),
                ("test_calc.py".to_owned(), test.to_owned()),
            ]
            .into(),
            branch: None,
            message: None,
            description: None,
        };
        let repo = creator.create(config).await.unwrap().unwrap();
        let cmd = ["python3", "-m", "unittest", "-q"]
            .map(String::from)
            .to_vec();
        let run = agents
            .run_repo_tests(&repo, cmd, 60, &RepoCreatorConfig::default())
            .await
            .unwrap();
        results.push(run);
    }
    assert!(results[0].passed, "{:?}", results[0]);
    assert_eq!(results[1].outcome, Outcome::Exited { code: 1 });
    assert!(
        results[1].stderr.contains("AssertionError: 0 != 4"),
        "{}",
        results[1].stderr
    );
    let recorded = rt
        .volumes()
        .read("repos", "repo-tests/bad")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.value["outcome"]["kind"], "exited");
    assert_eq!(recorded.value["passed"], false);
    rt.shutdown().await;
}

/// `image.python_packages`: an environment built once, on the sandbox's
/// `PATH`; a package that does not exist is a 422 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_packages_are_importable_in_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let sbx = rt.sandboxes();
    let mut request = CreateSandbox::default();
    request.image.python_packages = vec!["six==1.16.0".into()];
    let id = sbx.create(request).await.unwrap().sandbox_id;
    let r = sbx
        .exec(
            &id,
            cmd(&["python3", "-c", "import six; print(six.__version__)"]),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout.as_deref(), Some("1.16.0\n"), "{:?}", r.stderr);
    let mut bad = CreateSandbox::default();
    bad.image.python_packages = vec!["modal-agents-no-such-package-xyz==0.0.1".into()];
    let e = sbx.create(bad).await.unwrap_err();
    assert!(
        matches!(&e, SandboxError::Invalid { field, .. } if field == "image.python_packages"),
        "{e}"
    );
    // Not a requirement from the index (a control character, a host path,
    // a URL this machine would fetch): refused
    // before any environment is built, naming the entry and the value.
    for junk in ["six\t\u{1}", "/etc/passwd", "http://127.0.0.1:9/x.tar.gz"] {
        let mut bad = CreateSandbox::default();
        bad.image.python_packages = vec!["six".into(), junk.into()];
        let e = sbx.create(bad).await.unwrap_err();
        assert!(
            matches!(&e, SandboxError::Invalid { field, .. } if field == "image.python_packages[1]"),
            "{e}"
        );
        assert!(e.to_string().contains("package index"), "{e}");
    }
    rt.shutdown().await;
}

/// `run_code`: a snippet run once with nothing deployed, in a sandbox made
/// for it that ends with it; its typed outcome, stdout, stderr and stdin;
/// one still running is waited for with `wait_sandbox_process` and its
/// sandbox ends once it does; a timeout is `timed_out`; bad arguments name
/// the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_code_runs_a_snippet_in_a_sandbox_that_ends_with_it() {
    use modal_agents::commands::CommandError;
    use modal_agents::tools::Tools;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), SandboxConfig::default()).await;
    let tools = Tools::new(rt.clone());
    let r = tools
        .call(
            "run_code",
            json!({"code": "import sys\nprint('hi')\nprint('oops', file=sys.stderr)\nsys.exit(3)\n"}),
        )
        .await
        .unwrap();
    assert_eq!(r["outcome"], json!({"kind": "exited", "code": 3}), "{r}");
    assert_eq!(
        (r["stdout"].as_str(), r["stderr"].as_str()),
        (Some("hi\n"), Some("oops\n"))
    );
    let first = r["sandbox_id"].as_str().unwrap().to_owned();
    // Ended already: its sandbox is gone with it.
    let view = rt.sandboxes().view(&first).unwrap();
    assert_eq!(view.state, SandboxState::Ended, "{view:?}");
    assert_eq!(view.ended.unwrap().reason, EndReason::Terminated);

    let r = tools
        .call(
            "run_code",
            json!({"code": "read x\necho \"got $x in $PWD as $GREETING\"\n", "language": "sh",
                   "stdin": "abc\n", "env": {"GREETING": "hello"}}),
        )
        .await
        .unwrap();
    assert_eq!(r["stdout"], "got abc in /workspace as hello\n", "{r}");

    // Not finished within wait_s: the ids to wait with, and the sandbox
    // ends once the snippet does.
    let r = tools
        .call(
            "run_code",
            json!({"code": "import time\ntime.sleep(1)\nprint('late')\n", "wait_s": 0}),
        )
        .await
        .unwrap();
    assert!(r.get("outcome").is_none(), "{r}");
    let (sb, pid) = (r["sandbox_id"].clone(), r["process_id"].clone());
    let waited = tools
        .call(
            "wait_sandbox_process",
            json!({"sandbox_id": sb, "process_id": pid, "wait_s": 30}),
        )
        .await
        .unwrap();
    assert_eq!(
        waited["outcome"],
        json!({"kind": "exited", "code": 0}),
        "{waited}"
    );
    assert_eq!(waited["stdout"], "late\n");
    let sb = sb.as_str().unwrap().to_owned();
    support::eventually(Duration::from_secs(20), "the sandbox ends", || {
        let rt = rt.clone();
        let sb = sb.clone();
        async move { rt.sandboxes().view(&sb).unwrap().state == SandboxState::Ended }
    })
    .await;
    // Its outcome and output stay readable after the end.
    let again = tools
        .call(
            "wait_sandbox_process",
            json!({"sandbox_id": sb, "process_id": pid, "wait_s": 0}),
        )
        .await
        .unwrap();
    assert_eq!(again["stdout"], "late\n", "{again}");

    let r = tools
        .call(
            "run_code",
            json!({"code": "import time\ntime.sleep(60)\n", "timeout_s": 1}),
        )
        .await
        .unwrap();
    assert_eq!(r["outcome"]["kind"], "timed_out", "{r}");

    for (args, field) in [
        (json!({"code": "print(1)", "timeout_s": 3601}), "timeout_s"),
        (json!({"code": "  \n"}), "code"),
        (json!({"code": "print(1)", "wait_s": 56}), "wait_s"),
        (json!({"code": "print(1)", "language": "ruby"}), "language"),
        (json!({"code": "print(1)", "nope": 1}), "nope"),
    ] {
        let e = tools.call("run_code", args.clone()).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains(field), "{args}: {text}");
        assert!(
            matches!(
                e,
                CommandError::InvalidArguments { .. } | CommandError::Sandbox { .. }
            ),
            "{args}: {e:?}"
        );
    }
    // Nothing is left running: every sandbox it made has ended.
    support::eventually(
        Duration::from_secs(20),
        "every run_code sandbox ends",
        || {
            let rt = rt.clone();
            async move {
                rt.sandboxes()
                    .list(&ListSandboxes::default())
                    .iter()
                    .all(|v| v.state == SandboxState::Ended)
            }
        },
    )
    .await;
    rt.shutdown().await;
}
