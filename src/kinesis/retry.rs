//! Retry policy: which failures are worth another attempt, and how long to wait.

use std::time::Duration;

use rand::Rng;

/// Error codes that will not go away by retrying; the records are failed at once.
const PERMANENT: &[&str] = &[
    "ResourceNotFoundException",
    "AccessDeniedException",
    "ValidationException",
    "InvalidArgumentException",
    "KMSDisabledException",
    "KMSNotFoundException",
    "KMSInvalidStateException",
    "KMSAccessDeniedException",
    "KMSOptInRequired",
    "UnrecognizedClientException",
];

/// Whether a request-level error code is worth retrying. Unknown codes, throttling, internal
/// failures, timeouts and expired credentials (which the SDK re-resolves) all are.
pub fn is_retryable(code: Option<&str>) -> bool {
    !code.is_some_and(|c| PERMANENT.contains(&c))
}

/// Exponential backoff with full jitter: uniformly random in `0..=min(cap, base * 2^attempt)`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.cap)
    }

    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        Duration::from_micros(rand::rng().random_range(0..=ceiling.as_micros() as u64))
    }

    /// Like [`delay`](Self::delay), but at least half the ceiling ("equal jitter"): for
    /// probes, which must spread out without ever coming back at once.
    pub fn delay_at_least_half(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_micros() as u64;
        Duration::from_micros(rand::rng().random_range(ceiling / 2..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_errors_are_not_retried() {
        assert!(!is_retryable(Some("ResourceNotFoundException")));
        assert!(!is_retryable(Some("AccessDeniedException")));
        assert!(is_retryable(Some("ProvisionedThroughputExceededException")));
        assert!(is_retryable(Some("KMSThrottlingException")));
        assert!(is_retryable(Some("ExpiredTokenException")));
        assert!(is_retryable(None));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(500),
        };
        for attempt in 1..40 {
            let ceiling = Duration::from_millis(10 * (1u64 << attempt.min(20)))
                .min(Duration::from_millis(500));
            for _ in 0..50 {
                assert!(b.delay(attempt) <= ceiling);
            }
        }
        let late: Vec<_> = (0..200).map(|_| b.delay(10)).collect();
        assert!(
            late.iter().any(|d| *d > Duration::from_millis(250)),
            "full jitter spans the range"
        );
    }
}
