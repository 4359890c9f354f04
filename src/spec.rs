//! Function specifications and their validation.
//!
//! A [`FunctionSpec`] is checked in Rust before any backend sees it: every rule
//! below is enforced by [`FunctionSpec::validate`], and each rejection names the
//! field, the bad value and what is accepted. Python-level checks (syntax errors
//! with line and column, a missing function) happen at deploy, in a container.

mod backend;
mod gpu;
mod limits;
mod retry;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use backend::BackendChoice;
pub use gpu::{GpuRequest, GpuSpec, GpuType, GPU_TYPES};
pub use limits::Limits;
pub use retry::RetryPolicy;

/// Why a function spec, or its code, was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A field holds a value outside what is accepted.
    #[error("invalid `{field}`: got {value:?}; expected {expected}")]
    Invalid {
        /// The field, in the spec's own spelling (`resources.cpu`, `gpu[1]`).
        field: String,
        /// The offending value, as given.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// The code does not parse as Python.
    #[error("syntax error in `code` at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
        /// Python's message.
        message: String,
    },
    /// The code parses but does not define the function to call.
    #[error("`code` does not define a function named `{name}` (it defines: {})", display_list(.defined))]
    MissingFunction {
        /// The name that was looked for.
        name: String,
        /// The callables the code does define.
        defined: Vec<String>,
    },
    /// Importing the code raised an exception.
    #[error("`code` raised {kind} while loading: {message}")]
    Load {
        /// The exception type.
        kind: String,
        /// The exception message.
        message: String,
    },
}

/// Largest function source accepted (1 MiB).
pub const MAX_CODE_BYTES: usize = 1 << 20;

fn display_list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing callable".to_owned()
    } else {
        items.join(", ")
    }
}

impl SpecError {
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> SpecError {
        let value = value.to_string();
        SpecError::Invalid {
            field: field.into(),
            // What the caller sent is repeated back cut short.
            value: crate::value::clip(&value, crate::value::MAX_ECHO).into_owned(),
            expected: expected.into(),
        }
    }

    /// The same error with an `Invalid` field spelled as `rename` says (a
    /// wire request's name for a spec field).
    pub(crate) fn with_field(self, rename: impl FnOnce(&str) -> String) -> SpecError {
        match self {
            SpecError::Invalid {
                field,
                value,
                expected,
            } => SpecError::Invalid {
                field: rename(&field),
                value,
                expected,
            },
            other => other,
        }
    }

    /// What is wrong without the field's name (for an error that names
    /// the field itself): `got "x"; expected ...`.
    pub(crate) fn detail(&self) -> String {
        match self {
            SpecError::Invalid {
                value, expected, ..
            } => format!("got {value:?}; expected {expected}"),
            other => other.to_string(),
        }
    }

    /// The field this error is about, when it is about one.
    pub fn field(&self) -> &str {
        match self {
            SpecError::Invalid { field, .. } => field,
            SpecError::Syntax { .. } | SpecError::Load { .. } => "code",
            SpecError::MissingFunction { .. } => "name",
        }
    }
}

/// The container image a function runs in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// pip requirement strings, such as `"numpy==2.1"` (default: none).
    #[serde(default, alias = "packages")]
    pub python_packages: Vec<String>,
    /// Debian packages; honoured by the Modal backend only (default: none).
    #[serde(default)]
    pub apt_packages: Vec<String>,
}

/// Compute resources one container of the function gets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores, fractional allowed (default: unspecified, the backend's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Memory requested in MiB, at least 128 (default: unspecified): what
    /// a container reserves, not a ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Hard memory limit in MiB, at least the request (Modal's `memory=
    /// (request, limit)`): a container past it is killed and its input fails
    /// with `OutOfMemory`. Enforced with a memory cgroup where one can be
    /// made, else as the address-space limit. Without it a container is
    /// still held below the machine's memory (see the local backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u64>,
    /// GPUs (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
}

/// Default per-input timeout, in seconds (Modal's default too).
pub const DEFAULT_TIMEOUT_S: u32 = 300;

/// Default seconds an idle container stays warm (Modal's default).
pub(crate) const DEFAULT_SCALEDOWN_WINDOW_S: u32 = 60;

fn default_scaledown_window() -> u32 {
    DEFAULT_SCALEDOWN_WINDOW_S
}

