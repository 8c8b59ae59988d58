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
//!
//! Here: [`run`] and the wiring. By concern: `events` (the main loop and
//! what the watchers feed it), `scans`, `settling` (the settle gate and
//! recording settled files), `url_lists` (`*.urls` files), `roots`
//! (watched folders that go away and come back), `status_tick` (STATUS=,
//! the watchdog, /metrics and /healthz), `reload` (SIGHUP) and `shutdown`.

pub mod systemd;

mod events;
mod reload;
mod roots;
mod scans;
mod settling;
mod shutdown;
mod status_tick;
mod url_lists;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiClient, ClientOptions};
use crate::config::{Config, LoadOptions, WatchConfig};
use crate::ledger::{FileState, Ledger, LedgerError, Location, Origin, now_ms};
use crate::ledger::{LedgerLock, LockError};
use crate::pipeline::{Filter, LedgerBackoff, Pipeline, Running};
use crate::secret::{ApiKey, load_api_key};
use crate::watch::presence::Presence;
use crate::watch::settle::Settler;
use crate::watch::{Feed, RootWatcher};
use roots::{arm_roots, root_names};
use scans::{SCAN_BATCHES_QUEUED, StartupScan};

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

/// Longest the main loop waits for a stat (a hung network mount).
const STAT_TIMEOUT: Duration = Duration::from_secs(10);

/// A watched folder.
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
    let (feed_tx, feed_rx) = mpsc::channel::<Feed>(4096);
    let mut d = Daemon::start(setup, config, feed_tx).await?;
    let metrics_stop = CancellationToken::new();
    let _metrics_stop = metrics_stop.clone().drop_guard();
    d.serve_metrics(metrics_stop).await?;
    d.ready().await;
    d.event_loop(&mut controls, feed_rx).await;
    d.shutdown(&mut controls).await;
    Ok(())
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

/// The daemon's state, owned by the main loop.
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
    /// Check the key and the folders, open the ledger, put back what a
    /// previous run left in flight and start the pipeline.
    async fn start(
        setup: Setup,
        config: Config,
        feed_tx: mpsc::Sender<Feed>,
    ) -> Result<Daemon, DaemonError> {
        // The key and the folders first: a start that fails on them leaves no
        // new, empty ledger behind.
        let client = make_client(&setup, &config)?;
        let roots = arm_roots(&setup, &config, &feed_tx)?;
        let ledger = Ledger::open_at(&setup.ledger).await?;
        let config = Arc::new(config);
        let pipeline = Pipeline::new(ledger.clone(), client, config.clone());
        pipeline.recover().await?;
        ledger.set_roots(&root_names(&roots)).await?;
        let ledger_changes = ledger.subscribe();
        let running = pipeline.start();
        Ok(Daemon {
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
        })
    }

    /// Give the settle gate its settle time, tell systemd we are ready,
    /// and scan every root once.
    async fn ready(&mut self) {
        self.settler.set_settle(self.config.watcher.settle);
        systemd::ready().await;
        tracing::info!(
            ledger = %self.setup.ledger,
            roots = self.roots.len(),
            workers = self.config.upload.workers,
            "tl-ingest is running"
        );
        self.startup_scans();
    }
}
