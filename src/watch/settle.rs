//! The settle gate: a file is handed on only after its size and mtime have
//! stayed the same for `watcher.settle`, so a file still being written is
//! never uploaded half-done. Pure bookkeeping; the caller stats the files
//! and owns the clock.
//!
//! When did a file stop changing? The caller says, with each sighting,
//! since when it can vouch the file has looked as it does now (`since`):
//! on a local filesystem, the file's mtime (its last write, on our own
//! clock); otherwise simply now. So a file written a second ago whose event
//! reached us late (the watcher's debounce) is not made to wait the settle
//! time again from the moment we looked. Whatever the caller says, three
//! rules hold:
//! - a file is settled only after two looks that saw the same size and
//!   mtime, at least [`Settler::confirm`] apart, the second one once it is
//!   due: a real observation, not only a claim from the mtime;
//! - a change seen now happened after the previous look, so its clock never
//!   starts before that look (nor more than the settle time ago, nor in the
//!   future);
//! - any change of size or mtime restarts the clock.
//!
//! Any write changes the mtime, so a writer that pauses for less than the
//! settle time is caught by the look at the due time: the mtime it sees is
//! newer, and the clock restarts from that write.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a stat says about a file, as far as settling goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    pub mtime_ns: i64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seen: Seen,
    /// Since when `seen` has not changed (as far as we can vouch for).
    stable_since: Instant,
    /// When `seen` was first looked at: the first of the two looks.
    seen_at: Instant,
    /// When it was last looked at.
    looked_at: Instant,
    /// When it can settle: the key in `Settler::by_due`.
    due: Instant,
    /// Which watch the file belongs to.
    watch: usize,
}

#[derive(Debug)]
pub struct Settler {
    settle: Duration,
    pending: HashMap<PathBuf, Pending>,
    /// The pending paths by when they can settle, earliest first, so the
    /// daemon wakes for the next one and looks again only at those due.
    by_due: BTreeSet<(Instant, PathBuf)>,
}

/// The longest interval between the two looks that confirm a file: a
/// quarter of the settle time, at most this.
const MAX_CONFIRM: Duration = Duration::from_millis(250);

impl Settler {
    pub fn new(settle: Duration) -> Settler {
        Settler {
            settle,
            pending: HashMap::new(),
            by_due: BTreeSet::new(),
        }
    }

    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
        let confirm = self.confirm();
        self.by_due.clear();
        for (path, p) in &mut self.pending {
            p.due = due(p, settle, confirm);
            self.by_due.insert((p.due, path.clone()));
        }
    }

    /// The least time between the two looks that settle a file.
    pub fn confirm(&self) -> Duration {
        (self.settle / 4).min(MAX_CONFIRM)
    }

    /// A sighting of `path` at `now` (from an event, a scan, or a second
    /// look). `since`: since when the caller vouches the file has looked
    /// like `seen` (see the module doc). It counts only when `seen` is new,
    /// and is clamped to between the previous look (or `now − settle` for a
    /// first sighting) and `now`.
    pub fn observe(
        &mut self,
        path: PathBuf,
        watch: usize,
        seen: Seen,
        now: Instant,
        since: Instant,
    ) {
        let (settle, confirm) = (self.settle, self.confirm());
        let earliest = now.checked_sub(settle).unwrap_or(now);
        let p = match self.pending.get(&path) {
            Some(p) if p.seen == seen => Pending {
                watch,
                looked_at: now.max(p.looked_at),
                ..*p
            },
            Some(p) => {
                // It changed after the previous look.
                let stable_since = since.clamp(earliest.max(p.looked_at).min(now), now);
                Pending {
                    seen,
                    stable_since,
                    seen_at: now,
                    looked_at: now,
                    due: now,
                    watch,
                }
            }
            None => Pending {
                seen,
                stable_since: since.clamp(earliest, now),
                seen_at: now,
                looked_at: now,
                due: now,
                watch,
            },
        };
        let p = Pending {
            due: due(&p, settle, confirm),
            ..p
        };
        if let Some(old) = self.pending.insert(path.clone(), p) {
            self.by_due.remove(&(old.due, path.clone()));
        }
        self.by_due.insert((p.due, path));
    }

    /// The file is gone (or no longer a candidate): stop tracking it.
    pub fn forget(&mut self, path: &PathBuf) {
        if let Some(p) = self.pending.remove(path) {
            self.by_due.remove(&(p.due, path.clone()));
        }
    }

    /// The paths that can settle by `now`, with their watch: look at these
    /// again, then call [`Settler::take_settled`]. Files not yet due need no
    /// look: a change found at their due time restarts their clock from the
    /// change, not from the look.
    pub fn due(&self, now: Instant) -> Vec<(PathBuf, usize)> {
        self.by_due
            .iter()
            .take_while(|(due, _)| *due <= now)
            .filter_map(|(_, path)| self.pending.get(path).map(|p| (path.clone(), p.watch)))
            .collect()
    }

    /// Remove and return the files that are due and were looked at again
    /// since they became due: unchanged for the settle time, confirmed by a
    /// second look. Call after looking again at every path
    /// [`Settler::due`] returned (with the same `now`).
    pub fn take_settled(&mut self, now: Instant) -> Vec<(PathBuf, usize)> {
        let settled: Vec<(Instant, PathBuf)> = self
            .by_due
            .iter()
            .take_while(|(due, _)| *due <= now)
            .filter(|(_, path)| self.pending.get(path).is_some_and(|p| p.looked_at >= p.due))
            .cloned()
            .collect();
        let mut done = Vec::with_capacity(settled.len());
        for key in settled {
            self.by_due.remove(&key);
            if let Some(p) = self.pending.remove(&key.1) {
                done.push((key.1, p.watch));
            }
        }
        done
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the earliest pending file could settle, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.by_due.first().map(|(due, _)| *due)
    }
}

