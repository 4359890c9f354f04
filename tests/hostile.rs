//! The trust boundary, attacked the way agent-written code or an agent caller
//! would, against the real server binary. The attacks live in
//! `hostile/*.rs`. Most run one after the other against one server, in
//! [`every_attack_in_a_row_leaves_the_server_whole`] (afterwards it still
//! answers, a bystander's results are untouched, and a restart on the same
//! data dir comes up clean) and [`every_bound_holds_in_a_row`] (memory and
//! log back within bounds); each is bounded in time and a failure names the
//! attack. Attacks that need a server configured for them alone (a session
//! ceiling, a key, no sandbox) are tests of their own.

mod support;

/// A test that runs one attack alone against a fresh server (started with
/// the extra environment given, if any).
macro_rules! alone {
    ($(#[$doc:meta])* $test:ident => $attack:ident $(, $env:expr)?) => {
        $(#[$doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let server = $crate::Server::start(alone!(@env $($env)?));
            $attack(&server.target()).await;
            server.stop();
        }
    };
    (@env) => { &[] };
    (@env $env:expr) => { $env };
}

#[path = "hostile/bounds.rs"]
mod bounds;
#[path = "hostile/code.rs"]
mod code;
#[path = "hostile/http.rs"]
mod http;
#[path = "hostile/sandbox.rs"]
mod sandbox;
#[path = "hostile/secrets.rs"]
mod secrets;
#[path = "hostile/sessions.rs"]
mod sessions;

use serde_json::json;
use support::Api;

use bounds::*;
use code::*;
use http::*;
use sandbox::*;
use secrets::*;

const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");

/// A server started for one attack.
pub(crate) struct Server {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    child: std::process::Child,
    api: Api,
}

impl Server {
    /// A fresh server on its own data dir, with `env` added.
    pub(crate) fn start(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let (child, url) = support::serve_logging(BIN, &data, TOKEN, env, Some(&log));
        let api = Api::new(url, TOKEN);
        Server {
            dir,
            data,
            child,
            api,
        }
    }

    pub(crate) fn target(&self) -> Target<'_> {
        Target {
            api: &self.api,
            data: &self.data,
            dir: self.dir.path(),
            pid: self.child.id(),
            log: Some(self.dir.path().join("server.log")),
        }
    }

    pub(crate) fn stop(mut self) {
        support::stop(&mut self.child);
    }
}

/// A server under attack: its API, data dir, a scratch dir beside it, its
/// process id and its log file (when it writes one).
pub(crate) struct Target<'a> {
    api: &'a Api,
    data: &'a std::path::Path,
    dir: &'a std::path::Path,
    pid: u32,
    log: Option<std::path::PathBuf>,
}

const TOKEN: &str = "hostile-token-0123456789";

