//! What following a task's logs costs the server, one JSON line: the
//! server's CPU (percent of one core) and thread count while a task prints
//! (a line to stdout and one to stderr every 50 ms), first with no
//! follower, then with `BENCH_FOLLOWERS` (default 300) Server-Sent Events
//! followers reading along. The server is the release binary, in its own
//! process, so the followers' own reading is not counted.
//!
//! Run: `cargo bench --bench followers` (`BENCH_SERVER` runs another
//! server binary, an older build say, under the same load).

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_modal-agents");
const TOKEN: &str = "bench-token-0123456789abcdef";

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("proc");
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("field")
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn cpu_percent(pid: u32, window: Duration) -> f64 {
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks(pid);
    std::thread::sleep(window);
    (cpu_ticks(pid) - before) as f64 / hz / window.as_secs_f64() * 100.0
}

/// One request over a fresh connection; the response as text.
fn request(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn main() {
    let followers: usize = std::env::var("BENCH_FOLLOWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = std::env::var("BENCH_SERVER").unwrap_or_else(|_| BIN.to_owned());
    let mut server = std::process::Command::new(&bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("MODAL_AGENTS_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .expect("an address")
        .to_owned();
    let pid = server.id();
    let code = "import sys, time\\ndef printer(n):\\n    for i in range(n):\\n        print('out', i)\\n        print('err', i, file=sys.stderr)\\n        time.sleep(0.05)\\n    return n\\n";
    request(
        &addr,
        "POST",
        "/deploy-function",
        &format!(r#"{{"function_code": "{code}", "function_name": "printer"}}"#),
    );
    let spawned = request(
        &addr,
        "POST",
        "/spawn-task",
        r#"{"function_name": "printer", "args": [400]}"#,
    );
    let id = spawned
        .split("\"task_id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a task id")
        .to_owned();
    let started = Instant::now();
    while !request(&addr, "GET", &format!("/status/{id}"), "").contains("\"running\"") {
        assert!(started.elapsed() < Duration::from_secs(30), "never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let window = Duration::from_secs(4);
    let alone = cpu_percent(pid, window);
    let threads_alone = proc_field(pid, "status", "Threads:");
    // The followers: one connection each, read on a few threads.
    let mut conns = Vec::new();
    for _ in 0..followers {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        write!(
            s,
            "GET /tasks/{id}/logs?follow=true HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .expect("send");
        s.set_nonblocking(true).expect("nonblocking");
        conns.push(s);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = conns
        .chunks(followers.div_ceil(4).max(1))
        .map(|chunk| {
            let mut chunk: Vec<_> = chunk
                .iter()
                .map(|s| s.try_clone().expect("clone"))
                .collect();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut read = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for s in &mut chunk {
                        if let Ok(n) = s.read(&mut buf) {
                            read += n as u64;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                read
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let followed = cpu_percent(pid, window);
    let threads_followed = proc_field(pid, "status", "Threads:");
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    eprintln!("threads with followers: {names:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let read: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    println!(
        "{{\"bench\":\"log_followers\",\"server\":\"{}\",\"followers\":{followers},\"cpu_pct_alone\":{alone:.1},\"cpu_pct_followed\":{followed:.1},\"cpu_pct_per_100_followers\":{:.2},\"threads_alone\":{threads_alone},\"threads_followed\":{threads_followed},\"bytes_read\":{read}}}",
        if bin == BIN { "this build" } else { "BENCH_SERVER" },
        (followed - alone) / followers as f64 * 100.0
    );
    // SAFETY: kill(2) on the server this bench started.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = server.wait();
}
