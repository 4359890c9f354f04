//! Where a function runs: the local backend, Modal, or whichever fits.

use serde::{Deserialize, Serialize};

use super::SpecError;

/// Where a function runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Local containers when this machine can ever run the function, else
    /// Modal when credentials exist, else the deploy fails naming what was
    /// asked (the default).
    #[default]
    Auto,
    /// Warm local containers.
    Local,
    /// Modal.
    Modal,
}

impl BackendChoice {
    pub(crate) fn is_auto(&self) -> bool {
        *self == BackendChoice::Auto
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "local" => Ok(BackendChoice::Local),
            "modal" => Ok(BackendChoice::Modal),
            _ => Err(SpecError::invalid("backend", s, "local, modal or auto")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_name_what_is_accepted() {
        assert_eq!("MODAL".parse::<BackendChoice>(), Ok(BackendChoice::Modal));
        assert_eq!(BackendChoice::default(), BackendChoice::Auto);
        let err = "cloud".parse::<BackendChoice>().unwrap_err();
        assert_eq!(err.field(), "backend");
        assert!(err.to_string().contains("local, modal or auto"), "{err}");
        assert!(serde_json::from_str::<BackendChoice>("\"gpu\"").is_err());
    }
}