fn is_default_scaledown_window(s: &u32) -> bool {
    *s == DEFAULT_SCALEDOWN_WINDOW_S
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_timeout() -> u32 {
    DEFAULT_TIMEOUT_S
}

/// A Python function to deploy: its code, image, resources and policies.
///
/// ```
/// use modal_agents::FunctionSpec;
///
/// let spec = FunctionSpec::new("double", "def double(x):\n    return x * 2\n")
///     .timeout_s(60)
///     .retries(2)
///     .volume("/data", "shared");
/// assert!(spec.validate().is_ok());
/// assert!(FunctionSpec::new("double", "").timeout_s(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// `[A-Za-z_][A-Za-z0-9_-]{0,63}`; the deployed function's name.
    pub name: String,
    /// Python source that defines the function.
    pub code: String,
    /// The Python function to call when it differs from `name` (default: `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Image: Python and apt packages.
    #[serde(default)]
    pub image: ImageSpec,
    /// CPU, memory and GPU.
    #[serde(default)]
    pub resources: Resources,
    /// Per-input timeout in seconds, 1..=86400 (default 300).
    #[serde(default = "default_timeout")]
    pub timeout_s: u32,
    /// Retries of a failed input (default: none).
    #[serde(default)]
    pub retries: RetryPolicy,
    /// Names of secrets (from the runtime's [`SecretStore`](crate::secrets::SecretStore))
    /// whose keys become environment variables.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Volumes by absolute mount path: `{"/data": "my-volume"}`.
    #[serde(default)]
    pub volumes: BTreeMap<String, String>,
    /// At most this many containers run the function at once (default: the
    /// backend's pool size, the number of cores for the local backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Seconds a container may sit idle before it is retired and gives back
    /// the CPU, memory and GPUs it reserved, 2..=1200 (Modal's
    /// `scaledown_window`; default 60).
    #[serde(
        default = "default_scaledown_window",
        skip_serializing_if = "is_default_scaledown_window"
    )]
    pub scaledown_window: u32,
    /// Containers kept warm even when idle, 0..=1000 and at most
    /// `max_concurrency` (Modal's `min_containers`; default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_containers: u32,
    /// Limits on each container: address space, CPU time, open files, file
    /// size, processes, network (default: [`Limits::default`]).
    #[serde(default, skip_serializing_if = "is_default_limits")]
    pub limits: Limits,
    /// Where the function runs (default [`BackendChoice::Auto`]).
    #[serde(default, skip_serializing_if = "BackendChoice::is_auto")]
    pub backend: BackendChoice,
}

fn is_default_limits(limits: &Limits) -> bool {
    *limits == Limits::default()
}

