//! The watched folders: arming a watcher on each, and noticing one that
//! goes away or comes back (README.md, "Watched folders that go away").

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::scans::BACK_SCAN;
use super::{Daemon, DaemonError, Root, Setup};
use crate::config::{Config, FileAction, WatchConfig};
use crate::ledger::{Origin, now_ms};
use crate::pipeline::Filter;
use crate::watch::presence::{self, Change, Identity, Presence};
use crate::watch::{Feed, Mode, fstype, limit_message, watch_root};

/// How often each root is looked at (one stat): is it still there, and
/// still the folder being watched? (README.md, "Watched folders that go
/// away".)
pub(super) const ROOT_LOOK_EVERY: Duration = Duration::from_secs(2);

/// The watched folders as records name them (`Origin::root`): on a shared
/// ledger this daemon may send files other hosts found in them.
pub(super) fn root_names(roots: &[Root]) -> Vec<String> {
    roots
        .iter()
        .map(|r| r.path.to_string_lossy().into_owned())
        .collect()
}

/// The configured roots (or the default one), each checked and watched.
pub(super) fn arm_roots(
    setup: &Setup,
    config: &Config,
    feed: &mpsc::Sender<Feed>,
) -> Result<Vec<Root>, DaemonError> {
    let mut watches = config.watch.clone();
    if watches.is_empty() {
        match &setup.default_watch {
            Some(path) => {
                std::fs::create_dir_all(path).map_err(|e| {
                    DaemonError::Config(format!("cannot create {}: {e}", path.display()))
                })?;
                watches.push(WatchConfig::for_path(path.clone()));
            }
            None => {
                return Err(DaemonError::Config(
                    "no folders to watch: add a [[watch]] table with a path to the configuration"
                        .into(),
                ));
            }
        }
    }
    let mut roots = Vec::with_capacity(watches.len());
    for (i, cfg) in watches.into_iter().enumerate() {
        let path = std::path::absolute(&cfg.path).unwrap_or_else(|_| cfg.path.clone());
        let identity = match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                use std::os::unix::fs::MetadataExt;
                Identity {
                    device: m.dev(),
                    inode: m.ino(),
                }
            }
            Ok(_) => {
                return Err(DaemonError::Config(format!(
                    "watch[{i}].path: {} is not a folder",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(DaemonError::Config(format!(
                    "watch[{i}].path: {}: {e}",
                    path.display()
                )));
            }
        };
        let filter = Filter::new(&cfg)
            .map_err(|e| DaemonError::Config(format!("watch[{i}]: {e}")))?
            .with_url_lists();
        let origin = origin_of(&cfg, &path);
        let local = fstype::network_fs(&path).is_none();
        let metadata = (!cfg.user_metadata.is_empty())
            .then(|| serde_json::to_string(&cfg.user_metadata).ok())
            .flatten();
        let (watcher, mode) =
            watch_root(i, &path, cfg.recursive, &config.watcher, None, feed.clone()).map_err(
                |e| DaemonError::Config(format!("cannot watch {}: {e}", path.display())),
            )?;
        log_mode(&path, &mode);
        roots.push(Root {
            cfg,
            path,
            filter,
            metadata,
            origin,
            local,
            watcher: Some(watcher),
            presence: Presence::present(identity),
            looking: Arc::new(AtomicBool::new(false)),
            adopt: false,
        });
    }
    Ok(roots)
}

/// The instructions each record of this watch carries.
fn origin_of(cfg: &WatchConfig, root: &Path) -> Origin {
    let action = |a: &FileAction| {
        (*a != FileAction::default())
            .then(|| serde_json::to_string(a).ok())
            .flatten()
    };
    Origin {
        root: root.to_string_lossy().into_owned(),
        index_id: cfg.index_id.clone().filter(|i| !i.is_empty()),
        after_upload: action(&cfg.after_upload),
        on_failure: action(&cfg.on_failure),
    }
}

fn log_mode(path: &Path, mode: &Mode) {
    match mode {
        Mode::Native => tracing::info!(path = %path.display(), "watching"),
        Mode::Poll { reason } => {
            tracing::info!(path = %path.display(), reason = %reason, "watching by polling")
        }
    }
}

impl Daemon {
    /// Look at a root (one stat, on a blocking thread): the answer comes
    /// back as [`Feed::RootSeen`]. Not while the last look is unanswered.
    pub(super) fn look_at_root(&self, watch: usize) {
        let Some(root) = self.roots.get(watch) else {
            return;
        };
        if root.looking.swap(true, Ordering::AcqRel) {
            return;
        }
        let (path, looking, tx) = (
            root.path.clone(),
            root.looking.clone(),
            self.feed_tx.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let seen = presence::identify(&path);
            looking.store(false, Ordering::Release);
            let _ = tx.blocking_send(Feed::RootSeen { watch, path, seen });
        });
    }

    /// The watcher saw the root removed or moved away: its watches are
    /// dead, even if a folder is back at the path already (perhaps under
    /// the same inode number, which a look could not tell apart).
    pub(super) fn on_root_removed(&mut self, watch: usize) {
        let Some(root) = self.roots.get_mut(watch) else {
            return;
        };
        if let Change::Gone(why) = root
            .presence
            .mark_gone("removed or moved away".into(), now_ms())
        {
            self.root_gone(watch, &why);
        }
        // Back already? (`rm -rf inbox && mkdir inbox`)
        self.look_at_root(watch);
    }

    pub(super) fn on_root_seen(
        &mut self,
        watch: usize,
        path: &Path,
        seen: Result<Identity, String>,
    ) {
        let Some(root) = self.roots.get_mut(watch) else {
            return;
        };
        // A look from before a reload may be at another root.
        if root.path != path {
            return;
        }
        match root.presence.observe(seen, now_ms()) {
            Change::None => {}
            Change::Gone(why) => self.root_gone(watch, &why),
            Change::Back(_) => self.root_back(watch),
            Change::Replaced(_) => {
                self.root_gone(watch, "another folder is at its path now");
                self.root_back(watch);
            }
        }
    }

    /// The root went away: its watches are dead; say so once.
    fn root_gone(&mut self, watch: usize, why: &str) {
        let Some(root) = self.roots.get_mut(watch) else {
            return;
        };
        root.watcher = None;
        root.adopt = false;
        tracing::warn!(
            reason = %why,
            "watch folder {} is gone (removed or unmounted); waiting for it to come back",
            root.path.display()
        );
        crate::metrics::watch_folder_gone();
        self.count_gone();
    }

    /// The root is there again (or another folder is at its path): watch it
    /// afresh, as what it is now (a share may come back as NFS where a
    /// local folder was), then scan it.
    fn root_back(&mut self, watch: usize) {
        let Some(root) = self.roots.get_mut(watch) else {
            return;
        };
        root.local = fstype::network_fs(&root.path).is_none();
        match watch_root(
            watch,
            &root.path,
            root.cfg.recursive,
            &self.config.watcher,
            None,
            self.feed_tx.clone(),
        ) {
            Ok((w, mode)) => {
                root.watcher = Some(w);
                root.adopt = true;
                tracing::info!("watch folder {} is back", root.path.display());
                log_mode(&root.path, &mode);
            }
            Err(e) => {
                // Looked at again at the next tick.
                tracing::warn!(
                    error = %e,
                    "watch folder {} is back but cannot be watched yet; trying again",
                    root.path.display()
                );
                root.presence
                    .mark_gone(format!("cannot be watched: {e}"), now_ms());
                return;
            }
        }
        self.count_gone();
        self.scan(watch, None, BACK_SCAN);
    }

    fn count_gone(&self) {
        let gone = self.roots.iter().filter(|r| r.presence.is_gone()).count();
        crate::metrics::watch_folders_gone(gone);
    }

    pub(super) fn fall_back_to_polling(&mut self, watch: usize) {
        let Some(root) = self.roots.get_mut(watch) else {
            return;
        };
        tracing::warn!("{}", limit_message(&root.path));
        root.watcher = None;
        match watch_root(
            watch,
            &root.path,
            root.cfg.recursive,
            &self.config.watcher,
            Some("the inotify watch limit is reached".into()),
            self.feed_tx.clone(),
        ) {
            Ok((w, mode)) => {
                log_mode(&root.path, &mode);
                root.watcher = Some(w);
            }
            Err(e) => {
                tracing::error!(path = %root.path.display(), error = %e, "cannot poll; relying on periodic rescans")
            }
        }
        self.scan(watch, None, "watch limit reached");
    }
}
