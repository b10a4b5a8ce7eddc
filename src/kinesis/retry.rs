//! Retry policy: which failures are worth another attempt, and how long to wait.

use std::time::Duration;

use rand::Rng;

/// Error codes that refuse the whole stream until an operator acts (creates the stream,
/// grants access, enables the KMS key): every record would fail alike, so the stream's
/// records wait in its spool while the stream is probed, instead of being given up on.
const STREAM_REFUSED: &[&str] = &[
    "ResourceNotFoundException",
    "AccessDeniedException",
    "KMSDisabledException",
    "KMSNotFoundException",
    "KMSInvalidStateException",
    "KMSAccessDeniedException",
    "KMSOptInRequired",
    "UnrecognizedClientException",
];

/// Error codes that blame one record (the request service bisects a request until the bad
/// entry stands alone): only that record is given up on, to the dead-letter file.
const RECORD_REFUSED: &[&str] = &["ValidationException", "InvalidArgumentException"];

/// What an error code says to do with the records it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later: throttling, internal failures, timeouts, expired credentials (which
    /// the SDK re-resolves), and codes we do not know.
    Transient,
    /// The stream takes no record until its cause is fixed.
    StreamRefused,
    /// This record will never be taken.
    RecordRefused,
}

pub fn classify(code: Option<&str>) -> ErrorClass {
    match code {
        Some(c) if STREAM_REFUSED.contains(&c) => ErrorClass::StreamRefused,
        Some(c) if RECORD_REFUSED.contains(&c) => ErrorClass::RecordRefused,
        _ => ErrorClass::Transient,
    }
}

/// Whether a request-level error code is worth retrying at once.
pub fn is_retryable(code: Option<&str>) -> bool {
    classify(code) == ErrorClass::Transient
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
        for stream_level in [
            "AccessDeniedException",
            "KMSDisabledException",
            "ResourceNotFoundException",
        ] {
            assert_eq!(classify(Some(stream_level)), ErrorClass::StreamRefused);
        }
        assert_eq!(
            classify(Some("ValidationException")),
            ErrorClass::RecordRefused
        );
        assert_eq!(classify(Some("InternalFailure")), ErrorClass::Transient);
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