impl FunctionSpec {
    /// A spec with defaults for everything but the name and code.
    pub fn new(name: impl Into<String>, code: impl Into<String>) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            code: code.into(),
            entrypoint: None,
            image: ImageSpec::default(),
            resources: Resources::default(),
            timeout_s: DEFAULT_TIMEOUT_S,
            retries: RetryPolicy::default(),
            secrets: Vec::new(),
            volumes: BTreeMap::new(),
            max_concurrency: None,
            scaledown_window: DEFAULT_SCALEDOWN_WINDOW_S,
            min_containers: 0,
            limits: Limits::default(),
            backend: BackendChoice::Auto,
        }
    }

    /// Sets where the function runs.
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the container limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the Python function to call.
    pub fn entrypoint(mut self, entrypoint: impl Into<String>) -> Self {
        self.entrypoint = Some(entrypoint.into());
        self
    }

    /// Sets the per-input timeout.
    pub fn timeout_s(mut self, timeout_s: u32) -> Self {
        self.timeout_s = timeout_s;
        self
    }

    /// Retries each failed input up to `max_retries` times with default backoff.
    pub fn retries(mut self, max_retries: u32) -> Self {
        self.retries = RetryPolicy::new(max_retries);
        self
    }

    /// Sets the full retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retries = policy;
        self
    }

    /// Adds a secret by name.
    pub fn secret(mut self, name: impl Into<String>) -> Self {
        self.secrets.push(name.into());
        self
    }

    /// Mounts volume `name` at absolute path `mount`.
    pub fn volume(mut self, mount: impl Into<String>, name: impl Into<String>) -> Self {
        self.volumes.insert(mount.into(), name.into());
        self
    }

    /// Sets the GPU request.
    pub fn gpu(mut self, gpu: GpuSpec) -> Self {
        self.resources.gpu = Some(gpu);
        self
    }

    /// Sets the CPU cores.
    pub fn cpu(mut self, cores: f64) -> Self {
        self.resources.cpu = Some(cores);
        self
    }

    /// Sets the memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.resources.memory_mib = Some(mib);
        self
    }

    /// Adds a pip requirement.
    pub fn python_package(mut self, requirement: impl Into<String>) -> Self {
        self.image.python_packages.push(requirement.into());
        self
    }

    /// Caps the containers running the function at once.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// The Python function the containers call.
    pub fn python_entrypoint(&self) -> &str {
        self.entrypoint.as_deref().unwrap_or(&self.name)
    }

    /// Checks every rule; the first violation is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        match &self.entrypoint {
            Some(e) if !is_identifier(e) => {
                return Err(SpecError::invalid(
                    "entrypoint",
                    e,
                    "a Python identifier ([A-Za-z_][A-Za-z0-9_]*)",
                ))
            }
            None if !is_identifier(&self.name) => {
                return Err(SpecError::invalid(
                    "entrypoint",
                    "(none)",
                    format!("the Python function to call; required because `name` ({}) is not a Python identifier", self.name),
                ))
            }
            _ => {}
        }
        if self.code.trim().is_empty() {
            return Err(SpecError::invalid(
                "code",
                "",
                "Python source defining the function",
            ));
        }
        if self.code.len() > MAX_CODE_BYTES {
            return Err(SpecError::invalid(
                "code",
                format!("{} bytes of source", self.code.len()),
                format!("Python source of at most {MAX_CODE_BYTES} bytes (ship data in a volume, not in the code)"),
            ));
        }
        if self.code.contains('\0') {
            return Err(SpecError::invalid(
                "code",
                "(source with a NUL byte)",
                "Python source without NUL bytes",
            ));
        }
        self.image.validate()?;
        self.resources.validate()?;
        if !(1..=86_400).contains(&self.timeout_s) {
            return Err(SpecError::invalid(
                "timeout_s",
                self.timeout_s,
                "whole seconds from 1 to 86400",
            ));
        }
        self.retries.validate()?;
        for (i, s) in self.secrets.iter().enumerate() {
            validate_object_name(&format!("secrets[{i}]"), s)?;
        }
        validate_volumes(&self.volumes)?;
        self.limits.validate()?;
        if let Some(n) = self.max_concurrency {
            if !(1..=1000).contains(&n) {
                return Err(SpecError::invalid(
                    "max_concurrency",
                    n,
                    "a container count from 1 to 1000",
                ));
            }
        }
        if !(2..=1200).contains(&self.scaledown_window) {
            return Err(SpecError::invalid(
                "scaledown_window",
                self.scaledown_window,
                "whole seconds from 2 to 1200",
            ));
        }
        let most = self.max_concurrency.unwrap_or(1000);
        if self.min_containers > most {
            return Err(SpecError::invalid(
                "min_containers",
                self.min_containers,
                format!("a container count from 0 to max_concurrency ({most})"),
            ));
        }
        Ok(())
    }
}

/// pip requirements as an image (a function's or a sandbox's) accepts them:
/// a project from the package index, optionally with extras, a version
/// and a marker: it starts with a letter or digit (never an option or a
/// path), has no `:` or `@` (never a URL, whose fetch would run from this
/// machine's network), at most 200 bytes of printable ASCII.
pub(crate) fn validate_python_packages(packages: &[String]) -> Result<(), SpecError> {
    for (i, p) in packages.iter().enumerate() {
        let ok = p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.len() <= 200
            && p.chars()
                .all(|c| c.is_ascii_graphic() && c != ':' && c != '@');
        if !ok {
            return Err(SpecError::invalid(
                format!("image.python_packages[{i}]"),
                p,
                "a requirement from the package index, such as \"numpy==2.1\" or \"requests[socks]>=2\" (printable ASCII without spaces; no paths, options or URLs)",
            ));
        }
    }
    Ok(())
}

impl ImageSpec {
    fn validate(&self) -> Result<(), SpecError> {
        validate_python_packages(&self.python_packages)?;
        for (i, p) in self.apt_packages.iter().enumerate() {
            let (name, version) = p.split_once('=').unwrap_or((p, "x"));
            let ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
                && !version.is_empty()
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-~:".contains(c));
            if !ok {
                return Err(SpecError::invalid(
                    format!("image.apt_packages[{i}]"),
                    p,
                    "a Debian package name such as \"ffmpeg\" or \"curl=7.88.1-10\"",
                ));
            }
        }
        Ok(())
    }
}

