//! How many records have entered each state, as counters a pipeline stage
//! can wait on. The broadcast of every [`Change`](super::Change) wakes every
//! follower for every change of every record: five idle stages woken five
//! times per small file, each wake-up a thread to unpark, was a large part
//! of `upload`'s CPU over many small files (BENCHMARKS.md, S1). A stage
//! that acts on one state waits here and is woken only by that state.

use std::sync::Arc;

use futures_util::future::select_all;
use tokio::sync::watch;

use super::FileState;

/// The senders: one counter per state, bumped by every announcement.
#[derive(Debug)]
pub(super) struct Counters {
    by_state: Vec<watch::Sender<u64>>,
}

impl Counters {
    pub(super) fn new() -> Arc<Counters> {
        Arc::new(Counters {
            by_state: FileState::ALL.iter().map(|_| watch::channel(0).0).collect(),
        })
    }

    /// A record entered `state`: wakes only the stages waiting for it.
    pub(super) fn bump(&self, state: FileState) {
        if let Some(counter) = self.by_state.get(index(state)) {
            counter.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub(super) fn follow(&self, states: &[FileState]) -> Entries {
        let rx: Vec<watch::Receiver<u64>> = states
            .iter()
            .filter_map(|s| self.by_state.get(index(*s)))
            .map(watch::Sender::subscribe)
            .collect();
        let seen = rx.iter().map(|r| *r.borrow()).collect();
        Entries { rx, seen }
    }
}

fn index(state: FileState) -> usize {
    FileState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or(usize::MAX)
}

/// Records entering some states, as a stage follows them
/// ([`Ledger::entries`](super::Ledger::entries)).
#[derive(Debug)]
pub struct Entries {
    rx: Vec<watch::Receiver<u64>>,
    /// Each counter's value at the last [`Entries::take`].
    seen: Vec<u64>,
}

impl Entries {
    /// How many records entered the states since the last call; they count
    /// as seen (the query the caller makes next covers them).
    pub fn take(&mut self) -> u64 {
        let mut total = 0u64;
        for (rx, seen) in self.rx.iter_mut().zip(self.seen.iter_mut()) {
            let now = *rx.borrow_and_update();
            total = total.saturating_add(now.wrapping_sub(*seen));
            *seen = now;
        }
        total
    }

    /// Until a record enters one of the states after the last
    /// [`Entries::take`] (at once if one already did). Never, for no states.
    pub async fn entered(&mut self) {
        if self.rx.is_empty() {
            return std::future::pending().await;
        }
        let seen = &self.seen;
        if self.rx.iter().zip(seen).any(|(rx, s)| *rx.borrow() != *s) {
            return;
        }
        let waits = self.rx.iter_mut().map(|rx| Box::pin(rx.changed()));
        // An error means the ledger is gone: nothing more will enter.
        if select_all(waits).await.0.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn only_the_followed_states_count_and_take_resets() {
        let counters = Counters::new();
        let mut entries = counters.follow(&[FileState::Queued, FileState::Ready]);
        counters.bump(FileState::Queued);
        counters.bump(FileState::Uploading);
        counters.bump(FileState::Ready);
        counters.bump(FileState::Queued);
        assert_eq!(entries.take(), 3);
        assert_eq!(entries.take(), 0);
    }

    #[tokio::test]
    async fn a_wait_ends_on_an_entry_made_before_or_during_it_but_not_on_others() {
        let counters = Counters::new();
        let mut entries = counters.follow(&[FileState::Ready]);
        counters.bump(FileState::Processing);
        assert!(
            entries.entered().now_or_never().is_none(),
            "another state does not wake"
        );
        counters.bump(FileState::Ready);
        assert!(
            entries.entered().now_or_never().is_some(),
            "an entry since the last take ends the wait at once"
        );
        entries.take();
        let mut wait = Box::pin(entries.entered());
        assert!((&mut wait).now_or_never().is_none());
        counters.bump(FileState::Ready);
        wait.await;
    }

    #[test]
    fn no_states_never_wake() {
        let counters = Counters::new();
        let mut entries = counters.follow(&[]);
        counters.bump(FileState::Ready);
        assert_eq!(entries.take(), 0);
        assert!(entries.entered().now_or_never().is_none());
    }
}
