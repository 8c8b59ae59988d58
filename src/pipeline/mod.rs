//! The pipeline: discover → eligibility → sha256 → dedupe → queue →
//! upload (a bounded pool) → poll until `ready`.
//!
//! Each stage is a loop over records in one ledger state, woken by the
//! ledger's change feed (never by a fixed polling interval): the hash stage
//! takes `discovered`, `upload.workers` workers take `queued`, the poller
//! takes `processing`. Because the ledger is the queue, stopping at any
//! point loses nothing: start-up recovery puts interrupted work back.
//!
//! The stages are private. Outside code sees [`Pipeline`] and [`Running`]
//! (start, drain, stop), [`Progress`] (uploads in flight), the discovery
//! helpers ([`Filter`], [`discover`], [`walk_tree`], [`new_file`]), the
//! request [`Gate`] and its [`GateState`], the fleet heartbeat timings, URL
//! list parsing, and [`ledger_failed`] / [`LedgerBackoff`] for callers that
//! wait out a ledger outage the same way the stages do.

mod chunk_reader;
mod chunked_upload;
mod discover;
mod eligibility;
mod finisher;
mod fleet;
mod gate;
mod hasher;
mod indexer;
mod poller;
mod read_count;
mod retry;
mod urls;
mod worker;

// The pipeline's face: what the daemon, the commands and the tests use.
pub use discover::{Filter, Found, WalkReport, discover, new_file, walk_tree};
pub use fleet::{beat_interval as heartbeat_interval, stale_after};
pub use gate::{Gate, GateState};
#[doc(hidden)]
pub use read_count::ReadCounts;
pub use retry::LedgerBackoff;
pub use urls::{parse_list as parse_url_list, validate as validate_url};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::ApiClient;
use crate::config::Config;
use crate::ledger::{ClaimBatch, Entries, FileState, Ledger, LedgerError, now_ms};
use eligibility::Limits;
use retry::RetryPolicy;

/// What every stage shares.
#[derive(Debug)]
struct Shared {
    ledger: Ledger,
    client: ApiClient,
    config: Arc<Config>,
    gate: Gate,
    policy: RetryPolicy,
    limits: Limits,
    progress: Progress,
    /// False once the platform was seen to drop a `user_metadata` sent
    /// after the file: every file is then hashed before it is sent.
    stamp_after_file: std::sync::atomic::AtomicBool,
    /// False once the platform refused to add the stamp to an asset after
    /// its upload (`PATCH …/user-metadata`): multipart uploads are then
    /// hashed before they are sent, the stamp in their session.
    stamp_after_session: std::sync::atomic::AtomicBool,
    /// The records this process's workers hold (see [`fleet`]).
    claims: fleet::Claims,
    /// Bytes of file content read (a test hook, see [`read_count`]).
    reads: Arc<read_count::ContentReads>,
    /// Rung once for each record that enters `queued` (see [`ring_on_queued`]).
    queued: tokio::sync::Notify,
}

impl Shared {
    /// The states whose announcement wakes the indexer: `ready`, when a
    /// watch indexes its files; none otherwise, so that 100 000 files
    /// turning `ready` do not make 100 000 searches of the `ready` records
    /// for nothing (a record left from an earlier configuration is still
    /// found within [`SAFETY_NET`]).
    fn index_wake(&self) -> &'static [FileState] {
        if self.config.watch.iter().any(|w| w.index_id.is_some()) {
            &[FileState::Ready]
        } else {
            &[]
        }
    }

    /// The states whose announcement wakes the finisher: a file's last
    /// states, when a watch moves or deletes files; none otherwise (as
    /// [`Shared::index_wake`]).
    fn finish_wake(&self) -> &'static [FileState] {
        let keep = crate::config::FileAction::default();
        let acts = self
            .config
            .watch
            .iter()
            .any(|w| w.after_upload != keep || w.on_failure != keep);
        if acts {
            &[FileState::Ready, FileState::Indexed, FileState::Failed]
        } else {
            &[]
        }
    }

    /// The lease on a claimed record, in ms (`ledger.lease`).
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.config.ledger.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// What one claim may take: up to [`CLAIM_BATCH`] files of at most
    /// [`SMALL_FILE`] bytes while the queue holds that many for every
    /// worker (a short queue is shared out one file at a time).
    fn claim_batch(&self) -> ClaimBatch {
        ClaimBatch {
            max: CLAIM_BATCH,
            small_bytes: SMALL_FILE,
            deep: CLAIM_BATCH.saturating_mul(self.config.upload.workers.max(1)),
        }
    }
}

