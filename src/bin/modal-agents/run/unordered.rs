//! `run --unordered`: each input a call of its own, its result printed the
//! moment it finishes, whatever its place in the input. A map releases its
//! results in input order (one slow input holds back the rest); separate
//! calls do not.
//!
//! Input lines are read as they come (a call starts as soon as its line is
//! in). At most [`WINDOW`] calls are in flight; each finished one makes room
//! for the next input. Ctrl-C (or SIGTERM, SIGHUP) cancels every call in
//! flight, prints nothing more and exits 128 plus the signal; a closed
//! standard output does the same, quietly, with 141. A call's request is
//! never dropped halfway: signals are looked at between requests, and only
//! waits (which start nothing) are cut short by them, so no call is started
//! without its id being known and cancelled.

use std::process::ExitCode;
use std::time::Duration;

use modal_agents::client::Client;
use modal_agents::task::{InputsAs, WaitMode};
use modal_agents::{TaskId, TaskStatus};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::halt::{emit, Failure, Halt, Stop};
use super::InputLines;

/// Calls in flight at once.
const WINDOW: usize = 256;

/// How long one server-side wait lasts before it is asked again.
const WAIT: Duration = Duration::from_secs(30);

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

/// Runs `function` once per input line as the lines come, printing each
/// result as it finishes; `None` when there was no input at all.
pub(super) async fn run(
    client: &Client,
    function: &str,
    lines: InputLines,
) -> Result<Option<ExitCode>, String> {
    let inputs_as = lines.inputs_as;
    let mut stop = Stop::listen()?;
    // Lines are read on a thread of their own, a window ahead: a call
    // starts as soon as its line is in, not once the input has ended.
    let (tx, mut rx) = mpsc::channel(WINDOW);
    std::thread::spawn(move || {
        for input in lines {
            let failed = input.is_err();
            if tx.blocking_send(input).is_err() || failed {
                return;
            }
        }
    });
    eprintln!("calls of {function} for each input line, each result printed as it finishes");
    let bar = super::progress_bar(0)?;
    let mut inflight: Vec<TaskId> = Vec::new();
    let (mut read, mut printed, mut failed) = (0u64, 0u64, 0u64);
    let mut input_ended = false;
    let mut next: Option<Value> = None;
    let outcome: Result<(), Failure> = async {
        loop {
            // Start what has come in, up to the window; a request is never
            // cut halfway.
            while inflight.len() < WINDOW {
                if let Some(signal) = stop.arrived() {
                    return Err(Failure::Halt(Halt::Signal(signal)));
                }
                let input = match next.take() {
                    Some(input) => input,
                    None if input_ended => break,
                    None => match rx.try_recv() {
                        Ok(input) => input.map_err(Failure::Error)?,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            input_ended = true;
                            break;
                        }
                    },
                };
                read += 1;
                bar.set_length(read);
                let (args, kwargs) = call_of(input, inputs_as);
                inflight.push(client.spawn(function, args, kwargs, false).await?.task_id);
            }
            if inflight.is_empty() && input_ended {
                return Ok(());
            }
            let room = inflight.len() < WINDOW && !input_ended;
            let waited = tokio::select! {
                signal = stop.recv() => return Err(Failure::Halt(Halt::Signal(signal))),
                line = rx.recv(), if room => {
                    match line {
                        Some(input) => next = Some(input.map_err(Failure::Error)?),
                        None => input_ended = true,
                    }
                    continue;
                }
                waited = client.wait_tasks(&inflight, WaitMode::Any, Some(WAIT)), if !inflight.is_empty() => waited?,
            };
            let mut text = String::new();
            for t in waited.tasks.iter().filter(|t| t.status.is_terminal()) {
                let (line, bad) = line_of(&client.status(t.task_id).await?);
                text.push_str(&line);
                text.push('\n');
                failed += u64::from(bad);
                printed += 1;
                inflight.retain(|id| *id != t.task_id);
            }
            if !text.is_empty() {
                emit(&bar, &text)?;
                bar.set_position(printed);
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
                }
            }
        }
    }
    .await;
    bar.finish_and_clear();
    match outcome {
        Ok(()) if read == 0 => Ok(None),
        Ok(()) if failed > 0 => Err(format!("{failed} of {read} calls of {function} failed")),
        Ok(()) => Ok(Some(ExitCode::SUCCESS)),
        Err(Failure::Error(e)) => {
            cancel_all(client, &inflight).await;
            Err(e)
        }
        Err(Failure::Halt(halt)) => {
            let n = inflight.len();
            cancel_all(client, &inflight).await;
            if let Halt::Signal(_) = halt {
                eprintln!(
                    "modal-agents: interrupted: {n} calls in flight cancelled; {printed} of the {read} started printed"
                );
            }
            Ok(Some(halt.code()))
        }
    }
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
