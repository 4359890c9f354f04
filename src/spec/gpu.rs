//! GPU requests: a type, an optional count, or an ordered fallback list.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SpecError;

/// The GPU types accepted, in Modal's spelling. Parsing is case-insensitive and
/// accepts `A10G` (the seed's name) as an alias of `A10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GpuType {
    /// NVIDIA T4.
    T4,
    /// NVIDIA L4.
    L4,
    /// NVIDIA A10 (alias `A10G`).
    A10,
    /// NVIDIA L40S.
    L40S,
    /// NVIDIA A100, 40 or 80 GB as available.
    A100,
    /// NVIDIA A100 40 GB.
    A100_40GB,
    /// NVIDIA A100 80 GB.
    A100_80GB,
    /// NVIDIA RTX PRO 6000.
    RtxPro6000,
    /// NVIDIA H100 (may be upgraded to H200 by Modal).
    H100,
    /// NVIDIA H100, never upgraded (`H100!`).
    H100Exact,
    /// NVIDIA H200.
    H200,
    /// NVIDIA B200.
    B200,
    /// NVIDIA B200 or better (`B200+`).
    B200Plus,
}

/// Every accepted GPU type name, for error messages and docs.
pub const GPU_TYPES: &str =
    "T4, L4, A10 (alias A10G), L40S, A100, A100-40GB, A100-80GB, RTX-PRO-6000, H100, H100!, H200, B200, B200+";

impl GpuType {
    /// Modal's canonical name for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            GpuType::T4 => "T4",
            GpuType::L4 => "L4",
            GpuType::A10 => "A10",
            GpuType::L40S => "L40S",
            GpuType::A100 => "A100",
            GpuType::A100_40GB => "A100-40GB",
            GpuType::A100_80GB => "A100-80GB",
            GpuType::RtxPro6000 => "RTX-PRO-6000",
            GpuType::H100 => "H100",
            GpuType::H100Exact => "H100!",
            GpuType::H200 => "H200",
            GpuType::B200 => "B200",
            GpuType::B200Plus => "B200+",
        }
    }

    /// The largest count Modal accepts for this type on one container.
    pub fn max_count(self) -> u8 {
        match self {
            GpuType::A10 => 4,
            _ => 8,
        }
    }

    fn parse(s: &str) -> Option<GpuType> {
        let upper = s.trim().to_ascii_uppercase();
        Some(match upper.as_str() {
            "T4" => GpuType::T4,
            "L4" => GpuType::L4,
            "A10" | "A10G" => GpuType::A10,
            "L40S" => GpuType::L40S,
            "A100" => GpuType::A100,
            "A100-40GB" => GpuType::A100_40GB,
            "A100-80GB" => GpuType::A100_80GB,
            "RTX-PRO-6000" => GpuType::RtxPro6000,
            "H100" => GpuType::H100,
            "H100!" => GpuType::H100Exact,
            "H200" => GpuType::H200,
            "B200" => GpuType::B200,
            "B200+" => GpuType::B200Plus,
            _ => return None,
        })
    }
}

/// One GPU request: a type and how many of it (1 unless `:N` is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GpuRequest {
    /// The GPU type.
    pub kind: GpuType,
    /// How many GPUs of that type one container gets.
    pub count: u8,
}

impl fmt::Display for GpuRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            f.write_str(self.kind.as_str())
        } else {
            write!(f, "{}:{}", self.kind.as_str(), self.count)
        }
    }
}

impl GpuRequest {
    /// Parses `TYPE` or `TYPE:N`, naming `field` in the error.
    fn parse_field(s: &str, field: &str) -> Result<GpuRequest, SpecError> {
        let (name, count) = match s.split_once(':') {
            Some((name, count)) => (name, Some(count)),
            None => (s, None),
        };
        let kind = GpuType::parse(name).ok_or_else(|| {
            SpecError::invalid(field, s, format!("one of {GPU_TYPES}, optionally with :N"))
        })?;
        let count = match count {
            None => 1,
            Some(c) => match c.trim().parse::<u8>() {
                Ok(n) if (1..=kind.max_count()).contains(&n) => n,
                _ => {
                    return Err(SpecError::invalid(
                        field,
                        s,
                        format!(
                            "a count from 1 to {} for {}",
                            kind.max_count(),
                            kind.as_str()
                        ),
                    ))
                }
            },
        };
        Ok(GpuRequest { kind, count })
    }
}

