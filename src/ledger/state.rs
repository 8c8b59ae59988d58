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

    /// A record that is or will be an upload of its content: hashed or
    /// about to be, and not ended without an asset.
    pub fn is_live(self) -> bool {
        self == FileState::Discovered || self.holds_asset()
    }

    // Groups of states as the ledger's SQL lists them (see [`sql_list`]).
    // Each is exactly the states its rule holds for (a test checks), in the
    // order the queries have always written it: SQLite uses a partial
    // index only for a query whose WHERE repeats the index's word for word
    // (migrations 0003 and 0005), so the order is part of the schema.

    /// [`FileState::is_live`] (the index `files_live_size`, migrations 0005
    /// and 0009).
    pub const LIVE: &[FileState] = &[
        FileState::Discovered,
        FileState::Queued,
        FileState::Uploading,
        FileState::Processing,
        FileState::Ready,
        FileState::Indexing,
        FileState::Indexed,
    ];

    /// [`FileState::holds_asset`] (the indexes `files_unhashed_size`,
    /// migrations 0005 and 0009, and `files_unprinted_size`, 0009).
    pub const HOLDING_ASSET: &[FileState] = &[
        FileState::Queued,
        FileState::Uploading,
        FileState::Processing,
        FileState::Ready,
        FileState::Indexing,
        FileState::Indexed,
    ];

    /// Holding an asset the platform has not accepted yet: waiting for a
    /// worker or being sent.
    pub const UNSENT: &[FileState] = &[FileState::Queued, FileState::Uploading];

    /// Not [`FileState::is_terminal`]: work is still to happen.
    pub const UNFINISHED: &[FileState] = &[
        FileState::Discovered,
        FileState::Queued,
        FileState::Uploading,
        FileState::Processing,
        FileState::Indexing,
    ];

    /// [`FileState::is_terminal`].
    pub const TERMINAL: &[FileState] = &[
        FileState::Ready,
        FileState::Indexed,
        FileState::Duplicate,
        FileState::Skipped,
        FileState::Failed,
    ];

    /// Terminal, with an asset of its own.
    pub const ENDED_WITH_ASSET: &[FileState] = &[FileState::Ready, FileState::Indexed];

    /// Terminal, without an asset of its own.
    pub const ENDED_WITHOUT_ASSET: &[FileState] =
        &[FileState::Duplicate, FileState::Skipped, FileState::Failed];

    /// The platform says its asset is ready (indexing may follow).
    pub const ASSET_READY: &[FileState] =
        &[FileState::Ready, FileState::Indexing, FileState::Indexed];

    /// The platform is working on its asset: followed until it answers.
    pub const AT_PLATFORM: &[FileState] = &[FileState::Processing, FileState::Indexing];

    /// Not a version of its path to keep: not hashed yet, or ended without
    /// an asset of its own or another's (not [`FileState::is_live`] or
    /// `duplicate`, and not `discovered`).
    pub const NOT_A_KEPT_VERSION: &[FileState] =
        &[FileState::Failed, FileState::Skipped, FileState::Discovered];

    /// States whose `last_error` is not an error to show: a skip's reason,
    /// or a duplicate's (the index `files_errors`, migration 0003).
    pub const QUIET_ERRORS: &[FileState] = &[FileState::Skipped, FileState::Duplicate];

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

/// States as an SQL list, `'queued', 'uploading'`, for `state IN (…)`: a
/// list written from the states themselves, never by hand.
pub fn sql_list(states: &[FileState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
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

    /// A worker can still take it or the platform still accept it.
    fn unsent(s: FileState) -> bool {
        s.on(E::Claim).is_ok() || s.on(E::Accepted).is_ok()
    }

    /// `ready`, or reached from it by indexing.
    fn asset_ready(s: FileState) -> bool {
        let indexing = S::Ready.on(E::Index).ok();
        s == S::Ready
            || Some(s) == indexing
            || indexing.and_then(|i| i.on(E::Indexed).ok()) == Some(s)
    }

    /// Which states a group should hold.
    type Rule = fn(FileState) -> bool;

    /// Each SQL group is exactly the states its rule holds for, once each.
    #[test]
    fn sql_groups_agree_with_their_rules() {
        let groups: [(&str, &[FileState], Rule); 11] = [
            ("LIVE", S::LIVE, S::is_live),
            ("HOLDING_ASSET", S::HOLDING_ASSET, S::holds_asset),
            ("UNSENT", S::UNSENT, |s| s.holds_asset() && unsent(s)),
            ("UNFINISHED", S::UNFINISHED, |s| !s.is_terminal()),
            ("TERMINAL", S::TERMINAL, S::is_terminal),
            ("ENDED_WITH_ASSET", S::ENDED_WITH_ASSET, |s| {
                s.is_terminal() && s.holds_asset()
            }),
            ("ENDED_WITHOUT_ASSET", S::ENDED_WITHOUT_ASSET, |s| {
                s.is_terminal() && !s.holds_asset()
            }),
            ("ASSET_READY", S::ASSET_READY, asset_ready),
            ("AT_PLATFORM", S::AT_PLATFORM, |s| {
                s.holds_asset() && !s.is_terminal() && !unsent(s)
            }),
            ("NOT_A_KEPT_VERSION", S::NOT_A_KEPT_VERSION, |s| {
                !s.holds_asset() && s != S::Duplicate
            }),
            ("QUIET_ERRORS", S::QUIET_ERRORS, |s| {
                s.is_terminal() && !s.holds_asset() && s != S::Failed
            }),
        ];
        for (name, group, rule) in groups {
            for s in FileState::ALL {
                let n = group.iter().filter(|&&g| g == s).count();
                assert_eq!(n, usize::from(rule(s)), "{name}: {s}");
            }
        }
    }

    /// The lists the partial indexes' WHERE clauses spell out, as the
    /// queries must repeat them.
    #[test]
    fn sql_lists_match_the_partial_indexes() {
        assert_eq!(sql_list(S::UNSENT), "'queued', 'uploading'");
        let m0005 = include_str!("../../migrations/sqlite/0005_size_indexes.sql");
        let m0003 = include_str!("../../migrations/sqlite/0003_history_indexes.sql");
        assert!(m0005.contains(&format!("state IN\n        ({});", sql_list(S::LIVE))));
        assert!(m0005.contains(&format!(
            "state IN\n        ({});",
            sql_list(S::HOLDING_ASSET)
        )));
        assert!(m0003.contains(&format!("state NOT IN ({});", sql_list(S::QUIET_ERRORS))));
        // 0009 rebuilds 0005's indexes on (size, fingerprint) and adds one.
        for engine in [
            include_str!("../../migrations/sqlite/0009_fingerprints.sql"),
            include_str!("../../migrations/postgres/0009_fingerprints.sql"),
        ] {
            assert!(engine.contains(&format!("state IN\n        ({});", sql_list(S::LIVE))));
            assert_eq!(
                engine
                    .matches(&format!(
                        "state IN\n        ({});",
                        sql_list(S::HOLDING_ASSET)
                    ))
                    .count(),
                2
            );
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
