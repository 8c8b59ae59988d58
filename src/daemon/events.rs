//! The main loop: one task owns the settle gate and reacts to controls,
//! watcher feeds, periodic rescans, status ticks and root looks until a
//! `Shutdown` control arrives.

use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

use super::roots::ROOT_LOOK_EVERY;
use super::status_tick::STATUS_EVERY;
use super::{Control, Daemon, STAT_TIMEOUT};
use crate::pipeline::new_file;
use crate::watch::Feed;

/// The loop's clocks.
struct Ticks {
    /// Every root is walked again (`watcher.rescan_interval`).
    rescan: Interval,
    /// STATUS=, the watchdog and /healthz.
    status: Interval,
    /// Every root is looked at: still there?
    root: Interval,
}

impl Ticks {
    fn new(rescan_interval: std::time::Duration) -> Ticks {
        let mut rescan = tokio::time::interval_at(
            tokio::time::Instant::now() + rescan_interval,
            rescan_interval,
        );
        rescan.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut status = tokio::time::interval(STATUS_EVERY);
        status.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut root = tokio::time::interval_at(
            tokio::time::Instant::now() + ROOT_LOOK_EVERY,
            ROOT_LOOK_EVERY,
        );
        root.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Ticks {
            rescan,
            status,
            root,
        }
    }
}

impl Daemon {
    /// React to everything until a `Shutdown` control arrives (or
    /// `controls` closes).
    pub(super) async fn event_loop(
        &mut self,
        controls: &mut mpsc::Receiver<Control>,
        mut feed_rx: mpsc::Receiver<Feed>,
    ) {
        let mut ticks = Ticks::new(self.config.watcher.rescan_interval);
        // Each end of a ledger outage: what the watchers saw meanwhile may not
        // have reached the ledger, so every folder is walked again.
        let mut recoveries = self.ledger.health().recoveries();
        loop {
            // The next file due to settle, not before the next pass may run.
            let settle_at = self
                .settler
                .next_due()
                .map(|due| tokio::time::Instant::from_std(due.max(self.next_settle_pass)));
            tokio::select! {
                control = controls.recv() => match control {
                    Some(Control::Reload) => self.reload().await,
                    Some(Control::Shutdown) | None => break,
                },
                Some(feed) = feed_rx.recv() => self.on_feed(feed).await,
                () = sleep_until(settle_at) => self.settle().await,
                _ = ticks.rescan.tick() => self.scan_all("periodic rescan"),
                _ = ticks.status.tick() => self.status().await,
                _ = ticks.root.tick() => {
                    for i in 0..self.roots.len() {
                        self.look_at_root(i);
                    }
                }
                Ok(()) = recoveries.changed() => {
                    recoveries.borrow_and_update();
                    self.scan_all("ledger writable again");
                }
            }
        }
    }

    async fn on_feed(&mut self, feed: Feed) {
        match feed {
            Feed::Path { watch, path, at } => {
                crate::metrics::watcher_events(1);
                let meta = stat_off_thread(path.clone()).await;
                self.on_path(watch, path, meta, at).await
            }
            Feed::Found {
                watch,
                files,
                permit,
            } => {
                self.on_found(watch, files).await;
                drop(permit);
            }
            Feed::ScanDone {
                watch,
                why,
                files,
                started,
            } => self.on_scan_done(watch, why, files, started),
            Feed::Rescan { watch, reason } => {
                tracing::info!(reason = %reason, "rescanning");
                self.scan(watch, None, "lost events");
            }
            Feed::LimitReached { watch } => self.fall_back_to_polling(watch),
            Feed::RootRemoved { watch } => self.on_root_removed(watch),
            Feed::RootSeen { watch, path, seen } => self.on_root_seen(watch, &path, seen),
        }
    }

    /// An event at `path`, at `at`. `meta`: the path's metadata, `None` if
    /// it is gone (or did not answer).
    async fn on_path(
        &mut self,
        watch: usize,
        path: PathBuf,
        meta: Option<std::fs::Metadata>,
        at: Instant,
    ) {
        let Some(root) = self.roots.get(watch) else {
            return;
        };
        // A feed from before a reload may name a root that is gone.
        if !path.starts_with(&root.path) {
            return;
        }
        let Some(meta) = meta else {
            self.settler.forget(&path);
            return;
        };
        if meta.is_dir() {
            // A new folder: its files may have landed before it was watched.
            if path != root.path && root.cfg.recursive {
                self.scan(watch, Some(path), "new folder");
            }
            return;
        }
        let rel = path.strip_prefix(&root.path).unwrap_or(&path);
        if !meta.is_file() || !root.filter.accepts(rel) {
            return;
        }
        let found = new_file(&path, &meta, None);
        let adopt = root.adopt;
        match self.ledger.is_current(&found).await {
            Ok(true) => self.settler.forget(&path),
            Ok(false)
                if adopt
                    && self
                        .adopt_found_again(std::slice::from_ref(&found), vec![false])
                        .await
                        .first()
                        == Some(&true) =>
            {
                self.settler.forget(&path)
            }
            Ok(false) => self.observe(watch, path, &found, Some(at)),
            Err(e) => crate::pipeline::ledger_failed(&e, "cannot read the ledger"),
        }
    }
}

/// Sleep until `at`; forever if there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A path's metadata from a blocking thread; `None` if it is gone or the
/// filesystem did not answer in time.
async fn stat_off_thread(path: PathBuf) -> Option<std::fs::Metadata> {
    let stat = tokio::task::spawn_blocking(move || std::fs::metadata(path).ok());
    match tokio::time::timeout(STAT_TIMEOUT, stat).await {
        Ok(Ok(meta)) => meta,
        _ => None,
    }
}
