//! The settle gate: a file is handed on only after its size and mtime have
//! stayed the same for `watcher.settle`, so a file still being written is
//! never uploaded half-done. Pure bookkeeping; the caller stats the files
//! and owns the clock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What a stat says about a file, as far as settling goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    pub mtime_ns: i64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seen: Seen,
    /// Since when `seen` has not changed.
    stable_since: Instant,
    /// Which watch the file belongs to.
    watch: usize,
}

#[derive(Debug)]
pub struct Settler {
    settle: Duration,
    pending: HashMap<PathBuf, Pending>,
}

impl Settler {
    pub fn new(settle: Duration) -> Settler {
        Settler {
            settle,
            pending: HashMap::new(),
        }
    }

    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    /// A sighting of `path` (from an event, a scan, or a re-check). A
    /// change restarts its clock.
    pub fn observe(&mut self, path: PathBuf, watch: usize, seen: Seen, now: Instant) {
        match self.pending.get_mut(&path) {
            Some(p) if p.seen == seen => p.watch = watch,
            Some(p) => {
                p.seen = seen;
                p.stable_since = now;
                p.watch = watch;
            }
            None => {
                self.pending.insert(
                    path,
                    Pending {
                        seen,
                        stable_since: now,
                        watch,
                    },
                );
            }
        }
    }

    /// The file is gone (or no longer a candidate): stop tracking it.
    pub fn forget(&mut self, path: &PathBuf) {
        self.pending.remove(path);
    }

    /// Paths to stat again now, with the watch each belongs to.
    pub fn pending(&self) -> Vec<(PathBuf, usize)> {
        self.pending
            .iter()
            .map(|(p, v)| (p.clone(), v.watch))
            .collect()
    }

    /// Remove and return the files whose last sighting has been unchanged
    /// for the settle time. Call after re-observing every pending path.
    pub fn take_settled(&mut self, now: Instant) -> Vec<(PathBuf, usize)> {
        let settle = self.settle;
        let done: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.stable_since) >= settle)
            .map(|(path, _)| path.clone())
            .collect();
        done.into_iter()
            .filter_map(|path| self.pending.remove(&path).map(|p| (path, p.watch)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the earliest pending file could settle, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.stable_since + self.settle)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(3);

    fn seen(size: u64, mtime: i64) -> Seen {
        Seen {
            size,
            mtime_ns: mtime,
        }
    }

    #[test]
    fn a_quiet_file_settles_after_the_settle_time() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        s.observe("a".into(), 0, seen(10, 1), t0);
        assert!(s.take_settled(t0 + Duration::from_secs(2)).is_empty());
        s.observe("a".into(), 0, seen(10, 1), t0 + Duration::from_secs(2));
        assert_eq!(s.take_settled(t0 + S), vec![(PathBuf::from("a"), 0)]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_growing_file_never_settles_while_it_grows() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        for i in 0..20u64 {
            let now = t0 + Duration::from_secs(i);
            s.observe(
                "a".into(),
                0,
                seen(10 + i, 1 + i64::try_from(i).expect("small")),
                now,
            );
            assert!(
                s.take_settled(now).is_empty(),
                "settled while growing at {i}s"
            );
        }
        let last = t0 + Duration::from_secs(19);
        s.observe("a".into(), 0, seen(29, 20), last + S);
        assert_eq!(s.take_settled(last + S).len(), 1);
    }

    #[test]
    fn a_touch_without_growth_restarts_the_clock() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        s.observe("a".into(), 0, seen(10, 1), t0);
        s.observe("a".into(), 0, seen(10, 2), t0 + Duration::from_secs(2));
        assert!(s.take_settled(t0 + S).is_empty());
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(2) + S));
    }

    #[test]
    fn forgotten_files_never_settle() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        s.observe("a".into(), 0, seen(10, 1), t0);
        s.forget(&"a".into());
        assert!(s.take_settled(t0 + S * 2).is_empty());
        assert_eq!(s.next_due(), None);
    }
}
