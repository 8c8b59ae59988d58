//! The life of a file: the states of README.md ("What happens to a file")
//! and the only legal moves between them. [`FileState::on`] is the single
//! place that decides whether a transition is allowed; the ledger applies it
//! as a compare-and-set on the old state inside one transaction, and the
//! schema's CHECK repeats the list.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileState {
    /// Seen on disk; not yet checked, hashed or deduplicated.
    Discovered,
    /// Waiting for an upload worker (possibly until `next_attempt_at`).
    Queued,
    /// A worker is sending it.
    Uploading,
    /// The platform accepted it; waiting for `ready`.
    Processing,
    Ready,
    Indexing,
    Indexed,
    /// Same content as another record; points at that record's asset.
    Duplicate,
    /// Not eligible (not media, empty, too large), with the reason.
    Skipped,
    /// A permanent error or attempts exhausted, with the last error.
    Failed,
}

/// What happened to a record; together with its current state it decides
/// the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Eligible and hashed, with no duplicate: ready for a worker.
    Hashed,
    /// Not eligible.
    Skip,
    /// Its content is already uploaded (or being uploaded) by another record.
    Duplicate,
    /// A worker takes it.
    Claim,
    /// The platform holds an asset for it (the 201, or found by lookup).
    Accepted,
    /// A transient error, a rate limit, a rejected key or an interrupted run:
    /// back to the queue, to be tried again.
    Retry,
    /// A permanent error or attempts exhausted.
    Fail,
    /// The file changed on disk before its upload completed: hash it again.
    Changed,
    /// The platform says the asset is ready.
    Ready,
    /// Indexing into `index_id` has started.
    Index,
    /// The index says the asset is indexed.
    Indexed,
    /// An operator asked for another try (`retry`, or `reconcile
    /// --requeue` for an asset the platform lost), or the record it
    /// duplicated will not produce an asset after all.
    Requeue,
    /// Another try of a failed file (`retry`, or `upload` naming it again):
    /// it is examined, hashed and deduplicated afresh before it is queued,
    /// so that content uploaded since by another file is not sent twice.
    Reexamine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a record in state {from} cannot take event {event:?}")]
pub struct InvalidTransition {
    pub from: FileState,
    pub event: Event,
}

impl FileState {
    pub const ALL: [FileState; 10] = [
        FileState::Discovered,
        FileState::Queued,
        FileState::Uploading,
        FileState::Processing,
        FileState::Ready,
        FileState::Indexing,
        FileState::Indexed,
        FileState::Duplicate,
        FileState::Skipped,
        FileState::Failed,
    ];

    /// The transition table. Everything not listed is refused.
    pub fn on(self, event: Event) -> Result<FileState, InvalidTransition> {
        use Event as E;
        use FileState as S;
        let next = match (self, event) {
            (S::Discovered, E::Hashed) => S::Queued,
            (S::Discovered, E::Skip) => S::Skipped,
            (S::Discovered, E::Duplicate) => S::Duplicate,
            (S::Discovered, E::Fail) => S::Failed,
            (S::Discovered, E::Changed) => S::Discovered,

            (S::Queued, E::Claim) => S::Uploading,
            (S::Queued, E::Changed) => S::Discovered,
            (S::Queued, E::Fail) => S::Failed,

            (S::Uploading, E::Accepted) => S::Processing,
            (S::Uploading, E::Retry) => S::Queued,
            (S::Uploading, E::Fail) => S::Failed,
            (S::Uploading, E::Changed) => S::Discovered,
            (S::Uploading, E::Skip) => S::Skipped,

            (S::Processing, E::Ready) => S::Ready,
            (S::Processing, E::Fail) => S::Failed,
            // The platform lost the asset while processing: send it again.
            (S::Processing, E::Retry) => S::Queued,

            (S::Ready, E::Index) => S::Indexing,
            (S::Indexing, E::Indexed) => S::Indexed,
            (S::Indexing, E::Fail) => S::Failed,

            (S::Duplicate, E::Requeue) => S::Queued,
            (S::Failed, E::Requeue) => S::Queued,
            (S::Failed, E::Reexamine) => S::Discovered,
            // `reconcile --requeue`: the platform lost a finished asset.
            (S::Ready, E::Requeue) => S::Queued,
            (S::Indexed, E::Requeue) => S::Queued,
            (from, event) => return Err(InvalidTransition { from, event }),
        };
        Ok(next)
    }