/// A function's GPU request: one choice, or an ordered list of fallbacks that
/// Modal tries in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSpec {
    /// One type and count.
    One(GpuRequest),
    /// Ordered preferences; the first one available is used.
    Fallback(Vec<GpuRequest>),
}

impl GpuSpec {
    /// Parses an ordered fallback list such as `["H100", "A100-80GB:2"]`.
    pub fn fallback<I, S>(choices: I) -> Result<GpuSpec, SpecError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for (i, c) in choices.into_iter().enumerate() {
            list.push(GpuRequest::parse_field(c.as_ref(), &format!("gpu[{i}]"))?);
        }
        match list.len() {
            0 => Err(SpecError::invalid(
                "gpu",
                "[]",
                "a GPU type or a non-empty list of GPU types",
            )),
            1 => Ok(GpuSpec::One(list[0])),
            _ => Ok(GpuSpec::Fallback(list)),
        }
    }

    /// The choices in order of preference.
    pub fn choices(&self) -> &[GpuRequest] {
        match self {
            GpuSpec::One(r) => std::slice::from_ref(r),
            GpuSpec::Fallback(list) => list,
        }
    }
}

impl FromStr for GpuSpec {
    type Err = SpecError;

    /// Parses `"T4"`, `"a100-80gb:2"`, or a comma-separated fallback list.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(',') {
            GpuSpec::fallback(s.split(','))
        } else {
            GpuRequest::parse_field(s, "gpu").map(GpuSpec::One)
        }
    }
}

impl fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.choices().iter().map(|c| c.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for GpuSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuSpec::One(r) => serializer.collect_str(r),
            GpuSpec::Fallback(list) => serializer.collect_seq(list.iter().map(|r| r.to_string())),
        }
    }
}

impl<'de> Deserialize<'de> for GpuSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a GPU such as \"T4\" or \"A100:2\", or a list of them in order of preference"
        )]
        enum Repr {
            One(String),
            List(Vec<String>),
        }
        match Repr::deserialize(deserializer)? {
            Repr::One(s) => s.parse(),
            Repr::List(list) => GpuSpec::fallback(list),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_type_case_insensitively() {
        for name in GPU_TYPES.replace(" (alias A10G)", "").split(", ") {
            let spec: GpuSpec = name.to_lowercase().parse().unwrap();
            assert_eq!(spec.to_string(), name);
        }
        assert_eq!("a10g".parse::<GpuSpec>().unwrap().to_string(), "A10");
    }

    #[test]
    fn counts_are_bounded_per_type() {
        assert_eq!("H100:8".parse::<GpuSpec>().unwrap().choices()[0].count, 8);
        let err = "H100:9".parse::<GpuSpec>().unwrap_err().to_string();
        assert!(
            err.contains("`gpu`") && err.contains("H100:9") && err.contains("1 to 8"),
            "{err}"
        );
        assert!("A10G:4".parse::<GpuSpec>().is_ok());
        let err = "A10G:5".parse::<GpuSpec>().unwrap_err().to_string();
        assert!(err.contains("1 to 4"), "{err}");
        assert!("T4:0".parse::<GpuSpec>().is_err());
        assert!("T4:x".parse::<GpuSpec>().is_err());
    }

    #[test]
    fn unknown_type_names_the_accepted_ones() {
        let err = "V100".parse::<GpuSpec>().unwrap_err().to_string();
        assert!(
            err.contains("V100") && err.contains("H100!") && err.contains("B200+"),
            "{err}"
        );
    }

    #[test]
    fn fallback_lists_keep_order_and_name_the_bad_index() {
        let spec = GpuSpec::fallback(["H100", "a100-80gb:2", "L40S"]).unwrap();
        assert_eq!(spec.to_string(), "H100,A100-80GB:2,L40S");
        let err = GpuSpec::fallback(["H100", "K80"]).unwrap_err().to_string();
        assert!(err.contains("`gpu[1]`") && err.contains("K80"), "{err}");
        assert!(GpuSpec::fallback(Vec::<String>::new()).is_err());
    }

    #[test]
    fn serde_round_trips_string_and_list() {
        let one: GpuSpec = serde_json::from_str("\"t4\"").unwrap();
        assert_eq!(serde_json::to_string(&one).unwrap(), "\"T4\"");
        let list: GpuSpec = serde_json::from_str("[\"H100!\",\"A100\"]").unwrap();
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            "[\"H100!\",\"A100\"]"
        );
        let err = serde_json::from_str::<GpuSpec>("\"Z1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Z1"), "{err}");
    }
}
