//! `run`: call a function once, or map it over input lines, printing results
//! as they come; `FILE.py::FUNCTION` deploys that function first (like
//! `modal run`).

mod halt;
mod unordered;

use halt::{emit, Failure, Halt, Stop};

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use modal_agents::client::Client;
use modal_agents::task::{InputsAs, WaitMode};
use modal_agents::wire::DeployRequest;
use modal_agents::{TaskId, TaskStatus};
use serde_json::Value;

/// `modal-agents run`.
#[derive(Args)]
pub(crate) struct RunArgs {
    /// A deployed function's name, or `FILE.py::FUNCTION` to deploy that
    /// function from the file first.
    target: String,
    /// Arguments of one call, each JSON (a bare word is a string). Without
    /// them the function is mapped over the input lines (standard input when
    /// it is not a terminal; with a terminal and no --inputs, one call with
    /// no arguments).
    args: Vec<String>,
    /// A file of one input per line (JSON; a bare word is a string), or `-`
    /// for standard input: map the function over them.
    #[arg(long)]
    inputs: Option<String>,
    /// Each input line is a JSON array: the call's positional arguments.
    #[arg(long, conflicts_with = "kwargs")]
    starmap: bool,
    /// Each input line is a JSON object: the call's keyword arguments.
    #[arg(long)]
    kwargs: bool,
    /// Print each result as soon as it finishes, not in input order: each
    /// input runs as a call of its own (at most 256 in flight), so a slow
    /// input holds back no other.
    #[arg(long)]
    unordered: bool,
}

/// What `run` does with its arguments.
enum Plan {
    Call(Vec<Value>),
    Map(String),
    MapOrCall,
}

impl RunArgs {
    fn plan(&self) -> Result<Plan, String> {
        match (&self.inputs, self.args.is_empty()) {
            (Some(_), false) => Err(format!(
                "run {}: give ARGS for one call or --inputs for a map, not both",
                self.target
            )),
            (Some(source), true) => Ok(Plan::Map(source.clone())),
            (None, false) => Ok(Plan::Call(
                self.args
                    .iter()
                    .map(|a| crate::json_arg(a))
                    .collect::<Result<_, _>>()?,
            )),
            (None, true) if std::io::stdin().is_terminal() => Ok(Plan::Call(Vec::new())),
            // Input lines on stdin, if any: none (`< /dev/null`, cron) is
            // one call with no arguments, not an empty map.
            (None, true) => Ok(Plan::MapOrCall),
        }
    }
}

/// `run`: exit 0 when every call completed, 1 when one failed, 130 when
/// interrupted (the map is cancelled and what finished is printed).
pub(crate) async fn run(client: &Client, a: RunArgs) -> Result<ExitCode, String> {
    let plan = a.plan()?;
    // A function's name cannot hold `::`; a file's path can.
    let function = match a.target.rsplit_once("::") {
        Some((file, function)) => {
            deploy_file(client, Path::new(file), function).await?;
            function.to_owned()
        }
        None => {
            // `jobs.py:score` is a file and a function said with one colon.
            if let Some((file, function)) = a.target.rsplit_once(':') {
                if file.ends_with(".py") && Path::new(file).is_file() {
                    return Err(format!(
                        "run {}: a file's function is named after `::`; did you mean `{file}::{function}`?",
                        a.target
                    ));
                }
            }
            a.target.clone()
        }
    };
    match plan {
        Plan::Call(args) => call_interruptibly(client, &function, args).await,
        Plan::Map(_) | Plan::MapOrCall => {
            let inputs_as = match (a.starmap, a.kwargs) {
                (true, _) => InputsAs::Args,
                (_, true) => InputsAs::Kwargs,
                _ => InputsAs::Argument,
            };
            let source = match &plan {
                Plan::Map(source) => source.as_str(),
                _ => "-",
            };
            if a.unordered {
                let lines = InputLines::open(source, inputs_as)?;
                return match unordered::run(client, &function, lines).await? {
                    Some(code) => Ok(code),
                    None if matches!(plan, Plan::MapOrCall) => {
                        call_interruptibly(client, &function, Vec::new()).await
                    }
                    None => Ok(ExitCode::SUCCESS),
                };
            }
            let inputs = read_inputs(source, inputs_as)?;
            if inputs.is_empty() && matches!(plan, Plan::MapOrCall) {
                return call_interruptibly(client, &function, Vec::new()).await;
            }
            map(client, &function, inputs, inputs_as).await
        }
    }
}