    /// No further work will happen without an operator or a new version.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            FileState::Ready
                | FileState::Indexed
                | FileState::Duplicate
                | FileState::Skipped
                | FileState::Failed
        )
    }

    /// States in which the record owns (or is about to own) an asset, so
    /// that other records with the same content are its duplicates.
    pub fn holds_asset(self) -> bool {
        matches!(
            self,
            FileState::Queued
                | FileState::Uploading
                | FileState::Processing
                | FileState::Ready
                | FileState::Indexing
                | FileState::Indexed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Discovered => "discovered",
            FileState::Queued => "queued",
            FileState::Uploading => "uploading",
            FileState::Processing => "processing",
            FileState::Ready => "ready",
            FileState::Indexing => "indexing",
            FileState::Indexed => "indexed",
            FileState::Duplicate => "duplicate",
            FileState::Skipped => "skipped",
            FileState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<FileState> {
        FileState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use FileState as S;

    const EVENTS: [Event; 13] = [
        E::Hashed,
        E::Skip,
        E::Duplicate,
        E::Claim,
        E::Accepted,
        E::Retry,
        E::Fail,
        E::Changed,
        E::Ready,
        E::Index,
        E::Indexed,
        E::Requeue,
        E::Reexamine,
    ];

    /// The whole table, written out: (from, event, to). Every pair not here
    /// must be refused.
    const ALLOWED: &[(FileState, Event, FileState)] = &[
        (S::Discovered, E::Hashed, S::Queued),
        (S::Discovered, E::Skip, S::Skipped),
        (S::Discovered, E::Duplicate, S::Duplicate),
        (S::Discovered, E::Fail, S::Failed),
        (S::Discovered, E::Changed, S::Discovered),
        (S::Queued, E::Claim, S::Uploading),
        (S::Queued, E::Changed, S::Discovered),
        (S::Queued, E::Fail, S::Failed),
        (S::Uploading, E::Accepted, S::Processing),
        (S::Uploading, E::Retry, S::Queued),
        (S::Uploading, E::Fail, S::Failed),
        (S::Uploading, E::Changed, S::Discovered),
        (S::Uploading, E::Skip, S::Skipped),
        (S::Processing, E::Ready, S::Ready),
        (S::Processing, E::Fail, S::Failed),
        (S::Processing, E::Retry, S::Queued),
        (S::Ready, E::Index, S::Indexing),
        (S::Indexing, E::Indexed, S::Indexed),
        (S::Indexing, E::Fail, S::Failed),
        (S::Duplicate, E::Requeue, S::Queued),
        (S::Failed, E::Requeue, S::Queued),
        (S::Failed, E::Reexamine, S::Discovered),
        (S::Ready, E::Requeue, S::Queued),
        (S::Indexed, E::Requeue, S::Queued),
    ];

    #[test]
    fn every_state_event_pair_matches_the_table() {
        for from in FileState::ALL {
            for event in EVENTS {
                let expected = ALLOWED
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                match (from.on(event), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from} + {event:?}"),
                    (Err(err), None) => assert_eq!(err, InvalidTransition { from, event }),
                    (got, want) => panic!("{from} + {event:?}: got {got:?}, table says {want:?}"),
                }
            }
        }
    }

    #[test]
    fn terminal_states_only_leave_by_requeue_or_indexing() {
        for from in FileState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in EVENTS {
                if let Ok(to) = from.on(event) {
                    assert!(
                        matches!(event, E::Requeue | E::Reexamine | E::Index),
                        "{from} left by {event:?} to {to}"
                    );
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in FileState::ALL {
            assert_eq!(FileState::parse(s.as_str()), Some(s));
        }
        assert_eq!(FileState::parse("bogus"), None);
    }
}