impl Resources {
    fn validate(&self) -> Result<(), SpecError> {
        if let Some(cpu) = self.cpu {
            if !(cpu.is_finite() && cpu > 0.0 && cpu <= 512.0) {
                return Err(SpecError::invalid(
                    "resources.cpu",
                    cpu,
                    "a number of cores greater than 0 and at most 512 (fractions allowed)",
                ));
            }
        }
        if let Some(mem) = self.memory_mib {
            if !(128..=4 * 1024 * 1024).contains(&mem) {
                return Err(SpecError::invalid(
                    "resources.memory_mib",
                    mem,
                    "MiB from 128 to 4194304",
                ));
            }
        }
        if let Some(limit) = self.memory_limit_mib {
            let least = self.memory_mib.unwrap_or(128).max(128);
            if !(least..=4 * 1024 * 1024).contains(&limit) {
                return Err(SpecError::invalid(
                    "resources.memory_limit_mib",
                    limit,
                    format!("MiB from the request ({least}) to 4194304"),
                ));
            }
        }
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), SpecError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(SpecError::invalid(
            "name",
            name,
            "1 to 64 characters: a letter or '_' then letters, digits, '_' or '-'",
        ))
    }
}

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Volume and secret names: Modal's rule, 1 to 64 of `[A-Za-z0-9._-]`, not
/// starting with a dot.
pub(crate) fn validate_object_name(field: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(SpecError::invalid(
            field,
            name,
            "1 to 64 characters of letters, digits, '.', '_' or '-', not starting with '.'",
        ))
    }
}

const RESERVED_MOUNTS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr", "/tmp",
];

