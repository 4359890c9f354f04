//! Parallel code generation (the seed's pattern 2): codegen agents turn
//! component specs into code through a [`CodeGenerator`], check each component
//! before accepting it (Python: compiled and imported in a container on the
//! runtime's compute; Rust: parsed), write it to a volume, and the results are
//! aggregated into one package that is checked again as a whole.
//!
//! The built-in [`TemplateGenerator`] writes real code from a structured spec:
//!
//! ```json
//! {"component": "Processor", "type": "class", "language": "python",
//!  "spec": {"doc": "Processes items.",
//!           "fields": [{"name": "name", "type": "str"}, {"name": "retries", "type": "int", "default": 3}],
//!           "methods": [{"name": "process", "args": [{"name": "item", "type": "str"}],
//!                        "returns": "str", "body": "return item.upper()"}]}}
//! ```
//!
//! A `function` spec has `args`, `returns`, `doc`, `body`; a `module` spec has
//! `constants`, `functions` and `classes`. An LLM-backed generator implements
//! [`CodeGenerator`] and plugs in without changing the agents.

mod llm;
mod python;
mod rust;

pub use llm::{ChatConfig, ChatGenerator};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::{ActorProcessingErr, RpcReplyPort};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{AgentError, AgentKind, Agents};
use crate::runtime::Runtime;
use crate::spec::FunctionSpec;
use crate::supervisor::Slot;
use crate::supervisor::{Serial, SerialActor};

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    /// A class (Python) or struct with an `impl` (Rust).
    Class,
    /// One function.
    Function,
    /// A module of constants, functions and classes.
    Module,
}

/// The language to generate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python (the default).
    #[default]
    Python,
    /// Rust.
    Rust,
}

/// One component to generate: `{component, type, language, spec}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodegenTask {
    /// The component's name (a class, function or module name).
    pub component: String,
    /// What it is.
    #[serde(rename = "type")]
    pub kind: ComponentKind,
    /// The language.
    #[serde(default)]
    pub language: Language,
    /// The generator's input (see the module docs).
    #[serde(default)]
    pub spec: Value,
}

/// Code a generator produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedCode {
    /// The module's file stem.
    pub module: String,
    /// The source.
    pub source: String,
    /// The names the module exports.
    pub exports: Vec<String>,
}

/// Why a component was not produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodegenError {
    /// The spec cannot be turned into code.
    #[error("invalid component spec: {0}")]
    Spec(String),
    /// The code was generated but failed its check.
    #[error("generated code rejected: {0}")]
    Rejected(String),
    /// A generator backend (an LLM, say) failed.
    #[error("generator failed: {0}")]
    Generator(String),
}

