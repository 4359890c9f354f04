//! `run --unordered`: each input a call of its own, its result printed the
//! moment it finishes, whatever its place in the input. A map releases its
//! results in input order (one slow input holds back the rest); separate
//! calls do not.
//!
//! At most [`WINDOW`] calls are in flight; each finished one makes room for
//! the next input. Ctrl-C cancels every call in flight, prints nothing more
//! and exits 130. A call's request is never dropped halfway: the signal is
//! looked at between requests, and only the server-side wait (which starts
//! nothing) is cut short by it, so no call is started without its id being
//! known and cancelled.

use std::collections::VecDeque;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::FutureExt;
use modal_agents::client::{Client, ClientError};
use modal_agents::task::{InputsAs, WaitMode};
use modal_agents::{TaskId, TaskStatus};
use serde_json::{json, Map, Value};
use tokio::signal::unix::{signal, SignalKind};

/// Calls in flight at once.
const WINDOW: usize = 256;

/// How long one server-side wait lasts before it is asked again.
const WAIT: Duration = Duration::from_secs(30);

fn err(e: ClientError) -> String {
    e.to_string()
}

/// One input as a call's positional and keyword arguments.
fn call_of(input: Value, inputs_as: InputsAs) -> (Vec<Value>, Map<String, Value>) {
    match (inputs_as, input) {
        (InputsAs::Args, Value::Array(args)) => (args, Map::new()),
        (InputsAs::Kwargs, Value::Object(kwargs)) => (Vec::new(), kwargs),
        // `read_inputs` checked each line's shape for the other two.
        (_, input) => (vec![input], Map::new()),
    }
}

/// What is printed for a finished call: its value, or `{"error": {...}}`
/// as a failed input's slot in a map.
fn line_of(record: &modal_agents::TaskRecord) -> (String, bool) {
    match (&record.status, &record.error) {
        (TaskStatus::Completed, _) => (
            record.result.clone().unwrap_or(Value::Null).to_string(),
            false,
        ),
        (status, error) => {
            let error = error.as_ref().map_or_else(
                || json!({"type": "Failed", "message": format!("task {status}")}),
                |e| json!(e),
            );
            (json!({ "error": error }).to_string(), true)
        }
    }
}

/// Runs `function` once per input, printing each result as it finishes.
pub(super) async fn run(
    client: &Client,
    function: &str,
    inputs: Vec<Value>,
    inputs_as: InputsAs,
) -> Result<ExitCode, String> {
    let total = inputs.len() as u64;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("listening for Ctrl-C: {e}"))?;
    eprintln!("{total} calls of {function}, each result printed as it finishes");
    let bar = super::progress_bar(total)?;
    let mut pending: VecDeque<Value> = inputs.into();
    let mut inflight: Vec<TaskId> = Vec::new();
    let (mut printed, mut failed) = (0u64, 0u64);
    let interrupted = loop {
        // Fill the window; a request is never cut halfway.
        let mut stop = false;
        while inflight.len() < WINDOW {
            if sigint.recv().now_or_never().is_some() {
                stop = true;
                break;
            }
            let Some(input) = pending.pop_front() else {
                break;
            };
            let (args, kwargs) = call_of(input, inputs_as);
            match client.spawn(function, args, kwargs, false).await {
                Ok(record) => inflight.push(record.task_id),
                Err(e) => {
                    cancel_all(client, &inflight).await;
                    bar.finish_and_clear();
                    return Err(err(e));
                }
            }
        }
        if stop {
            break true;
        }
        if inflight.is_empty() {
            break false;
        }
        let waited = tokio::select! {
            waited = client.wait_tasks(&inflight, WaitMode::Any, Some(WAIT)) => waited,
            _ = sigint.recv() => break true,
        };
        let waited = match waited {
            Ok(w) => w,
            Err(e) => {
                cancel_all(client, &inflight).await;
                bar.finish_and_clear();
                return Err(err(e));
            }
        };
        let mut text = String::new();
        for t in waited.tasks.iter().filter(|t| t.status.is_terminal()) {
            let record = match client.status(t.task_id).await {
                Ok(r) => r,
                Err(e) => {
                    cancel_all(client, &inflight).await;
                    bar.finish_and_clear();
                    return Err(err(e));
                }
            };
            let (line, bad) = line_of(&record);
            text.push_str(&line);
            text.push('\n');
            failed += u64::from(bad);
            printed += 1;
            inflight.retain(|id| *id != t.task_id);
        }
        if !text.is_empty() {
            bar.suspend(|| {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            })
            .map_err(|e| format!("writing results: {e}"))?;
            bar.set_position(printed);
            if failed > 0 {
                bar.set_message(format!("{failed} failed"));
            }
        }
    };
    bar.finish_and_clear();
    if interrupted {
        let n = inflight.len();
        cancel_all(client, &inflight).await;
        eprintln!(
            "modal-agents: interrupted: {n} calls in flight cancelled, {} never started; {printed} of {total} results printed",
            pending.len()
        );
        return Ok(ExitCode::from(130));
    }
    if failed > 0 {
        return Err(format!("{failed} of {total} calls of {function} failed"));
    }
    Ok(ExitCode::SUCCESS)
}

/// Cancels every call in `ids`, a few at a time; a failure to cancel one
/// is said, naming it, and does not stop the others.
async fn cancel_all(client: &Client, ids: &[TaskId]) {
    use futures_util::stream::{self, StreamExt};
    stream::iter(ids)
        .for_each_concurrent(16, |&id| async move {
            if let Err(e) = client.cancel(id).await {
                eprintln!("modal-agents: could not cancel task {id}: {e}");
            }
        })
        .await;
}
