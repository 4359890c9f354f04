//! What one container may use beyond its resource request: address space,
//! CPU time per input, open files, file size, processes and network. The local
//! backend enforces them with rlimits, a pids cgroup where one can be made and
//! (for the network) its bubblewrap sandbox.

use serde::{Deserialize, Serialize};

use super::SpecError;

/// Default cap on open file descriptors per container.
pub(crate) const DEFAULT_OPEN_FILES: u32 = 1024;
/// Default cap on processes and threads per container.
pub(crate) const DEFAULT_PROCESSES: u32 = 256;

/// Limits on one container of a function. Every field has a default, so `{}`
/// is a valid value.
///
/// ```
/// use modal_agents::spec::Limits;
///
/// let limits: Limits = serde_json::from_str(r#"{"memory_mib": 512, "network": true}"#).unwrap();
/// assert_eq!(limits.memory_mib, Some(512));
/// assert_eq!(limits.open_files, 1024);
/// assert!(limits.allows_network());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Address space in MiB, 128..=4194304; an allocation past it raises
    /// `MemoryError` (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 128, maximum = 4194304)]
    pub memory_mib: Option<u64>,
    /// CPU seconds one input may use, 1..=86400; past it the container is
    /// killed and the input fails (default: none, the timeout still applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub cpu_s: Option<u32>,
    /// Open file descriptors, 16..=1048576 (default 1024).
    #[schema(minimum = 16, maximum = 1048576)]
    pub open_files: u32,
    /// Largest file the container may write, in MiB, 1..=1048576 (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1048576)]
    pub file_size_mib: Option<u64>,
    /// Processes and threads, 4..=65536 (default 256).
    #[schema(minimum = 4, maximum = 65536)]
    pub processes: u32,
    /// Whether the container may open network connections. Unset means the
    /// backend's default: no network in the local sandbox, network on Modal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: None,
            cpu_s: None,
            open_files: DEFAULT_OPEN_FILES,
            file_size_mib: None,
            processes: DEFAULT_PROCESSES,
            network: None,
        }
    }
}

impl Limits {
    /// Whether the spec asks for network access.
    pub fn allows_network(&self) -> bool {
        self.network == Some(true)
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        check(
            "limits.memory_mib",
            self.memory_mib,
            128,
            4 * 1024 * 1024,
            "MiB",
        )?;
        check(
            "limits.cpu_s",
            self.cpu_s.map(u64::from),
            1,
            86_400,
            "CPU seconds",
        )?;
        check(
            "limits.open_files",
            Some(u64::from(self.open_files)),
            16,
            1 << 20,
            "file descriptors",
        )?;
        check(
            "limits.file_size_mib",
            self.file_size_mib,
            1,
            1 << 20,
            "MiB",
        )?;
        check(
            "limits.processes",
            Some(u64::from(self.processes)),
            4,
            65_536,
            "processes",
        )
    }
}

fn check(field: &str, value: Option<u64>, min: u64, max: u64, unit: &str) -> Result<(), SpecError> {
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(SpecError::invalid(
            field,
            v,
            format!("{unit} from {min} to {max}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented() {
        let limits = Limits::default();
        assert!(limits.validate().is_ok());
        assert_eq!(serde_json::from_str::<Limits>("{}").unwrap(), limits);
        assert!(!limits.allows_network());
    }

    #[test]
    fn each_bound_names_its_field() {
        let cases = [
            (r#"{"memory_mib": 64}"#, "limits.memory_mib"),
            (r#"{"cpu_s": 0}"#, "limits.cpu_s"),
            (r#"{"open_files": 3}"#, "limits.open_files"),
            (r#"{"file_size_mib": 0}"#, "limits.file_size_mib"),
            (r#"{"processes": 1}"#, "limits.processes"),
        ];
        for (json, field) in cases {
            let limits: Limits = serde_json::from_str(json).unwrap();
            let err = limits.validate().unwrap_err();
            assert_eq!(err.field(), field, "{json}");
            assert!(err.to_string().contains("from"), "{err}");
        }
        assert!(serde_json::from_str::<Limits>(r#"{"fork": 1}"#).is_err());
    }
}