/// Produces code for a component. Implement it to plug in an LLM
/// ([`ChatGenerator`] is one over any OpenAI-compatible endpoint).
#[async_trait]
pub trait CodeGenerator: Send + Sync + 'static {
    /// Generates the component.
    async fn generate(&self, task: &CodegenTask) -> Result<GeneratedCode, CodegenError>;

    /// How many times a component the agent's checks reject is handed back
    /// through [`CodeGenerator::revise`] (default 0: a rejection is final).
    fn max_revisions(&self) -> u32 {
        0
    }

    /// Another attempt at `task`, told why `previous` was rejected
    /// (default: generate again).
    async fn revise(
        &self,
        task: &CodegenTask,
        previous: &GeneratedCode,
        error: &str,
    ) -> Result<GeneratedCode, CodegenError> {
        let _ = (previous, error);
        self.generate(task).await
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Field {
    name: String,
    #[serde(default, rename = "type")]
    r#type: Option<String>,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    doc: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionDef {
    name: String,
    #[serde(default)]
    args: Vec<Field>,
    #[serde(default)]
    returns: Option<String>,
    #[serde(default)]
    doc: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassDef {
    name: String,
    #[serde(default)]
    doc: Option<String>,
    #[serde(default)]
    fields: Vec<Field>,
    #[serde(default)]
    methods: Vec<FunctionDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(skip, default = "class_kind")]
    kind: ComponentKind,
    #[serde(default)]
    doc: Option<String>,
    #[serde(default)]
    fields: Vec<Field>,
    #[serde(default)]
    methods: Vec<FunctionDef>,
    #[serde(default)]
    args: Vec<Field>,
    #[serde(default)]
    returns: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    constants: BTreeMap<String, Value>,
    #[serde(default)]
    functions: Vec<FunctionDef>,
    #[serde(default)]
    classes: Vec<ClassDef>,
}

fn class_kind() -> ComponentKind {
    ComponentKind::Class
}

/// `HttpClient` -> `http_client`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The built-in generator: real code from structured specs, no model needed.
#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateGenerator;

#[async_trait]
impl CodeGenerator for TemplateGenerator {
    async fn generate(&self, task: &CodegenTask) -> Result<GeneratedCode, CodegenError> {
        let raw = match &task.spec {
            Value::Null => Value::Object(Map::new()),
            other => other.clone(),
        };
        let mut spec: Spec = serde_json::from_value(raw)
            .map_err(|e| CodegenError::Spec(format!("{}: {e}", task.component)))?;
        spec.kind = task.kind;
        let (source, exports) = match task.language {
            Language::Python => python::generate(&task.component, &spec)?,
            Language::Rust => rust::generate(&task.component, &spec)?,
        };
        Ok(GeneratedCode {
            module: snake_case(&task.component),
            source,
            exports,
        })
    }
}

/// An accepted component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentResult {
    /// The component.
    pub component: String,
    /// Its language.
    pub language: Language,
    /// Its module name.
    pub module: String,
    /// Its file, relative to the volume root.
    pub path: String,
    /// The names it exports.
    pub exports: Vec<String>,
    /// Lines of code.
    pub lines: usize,
    /// The agent that generated it.
    pub agent: String,
}

/// The outcome of a package build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodegenReport {
    /// The package name.
    pub package: String,
    /// The volume it is in.
    pub volume: String,
    /// Accepted components, in task order.
    pub components: Vec<ComponentResult>,
    /// Components that were not accepted, with the reason.
    pub failures: Vec<Value>,
    /// The Python package check: `{init, exports, imports_cleanly}`.
    pub python: Option<Value>,
    /// The Rust crate: `{lib, modules, parses}`.
    pub rust: Option<Value>,
}

const CHECKER: &str = r#"
import importlib, importlib.util, os, sys, tempfile

def _purge(prefix):
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]

