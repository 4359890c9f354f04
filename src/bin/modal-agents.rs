//! `modal-agents`: run Python functions on warm local containers from the shell.
//!
//! ```text
//! modal-agents call FILE.py FUNCTION [JSON_ARG ...]     one call, result on stdout
//! modal-agents map  FILE.py FUNCTION [--inputs FILE|-]  one JSON value per input line,
//!                                                       results as JSON lines, in order
//! options: --data-dir DIR (env MODAL_AGENTS_DATA_DIR, default ./modal-agents-data)
//!          --timeout SECONDS   --retries N   --concurrency N
//! ```
//! Logs go to stderr (`RUST_LOG=info` or `debug` for more). Exit status is 0
//! on success and 1 with a one-line reason on failure.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use modal_agents::{FunctionSpec, Runtime, TaskStatus, DEFAULT_DATA_DIR};
use serde_json::{Map, Value};

const USAGE: &str = "usage:
  modal-agents call FILE.py FUNCTION [JSON_ARG ...]
  modal-agents map  FILE.py FUNCTION [--inputs FILE|-]
options:
  --data-dir DIR        runtime data dir (env MODAL_AGENTS_DATA_DIR; default ./modal-agents-data)
  --timeout SECONDS     per-input timeout (default 300)
  --retries N           retries of a failed input (default 0)
  --concurrency N       containers at most (default: cores)
  -h, --help            this help
  -V, --version         version";

struct Args {
    command: String,
    file: PathBuf,
    function: String,
    rest: Vec<String>,
    inputs: Option<String>,
    data_dir: PathBuf,
    timeout: Option<u32>,
    retries: Option<u32>,
    concurrency: Option<u32>,
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a valid number"))
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut inputs = None;
    let mut data_dir = std::env::var_os("MODAL_AGENTS_DATA_DIR").map(PathBuf::from);
    let (mut timeout, mut retries, mut concurrency) = (None, None, None);
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("modal-agents {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--inputs" => inputs = Some(argv.next().ok_or("--inputs needs FILE or -")?),
            "--data-dir" => data_dir = Some(argv.next().ok_or("--data-dir needs a path")?.into()),
            "--timeout" => timeout = Some(number("--timeout", argv.next())?),
            "--retries" => retries = Some(number("--retries", argv.next())?),
            "--concurrency" => concurrency = Some(number("--concurrency", argv.next())?),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    let (Some(command), Some(file), Some(function)) =
        (positional.next(), positional.next(), positional.next())
    else {
        return Err(String::new());
    };
    if command != "call" && command != "map" {
        return Err(format!("unknown command {command:?}; expected call or map"));
    }
    Ok(Args {
        command,
        file: file.into(),
        function,
        rest: positional.collect(),
        inputs,
        data_dir: data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        timeout,
        retries,
        concurrency,
    })
}

fn read_inputs(source: Option<&str>) -> Result<Vec<Value>, String> {
    let reader: Box<dyn BufRead> = match source {
        None | Some("-") => Box::new(std::io::stdin().lock()),
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| format!("--inputs {path}: {e}"))?,
        )),
    };
    let mut inputs = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("reading inputs: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        inputs.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("input line {}: not JSON ({e})", n + 1))?,
        );
    }
    Ok(inputs)
}

async fn run(args: Args) -> Result<(), String> {
    let code =
        std::fs::read_to_string(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let mut spec = FunctionSpec::new(&args.function, code);
    if let Some(t) = args.timeout {
        spec = spec.timeout_s(t);
    }
    if let Some(r) = args.retries {
        spec = spec.retries(r);
    }
    if let Some(c) = args.concurrency {
        spec = spec.max_concurrency(c);
    }
    let rt = Runtime::builder()
        .data_dir(&args.data_dir)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        rt.deploy_function(spec).await.map_err(|e| e.to_string())?;
        if args.command == "call" {
            let call_args = args
                .rest
                .iter()
                .map(|a| serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.clone())))
                .collect();
            let value = rt
                .call(&args.function, call_args, Map::new())
                .await
                .map_err(|e| e.to_string())?;
            println!("{value}");
            return Ok(());
        }
        let inputs = read_inputs(args.inputs.as_deref())?;
        let total = inputs.len() as u64;
        let id = rt
            .run_parallel(&args.function, inputs)
            .await
            .map_err(|e| e.to_string())?;
        let record = rt.wait(id, None).await.map_err(|e| e.to_string())?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut offset = Some(0);
        while let Some(at) = offset {
            let page = rt
                .results(id, at, 10_000)
                .await
                .map_err(|e| e.to_string())?;
            for r in &page.results {
                writeln!(out, "{r}").map_err(|e| e.to_string())?;
            }
            offset = page.next_offset;
        }
        out.flush().map_err(|e| e.to_string())?;
        match record.status {
            TaskStatus::Completed => Ok(()),
            _ => Err(format!(
                "map {}: {}",
                record.status,
                record
                    .error
                    .map_or(format!("{total} inputs"), |e| e.message)
            )),
        }
    }
    .await;
    rt.shutdown().await;
    result
}

fn main() -> ExitCode {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::WARN)
        });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            if why.is_empty() {
                eprintln!("{USAGE}");
            } else {
                eprintln!("modal-agents: {why}\n{USAGE}");
            }
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("modal-agents: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("modal-agents: {why}");
            ExitCode::FAILURE
        }
    }
}
