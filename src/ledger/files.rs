//! Every SQL statement for the `files` and `attempts` tables.
//!
//! Each public method is one transaction (`BEGIN IMMEDIATE`, so two writers
//! never deadlock on a lock upgrade) and, for a state change, a
//! compare-and-set `UPDATE … WHERE id = ? AND state = ?` whose target state
//! comes from [`FileState::on`].

use sqlx::FromRow;

use super::engine::{Done, Ex, Tx, stmt};
use super::fleet::PG_NOW;
use super::state::{Event, FileState};
use super::{Change, Ledger, LedgerError, now_ms};
use crate::ledger::Dedupe;

/// A file seen on disk.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path_bytes: Vec<u8>,
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub device: u64,
    pub inode: u64,
    /// The watch's metadata, a JSON object.
    pub user_metadata: Option<String>,
    /// What the watch asked for (the daemon); `None` for `upload`.
    pub origin: Option<Origin>,
}

/// Where a record came from and what its watch wants done with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The watched folder (for `move_to`, which keeps the relative path).
    pub root: String,
    pub index_id: Option<String>,
    /// JSON of the watch's `after_upload` / `on_failure` (absent: keep).
    pub after_upload: Option<String>,
    pub on_failure: Option<String>,
}

/// What discovery made of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// First sight of this path, or a new version of an uploaded file.
    New(i64),
    /// The newest record of this path has the same size, mtime and inode.
    Known { id: i64, state: FileState },
    /// A record not yet uploaded saw its file change; it will be hashed again.
    Changed(i64),
}

/// A record waiting for its eligibility check and hash.
#[derive(Debug, Clone, FromRow)]
pub struct HashJob {
    pub id: i64,
    pub path_bytes: Vec<u8>,
    pub path: String,
    pub size: i64,
    pub mtime_ns: i64,
    /// Earlier tries that met a transient read error (a network mount).
    #[sqlx(default)]
    pub attempts: i64,
    /// The host that found the file (a shared ledger).
    #[sqlx(default)]
    pub origin_host: Option<String>,
    /// The device the file was on when it was found: a file missing from a
    /// folder now on another device went with an unmounted filesystem.
    #[sqlx(default)]
    pub device: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOutcome {
    Queued,
    /// Same content as record `of`, which owns the asset.
    Duplicate {
        of: i64,
    },
    /// This path already had a record with this content (a touched but
    /// unchanged file): that record was kept, with the new stat, and this
    /// one removed.
    Merged {
        into: i64,
    },
    /// The record moved on before the hash was recorded.
    Gone,
    /// Queued without a hash: it is computed while the file is sent.
    QueuedUnhashed,
    /// Another record of this size is being sent with its hash still
    /// unknown: the record waits, `discovered`, until that hash is known.
    Wait,
    /// Another record of this size appeared: hash it before queueing.
    NeedsHash,
}

/// What other records of the same size say about hashing a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSize {
    /// None: the content cannot be a duplicate, so the hash can be
    /// computed during the upload.
    None,
    /// Some, all with their hash known: hash now, then dedupe.
    Hashed,
    /// One is being sent with its hash still unknown: wait for it.
    Pending,
}

/// How long after an upload was cut off (a crash, a shutdown) the platform
/// is searched for it: a request whose body had reached the server may
/// still become an asset a moment after the client is gone, and a lookup
/// made before that would send the file twice.
pub const LOOKUP_DELAY_MS: i64 = 3000;

/// A new URL record's stamp: 128 random bits in hex, unique among the
/// records of any ledger for all practical purposes.
pub(super) fn new_stamp() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// How long a record waits for another record of its size to get its hash.
const WAIT_FOR_HASH_MS: i64 = 250;

/// Whether other live records have a file's size, and whether one of them
/// is being sent with its hash unknown: two existence checks, each served
/// by a partial index whose WHERE these repeat word for word (migration
/// 0005), so that a thousand files of one size cost no more than one.
pub(super) const SAME_SIZE_SQL: &str = "SELECT \
     EXISTS (SELECT 1 FROM files WHERE size = $1 AND id != $2 AND path_bytes IS NOT NULL \
       AND state IN ('discovered', 'queued', 'uploading', 'processing', 'ready', 'indexing', \
       'indexed')), \
     EXISTS (SELECT 1 FROM files WHERE size = $1 AND id != $2 AND path_bytes IS NOT NULL \
       AND sha256 IS NULL AND state IN ('queued', 'uploading', 'processing', 'ready', \
       'indexing', 'indexed'))";

/// A claimed record, for one upload attempt.
#[derive(Debug, Clone, FromRow)]
pub struct UploadJob {
    pub id: i64,
    #[sqlx(default)]
    pub attempt_id: i64,
    pub path_bytes: Option<Vec<u8>>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub size: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub device: Option<i64>,
    pub inode: Option<i64>,
    pub sha256: Option<String>,
    pub mime: Option<String>,
    pub user_metadata: Option<String>,
    pub attempts: i64,
    pub lookup_first: bool,
    pub filename: Option<String>,
    /// This claim's token (fencing): every write of the attempt names it,
    /// and the ledger refuses it once the record was claimed again.
    #[sqlx(default)]
    pub epoch: i64,
    /// A URL record's own stamp, sent in `user_metadata` to find its asset.
    #[sqlx(default)]
    pub stamp: Option<String>,
}

impl UploadJob {
    pub fn display(&self) -> String {
        self.path
            .clone()
            .or_else(|| self.url.clone())
            .unwrap_or_default()
    }
}

/// A record whose asset is processing on the platform.
#[derive(Debug, Clone, FromRow)]
pub struct PollJob {
    pub id: i64,
    pub asset_id: String,
    pub uploaded_at: Option<i64>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub attempts: i64,
}

/// How an attempt ended.
#[derive(Debug, Clone, Default)]
pub struct AttemptEnd {
    pub outcome: &'static str,
    pub http_status: Option<u16>,
    pub bytes_sent: u64,
    pub error: Option<String>,
}

