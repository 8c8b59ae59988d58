//! When to try again: exponential backoff with jitter between
//! `initial_backoff` and `max_backoff`, at most `max_attempts`.
//!
//! A pure value (no sleeping here): the pipeline stores the resulting time
//! in the ledger as `next_attempt_at`, so a retry survives a restart.
//! The schedule comes from `backon` (see the README for why not `backoff`).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::UploadConfig;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub max_attempts: u32,
    /// Fixed jitter seed, for tests.
    pub seed: Option<u64>,
}

impl RetryPolicy {
    pub fn from_config(u: &UploadConfig) -> RetryPolicy {
        RetryPolicy {
            initial: u.initial_backoff,
            max: u.max_backoff,
            max_attempts: u.max_attempts,
            seed: None,
        }
    }

    /// The wait after the `failed`-th failed attempt (1-based): about
    /// `initial × 2^(failed-1)`, plus up to as much again of jitter so
    /// that files that failed together do not come back together; never
    /// above `max`.
    pub fn delay(&self, failed: u32) -> Duration {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        if let Some(seed) = self.seed {
            builder = builder.with_jitter_seed(seed);
        }
        // 64 doublings reach any cap; iterating further only costs time.
        let n = usize::try_from(failed.clamp(1, 65) - 1).unwrap_or(64);
        builder.build().nth(n).unwrap_or(self.max).min(self.max)
    }

    /// After `failed` failed attempts: how long to wait, or `None` to give up.
    pub fn next(&self, failed: u32) -> Option<Duration> {
        (failed < self.max_attempts).then(|| self.delay(failed))
    }
}

/// How a stage waits after a ledger error: from a quarter second,
/// doubling with jitter, to at most 5 s. Short enough that work resumes
/// within seconds of the ledger writing again (the stages' own writes are
/// what finds that out), long enough that an outage costs no CPU to speak
/// of (RELIABILITY.md, "The ledger's disk fills up mid-run").
pub fn ledger_policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(250),
        max: Duration::from_secs(5),
        max_attempts: u32::MAX,
        seed: None,
    }
}

/// One stage's consecutive ledger failures, and the pause each earns.
#[derive(Debug, Default)]
pub struct LedgerBackoff {
    failures: u32,
}

impl LedgerBackoff {
    /// Another failure: how long to wait before the next call.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        ledger_policy().delay(self.failures)
    }

    /// A call went through: the next failure starts short again.
    pub fn ok(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(seed: u64) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_attempts: 10,
            seed: Some(seed),
        }
    }

    #[test]
    fn grows_exponentially_within_jitter_bounds() {
        for seed in 0..50 {
            let p = policy(seed);
            for failed in 1..=8u32 {
                let base = Duration::from_secs(1 << (failed - 1));
                let d = p.delay(failed);
                assert!(d >= base, "attempt {failed}: {d:?} < {base:?}");
                assert!(d < base * 2, "attempt {failed}: {d:?} >= {:?}", base * 2);
            }
        }
    }

    #[test]
    fn capped_at_max() {
        let p = policy(7);
        for failed in 9..40 {
            let d = p.delay(failed);
            assert!(d <= Duration::from_secs(300), "{failed}: {d:?}");
            assert!(d >= Duration::from_secs(256), "{failed}: {d:?}");
        }
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_spreads_retries() {
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|seed| policy(seed).delay(3)).collect();
        assert!(delays.len() > 10, "jitter should vary: {delays:?}");
    }

    #[test]
    fn ledger_backoff_grows_to_its_cap_and_starts_over_after_a_success() {
        let mut b = LedgerBackoff::default();
        let first = b.failed();
        assert!(first >= Duration::from_millis(250) && first < Duration::from_millis(500));
        let later: Vec<Duration> = (0..10).map(|_| b.failed()).collect();
        assert!(
            later.iter().all(|d| *d <= Duration::from_secs(5)),
            "{later:?}"
        );
        assert!(
            later.last().is_some_and(|d| *d >= Duration::from_secs(4)),
            "{later:?}"
        );
        b.ok();
        assert!(b.failed() < Duration::from_millis(500));
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let p = policy(1);
        assert!(p.next(1).is_some());
        assert!(p.next(9).is_some());
        assert_eq!(p.next(10), None);
        assert_eq!(p.next(11), None);
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy(1)
        };
        assert_eq!(once.next(1), None);
    }
}
