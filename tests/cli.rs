//! The CLI end to end: `modal-agents serve` on 127.0.0.1:0 and the client
//! commands against it, failures with one-line reasons, and a graceful stop
//! on SIGTERM that leaves no container behind.

mod support;

#[path = "cli/run.rs"]
mod run;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");
const TOKEN: &str = "cli-test-token-0123456789";

struct Served {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

/// A test that fails midway still stops its server (and so its containers).
impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let (child, url) = support::serve(BIN, &dir.path().join("data"), TOKEN);
    Served {
        child,
        url,
        _dir: dir,
    }
}

/// The CLI with `args` against `s`, its three streams piped.
fn spawn_cli(s: &Served, args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(args)
        .env("MODAL_AGENTS_URL", &s.url)
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn cli(s: &Served, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = spawn_cli(s, args);
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if fields.get(1).and_then(|f| f.parse::<u32>().ok()) == Some(pid) && fields[0] != "Z" {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_end_to_end() {
    let mut s = serve();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("double.py");
    std::fs::write(
        &file,
        "def double(x):\n    print('doubling', x)\n    return x * 2\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let (ok, out, err) = cli(
        &s,
        &["deploy", file, "--timeout", "30", "--volume", "scratch"],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("\"registered\"") && out.contains("\"double\""),
        "{out}"
    );

    let (ok, out, err) = cli(
        &s,
        &["run", "double", "--inputs", "-"],
        Some("1\n2\n3\n\n4\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["2", "4", "6", "8"]);

    let (ok, id, err) = cli(&s, &["spawn", "double", "21"], None);
    assert!(ok, "{err}");
    let id = id.trim().to_owned();
    let (ok, out, _) = cli(&s, &["wait", &id, "--timeout", "30"], None);
    assert!(ok && out.contains("\"result\": 42"), "{out}");
    let (ok, out, _) = cli(&s, &["status", &id], None);
    assert!(ok && out.contains("\"completed\""), "{out}");
    // One rule for every command that waits: a task that did not complete
    // is a failure of the command, with `spawn --wait` as with `wait`.
    let (ok, out, err) = cli(&s, &["spawn", "double", "\"x\"", "--wait"], None);
    assert!(ok, "a completed task (\"xx\") exits 0: {out} {err}");
    let (ok, out, err) = cli(&s, &["spawn", "double", "null", "--wait"], None);
    assert!(!ok, "a failed task exits 1: {out}");
    assert!(
        out.contains("\"failed\"") && err.contains("TypeError"),
        "{out} {err}"
    );
    // Several tasks at once: --any returns with the first finished (a
    // failed one fails the command), all of them by default.
    let (_, failed, _) = cli(&s, &["spawn", "double", "null"], None);
    let failed = failed.trim().to_owned();
    let (ok, out, err) = cli(&s, &["wait", &id, &failed, "--timeout", "30"], None);
    assert!(!ok, "one of them failed: {out}");
    assert!(
        out.contains("\"finished\": 2") && err.contains("TypeError"),
        "{out} {err}"
    );
    let (ok, out, err) = cli(&s, &["wait", &id, &id, "--any"], None);
    assert!(ok && out.contains("\"done\": true"), "{out} {err}");
    let (ok, _, err) = cli(&s, &["wait", "not-an-id"], None);
    assert!(!ok && err.contains("not a task id"), "{err}");
    let (ok, out, _) = cli(&s, &["logs", &id], None);
    assert!(ok && out.contains("doubling 21"), "{out}");
    let (ok, out, err) = cli(&s, &["logs", "-f", &id], None);
    assert!(ok && out.contains("doubling 21"), "{out} {err}");
    let (ok, _, err) = cli(&s, &["logs", "--follow", &failed], None);
    assert!(
        !ok && err.contains("TypeError"),
        "a followed failed task exits 1: {err}"
    );
    let (ok, out, _) = cli(&s, &["cancel", &id], None);
    assert!(
        ok && out.contains("\"completed\""),
        "cancelling a finished task changes nothing: {out}"
    );

    let (ok, out, _) = cli(
        &s,
        &["volume", "put", "team", "plan", "{\"step\": 1}"],
        None,
    );
    assert!(ok && out.contains("\"version\": 1"), "{out}");
    let (ok, _, err) = cli(
        &s,
        &["volume", "put", "team", "plan", "2", "--if-match", "5"],
        None,
    );
    assert!(!ok && err.starts_with("modal-agents: 412"), "{err}");
    let (ok, out, _) = cli(&s, &["volume", "get", "team", "plan"], None);
    assert!(ok && out.contains("\"step\": 1"), "{out}");
    let (ok, out, _) = cli(&s, &["volume", "ls", "team"], None);
    assert!(ok && out.starts_with("plan\tv1\t"), "{out}");

    let (ok, _, err) = cli(
        &s,
        &["secret", "set", "db", "PASSWORD=hunter2-secret", "USER=bob"],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&s, &["secret", "ls"], None);
    assert!(ok && out.trim() == "db\tPASSWORD,USER", "{out}");
    assert!(!out.contains("hunter2"));

    // Failures: non-zero exit and one line saying why.
    let (ok, _, err) = cli(&s, &["status", "not-a-task"], None);
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("not a task id"),
        "{err}"
    );
    let (ok, _, err) = cli(&s, &["spawn", "ghost"], None);
    assert!(!ok && err.contains("404") && err.contains("ghost"), "{err}");
    // Limits: each key checked, the field named.
    let (ok, _, err) = cli(&s, &["deploy", file, "--limit", "processes=2"], None);
    assert!(
        !ok && err.contains("limits.processes") && err.contains("4 to 65536"),
        "{err}"
    );
    let (ok, _, err) = cli(&s, &["deploy", file, "--limit", "memory"], None);
    assert!(!ok && err.contains("KEY=VALUE"), "{err}");
    let (ok, _, err) = cli(&s, &["deploy", file, "--limit", "forks=3"], None);
    assert!(!ok && err.contains("forks"), "{err}");
    let (ok, out, err) = cli(
        &s,
        &[
            "deploy",
            file,
            "--limit",
            "memory_mib=512",
            "--limit",
            "network=true",
            "--backend",
            "local",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"registered\""), "{out}");
    let info: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/functions/double", s.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["spec"]["limits"]["memory_mib"], 512, "{info}");
    assert_eq!(info["spec"]["limits"]["network"], true, "{info}");
    assert_eq!(
        (info["spec"]["backend"].as_str(), info["backend"].as_str()),
        (Some("local"), Some("local")),
        "{info}"
    );
    let bad = Command::new(BIN)
        .args(["status", &id])
        .env("MODAL_AGENTS_URL", &s.url)
        .env("MODAL_AGENTS_TOKEN", "wrong-token-0000000000")
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("401"));

    // SIGTERM: a graceful stop, and no container left behind.
    let pid = s.child.id();
    let containers = children_of(pid);
    assert!(!containers.is_empty(), "the server runs containers");
    support::kill(pid, libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    for c in containers {
        let alive = std::fs::read_to_string(format!("/proc/{c}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        });
        assert!(!alive, "container {c} left behind");
    }
}

/// What is deployed and what ran: `functions`, `call`, `tasks`, `results`
/// (all, or only the failed inputs), `undeploy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_calls_and_pages_results() {
    let s = serve();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inv.py");
    std::fs::write(&file, "def inv(x):\n    return 1 / x\n").unwrap();
    let (ok, _, err) = cli(&s, &["deploy", file.to_str().unwrap()], None);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&s, &["functions"], None);
    assert!(ok && out.starts_with("inv\t"), "{out}");
    let (ok, out, err) = cli(&s, &["call", "inv", "4"], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "0.25");
    let (ok, _, err) = cli(&s, &["call", "inv", "0"], None);
    assert!(!ok && err.contains("ZeroDivisionError"), "{err}");
    // A map with one failing input (`run` reports it; the listing finds it).
    cli(&s, &["run", "inv", "--inputs", "-"], Some("1\n0\n2\n"));
    let (_, out, _) = cli(&s, &["tasks", "--limit", "10"], None);
    let map = out
        .lines()
        .find(|l| l.contains("\tinv\t") && l.ends_with("/3"))
        .unwrap_or_else(|| panic!("no map in {out}"));
    let id = map.split('\t').next().unwrap();
    let (ok, out, err) = cli(&s, &["status", id], None);
    assert!(ok, "{err}");
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        record["result"].is_null() && record["progress"]["total"] == 3,
        "{out}"
    );
    assert!(err.contains(&format!("modal-agents results {id}")), "{err}");
    let (ok, out, err) = cli(&s, &["results", id], None);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(out.lines().next(), Some("1.0"));
    let (_, out, _) = cli(&s, &["results", id, "--failed"], None);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("\"input\":1") && out.contains("ZeroDivisionError"),
        "{out}"
    );
    let (_, out, _) = cli(&s, &["tasks", "--status", "failed"], None);
    assert!(out.lines().all(|l| l.contains("\tfailed\t")), "{out}");
    let (ok, _, err) = cli(&s, &["tasks", "--status", "nope"], None);
    assert!(
        !ok && err.contains("--status") && err.contains("completed"),
        "{err}"
    );
    // Keys, files and secrets are removed as they are made.
    assert!(cli(&s, &["volume", "put", "team", "plan", "1"], None).0);
    let (ok, out, _) = cli(&s, &["volume", "rm", "team", "plan"], None);
    assert!(ok && out.contains("deleted plan"), "{out}");
    let (ok, _, err) = cli(&s, &["volume", "rm", "team", "plan"], None);
    assert!(!ok && err.contains("nothing at"), "{err}");
    let put = reqwest::Client::new()
        .put(format!("{}/volumes/team/files/notes/a.txt", s.url))
        .bearer_auth(TOKEN)
        .body("x")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let (ok, out, err) = cli(&s, &["volume", "rm", "team", "notes/a.txt", "--file"], None);
    assert!(ok && out.contains("deleted notes/a.txt"), "{out}{err}");
    assert!(
        cli(
            &s,
            &["secret", "set", "db", "PASSWORD=hunter2-hunter2"],
            None
        )
        .0
    );
    let (ok, out, _) = cli(&s, &["secret", "rm", "db"], None);
    assert!(ok && out.contains("removed"), "{out}");
    let (_, out, _) = cli(&s, &["secret", "ls"], None);
    assert!(!out.contains("db"), "{out}");
    let (ok, out, _) = cli(&s, &["undeploy", "inv"], None);
    assert!(ok && out.contains("undeployed inv"), "{out}");
    let (_, out, _) = cli(&s, &["functions"], None);
    assert!(out.is_empty(), "{out}");
}

/// Mistakes a newcomer makes get errors that say what to do: JSON that
/// does not parse is refused (not sent as a string), a failed call prints
/// its remote traceback, a refused token and an unreachable server say
/// which setting to fix, a `..` in a key never reaches another volume, and
/// `?`/`#` stay in a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_mistakes_get_errors_that_say_what_to_do() {
    let s = serve();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("boom.py");
    std::fs::write(
        &file,
        "def boom(x):\n    raise ValueError(f'bad input {x}')\n",
    )
    .unwrap();
    assert!(cli(&s, &["deploy", file.to_str().unwrap()], None).0);
    let (ok, _, err) = cli(&s, &["call", "boom", "{not json"], None);
    assert!(!ok && err.contains("is not valid JSON"), "{err}");
    let (ok, _, err) = cli(&s, &["call", "boom", "--kwargs", "[1]"], None);
    assert!(!ok && err.contains("expected a JSON object"), "{err}");
    assert!(!err.contains("column"), "{err}");
    let (ok, _, err) = cli(&s, &["call", "boom", "3"], None);
    assert!(!ok && err.contains("ValueError: bad input 3"), "{err}");
    assert!(err.contains("Traceback") && err.contains("line 2"), "{err}");

    let boom = file.to_str().unwrap();
    let (ok, _, err) = cli(&s, &["run", &format!("{boom}:boom"), "1"], None);
    assert!(
        !ok && err.contains(&format!("did you mean `{boom}::boom`")),
        "{err}"
    );
    let (ok, out, _) = cli(&s, &["spawn", "boom", "4", "--wait"], None);
    assert!(!ok, "{out}");
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = record["task_id"].as_str().unwrap();
    let (ok, _, err) = cli(&s, &["cancel", id], None);
    assert!(
        ok && err.contains("had already ended (failed): nothing was cancelled"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &s,
        &["volume", "put", "team", "../../other/state/k", "4"],
        None,
    );
    assert!(!ok && err.contains("'..' segments"), "{err}");
    let (_, out, _) = cli(&s, &["volume", "ls", "other"], None);
    assert!(!out.contains('k'), "{out}");
    assert!(cli(&s, &["volume", "put", "team", "a?b#c", "1"], None).0);
    let (ok, out, err) = cli(&s, &["volume", "get", "team", "a?b#c"], None);
    assert!(ok && out.contains("\"a?b#c\""), "{out}{err}");

    let refused = Command::new(BIN)
        .args([
            "--url",
            &s.url,
            "--token",
            "not-the-token-0123456789",
            "functions",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("refused the token given"), "{err}");
    let down = Command::new(BIN)
        .args(["--url", "http://127.0.0.1:9", "--token", TOKEN, "functions"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(
        err.contains("Connection refused") && err.contains("MODAL_AGENTS_URL"),
        "{err}"
    );
}

#[test]
fn serve_refuses_to_start_without_a_token() {
    let out = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env_remove("MODAL_AGENTS_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MODAL_AGENTS_TOKEN") && err.contains("--insecure-no-auth"),
        "{err}"
    );
}

/// Logs sent to a pipe (or a file) carry no colour codes; only a terminal
/// gets them.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    use std::io::{BufRead, Read};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--no-modal", "--data-dir"])
        .arg(dir.path())
        .env("MODAL_AGENTS_TOKEN", "pipe-logs-token-0123456789")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    support::kill(child.id(), libc::SIGTERM);
    child.wait().unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("INFO"), "the server logged: {logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in piped logs: {logs:?}"
    );
}

/// `mcp` never guesses between a server and an embedded runtime, and a
/// server it cannot use is an error at start, not at the first tool call.
#[test]
fn mcp_refuses_ambiguity_and_an_unusable_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], url: &str| {
        let out = Command::new(BIN)
            .args(args)
            .env("MODAL_AGENTS_URL", url)
            .env_remove("MODAL_AGENTS_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let data = dir.path().join("data");
    let (code, err) = run(
        &["mcp", "--data-dir", data.to_str().unwrap()],
        "http://127.0.0.1:9",
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("not both") && err.contains("MODAL_AGENTS_URL"),
        "{err}"
    );
    let (code, err) = run(&["mcp"], "http://127.0.0.1:9");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("127.0.0.1:9") && err.contains("MODAL_AGENTS_TOKEN"),
        "{err}"
    );
    // A running server, but no token: refused at start, saying so.
    let s = serve();
    let (code, err) = run(&["mcp"], &s.url);
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
}