/// Every attack above, one after the other against one server binary:
/// afterwards the server answers a normal call, a bystander's results are
/// untouched, and a restart on the same data dir comes up clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_in_a_row_leaves_the_server_whole() {
    let scratch = tempfile::tempdir().unwrap();
    let links = leaky_sdist(scratch.path());
    let mut env = leaky_env(&links);
    env.push(("MODAL_AGENTS_HEADER_READ_TIMEOUT", "2".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_dir, data, mut server, api) = support::fresh(BIN, TOKEN, &env);

    // A bystander, with results stored before the attacks.
    api.post(
        "/deploy-function",
        json!({"function_code": "def bystander(x):\n    return x * 3\n", "function_name": "bystander"}),
    )
    .await;
    let map = api
        .post(
            "/run-parallel",
            json!({"function_name": "bystander", "inputs": (0..500).collect::<Vec<_>>(), "wait": true}),
        )
        .await;
    assert_eq!(map["status"], "completed", "{}", map["status"]);
    let map_id = map["task_id"].as_str().unwrap().to_owned();
    let before = api.all_results(&map_id).await;

    let t = Target {
        api: &api,
        data: &data,
        dir: scratch.path(),
        pid: server.id(),
        log: None,
    };
    attack_links_a_function_plants_in_its_volume_are_never_followed(&t).await;
    attack_forged_frames_on_the_harness_pipe_never_crash_or_confuse_the_runtime(&t).await;
    attack_leaky_build(&t).await;
    attack_a_memory_limit_is_a_real_ceiling(&t).await;
    attack_endless_output_is_capped_and_the_call_still_answers(&t).await;
    attack_map_timeouts_are_per_input_and_nothing_runs_twice(&t).await;
    attack_an_idempotency_key_outlives_a_dropped_client(&t).await;
    attack_reads_of_unknown_volumes_answer_404_and_create_nothing(&t).await;
    attack_metrics_labels_stay_bounded_whatever_callers_send(&t).await;
    attack_slow_and_idle_connections_are_cut_off(&t).await;

    // Still whole: a normal call, the bystander's results as they were.
    // A fresh client: this server cuts connections idle for 2 s, and a
    // pooled one cut just as it is reused fails the request, not the server.
    let api = Api::new(api.url.clone(), TOKEN);
    let whole = |api: Api| async move {
        assert_eq!(api.get("/healthz").await["status"], "ok");
        let call = api
            .post(
                "/spawn-task",
                json!({"function_name": "bystander", "args": [7], "wait": true}),
            )
            .await;
        assert_eq!(call["result"], 21, "{call}");
        api
    };
    let api = whole(api).await;
    assert_eq!(api.all_results(&map_id).await, before);

    // A restart on the same data dir comes up clean, everything in place.
    support::kill(server.id(), libc::SIGTERM);
    assert!(server.wait().unwrap().success());
    let (next, url) = support::serve(BIN, &data, TOKEN);
    server = next;
    let api = whole(api.at(url)).await;
    assert_eq!(api.all_results(&map_id).await, before);
    let record = api.get(&format!("/status/{map_id}")).await;
    assert_eq!(record["status"], "completed", "{record}");
    support::stop(&mut server);
}

/// One ordinary request of each kind the attacks make, so the memory the
/// soak starts from is a warm server's: its code paths run once (their
/// pages read in), its pools and tables made. Nothing here is an attack.
async fn warm_up(api: &Api) {
    api.post(
        "/deploy-function",
        json!({"function_code": "import sys\ndef warm(n):\n    print('warm', file=sys.stderr)\n    if n < 0:\n        raise ValueError('cold')\n    return 'w' * n\n", "function_name": "warm"}),
    )
    .await;
    for n in [1, 100_000, -1] {
        let (_, task) = api
            .send(
                reqwest::Method::POST,
                "/spawn-task",
                Some(json!({"function_name": "warm", "args": [n], "wait": true})),
            )
            .await;
        let id = task["task_id"].as_str().unwrap().to_owned();
        api.text(&format!("/status/{id}")).await;
        api.text(&format!("/tasks/{id}/logs?follow=true")).await;
    }
    api.text("/tasks?limit=100").await;
    let session = mcp_session(api).await;
    mcp_tool(api, &session, "list_functions", json!({})).await;
    let _ = api
        .http
        .delete(format!("{}/mcp", api.url))
        .bearer_auth(&api.token)
        .header("mcp-session-id", &session)
        .send()
        .await;
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/functions/warm", None)
        .await;
    assert_eq!(status, 200);
}

/// Runs one attack of a soak, failing the test if it takes longer than
/// `within`.
async fn bounded(
    name: &str,
    within: std::time::Duration,
    attack: impl std::future::Future<Output = ()>,
) {
    if tokio::time::timeout(within, attack).await.is_err() {
        panic!("the attack on {name} ran past {within:?}");
    }
}

/// Most bytes the server may log while every bound below is attacked: its
/// log grows with what it does, never with what callers send.
const MAX_SOAK_LOG: u64 = 1 << 20;

