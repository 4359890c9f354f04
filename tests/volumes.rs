//! The volume store: versioned state with compare-and-swap, atomic files,
//! watches, restarts of the actor and of the whole runtime, and the shared
//! view with functions that mount a volume.

mod support;

use std::time::Duration;

use modal_agents::runtime::RuntimeChild;
use modal_agents::volume::{VolumeChange, VolumeError, MAX_VALUE_BYTES};
use modal_agents::{FunctionSpec, Runtime};
use serde_json::{json, Map};

async fn increments(rt: &Runtime, agents: u64, each: u64) {
    let mut tasks = Vec::new();
    for agent in 0..agents {
        let volumes = rt.volumes().clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..each {
                loop {
                    let current = volumes.read("counters", "hits").await.unwrap();
                    let (n, expected) = match &current {
                        Some(v) => (v.value.as_u64().unwrap(), Some(v.version)),
                        None => (0, None),
                    };
                    match volumes
                        .compare_and_swap("counters", "hits", expected, json!(n + 1))
                        .await
                    {
                        Ok(_) => break,
                        Err(VolumeError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("agent {agent}: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_agents_cas_increment_to_exactly_8000() {
    let t = support::start(1).await;
    increments(&t.rt, 8, 1000).await;
    let hits =
        t.rt.volumes()
            .read("counters", "hits")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(hits.value, json!(8000));
    assert_eq!(hits.version, 8000, "one version per successful swap");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_survive_a_volume_store_crash() {
    let t = support::start(1).await;
    let rt = t.rt.clone();
    let chaos = tokio::spawn(async move {
        let volumes = rt.volumes().clone();
        let mut watch = volumes.watch("counters", "hits").unwrap();
        // Crash the store once some increments have landed.
        while let Some(event) = watch.recv().await {
            if matches!(event.change, VolumeChange::Put { version, .. } if version >= 300) {
                rt.inject_fault(RuntimeChild::Volumes);
                return;
            }
        }
    });
    increments(&t.rt, 4, 250).await;
    chaos.await.unwrap();
    assert!(
        t.rt.restarts().await.unwrap() >= 1,
        "the store was restarted"
    );
    let hits =
        t.rt.volumes()
            .read("counters", "hits")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(hits.value, json!(1000));
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_files_survive_a_runtime_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    let v = rt.volumes();
    v.write("shared", "config/model", json!({"name": "m1"}))
        .await
        .unwrap();
    v.write("shared", "config/model", json!({"name": "m2"}))
        .await
        .unwrap();
    v.write("shared", "other", json!(1)).await.unwrap();
    assert_eq!(v.delete("shared", "other").await.unwrap(), 2);
    v.put_file("shared", "reports/a.txt", "alpha")
        .await
        .unwrap();
    rt.shutdown().await;
    drop(rt);

    let rt = Runtime::builder()
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    let v = rt.volumes();
    let model = v.read("shared", "config/model").await.unwrap().unwrap();
    assert_eq!((model.value, model.version), (json!({"name": "m2"}), 2));
    assert_eq!(v.read("shared", "other").await.unwrap(), None);
    assert_eq!(
        v.write("shared", "other", json!(2)).await.unwrap(),
        3,
        "versions continue"
    );
    assert_eq!(
        v.get_file("shared", "reports/a.txt").await.unwrap(),
        b"alpha"
    );
    assert_eq!(v.list_volumes(), ["shared"]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_operations_and_their_errors() {
    let t = support::start(1).await;
    let v = t.rt.volumes();
    assert_eq!(
        v.compare_and_swap("s", "k", None, json!("a"))
            .await
            .unwrap(),
        1
    );
    let err = v
        .compare_and_swap("s", "k", None, json!("b"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("expected absent, found version 1"),
        "{err}"
    );
    let err = v
        .compare_and_swap("s", "k", Some(7), json!("b"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VolumeError::Conflict {
                current: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        v.compare_and_swap("s", "k", Some(1), json!("b"))
            .await
            .unwrap(),
        2
    );
    for key in ["jobs/1", "jobs/2", "jobs/10", "other"] {
        v.write("s", key, json!(key)).await.unwrap();
    }
    let jobs: Vec<String> = v
        .list("s", "jobs/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(jobs, ["jobs/1", "jobs/10", "jobs/2"]);
    let updated = v
        .update("s", "n", |cur| {
            json!(cur.and_then(|c| c.as_u64()).unwrap_or(0) + 5)
        })
        .await
        .unwrap();
    assert_eq!(updated.value, json!(5));

    let big = json!("x".repeat(MAX_VALUE_BYTES));
    let err = v.write("s", "big", big).await.unwrap_err().to_string();
    assert!(err.contains("at most 1048576 bytes"), "{err}");
    let err = v
        .write("bad name", "k", json!(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("volume_name") && err.contains("bad name"),
        "{err}"
    );
    let err = v.write("s", "", json!(1)).await.unwrap_err().to_string();
    assert!(err.contains("invalid key"), "{err}");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_atomic_and_paths_checked() {
    let t = support::start(1).await;
    let v = t.rt.volumes();
    let stat = v
        .put_file("f", "dir/data.json", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!((stat.path.as_str(), stat.size), ("dir/data.json", 2));
    v.put_file("f", "dir/data.json", b"{\"a\":1}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        v.get_file("f", "dir/data.json").await.unwrap(),
        b"{\"a\":1}"
    );
    v.put_file("f", "top.txt", "t").await.unwrap();
    let listed: Vec<String> = v
        .list_files("f", "")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(listed, ["dir/data.json", "top.txt"]);
    assert_eq!(v.stat_file("f", "top.txt").await.unwrap().unwrap().size, 1);
    assert!(v.delete_file("f", "top.txt").await.unwrap());
    assert!(!v.delete_file("f", "top.txt").await.unwrap());
    assert!(matches!(
        v.get_file("f", "top.txt").await.unwrap_err(),
        VolumeError::NoSuchFile { .. }
    ));
    for bad in ["../escape", "/etc/passwd", "a/../../b", "a//b"] {
        let err = v.put_file("f", bad, "x").await.unwrap_err();
        assert!(matches!(err, VolumeError::BadPath { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains(bad));
    }
    assert!(!t.dir.path().join("escape").exists());
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_get_every_change_in_order() {
    let t = support::start(1).await;
    let v = t.rt.volumes();
    let mut jobs = v.watch("w", "jobs/").unwrap();
    let mut everything = v.watch("w", "").unwrap();
    for i in 0..100 {
        v.write("w", "jobs/a", json!(i)).await.unwrap();
    }
    v.write("w", "unrelated", json!(0)).await.unwrap();
    v.delete("w", "jobs/a").await.unwrap();
    v.put_file("w", "jobs/out.txt", "x").await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..102 {
        let event = tokio::time::timeout(Duration::from_secs(5), jobs.recv())
            .await
            .unwrap()
            .unwrap();
        seen.push(event);
    }
    for (i, event) in seen.iter().take(100).enumerate() {
        assert_eq!(
            event.change,
            VolumeChange::Put {
                key: "jobs/a".into(),
                version: i as u64 + 1,
                value: json!(i)
            }
        );
    }
    assert_eq!(
        seen[100].change,
        VolumeChange::Delete {
            key: "jobs/a".into(),
            version: 101
        }
    );
    assert_eq!(
        seen[101].change,
        VolumeChange::FilePut {
            path: "jobs/out.txt".into(),
            size: 1
        }
    );
    assert!(
        seen.windows(2).all(|w| w[0].seq < w[1].seq),
        "in commit order"
    );
    assert!(
        jobs.try_recv().is_err(),
        "the unrelated key was filtered out"
    );
    let mut all = 0;
    while everything.try_recv().is_ok() {
        all += 1;
    }
    assert_eq!(all, 103);
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_see_the_same_volume_files() {
    let t = support::start(1).await;
    let code = r#"
import json, os
def upper(name):
    root = json.loads(os.environ["MODAL_AGENTS_VOLUMES"])["/data"]
    text = open(os.path.join(root, name)).read()
    with open(os.path.join(root, name + ".upper"), "w") as f:
        f.write(text.upper())
    return len(text)
"#;
    t.rt.deploy_function(FunctionSpec::new("upper", code).volume("/data", "docs"))
        .await
        .unwrap();
    t.rt.volumes()
        .put_file("docs", "note.txt", "hello volumes")
        .await
        .unwrap();
    let n =
        t.rt.call("upper", vec![json!("note.txt")], Map::new())
            .await
            .unwrap();
    assert_eq!(n, json!(13));
    let out =
        t.rt.volumes()
            .get_file("docs", "note.txt.upper")
            .await
            .unwrap();
    assert_eq!(out, b"HELLO VOLUMES");
    t.rt.shutdown().await;
}

/// A volume of 400 directories is listed (over HTTP, by a server allowed
/// 200 open files) with one directory open at a time: each used to hold a
/// descriptor while it waited, and the listing failed with 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_volume_lists_within_few_descriptors() {
    const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");
    const TOKEN: &str = "volumes-test-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = support::serve(BIN, &dir.path().join("data"), TOKEN);
    let limit = libc::rlimit {
        rlim_cur: 200,
        rlim_max: 200,
    };
    // SAFETY: sets a limit of our own child process.
    let rc = unsafe {
        libc::prlimit(
            server.id() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let http = reqwest::Client::new();
    for i in 0..400 {
        let r = http
            .put(format!("{url}/volumes/wide/files/d{i:03}/f"))
            .bearer_auth(TOKEN)
            .body("x")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let mut seen = 0;
    let mut next = format!("{url}/volumes/wide/files?limit=150");
    loop {
        let r = http.get(&next).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let link = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        seen += r.json::<Vec<serde_json::Value>>().await.unwrap().len();
        match link {
            Some(l) => {
                let path = l.trim_start_matches('<').split('>').next().unwrap();
                next = format!("{url}{path}");
            }
            None => break,
        }
    }
    assert_eq!(seen, 400);
    // Under a prefix, only its directory is read.
    let r = http
        .get(format!("{url}/volumes/wide/files?prefix=d12"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Vec<serde_json::Value>>().await.unwrap().len(), 10);
    support::stop(&mut server);
}
