//! Which failures are retried (OTLP spec), how long to wait (exponential backoff with jitter,
//! or the server's `Retry-After` / `RetryInfo`, capped), and parsing of `Retry-After`.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::RetryPolicy;

/// Outcome of one failed export attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AttemptError {
    /// Worth trying again.
    pub retryable: bool,
    /// The server asked to wait this long (`Retry-After`, gRPC `RetryInfo`).
    pub retry_after: Option<Duration>,
    /// For the log.
    pub message: String,
}

impl AttemptError {
    pub(crate) fn retryable(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        AttemptError {
            retryable: true,
            retry_after,
            message: message.into(),
        }
    }

    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        AttemptError {
            retryable: false,
            retry_after: None,
            message: message.into(),
        }
    }
}

/// HTTP statuses the OTLP spec says to retry.
pub fn http_status_is_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// gRPC codes the OTLP spec says to retry (RESOURCE_EXHAUSTED only when the server sent RetryInfo).
pub fn grpc_code_is_retryable(code: tonic::Code, has_retry_info: bool) -> bool {
    use tonic::Code;
    match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => has_retry_info,
        _ => false,
    }
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT` (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Backoff state of one batch.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            next: policy.initial,
        }
    }

    /// The wait before the next attempt: the server's hint if any (capped by `max_interval`),
    /// else the current interval randomized by `jitter`; then the interval grows.
    pub(crate) fn next_wait(&mut self, server_hint: Option<Duration>) -> Duration {
        let p = self.policy;
        let base = self.next.min(p.max_interval);
        let grown = base.as_secs_f64() * p.multiplier;
        self.next = if grown.is_finite() && grown < p.max_interval.as_secs_f64() {
            Duration::try_from_secs_f64(grown).unwrap_or(p.max_interval)
        } else {
            p.max_interval
        };
        if let Some(hint) = server_hint {
            return hint.min(p.max_interval);
        }
        jittered(base, p.jitter)
    }
}

fn jittered(d: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 || d.is_zero() {
        return d;
    }
    let factor: f64 = rand::rng().random_range((1.0 - jitter)..=(1.0 + jitter));
    let secs = d.as_secs_f64() * factor;
    Duration::try_from_secs_f64(secs).unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        // 2015-10-21T07:28:00Z is 1_445_412_480.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_to_cap() {
        let policy = RetryPolicy {
            initial: Duration::from_secs(5),
            multiplier: 1.5,
            max_interval: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
            jitter: 0.0,
        };
        let mut b = Backoff::new(policy);
        let waits: Vec<u64> = (0..7)
            .map(|_| b.next_wait(None).as_millis() as u64)
            .collect();
        assert_eq!(waits, vec![5000, 7500, 11250, 16875, 25312, 30000, 30000]);
        assert_eq!(
            b.next_wait(Some(Duration::from_secs(120))),
            Duration::from_secs(30)
        );
        assert_eq!(
            b.next_wait(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn huge_configured_durations_do_not_panic() {
        let mut b = Backoff::new(RetryPolicy {
            initial: Duration::MAX,
            multiplier: 1e300,
            max_interval: Duration::MAX,
            max_elapsed: Duration::MAX,
            jitter: 1.0,
        });
        for _ in 0..5 {
            let _ = b.next_wait(None);
        }
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), 0.5);
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(15));
        }
    }

    #[test]
    fn classification() {
        for s in [429, 502, 503, 504] {
            assert!(http_status_is_retryable(s));
        }
        for s in [400, 401, 403, 404, 413, 415, 500] {
            assert!(!http_status_is_retryable(s));
        }
        assert!(grpc_code_is_retryable(tonic::Code::Unavailable, false));
        assert!(!grpc_code_is_retryable(
            tonic::Code::ResourceExhausted,
            false
        ));
        assert!(grpc_code_is_retryable(tonic::Code::ResourceExhausted, true));
        assert!(!grpc_code_is_retryable(tonic::Code::InvalidArgument, true));
    }
}