/// Small files a worker claims at once: a claim is a transaction, and over
/// many small files it was a third of the ledger's statements.
const CLAIM_BATCH: usize = 8;

/// A file this small is sent in well under a second on any link, so the
/// files after it in a worker's batch wait little.
const SMALL_FILE: i64 = 1024 * 1024;

/// Uploads in flight, for progress bars: file, total, bytes sent so far.
#[derive(Debug, Default, Clone)]
pub struct Progress(Arc<Mutex<BTreeMap<i64, InFlight>>>);

#[derive(Debug, Clone)]
pub struct InFlight {
    pub name: String,
    pub total: u64,
    sent: Arc<AtomicU64>,
}

impl InFlight {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, InFlight>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn insert(&self, id: i64, name: String, total: u64, sent: Arc<AtomicU64>) {
        self.lock().insert(id, InFlight { name, total, sent });
    }

    fn remove(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// A snapshot of what is being sent now.
    pub fn snapshot(&self) -> Vec<(i64, InFlight)> {
        self.lock().iter().map(|(k, v)| (*k, v.clone())).collect()
    }
}

/// A pipeline over one ledger and one API client.
#[derive(Debug, Clone)]
pub struct Pipeline {
    shared: Arc<Shared>,
}

/// The stages of a started pipeline.
#[derive(Debug)]
pub struct Running {
    tracker: TaskTracker,
    /// Stops intake: no new claims, hashing or polling.
    stop: CancellationToken,
    /// Cuts off uploads in flight.
    abort: CancellationToken,
}

impl Pipeline {
    pub fn new(ledger: Ledger, client: ApiClient, config: Arc<Config>) -> Pipeline {
        let shared = Shared {
            gate: Gate::new(config.upload.requests_per_minute).for_fleet(&ledger),
            claims: fleet::Claims::default(),
            queued: tokio::sync::Notify::new(),
            policy: RetryPolicy::from_config(&config.upload),
            limits: Limits::from_config(&config.upload),
            progress: Progress::default(),
            stamp_after_file: std::sync::atomic::AtomicBool::new(true),
            stamp_after_session: std::sync::atomic::AtomicBool::new(true),
            reads: Arc::default(),
            ledger,
            client,
            config,
        };
        Pipeline {
            shared: Arc::new(shared),
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.shared.ledger
    }

    pub fn client(&self) -> &ApiClient {
        &self.shared.client
    }

    pub fn gate(&self) -> &Gate {
        &self.shared.gate
    }

    pub fn progress(&self) -> &Progress {
        &self.shared.progress
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Bytes of file content this pipeline has read so far (a test hook).
    #[doc(hidden)]
    pub fn content_reads(&self) -> ReadCounts {
        self.shared.reads.snapshot()
    }

    /// Join the ledger's daemons and put back what a previous run left in
    /// flight. Call before `start`.
    pub async fn recover(&self) -> Result<u64, LedgerError> {
        self.shared
            .ledger
            .join(&crate::host::host_name(), &[], self.shared.lease_ms())
            .await?;
        let n = self.shared.ledger.recover().await?;
        if n > 0 {
            tracing::info!(
                records = n,
                "found uploads interrupted by the previous run; each is looked up on the platform before it is sent again"
            );
        }
        Ok(n)
    }

    /// Spawn the hash stage, the workers and the poller.
    pub fn start(&self) -> Running {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        tracker.spawn(hasher::run(self.shared.clone(), stop.clone()));
        // Subscribed before any worker runs: no queued record goes unrung.
        tracker.spawn(ring_on_queued(
            self.shared.clone(),
            self.shared.ledger.entries(&[FileState::Queued]),
            stop.clone(),
        ));
        for _ in 0..self.shared.config.upload.workers {
            tracker.spawn(worker::run(
                self.shared.clone(),
                stop.clone(),
                abort.clone(),
            ));
        }
        tracker.spawn(poller::run(self.shared.clone(), stop.clone()));
        tracker.spawn(indexer::run(self.shared.clone(), stop.clone()));
        tracker.spawn(finisher::run(self.shared.clone(), stop.clone()));
        tracker.spawn(fleet::run(self.shared.clone(), stop.clone(), abort.clone()));
        tracker.close();
        Running {
            tracker,
            stop,
            abort,
        }
    }
}

impl Running {
    /// Stop taking work; let uploads in flight finish for up to `grace`,
    /// then cut them off (their records are queued again for a lookup).
    pub async fn shutdown(self, grace: Duration) {
        self.drain(grace).await;
    }

    /// [`Running::shutdown`] without giving the handle up.
    pub async fn drain(&self, grace: Duration) {
        self.stop();
        if tokio::time::timeout(grace, self.finished()).await.is_err() {
            tracing::warn!(grace = ?grace, "uploads still running after the grace period; stopping them");
            self.abort();
            self.finished().await;
        }
    }

    /// No new claims, hashing or polling; uploads in flight go on.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Cut off uploads in flight too.
    pub fn abort(&self) {
        self.stop.cancel();
        self.abort.cancel();
    }

    /// Resolves when every stage has returned.
    pub async fn finished(&self) {
        self.tracker.wait().await;
    }
}

/// Log a ledger call that failed. An outage (full disk, lost connection)
/// is logged once by the ledger itself for the whole episode, so each
/// call's failure is only a debug line then.
pub fn ledger_failed(e: &LedgerError, what: &str) {
    if e.class().is_outage() {
        tracing::debug!(error = %e, "{what}");
    } else {
        tracing::warn!(error = %e, "{what}");
    }
}

/// Run a ledger write until it goes through: an outage or a busy ledger is
/// waited out with the ledger's backoff, holding what is to be recorded in
/// memory; any other error (a conflict, a bug) is returned at once, and so
/// is the last error if `stop` fires.
async fn until_recorded<T, F, Fut>(
    stop: &CancellationToken,
    what: &str,
    mut write: F,
) -> Result<T, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    let mut backoff = retry::LedgerBackoff::default();
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) if e.class() == crate::ledger::ErrorClass::Other => return Err(e),
            Err(e) => {
                ledger_failed(&e, what);
                if !pause(stop, backoff.failed()).await {
                    return Err(e);
                }
            }
        }
    }
}

