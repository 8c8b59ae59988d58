//! The ledger: the durable record of every file version and every attempt,
//! and the queue the pipeline works from.
//!
//! All SQL lives below this module; callers speak in records and state
//! events. Every state change is one transaction that checks the old state
//! (compare-and-set) and goes through [`state::FileState::on`]. Each change
//! that commits is also announced on a broadcast channel, which wakes the
//! pipeline's stages and lets the CLI and tests follow progress without
//! polling.

pub mod admin;
pub mod after;
mod dedupe;
pub mod diagnose;
pub mod disk;
mod engine;
mod entries;
mod error;
mod files;
pub mod fleet;
mod health;
mod location;
pub mod lock;
pub mod query;
pub mod reconcile;
mod scan;
pub mod state;
pub mod upload_sessions;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::Retryable;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqliteSynchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::broadcast;

use engine::Pool;

pub use dedupe::Dedupe;
pub use entries::Entries;
pub use error::{ErrorClass, LedgerError};
pub use files::{
    AttemptEnd, AttemptRow, ClaimBatch, Discovery, HashJob, HashOutcome, LOOKUP_DELAY_MS, NewFile,
    Origin, PollJob, Record, SameSize, UploadJob,
};
pub use health::{Health, Outage};
pub use location::{Location, PgUrl};
pub use lock::{Holder, LedgerLock, LockError};
pub use state::{Event, FileState};

/// Migrations, embedded at build time and applied on open: the same
/// versions for both engines, each folder in its engine's dialect.
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A committed state change.
#[derive(Debug, Clone)]
pub struct Change {
    pub id: i64,
    pub path: String,
    pub state: FileState,
    pub asset_id: Option<String>,
    /// The reason for `skipped`/`failed`, or the error behind a retry.
    pub detail: Option<String>,
}

/// A handle to the ledger; cheap to clone.
#[derive(Clone, Debug)]
pub struct Ledger {
    pool: Pool,
    location: Location,
    /// This process's row in `daemons` once it has joined the fleet
    /// ([`Ledger::join`]): the owner written on the records it claims.
    me: Arc<OnceLock<fleet::Member>>,
    /// The lease this process claims with (ms): set on joining, changed by
    /// a reload.
    lease_ms: Arc<std::sync::atomic::AtomicI64>,
    /// Every committed state change. Senders: the ledger's own methods.
    /// Receivers: pipeline stages (wake-ups), the CLI's progress output,
    /// tests. A lagging receiver loses old changes, never blocks a writer.
    changes: broadcast::Sender<Change>,
    /// Records entering each state, for stages that wait on one state.
    entered: Arc<entries::Counters>,
}

