//! Deploying a function: the seed's request (`function_code`,
//! `function_name`, `gpu`, `timeout`, `volumes` as names or a mount map,
//! ...), its answer, and a deployed function as listed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::ToSchema;

use super::schema::from_json;
use crate::registry::FunctionInfo;
use crate::spec::{BackendChoice, FunctionSpec, GpuSpec, Limits, RetryPolicy, SpecError};

/// `image_config`: Python packages (`packages`, the seed's name) and apt
/// packages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// pip requirements.
    #[serde(
        default,
        alias = "python_packages",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub packages: Vec<String>,
    /// Debian packages (Modal backend).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apt_packages: Vec<String>,
}

impl ImageConfig {
    fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.apt_packages.is_empty()
    }
}

/// `volumes`: the seed's list of names (each mounted at `/volumes/NAME`) or
/// Modal's mapping `{"/data": "name"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum VolumeMounts {
    /// Volume names, each mounted at `/volumes/NAME`.
    Names(Vec<String>),
    /// Mount path to volume name.
    Mounts(BTreeMap<String, String>),
}

fn gpu_schema() -> RefOr<Schema> {
    from_json(json!({
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": "T4, L4, A10, L40S, A100, A100-40GB, A100-80GB, RTX-PRO-6000, H100, H100!, H200, B200, B200+; optional :N count; or an ordered fallback list"
    }))
}

fn memory_schema() -> RefOr<Schema> {
    from_json(json!({
        "oneOf": [
            {"type": "integer", "minimum": 128, "maximum": 4_194_304},
            {"type": "array", "items": {"type": "integer", "minimum": 128, "maximum": 4_194_304},
             "minItems": 2, "maxItems": 2}
        ],
        "description": "MiB: a request (reserved), or [request, limit] to set a hard limit too"
    }))
}

fn retries_schema() -> RefOr<Schema> {
    from_json(json!({
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": 10},
            {"type": "object", "additionalProperties": false, "properties": {
                "max_retries": {"type": "integer", "minimum": 0, "maximum": 10},
                "initial_delay_s": {"type": "number", "minimum": 0, "maximum": 60},
                "backoff_coefficient": {"type": "number", "minimum": 1, "maximum": 10},
                "max_delay_s": {"type": "number", "minimum": 1, "maximum": 60}
            }}
        ],
        "description": "retries after a failed input: a count, or a policy with backoff"
    }))
}

/// The seed's deploy request, for `POST /deploy-function`, the
/// `deploy_modal_function` tool and [`Client::deploy`]. Build one with
/// [`DeployRequest::new`] and the public fields.
///
/// [`Client::deploy`]: crate::client::Client::deploy
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Python source defining the function.
    pub function_code: String,
    /// The function's name (a Python identifier).
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    pub function_name: String,
    /// The image: pip and apt packages.
    #[serde(default, skip_serializing_if = "ImageConfig::is_empty")]
    pub image_config: ImageConfig,
    /// pip requirements; shorthand for `image_config.packages`.
    #[serde(default, alias = "packages", skip_serializing_if = "Vec::is_empty")]
    pub image_packages: Vec<String>,
    /// A GPU type (`T4`, `A100-80GB:2`, ...) or an ordered fallback list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = gpu_schema)]
    pub gpu: Option<Value>,
    /// Per-input timeout in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout: Option<u32>,
    /// CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 512)]
    pub cpu: Option<f64>,
    /// Memory in MiB: a number is a request (reserved); a pair
    /// `[request, limit]` also sets a hard limit (Modal's
    /// `memory=(request, limit)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = memory_schema)]
    pub memory: Option<Value>,
    /// Retries: a count 0..=10 or `{max_retries, initial_delay_s,
    /// backoff_coefficient, max_delay_s}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = retries_schema)]
    pub retries: Option<Value>,
    /// Secret names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Volume names (mounted at `/volumes/NAME`) or `{mount path: name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<VolumeMounts>,
    /// Containers at most (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrency: Option<u32>,
    /// Seconds an idle container stays warm before it is retired and gives
    /// back what it reserved (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2, maximum = 1200)]
    pub scaledown_window: Option<u32>,
    /// Containers kept warm even when idle, at most `max_concurrency`
    /// (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1000)]
    pub min_containers: Option<u32>,
    /// Limits on each container (address space, CPU time, open files, file
    /// size, processes, network: off in the local sandbox unless true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Where it runs: `local`, `modal` or `auto` (default: `auto`, local
    /// unless this machine cannot run it and Modal credentials exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendChoice>,
}