/// One call, waited for (its result printed); Ctrl-C (or SIGTERM, SIGHUP)
/// cancels it, says so with its id, and exits 128 plus the signal.
async fn call_interruptibly(
    client: &Client,
    function: &str,
    args: Vec<Value>,
) -> Result<ExitCode, String> {
    let err = |e: modal_agents::client::ClientError| e.to_string();
    let mut stop = Stop::listen()?;
    let record = client
        .spawn(function, args, Default::default(), false)
        .await
        .map_err(err)?;
    let id = record.task_id;
    let waited = async {
        loop {
            let done = client
                .wait_tasks(&[id], WaitMode::All, Some(Duration::from_secs(55)))
                .await
                .map_err(err)?;
            if done.done {
                return Ok::<_, String>(());
            }
        }
    };
    tokio::select! {
        waited = waited => waited?,
        signal = stop.recv() => {
            client.cancel(id).await.map_err(err)?;
            eprintln!("modal-agents: interrupted: task {id} cancelled");
            return Ok(Halt::Signal(signal).code());
        }
    }
    let record = client.status(id).await.map_err(err)?;
    match (&record.status, &record.result) {
        (TaskStatus::Completed, result) => {
            let line = format!("{}\n", result.clone().unwrap_or(Value::Null));
            match emit(&indicatif::ProgressBar::hidden(), &line) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(Failure::Halt(halt)) => Ok(halt.code()),
                Err(Failure::Error(e)) => Err(e),
            }
        }
        _ => crate::tasks::print_outcome(&record).map(|()| ExitCode::SUCCESS),
    }
}

/// Deploys `function` from `file` under its own name.
async fn deploy_file(client: &Client, file: &Path, function: &str) -> Result<(), String> {
    if function.is_empty() {
        return Err(format!(
            "run {}::: expected FILE.py::FUNCTION, a function's name after `::`",
            file.display()
        ));
    }
    let code = read_local(file, modal_agents::spec::MAX_CODE_BYTES)?;
    let deployed = client
        .deploy(&DeployRequest::new(function, code))
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "deployed {} from {}",
        deployed.function_name,
        file.display()
    );
    Ok(())
}

/// Input lines, one input per non-empty line: JSON, or else the line as a
/// string; with `--starmap` or `--kwargs`, a line that is not a JSON array
/// or object is refused, naming it. A line is read up to
/// [`MAX_INPUT_BYTES`] (`/dev/zero` has no end of line).
pub(crate) struct InputLines {
    reader: Box<dyn BufRead + Send>,
    name: String,
    inputs_as: InputsAs,
    line: u64,
    /// Bytes read so far.
    read: u64,
}

impl InputLines {
    /// The lines of `source` (`-` for standard input).
    fn open(source: &str, inputs_as: InputsAs) -> Result<InputLines, String> {
        let name = if source == "-" {
            "standard input".to_owned()
        } else {
            format!("--inputs {source}")
        };
        let reader: Box<dyn std::io::Read + Send> = if source == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(source).map_err(|e| format!("{name}: {e}"))?)
        };
        Ok(InputLines {
            reader: Box::new(std::io::BufReader::new(reader)),
            name,
            inputs_as,
            line: 0,
            read: 0,
        })
    }
}

impl Iterator for InputLines {
    type Item = Result<Value, String>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::Read;
        loop {
            let mut bytes = Vec::new();
            self.line += 1;
            let got = (&mut self.reader)
                .take(MAX_INPUT_BYTES + 1)
                .read_until(b'\n', &mut bytes);
            match got {
                Err(e) => return Some(Err(format!("{}: {e}", self.name))),
                Ok(0) => return None,
                Ok(n) if n as u64 > MAX_INPUT_BYTES => {
                    return Some(Err(format!(
                        "{} line {}: over {MAX_INPUT_BYTES} bytes, more than one request carries",
                        self.name, self.line
                    )))
                }
                Ok(n) => self.read += n as u64,
            }
            let line = String::from_utf8_lossy(&bytes);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let input = match crate::json_arg(line) {
                Ok(input) => input,
                Err(why) => return Some(Err(format!("input line {}: {why}", self.line))),
            };
            if !self.inputs_as.fits(&input) {
                let flag = if self.inputs_as == InputsAs::Args {
                    "--starmap"
                } else {
                    "--kwargs"
                };
                return Some(Err(format!(
                    "input line {}: {}; with {flag} each line must be {}",
                    self.line,
                    quoted(line),
                    self.inputs_as.expected()
                )));
            }
            return Some(Ok(input));
        }
    }
}

/// Every input of `source`, at most [`MAX_INPUT_BYTES`] of them in all
/// (what one map request may carry).
fn read_inputs(source: &str, inputs_as: InputsAs) -> Result<Vec<Value>, String> {
    let mut lines = InputLines::open(source, inputs_as)?;
    let mut inputs = Vec::new();
    while let Some(input) = lines.next() {
        inputs.push(input?);
        if lines.read > MAX_INPUT_BYTES {
            return Err(format!(
                "{}: over {MAX_INPUT_BYTES} bytes of inputs, the most one map request carries; split them into several runs, or use --unordered",
                lines.name
            ));
        }
    }
    Ok(inputs)
}

/// Most bytes of input lines one `run` sends (the server's default request
/// limit is 32 MiB, with room for the JSON around them).
const MAX_INPUT_BYTES: u64 = 30 << 20;

/// How long to wait for more results before asking again; the wait ends at
/// once when the map does.
const POLL: Duration = Duration::from_millis(200);

