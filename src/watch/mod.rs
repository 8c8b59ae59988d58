//! Watching folders: filesystem events (native or polling) turned into
//! candidate files, plus the settle gate that holds each candidate until it
//! has stopped changing. The daemon owns the loop; this module owns the
//! watchers and the rules.

pub mod presence;
pub mod settle;

/// Where the daemon has always found it; the module lives at the crate
/// root because `doctor` asks the same question.
pub use crate::fstype;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, NoCache, RecommendedCache};
use tokio::sync::mpsc;

use crate::config::{WatcherConfig, WatcherMode};

/// What a watcher (or a scan) reports.
#[derive(Debug)]
pub enum Feed {
    /// Something happened at this path (a file or a folder) in watch
    /// `watch`; `at` is when the watcher received the event (the path
    /// changed then, and may have changed again since).
    Path {
        watch: usize,
        path: PathBuf,
        at: Instant,
    },
    /// A scan found these files, with their metadata (not events: counted
    /// apart, not stat'ed again, and checked against the ledger together).
    Found {
        watch: usize,
        files: Vec<(PathBuf, std::fs::Metadata)>,
        /// Held until the batch is handled: scans wait for a permit before
        /// sending, so a fast walk does not queue a whole tree in memory.
        permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// A scan is over: every file it found was sent before this.
    ScanDone {
        watch: usize,
        why: &'static str,
        /// Files found.
        files: usize,
        /// When the scan was asked for.
        started: Instant,
    },
    /// Events were lost: scan the whole root again.
    Rescan { watch: usize, reason: String },
    /// The native watcher hit the inotify watch limit: poll this root.
    LimitReached { watch: usize },
    /// The watcher saw the root itself removed or moved away: look at it
    /// now rather than at the next periodic look.
    RootRemoved { watch: usize },
    /// A look at root `path` (see [`presence`]): the folder there, or why
    /// there is none.
    RootSeen {
        watch: usize,
        path: PathBuf,
        seen: Result<presence::Identity, String>,
    },
}

/// How a root is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Native,
    Poll { reason: String },
}

/// A live watcher for one root; dropping it stops watching.
pub enum RootWatcher {
    Native(Debouncer<notify::RecommendedWatcher, RecommendedCache>),
    Poll(Debouncer<notify::PollWatcher, NoCache>),
}

impl std::fmt::Debug for RootWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootWatcher::Native(_) => f.write_str("RootWatcher::Native"),
            RootWatcher::Poll(_) => f.write_str("RootWatcher::Poll"),
        }
    }
}

/// Merge bursts of events on the same file; settling is done elsewhere.
/// On a local filesystem this does not delay a pick-up: the settle clock
/// of a file starts at its last write (its mtime), not when the event
/// arrives, so the debounce is hidden inside any settle time longer than
/// it. A shorter one would only mean more events: the debouncer passes on
/// a file still being written every tick (a quarter of this).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The message for an exhausted inotify watch limit.
pub fn limit_message(root: &Path) -> String {
    format!(
        "the inotify watch limit is reached while watching {}: polling it instead. \
         Raise fs.inotify.max_user_watches (e.g. sysctl fs.inotify.max_user_watches=524288) \
         to watch it natively",
        root.display()
    )
}

fn handler(
    watch: usize,
    root: PathBuf,
    tx: mpsc::Sender<Feed>,
) -> impl FnMut(DebounceEventResult) + Send + 'static {
    move |result: DebounceEventResult| match result {
        Ok(events) => {
            for event in events {
                if event.need_rescan() {
                    let _ = tx.blocking_send(Feed::Rescan {
                        watch,
                        reason: "the watcher lost events".into(),
                    });
                    continue;
                }
                // Reading a file or listing a folder is not a change, and
                // our own scans cause such events: passing them on made the
                // daemon rescan every folder forever.
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    continue;
                }
                // inotify's IN_DELETE_SELF and IN_MOVE_SELF on the root: its
                // watches are dead (an unmount says nothing: the periodic
                // look finds that).
                if root_went(&event.event, &root) {
                    let _ = tx.blocking_send(Feed::RootRemoved { watch });
                }
                for path in &event.paths {
                    let _ = tx.blocking_send(Feed::Path {
                        watch,
                        path: path.clone(),
                        at: event.time,
                    });
                }
            }
        }
        Err(errors) => {
            for e in errors {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    let _ = tx.blocking_send(Feed::LimitReached { watch });
                } else {
                    tracing::warn!(error = %e, "watcher error; rescanning");
                    let _ = tx.blocking_send(Feed::Rescan {
                        watch,
                        reason: format!("watcher error: {e}"),
                    });
                }
            }
        }
    }
}

/// Whether `event` says the root itself was removed or moved away.
fn root_went(event: &notify::Event, root: &Path) -> bool {
    use notify::EventKind;
    use notify::event::{ModifyKind, RenameMode};
    matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
    ) && event.paths.iter().any(|p| p == root)
}