/// Every ceiling attacked in a row against one server (at its default log
/// level): afterwards its memory is back within 20% of where it started,
/// its log is under [`MAX_SOAK_LOG`], and a bystander's results are
/// byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bound_holds_in_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("server.log"));
    let env: Vec<(&str, &str)> = BOUNDS_ENV.iter().chain(FOLLOWERS_ENV).copied().collect();
    let (mut server, url) = support::serve_logging(BIN, &data, TOKEN, &env, Some(&log));
    let api = Api::new(url, TOKEN);
    api.post(
        "/deploy-function",
        json!({"function_code": "def bystander(x):\n    return x * 3\n", "function_name": "bystander"}),
    )
    .await;
    let map = api
        .post(
            "/run-parallel",
            json!({"function_name": "bystander", "inputs": (0..500).collect::<Vec<_>>(), "wait": true}),
        )
        .await;
    let map_id = map["task_id"].as_str().unwrap().to_owned();
    let raw = |api: &Api| {
        let url = format!("{}/status/{map_id}/results?offset=0&limit=10000", api.url);
        let http = api.http.clone();
        async move {
            let r = http.get(url).bearer_auth(TOKEN).send().await.unwrap();
            r.bytes().await.unwrap()
        }
    };
    let before = raw(&api).await;
    warm_up(&api).await;
    let rss_start = rss(server.id());
    let anon_start = rss_anon(server.id());

    let t = Target {
        api: &api,
        data: &data,
        dir: dir.path(),
        pid: server.id(),
        log: Some(log.clone()),
    };
    // Each attack is bounded in time: one that hangs fails, naming itself.
    let minutes = |n: u64| std::time::Duration::from_secs(60 * n);
    bounded(
        "MCP sessions",
        minutes(3),
        attack_mcp_sessions_are_bounded(&t),
    )
    .await;
    bounded(
        "origins and hosts",
        minutes(1),
        attack_foreign_origins_and_rebound_hosts_are_refused(&t),
    )
    .await;
    bounded(
        "secrets in outputs",
        minutes(3),
        attack_secrets_never_leave_through_outputs(&t),
    )
    .await;
    bounded(
        "secrets at rest",
        minutes(3),
        attack_secrets_are_sealed_at_rest_and_keys_rotate(&t),
    )
    .await;
    bounded(
        "large results",
        minutes(5),
        attack_large_results_stay_out_of_memory_and_listings(&t),
    )
    .await;
    bounded(
        "log followers",
        minutes(3),
        attack_log_followers_are_cheap_and_capped(&t),
    )
    .await;

    assert_eq!(raw(&api).await, before, "the bystander's results changed");
    // What the attackers deployed is theirs to keep: its warm containers
    // are state they asked for. Undeployed, those go; the tasks they ran
    // stay. Threads of the blocking pool idle out after 2 s and the server
    // gives free heap back every 2 s: memory comes back within a bounded
    // wait, or the test fails.
    let functions = api.get("/functions").await;
    for f in functions.as_array().unwrap() {
        let name = f["function_name"].as_str().unwrap();
        if name != "bystander" {
            let (status, _) = api
                .send(reqwest::Method::DELETE, &format!("/functions/{name}"), None)
                .await;
            assert_eq!(status, 200, "undeploy {name}");
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut rss_end = rss(server.id());
    while rss_end > rss_start + rss_start / 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        rss_end = rss(server.id());
    }
    let logged = std::fs::metadata(&log).unwrap().len();
    eprintln!(
        "RSS {} KiB at the start, {} KiB at the end (anonymous: {} KiB, {} KiB); {logged} bytes logged",
        rss_start >> 10,
        rss_end >> 10,
        anon_start >> 10,
        rss_anon(server.id()) >> 10,
    );
    assert!(
        rss_end <= rss_start + rss_start / 5,
        "RSS {} MiB at the start, {} MiB after the attacks",
        rss_start >> 20,
        rss_end >> 20
    );
    assert!(logged < MAX_SOAK_LOG, "the server logged {logged} bytes");
    support::stop(&mut server);
}
