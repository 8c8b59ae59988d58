//! `tl-ingest run`: the long-running service.
//!
//! Wiring, in order: take the ledger's lock, open the ledger, put back what
//! a previous run left in flight, start the pipeline, arm a watcher on every
//! root, tell systemd we are ready, then scan every root once. From then on
//! one loop owns the settle gate and reacts to watcher feeds, periodic
//! rescans, status ticks and controls (shutdown, reload) until shutdown.
//!
//! Files reach the ledger only through the settle gate: a file is recorded
//! (`discovered`) once its size and mtime have held still for
//! `watcher.settle`, counted from its last change (see `watch::settle`).
//! The loop wakes when the next file is due, not on a fixed tick. Files the
//! ledger already knows with the same stat are passed over without settling
//! or hashing, which keeps restarts cheap: scans send files in batches, and
//! the ledger answers for a whole batch in one query.

pub mod lock;
pub mod systemd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiClient, ClientOptions};
use crate::config::{Config, FileAction, LoadOptions, WatchConfig};
use crate::ledger::{FileState, Ledger, LedgerError, Location, NewFile, Origin, now_ms};
use crate::pipeline::{Filter, GateState, LedgerBackoff, Pipeline, Running, new_file, walk_tree};
use crate::secret::{ApiKey, load_api_key};
use crate::watch::presence::{self, Change, Identity, Presence};
use crate::watch::settle::{Seen, Settler, since_mtime};
use crate::watch::{Feed, Mode, RootWatcher, fstype, limit_message, watch_root};
use lock::{LedgerLock, LockError};

/// What the outside world asks of a running daemon (signals, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop taking work and drain; a second one stops at once.
    Shutdown,
    /// Re-read the configuration and apply it if it is valid.
    Reload,
}

/// Where the API client comes from.
#[derive(Debug, Clone)]
pub enum ClientSource {
    /// The configured base URL and key, re-read on every reload.
    Configured,
    /// A fixed endpoint (the built-in emulator).
    Fixed { base_url: String, key: ApiKey },
}