def agent_codegen_check(module, source):
    """Compile and import one generated module; return its exported names."""
    compile(source, module + ".py", "exec")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, module + ".py")
        with open(path, "w") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(module, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod
        try:
            spec.loader.exec_module(mod)
        finally:
            _purge(module)
    names = list(getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")]))
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise ImportError("module %s does not define %s" % (module, ", ".join(missing)))
    return names

def agent_codegen_package_check(package, files):
    """Import a whole package from its files; return its __all__."""
    with tempfile.TemporaryDirectory() as d:
        for rel, source in files.items():
            path = os.path.join(d, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(source)
        sys.path.insert(0, d)
        try:
            mod = importlib.import_module(package)
            names = list(mod.__all__)
            missing = [n for n in names if not hasattr(mod, n)]
            if missing:
                raise ImportError("package %s does not export %s" % (package, ", ".join(missing)))
            return names
        finally:
            sys.path.remove(d)
            _purge(package)
"#;

async fn ensure_checker(runtime: &Runtime) -> Result<(), AgentError> {
    for name in ["agent_codegen_check", "agent_codegen_package_check"] {
        if runtime.function(name).is_none() {
            runtime
                .deploy_function(FunctionSpec::new(name, CHECKER).timeout_s(60))
                .await
                .map_err(|e| AgentError::Runtime(Box::new(e)))?;
        }
    }
    Ok(())
}

/// Messages of a [`CodegenAgent`].
pub(crate) enum CodegenAgentMsg {
    /// Generates, checks and stores one component of `package`.
    Generate(
        CodegenTask,
        String,
        RpcReplyPort<Result<ComponentResult, CodegenError>>,
    ),
    /// Panics (fault injection).
    InjectPanic,
}

/// A codegen agent: the [`Serial`] state it is (re)started from, handling its messages one at a time.
#[derive(Clone)]
pub(crate) struct CodegenAgent {
    id: String,
    runtime: Runtime,
    generator: Arc<dyn CodeGenerator>,
    volume: String,
}

impl CodegenAgent {
    async fn generate(
        &self,
        task: CodegenTask,
        package: &str,
    ) -> Result<ComponentResult, CodegenError> {
        let mut code = self.generator.generate(&task).await?;
        let mut revisions = 0;
        let path = loop {
            match self.check(&task, &code, package).await {
                Ok(path) => break path,
                Err(CodegenError::Rejected(why) | CodegenError::Spec(why))
                    if revisions < self.generator.max_revisions() =>
                {
                    revisions += 1;
                    tracing::info!(agent = %self.id, component = %task.component, revisions, "component rejected; back to the generator");
                    code = self.generator.revise(&task, &code, &why).await?;
                }
                Err(e) => return Err(e),
            }
        };
        self.runtime
            .volumes()
            .put_file(&self.volume, &path, code.source.as_bytes())
            .await
            .map_err(|e| CodegenError::Rejected(format!("cannot store {path}: {e}")))?;
        Ok(ComponentResult {
            component: task.component,
            language: task.language,
            module: code.module,
            path,
            exports: code.exports,
            lines: code.source.lines().count(),
            agent: self.id.clone(),
        })
    }

    /// The agent's checks of generated code: where it is stored if it passes.
    async fn check(
        &self,
        task: &CodegenTask,
        code: &GeneratedCode,
        package: &str,
    ) -> Result<String, CodegenError> {
        let args = self;
        if !crate::spec::is_identifier(&code.module) {
            return Err(CodegenError::Spec(format!(
                "module name {:?} is not an identifier",
                code.module
            )));
        }
        let path = match task.language {
            Language::Python => {
                let exported = args
                    .runtime
                    .call(
                        "agent_codegen_check",
                        vec![json!(code.module), json!(code.source)],
                        Map::new(),
                    )
                    .await
                    .map_err(|e| CodegenError::Rejected(e.to_string()))?;
                let mut missing: Vec<&String> = code
                    .exports
                    .iter()
                    .filter(|e| !exported.as_array().is_some_and(|a| a.contains(&json!(e))))
                    .collect();
                missing.sort();
                if !missing.is_empty() {
                    return Err(CodegenError::Rejected(format!(
                        "module does not export {missing:?}"
                    )));
                }
                format!("{package}/{}.py", code.module)
            }
            Language::Rust => {
                rust::check(&code.source)?;
                format!("{package}/src/{}.rs", code.module)
            }
        };
        Ok(path)
    }
}

impl Serial for CodegenAgent {
    type Msg = CodegenAgentMsg;

    async fn handle(&mut self, message: CodegenAgentMsg) -> Result<(), ActorProcessingErr> {
        match message {
            CodegenAgentMsg::Generate(task, package, reply) => {
                let _ = reply.send(self.generate(task, &package).await);
            }
            CodegenAgentMsg::InjectPanic => {
                panic!("fault injected into codegen agent {}", self.id)
            }
        }
        Ok(())
    }
}

/// A handle to a codegen agent; it follows the agent across restarts.
#[derive(Clone)]
pub struct CodegenHandle {
    id: String,
    slot: Slot<CodegenAgentMsg>,
}

impl std::fmt::Debug for CodegenHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodegenHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl CodegenHandle {
    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Generates, checks and stores one component of `package`.
    pub async fn generate(
        &self,
        task: CodegenTask,
        package: &str,
    ) -> Result<ComponentResult, AgentError> {
        let outcome = self
            .slot
            .call_once(Duration::from_secs(300), |reply| {
                CodegenAgentMsg::Generate(task, package.to_owned(), reply)
            })
            .await?;
        outcome.map_err(|e| AgentError::Codegen {
            agent: self.id.clone(),
            error: e,
        })
    }
}

impl Agents {
    /// Starts a codegen agent that writes to `volume` with `generator`.
    pub async fn spawn_codegen(
        &self,
        id: &str,
        generator: Arc<dyn CodeGenerator>,
        volume: &str,
    ) -> Result<CodegenHandle, AgentError> {
        super::validate_agent_id(id)?;
        crate::spec::validate_object_name("volume", volume)?;
        ensure_checker(&self.runtime).await?;
        let (slot, publish) = Slot::new(format!("codegen agent {id}"));
        self.start(
            id,
            AgentKind::Codegen,
            publish,
            SerialActor::<CodegenAgent>::new,
            CodegenAgent {
                id: id.to_owned(),
                runtime: self.runtime.clone(),
                generator,
                volume: volume.to_owned(),
            },
            || CodegenAgentMsg::InjectPanic,
        )
        .await?;
        Ok(CodegenHandle {
            id: id.to_owned(),
            slot,
        })
    }

    /// Generates `tasks` in parallel over `agents` (the seed's
    /// `coordinate_code_generation`) into package `package` on `volume`, then
    /// aggregates: a Python package whose `__init__` exports every component
    /// (imported in a container to prove it), and for Rust a crate root
    /// declaring every module (parsed). A component whose agent crashed is
    /// tried on the next agent; one that fails its check is reported.
    pub async fn generate_package(
        &self,
        package: &str,
        volume: &str,
        tasks: Vec<CodegenTask>,
        agents: &[CodegenHandle],
    ) -> Result<CodegenReport, AgentError> {
        python::check_identifier("package", package).map_err(AgentError::Invalid)?;
        if agents.is_empty() {
            return Err(AgentError::NoAgents {
                kind: AgentKind::Codegen,
                work: "code generation",
            });
        }
        let mut queues: Vec<Vec<(usize, CodegenTask)>> = vec![Vec::new(); agents.len()];
        for (i, task) in tasks.into_iter().enumerate() {
            queues[i % agents.len()].push((i, task));
        }
        let runs = queues.into_iter().enumerate().map(|(a, queue)| async move {
            let mut out = Vec::new();
            for (i, task) in queue {
                let mut result = Err(AgentError::Unknown(String::new()));
                for k in 0..agents.len() {
                    let agent = &agents[(a + k) % agents.len()];
                    result = agent.generate(task.clone(), package).await;
                    if !matches!(result, Err(AgentError::Unavailable(_))) {
                        break;
                    }
                }
                out.push((i, task.component.clone(), result));
            }
            out
        });
        let mut outcomes: Vec<_> = futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect();
        outcomes.sort_by_key(|(i, _, _)| *i);
        let mut components = Vec::new();
        let mut failures = Vec::new();
        for (_, component, result) in outcomes {
            match result {
                Ok(c) => components.push(c),
                Err(e) => failures.push(json!({"component": component, "error": e.to_string()})),
            }
        }
        let modules = |lang: Language| -> Vec<(String, Vec<String>)> {
            components
                .iter()
                .filter(|c| c.language == lang)
                .map(|c| (c.module.clone(), c.exports.clone()))
                .collect()
        };
        let volumes = self.runtime.volumes();
        let store = AgentError::Volume;
        let py = modules(Language::Python);
        let python = if py.is_empty() {
            None
        } else {
            let init = python::package_init(package, &py);
            let init_path = format!("{package}/__init__.py");
            volumes
                .put_file(volume, &init_path, init.as_bytes())
                .await
                .map_err(store)?;
            let mut files = Map::new();
            for stat in volumes
                .list_files(volume, &format!("{package}/"))
                .await
                .map_err(store)?
            {
                if stat.path.ends_with(".py") {
                    let bytes = volumes.get_file(volume, &stat.path).await.map_err(store)?;
                    files.insert(stat.path, json!(String::from_utf8_lossy(&bytes)));
                }
            }
            let checked = self
                .runtime
                .call(
                    "agent_codegen_package_check",
                    vec![json!(package), Value::Object(files)],
                    Map::new(),
                )
                .await;
            Some(match checked {
                Ok(exports) => {
                    json!({"init": init_path, "exports": exports, "imports_cleanly": true})
                }
                Err(e) => {
                    json!({"init": init_path, "imports_cleanly": false, "error": e.to_string()})
                }
            })
        };
        let rs = modules(Language::Rust);
        let rust = if rs.is_empty() {
            None
        } else {
            let lib = rust::crate_root(package, &rs);
            let parses = rust::check(&lib).is_ok();
            let lib_path = format!("{package}/src/lib.rs");
            volumes
                .put_file(volume, &lib_path, lib.as_bytes())
                .await
                .map_err(store)?;
            let manifest = format!(
                "[package]\nname = \"{package}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nserde_json = \"1\"\n"
            );
            volumes
                .put_file(
                    volume,
                    &format!("{package}/Cargo.toml"),
                    manifest.as_bytes(),
                )
                .await
                .map_err(store)?;
            let names: Vec<&String> = rs.iter().map(|(m, _)| m).collect();
            Some(json!({"lib": lib_path, "modules": names, "parses": parses}))
        };
        Ok(CodegenReport {
            package: package.to_owned(),
            volume: volume.to_owned(),
            components,
            failures,
            python,
            rust,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(component: &str, kind: ComponentKind, language: Language, spec: Value) -> CodegenTask {
        CodegenTask {
            component: component.into(),
            kind,
            language,
            spec,
        }
    }

    #[tokio::test]
    async fn python_class_from_spec() {
        let t = task(
            "HttpClient",
            ComponentKind::Class,
            Language::Python,
            json!({"doc": "Talks HTTP.", "fields": [{"name": "retries", "type": "int", "default": 3}, {"name": "base_url", "type": "str"}, {"name": "headers", "type": "dict", "default": {}}],
                   "methods": [{"name": "url", "args": [{"name": "path", "type": "str"}], "returns": "str", "body": "return self.base_url + path"}]}),
        );
        let code = TemplateGenerator.generate(&t).await.unwrap();
        assert_eq!(code.module, "http_client");
        assert_eq!(code.exports, ["HttpClient"]);
        let s = &code.source;
        assert!(
            s.contains("class HttpClient:\n    \"\"\"Talks HTTP.\"\"\""),
            "{s}"
        );
        let required = s.find("base_url: str\n").unwrap();
        assert!(
            required < s.find("retries: int = 3").unwrap(),
            "required fields first: {s}"
        );
        assert!(
            s.contains("headers: dict = field(default_factory=lambda: {})"),
            "{s}"
        );
        assert!(s.contains("def url(self, path: str) -> str:"), "{s}");
    }

    #[tokio::test]
    async fn rust_struct_parses_and_bad_specs_are_refused() {
        let t = task(
            "Counter",
            ComponentKind::Class,
            Language::Rust,
            json!({"fields": [{"name": "count", "type": "int"}], "methods": [{"name": "next", "returns": "int", "body": "self.count + 1"}]}),
        );
        let code = TemplateGenerator.generate(&t).await.unwrap();
        rust::check(&code.source).unwrap();
        assert!(
            code.source.contains("pub struct Counter"),
            "{}",
            code.source
        );
        let bad = task("class", ComponentKind::Class, Language::Python, json!({}));
        assert!(matches!(
            TemplateGenerator.generate(&bad).await,
            Err(CodegenError::Spec(_))
        ));
        let bad = task(
            "f",
            ComponentKind::Function,
            Language::Python,
            json!({"argz": []}),
        );
        let err = TemplateGenerator
            .generate(&bad)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("argz"), "{err}");
        let err = rust::check("pub fn broken( {").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
