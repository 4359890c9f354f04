//! `functions`, `undeploy`, `tasks`, `results` and `call`: what is deployed
//! and what ran, from the command line.

use std::io::{IsTerminal, Write};

use clap::Args;
use modal_agents::client::Client;
use modal_agents::{TaskId, TaskStatus};
use serde_json::{Map, Value};

/// `modal-agents tasks`.
#[derive(Args)]
pub(crate) struct TasksArgs {
    /// Only tasks in this status (pending, running, completed, failed,
    /// cancelled).
    #[arg(long)]
    status: Option<String>,
    /// Where the page starts.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// How many (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: u64,
    /// Print the list again every this many seconds (2 if no value is
    /// given) until Ctrl-C.
    #[arg(long, num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
}

/// `modal-agents results`.
#[derive(Args)]
pub(crate) struct ResultsArgs {
    /// The map's task id.
    task_id: String,
    /// Only the inputs that failed.
    #[arg(long)]
    failed: bool,
    /// Where to start.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// How many results at most (default: all).
    #[arg(long)]
    limit: Option<u64>,
}

/// `modal-agents call`.
#[derive(Args)]
pub(crate) struct CallArgs {
    /// The function.
    function: String,
    /// Positional arguments, each JSON (a bare word is a string).
    args: Vec<String>,
    /// Keyword arguments as a JSON object.
    #[arg(long)]
    kwargs: Option<String>,
}

fn task_id(raw: &str) -> Result<TaskId, String> {
    raw.parse()
        .map_err(|_| format!("{raw:?} is not a task id (a UUID)"))
}

/// `functions`: one line per deployed function.
pub(crate) async fn functions(client: &Client) -> Result<(), String> {
    for f in client.functions().await.map_err(|e| e.to_string())? {
        println!("{}\t{}\t{}", f.function_name, f.backend, f.deployed_at);
    }
    Ok(())
}

/// `undeploy NAME...`.
pub(crate) async fn undeploy(client: &Client, names: &[String]) -> Result<(), String> {
    for name in names {
        let f = client.undeploy(name).await.map_err(|e| e.to_string())?;
        println!("undeployed {}", f.function_name);
    }
    Ok(())
}

/// `tasks`: one line per task, newest first, and where the next page is.
pub(crate) async fn tasks(client: &Client, a: TasksArgs) -> Result<(), String> {
    let status = match &a.status {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<TaskStatus>(Value::String(s.clone())).map_err(|_| {
                format!("--status {s:?}: expected pending, running, completed, failed or cancelled")
            })?,
        ),
    };
    let Some(every) = a.watch else {
        print!("{}", task_page(client, status, &a).await?);
        return Ok(());
    };
    if !(every.is_finite() && (0.1..=3600.0).contains(&every)) {
        return Err(format!(
            "--watch {every}: expected seconds between 0.1 and 3600"
        ));
    }
    let terminal = std::io::stdout().is_terminal();
    let watch = async {
        loop {
            let page = task_page(client, status, &a).await?;
            if terminal {
                // Cleared and drawn again in place.
                print!("\x1b[2J\x1b[H");
            }
            println!("{page}");
            let _ = std::io::stdout().flush();
            tokio::time::sleep(std::time::Duration::from_secs_f64(every)).await;
        }
    };
    tokio::select! {
        failed = watch => failed,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// One page of `tasks`, a line per task (the next page's offset on stderr).
async fn task_page(
    client: &Client,
    status: Option<TaskStatus>,
    a: &TasksArgs,
) -> Result<String, String> {
    let page = client
        .tasks(status, a.offset, a.limit.min(1000))
        .await
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    for t in &page.tasks {
        let progress = t
            .progress
            .as_ref()
            .map(|p| format!("\t{}/{}", p.completed + p.failed, p.total))
            .unwrap_or_default();
        text.push_str(&format!(
            "{}\t{}\t{}{progress}\n",
            t.task_id, t.status, t.function_name
        ));
    }
    let next = a.offset + page.tasks.len() as u64;
    if (next as usize) < page.total {
        eprintln!(
            "{} of {} tasks; next page: --offset {next}",
            page.tasks.len(),
            page.total
        );
    }
    Ok(text)
}

/// `results ID`: a map's results as JSON lines, in input order, paged
/// through to the end (or `--limit`); `--failed` keeps only the failed
/// inputs, each as `{"input": i, "error": ...}`.
pub(crate) async fn results(client: &Client, a: ResultsArgs) -> Result<(), String> {
    let id = task_id(&a.task_id)?;
    let mut offset = a.offset;
    let mut left = a.limit.unwrap_or(u64::MAX);
    while left > 0 {
        let page = client
            .results(id, offset, left.min(1000))
            .await
            .map_err(|e| e.to_string())?;
        for (i, r) in page.results.iter().enumerate() {
            let failed = r.get("error").is_some_and(Value::is_object);
            if a.failed && !failed {
                continue;
            }
            let line = if a.failed {
                serde_json::json!({"input": page.offset + i as u64, "error": r["error"]})
            } else {
                r.clone()
            };
            println!("{line}");
        }
        left = left.saturating_sub(page.results.len() as u64);
        match page.next_offset {
            Some(next) if !page.results.is_empty() => offset = next,
            _ => break,
        }
    }
    Ok(())
}

/// `call FN ARGS...`: one call, waited for; prints its result as JSON.
pub(crate) async fn call(client: &Client, a: CallArgs) -> Result<(), String> {
    let args = a
        .args
        .iter()
        .map(|s| crate::json_arg(s))
        .collect::<Result<_, _>>()?;
    let kwargs: Map<String, Value> = match &a.kwargs {
        None => Map::new(),
        Some(raw) => crate::kwargs_arg(raw)?,
    };
    call_once(client, &a.function, args, kwargs).await
}

/// One call of `function`, waited for; prints its result as JSON, or fails
/// with how the task ended.
pub(crate) async fn call_once(
    client: &Client,
    function: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<(), String> {
    let record = client
        .spawn(function, args, kwargs, true)
        .await
        .map_err(|e| e.to_string())?;
    let record = if record.status.is_terminal() {
        record
    } else {
        client
            .wait(record.task_id, None)
            .await
            .map_err(|e| e.to_string())?
    };
    print_outcome(&record)
}

/// A finished call: its result printed as JSON, or how it ended as the
/// error.
pub(crate) fn print_outcome(record: &modal_agents::TaskRecord) -> Result<(), String> {
    match (&record.status, &record.result, &record.error) {
        (TaskStatus::Completed, result, _) => {
            println!("{}", result.clone().unwrap_or(Value::Null));
            Ok(())
        }
        _ => Err(crate::ended(record)),
    }
}