/// When a pending file can settle: unchanged for the settle time, and seen
/// the same by two looks `confirm` apart.
fn due(p: &Pending, settle: Duration, confirm: Duration) -> Instant {
    (p.stable_since + settle).max(p.seen_at + confirm)
}

/// The moment on the monotonic clock that a file's mtime stands for, given
/// the wall clock `wall_now` read together with `now`. An mtime in the
/// future stands for now; one before the epoch or unreadably old for as
/// far back as the clock goes (the settler clamps it anyway).
pub fn since_mtime(mtime_ns: i64, wall_now: SystemTime, now: Instant) -> Instant {
    let mtime = if mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(mtime_ns.unsigned_abs())
    } else {
        UNIX_EPOCH
    };
    let age = wall_now.duration_since(mtime).unwrap_or(Duration::ZERO);
    now.checked_sub(age).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(3);
    const MS: Duration = Duration::from_millis(1);

    fn seen(size: u64, mtime: i64) -> Seen {
        Seen {
            size,
            mtime_ns: mtime,
        }
    }

    /// A sighting with nothing known about when the file last changed.
    fn look(s: &mut Settler, path: &str, seen: Seen, now: Instant) {
        s.observe(path.into(), 0, seen, now, now);
    }

    #[test]
    fn a_quiet_file_settles_after_the_settle_time() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        look(&mut s, "a", seen(10, 1), t0);
        let two = t0 + Duration::from_secs(2);
        look(&mut s, "a", seen(10, 1), two);
        assert!(s.due(two).is_empty());
        assert!(s.take_settled(two).is_empty());
        assert_eq!(s.due(t0 + S), vec![(PathBuf::from("a"), 0)]);
        look(&mut s, "a", seen(10, 1), t0 + S);
        assert_eq!(s.take_settled(t0 + S), vec![(PathBuf::from("a"), 0)]);
        assert!(s.is_empty());
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn a_growing_file_never_settles_while_it_grows() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        for i in 0..20u64 {
            let now = t0 + Duration::from_secs(i);
            look(
                &mut s,
                "a",
                seen(10 + i, 1 + i64::try_from(i).expect("small")),
                now,
            );
            assert!(
                s.take_settled(now).is_empty(),
                "settled while growing at {i}s"
            );
        }
        let last = t0 + Duration::from_secs(19);
        look(&mut s, "a", seen(29, 20), last + S);
        assert_eq!(s.take_settled(last + S).len(), 1);
    }

    #[test]
    fn a_touch_without_growth_restarts_the_clock() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        look(&mut s, "a", seen(10, 1), t0);
        look(&mut s, "a", seen(10, 2), t0 + Duration::from_secs(2));
        assert!(s.take_settled(t0 + S).is_empty());
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(2) + S));
    }

    #[test]
    fn forgotten_files_never_settle() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        look(&mut s, "a", seen(10, 1), t0);
        s.forget(&"a".into());
        assert!(s.take_settled(t0 + S * 2).is_empty());
        assert_eq!(s.next_due(), None);
        assert!(s.due(t0 + S * 2).is_empty());
    }

    #[test]
    fn nothing_settles_without_a_look_once_it_is_due() {
        // Due by the clock, but the last look was before that: the file may
        // have changed since, so it waits for the caller to look again.
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        look(&mut s, "a", seen(10, 1), t0);
        assert!(s.take_settled(t0 + S * 2).is_empty());
        assert_eq!(s.due(t0 + S * 2).len(), 1, "still due");
        look(&mut s, "a", seen(10, 1), t0 + S * 2);
        assert_eq!(s.take_settled(t0 + S * 2).len(), 1);
    }

    #[test]
    fn the_clock_starts_at_the_last_change_not_at_the_sighting() {
        // Written at t0, reported 250 ms later (the watcher's debounce).
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        let sighted = t0 + 250 * MS;
        s.observe("a".into(), 0, seen(10, 1), sighted, t0);
        assert_eq!(s.next_due(), Some(t0 + S), "due at the last write + settle");
        assert!(s.due(t0 + S - MS).is_empty());
        look(&mut s, "a", seen(10, 1), t0 + S);
        assert_eq!(s.take_settled(t0 + S), vec![(PathBuf::from("a"), 0)]);
    }

    #[test]
    fn an_old_file_still_needs_a_second_look_a_while_later() {
        // Its mtime says it has not changed for a minute: not taken on the
        // strength of one stat, but after a second look `confirm` later.
        let t0 = Instant::now() + Duration::from_secs(120);
        let mut s = Settler::new(S);
        let a_minute_ago = t0 - Duration::from_secs(60);
        s.observe("a".into(), 0, seen(10, 1), t0, a_minute_ago);
        assert!(s.take_settled(t0).is_empty(), "not on one look");
        let confirm = s.confirm();
        assert_eq!(confirm, MAX_CONFIRM);
        assert_eq!(s.next_due(), Some(t0 + confirm));
        look(&mut s, "a", seen(10, 1), t0 + confirm);
        assert_eq!(s.take_settled(t0 + confirm).len(), 1);
    }

    #[test]
    fn a_writer_that_pauses_for_less_than_the_settle_time_is_not_taken() {
        // Last write at t0 (mtime 1), sighted at once; the writer goes on at
        // t0 + 2 s (mtime 2), before the file is due at t0 + 3 s. The look
        // at t0 + 3 s sees the new mtime: its clock restarts at the change.
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        s.observe("a".into(), 0, seen(10, 1), t0, t0);
        let due = s.next_due().expect("pending");
        assert_eq!(due, t0 + S);
        let wrote_again = t0 + Duration::from_secs(2);
        s.observe("a".into(), 0, seen(20, 2), due, wrote_again);
        assert!(s.take_settled(due).is_empty(), "taken mid-write");
        assert_eq!(s.next_due(), Some(wrote_again + S));
    }

    #[test]
    fn a_change_never_counts_from_before_the_previous_look() {
        // The new stat claims (say, by a skewed or restored mtime) to be a
        // minute old, but it was not there at the previous look.
        let t0 = Instant::now() + Duration::from_secs(120);
        let mut s = Settler::new(S);
        look(&mut s, "a", seen(10, 1), t0);
        let later = t0 + Duration::from_secs(1);
        s.observe(
            "a".into(),
            0,
            seen(20, 2),
            later,
            t0 - Duration::from_secs(60),
        );
        assert_eq!(s.next_due(), Some(t0 + S), "counts from the previous look");
        assert!(s.take_settled(later).is_empty());
    }

    #[test]
    fn a_claim_from_the_future_counts_from_now() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        s.observe("a".into(), 0, seen(10, 1), t0, t0 + Duration::from_secs(60));
        assert_eq!(s.next_due(), Some(t0 + S));
    }

    #[test]
    fn only_due_files_are_looked_at_and_taken() {
        let t0 = Instant::now() + Duration::from_secs(120);
        let mut s = Settler::new(S);
        s.observe("old".into(), 1, seen(1, 1), t0, t0 - S);
        look(&mut s, "new", seen(2, 2), t0);
        let confirm = s.confirm();
        assert_eq!(s.due(t0 + confirm), vec![(PathBuf::from("old"), 1)]);
        s.observe("old".into(), 1, seen(1, 1), t0 + confirm, t0 + confirm);
        assert_eq!(
            s.take_settled(t0 + confirm),
            vec![(PathBuf::from("old"), 1)]
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.next_due(), Some(t0 + S));
    }

    #[test]
    fn a_new_settle_time_moves_every_due_time() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        look(&mut s, "a", seen(10, 1), t0);
        s.set_settle(Duration::from_secs(1));
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(s.due(t0 + Duration::from_secs(1)).len(), 1);
    }

    #[test]
    fn since_mtime_maps_the_wall_clock_onto_the_monotonic_one() {
        let now = Instant::now() + Duration::from_secs(10);
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ns = |secs: u64, ms: u64| {
            i64::try_from(secs * 1_000_000_000 + ms * 1_000_000).expect("fits")
        };
        assert_eq!(
            since_mtime(ns(999_999, 500), wall, now),
            now - 500 * MS,
            "half a second old"
        );
        assert_eq!(since_mtime(ns(1_000_005, 0), wall, now), now, "future");
        assert!(since_mtime(-5, wall, now) <= now, "before the epoch");
    }
}