/// How to start (and reload) the daemon.
#[derive(Debug, Clone)]
pub struct Setup {
    /// How the configuration is (re)loaded.
    pub load: LoadOptions,
    pub ledger: Location,
    pub client: ClientSource,
    /// Watched when the configuration names no `[[watch]]` (`run --emulator`).
    pub default_watch: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Auth rejections are retried after this long, in case the key was fixed
/// on the platform's side.
const AUTH_RETRY: Duration = Duration::from_secs(300);
/// How often STATUS= (and the watchdog) are refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Records are counted at least this often, for other processes' changes.
const RECOUNT_EVERY: Duration = Duration::from_secs(60);
/// A `.urls` list larger than this is read only this far.
const MAX_URL_LIST: u64 = 4 * 1024 * 1024;
/// Longest the main loop waits for a stat (a hung network mount).
const STAT_TIMEOUT: Duration = Duration::from_secs(10);
/// /healthz fails when the main loop has not turned for this long.
const STALL: Duration = Duration::from_secs(30);
/// A scan sends what it found in batches of this many files...
const SCAN_BATCH: usize = 256;
/// ...or after this long, whichever comes first (a slow walk over a network
/// mount still hands files on).
const SCAN_BATCH_AGE: Duration = Duration::from_millis(100);
/// Batches found by scans and not handled yet, at most (all scans together).
const SCAN_BATCHES_QUEUED: usize = 4;
/// Files due to settle within this of each other are looked at in one pass.
const SETTLE_COALESCE: Duration = Duration::from_millis(10);
/// After a pass whose stats did not answer in time, wait this long.
const SETTLE_RETRY: Duration = Duration::from_secs(1);
/// How often each root is looked at (one stat): is it still there, and
/// still the folder being watched? (README.md, "Watched folders that go
/// away".)
const ROOT_LOOK_EVERY: Duration = Duration::from_secs(2);
/// Why a root that came back is scanned (and how that scan's end is
/// recognised).
const BACK_SCAN: &str = "watch folder back";

struct Root {
    cfg: WatchConfig,
    /// Absolute path of the watched folder.
    path: PathBuf,
    filter: Filter,
    /// The watch's `user_metadata` as JSON, stored with each record.
    metadata: Option<String>,
    /// What the watch wants done with its files, stored with each record.
    origin: Origin,
    /// The root is on a local filesystem, whose mtimes come from our own
    /// clock: the settle gate may count from a file's mtime. (A network
    /// server's clock may be behind ours.)
    local: bool,
    /// Dropped to stop watching.
    watcher: Option<RootWatcher>,
    /// Whether the folder is there, and which folder it is.
    presence: Presence,
    /// A look at the folder is under way (a stat on a hung mount does not
    /// pile up more).
    looking: Arc<AtomicBool>,
    /// Until the scan after its return is over, files found with the size
    /// and mtime of their record are that record's (see
    /// [`Ledger::adopt_found_again`]).
    adopt: bool,
}

/// Run the daemon until a `Shutdown` control arrives (or `controls` closes).
pub async fn run(
    setup: Setup,
    config: Config,
    mut controls: mpsc::Receiver<Control>,
) -> Result<(), DaemonError> {
    let _lock = LedgerLock::acquire_for(&setup.ledger)?;
    // The key and the folders first: a start that fails on them leaves no
    // new, empty ledger behind.
    let client = make_client(&setup, &config)?;
    let (feed_tx, mut feed_rx) = mpsc::channel::<Feed>(4096);
    let roots = arm_roots(&setup, &config, &feed_tx)?;
    let ledger = Ledger::open_at(&setup.ledger).await?;
    let config = Arc::new(config);
    let pipeline = Pipeline::new(ledger.clone(), client, config.clone());
    pipeline.recover().await?;
    ledger.set_roots(&root_names(&roots)).await?;
    let ledger_changes = ledger.subscribe();
    let running = pipeline.start();
    let mut d = Daemon {
        setup,
        config,
        ledger,
        pipeline,
        running,
        roots,
        settler: Settler::new(Duration::ZERO),
        next_settle_pass: Instant::now(),
        startup: None,
        scan_batches: Arc::new(tokio::sync::Semaphore::new(SCAN_BATCHES_QUEUED)),
        feed_tx,
        auth_rejected_at: None,
        ledger_backoff: Default::default(),
        health: Arc::new(Mutex::new(Ok(()))),
        heartbeat: Arc::new(AtomicI64::new(now_ms())),
        status_changes: ledger_changes,
        counts: None,
    };
    let metrics_stop = CancellationToken::new();
    let _metrics_stop = metrics_stop.clone().drop_guard();
    d.serve_metrics(metrics_stop).await?;
    d.settler.set_settle(d.config.watcher.settle);
    systemd::ready().await;
    tracing::info!(
        ledger = %d.setup.ledger,
        roots = d.roots.len(),
        workers = d.config.upload.workers,
        "tl-ingest is running"
    );
    d.startup = Some(StartupScan {
        started: Instant::now(),
        left: d.roots.len(),
        files: 0,
    });
    for i in 0..d.roots.len() {
        d.scan(i, None, STARTUP_SCAN);
    }

    let mut rescan_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + d.config.watcher.rescan_interval,
        d.config.watcher.rescan_interval,
    );
    rescan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut root_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + ROOT_LOOK_EVERY,
        ROOT_LOOK_EVERY,
    );
    root_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Each end of a ledger outage: what the watchers saw meanwhile may not
    // have reached the ledger, so every folder is walked again.
    let mut recoveries = d.ledger.health().recoveries();

    loop {
        // The next file due to settle, not before the next pass may run.
        let settle_at = d
            .settler
            .next_due()
            .map(|due| tokio::time::Instant::from_std(due.max(d.next_settle_pass)));
        tokio::select! {
            control = controls.recv() => match control {
                Some(Control::Reload) => d.reload().await,
                Some(Control::Shutdown) | None => break,
            },
            Some(feed) = feed_rx.recv() => d.on_feed(feed).await,
            () = sleep_until(settle_at) => d.settle().await,
            _ = rescan_tick.tick() => {
                for i in 0..d.roots.len() {
                    d.scan(i, None, "periodic rescan");
                }
            }
            _ = status_tick.tick() => d.status().await,
            _ = root_tick.tick() => {
                for i in 0..d.roots.len() {
                    d.look_at_root(i);
                }
            }
            Ok(()) = recoveries.changed() => {
                recoveries.borrow_and_update();
                for i in 0..d.roots.len() {
                    d.scan(i, None, "ledger writable again");
                }
            }
        }
    }
    d.shutdown(&mut controls).await;
    Ok(())
}