impl DeployRequest {
    /// A request with the name and code; set the rest on the fields.
    pub fn new(function_name: impl Into<String>, function_code: impl Into<String>) -> Self {
        DeployRequest {
            function_name: function_name.into(),
            function_code: function_code.into(),
            ..DeployRequest::default()
        }
    }

    /// The spec, validated; an error names the request's field
    /// (`timeout`, `image_config.packages[2]`, `memory[1]`), not the spec's.
    pub fn into_spec(self) -> Result<FunctionSpec, SpecError> {
        // Both lists become one; an index into it names the list it came from.
        let in_config = self.image_config.packages.len();
        let packages = if self.image_packages.is_empty() {
            "image_config.packages"
        } else {
            "image_packages"
        };
        self.build().map_err(|e| {
            e.with_field(|field| match package_index(field) {
                Some((i, rest)) if i < in_config => format!("image_config.packages[{i}]{rest}"),
                Some((i, rest)) => format!("image_packages[{}]{rest}", i - in_config),
                None => wire_field(field, packages),
            })
        })
    }

    fn build(self) -> Result<FunctionSpec, SpecError> {
        let mut spec = FunctionSpec::new(self.function_name, self.function_code);
        spec.image.python_packages = self.image_config.packages;
        spec.image.python_packages.extend(self.image_packages);
        spec.image.apt_packages = self.image_config.apt_packages;
        spec.secrets = self.secrets;
        if let Some(t) = self.timeout {
            spec.timeout_s = t;
        }
        if let Some(r) = self.retries {
            spec.retries = serde_json::from_value::<RetryPolicy>(r.clone()).map_err(|e| {
                SpecError::invalid(
                    "retries",
                    r,
                    format!("a count from 0 to 10 or a retry policy object ({e})"),
                )
            })?;
        }
        spec.max_concurrency = self.max_concurrency;
        if let Some(s) = self.scaledown_window {
            spec.scaledown_window = s;
        }
        spec.min_containers = self.min_containers.unwrap_or(0);
        spec.limits = self.limits.unwrap_or_default();
        spec.backend = self.backend.unwrap_or_default();
        spec.resources.cpu = self.cpu;
        match self.memory {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                spec.resources.memory_mib = n.as_u64();
            }
            Some(Value::Array(pair))
                if pair.len() == 2 && pair.iter().all(|v| v.as_u64().is_some()) =>
            {
                spec.resources.memory_mib = pair[0].as_u64();
                spec.resources.memory_limit_mib = pair[1].as_u64();
            }
            Some(other) => {
                return Err(SpecError::invalid(
                    "memory",
                    other,
                    "MiB as a whole number (a request) or [request, limit] (a hard limit too)",
                ))
            }
        }
        spec.resources.gpu = match self.gpu {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.parse::<GpuSpec>()?),
            Some(Value::Array(items)) => {
                let mut names = Vec::new();
                for (i, v) in items.iter().enumerate() {
                    names.push(v.as_str().map(str::to_owned).ok_or_else(|| {
                        SpecError::invalid(format!("gpu[{i}]"), v, "a GPU type name")
                    })?);
                }
                Some(GpuSpec::fallback(names)?)
            }
            Some(other) => {
                return Err(SpecError::invalid(
                    "gpu",
                    other,
                    "a GPU type or a list of GPU types",
                ))
            }
        };
        match self.volumes {
            None => {}
            Some(VolumeMounts::Names(names)) => {
                for name in names {
                    spec.volumes.insert(format!("/volumes/{name}"), name);
                }
            }
            Some(VolumeMounts::Mounts(mounts)) => spec.volumes = mounts,
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// `image.python_packages[3]...` -> (3, "...").
fn package_index(spec_field: &str) -> Option<(usize, &str)> {
    let rest = spec_field.strip_prefix("image.python_packages[")?;
    let (index, rest) = rest.split_once(']')?;
    Some((index.parse().ok()?, rest))
}

/// The request's spelling of a spec field (`timeout_s` is `timeout`), for
/// errors; `packages` names where the request put its pip packages.
pub(crate) fn wire_field(spec_field: &str, packages: &str) -> String {
    let renames = [
        ("name", "function_name"),
        ("code", "function_code"),
        ("entrypoint", "function_name"),
        ("timeout_s", "timeout"),
        ("image.python_packages", packages),
        ("image.apt_packages", "image_config.apt_packages"),
        ("resources.cpu", "cpu"),
        ("resources.memory_mib", "memory"),
        ("resources.memory_limit_mib", "memory[1]"),
        ("retries.max_retries", "retries"),
    ];
    for (from, to) in renames {
        if let Some(rest) = spec_field.strip_prefix(from) {
            if rest.is_empty() || rest.starts_with('[') {
                return format!("{to}{rest}");
            }
        }
    }
    spec_field.to_owned()
}

/// The answer to a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deployed {
    /// A fresh id per deployment.
    pub function_id: String,
    /// The function's name.
    pub function_name: String,
    /// `registered`.
    pub status: String,
    /// What of the request the runtime does not enforce where the function
    /// runs (without a sandbox: `limits.network`, `limits.processes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl From<&FunctionInfo> for Deployed {
    fn from(info: &FunctionInfo) -> Self {
        Deployed {
            function_id: info.function_id.to_string(),
            function_name: info.function_name.clone(),
            status: "registered".into(),
            warnings: info.warnings.clone(),
        }
    }
}

