//! Scans: walking a root (or a new folder in it) on a blocking thread and
//! handing what it finds to the main loop in batches; files the ledger
//! already knows as they are skip the settle gate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::Daemon;
use crate::ledger::NewFile;
use crate::pipeline::{Filter, new_file, walk_tree};
use crate::watch::Feed;

/// A scan sends what it found in batches of this many files...
const SCAN_BATCH: usize = 256;
/// ...or after this long, whichever comes first (a slow walk over a network
/// mount still hands files on).
const SCAN_BATCH_AGE: Duration = Duration::from_millis(100);
/// Batches found by scans and not handled yet, at most (all scans together).
pub(super) const SCAN_BATCHES_QUEUED: usize = 4;
/// Why the scans at start are made (and how their end is recognised).
const STARTUP_SCAN: &str = "start-up scan";
/// Why a root that came back is scanned (and how that scan's end is
/// recognised).
pub(super) const BACK_SCAN: &str = "watch folder back";

/// The scans made at start, until every root's is over.
#[derive(Debug)]
pub(super) struct StartupScan {
    started: Instant,
    /// Roots whose scan is not over yet.
    left: usize,
    /// Files found so far.
    files: usize,
}

impl Daemon {
    /// Scan every root once at start; [`Daemon::on_scan_done`] logs when
    /// all of them are over.
    pub(super) fn startup_scans(&mut self) {
        self.startup = Some(StartupScan {
            started: Instant::now(),
            left: self.roots.len(),
            files: 0,
        });
        self.scan_all(STARTUP_SCAN);
    }

    /// Scan every root, for `why`.
    pub(super) fn scan_all(&self, why: &'static str) {
        for i in 0..self.roots.len() {
            self.scan(i, None, why);
        }
    }