/// Sleep until `at`; forever if there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why the scans at start are made (and how their end is recognised).
const STARTUP_SCAN: &str = "start-up scan";

/// The scans made at start, until every root's is over.
#[derive(Debug)]
struct StartupScan {
    started: Instant,
    /// Roots whose scan is not over yet.
    left: usize,
    /// Files found so far.
    files: usize,
}

fn make_client(setup: &Setup, config: &Config) -> Result<ApiClient, DaemonError> {
    let (base_url, key) = match &setup.client {
        ClientSource::Fixed { base_url, key } => (base_url.clone(), key.clone()),
        ClientSource::Configured => {
            let (key, _) = load_api_key(&setup.load.env, config.api.key_file.as_deref())
                .map_err(|e| DaemonError::Config(e.to_string()))?;
            (config.api.base_url.clone(), key)
        }
    };
    let opts = ClientOptions {
        base_url,
        request_timeout: config.api.request_timeout,
        connect_timeout: config.api.connect_timeout,
    };
    ApiClient::new(&opts, &key).map_err(|e| DaemonError::Config(key.redact(&e.to_string())))
}

/// The watched folders as records name them (`Origin::root`): on a shared
/// ledger this daemon may send files other hosts found in them.
fn root_names(roots: &[Root]) -> Vec<String> {
    roots
        .iter()
        .map(|r| r.path.to_string_lossy().into_owned())
        .collect()
}

