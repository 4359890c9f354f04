//! MCP over stdin and stdout with an answer for every line: a line that is
//! not a JSON-RPC message (not JSON, not UTF-8, nested past the parser's
//! limit, an array, over [`MAX_LINE`]) is answered with a JSON-RPC error
//! whose id is null, as JSON-RPC says for a request that cannot be read,
//! instead of being dropped while the host waits for ever. Every other line
//! goes to the server as it came.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::McpServer;

/// Longest line read (16 MiB, the stdio transport's own limit).
const MAX_LINE: usize = 16 << 20;

/// Serves `server` on this process's stdin and stdout until stdin closes.
pub(crate) async fn serve(server: McpServer) -> io::Result<()> {
    use rmcp::ServiceExt as _;
    let (to_server, server_in) = tokio::io::duplex(1 << 16);
    let (server_out, from_server) = tokio::io::duplex(1 << 16);
    // One writer of stdout, so an error line never lands inside a message.
    let (lines, mut out) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out.recv().await {
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let answers = lines.clone();
    let relay = tokio::spawn(async move {
        let mut from_server = BufReader::new(from_server);
        let mut line = Vec::new();
        loop {
            line.clear();
            match from_server.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if answers.send(line.clone()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let gate = tokio::spawn(gate(BufReader::new(tokio::io::stdin()), to_server, lines));
    // Serving starts with the client's `initialize`, which the gate passes.
    let served = match server.serve((server_in, server_out)).await {
        Ok(running) => running
            .waiting()
            .await
            .map(|_| ())
            .map_err(io::Error::other),
        Err(e) => Err(io::Error::other(e)),
    };
    gate.abort();
    let _ = relay.await;
    let _ = writer.await;
    served
}

/// Reads lines from `input`: each JSON object goes to `server`, anything
/// else is answered on `answers`. Ends at the end of `input`, closing
/// `server`'s input with it.
async fn gate(
    mut input: impl AsyncBufRead + Unpin,
    mut server: tokio::io::DuplexStream,
    answers: mpsc::Sender<Vec<u8>>,
) {
    loop {
        let line = match read_line(&mut input).await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => break,
        };
        let text = match line {
            Line::TooLong(bytes) => {
                let _ = answers
                    .send(error(
                        &serde_json::Value::Null,
                        -32600,
                        &format!("a message of over {bytes} bytes; at most {MAX_LINE} are read"),
                    ))
                    .await;
                continue;
            }
            Line::Text(text) => text,
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let null = serde_json::Value::Null;
        let refusal = match serde_json::from_slice::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(m)) => match super::check::check(
                m.get("method"),
                m.get("params"),
                m.contains_key("result") || m.contains_key("error"),
            ) {
                Ok(()) => None,
                // A notification is never answered: one with bad params
                // is dropped (JSON-RPC).
                Err(r) if r.code == super::check::INVALID_PARAMS && !m.contains_key("id") => {
                    continue
                }
                Err(r) => Some((m.get("id").cloned().unwrap_or(null), r.code, r.message)),
            },
            Ok(serde_json::Value::Array(_)) => Some((
                null,
                -32600,
                "a batch (JSON array); send one message per line".to_owned(),
            )),
            Ok(_) => Some((
                null,
                -32600,
                "not a JSON-RPC message (a JSON object)".to_owned(),
            )),
            Err(e) => Some((null, -32700, format!("not JSON: {e}"))),
        };
        match refusal {
            Some((id, code, why)) => {
                let _ = answers.send(error(&id, code, &why)).await;
            }
            None => {
                if server.write_all(&text).await.is_err() || server.write_all(b"\n").await.is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = server.shutdown().await;
}

enum Line {
    Text(Vec<u8>),
    /// Past [`MAX_LINE`]: how many bytes it had (the rest was skipped).
    TooLong(usize),
}

/// The next line of `input` without its end, or `None` at the end; a line
/// past [`MAX_LINE`] is read through and dropped, never kept whole.
async fn read_line(input: &mut (impl AsyncBufRead + Unpin)) -> io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut seen = 0usize;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok((seen > 0).then(|| finish(line, seen)));
        }
        let (take, ended) = match buf.iter().position(|b| *b == b'\n') {
            Some(at) => (at, true),
            None => (buf.len(), false),
        };
        if seen + take <= MAX_LINE {
            line.extend_from_slice(&buf[..take]);
        } else {
            line = Vec::new();
        }
        seen += take;
        input.consume(take + usize::from(ended));
        if ended {
            return Ok(Some(finish(line, seen)));
        }
    }
}

fn finish(mut line: Vec<u8>, seen: usize) -> Line {
    if seen > MAX_LINE {
        return Line::TooLong(seen);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Line::Text(line)
}

/// A JSON-RPC error answer to `id` (null for a message that could not be
/// read), as one line.
fn error(id: &serde_json::Value, code: i64, message: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": crate::value::clip(message, 512)},
    }))
    .unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line that is not a message gets an error; messages pass on
    /// whole; a line past the limit is never kept.
    #[tokio::test]
    async fn every_line_is_passed_on_or_answered() {
        let big = "x".repeat(MAX_LINE + 10);
        let input = format!(
            "garbage\n{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}}\r\n[1]\n\n{}\n{big}\n7\n{{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\",\"params\":{{\"name\":\"t\",\"arguments\":[1]}}}}\n{{\"jsonrpc\":\"2.0\",\"id\":3}}\n{{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":5}}\n",
            "[".repeat(10_000)
        );
        let (server, mut server_side) = tokio::io::duplex(1 << 20);
        let (answers, mut said) = mpsc::channel(16);
        let fed = tokio::spawn(gate(
            std::io::Cursor::new(input.into_bytes()),
            server,
            answers,
        ));
        let mut passed = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut server_side, &mut passed)
            .await
            .unwrap();
        fed.await.unwrap();
        assert_eq!(
            passed,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n"
        );
        let mut codes = Vec::new();
        while let Some(line) = said.recv().await {
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
            codes.push((v["id"].as_i64(), v["error"]["code"].as_i64().unwrap()));
        }
        // A tools/call whose arguments are not an object is answered as
        // invalid params, to its id (rmcp said "method not found"); as a
        // notification (no id) it is dropped, unanswered.
        assert_eq!(
            codes,
            [
                (None, -32700),
                (None, -32600),
                (None, -32700),
                (None, -32600),
                (None, -32600),
                (Some(9), -32602),
                (Some(3), -32600)
            ]
        );
    }
}
