//! Checking a function's code before `modal deploy`, without running it:
//! the code is parsed (Python's `ast`) in a separate interpreter that gets
//! it on stdin, an empty environment and, where bubblewrap works, the local
//! backend's sandbox (read-only system, no network, nothing of the runtime's
//! files), so syntax errors and a missing entrypoint are reported at deploy
//! as for the local backend, while none of the code runs on this machine and
//! a parser pushed over by hostile input reaches nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::compute::local::{resolve_python, Bwrap, Jail};
use crate::compute::{BackendError, SandboxMode};
use crate::spec::{FunctionSpec, SpecError};

/// Parses the code; reports its syntax error, or the module-level names it
/// binds. Names bound dynamically (`globals()[...]`, `exec`) are not seen,
/// so the entrypoint check is skipped when the code does either.
const CHECK: &str = r#"
import ast, json, sys
source = sys.stdin.read()
try:
    tree = ast.parse(source, sys.argv[1])
except SyntaxError as e:
    print(json.dumps({"syntax": [e.msg or str(e), e.lineno or 0, e.offset or 0]}))
    sys.exit(0)
names, dynamic = set(), False
def bind(target):
    for node in ast.walk(target):
        if isinstance(node, ast.Name):
            names.add(node.id)
def scan(body):
    global dynamic
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in getattr(node, "targets", [getattr(node, "target", None)]):
                if t is not None:
                    bind(t)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                names.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            bind(node.target)
            scan(node.body); scan(node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    bind(item.optional_vars)
            scan(node.body)
        elif isinstance(node, (ast.If, ast.While)):
            scan(node.body); scan(node.orelse)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            scan(node.body); scan(node.orelse); scan(node.finalbody)
            for h in node.handlers:
                scan(h.body)
        elif isinstance(node, getattr(ast, "Match", ())):
            for case in node.cases:
                scan(case.body)
for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("exec", "globals", "setattr"):
        dynamic = True
scan(tree.body)
print(json.dumps({"defined": sorted(names), "dynamic": dynamic}))
"#;

#[derive(Deserialize)]
struct Checked {
    #[serde(default)]
    syntax: Option<(String, u32, u32)>,
    #[serde(default)]
    defined: Vec<String>,
    #[serde(default)]
    dynamic: bool,
}

/// Where the parser runs: `python` (with its roots, for the sandbox) and
/// bubblewrap when it works here.
#[derive(Debug)]
pub(crate) struct Checker {
    python: PathBuf,
    /// The interpreter's directories, shown read-only in the sandbox (after
    /// its private /tmp: they may live under the host's).
    roots: Vec<PathBuf>,
    bwrap: Option<Arc<Bwrap>>,
}

impl Checker {
    /// Finds `python`'s roots and probes bubblewrap (without it the parser
    /// runs as a plain process with an empty environment).
    pub(crate) async fn new(python: &Path) -> Result<Checker, BackendError> {
        let (python, roots) = resolve_python(Some(python.to_path_buf())).await?;
        let bwrap = Bwrap::detect(SandboxMode::Auto, None, &roots).await?;
        Ok(Checker {
            python,
            roots,
            bwrap,
        })
    }

    fn command(&self) -> tokio::process::Command {
        match &self.bwrap {
            Some(bwrap) => Jail {
                bwrap: bwrap.clone(),
                binds: Vec::new(),
                read_only: self.roots.clone(),
                network: false,
                gpu: false,
            }
            .command(&self.python, &[]),
            None => tokio::process::Command::new(&self.python),
        }
    }
}

/// Checks `spec`'s code without running it.
pub(crate) async fn check_code(checker: &Checker, spec: &FunctionSpec) -> Result<(), BackendError> {
    let failed = |why: String| BackendError::Modal(format!("could not check the code: {why}"));
    let mut child = checker
        .command()
        .arg("-I")
        .arg("-c")
        .arg(CHECK)
        .arg(format!("{}.py", spec.name))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let source = spec.code.clone();
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(source.as_bytes()).await;
    });
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| failed("the parser did not finish in 60 s".into()))?
        .map_err(|e| failed(e.to_string()))?;
    let _ = feed.await;
    let checked: Checked = serde_json::from_slice(&out.stdout).map_err(|e| {
        failed(format!(
            "{e}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ))
    })?;
    if let Some((message, line, column)) = checked.syntax {
        return Err(BackendError::Code(SpecError::Syntax {
            line,
            column,
            message,
        }));
    }
    let entry = spec.python_entrypoint();
    if !checked.dynamic && !checked.defined.iter().any(|n| n == entry) {
        return Err(BackendError::Code(SpecError::MissingFunction {
            name: entry.to_owned(),
            defined: checked.defined,
        }));
    }
    Ok(())
}
