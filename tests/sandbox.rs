//! Containers under bubblewrap (`.ci/run` installs it; these tests require
//! it): code that reaches for the host, the network, the runtime's
//! environment, more processes, memory, CPU or file size than allowed is
//! stopped, its task fails with a clear error, and the runtime carries on.

mod support;

use std::sync::Arc;
use std::time::Duration;

use modal_agents::compute::{LocalBackend, LocalConfig, SandboxMode};
use modal_agents::secrets::SecretStore;
use modal_agents::spec::Limits;
use modal_agents::{FunctionSpec, Runtime, RuntimeError, TaskError};
use serde_json::{json, Map, Value};

struct Sandboxed {
    rt: Runtime,
    backend: Arc<LocalBackend>,
    dir: tempfile::TempDir,
}

async fn start() -> Sandboxed {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(LocalBackend::new(LocalConfig {
        pool_size: 2,
        work_dir: dir.path().join("containers"),
        sandbox: SandboxMode::Required,
        gpus: Some(Vec::new()),
        ..LocalConfig::default()
    }));
    let secrets = SecretStore::new();
    secrets
        .set("api", [("API_KEY", "declared-secret-value")])
        .unwrap();
    secrets
        .set("other", [("OTHER_KEY", "undeclared-secret-value")])
        .unwrap();
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .backend(backend.clone())
        .secrets(secrets)
        .start()
        .await
        .expect("runtime starts with the sandbox required");
    assert_eq!(backend.sandboxed(), Some(true), "bwrap is used");
    Sandboxed { rt, backend, dir }
}

async fn call(rt: &Runtime, function: &str, args: Vec<Value>) -> Result<Value, TaskError> {
    match rt.call(function, args, Map::new()).await {
        Ok(v) => Ok(v),
        Err(RuntimeError::TaskFailed { error, .. }) => Err(error),
        Err(other) => panic!("{function}: {other}"),
    }
}

const PROBE: &str = r#"
import os, socket

def probe(kind, arg=None):
    if kind == "read":
        with open(arg) as f:
            return f.read()
    if kind == "write":
        with open(arg, "w") as f:
            f.write("written from the sandbox")
        return "ok"
    if kind == "connect":
        socket.create_connection(("127.0.0.1", arg), timeout=3).close()
        return "connected"
    if kind == "session":
        return os.getsid(0)
    if kind == "env":
        seen = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        seen.append(f.read().decode(errors="replace"))
                except OSError:
                    pass
        return {"env": dict(os.environ), "proc": seen}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxed_code_cannot_reach_the_host() {
    let t = start().await;
    let host_file = t.dir.path().join("host-only.txt");
    std::fs::write(&host_file, "the host's secret").unwrap();
    t.rt.deploy_function(
        FunctionSpec::new("probe", PROBE)
            .volume("/data", "shared")
            .secret("api"),
    )
    .await
    .unwrap();

    // A session of its own (bwrap --new-session): the session leader is
    // inside the sandbox, so there is no terminal of the operator's to reach.
    let session = call(&t.rt, "probe", vec![json!("session")]).await.unwrap();
    assert_ne!(
        session,
        json!(0),
        "the container's session leader is inside"
    );
    // Host files outside the mounts do not exist in the sandbox.
    for path in [host_file.display().to_string(), "/etc/shadow".into()] {
        let err = call(&t.rt, "probe", vec![json!("read"), json!(path)])
            .await
            .unwrap_err();
        assert_eq!(err.kind, "FileNotFoundError", "{path}: {err:?}");
    }
    // The system is read-only, host paths are absent; the volume is writable
    // at its mount path and the write lands in the runtime's volume.
    let err = call(
        &t.rt,
        "probe",
        vec![json!("write"), json!("/usr/lib/evil.txt")],
    )
    .await
    .unwrap_err();
    assert!(err.message.contains("Read-only file system"), "{err:?}");
    // The volume's host directory is not there under its host path...
    let sneaky = t.rt.volume_dir("shared").join("sneaky.txt");
    let err = call(
        &t.rt,
        "probe",
        vec![json!("write"), json!(sneaky.display().to_string())],
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, "FileNotFoundError", "{err:?}");
    // ...and a write under the host's /tmp stays in the sandbox's private one.
    let outside = t.dir.path().join("evil.txt");
    let _ = call(
        &t.rt,
        "probe",
        vec![json!("write"), json!(outside.display().to_string())],
    )
    .await;
    assert!(
        !outside.exists() && !sneaky.exists(),
        "nothing was written on the host"
    );
    let ok = call(
        &t.rt,
        "probe",
        vec![json!("write"), json!("/data/from-sandbox.txt")],
    )
    .await;
    assert_eq!(ok.unwrap(), json!("ok"));
    let landed = std::fs::read_to_string(t.rt.volume_dir("shared").join("from-sandbox.txt"));
    assert_eq!(landed.unwrap(), "written from the sandbox");

    // No network: a listener on the host's loopback is unreachable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let err = call(&t.rt, "probe", vec![json!("connect"), json!(port)])
        .await
        .unwrap_err();
    assert!(
        err.kind.as_str().contains("Error") && err.kind != "TimeoutError",
        "connection refused by the sandbox, not a hang: {err:?}"
    );

    // The environment holds the declared secret and nothing of the runtime's.
    let seen = call(&t.rt, "probe", vec![json!("env")]).await.unwrap();
    assert_eq!(seen["env"]["API_KEY"], "declared-secret-value");
    let everything = seen.to_string();
    assert!(!everything.contains("undeclared-secret-value"));
    let runtime_env = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it for tests");
    assert!(
        !everything.contains(&runtime_env),
        "the runtime's environment leaked: {everything}"
    );

    // A function that asks for the network gets it.
    let limits = Limits {
        network: Some(true),
        ..Limits::default()
    };
    t.rt.deploy_function(
        FunctionSpec::new("online", PROBE)
            .entrypoint("probe")
            .limits(limits),
    )
    .await
    .unwrap();
    let ok = call(&t.rt, "online", vec![json!("connect"), json!(port)]).await;
    assert_eq!(ok.unwrap(), json!("connected"));
    drop(listener);
    t.rt.shutdown().await;
}