/// Sleep for `d` unless `stop` fires first (then false).
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Wake one idle worker for each record that enters `queued`, rather than
/// every worker for every record: each woken worker makes a claim, and one
/// that finds nothing (another worker took the record) is a transaction and
/// a query spent for nothing, per worker and per file. A worker that is
/// busy claims again as soon as it is done, so a record queued while every
/// worker is busy leaves only one wake-up waiting (`Notify` keeps one).
async fn ring_on_queued(shared: Arc<Shared>, mut queued: Entries, stop: CancellationToken) {
    let workers = u64::try_from(shared.config.upload.workers.max(1)).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            () = queued.entered() => {}
        }
        for _ in 0..queued.take().min(workers) {
            shared.queued.notify_one();
        }
    }
}

/// Wait until [`ring_on_queued`] wakes this worker, or until `due_ms`
/// (Unix ms) passes; false if `stop` fired.
async fn wait_for_queued(shared: &Shared, stop: &CancellationToken, due_ms: Option<i64>) -> bool {
    let timer = match due_ms {
        Some(at) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
        None => SAFETY_NET,
    };
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(timer.min(SAFETY_NET)) => true,
        _ = shared.queued.notified() => true,
    }
}

/// Wait until a record enters one of the states `entries` follows (when
/// given; entries since its last `take` end the wait at once), or until
/// `due_ms` (Unix ms) passes; false if `stop` fired.
async fn wait_for_entries(
    entries: Option<&mut Entries>,
    stop: &CancellationToken,
    due_ms: Option<i64>,
) -> bool {
    let timer = match due_ms {
        Some(at) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
        // Nothing scheduled: look again now and then anyway, which also
        // picks up records another process (add-url, retry) queued.
        None => SAFETY_NET,
    };
    let wake = async {
        match entries {
            Some(entries) => entries.entered().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(timer.min(SAFETY_NET)) => true,
        () = wake => true,
    }
}

/// The longest any stage sleeps without looking at the ledger: records
/// queued by another process (`add-url`, `retry`) are seen within this.
const SAFETY_NET: Duration = Duration::from_secs(2);