impl Ledger {
    /// Open (creating if needed) and migrate the ledger at `path`.
    pub async fn open(path: &Path) -> Result<Ledger, LedgerError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(LedgerError::Open {
                path: path.to_path_buf(),
                reason: format!("the folder {} does not exist", parent.display()),
            });
        }
        Self::connect(path, true).await
    }

    /// Open an existing ledger for the query commands; a missing file is an
    /// error instead of an empty new ledger.
    pub async fn open_existing(path: &Path) -> Result<Ledger, LedgerError> {
        if !path.is_file() {
            return Err(LedgerError::Open {
                path: path.to_path_buf(),
                reason: "no ledger there yet (nothing has been recorded)".into(),
            });
        }
        Self::connect(path, false).await
    }

    /// Open (creating the schema if needed) the ledger at `location`.
    pub async fn open_at(location: &Location) -> Result<Ledger, LedgerError> {
        match location {
            Location::Sqlite(path) => Self::open(path).await,
            Location::Postgres(url) => Self::connect_postgres(url).await,
        }
    }

    /// Open an existing ledger at `location` for the query commands.
    pub async fn open_existing_at(location: &Location) -> Result<Ledger, LedgerError> {
        match location {
            Location::Sqlite(path) => Self::open_existing(path).await,
            Location::Postgres(url) => Self::connect_postgres(url).await,
        }
    }

    /// Connect to a PostgreSQL ledger and bring its schema up to date. The
    /// migrator holds a database-wide lock, so daemons starting together
    /// migrate once.
    async fn connect_postgres(url: &PgUrl) -> Result<Ledger, LedgerError> {
        let open_err = |reason: String| LedgerError::Open {
            path: PathBuf::from(url.to_string()),
            reason,
        };
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(|e| open_err(url.redact_text(&e.to_string())))?
            .application_name("tl-ingest")
            // A writer waits at most this long for the fleet's lock (the
            // stages retry), and a host that vanishes inside a transaction
            // does not hold that lock for hours until TCP notices.
            .options([
                ("lock_timeout", "15s"),
                ("idle_in_transaction_session_timeout", "60s"),
            ])
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1));
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            // Nothing is sent twice only if a commit that returned stays
            // (a claim, an asset id: RELIABILITY.md, section 9). A server
            // run with `synchronous_commit = off` forgets the last commits
            // it acknowledged when it crashes or is stopped `immediate`:
            // this daemon's sessions wait for the WAL write whatever the
            // server's default (any other setting already does, and is kept).
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query(
                        "SELECT set_config('synchronous_commit', 'on', false) \
                         WHERE current_setting('synchronous_commit') = 'off'",
                    )
                    .execute(conn)
                    .await
                    .map(|_| ())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| open_err(url.redact_text(&describe_pg_error(&e))))?;
        POSTGRES_MIGRATOR.run(&pool).await.map_err(|e| {
            open_err(format!(
                "cannot apply its schema: {}",
                url.redact_text(&e.to_string())
            ))
        })?;
        let (changes, _) = broadcast::channel(4096);
        Ok(Ledger {
            pool: Pool::postgres(pool),
            location: Location::Postgres(url.clone()),
            me: Arc::default(),
            lease_ms: Arc::default(),
            changes,
            entered: entries::Counters::new(),
        })
    }

    async fn connect(path: &Path, create: bool) -> Result<Ledger, LedgerError> {
        let open_err = |e: sqlx::Error| LedgerError::Open {
            path: path.to_path_buf(),
            reason: describe_open_error(&e, path),
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(engine::BUSY_WAIT)
            .foreign_keys(true)
            // A long export is not a slow statement worth a warning on
            // stderr; real slowness shows in the benchmarks.
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(1));
        // Opened for work (the pipeline, `upload`): a transaction's statement
        // journal (its pages as they were, for a statement that fails
        // half-way) spilled past 64 KiB to a file in /var/tmp, so every page
        // a batch touched was written twice, and a full /var/tmp failed
        // writes to a ledger on another disk. In memory it is bounded by one
        // batch's pages. Commands opening an existing ledger keep SQLite's
        // files: `prune` may touch every page in one transaction, and its
        // VACUUM builds a copy of the whole ledger in temporary storage.
        let options = match create {
            true => options.pragma("temp_store", "memory"),
            false => options,
        };
        // A new file is switched to WAL by whoever connects first; another
        // process connecting at that instant is told "locked" at once,
        // without a busy wait: try again shortly.
        let pool = (|| {
            SqlitePoolOptions::new()
                .max_connections(4)
                // A ping before each use is a round trip to the connection's
                // thread for a file that cannot drop the line.
                .test_before_acquire(false)
                .connect_with(options.clone())
        })
        .retry(linear_backoff(Duration::from_millis(50), 5))
        .when(is_busy)
        .await
        .map_err(open_err)?;
        // Readers migrate only a ledger that is behind (an upgrade with no
        // daemon since): two processes migrating a new file at once would
        // race, and the writer holding the ledger lock does it anyway.
        if create || schema_behind(&pool).await.map_err(open_err)? {
            migrate(&pool).await.map_err(|e| LedgerError::Open {
                path: path.to_path_buf(),
                reason: format!("cannot apply its schema: {e}"),
            })?;
        }
        let (changes, _) = broadcast::channel(4096);
        Ok(Ledger {
            pool: Pool::sqlite(pool),
            location: Location::Sqlite(path.to_path_buf()),
            me: Arc::default(),
            lease_ms: Arc::default(),
            changes,
            entered: entries::Counters::new(),
        })
    }

    /// Where the ledger is (a URL is shown without its password).
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Whether the ledger can write now, as its last writes showed.
    pub fn health(&self) -> &Health {
        self.pool.health()
    }

    /// Whether this ledger is shared by a fleet (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.pool.is_postgres()
    }

    /// Follow committed state changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Follow records entering `states` from now on, without being woken
    /// by any other change.
    pub fn entries(&self, states: &[FileState]) -> Entries {
        self.entered.follow(states)
    }

    /// Log and broadcast a committed change: the one place every state
    /// change of every record is logged, with the same fields.
    fn announce(&self, change: Change) {
        match change.state {
            FileState::Failed => tracing::warn!(
                file_id = change.id,
                path = %change.path,
                state = %change.state,
                asset_id = change.asset_id.as_deref(),
                error = change.detail.as_deref(),
                "file failed"
            ),
            _ => tracing::info!(
                file_id = change.id,
                path = %change.path,
                state = %change.state,
                asset_id = change.asset_id.as_deref(),
                detail = change.detail.as_deref(),
                "state changed"
            ),
        }
        self.entered.bump(change.state);
        // No receiver is fine: nobody is following.
        let _ = self.changes.send(change);
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Apply missing migrations. Another process (a command started while the
/// daemon creates or upgrades the ledger) may be applying the same ones:
/// SQLite has no migration lock, so a migration that fails is retried once
/// the other process has had time to finish, and then skipped as applied.
async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::migrate::MigrateError> {
    // Five tries in all.
    (|| SQLITE_MIGRATOR.run(pool))
        .retry(linear_backoff(Duration::from_millis(100), 4))
        .notify(|e, _| {
            tracing::debug!(error = %e, "migration failed; another process may be applying it");
        })
        .await
}

/// `retries` waits of `step`, `2 × step`, `3 × step`…: a short, growing
/// pause for another process creating or migrating the same file.
fn linear_backoff(step: Duration, retries: u32) -> impl backon::Backoff {
    (1..=retries).map(move |n| step * n)
}

/// The migrations this build applies to a PostgreSQL ledger (`doctor`
/// compares them with what a database holds).
pub fn postgres_migrator() -> &'static sqlx::migrate::Migrator {
    &POSTGRES_MIGRATOR
}

/// The highest schema version this build knows, per engine.
pub fn schema_version(postgres: bool) -> i64 {
    let m = if postgres {
        &POSTGRES_MIGRATOR
    } else {
        &SQLITE_MIGRATOR
    };
    m.iter().map(|m| m.version).max().unwrap_or(0)
}

/// A connection failure in words an operator acts on.
fn describe_pg_error(e: &sqlx::Error) -> String {
    const DOCTOR: &str = "`tl-ingest doctor` checks it step by step";
    match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") | Some("28000") => format!(
                "the server refused the login ({}): check the user in ledger.url, its password \
                 (PGPASSWORD or ~/.pgpass) and the server's pg_hba.conf",
                db.message()
            ),
            Some("3D000") => format!(
                "no such database ({}): create it (README, \"Running a fleet\") or fix its name in ledger.url",
                db.message()
            ),
            _ => format!("{}; {DOCTOR}", db.message()),
        },
        // rustls reports a refused certificate as an I/O error.
        sqlx::Error::Io(io) if io.to_string().contains("certificate") => format!(
            "TLS failed: {io}: check sslmode and sslrootcert in ledger.url, and that its host is \
             a name on the server's certificate"
        ),
        sqlx::Error::Io(io) => format!(
            "cannot reach the server: {io}: check the host and port in ledger.url and that the \
             server accepts connections from this host"
        ),
        sqlx::Error::Tls(t) => {
            format!("TLS failed: {t}: check sslmode and sslrootcert in ledger.url")
        }
        sqlx::Error::PoolTimedOut => {
            format!("no connection within 10 s (is the server up and reachable?); {DOCTOR}")
        }
        other => format!("{other}; {DOCTOR}"),
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED (primary result codes 5 and 6).
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