/// Results asked for at a time.
const PAGE: u64 = 1000;

/// The map: its id on stderr at once, its results on stdout in input order
/// as they finish (a failed input is its error object), a progress bar on a
/// terminal's stderr; Ctrl-C (or SIGTERM, SIGHUP) cancels it, prints what
/// had finished and exits 128 plus the signal; a closed stdout cancels it
/// and exits 141 quietly.
async fn map(
    client: &Client,
    function: &str,
    inputs: Vec<Value>,
    inputs_as: InputsAs,
) -> Result<ExitCode, String> {
    let mut stop = Stop::listen()?;
    let submitted = client
        .run_parallel_as(function, inputs, inputs_as, false)
        .await
        .map_err(|e| e.to_string())?;
    let id = submitted.task_id;
    eprintln!(
        "map {id}: {} inputs of {function} (modal-agents status|results|cancel {id})",
        submitted.num_tasks
    );
    let bar = progress_bar(submitted.num_tasks)?;
    let mut printer = Printer {
        printed: 0,
        failed: 0,
        bar: &bar,
    };
    let outcome = {
        let follow = async {
            loop {
                if printer.page(client, id).await? == 0 {
                    let waited = client.wait_tasks(&[id], WaitMode::All, Some(POLL)).await?;
                    if waited.done {
                        // What finished between the last page and the end.
                        while printer.page(client, id).await? > 0 {}
                        return Ok(waited.tasks.into_iter().next());
                    }
                }
            }
        };
        tokio::select! {
            ended = follow => ended,
            signal = stop.recv() => Err(Failure::Halt(Halt::Signal(signal))),
        }
    };
    bar.finish_and_clear();
    let halt = match outcome {
        Ok(Some(t)) if t.status == TaskStatus::Completed => return Ok(ExitCode::SUCCESS),
        Ok(Some(t)) => return Err(format!("map {}", t.summary)),
        Ok(None) => return Err(format!("map {id}: no status")),
        Err(Failure::Error(e)) => return Err(e),
        Err(Failure::Halt(halt)) => halt,
    };
    // Another signal leaves at once, saying what may still run.
    tokio::spawn(async move {
        let signal = stop.recv().await;
        eprintln!(
            "modal-agents: interrupted again: map {id} may still be running (modal-agents cancel {id})"
        );
        std::process::exit(128 + signal);
    });
    client.cancel(id).await.map_err(|e| e.to_string())?;
    if halt == Halt::Closed {
        return Ok(halt.code());
    }
    loop {
        match printer.page(client, id).await {
            Ok(0) | Err(Failure::Halt(_)) => break,
            Ok(_) => {}
            Err(Failure::Error(e)) => return Err(e),
        }
    }
    eprintln!(
        "modal-agents: interrupted: map {id} cancelled; the {} of {} results that had finished are printed (modal-agents results {id})",
        printer.printed, submitted.num_tasks
    );
    Ok(halt.code())
}

/// Prints a map's results in input order, a page at a time.
struct Printer<'a> {
    printed: u64,
    failed: u64,
    bar: &'a indicatif::ProgressBar,
}

impl Printer<'_> {
    /// Prints the next page of finished results; how many there were.
    /// Nothing is printed until the whole page is in hand, so dropping this
    /// future (Ctrl-C) never loses or repeats a result.
    async fn page(&mut self, client: &Client, id: TaskId) -> Result<u64, Failure> {
        let page = client.results(id, self.printed, PAGE).await?;
        let n = page.results.len() as u64;
        if n == 0 {
            return Ok(0);
        }
        let mut text = String::new();
        for r in &page.results {
            if r.get("error").is_some_and(Value::is_object) {
                self.failed += 1;
            }
            text.push_str(&r.to_string());
            text.push('\n');
        }
        emit(self.bar, &text)?;
        self.printed += n;
        self.bar.set_position(self.printed);
        if self.failed > 0 {
            self.bar.set_message(format!("{} failed", self.failed));
        }
        Ok(n)
    }
}

/// A bar on stderr (drawn only on a terminal) with a rate in whole inputs
/// per second.
fn progress_bar(total: u64) -> Result<indicatif::ProgressBar, String> {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {rate} eta {eta} {msg}")
            .map_err(|e| e.to_string())?
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            ),
    );
    Ok(bar)
}

/// A line quoted in an error, at most 80 characters of it.
fn quoted(line: &str) -> String {
    match line.char_indices().nth(80) {
        Some((at, _)) => format!("{:?}...", &line[..at]),
        None => format!("{line:?}"),
    }
}

/// A local file's text, refused (naming it) unless it is a regular file of
/// at most `max` bytes: `/dev/zero` or a FIFO would be read without end.
pub(crate) fn read_local(path: &Path, max: usize) -> Result<String, String> {
    let bytes = read_local_bytes(path, max)?;
    String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))
}

/// [`read_local`], as bytes.
pub(crate) fn read_local_bytes(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if meta.len() > max as u64 {
        return Err(format!(
            "{}: {} bytes, over the {max} bytes accepted",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}