/// A deployed function, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionView {
    /// A fresh id per deployment.
    pub function_id: String,
    /// The function's name.
    pub function_name: String,
    /// The backend it was placed on.
    pub backend: String,
    /// When it was deployed (RFC 3339).
    pub deployed_at: String,
    /// The spec as deployed (secret names only, never values).
    #[schema(value_type = Object)]
    pub spec: Value,
}

impl From<FunctionInfo> for FunctionView {
    fn from(f: FunctionInfo) -> Self {
        FunctionView {
            function_id: f.function_id.to_string(),
            function_name: f.function_name,
            backend: f.backend,
            deployed_at: f
                .deployed_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            spec: serde_json::to_value(&f.spec).unwrap_or(Value::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_fields_become_a_spec() {
        let spec = DeployRequest {
            image_packages: vec!["numpy".into()],
            gpu: Some(json!(["H100", "A100"])),
            timeout: Some(60),
            volumes: Some(VolumeMounts::Names(vec!["my-volume".into()])),
            retries: Some(json!(2)),
            ..DeployRequest::new("f", "def f(x): return x")
        }
        .into_spec()
        .unwrap();
        assert_eq!(spec.volumes["/volumes/my-volume"], "my-volume");
        assert_eq!(spec.retries.max_retries, 2);
        assert_eq!(spec.image.python_packages, ["numpy"]);
        assert_eq!(spec.resources.gpu.unwrap().to_string(), "H100,A100");
    }

    #[test]
    fn errors_name_the_request_field() {
        let field = |req: DeployRequest| match req.into_spec().unwrap_err() {
            SpecError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        let base = || DeployRequest::new("f", "def f(x): return x");
        assert_eq!(
            field(DeployRequest {
                timeout: Some(0),
                ..base()
            }),
            "timeout"
        );
        let bad = vec!["ok".to_owned(), "no spaces".to_owned()];
        assert_eq!(
            field(DeployRequest {
                image_packages: bad.clone(),
                ..base()
            }),
            "image_packages[1]"
        );
        assert_eq!(
            field(DeployRequest {
                image_config: ImageConfig {
                    packages: bad,
                    ..ImageConfig::default()
                },
                ..base()
            }),
            "image_config.packages[1]"
        );
        let both = DeployRequest {
            image_config: ImageConfig {
                packages: vec!["numpy".into(), "pandas".into()],
                ..ImageConfig::default()
            },
            image_packages: vec!["ok".into(), "bad pkg".into()],
            ..base()
        };
        assert_eq!(field(both), "image_packages[1]", "indexed in its own list");
        let both = DeployRequest {
            image_config: ImageConfig {
                packages: vec!["bad pkg".into()],
                ..ImageConfig::default()
            },
            image_packages: vec!["ok".into()],
            ..base()
        };
        assert_eq!(field(both), "image_config.packages[0]");
        assert_eq!(
            field(DeployRequest {
                memory: Some(json!([256, 64])),
                ..base()
            }),
            "memory[1]"
        );
    }

    #[test]
    fn fields_keep_the_seed_names() {
        assert_eq!(wire_field("timeout_s", "image_config.packages"), "timeout");
        assert_eq!(
            wire_field("image.python_packages[2]", "image_packages"),
            "image_packages[2]"
        );
        assert_eq!(wire_field("gpu[1]", "x"), "gpu[1]");
    }

    /// The schema the tools and the OpenAPI document show says exactly
    /// what validation accepts: each bound is accepted, one past it is
    /// refused, naming the field.
    #[test]
    fn schema_bounds_are_the_bounds_validation_enforces() {
        let schema = crate::wire::json_schema::<DeployRequest>();
        let props = &schema["properties"];
        let limits = props["limits"]["properties"].clone();
        let mut checked = 0;
        let top = [
            "timeout",
            "max_concurrency",
            "scaledown_window",
            "min_containers",
        ];
        let nested = [
            "memory_mib",
            "cpu_s",
            "open_files",
            "file_size_mib",
            "processes",
        ];
        let cases = top
            .iter()
            .map(|f| (props[*f].clone(), f.to_string(), None))
            .chain(
                nested
                    .iter()
                    .map(|f| (limits[*f].clone(), format!("limits.{f}"), Some(*f))),
            );
        for (prop, field, in_limits) in cases {
            let (min, max) = (
                prop["minimum"].as_i64().unwrap(),
                prop["maximum"].as_i64().unwrap(),
            );
            let request = |v: i64| {
                let mut body = json!({"function_code": "def f(x): return x", "function_name": "f"});
                match in_limits {
                    Some(f) => body["limits"] = json!({ f: v }),
                    None => body[field.as_str()] = json!(v),
                }
                serde_json::from_value::<DeployRequest>(body).map_err(|e| e.to_string())
            };
            for ok in [min, max] {
                let spec = request(ok).unwrap().into_spec();
                assert!(spec.is_ok(), "{field} = {ok}: {spec:?}");
            }
            for bad in [min - 1, max + 1] {
                match request(bad) {
                    // Below zero does not even parse as a count.
                    Err(_) if bad < 0 => {}
                    Ok(req) => match req.into_spec() {
                        Err(SpecError::Invalid { field: named, .. }) => {
                            assert_eq!(named, field, "{field} = {bad}")
                        }
                        other => panic!("{field} = {bad} accepted: {other:?}"),
                    },
                    Err(e) => panic!("{field} = {bad}: {e}"),
                }
            }
            checked += 1;
        }
        assert_eq!(checked, 9);
    }

    /// The same for the fractional bounds: CPU cores and the retry policy.
    #[test]
    fn number_bounds_are_the_bounds_validation_enforces() {
        let schema = crate::wire::json_schema::<DeployRequest>();
        let props = &schema["properties"];
        let policy = props["retries"]["oneOf"]
            .as_array()
            .and_then(|alts| alts.iter().find(|a| a["type"] == "object"))
            .expect("a retry policy object")["properties"]
            .clone();
        let cases = [
            ("cpu", props["cpu"].clone(), None),
            (
                "retries.initial_delay_s",
                policy["initial_delay_s"].clone(),
                Some("initial_delay_s"),
            ),
            (
                "retries.backoff_coefficient",
                policy["backoff_coefficient"].clone(),
                Some("backoff_coefficient"),
            ),
            (
                "retries.max_delay_s",
                policy["max_delay_s"].clone(),
                Some("max_delay_s"),
            ),
        ];
        for (field, prop, in_policy) in cases {
            let hi = prop["maximum"].as_f64().unwrap();
            let (ok_lo, bad_lo) = match prop["minimum"].as_f64() {
                Some(lo) => (lo, lo - 0.5),
                None => {
                    let lo = prop["exclusiveMinimum"].as_f64().unwrap();
                    (lo + 0.5, lo)
                }
            };
            let spec = |v: f64| {
                let mut req = DeployRequest::new("f", "def f(x): return x");
                match in_policy {
                    Some(f) => req.retries = Some(json!({ f: v })),
                    None => req.cpu = Some(v),
                }
                req.into_spec()
            };
            for ok in [ok_lo, hi] {
                assert!(spec(ok).is_ok(), "{field} = {ok}: {:?}", spec(ok));
            }
            for bad in [bad_lo, hi + 0.5] {
                match spec(bad) {
                    Err(SpecError::Invalid { field: named, .. }) => {
                        assert_eq!(named, field, "{field} = {bad}")
                    }
                    other => panic!("{field} = {bad} accepted: {other:?}"),
                }
            }
        }
    }
}
