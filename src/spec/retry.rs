//! Retry policy for failed inputs, with Modal's bounds and defaults.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::SpecError;

/// How often, and after what delay, a failed input is tried again.
///
/// The delay before retry `n` (1-based) is
/// `min(initial_delay_s * backoff_coefficient^(n-1), max_delay_s)`.
/// Deserializes from a bare count (`"retries": 3`) or the full object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt, 0..=10 (default 0).
    pub max_retries: u32,
    /// Delay before the first retry in seconds, 0..=60 (default 1).
    pub initial_delay_s: f64,
    /// Growth factor of the delay, 1..=10 (default 2).
    pub backoff_coefficient: f64,
    /// Cap on the delay in seconds, 1..=60 (default 60).
    pub max_delay_s: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new(0)
    }
}

impl RetryPolicy {
    /// `max_retries` retries with the default backoff (1 s, x2, at most 60 s).
    pub fn new(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            initial_delay_s: 1.0,
            backoff_coefficient: 2.0,
            max_delay_s: 60.0,
        }
    }

    /// Sets the backoff: first delay, growth factor and cap.
    pub fn backoff(mut self, initial_delay_s: f64, coefficient: f64, max_delay_s: f64) -> Self {
        self.initial_delay_s = initial_delay_s;
        self.backoff_coefficient = coefficient;
        self.max_delay_s = max_delay_s;
        self
    }

    /// The delay before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(64) as i32;
        let secs =
            (self.initial_delay_s * self.backoff_coefficient.powi(exp)).min(self.max_delay_s);
        Duration::from_secs_f64(secs.max(0.0))
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        if self.max_retries > 10 {
            return Err(SpecError::invalid(
                "retries.max_retries",
                self.max_retries,
                "a count from 0 to 10",
            ));
        }
        let checks = [
            ("retries.initial_delay_s", self.initial_delay_s, 0.0, 60.0),
            (
                "retries.backoff_coefficient",
                self.backoff_coefficient,
                1.0,
                10.0,
            ),
            ("retries.max_delay_s", self.max_delay_s, 1.0, 60.0),
        ];
        for (field, value, lo, hi) in checks {
            if !(value.is_finite() && (lo..=hi).contains(&value)) {
                return Err(SpecError::invalid(
                    field,
                    value,
                    format!("a number from {lo} to {hi}"),
                ));
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RetryPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default)]
            max_retries: u32,
            #[serde(default = "one")]
            initial_delay_s: f64,
            #[serde(default = "two")]
            backoff_coefficient: f64,
            #[serde(default = "sixty")]
            max_delay_s: f64,
        }
        fn one() -> f64 {
            1.0
        }
        fn two() -> f64 {
            2.0
        }
        fn sixty() -> f64 {
            60.0
        }
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a retry count from 0 to 4294967295, or {\"max_retries\": N, \"initial_delay_s\", \"backoff_coefficient\", \"max_delay_s\"} with N from 0"
        )]
        enum Repr {
            Count(u32),
            Full(Full),
        }
        Ok(match Repr::deserialize(deserializer)? {
            Repr::Count(n) => RetryPolicy::new(n),
            Repr::Full(f) => RetryPolicy {
                max_retries: f.max_retries,
                initial_delay_s: f.initial_delay_s,
                backoff_coefficient: f.backoff_coefficient,
                max_delay_s: f.max_delay_s,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let p = RetryPolicy::new(5).backoff(0.5, 3.0, 4.0);
        assert_eq!(p.delay(1), Duration::from_millis(500));
        assert_eq!(p.delay(2), Duration::from_millis(1500));
        assert_eq!(p.delay(3), Duration::from_secs(4));
        assert_eq!(p.delay(9), Duration::from_secs(4));
    }

    #[test]
    fn bounds_name_the_field() {
        RetryPolicy::new(10)
            .backoff(0.0, 1.0, 1.0)
            .validate()
            .unwrap();
        let cases = [
            (
                RetryPolicy::new(3).backoff(-1.0, 2.0, 10.0),
                "retries.initial_delay_s",
            ),
            (
                RetryPolicy::new(3).backoff(61.0, 2.0, 10.0),
                "retries.initial_delay_s",
            ),
            (
                RetryPolicy::new(3).backoff(1.0, 0.5, 10.0),
                "retries.backoff_coefficient",
            ),
            (
                RetryPolicy::new(3).backoff(1.0, 11.0, 10.0),
                "retries.backoff_coefficient",
            ),
            (
                RetryPolicy::new(3).backoff(1.0, 2.0, 0.5),
                "retries.max_delay_s",
            ),
            (
                RetryPolicy::new(3).backoff(1.0, 2.0, f64::INFINITY),
                "retries.max_delay_s",
            ),
        ];
        for (policy, field) in cases {
            assert_eq!(policy.validate().unwrap_err().field(), field);
        }
    }

    #[test]
    fn deserializes_count_or_object() {
        let p: RetryPolicy = serde_json::from_str("4").unwrap();
        assert_eq!(p, RetryPolicy::new(4));
        let p: RetryPolicy =
            serde_json::from_str(r#"{"max_retries":2,"initial_delay_s":0}"#).unwrap();
        assert_eq!(p.max_retries, 2);
        assert_eq!(p.delay(1), Duration::ZERO);
    }
}