/// Whether an existing ledger lacks migrations this version has. A file
/// with no schema at all is not a ledger (yet): an error.
async fn schema_behind(pool: &SqlitePool) -> Result<bool, sqlx::Error> {
    let has_table: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await?;
    if has_table == 0 {
        return Err(sqlx::Error::Protocol(
            "it has no tl-ingest schema (it may still be being created)".into(),
        ));
    }
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(pool)
            .await?;
    Ok(usize::try_from(applied).unwrap_or(0) < SQLITE_MIGRATOR.iter().count())
}

fn describe_open_error(e: &sqlx::Error, path: &Path) -> String {
    let described = match e {
        sqlx::Error::Database(db) => {
            let msg = db.message();
            if msg.contains("not a database") || msg.contains("malformed") {
                format!("it is not a valid SQLite ledger ({msg}); move it aside to start a new one")
            } else {
                msg.to_string()
            }
        }
        other => other.to_string(),
    };
    // SQLite says "disk I/O error" when it cannot grow its WAL or shared
    // memory files on a full disk: name the cause.
    match free_bytes_beside(path) {
        Some(free) if free < NEARLY_FULL => {
            format!("{described}; the disk holding it is full ({free} bytes free)")
        }
        _ => described,
    }
}

/// Less free space than this cannot hold a ledger's WAL and shared memory.
const NEARLY_FULL: u64 = 64 * 1024;

/// Bytes free to this user on the filesystem holding `path`'s folder.
fn free_bytes_beside(path: &Path) -> Option<u64> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Now, in the ledger's unit (Unix milliseconds).
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

pub fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// RFC 3339 UTC, for output.
pub fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(from_ms(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both engines have the same migrations (versions and names), each in
    /// its own dialect: a ledger is at the same schema on either.
    #[test]
    fn both_engines_have_the_same_migrations() {
        let list = |m: &sqlx::migrate::Migrator| {
            m.iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(list(&SQLITE_MIGRATOR), list(&POSTGRES_MIGRATOR));
        assert_eq!(schema_version(true), schema_version(false));
        assert!(schema_version(false) >= 6);
    }

    /// A batch's statement journal stays in memory: spilled, it wrote every
    /// page twice and failed with a full /var/tmp. A command's, which may
    /// hold the whole ledger (`prune`, VACUUM), stays in files (see `connect`).
    #[tokio::test]
    async fn work_keeps_statement_journals_in_memory_and_commands_in_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.db");
        let temp_store = |ledger: Ledger| async move {
            let store: i64 = engine::stmt("PRAGMA temp_store")
                .scalar_one(&ledger.pool)
                .await
                .expect("pragma");
            ledger.close().await;
            store
        };
        // 2 = MEMORY; 0 = the build's default, files.
        assert_eq!(
            temp_store(Ledger::open(&path).await.expect("open")).await,
            2
        );
        let existing = Ledger::open_existing(&path).await.expect("open existing");
        assert_eq!(temp_store(existing).await, 0);
    }
}