/// The configured roots (or the default one), each checked and watched.
fn arm_roots(
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

/// A path's metadata from a blocking thread; `None` if it is gone or the
/// filesystem did not answer in time.
async fn stat_off_thread(path: PathBuf) -> Option<std::fs::Metadata> {
    let stat = tokio::task::spawn_blocking(move || std::fs::metadata(path).ok());
    match tokio::time::timeout(STAT_TIMEOUT, stat).await {
        Ok(Ok(meta)) => meta,
        _ => None,
    }
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

struct Daemon {
    setup: Setup,
    config: Arc<Config>,
    ledger: Ledger,
    pipeline: Pipeline,
    running: Running,
    roots: Vec<Root>,
    settler: Settler,
    /// The settle gate is not looked at again before this (passes close
    /// together are merged; a pass that timed out is not retried at once).
    next_settle_pass: Instant,
    /// The start-up scans, while they last.
    startup: Option<StartupScan>,
    /// Permits for scan batches waiting for the main loop (see
    /// [`Feed::Found`]).
    scan_batches: Arc<tokio::sync::Semaphore>,
    /// Watchers and scans send here; the main loop receives.
    feed_tx: mpsc::Sender<Feed>,
    auth_rejected_at: Option<Instant>,
    /// Consecutive passes of the settle gate the ledger failed.
    ledger_backoff: LedgerBackoff,
    /// What /healthz says; written by the status tick.
    health: Arc<Mutex<Result<(), String>>>,
    /// When the main loop last turned (Unix ms); read by /healthz.
    heartbeat: Arc<AtomicI64>,
    /// Changes since the status tick last counted the records.
    status_changes: tokio::sync::broadcast::Receiver<crate::ledger::Change>,
    /// The last counts per state, and when they were taken: counting is a
    /// pass over every record, so it is done again only after a change.
    counts: Option<(Vec<(FileState, i64)>, Instant)>,
}

impl Daemon {
    /// Serve /metrics and /healthz when `telemetry.metrics_listen` is set.
    async fn serve_metrics(&self, stop: CancellationToken) -> Result<(), DaemonError> {
        let listen = &self.config.telemetry.metrics_listen;
        if listen.is_empty() {
            return Ok(());
        }
        let addr: SocketAddr = listen.parse().map_err(|_| {
            DaemonError::Config(format!(
                "telemetry.metrics_listen: {listen:?} is not host:port"
            ))
        })?;
        let metrics = crate::metrics::install().map_err(|e| DaemonError::Config(e.to_string()))?;
        let (health, heartbeat) = (self.health.clone(), self.heartbeat.clone());
        let check = Arc::new(move || {
            let idle = now_ms().saturating_sub(heartbeat.load(Ordering::Relaxed));
            if idle > STALL.as_millis() as i64 {
                return Err(format!(
                    "the main loop has not turned for {} s",
                    idle / 1000
                ));
            }
            match health.lock() {
                Ok(h) => h.clone(),
                Err(_) => Err("health state unavailable".into()),
            }
        });
        let (bound, _task) = crate::metrics::serve(addr, metrics, check, stop)
            .await
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        tracing::info!(address = %bound, "serving /metrics and /healthz");
        Ok(())
    }

    /// Walk a root (or a new folder inside it) on a blocking thread,
    /// feeding the candidate files to the main loop in batches, then
    /// [`Feed::ScanDone`].
    fn scan(&self, watch: usize, start: Option<PathBuf>, why: &'static str) {
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
        let tx = self.feed_tx.clone();
        tracing::debug!(path = %start.display(), why, "scanning");
        if start == path {
            crate::metrics::rescan(why);
        }
        let started = Instant::now();
        let permits = self.scan_batches.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
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
        });
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

    /// Look at a root (one stat, on a blocking thread): the answer comes
    /// back as [`Feed::RootSeen`]. Not while the last look is unanswered.
    fn look_at_root(&self, watch: usize) {
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
    fn on_root_removed(&mut self, watch: usize) {
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

    fn on_root_seen(&mut self, watch: usize, path: &Path, seen: Result<Identity, String>) {
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

    fn fall_back_to_polling(&mut self, watch: usize) {
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

    /// Files a scan found: those the ledger knows as they are are passed
    /// over, the others go through the settle gate.
    async fn on_found(&mut self, watch: usize, files: Vec<(PathBuf, std::fs::Metadata)>) {
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
    async fn adopt_found_again(&self, stats: &[NewFile], mut current: Vec<bool>) -> Vec<bool> {
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

    fn on_scan_done(&mut self, watch: usize, why: &'static str, files: usize, started: Instant) {
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

    /// A sighting of a candidate file for the settle gate. `event`: when
    /// the watcher saw it change, if it did.
    fn observe(&mut self, watch: usize, path: PathBuf, f: &NewFile, event: Option<Instant>) {
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
    async fn settle(&mut self) {
        // Taken before the stats: what they show held at least from then.
        let now = Instant::now();
        self.next_settle_pass = now + SETTLE_COALESCE;
        let due = self.settler.due(now);
        if due.is_empty() {
            return;
        }
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
            return;
        };
        let wall = SystemTime::now();
        let mut metas = std::collections::HashMap::new();
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
            // The ledger failed for an earlier file of this pass: the rest
            // wait with it (see the error arm), not one failure each.
            let recorded = if ledger_down {
                Err(None)
            } else {
                self.ledger.discover(&found).await.map_err(Some)
            };
            match recorded {
                Ok(d) => {
                    self.ledger_backoff.ok();
                    tracing::debug!(path = %found.path, discovery = ?d, "settled")
                }
                Err(e) => {
                    if let Some(e) = e {
                        ledger_down = e.class() != crate::ledger::ErrorClass::Other;
                        crate::pipeline::ledger_failed(
                            &e,
                            &format!("cannot record {}; will retry", found.path),
                        );
                    }
                    // Back in the gate from now: tried again after the
                    // settle time, not at once.
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
        }
        if ledger_down {
            // Waits grow while the ledger keeps failing (a full disk).
            self.next_settle_pass = Instant::now() + self.ledger_backoff.failed();
        }
    }

    /// A settled `*.urls` file: queue each URL in it (each URL once, however
    /// often the list is seen).
    async fn ingest_url_list(&self, watch: usize, path: &Path) {
        let Some(root) = self.roots.get(watch) else {
            return;
        };
        let text = {
            let p = path.to_path_buf();
            let read = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut text = String::new();
                std::fs::File::open(&p)
                    .and_then(|f| f.take(MAX_URL_LIST).read_to_string(&mut text))
                    .map(|_| text)
            });
            match tokio::time::timeout(STAT_TIMEOUT, read).await {
                Ok(Ok(Ok(text))) => text,
                Ok(Ok(Err(e))) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the URL list");
                    return;
                }
                _ => return,
            }
        };
        let (urls, bad) = crate::pipeline::parse_url_list(&text);
        for (line, reason) in bad {
            tracing::warn!(path = %path.display(), line, reason = %reason, "not a URL; skipped");
        }
        let mut added = 0;
        for url in &urls {
            match self
                .ledger
                .add_url(url, None, root.metadata.as_deref(), Some(&root.origin))
                .await
            {
                Ok((_, true)) => added += 1,
                Ok((_, false)) => {}
                Err(e) => tracing::warn!(url = %url, error = %e, "cannot queue the URL"),
            }
        }
        tracing::info!(path = %path.display(), urls = urls.len(), new = added, "URL list read");
    }

    /// Records per state: counted again only when this daemon changed
    /// something since, or now and then for changes other processes made
    /// (`retry`, `forget`); otherwise the ledger is only asked a cheap
    /// question, so that an idle daemon over a million records stays idle.
    async fn counts(&mut self) -> Result<Vec<(FileState, i64)>, crate::ledger::LedgerError> {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut changed = false;
        while let Ok(_) | Err(TryRecvError::Lagged(_)) = self.status_changes.try_recv() {
            changed = true;
        }
        match &self.counts {
            Some((counts, at)) if !changed && at.elapsed() < RECOUNT_EVERY => {
                self.ledger.ping().await?;
                Ok(counts.clone())
            }
            _ => {
                let counts = self.ledger.counts().await?;
                self.counts = Some((counts.clone(), Instant::now()));
                Ok(counts)
            }
        }
    }

    /// Refresh systemd's STATUS= and the watchdog; retry a rejected key
    /// after a while.
    async fn status(&mut self) {
        self.heartbeat.store(now_ms(), Ordering::Relaxed);
        let mut healthy: Result<(), String> = Ok(());
        if let Ok((depth, oldest)) = self.ledger.queue_stats().await {
            let age = oldest.map_or(0, |t| now_ms().saturating_sub(t).max(0));
            crate::metrics::queue(depth, age as f64 / 1000.0);
        }
        match self.counts().await {
            Ok(counts) => {
                let by_state: Vec<(&str, i64)> = FileState::ALL
                    .iter()
                    .map(|s| {
                        (
                            s.as_str(),
                            counts.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n),
                        )
                    })
                    .collect();
                crate::metrics::files_by_state(&by_state);
                let n = |s: FileState| {
                    counts
                        .iter()
                        .find(|(st, _)| *st == s)
                        .map_or(0, |(_, n)| *n)
                };
                let mut text = format!(
                    "{} uploading, {} queued, {} processing, {} ready, {} failed, {} settling",
                    n(FileState::Uploading),
                    n(FileState::Queued) + n(FileState::Discovered),
                    n(FileState::Processing),
                    n(FileState::Ready),
                    n(FileState::Failed),
                    self.settler.len()
                );
                match self.pipeline.gate().state() {
                    GateState::AuthRejected { .. } => {
                        text.push_str("; paused: the API key was rejected")
                    }
                    GateState::RateLimited { wall, .. } => text.push_str(&format!(
                        "; rate limited until {}",
                        humantime::format_rfc3339_seconds(wall)
                    )),
                    GateState::Open => {}
                }
                systemd::status(&text);
                // The loop is turning and the ledger answers: tell the watchdog.
                if systemd::watchdog_interval().is_some() {
                    systemd::watchdog();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the ledger does not answer");
                healthy = Err(format!("the ledger does not answer: {e}"));
            }
        }
        // Reads answer, writes do not: unhealthy until a write goes through.
        if let Some(outage) = self.ledger.health().outage() {
            let text = outage.describe();
            systemd::status(&format!("waiting: {text}"));
            healthy = Err(text);
        }
        if let Ok(mut h) = self.health.lock() {
            *h = healthy;
        }
        match self.pipeline.gate().state() {
            GateState::AuthRejected { .. } => {
                let since = *self.auth_rejected_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= AUTH_RETRY {
                    tracing::info!("trying the API key again");
                    self.auth_rejected_at = None;
                    self.pipeline.gate().resume();
                }
            }
            _ => self.auth_rejected_at = None,
        }
    }

    /// SIGHUP: re-read the configuration; apply it only if all of it works.
    async fn reload(&mut self) {
        systemd::reloading().await;
        // Requeued interrupted uploads are not announced: count afresh.
        self.counts = None;
        match self.try_reload().await {
            Ok(()) => tracing::info!(roots = self.roots.len(), "configuration reloaded"),
            Err(e) => {
                // The message may quote a value, and a value may be the key:
                // the running one here, the newly configured one in
                // `try_reload`.
                let e = self.pipeline.client().redact(&e);
                tracing::error!(error = %e, "configuration not reloaded; still running on the previous one")
            }
        }
        systemd::ready().await;
    }

    async fn try_reload(&mut self) -> Result<(), String> {
        let (config, _) = Config::load(&self.setup.load).map_err(|e| e.to_string())?;
        if config.ledger_location(&self.setup.load.env)
            != self.config.ledger_location(&self.setup.load.env)
            && matches!(self.setup.client, ClientSource::Configured)
        {
            tracing::warn!(
                "ledger.path or ledger.url changed: that takes a restart; keeping the current ledger"
            );
        }
        let client = make_client(&self.setup, &config).map_err(|e| e.to_string())?;
        let roots = arm_roots(&self.setup, &config, &self.feed_tx)
            .map_err(|e| client.redact(&e.to_string()))?;
        // Everything checks out: switch over.
        self.roots = roots;
        self.settler.set_settle(config.watcher.settle);
        let config = Arc::new(config);
        // A new client (a new key, perhaps) and new upload settings take a
        // new pipeline; uploads in flight finish first.
        self.running.drain(self.config.upload.shutdown_grace).await;
        self.pipeline = Pipeline::new(self.ledger.clone(), client, config.clone());
        // Uploads cut off by the drain are queued for a lookup already;
        // this also covers any the drain could not record. Whatever
        // happens, the new pipeline starts: the old one is gone.
        if let Err(e) = self.pipeline.recover().await {
            tracing::warn!(error = %e, "could not requeue interrupted uploads; the next start will");
        }
        if let Err(e) = self.ledger.set_roots(&root_names(&self.roots)).await {
            tracing::warn!(error = %e, "could not record the watched folders in the ledger");
        }
        self.running = self.pipeline.start();
        self.config = config;
        for i in 0..self.roots.len() {
            self.scan(i, None, "reload");
        }
        Ok(())
    }

    async fn shutdown(mut self, controls: &mut mpsc::Receiver<Control>) {
        systemd::stopping().await;
        tracing::info!(grace = ?self.config.upload.shutdown_grace, "stopping: finishing uploads in flight");
        for root in &mut self.roots {
            root.watcher = None;
        }
        self.running.stop();
        let grace = self.config.upload.shutdown_grace;
        tokio::select! {
            done = tokio::time::timeout(grace, self.running.finished()) => {
                if done.is_err() {
                    tracing::warn!("uploads still running after the grace period; stopping them");
                    self.running.abort();
                    self.running.finished().await;
                }
            }
            Some(Control::Shutdown) = controls.recv() => {
                tracing::warn!("second stop signal: stopping now");
                self.running.abort();
                self.running.finished().await;
            }
        }
        self.ledger.close().await;
        tracing::info!("stopped");
    }
}
