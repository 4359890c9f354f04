//! `run` through pipes (one call, a map, FILE::FN, bare words, results
//! printed while the map still runs) and through a pseudo-terminal (Ctrl-C
//! cancels the map, prints what finished, exits 130); `tasks --watch`; volume
//! files from the command line.

use std::io::{BufRead, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{cli, serve, spawn_cli, Served, BIN, TOKEN};

/// Deploys `nap(x)`: sleeps `x` seconds and returns it.
fn deploy_nap(s: &Served) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nap.py");
    std::fs::write(
        &file,
        "import time\ndef nap(x):\n    time.sleep(x)\n    return x\n",
    )
    .unwrap();
    assert!(cli(s, &["deploy", file.to_str().unwrap()], None).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_calls_maps_and_deploys_from_a_file() {
    let s = serve();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.py");
    std::fs::write(
        &file,
        "def triple(x):\n    return 3 * x\n\ndef same(x):\n    return x\n",
    )
    .unwrap();
    let target = |f: &str| format!("{}::{f}", file.display());
    // FILE::FN with arguments: deployed, then called once.
    let (ok, out, err) = cli(&s, &["run", &target("triple"), "5"], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "15");
    assert!(err.contains("deployed triple"), "{err}");
    // Without arguments and with input lines: a map. A bare word is a
    // string; the map's id is on stderr.
    let (ok, out, err) = cli(
        &s,
        &["run", &target("same")],
        Some("1\nhello world\n[1, 2]\n\n{\"a\": null}\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["1", "\"hello world\"", "[1,2]", "{\"a\":null}"]
    );
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("map "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no map id in {err}"));
    let (ok, out, _) = cli(&s, &["results", id], None);
    assert!(ok && out.lines().count() == 4, "{out}");
    // The deployed name is the function's.
    let (ok, out, err) = cli(&s, &["run", "triple", "--inputs", "-"], Some("1\n2\n"));
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["3", "6"]);
    // --starmap: each line is the positional arguments; --kwargs: each
    // line the keyword arguments; a line of the wrong shape is refused,
    // naming it, before anything runs.
    std::fs::write(
        &file,
        "def triple(x):\n    return 3 * x\n\ndef same(x):\n    return x\n\ndef add(a, b=0):\n    return a + b\n",
    )
    .unwrap();
    let (ok, out, err) = cli(
        &s,
        &["run", &target("add"), "--starmap"],
        Some("[1, 2]\n[5]\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["3", "5"]);
    let (ok, out, err) = cli(
        &s,
        &["run", "add", "--kwargs"],
        Some("{\"a\": 1, \"b\": 2}\n{\"a\": 7}\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["3", "7"]);
    let (ok, _, err) = cli(&s, &["run", "add", "--starmap"], Some("[1, 2]\n3\n"));
    assert!(
        !ok && err.contains("input line 2") && err.contains("--starmap"),
        "{err}"
    );
    let (ok, _, err) = cli(&s, &["run", "add", "--kwargs", "--starmap"], Some("[1]\n"));
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    // Both ARGS and --inputs: refused, naming both.
    let (ok, _, err) = cli(&s, &["run", "triple", "1", "--inputs", "-"], Some(""));
    assert!(!ok && err.contains("not both"), "{err}");
    // A file that is not there, a missing function name.
    let (ok, _, err) = cli(&s, &["run", "/nonexistent/x.py::f", "1"], None);
    assert!(!ok && err.contains("/nonexistent/x.py"), "{err}");
    let (ok, _, err) = cli(&s, &["run", &format!("{}::", file.display()), "1"], None);
    assert!(!ok && err.contains("FILE.py::FUNCTION"), "{err}");
    // A failed input: printed as its error, and the command fails.
    let (ok, out, err) = cli(&s, &["run", "triple"], Some("1\nnull\n"));
    assert!(!ok, "{out}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.contains("TypeError")),
        "{out}"
    );
    assert!(err.contains("failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_each_result_while_the_map_still_runs() {
    let s = serve();
    deploy_nap(&s);
    let mut child = spawn_cli(&s, &["run", "nap"]);
    // Written and closed: the inputs end there.
    child.stdin.take().unwrap().write_all(b"0\n60\n").unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    // The first result is out while the second input still sleeps.
    assert_eq!(first, "0");
    assert!(matches!(child.try_wait(), Ok(None)));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `run --unordered`: each line starts its call as it comes in (stdin
/// still open), results print as they finish, a slow first input holding
/// back none of the others (a failed one is its error object); SIGTERM
/// cancels the call still running and exits 143. A closed stdout cancels
/// what runs and exits 141, in input order (a map) as well as unordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_unordered_streams_and_every_early_end_cancels_what_runs() {
    let s = serve();
    deploy_nap(&s);
    let run = |args: &[&str]| spawn_cli(&s, args);
    let running = || {
        let (ok, listed, e) = cli(&s, &["tasks", "--status", "running"], None);
        assert!(ok, "{e}");
        listed
    };
    let mut child = run(&["run", "nap", "--unordered"]);
    // Written, and stdin left open: the calls start all the same.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"600\n0\nbad\n").unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut firsts = vec![
        lines.next().unwrap().unwrap(),
        lines.next().unwrap().unwrap(),
    ];
    firsts.sort();
    assert_eq!(firsts[0], "0", "{firsts:?}");
    let failed: serde_json::Value = serde_json::from_str(&firsts[1]).unwrap();
    assert_eq!(failed["error"]["type"], "TypeError", "{failed}");
    assert!(matches!(child.try_wait(), Ok(None)));
    super::support::kill(child.id(), libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(
        err.contains("1 calls in flight cancelled") && err.contains("2 of the 3 started printed"),
        "{err}"
    );
    assert!(!running().contains("nap"), "nothing of it still runs");

    // Nobody reads the results: both ways of running end, cancelling.
    for args in [&["run", "nap", "--unordered"][..], &["run", "nap"][..]] {
        let mut child = run(args);
        drop(child.stdout.take());
        child.stdin.take().unwrap().write_all(b"0\n600\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(
            !running().contains("nap"),
            "{args:?}: nothing of it still runs"
        );
    }
}

/// A child on a new pseudo-terminal as its controlling terminal, as a shell
/// would run it; returns the child and the terminal's master side. `cmd`
/// is dropped once spawned, so the child holds the only copies of the
/// terminal's other side (its end then reads as the end of the master).
fn spawn_on_a_terminal(mut cmd: Command) -> (std::process::Child, std::fs::File) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors we then own.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both were just opened and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    (child, std::fs::File::from(master))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_run_cancels_the_map_prints_what_finished_and_exits_130() {
    let s = serve();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nap.py");
    std::fs::write(
        &file,
        "import time\ndef nap(x):\n    time.sleep(x if isinstance(x, int) else 0)\n    return x\n",
    )
    .unwrap();
    assert!(cli(&s, &["deploy", file.to_str().unwrap()], None).0);
    let inputs = dir.path().join("inputs");
    std::fs::write(&inputs, "first\nsecond\n120\nlast\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "nap", "--inputs", inputs.to_str().unwrap()])
        .env("MODAL_AGENTS_URL", &s.url)
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .env("RUST_LOG", "error");
    let (mut child, master) = spawn_on_a_terminal(cmd);
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let mut master = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the child's side closes (EIO).
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let text = || seen.lock().unwrap().clone();
    // Wait for the two quick results (the third input sleeps two minutes).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text().contains("\"second\"") {
        assert!(Instant::now() < deadline, "no results: {}", text());
        assert!(matches!(child.try_wait(), Ok(None)), "{}", text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = text();
    let id = before
        .split("map ")
        .nth(1)
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no map id in {before}"))
        .to_owned();
    // Ctrl-C, typed on the terminal.
    (&master).write_all(b"\x03").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running: {}", text());
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(master);
    reader.join().unwrap();
    let after = text();
    assert_eq!(status.code(), Some(130), "{after}");
    assert!(
        after.contains("interrupted") && after.contains(&format!("map {id} cancelled")),
        "{after}"
    );
    assert!(after.contains("the 2 of 4 results"), "{after}");
    // The map is cancelled on the server, not left running.
    let (ok, out, _) = cli(&s, &["status", &id], None);
    assert!(ok && out.contains("\"cancelled\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_watch_and_volume_files_from_the_command_line() {
    let s = serve();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.py");
    std::fs::write(&file, "def one():\n    return 1\n").unwrap();
    assert!(cli(&s, &["deploy", file.to_str().unwrap()], None).0);
    assert!(cli(&s, &["call", "one"], None).0);
    // --watch prints the list again and again until stopped.
    let mut child = Command::new(BIN)
        .args(["tasks", "--watch", "0.2"])
        .env("MODAL_AGENTS_URL", &s.url)
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut listed = 0;
    while listed < 3 {
        let line = lines.next().unwrap().unwrap();
        listed += usize::from(line.contains("\tcompleted\tone"));
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    let (ok, _, err) = cli(&s, &["tasks", "--watch", "0"], None);
    assert!(!ok && err.contains("--watch 0"), "{err}");
    // Volume files: put from a file and from stdin, list, get, remove.
    let local = dir.path().join("data.bin");
    std::fs::write(&local, [0u8, 1, 2, 255]).unwrap();
    let (ok, _, err) = cli(
        &s,
        &[
            "volume",
            "put",
            "box",
            "in/data.bin",
            local.to_str().unwrap(),
            "--file",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &s,
        &["volume", "put", "box", "note.txt", "-", "--file"],
        Some("hi\n"),
    );
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&s, &["volume", "ls", "box", "--files"], None);
    assert!(
        ok && out.contains("4\tin/data.bin") && out.contains("3\tnote.txt"),
        "{out}"
    );
    let got = Command::new(BIN)
        .args(["volume", "get", "box", "in/data.bin", "--file"])
        .env("MODAL_AGENTS_URL", &s.url)
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(got.status.success());
    assert_eq!(got.stdout, [0u8, 1, 2, 255]);
    let (ok, _, err) = cli(&s, &["volume", "get", "box", "missing.txt", "--file"], None);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, out, _) = cli(&s, &["volume", "rm", "box", "note.txt", "--file"], None);
    assert!(ok && out.contains("deleted note.txt"), "{out}");
}

/// The edges a hostile review found: output to a closed pipe ends quietly
/// (no panic); no input lines on a non-terminal stdin is one call; a file
/// that is not a regular file is refused by name; a path may hold `::`;
/// Ctrl-C on a single call cancels it and exits 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_edges_closed_pipes_empty_stdin_odd_files_and_ctrl_c_on_a_call() {
    let s = serve();
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("a::b");
    std::fs::create_dir(&odd).unwrap();
    let file = odd.join("jobs.py");
    std::fs::write(
        &file,
        "import time\ndef hello():\n    return 'hi'\n\ndef nap(s):\n    time.sleep(s)\n    return s\n",
    )
    .unwrap();
    let target = |f: &str| format!("{}::{f}", file.display());
    // No lines on stdin (closed, not a terminal): one call, no arguments.
    let (ok, out, err) = cli(&s, &["run", &target("hello")], Some(""));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "\"hi\"");
    // Not a regular file: refused, named.
    let (ok, _, err) = cli(&s, &["run", "/dev/zero::f", "1"], None);
    assert!(
        !ok && err.contains("/dev/zero: not a regular file"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &s,
        &["volume", "put", "v", "k", "/dev/zero", "--file"],
        None,
    );
    assert!(!ok && err.contains("not a regular file"), "{err}");
    // Output to a closed pipe: the command ends without a panic.
    let mut child = Command::new(BIN)
        .args(["functions"])
        .env("MODAL_AGENTS_URL", &s.url)
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && out.status.code() != Some(101),
        "{err}"
    );
    // Ctrl-C on one call: cancelled, said so with its id, exit 130.
    let mut cmd = Command::new(BIN);
    cmd.args(["run", &target("nap"), "120"])
        .env("MODAL_AGENTS_URL", &s.url)
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .env("RUST_LOG", "error");
    let (mut child, master) = spawn_on_a_terminal(cmd);
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let (_, out, _) = cli(&s, &["tasks", "--status", "running"], None);
        if let Some(line) = out.lines().find(|l| l.contains("\tnap")) {
            break line.split('\t').next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the call never ran");
        std::thread::sleep(Duration::from_millis(50));
    };
    (&master).write_all(b"\x03").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(master);
    assert_eq!(status.code(), Some(130));
    let (ok, out, _) = cli(&s, &["status", &running], None);
    assert!(ok && out.contains("\"cancelled\""), "{out}");
}
