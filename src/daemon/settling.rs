//! The settle gate's side of the main loop: sightings of candidate files
//! go in, and a file whose size and mtime held still for
//! `watcher.settle` is recorded in the ledger (`discovered`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{Daemon, STAT_TIMEOUT};
use crate::ledger::NewFile;
use crate::pipeline::new_file;
use crate::watch::settle::{Seen, since_mtime};

/// Files due to settle within this of each other are looked at in one pass.
const SETTLE_COALESCE: Duration = Duration::from_millis(10);
/// After a pass whose stats did not answer in time, wait this long.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

impl Daemon {
    /// A sighting of a candidate file for the settle gate. `event`: when
    /// the watcher saw it change, if it did.
    pub(super) fn observe(
        &mut self,
        watch: usize,
        path: PathBuf,
        f: &NewFile,
        event: Option<Instant>,
    ) {
        let now = Instant::now();
        let local = self.roots.get(watch).is_some_and(|r| r.local);
        let since = if local {
            // The mtime is the last write, on our own clock. An event says
            // the file changed no earlier than then: an mtime restored by
            // `cp -p`, tar or rsync claims older.
            let by_mtime = since_mtime(f.mtime_ns, SystemTime::now(), now);
            event.map_or(by_mtime, |at| by_mtime.max(at))
        } else {
            // A file server's clock may be behind ours, and an event is
            // no proof that nothing changed after it: only our own look.
            now
        };
        self.settler.observe(
            path,
            watch,
            Seen {
                size: f.size,
                mtime_ns: f.mtime_ns,
            },
            now,
            since,
        );
    }

    /// Look again at the files due to settle; record the ones that held
    /// still.
    pub(super) async fn settle(&mut self) {
        // Taken before the stats: what they show held at least from then.
        let now = Instant::now();
        self.next_settle_pass = now + SETTLE_COALESCE;
        let due = self.settler.due(now);
        if due.is_empty() {
            return;
        }
        let Some(metas) = self.look_again(due, now).await else {
            return;
        };
        self.record_settled(now, &metas).await;
    }

    /// Stat the files due (`now`: when the pass began) and show the gate
    /// what it sees; gone files leave it. The metadata of the files still
    /// there, or `None` (and the next pass put off) if the stats did not
    /// answer in time.
    async fn look_again(
        &mut self,
        due: Vec<(PathBuf, usize)>,
        now: Instant,
    ) -> Option<HashMap<PathBuf, std::fs::Metadata>> {
        let paths: Vec<PathBuf> = due.iter().map(|(p, _)| p.clone()).collect();
        // One blocking pass for all of them: a stat can hang on a network
        // mount, and the main loop must keep turning.
        let stats = tokio::time::timeout(
            STAT_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                paths
                    .into_iter()
                    .map(|p| std::fs::metadata(&p).ok().filter(|m| m.is_file()))
                    .collect::<Vec<_>>()
            }),
        )
        .await;
        let Ok(Ok(stats)) = stats else {
            tracing::warn!("looking at files waiting to settle took too long; trying again");
            self.next_settle_pass = Instant::now() + SETTLE_RETRY;
            return None;
        };
        let wall = SystemTime::now();
        let mut metas = HashMap::new();
        for ((path, watch), meta) in due.into_iter().zip(stats) {
            match meta {
                Some(m) => {
                    let f = new_file(&path, &m, None);
                    let local = self.roots.get(watch).is_some_and(|r| r.local);
                    let since = if local {
                        since_mtime(f.mtime_ns, wall, now)
                    } else {
                        now
                    };
                    let seen = Seen {
                        size: f.size,
                        mtime_ns: f.mtime_ns,
                    };
                    self.settler.observe(path.clone(), watch, seen, now, since);
                    metas.insert(path, m);
                }
                None => self.settler.forget(&path),
            }
        }
        Some(metas)
    }

    /// Record the files that held still since before `now` (`metas`: what
    /// this pass saw of them); a `*.urls` list is read instead. Files the
    /// ledger could not take go back into the gate.
    async fn record_settled(&mut self, now: Instant, metas: &HashMap<PathBuf, std::fs::Metadata>) {
        let mut ledger_down = false;
        for (path, watch) in self.settler.take_settled(now) {
            let (Some(root), Some(meta)) = (self.roots.get(watch), metas.get(&path)) else {
                continue;
            };
            let rel = path.strip_prefix(&root.path).unwrap_or(&path);
            if root.filter.is_url_list(rel) {
                self.ingest_url_list(watch, &path).await;
                continue;
            }
            let mut found = new_file(&path, meta, root.metadata.as_deref());
            found.origin = Some(root.origin.clone());
            if !self.record(&found, &mut ledger_down).await {
                self.settle_again(path, watch, &found);
            }
        }
        if ledger_down {
            // Waits grow while the ledger keeps failing (a full disk).
            self.next_settle_pass = Instant::now() + self.ledger_backoff.failed();
        }
    }

    /// Record a settled file (`discovered`); false if it was not. Once the
    /// ledger fails for a file of a pass in a way that is not about that
    /// file (an outage, a busy ledger), `ledger_down` is set and the rest
    /// of the pass wait with it, not one failure each.
    async fn record(&mut self, found: &NewFile, ledger_down: &mut bool) -> bool {
        if *ledger_down {
            return false;
        }
        match self.ledger.discover(found).await {
            Ok(d) => {
                self.ledger_backoff.ok();
                tracing::debug!(path = %found.path, discovery = ?d, "settled");
                true
            }
            Err(e) => {
                *ledger_down = e.class() != crate::ledger::ErrorClass::Other;
                crate::pipeline::ledger_failed(
                    &e,
                    &format!("cannot record {}; will retry", found.path),
                );
                false
            }
        }
    }

    /// A file the ledger did not take: back in the gate from now, so it is
    /// tried again after the settle time, not at once.
    fn settle_again(&mut self, path: PathBuf, watch: usize, found: &NewFile) {
        let now = Instant::now();
        self.settler.observe(
            path,
            watch,
            Seen {
                size: found.size,
                mtime_ns: found.mtime_ns,
            },
            now,
            now,
        );
    }
}
