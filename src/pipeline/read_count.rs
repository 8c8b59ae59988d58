//! A test hook: bytes of file content each pipeline read, by examination
//! and hashing, and by uploads. Tests check with it that a file is read
//! once (README.md, "What happens to a file"); nothing else reads it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of bytes read from files, per pipeline (relaxed atomics: a
/// count, not a synchronisation).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct ContentReads {
    examined: AtomicU64,
    sent: AtomicU64,
}

/// A snapshot of [`ContentReads`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Read by the hash stage (eligibility, fingerprint, sha256) and by a
    /// worker hashing a file before sending it.
    pub examined: u64,
    /// Read by uploads (bytes handed to the connection).
    pub sent: u64,
}

impl ContentReads {
    pub(super) fn examined(&self, bytes: u64) {
        self.examined.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn sent(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> ReadCounts {
        ReadCounts {
            examined: self.examined.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
        }
    }
}