/// One record, as history and status show it.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct Record {
    pub id: i64,
    pub path: Option<String>,
    pub url: Option<String>,
    pub state: String,
    pub asset_id: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub mime: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub duplicate_of: Option<i64>,
    pub next_attempt_at: i64,
    pub discovered_at: i64,
    pub uploaded_at: Option<i64>,
    pub ready_at: Option<i64>,
    pub updated_at: i64,
    /// What was done with the file after it finished (moved, deleted).
    pub file_action: Option<String>,
}

impl Record {
    pub fn state(&self) -> Result<FileState, LedgerError> {
        FileState::parse(&self.state)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown state {:?}", self.state)))
    }
}

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct AttemptRow {
    pub id: i64,
    pub file_id: i64,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub http_status: Option<i64>,
    pub bytes_sent: i64,
    pub error: Option<String>,
    /// The daemon (`daemons.id`) that made it, if a daemon did.
    pub daemon_id: Option<i64>,
}

/// The newest record of a path, as discovery compares it.
#[derive(FromRow)]
struct StatRow {
    id: i64,
    state: String,
    size: Option<i64>,
    mtime_ns: Option<i64>,
    device: Option<i64>,
    inode: Option<i64>,
}

const NEWEST_STAT_SQL: &str = "SELECT id, state, size, mtime_ns, device, inode FROM files \
     WHERE path_bytes = $1 ORDER BY id DESC LIMIT 1";

pub(super) const RECORD_COLUMNS: &str = "id, path, url, state, asset_id, sha256, size, mime, attempts, \
     last_error, duplicate_of, next_attempt_at, discovered_at, uploaded_at, ready_at, updated_at, \
     file_action";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Fail unless exactly one row moved: the compare-and-set lost.
fn expect_one(result: Done, id: i64, from: FileState) -> Result<(), LedgerError> {
    if result.rows_affected() == 1 {
        Ok(())
    } else {
        Err(LedgerError::Conflict {
            id,
            expected: from.as_str(),
        })
    }
}