const HOGS: &str = r#"
import os, time

def hog(kind, n=0):
    if kind == "fork":
        while True:
            os.fork()
    if kind == "memory":
        return len(bytearray(n * 1024 * 1024))
    if kind == "cpu":
        # Code that tries to lift its own CPU limit first cannot.
        import resource
        for limit in ((resource.RLIM_INFINITY,) * 2, (resource.getrlimit(resource.RLIMIT_CPU)[1],) * 2):
            try:
                resource.setrlimit(resource.RLIMIT_CPU, limit)
            except (ValueError, OSError):
                pass
        while True:
            pass
    if kind == "file":
        with open("/tmp/big", "wb") as f:
            f.write(b"x" * (n * 1024 * 1024))
        return n
    if kind == "files":
        return len([open("/dev/null") for _ in range(n)])
    return "fine"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_stop_runaway_code_and_the_runtime_carries_on() {
    let t = start().await;
    let limits = Limits {
        memory_mib: Some(256),
        cpu_s: Some(1),
        open_files: 64,
        file_size_mib: Some(1),
        processes: 32,
        network: None,
    };
    t.rt.deploy_function(FunctionSpec::new("hog", HOGS).limits(limits).timeout_s(60))
        .await
        .unwrap();
    t.rt.deploy_function(FunctionSpec::new(
        "steady",
        "def steady(x):\n    return x + 1\n",
    ))
    .await
    .unwrap();
    // Other work runs while the fork bomb goes off.
    let map =
        t.rt.run_parallel("steady", (0..2000).map(|i| json!(i)).collect())
            .await
            .unwrap();

    let err = call(&t.rt, "hog", vec![json!("fork")]).await.unwrap_err();
    assert_eq!(
        err.kind, "BlockingIOError",
        "fork bomb stopped at the process limit: {err:?}"
    );
    let err = call(&t.rt, "hog", vec![json!("memory"), json!(1024)])
        .await
        .unwrap_err();
    assert_eq!(err.kind, "MemoryError", "{err:?}");
    assert_eq!(
        call(&t.rt, "hog", vec![json!("memory"), json!(16)])
            .await
            .unwrap(),
        json!(16 << 20)
    );
    let err = call(&t.rt, "hog", vec![json!("file"), json!(4)])
        .await
        .unwrap_err();
    assert!(err.message.contains("File too large"), "{err:?}");
    let err = call(&t.rt, "hog", vec![json!("files"), json!(500)])
        .await
        .unwrap_err();
    assert!(err.message.contains("Too many open files"), "{err:?}");
    let started = std::time::Instant::now();
    let err = call(&t.rt, "hog", vec![json!("cpu")]).await.unwrap_err();
    assert_eq!(err.kind, "ContainerCrashed", "{err:?}");
    assert!(err.message.contains("limits.cpu_s"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped by the CPU limit, not the timeout"
    );

    // The same function still serves, the other task finished intact.
    assert_eq!(
        call(&t.rt, "hog", vec![json!("ok")]).await.unwrap(),
        json!("fine")
    );
    let record = t.rt.wait(map, Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(record.progress.unwrap().completed, 2000);
    let page = t.rt.results(map, 1990, 10).await.unwrap();
    assert_eq!(page.results.last(), Some(&json!(2000)));

    // The container that hit its process limit was retired: its runaway
    // processes are gone (a sandboxed container is 3 tagged processes:
    // bwrap, its init and python).
    let tag = t.backend.instance_tag().to_owned();
    support::eventually(Duration::from_secs(20), "fork bomb reaped", || async {
        let (tagged, containers) = (
            support::processes_with(&tag).len(),
            t.backend.container_pids().len(),
        );
        tagged <= 3 * containers
    })
    .await;
    t.rt.shutdown().await;
    assert!(
        support::processes_with(&tag).is_empty(),
        "no process outlives shutdown"
    );
}

#[tokio::test]
async fn a_required_sandbox_that_cannot_run_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = |sandbox| LocalConfig {
        work_dir: dir.path().join("containers"),
        sandbox,
        bwrap: Some(dir.path().join("no-such-bwrap")),
        ..LocalConfig::default()
    };
    let err = Runtime::builder()
        .data_dir(dir.path())
        .local_config(config(SandboxMode::Required))
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sandbox is required")
            && err.contains("no-such-bwrap")
            && err.contains("apt-get install bubblewrap"),
        "{err}"
    );
    // `auto` falls back to plain processes and still runs functions.
    let backend = Arc::new(LocalBackend::new(config(SandboxMode::Auto)));
    let rt = Runtime::builder()
        .data_dir(dir.path())
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    rt.deploy_function(FunctionSpec::new("one", "def one():\n    return 1\n"))
        .await
        .unwrap();
    assert_eq!(rt.call("one", vec![], Map::new()).await.unwrap(), json!(1));
    assert_eq!(backend.sandboxed(), Some(false));
    rt.shutdown().await;
}