pub(crate) fn validate_volumes(volumes: &BTreeMap<String, String>) -> Result<(), SpecError> {
    let accepted = "an absolute path other than '/', without '.', '..' or empty segments, outside system directories (/bin /dev /etc /lib /proc /sys /usr /tmp ...)";
    for (mount, name) in volumes {
        let field = format!("volumes[{mount:?}]");
        let segments: Vec<&str> = mount.strip_prefix('/').unwrap_or("").split('/').collect();
        let ok = mount.starts_with('/')
            && mount != "/"
            && segments
                .iter()
                .all(|s| !s.is_empty() && *s != "." && *s != "..")
            && !mount.chars().any(char::is_control)
            && !RESERVED_MOUNTS
                .iter()
                .any(|r| mount == r || mount.starts_with(&format!("{r}/")));
        if !ok {
            return Err(SpecError::invalid(field, mount, accepted));
        }
        validate_object_name(&field, name)?;
    }
    // Every pair, not only neighbours in sort order ("/a" < "/a-b" <
    // "/a/c"): a mount inside another would be made through whatever the
    // outer volume holds (a link planted there, say).
    for outer in volumes.keys() {
        for inner in volumes.keys() {
            if inner.starts_with(&format!("{outer}/")) {
                return Err(SpecError::invalid(
                    format!("volumes[{inner:?}]"),
                    inner,
                    format!("a mount path not nested inside another mount ({outer})"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> FunctionSpec {
        FunctionSpec::new("f", "def f(x):\n    return x\n")
    }

    fn field_of(spec: FunctionSpec) -> String {
        let err = spec.validate().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("expected"),
            "message says what is accepted: {text}"
        );
        err.field().to_owned()
    }

    #[test]
    fn nested_mounts_are_refused_whatever_sorts_between_them() {
        let volumes: BTreeMap<String, String> = [("/a", "v1"), ("/a-b", "v2"), ("/a/c/d", "v3")]
            .into_iter()
            .map(|(m, v)| (m.to_owned(), v.to_owned()))
            .collect();
        let e = validate_volumes(&volumes).unwrap_err();
        assert_eq!(e.field(), "volumes[\"/a/c/d\"]");
    }

    #[test]
    fn defaults_validate() {
        ok().validate().unwrap();
        assert_eq!(ok().timeout_s, 300);
    }

    #[test]
    fn names() {
        for good in ["f", "_x", "my-fn_2", &"a".repeat(64)] {
            let spec = FunctionSpec::new(good, "x = 1").entrypoint("f");
            spec.validate().unwrap();
        }
        for bad in ["", "1f", "-f", "f.g", "f g", "é", &"a".repeat(65)] {
            let err = FunctionSpec::new(bad, "x").validate().unwrap_err();
            assert_eq!(err.field(), "name", "{bad}");
            assert!(err.to_string().contains(&format!("{bad:?}")));
        }
    }

    #[test]
    fn entrypoint_needed_when_name_is_not_an_identifier() {
        assert_eq!(field_of(FunctionSpec::new("my-fn", "x")), "entrypoint");
        assert_eq!(field_of(ok().entrypoint("not-ident")), "entrypoint");
        FunctionSpec::new("my-fn", "def g(): pass")
            .entrypoint("g")
            .validate()
            .unwrap();
    }

    #[test]
    fn code_must_not_be_empty() {
        assert_eq!(field_of(FunctionSpec::new("f", "  \n")), "code");
        assert_eq!(field_of(FunctionSpec::new("f", "x\0")), "code");
    }

    #[test]
    fn timeout_range() {
        ok().timeout_s(1).validate().unwrap();
        ok().timeout_s(86_400).validate().unwrap();
        assert_eq!(field_of(ok().timeout_s(0)), "timeout_s");
        assert_eq!(field_of(ok().timeout_s(86_401)), "timeout_s");
    }

    #[test]
    fn cpu_and_memory() {
        ok().cpu(0.25).memory_mib(128).validate().unwrap();
        assert_eq!(field_of(ok().cpu(0.0)), "resources.cpu");
        assert_eq!(field_of(ok().cpu(-1.0)), "resources.cpu");
        assert_eq!(field_of(ok().cpu(f64::NAN)), "resources.cpu");
        assert_eq!(field_of(ok().memory_mib(127)), "resources.memory_mib");
    }

    #[test]
    fn gpu_in_spec() {
        ok().gpu("A100-80GB:2".parse().unwrap()).validate().unwrap();
        let json = r#"{"name":"f","code":"x","resources":{"gpu":["H100","nope"]}}"#;
        let err = serde_json::from_str::<FunctionSpec>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpu[1]") && err.contains("nope"), "{err}");
    }

    #[test]
    fn retries_bounds() {
        ok().retries(10).validate().unwrap();
        assert_eq!(field_of(ok().retries(11)), "retries.max_retries");
    }

    #[test]
    fn secrets_names() {
        ok().secret("api-keys")
            .secret("db.creds_1")
            .validate()
            .unwrap();
        assert_eq!(field_of(ok().secret("bad name")), "secrets[0]");
        assert_eq!(field_of(ok().secret("ok").secret("")), "secrets[1]");
    }

    #[test]
    fn volume_mounts() {
        ok().volume("/data", "shared")
            .volume("/models/x", "m")
            .validate()
            .unwrap();
        for bad in [
            "data", "/", "/a/../b", "/a//b", "/a/", "/proc", "/tmp/x", "/etc",
        ] {
            let field = field_of(ok().volume(bad, "v"));
            assert!(field.starts_with("volumes["), "{bad}: {field}");
        }
        assert!(field_of(ok().volume("/data", "bad/name")).starts_with("volumes["));
        let nested = ok().volume("/data", "a").volume("/data/sub", "b");
        assert!(nested
            .validate()
            .unwrap_err()
            .to_string()
            .contains("nested"));
    }

    #[test]
    fn max_concurrency_range() {
        ok().max_concurrency(1).validate().unwrap();
        assert_eq!(field_of(ok().max_concurrency(0)), "max_concurrency");
    }

    #[test]
    fn packages() {
        ok().python_package("numpy==2.1").validate().unwrap();
        assert_eq!(
            field_of(ok().python_package("--index-url=http://x")),
            "image.python_packages[0]"
        );
        for bad in [
            "a b",
            "./pkg",
            "/etc/x",
            "\u{e9}t\u{e9}",
            "a\u{1}",
            "",
            "git+https://example.com/x.git",
            "http://127.0.0.1/x.tar.gz",
            "file:///etc",
            "x@https://example.com/x.whl",
        ] {
            assert_eq!(
                field_of(ok().python_package(bad)),
                "image.python_packages[0]",
                "{bad:?}"
            );
        }
        ok().python_package("requests[socks]>=2,<3;python_version>\"3.8\"")
            .validate()
            .unwrap();
        let mut spec = ok();
        spec.image.apt_packages = vec!["ffmpeg".into(), "curl=7.88.1-10".into()];
        spec.validate().unwrap();
        spec.image.apt_packages.push("Bad;rm".into());
        assert_eq!(field_of(spec), "image.apt_packages[2]");
    }

    #[test]
    fn json_defaults_and_unknown_fields() {
        let spec: FunctionSpec =
            serde_json::from_str(r#"{"name":"f","code":"x","retries":3}"#).unwrap();
        assert_eq!(spec.timeout_s, 300);
        assert_eq!(spec.retries.max_retries, 3);
        let err = serde_json::from_str::<FunctionSpec>(r#"{"name":"f","code":"x","gpus":"T4"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpus"), "{err}");
    }
}
