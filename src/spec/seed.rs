//! The seed's deploy fields (`function_code`, `function_name`, `gpu`,
//! `timeout`, `volumes` as names or a mount map, ...) turned into a
//! [`FunctionSpec`], shared by the HTTP API and the agent tools.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{BackendChoice, FunctionSpec, GpuSpec, Limits, RetryPolicy, SpecError};

/// `volumes`: the seed's list of names (each mounted at `/volumes/NAME`) or
/// Modal's mapping `{"/data": "name"}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SeedVolumes {
    /// Volume names.
    Names(Vec<String>),
    /// Mount path to volume name.
    Mounts(BTreeMap<String, String>),
}

/// The seed's deploy fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeedDeploy {
    pub(crate) code: String,
    pub(crate) name: String,
    pub(crate) packages: Vec<String>,
    pub(crate) apt_packages: Vec<String>,
    pub(crate) gpu: Option<Value>,
    pub(crate) timeout: Option<u32>,
    pub(crate) secrets: Vec<String>,
    pub(crate) volumes: Option<SeedVolumes>,
    pub(crate) retries: Option<Value>,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) scaledown_window: Option<u32>,
    pub(crate) min_containers: Option<u32>,
    pub(crate) cpu: Option<f64>,
    pub(crate) memory: Option<Value>,
    pub(crate) limits: Option<Limits>,
    pub(crate) backend: Option<BackendChoice>,
}

impl SeedDeploy {
    /// The spec, validated; errors name the seed's field.
    pub(crate) fn into_spec(self) -> Result<FunctionSpec, SpecError> {
        let mut spec = FunctionSpec::new(self.name, self.code);
        spec.image.python_packages = self.packages;
        spec.image.apt_packages = self.apt_packages;
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
            Some(SeedVolumes::Names(names)) => {
                for name in names {
                    spec.volumes.insert(format!("/volumes/{name}"), name);
                }
            }
            Some(SeedVolumes::Mounts(mounts)) => spec.volumes = mounts,
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// The seed's spelling of a spec field, for errors.
pub(crate) fn seed_field(spec_field: &str, packages: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_fields_become_a_spec() {
        let spec = SeedDeploy {
            code: "def f(x): return x".into(),
            name: "f".into(),
            packages: vec!["numpy".into()],
            gpu: Some(json!(["H100", "A100"])),
            timeout: Some(60),
            volumes: Some(SeedVolumes::Names(vec!["my-volume".into()])),
            retries: Some(json!(2)),
            ..SeedDeploy::default()
        }
        .into_spec()
        .unwrap();
        assert_eq!(spec.volumes["/volumes/my-volume"], "my-volume");
        assert_eq!(spec.retries.max_retries, 2);
        assert_eq!(spec.resources.gpu.unwrap().to_string(), "H100,A100");
    }

    #[test]
    fn fields_keep_the_seed_names() {
        assert_eq!(seed_field("timeout_s", "image_config.packages"), "timeout");
        assert_eq!(
            seed_field("image.python_packages[2]", "image_packages"),
            "image_packages[2]"
        );
        assert_eq!(seed_field("gpu[1]", "x"), "gpu[1]");
    }
}