async fn end_attempt_tx(
    conn: &mut Tx,
    attempt_id: i64,
    end: &AttemptEnd,
) -> Result<(), LedgerError> {
    stmt(
        "UPDATE attempts SET ended_at = $2, outcome = $3, http_status = $4, bytes_sent = $5, \
         error = $6 WHERE id = $1",
    )
    .bind(attempt_id)
    .bind(now_ms())
    .bind(end.outcome)
    .bind(end.http_status.map(i64::from))
    .bind(to_i64(end.bytes_sent))
    .bind(&end.error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that duplicated `id` can no longer count on its asset: the
/// oldest of them is queued to be sent itself, and the others become its
/// duplicates (one upload for the content, as before). Returns the queued
/// record, if any.
pub(super) async fn release_duplicates_tx(
    conn: &mut Tx,
    id: i64,
) -> Result<Vec<(i64, Option<String>)>, LedgerError> {
    let to = FileState::Duplicate.on(Event::Requeue)?;
    let heir: Option<(i64, Option<String>)> = stmt(
        "SELECT id, coalesce(path, url) FROM files WHERE duplicate_of = $1 AND state = 'duplicate' \
         ORDER BY id LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((heir_id, heir_path)) = heir else {
        return Ok(Vec::new());
    };
    let now = now_ms();
    stmt(
        "UPDATE files SET state = $2, duplicate_of = NULL, asset_id = NULL, next_attempt_at = 0, \
         updated_at = $3 WHERE id = $1 AND state = 'duplicate'",
    )
    .bind(heir_id)
    .bind(to.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    stmt(
        "UPDATE files SET duplicate_of = $2, asset_id = NULL, updated_at = $3 \
         WHERE duplicate_of = $1 AND state = 'duplicate'",
    )
    .bind(id)
    .bind(heir_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(vec![(heir_id, heir_path)])
}

async fn path_of_tx(conn: &mut Tx, id: i64) -> Result<String, LedgerError> {
    let row: Option<(Option<String>, Option<String>)> =
        stmt("SELECT path, url FROM files WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row
        .and_then(|(p, u)| p.or(u))
        .unwrap_or_else(|| format!("record {id}")))
}

impl Ledger {
    async fn begin(&self) -> Result<Tx, LedgerError> {
        Ok(self.pool.begin().await?)
    }

    pub(super) fn changed(&self, id: i64, path: String, state: FileState, detail: Option<String>) {
        self.announce(Change {
            id,
            path,
            state,
            asset_id: None,
            detail,
        });
    }

    /// Record a file seen on disk (see [`Discovery`]).
    pub async fn discover(&self, f: &NewFile) -> Result<Discovery, LedgerError> {
        let mut tx = self.begin().await?;
        let newest: Option<StatRow> = stmt(NEWEST_STAT_SQL)
            .bind(&f.path_bytes)
            .fetch_optional(&mut tx)
            .await?;
        let now = now_ms();
        let (size, dev, ino) = (to_i64(f.size), to_i64(f.device), to_i64(f.inode));
        if let Some(StatRow {
            id,
            state,
            size: old_size,
            mtime_ns: old_mtime,
            device: old_dev,
            inode: old_ino,
        }) = newest
        {
            let state = FileState::parse(&state)
                .ok_or_else(|| LedgerError::Corrupt(format!("unknown state {state:?}")))?;
            let same = old_size == Some(size)
                && old_mtime == Some(f.mtime_ns)
                && (self.stat_ignores_device() || old_dev == Some(dev))
                && old_ino == Some(ino);
            if same {
                tx.commit().await?;
                return Ok(Discovery::Known { id, state });
            }
            match state {
                // Not sent yet: this record simply follows the file.
                FileState::Discovered | FileState::Queued => {
                    let to = state.on(Event::Changed)?;
                    let done = stmt(
                        "UPDATE files SET state = $3, size = $4, mtime_ns = $5, device = $6, \
                         inode = $7, sha256 = NULL, mime = NULL, next_attempt_at = 0, \
                         updated_at = $8 WHERE id = $1 AND state = $2",
                    )
                    .bind(id)
                    .bind(state.as_str())
                    .bind(to.as_str())
                    .bind(size)
                    .bind(f.mtime_ns)
                    .bind(dev)
                    .bind(ino)
                    .bind(now)
                    .execute(&mut tx)
                    .await?;
                    expect_one(done, id, state)?;
                    let released = release_duplicates_tx(&mut tx, id).await?;
                    tx.commit().await?;
                    self.changed(id, f.path.clone(), to, Some("file changed".into()));
                    self.announce_requeued(released);
                    return Ok(Discovery::Changed(id));
                }
                // The worker sending it notices the change when it is done.
                FileState::Uploading => {
                    tx.commit().await?;
                    return Ok(Discovery::Known { id, state });
                }
                _ => {}
            }
        }
        let origin = f.origin.clone().unwrap_or_default();
        let (id_col, id_val) = self.new_id();
        let id: i64 = stmt(format!(
            "INSERT INTO files ({id_col}path_bytes, path, size, mtime_ns, device, inode, \
             user_metadata, state, discovered_at, updated_at, root, index_id, after_upload, \
             on_failure, origin_host) \
             VALUES ({id_val}$1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12, $13, $14) \
             RETURNING id",
        ))
        .bind(&f.path_bytes)
        .bind(&f.path)
        .bind(size)
        .bind(f.mtime_ns)
        .bind(dev)
        .bind(ino)
        .bind(&f.user_metadata)
        .bind(FileState::Discovered.as_str())
        .bind(now)
        .bind(f.origin.as_ref().map(|o| o.root.clone()))
        .bind(&origin.index_id)
        .bind(&origin.after_upload)
        .bind(&origin.on_failure)
        .bind(self.me_host())
        .scalar_one(&mut tx)
        .await?;
        tx.commit().await?;
        self.changed(id, f.path.clone(), FileState::Discovered, None);
        Ok(Discovery::New(id))
    }

    /// Whether a record of this path has exactly this size, mtime and
    /// inode: a file the ledger already knows, which a scan passes over
    /// without waiting for it to settle or hashing it.
    pub async fn is_current(&self, f: &NewFile) -> Result<bool, LedgerError> {
        // Any record of the path, not only the newest: a file put back to
        // an older version was merged into that version's record.
        let known: Option<i64> = stmt(
            "SELECT id FROM files WHERE path_bytes = $1 AND size = $2 AND mtime_ns = $3 \
             AND (device = $4 OR $6) AND inode = $5 LIMIT 1",
        )
        .bind(&f.path_bytes)
        .bind(to_i64(f.size))
        .bind(f.mtime_ns)
        .bind(to_i64(f.device))
        .bind(to_i64(f.inode))
        .bind(self.stat_ignores_device())
        .scalar_optional(&self.pool)
        .await?;
        Ok(known.is_some())
    }

    /// Whether "the same file" leaves the device number out: on a shared
    /// ledger hosts mount the same share under device numbers of their own,
    /// and each would take the others' records for changed files.
    pub(super) fn stat_ignores_device(&self) -> bool {
        self.pool.is_postgres()
    }

    /// The record must still be this attempt's to change (fencing): its
    /// claim's epoch is still the record's, so no takeover or later claim
    /// happened since, not even by this daemon (a worker that outlived its
    /// lease); and on a shared ledger this daemon still owns it. Run inside
    /// the writing transaction (which the takeover cannot interleave with).
    async fn still_mine(&self, tx: &mut Tx, job: &UploadJob) -> Result<(), LedgerError> {
        let row: Option<(i64, Option<i64>)> =
            stmt("SELECT epoch, claimed_by FROM files WHERE id = $1")
                .bind(job.id)
                .fetch_optional(&mut *tx)
                .await?;
        let me = self.me_id().filter(|_| self.pool.is_postgres());
        match row {
            Some((epoch, owner)) if epoch == job.epoch && (me.is_none() || owner == me) => Ok(()),
            _ => Err(LedgerError::Conflict {
                id: job.id,
                expected: "claimed by this attempt",
            }),
        }
    }

    /// On SQLite, the id column and the value that give a new record an id
    /// above every id ever used (migration 0008 keeps the high-water mark);
    /// PostgreSQL's identity sequence never goes back by itself.
    fn new_id(&self) -> (&'static str, &'static str) {
        if self.pool.is_postgres() {
            ("", "")
        } else {
            (
                "id, ",
                "(SELECT high + 1 FROM id_high_water WHERE name = 'files'), ",
            )
        }
    }

    fn announce_requeued(&self, released: Vec<(i64, Option<String>)>) {
        for (id, path) in released {
            self.changed(
                id,
                path.unwrap_or_default(),
                FileState::Queued,
                Some("the file it duplicated will not be uploaded; sending it itself".into()),
            );
        }
    }

    /// Queue a URL for `method=url`, once: a URL that already has a record
    /// (other than a failed one) is not queued again. Returns the record
    /// and whether it is new.
    pub async fn add_url(
        &self,
        url: &str,
        filename: Option<&str>,
        user_metadata: Option<&str>,
        origin: Option<&Origin>,
    ) -> Result<(i64, bool), LedgerError> {
        let mut tx = self.begin().await?;
        let known: Option<i64> = stmt(
            "SELECT id FROM files WHERE url = $1 AND state != 'failed' ORDER BY id DESC LIMIT 1",
        )
        .bind(url)
        .scalar_optional(&mut tx)
        .await?;
        if let Some(id) = known {
            tx.commit().await?;
            return Ok((id, false));
        }
        // Nothing to hash: a URL goes straight to the queue.
        let state = FileState::Discovered.on(Event::Hashed)?;
        let now = now_ms();
        let (id_col, id_val) = self.new_id();
        let id: i64 = stmt(format!(
            "INSERT INTO files ({id_col}url, filename, user_metadata, state, discovered_at, \
             updated_at, root, index_id, after_upload, on_failure, stamp) \
             VALUES ({id_val}$1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10) RETURNING id",
        ))
        .bind(url)
        .bind(filename)
        .bind(user_metadata)
        .bind(state.as_str())
        .bind(now)
        .bind(origin.map(|o| o.root.clone()))
        .bind(origin.and_then(|o| o.index_id.clone()))
        .bind(origin.and_then(|o| o.after_upload.clone()))
        .bind(origin.and_then(|o| o.on_failure.clone()))
        .bind(new_stamp())
        .scalar_one(&mut tx)
        .await?;
        tx.commit().await?;
        self.changed(id, url.to_string(), state, None);
        Ok((id, true))
    }

    /// Records waiting for eligibility and hashing, oldest first.
    pub async fn to_hash(&self, limit: u32) -> Result<Vec<HashJob>, LedgerError> {
        if let Some(member) = self.member().filter(|_| self.pool.is_postgres()) {
            // A shared ledger: take the files with a lease, so that two
            // hosts watching one share do not both read them, and only
            // files this host can see.
            let mut jobs: Vec<HashJob> = stmt(format!(
                "UPDATE files SET claimed_by = $3, lease_until = {PG_NOW} + $5 \
                 WHERE id IN (SELECT id FROM files WHERE state = 'discovered' \
                   AND path_bytes IS NOT NULL AND next_attempt_at <= $2 \
                   AND (lease_until IS NULL OR lease_until < {PG_NOW} OR claimed_by = $3){visible} \
                   ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, path_bytes, path, size, mtime_ns, attempts, origin_host, device",
                visible = self.visible_to_me("$4"),
            ))
            .bind(i64::from(limit))
            .bind(now_ms())
            .bind(member.id)
            .bind(member.host.clone())
            .bind(self.lease_ms())
            .fetch_all(&self.pool)
            .await?;
            jobs.sort_by_key(|j| j.id);
            return Ok(jobs);
        }
        Ok(stmt(
            "SELECT id, path_bytes, path, size, mtime_ns, attempts, device FROM files \
             WHERE state = 'discovered' AND path_bytes IS NOT NULL AND next_attempt_at <= $2 \
             ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?)
    }

    /// When the next waiting `discovered` record becomes due (Unix ms).
    pub async fn next_hash_due(&self) -> Result<Option<i64>, LedgerError> {
        Ok(stmt(
            "SELECT MIN(next_attempt_at) FROM files WHERE state = 'discovered' \
             AND path_bytes IS NOT NULL",
        )
        .scalar_one(&self.pool)
        .await?)
    }

    /// What other records of this size say about hashing it (see [`SameSize`]).
    pub async fn same_size(&self, job: &HashJob) -> Result<SameSize, LedgerError> {
        same_size_on(&self.pool, job).await
    }

    /// A `discovered` file could not be read for a reason that may pass (a
    /// network mount that is down): try again at `next_at` (Unix ms),
    /// counting the try (against `upload.max_attempts`, like an upload).
    pub async fn examine_later(
        &self,
        job: &HashJob,
        next_at: i64,
        error: &str,
    ) -> Result<(), LedgerError> {
        // The lease goes too: on a shared ledger another host, whose mount
        // may serve the file, can take it when it is due.
        stmt(
            "UPDATE files SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3, \
             updated_at = $4, lease_until = NULL WHERE id = $1 AND state = 'discovered'",
        )
        .bind(job.id)
        .bind(next_at)
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keep a `discovered` record waiting a moment for another record of
    /// its size to get its hash.
    pub async fn wait_for_hash(&self, job: &HashJob) -> Result<(), LedgerError> {
        stmt("UPDATE files SET next_attempt_at = $2 WHERE id = $1 AND state = 'discovered'")
            .bind(job.id)
            .bind(now_ms() + WAIT_FOR_HASH_MS)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records of this job's size queued or claimed with their hash left to
    /// their upload: the hash stage hashes them itself rather than keep a
    /// twin waiting for as long as that upload takes to start and finish (a
    /// retry schedule, a rate limit that holds a claimed record).
    pub async fn unhashed_twins(&self, job: &HashJob) -> Result<Vec<HashJob>, LedgerError> {
        // Only twins this host can read (a shared ledger).
        let visible = self.visible_to_me("$3");
        let mut q = stmt(format!(
            "SELECT id, path_bytes, path, size, mtime_ns FROM files \
             WHERE size = $1 AND id != $2 AND path_bytes IS NOT NULL \
             AND sha256 IS NULL AND state IN ('queued', 'uploading', 'processing', 'ready', \
             'indexing', 'indexed') AND state IN ('queued', 'uploading'){visible} LIMIT 16",
        ))
        .bind(job.size)
        .bind(job.id);
        if !visible.is_empty() {
            q = q.bind(self.me_host());
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// The hash of such a twin, computed by the hash stage: kept only if the
    /// record still has the stat it was hashed at and no hash yet (its own
    /// upload may have recorded one meanwhile, of the same bytes).
    pub async fn set_twin_sha256(&self, twin: &HashJob, sha256: &str) -> Result<(), LedgerError> {
        stmt(
            "UPDATE files SET sha256 = $2 WHERE id = $1 AND state IN ('queued', 'uploading') \
             AND sha256 IS NULL AND size = $3 AND mtime_ns = $4",
        )
        .bind(twin.id)
        .bind(sha256)
        .bind(twin.size)
        .bind(twin.mtime_ns)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queue an eligible `discovered` record with its hash left to the
    /// upload, if still no other record has its size (else `NeedsHash`,
    /// or `Wait`).
    pub async fn queue_unhashed(
        &self,
        job: &HashJob,
        mime: Option<&str>,
    ) -> Result<HashOutcome, LedgerError> {
        let from = FileState::Discovered;
        let to = from.on(Event::Hashed)?;
        let mut tx = self.begin().await?;
        match same_size_on(&mut tx, job).await? {
            SameSize::None => {}
            SameSize::Hashed => return Ok(HashOutcome::NeedsHash),
            SameSize::Pending => return Ok(HashOutcome::Wait),
        }
        let done = stmt(
            "UPDATE files SET state = $3, sha256 = NULL, mime = $4, duplicate_of = NULL, \
             next_attempt_at = 0, updated_at = $5 \
             WHERE id = $1 AND state = $2 AND size = $6 AND mtime_ns = $7",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(mime)
        .bind(now_ms())
        .bind(job.size)
        .bind(job.mtime_ns)
        .execute(&mut tx)
        .await?;
        if done.rows_affected() != 1 {
            // Changed (or ended) since it was examined.
            return Ok(HashOutcome::Gone);
        }
        tx.commit().await?;
        self.changed(job.id, job.path.clone(), to, None);
        Ok(HashOutcome::QueuedUnhashed)
    }

    /// Not eligible: `discovered` → `skipped` with the reason.
    pub async fn skip(&self, id: i64, reason: &str) -> Result<(), LedgerError> {
        self.finish(id, FileState::Discovered, Event::Skip, reason)
            .await
    }

    /// A record that cannot go on (vanished, unreadable, rejected):
    /// `from` → `failed`, releasing any record that duplicated it.
    pub async fn fail(&self, id: i64, from: FileState, error: &str) -> Result<(), LedgerError> {
        self.finish(id, from, Event::Fail, error).await
    }

    /// End a record (`skipped` or `failed`) with the reason.
    async fn finish(
        &self,
        id: i64,
        from: FileState,
        event: Event,
        reason: &str,
    ) -> Result<(), LedgerError> {
        let to = from.on(event)?;
        let error = reason;
        let mut tx = self.begin().await?;
        let done = stmt(
            "UPDATE files SET state = $3, last_error = $4, updated_at = $5 \
             WHERE id = $1 AND state = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(error)
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        expect_one(done, id, from)?;
        let released = release_duplicates_tx(&mut tx, id).await?;
        let path = path_of_tx(&mut tx, id).await?;
        tx.commit().await?;
        self.changed(id, path, to, Some(error.to_string()));
        self.announce_requeued(released);
        Ok(())
    }

    /// Store the hash of a `discovered` record and decide: queue it, or
    /// make it a duplicate, or merge it into the record that already has
    /// this path and content.
    pub async fn record_hash(
        &self,
        job: &HashJob,
        sha256: &str,
        mime: Option<&str>,
        dedupe: Dedupe,
    ) -> Result<HashOutcome, LedgerError> {
        let from = FileState::Discovered;
        let mut tx = self.begin().await?;
        let current: Option<(String, Option<i64>, Option<i64>)> =
            stmt("SELECT state, size, mtime_ns FROM files WHERE id = $1")
                .bind(job.id)
                .fetch_optional(&mut tx)
                .await?;
        // The file changed again while it was being hashed: the newer stat
        // is already recorded and the record will be hashed again.
        match current {
            Some((state, size, mtime))
                if state == from.as_str()
                    && size == Some(job.size)
                    && mtime == Some(job.mtime_ns) => {}
            _ => return Ok(HashOutcome::Gone),
        }
        // Its twin may be the record being sent unhashed: wait for its hash.
        if same_size_on(&mut tx, job).await? == SameSize::Pending {
            stmt("UPDATE files SET next_attempt_at = $2 WHERE id = $1")
                .bind(job.id)
                .bind(now_ms() + WAIT_FOR_HASH_MS)
                .execute(&mut tx)
                .await?;
            tx.commit().await?;
            return Ok(HashOutcome::Wait);
        }

        // The same path with the same content: the same version, seen again.
        let same_version: Option<i64> = stmt(
            "SELECT id FROM files WHERE path_bytes = $1 AND sha256 = $2 AND id != $3 \
             AND state NOT IN ('failed', 'skipped', 'discovered') ORDER BY id DESC LIMIT 1",
        )
        .bind(&job.path_bytes)
        .bind(sha256)
        .bind(job.id)
        .scalar_optional(&mut tx)
        .await?;
        if let Some(into) = same_version {
            stmt(
                "UPDATE files SET size = s.size, mtime_ns = s.mtime_ns, device = s.device, \
                 inode = s.inode, updated_at = $3 \
                 FROM (SELECT size, mtime_ns, device, inode FROM files WHERE id = $2) AS s \
                 WHERE files.id = $1",
            )
            .bind(into)
            .bind(job.id)
            .bind(now_ms())
            .execute(&mut tx)
            .await?;
            stmt("DELETE FROM files WHERE id = $1")
                .bind(job.id)
                .execute(&mut tx)
                .await?;
            tx.commit().await?;
            return Ok(HashOutcome::Merged { into });
        }

        let original: Option<(i64, Option<String>)> = match dedupe {
            Dedupe::Content => {
                stmt(
                    "SELECT id, asset_id FROM files WHERE sha256 = $1 AND id != $2 AND state IN \
                     ('queued', 'uploading', 'processing', 'ready', 'indexing', 'indexed') \
                     ORDER BY id LIMIT 1",
                )
                .bind(sha256)
                .bind(job.id)
                .fetch_optional(&mut tx)
                .await?
            }
            Dedupe::Path => stmt(
                "SELECT id, asset_id FROM files WHERE path_bytes = $1 AND id != $2 AND state IN \
                     ('queued', 'uploading', 'processing', 'ready', 'indexing', 'indexed') \
                     ORDER BY id DESC LIMIT 1",
            )
            .bind(&job.path_bytes)
            .bind(job.id)
            .fetch_optional(&mut tx)
            .await?,
            Dedupe::Off => None,
        };
        let (to, outcome, asset_id, dup_of) = match original {
            Some((of, asset)) => (
                from.on(Event::Duplicate)?,
                HashOutcome::Duplicate { of },
                asset,
                Some(of),
            ),
            None => (from.on(Event::Hashed)?, HashOutcome::Queued, None, None),
        };
        let done = stmt(
            "UPDATE files SET state = $3, sha256 = $4, mime = $5, duplicate_of = $6, \
             asset_id = $7, next_attempt_at = 0, updated_at = $8 WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(sha256)
        .bind(mime)
        .bind(dup_of)
        .bind(&asset_id)
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        tx.commit().await?;
        self.announce(Change {
            id: job.id,
            path: job.path.clone(),
            state: to,
            asset_id,
            detail: dup_of.map(|of| format!("same content as record {of}")),
        });
        Ok(outcome)
    }

    /// Claim the oldest due `queued` record for an upload attempt, for
    /// this daemon (`claimed_by`), with a lease of `lease_ms` on a shared
    /// ledger, where a daemon claims only files it can see.
    pub async fn claim(&self, lease_ms: i64) -> Result<Option<UploadJob>, LedgerError> {
        let from = FileState::Queued;
        let to = from.on(Event::Claim)?;
        let now = now_ms();
        let pg = self.pool.is_postgres();
        // PostgreSQL: claims run side by side, each skipping rows another
        // has locked; the lease is on the database clock.
        let (lock, lease) = if pg {
            (" FOR UPDATE SKIP LOCKED", format!("{PG_NOW} + $5"))
        } else {
            ("", "NULL".to_owned())
        };
        let mut tx = self.pool.begin_claim().await?;
        let visible = self.visible_to_me("$6");
        let mut q = stmt(format!(
            "UPDATE files SET state = $2, updated_at = $3, claimed_by = $4, lease_until = {lease}, \
             epoch = epoch + 1 \
             WHERE id = (SELECT id FROM files WHERE state = $1 AND next_attempt_at <= $3{visible} \
               ORDER BY next_attempt_at, id LIMIT 1{lock}) AND state = $1 \
             RETURNING id, path_bytes, path, url, size, mtime_ns, device, inode, sha256, mime, \
             user_metadata, attempts, lookup_first, filename, epoch, stamp",
        ))
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now)
        .bind(self.me_id())
        .bind(lease_ms);
        // The host's name is bound only where the text has a place for it.
        if !visible.is_empty() {
            q = q.bind(self.me_host());
        }
        let job: Option<UploadJob> = q.fetch_optional(&mut tx).await?;
        let Some(mut job) = job else {
            tx.commit().await?;
            return Ok(None);
        };
        job.attempt_id = stmt(
            "INSERT INTO attempts (file_id, started_at, daemon_id) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(job.id)
        .bind(now)
        .bind(self.me_id())
        .scalar_one(&mut tx)
        .await?;
        tx.commit().await?;
        self.changed(job.id, job.display(), to, None);
        Ok(Some(job))
    }

    /// When the next `queued` record becomes due (Unix ms), if any is queued.
    pub async fn next_due(&self) -> Result<Option<i64>, LedgerError> {
        Ok(
            stmt("SELECT MIN(next_attempt_at) FROM files WHERE state = 'queued'")
                .scalar_one(&self.pool)
                .await?,
        )
    }

    /// The platform holds an asset for this upload: commit its id before
    /// anything else happens. `uploading` → `processing`.
    pub async fn accept(
        &self,
        job: &UploadJob,
        asset_id: &str,
        end: &AttemptEnd,
    ) -> Result<(), LedgerError> {
        let from = FileState::Uploading;
        let to = from.on(Event::Accepted)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        self.still_mine(&mut tx, job).await?;
        let done = stmt(
            "UPDATE files SET state = $3, asset_id = $4, attempts = attempts + 1, \
             last_error = NULL, lookup_first = FALSE, uploaded_at = $5, updated_at = $5, \
             sha256 = coalesce(sha256, $6) WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(asset_id)
        .bind(now)
        .bind(&job.sha256)
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        end_attempt_tx(&mut tx, job.attempt_id, end).await?;
        // Duplicates point at the asset as soon as it exists.
        stmt("UPDATE files SET asset_id = $2, updated_at = $3 WHERE duplicate_of = $1")
            .bind(job.id)
            .bind(asset_id)
            .bind(now)
            .execute(&mut tx)
            .await?;
        // Test-only: the disk fills between the 201 and this commit (see
        // ledger/health.rs; nothing happens unless its variable is set).
        self.pool.health().fault_point("ledger-full-on-accept");
        tx.commit().await?;
        self.announce(Change {
            id: job.id,
            path: job.display(),
            state: to,
            asset_id: Some(asset_id.to_string()),
            detail: None,
        });
        Ok(())
    }

    /// Give a URL record that has none (one from before stamps) its stamp,
    /// before its first request: the stamp it has now.
    pub async fn set_stamp(&self, job: &UploadJob) -> Result<String, LedgerError> {
        let stamp: Option<Option<String>> = stmt(
            "UPDATE files SET stamp = coalesce(stamp, $2) WHERE id = $1 AND epoch = $3 \
             RETURNING stamp",
        )
        .bind(job.id)
        .bind(new_stamp())
        .bind(job.epoch)
        .scalar_optional(&self.pool)
        .await?;
        stamp.flatten().ok_or(LedgerError::Conflict {
            id: job.id,
            expected: "claimed by this attempt",
        })
    }

    /// The hash of a record being sent unhashed, learnt from an attempt
    /// that sent the whole file but was not accepted.
    pub async fn set_sha256(&self, job: &UploadJob, sha256: &str) -> Result<(), LedgerError> {
        stmt(
            "UPDATE files SET sha256 = $2 WHERE id = $1 AND state = 'uploading' \
             AND sha256 IS NULL AND epoch = $3",
        )
        .bind(job.id)
        .bind(sha256)
        .bind(job.epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Back to the queue after a failed attempt: `uploading` → `queued`,
    /// due at `next_at`. `counted` says whether the attempt counts against
    /// `max_attempts` (a rate limit or a rejected key does not);
    /// `lookup_first` whether the platform may have received it.
    pub async fn retry_later(
        &self,
        job: &UploadJob,
        end: &AttemptEnd,
        next_at: i64,
        counted: bool,
        lookup_first: bool,
    ) -> Result<(), LedgerError> {
        let from = FileState::Uploading;
        let to = from.on(Event::Retry)?;
        let mut tx = self.begin().await?;
        self.still_mine(&mut tx, job).await?;
        let done = stmt(
            // An interrupted attempt says nothing about the file: keep the
            // error that explains why it is waiting (a rejected key, say).
            "UPDATE files SET state = $3, attempts = attempts + $4, next_attempt_at = $5, \
             last_error = CASE WHEN $9 = 'interrupted' THEN last_error ELSE $6 END, \
             lookup_first = (lookup_first OR $7), updated_at = $8 \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(i64::from(counted))
        .bind(next_at)
        .bind(&end.error)
        .bind(lookup_first)
        .bind(now_ms())
        .bind(end.outcome)
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        end_attempt_tx(&mut tx, job.attempt_id, end).await?;
        tx.commit().await?;
        self.changed(job.id, job.display(), to, end.error.clone());
        Ok(())
    }

    /// The attempt ended the record: `uploading` → `failed` (counted) or
    /// `skipped` (not eligible after all).
    pub async fn finish_unsent(
        &self,
        job: &UploadJob,
        event: Event,
        end: &AttemptEnd,
    ) -> Result<(), LedgerError> {
        let from = FileState::Uploading;
        let to = from.on(event)?;
        let mut tx = self.begin().await?;
        self.still_mine(&mut tx, job).await?;
        let done = stmt(
            "UPDATE files SET state = $3, attempts = attempts + $4, last_error = $5, \
             updated_at = $6 WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(i64::from(to == FileState::Failed))
        .bind(&end.error)
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        end_attempt_tx(&mut tx, job.attempt_id, end).await?;
        let released = release_duplicates_tx(&mut tx, job.id).await?;
        tx.commit().await?;
        self.changed(job.id, job.display(), to, end.error.clone());
        self.announce_requeued(released);
        Ok(())
    }

    /// The file changed on disk during its attempt: `uploading` →
    /// `discovered`, to be checked and hashed again with its new stat.
    pub async fn changed_during_upload(
        &self,
        job: &UploadJob,
        end: &AttemptEnd,
        stat: Option<&NewFile>,
    ) -> Result<(), LedgerError> {
        let from = FileState::Uploading;
        let to = from.on(Event::Changed)?;
        let mut tx = self.begin().await?;
        self.still_mine(&mut tx, job).await?;
        let done = stmt(
            "UPDATE files SET state = $3, sha256 = NULL, mime = NULL, last_error = $4, \
             next_attempt_at = 0, size = coalesce($5, size), mtime_ns = coalesce($6, mtime_ns), \
             device = coalesce($7, device), inode = coalesce($8, inode), updated_at = $9 \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(&end.error)
        .bind(stat.map(|s| to_i64(s.size)))
        .bind(stat.map(|s| s.mtime_ns))
        .bind(stat.map(|s| to_i64(s.device)))
        .bind(stat.map(|s| to_i64(s.inode)))
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        end_attempt_tx(&mut tx, job.attempt_id, end).await?;
        let released = release_duplicates_tx(&mut tx, job.id).await?;
        tx.commit().await?;
        self.changed(job.id, job.display(), to, end.error.clone());
        self.announce_requeued(released);
        Ok(())
    }

    /// Records whose asset is processing and that were accepted or last
    /// asked about at or before `cutoff` (Unix ms), least recently first.
    pub async fn processing(&self, limit: u32, cutoff: i64) -> Result<Vec<PollJob>, LedgerError> {
        Ok(stmt(format!(
            "SELECT id, asset_id, uploaded_at, path, url, attempts FROM files \
             WHERE state = 'processing' AND asset_id IS NOT NULL AND updated_at <= $2{} \
             ORDER BY updated_at, id LIMIT $1",
            self.followed_by_me()
        ))
        .bind(i64::from(limit))
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?)
    }

    /// When the least recently asked-about `processing` record was last
    /// accepted or asked about (Unix ms), if any.
    pub async fn oldest_processing(&self) -> Result<Option<i64>, LedgerError> {
        Ok(stmt(
            "SELECT MIN(updated_at) FROM files WHERE state = 'processing' AND asset_id IS NOT NULL",
        )
        .scalar_one(&self.pool)
        .await?)
    }

    /// The platform says ready: `processing` → `ready`.
    pub async fn mark_ready(&self, job: &PollJob) -> Result<(), LedgerError> {
        let from = FileState::Processing;
        let to = from.on(Event::Ready)?;
        let now = now_ms();
        let done = stmt(
            "UPDATE files SET state = $3, ready_at = $4, updated_at = $4, last_error = NULL \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        expect_one(done, job.id, from)?;
        self.announce(Change {
            id: job.id,
            path: job
                .path
                .clone()
                .or_else(|| job.url.clone())
                .unwrap_or_default(),
            state: to,
            asset_id: Some(job.asset_id.clone()),
            detail: None,
        });
        Ok(())
    }

    /// Still processing: move it to the back of the polling order.
    pub async fn touch(&self, job: &PollJob) -> Result<(), LedgerError> {
        stmt("UPDATE files SET updated_at = $2 WHERE id = $1 AND state = 'processing'")
            .bind(job.id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Still processing, but asking failed: note why, and poll again later.
    pub async fn note_poll_error(&self, job: &PollJob, error: &str) -> Result<(), LedgerError> {
        stmt(
            "UPDATE files SET last_error = $2, updated_at = $3 WHERE id = $1 AND state = 'processing'",
        )
        .bind(job.id)
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The platform lost the asset before it was ready: `processing` →
    /// `queued`, to be sent again (counted as an attempt).
    pub async fn asset_lost(&self, job: &PollJob, error: &str) -> Result<(), LedgerError> {
        let from = FileState::Processing;
        let to = from.on(Event::Retry)?;
        let mut tx = self.begin().await?;
        let now = now_ms();
        let done = stmt(
            "UPDATE files SET state = $3, asset_id = NULL, uploaded_at = NULL, \
             attempts = attempts + 1, last_error = $4, next_attempt_at = 0, updated_at = $5 \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(error)
        .bind(now)
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        stmt("UPDATE files SET asset_id = NULL, updated_at = $2 WHERE duplicate_of = $1")
            .bind(job.id)
            .bind(now)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        self.changed(
            job.id,
            job.path
                .clone()
                .or_else(|| job.url.clone())
                .unwrap_or_default(),
            to,
            Some(error.to_string()),
        );
        Ok(())
    }

    /// Start-up recovery, before any worker runs: records a previous run
    /// left `uploading` go back to `queued`, marked to be looked up on the
    /// platform before they are sent again (the platform may have accepted
    /// them just before the crash). Their open attempts are closed.
    ///
    /// On a shared ledger the other daemons' uploads are live: only those
    /// whose lease ran out are taken over.
    pub async fn recover(&self) -> Result<u64, LedgerError> {
        if self.pool.is_postgres() {
            return self.take_over_expired().await;
        }
        let from = FileState::Uploading;
        let to = from.on(Event::Retry)?;
        let mut tx = self.begin().await?;
        let now = now_ms();
        stmt(
            "UPDATE attempts SET ended_at = $1, outcome = 'interrupted', \
             error = 'the previous run stopped during this attempt' \
             WHERE ended_at IS NULL",
        )
        .bind(now)
        .execute(&mut tx)
        .await?;
        let moved = stmt(
            "UPDATE files SET state = $2, lookup_first = TRUE, next_attempt_at = $4, updated_at = $3, \
             epoch = epoch + 1 WHERE state = $1",
        )
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now)
        .bind(now + LOOKUP_DELAY_MS)
        .execute(&mut tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(moved)
    }

    /// Another try of a record that failed before `before_ms` (Unix ms),
    /// attempts reset: a file back to `discovered` (hashed and deduplicated
    /// again), a URL to `queued`. `upload` retries what had failed before
    /// it started, not what failed again during the run. False when the
    /// record is not such a failure.
    pub async fn requeue_failed_before(
        &self,
        id: i64,
        before_ms: i64,
    ) -> Result<bool, LedgerError> {
        let from = FileState::Failed;
        let mut tx = self.begin().await?;
        let is_file: Option<bool> = stmt("SELECT path_bytes IS NOT NULL FROM files WHERE id = $1")
            .bind(id)
            .scalar_optional(&mut tx)
            .await?;
        // A file is examined, hashed and deduplicated afresh; a URL queued.
        let event = match is_file {
            Some(true) => Event::Reexamine,
            _ => Event::Requeue,
        };
        let to = from.on(event)?;
        let done = stmt(
            "UPDATE files SET state = $3, attempts = 0, next_attempt_at = 0, updated_at = $4 \
             WHERE id = $1 AND state = $2 AND updated_at < $5",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now_ms())
        .bind(before_ms)
        .execute(&mut tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        let path = path_of_tx(&mut tx, id).await?;
        tx.commit().await?;
        self.changed(id, path, to, None);
        Ok(true)
    }

    /// How many records are not in a terminal state.
    pub async fn unfinished(&self) -> Result<i64, LedgerError> {
        Ok(stmt(
            "SELECT count(*) FROM files WHERE state IN \
             ('discovered', 'queued', 'uploading', 'processing', 'indexing')",
        )
        .scalar_one(&self.pool)
        .await?)
    }

    /// Which of `ids` are still unfinished (in the order given): what a
    /// one-shot `upload` on a shared ledger waits for, rather than the
    /// whole fleet's queue.
    pub async fn unfinished_among(&self, ids: &[i64]) -> Result<Vec<i64>, LedgerError> {
        let mut left = Vec::new();
        for chunk in ids.chunks(1000) {
            let mut q = stmt(
                "SELECT id FROM files WHERE state IN \
                 ('discovered', 'queued', 'uploading', 'processing', 'indexing') AND id IN (",
            );
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.push_bind(*id);
            }
            q.push(")");
            let found: Vec<i64> = q.scalar_all(&self.pool).await?;
            left.extend(chunk.iter().filter(|id| found.contains(id)));
        }
        Ok(left)
    }

    /// How many records are queued, and when the oldest of them was
    /// discovered (Unix ms).
    pub async fn queue_stats(&self) -> Result<(i64, Option<i64>), LedgerError> {
        Ok(
            stmt("SELECT count(*), min(discovered_at) FROM files WHERE state = 'queued'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Whether the ledger answers (a query that reads nothing).
    pub async fn ping(&self) -> Result<(), LedgerError> {
        stmt("SELECT CAST(1 AS BIGINT)")
            .scalar_one::<i64>(&self.pool)
            .await?;
        Ok(())
    }

    /// Record counts per state.
    pub async fn counts(&self) -> Result<Vec<(FileState, i64)>, LedgerError> {
        let rows: Vec<(String, i64)> = stmt("SELECT state, count(*) FROM files GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (state, n) in rows {
            let st = FileState::parse(&state)
                .ok_or_else(|| LedgerError::Corrupt(format!("unknown state {state:?}")))?;
            out.push((st, n));
        }
        out.sort();
        Ok(out)
    }

    pub async fn record(&self, id: i64) -> Result<Option<Record>, LedgerError> {
        let mut q = stmt(format!("SELECT {RECORD_COLUMNS} FROM files WHERE id = "));
        q.push_bind(id);
        Ok(q.fetch_optional(&self.pool).await?)
    }

    /// The newest record of a path.
    pub async fn latest_for_path(&self, path_bytes: &[u8]) -> Result<Option<Record>, LedgerError> {
        let mut q = stmt(format!(
            "SELECT {RECORD_COLUMNS} FROM files WHERE path_bytes = "
        ));
        q.push_bind(path_bytes.to_vec())
            .push(" ORDER BY id DESC LIMIT 1");
        Ok(q.fetch_optional(&self.pool).await?)
    }

    /// Records, newest first, optionally only in `states`, at most `limit`.
    pub async fn history(
        &self,
        states: &[FileState],
        limit: Option<u32>,
    ) -> Result<Vec<Record>, LedgerError> {
        let mut q = stmt(format!("SELECT {RECORD_COLUMNS} FROM files"));
        if !states.is_empty() {
            q.push(" WHERE state IN (");
            for (i, s) in states.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.push_bind(s.as_str());
            }
            q.push(")");
        }
        q.push(" ORDER BY discovered_at DESC, id DESC");
        if let Some(limit) = limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Every attempt of a record, oldest first.
    pub async fn attempts(&self, file_id: i64) -> Result<Vec<AttemptRow>, LedgerError> {
        Ok(stmt(
            "SELECT id, file_id, started_at, ended_at, outcome, http_status, bytes_sent, error, \
             daemon_id FROM attempts WHERE file_id = $1 ORDER BY id",
        )
        .bind(file_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records in flight (`uploading`), for `status`.
    pub async fn in_flight(&self) -> Result<Vec<Record>, LedgerError> {
        self.history(&[FileState::Uploading], None).await
    }

    /// The most recent errors, newest first.
    pub async fn recent_errors(&self, limit: u32) -> Result<Vec<Record>, LedgerError> {
        let mut q = stmt(format!(
            "SELECT {RECORD_COLUMNS} FROM files WHERE last_error IS NOT NULL \
             AND state NOT IN ('skipped', 'duplicate') ORDER BY updated_at DESC LIMIT "
        ));
        q.push_bind(i64::from(limit));
        Ok(q.fetch_all(&self.pool).await?)
    }
}

async fn same_size_on(ex: impl Into<Ex<'_>>, job: &HashJob) -> Result<SameSize, LedgerError> {
    let (any, pending): (bool, bool) = stmt(SAME_SIZE_SQL)
        .bind(job.size)
        .bind(job.id)
        .fetch_one(ex)
        .await?;
    Ok(match (any, pending) {
        (_, true) => SameSize::Pending,
        (true, false) => SameSize::Hashed,
        (false, false) => SameSize::None,
    })
}