    /// Walk a root (or a new folder inside it) on a blocking thread,
    /// feeding the candidate files to the main loop in batches, then
    /// [`Feed::ScanDone`].
    pub(super) fn scan(&self, watch: usize, start: Option<PathBuf>, why: &'static str) {
        let Some(root) = self.roots.get(watch) else {
            return;
        };
        // Its return is noticed by the next look, and scanned then.
        if root.presence.is_gone() {
            return;
        }
        let (path, filter, recursive) =
            (root.path.clone(), root.filter.clone(), root.cfg.recursive);
        let start = start.unwrap_or_else(|| path.clone());
        tracing::debug!(path = %start.display(), why, "scanning");
        if start == path {
            crate::metrics::rescan(why);
        }
        let job = ScanJob {
            watch,
            why,
            root: path,
            start,
            recursive,
            filter,
            started: Instant::now(),
            tx: self.feed_tx.clone(),
            permits: self.scan_batches.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        tokio::task::spawn_blocking(move || job.walk());
    }

    /// Files a scan found: those the ledger knows as they are are passed
    /// over, the others go through the settle gate.
    pub(super) async fn on_found(
        &mut self,
        watch: usize,
        files: Vec<(PathBuf, std::fs::Metadata)>,
    ) {
        let Some(root) = self.roots.get(watch) else {
            return;
        };
        // A batch from before a reload may belong to a root that is gone or
        // has other filters.
        let (paths, stats): (Vec<PathBuf>, Vec<NewFile>) = files
            .into_iter()
            .filter(|(path, meta)| {
                meta.is_file()
                    && path
                        .strip_prefix(&root.path)
                        .is_ok_and(|rel| root.filter.accepts(rel))
            })
            .map(|(path, meta)| {
                let f = new_file(&path, &meta, None);
                (path, f)
            })
            .unzip();
        let current = match self.ledger.current_among(&stats).await {
            Ok(current) => current,
            Err(e) => {
                crate::pipeline::ledger_failed(&e, "cannot read the ledger");
                return;
            }
        };
        let current = if root.adopt {
            self.adopt_found_again(&stats, current).await
        } else {
            current
        };
        for ((path, f), known) in paths.into_iter().zip(&stats).zip(current) {
            if known {
                self.settler.forget(&path);
            } else {
                self.observe(watch, path, f, None);
            }
        }
    }

    /// While a root that came back is scanned: files not current that the
    /// ledger adopts are current (`current` in, the answer out).
    pub(super) async fn adopt_found_again(
        &self,
        stats: &[NewFile],
        mut current: Vec<bool>,
    ) -> Vec<bool> {
        let (idx, again): (Vec<usize>, Vec<NewFile>) = stats
            .iter()
            .zip(&current)
            .enumerate()
            .filter(|(_, (_, known))| !**known)
            .map(|(i, (f, _))| (i, f.clone()))
            .unzip();
        match self.ledger.adopt_found_again(&again).await {
            Ok(adopted) => {
                let n = adopted.iter().filter(|a| **a).count();
                if n > 0 {
                    tracing::info!(
                        files = n,
                        "files found again as they were recorded: not read or sent again"
                    );
                }
                for (i, a) in idx.into_iter().zip(adopted) {
                    if let Some(slot) = current.get_mut(i) {
                        *slot |= a;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the ledger"),
        }
        current
    }

    pub(super) fn on_scan_done(
        &mut self,
        watch: usize,
        why: &'static str,
        files: usize,
        started: Instant,
    ) {
        tracing::debug!(watch, why, files, elapsed = ?started.elapsed(), "scan finished");
        if why == BACK_SCAN
            && let Some(root) = self.roots.get_mut(watch)
        {
            root.adopt = false;
        }
        if why != STARTUP_SCAN {
            return;
        }
        let Some(s) = &mut self.startup else {
            return;
        };
        s.files += files;
        s.left = s.left.saturating_sub(1);
        if s.left == 0 {
            tracing::info!(
                files = s.files,
                settling = self.settler.len(),
                elapsed_ms = u64::try_from(s.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "start-up scan finished"
            );
            self.startup = None;
        }
    }
}

/// One scan, for a blocking thread.
struct ScanJob {
    watch: usize,
    why: &'static str,
    /// The watched folder.
    root: PathBuf,
    /// Where the walk starts: the root, or a new folder inside it.
    start: PathBuf,
    recursive: bool,
    filter: Filter,
    started: Instant,
    tx: mpsc::Sender<Feed>,
    /// See [`Daemon::scan_batches`].
    permits: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
}

impl ScanJob {
    /// Walk, handing the candidate files to the main loop in batches (each
    /// waits for a permit), then [`Feed::ScanDone`]; the walk stops when
    /// the daemon does.
    fn walk(self) {
        let ScanJob {
            watch,
            why,
            root: path,
            start,
            recursive,
            filter,
            started,
            tx,
            permits,
            runtime,
        } = self;
        let mut batch = Vec::new();
        let mut batch_since = Instant::now();
        let mut files = 0usize;
        // False when the daemon is stopping: the walk stops too.
        let send = |batch: &mut Vec<(PathBuf, std::fs::Metadata)>| {
            if batch.is_empty() {
                return true;
            }
            let Ok(permit) = runtime.block_on(permits.clone().acquire_owned()) else {
                return false;
            };
            let files = std::mem::take(batch);
            tx.blocking_send(Feed::Found {
                watch,
                files,
                permit,
            })
            .is_ok()
        };
        let finished = walk_tree(
            &path,
            &start,
            recursive,
            &filter,
            &mut |found| match found {
                Ok(file) => {
                    if batch.is_empty() {
                        batch_since = Instant::now();
                    }
                    batch.push(file);
                    files += 1;
                    if batch.len() >= SCAN_BATCH || batch_since.elapsed() >= SCAN_BATCH_AGE {
                        send(&mut batch)
                    } else {
                        true
                    }
                }
                Err(problem) => {
                    tracing::warn!(error = %problem, "while scanning");
                    true
                }
            },
        );
        // The daemon is stopping if a send failed: nobody to tell.
        if finished && send(&mut batch) {
            let _ = tx.blocking_send(Feed::ScanDone {
                watch,
                why,
                files,
                started,
            });
        }
    }
}