/// Start watching `root`: natively unless configured or detected otherwise
/// (network filesystems are polled), falling back to polling when the
/// native watcher cannot be set up.
pub fn watch_root(
    watch: usize,
    root: &Path,
    recursive: bool,
    cfg: &WatcherConfig,
    force_poll: Option<String>,
    tx: mpsc::Sender<Feed>,
) -> Result<(RootWatcher, Mode), notify::Error> {
    let mode = if let Some(reason) = force_poll {
        Mode::Poll { reason }
    } else if cfg.mode == WatcherMode::Poll {
        Mode::Poll {
            reason: "watcher.mode = \"poll\"".into(),
        }
    } else if let Some(fs) = fstype::network_fs(root) {
        Mode::Poll {
            reason: format!("it is on a {fs} filesystem, where native events are unreliable"),
        }
    } else {
        Mode::Native
    };
    let recursive = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    if mode == Mode::Native {
        let mut debouncer = notify_debouncer_full::new_debouncer(
            DEBOUNCE,
            None,
            handler(watch, root.to_path_buf(), tx.clone()),
        )?;
        match debouncer.watch(root, recursive) {
            Ok(()) => return Ok((RootWatcher::Native(debouncer), Mode::Native)),
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                tracing::warn!("{}", limit_message(root));
                return watch_root(
                    watch,
                    root,
                    recursive == RecursiveMode::Recursive,
                    cfg,
                    Some("the inotify watch limit is reached".into()),
                    tx,
                );
            }
            Err(e) => return Err(e),
        }
    }
    let config = notify::Config::default().with_poll_interval(cfg.poll_interval);
    let mut debouncer = notify_debouncer_full::new_debouncer_opt::<_, notify::PollWatcher, NoCache>(
        DEBOUNCE,
        None,
        handler(watch, root.to_path_buf(), tx),
        NoCache,
        config,
    )?;
    debouncer.watch(root, recursive)?;
    Ok((RootWatcher::Poll(debouncer), mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{Event, EventKind, Flag};
    use notify_debouncer_full::DebouncedEvent;

    fn run(result: DebounceEventResult) -> Vec<Feed> {
        let (tx, mut rx) = mpsc::channel(16);
        let mut h = handler(3, PathBuf::from("/in"), tx);
        // The handler runs on the debouncer's own thread, never on the runtime.
        std::thread::scope(|s| {
            s.spawn(|| h(result));
        });
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(f);
        }
        out
    }

    #[test]
    fn a_rescan_flag_asks_for_a_rescan_and_events_pass_with_their_time() {
        let lost = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        let ordinary = Event::new(EventKind::Any).add_path("/in/a.mp4".into());
        let when = Instant::now();
        let feeds = run(Ok(vec![
            DebouncedEvent::new(lost, when),
            DebouncedEvent::new(ordinary, when),
        ]));
        assert!(
            matches!(
                feeds.as_slice(),
                [Feed::Rescan { watch: 3, .. }, Feed::Path { watch: 3, path, at }]
                    if path == std::path::Path::new("/in/a.mp4") && *at == when
            ),
            "{feeds:?}"
        );
    }

    #[test]
    fn access_events_are_not_changes() {
        use notify::event::{AccessKind, AccessMode};
        let opened = Event::new(EventKind::Access(AccessKind::Open(AccessMode::Read)))
            .add_path("/in/sub".into());
        let closed = Event::new(EventKind::Access(AccessKind::Close(AccessMode::Write)))
            .add_path("/in/a.mp4".into());
        let feeds = run(Ok(vec![
            DebouncedEvent::new(opened, std::time::Instant::now()),
            DebouncedEvent::new(closed, std::time::Instant::now()),
        ]));
        assert!(feeds.is_empty(), "{feeds:?}");
    }

    #[test]
    fn the_root_removed_or_moved_away_asks_for_a_look_and_a_subfolder_does_not() {
        use notify::event::{ModifyKind, RemoveKind, RenameMode};
        let at = Instant::now();
        let removed = Event::new(EventKind::Remove(RemoveKind::Folder)).add_path("/in".into());
        let moved = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::From)))
            .add_path("/in".into());
        let sub = Event::new(EventKind::Remove(RemoveKind::Folder)).add_path("/in/sub".into());
        let feeds = run(Ok(vec![
            DebouncedEvent::new(removed, at),
            DebouncedEvent::new(moved, at),
            DebouncedEvent::new(sub, at),
        ]));
        let looks = feeds
            .iter()
            .filter(|f| matches!(f, Feed::RootRemoved { watch: 3 }))
            .count();
        assert_eq!(looks, 2, "{feeds:?}");
        // The events themselves still pass (a removed subfolder's files
        // leave the settle gate).
        assert_eq!(feeds.len(), 5, "{feeds:?}");
    }

    #[test]
    fn the_watch_limit_asks_for_polling_and_other_errors_for_a_rescan() {
        let feeds = run(Err(vec![
            notify::Error::new(notify::ErrorKind::MaxFilesWatch),
            notify::Error::generic("queue overflow"),
        ]));
        assert!(
            matches!(feeds[0], Feed::LimitReached { watch: 3 }),
            "{feeds:?}"
        );
        assert!(
            matches!(&feeds[1], Feed::Rescan { watch: 3, .. }),
            "{feeds:?}"
        );
        assert!(limit_message(Path::new("/in")).contains("fs.inotify.max_user_watches"));
    }
}
