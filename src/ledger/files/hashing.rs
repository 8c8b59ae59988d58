//! The hash stage's statements: which `discovered` records to examine,
//! what other records of the same size (and fingerprint) say, and recording
//! a hash, which decides between queueing, a duplicate and a merge (dedupe).

use std::sync::LazyLock;

use sqlx::FromRow;

use super::expect_one;
use crate::ledger::Dedupe;
use crate::ledger::engine::{Ex, Q, Tx, stmt};
use crate::ledger::fleet::PG_NOW;
use crate::ledger::state::{Event, FileState, sql_list};
use crate::ledger::{Change, Ledger, LedgerError, now_ms};

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
    /// The content's fingerprint (see `pipeline/hasher.rs`), once the hash
    /// stage has taken it: records of the same size are then compared by
    /// it. `None` (not taken) compares by size alone, as if every record of
    /// that size matched.
    #[sqlx(default)]
    pub fingerprint: Option<String>,
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

/// What other records of the same size say about hashing a new one. With
/// the new one's fingerprint known, only records whose fingerprint matches
/// count, and so do records holding an asset without a fingerprint (from
/// before migration 0009); a `discovered` record not yet fingerprinted does
/// not: it compares itself with this one when it is examined (the writes
/// that record either are serialised, see `ledger/engine.rs`).
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

/// [`Ledger::to_hash`] on one host: $1 now, up to `limit` records. In the
/// order of the `files_state_due (state, next_attempt_at)` index, so that a
/// round reads its records off the index instead of sorting every record
/// waiting: by `id` alone, 100 000 files found at once made every round
/// sort them all. The limit is written in (see `engine::stmt`).
fn to_hash_sql(limit: u32) -> String {
    format!(
        "SELECT id, path_bytes, path, size, mtime_ns, attempts, device \
         FROM files WHERE state = 'discovered' AND path_bytes IS NOT NULL \
         AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT {limit}"
    )
}

/// Statements per query in [`Ledger::queue_unhashed_many`] on SQLite.
const CHAINED: usize = 16;

/// How long a record waits for another record of its size to get its hash.
const WAIT_FOR_HASH_MS: i64 = 250;

/// Whether other live records have a file's size, and whether one of them
/// is being sent with its hash unknown: two existence checks, each served
/// by a partial index whose WHERE these repeat word for word (migrations
/// 0005 and 0009), so that a thousand files of one size cost no more than
/// one. For a record whose fingerprint is not known.
pub(in crate::ledger) static SAME_SIZE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT \
         EXISTS (SELECT 1 FROM files WHERE size = $1 AND id != $2 AND path_bytes IS NOT NULL \
           AND state IN ({live})), \
         EXISTS (SELECT 1 FROM files WHERE size = $1 AND id != $2 AND path_bytes IS NOT NULL \
           AND sha256 IS NULL AND state IN ({holding}))",
        live = sql_list(FileState::LIVE),
        holding = sql_list(FileState::HOLDING_ASSET),
    )
});

/// [`SAME_SIZE_SQL`] for a record whose fingerprint ($3) is known: the
/// same two questions, about the records of its size whose fingerprint is
/// $3 or unknown. Each question is two probes, one of `(size, fingerprint)`
/// and one of the unknown fingerprints (migration 0009), so that a thousand
/// files of one size and different content cost no more than one.
pub(in crate::ledger) static SAME_PRINT_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {}, {}", print_any(), print_pending()));

/// Queue a record unhashed ([`Ledger::queue_unhashed`]) in one statement,
/// only if [`SAME_PRINT_SQL`]'s first question says no: $1 size, $2 id, $3
/// fingerprint (as there), $4 from, $5 to, $6 mime, $7 now, $8 mtime_ns.
static QUEUE_IF_ALONE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE files SET state = $5, sha256 = NULL, mime = $6, duplicate_of = NULL, \
         next_attempt_at = 0, updated_at = $7, fingerprint = $3 \
         WHERE id = $2 AND state = $4 AND size = $1 AND mtime_ns = $8 AND NOT ({})",
        print_any()
    )
});

/// Does a live record of size $1 (not $2) have fingerprint $3, or hold an
/// asset without a fingerprint? ([`SameSize::Hashed`] or more.)
fn print_any() -> String {
    format!(
        "EXISTS (SELECT 1 FROM files WHERE size = $1 AND fingerprint = $3 AND id != $2 \
           AND path_bytes IS NOT NULL AND state IN ({live})) \
         OR EXISTS (SELECT 1 FROM files WHERE size = $1 AND id != $2 AND path_bytes IS NOT NULL \
           AND fingerprint IS NULL AND state IN ({holding}))",
        live = sql_list(FileState::LIVE),
        holding = sql_list(FileState::HOLDING_ASSET),
    )
}

/// Is such a record holding an asset with its hash unknown?
/// ([`SameSize::Pending`]; implies [`print_any`], as every state that
/// holds an asset is live.)
fn print_pending() -> String {
    format!(
        "EXISTS (SELECT 1 FROM files WHERE size = $1 AND fingerprint = $3 AND id != $2 \
           AND path_bytes IS NOT NULL AND sha256 IS NULL AND state IN ({holding})) \
         OR EXISTS (SELECT 1 FROM files WHERE size = $1 AND id != $2 AND path_bytes IS NOT NULL \
           AND fingerprint IS NULL AND sha256 IS NULL AND state IN ({holding}))",
        holding = sql_list(FileState::HOLDING_ASSET),
    )
}

impl Ledger {
    /// Records due for eligibility and hashing: the longest due first, then
    /// the oldest.
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
                   ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
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
        Ok(stmt(to_hash_sql(limit))
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
        // Only twins whose fingerprint matches or is unknown.
        let print = match &job.fingerprint {
            Some(_) => " AND (fingerprint = $3 OR fingerprint IS NULL)",
            None => "",
        };
        // Only twins this host can read (a shared ledger).
        let visible = self.visible_to_me(if print.is_empty() { "$3" } else { "$4" });
        let mut q = stmt(format!(
            "SELECT id, path_bytes, path, size, mtime_ns, fingerprint FROM files \
             WHERE size = $1 AND id != $2 AND path_bytes IS NOT NULL \
             AND sha256 IS NULL AND state IN ({holding}) AND state IN ({unsent}){print}{visible} \
             LIMIT 16",
            holding = sql_list(FileState::HOLDING_ASSET),
            unsent = sql_list(FileState::UNSENT),
        ))
        .bind(job.size)
        .bind(job.id);
        if let Some(print) = &job.fingerprint {
            q = q.bind(print.clone());
        }
        if !visible.is_empty() {
            q = q.bind(self.me_host());
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// The hash of such a twin, computed by the hash stage: kept only if the
    /// record still has the stat it was hashed at and no hash yet (its own
    /// upload may have recorded one meanwhile, of the same bytes).
    pub async fn set_twin_sha256(&self, twin: &HashJob, sha256: &str) -> Result<(), LedgerError> {
        stmt(format!(
            "UPDATE files SET sha256 = $2 WHERE id = $1 AND state IN ({}) \
             AND sha256 IS NULL AND size = $3 AND mtime_ns = $4",
            sql_list(FileState::UNSENT)
        ))
        .bind(twin.id)
        .bind(sha256)
        .bind(twin.size)
        .bind(twin.mtime_ns)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queue an eligible `discovered` record with its hash left to the
    /// upload, if still no other record has its size (and, with the job's
    /// fingerprint known, a matching or unknown fingerprint; else
    /// `NeedsHash`, or `Wait`). The fingerprint is recorded with it.
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
             next_attempt_at = 0, updated_at = $5, fingerprint = $8 \
             WHERE id = $1 AND state = $2 AND size = $6 AND mtime_ns = $7",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(mime)
        .bind(now_ms())
        .bind(job.size)
        .bind(job.mtime_ns)
        .bind(&job.fingerprint)
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

    /// [`Ledger::queue_unhashed`] for many fingerprinted records (with their
    /// mime types) in one transaction, for those that no other record could
    /// be a copy of: for each, whether it was queued. One that was not goes
    /// the single way (it may need its hash first, a wait, or have changed).
    /// In order: a later one sees the earlier ones queued (twins found
    /// together are not both sent unhashed).
    pub async fn queue_unhashed_many(
        &self,
        jobs: &[(&HashJob, Option<&str>)],
    ) -> Result<Vec<bool>, LedgerError> {
        let from = FileState::Discovered;
        let to = from.on(Event::Hashed)?;
        let mut queued = Vec::with_capacity(jobs.len());
        if jobs.iter().all(|(job, _)| job.fingerprint.is_none()) {
            queued.resize(jobs.len(), false);
            return Ok(queued);
        }
        let now = now_ms();
        let queue = |job: &HashJob, print: &str, mime: Option<&str>| {
            stmt(format!("{} RETURNING id", QUEUE_IF_ALONE_SQL.as_str()))
                .bind(job.size)
                .bind(job.id)
                .bind(print)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(mime)
                .bind(now)
                .bind(job.mtime_ns)
        };
        let mut tx = self.begin().await?;
        let mut ids: Vec<i64> = Vec::new();
        if self.pool.is_postgres() {
            for (job, mime) in jobs {
                if let Some(print) = &job.fingerprint {
                    let rows: Vec<(i64,)> =
                        queue(job, print, *mime).fetch_all_written(&mut tx).await?;
                    ids.extend(rows.into_iter().map(|(id,)| id));
                }
            }
        } else {
            // SQLite: the statements in turn (a later one sees the earlier
            // ones queued), in one round trip per [`CHAINED`]; so few
            // different chains that each stays prepared.
            let printed: Vec<_> = jobs
                .iter()
                .filter_map(|(job, mime)| Some((*job, job.fingerprint.as_deref()?, *mime)))
                .collect();
            for chunk in printed.chunks(CHAINED) {
                let chain = chunk
                    .iter()
                    .map(|(job, print, mime)| queue(job, print, *mime))
                    .reduce(Q::then);
                if let Some(chain) = chain {
                    let rows: Vec<(i64,)> = chain.fetch_all_written(&mut tx).await?;
                    ids.extend(rows.into_iter().map(|(id,)| id));
                }
            }
        }
        queued.extend(jobs.iter().map(|(job, _)| ids.contains(&job.id)));
        tx.commit().await?;
        for ((job, _), _) in jobs.iter().zip(&queued).filter(|(_, q)| **q) {
            self.changed(job.id, job.path.clone(), to, None);
        }
        Ok(queued)
    }

    /// Store the hash (and the fingerprint) of a `discovered` record and
    /// decide: queue it, or make it a duplicate, or merge it into the record
    /// that already has this path and content. Only the full hash decides
    /// a duplicate; the fingerprint only decides whether to wait.
    pub async fn record_hash(
        &self,
        job: &HashJob,
        sha256: &str,
        mime: Option<&str>,
        dedupe: Dedupe,
    ) -> Result<HashOutcome, LedgerError> {
        let from = FileState::Discovered;
        let mut tx = self.begin().await?;
        // The file changed again while it was being hashed: the newer stat
        // is already recorded and the record will be hashed again.
        if !still_as_hashed(&mut tx, job).await? {
            return Ok(HashOutcome::Gone);
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
        if let Some(into) = same_version(&mut tx, job, sha256).await? {
            merge_into(&mut tx, into, job.id).await?;
            tx.commit().await?;
            return Ok(HashOutcome::Merged { into });
        }
        let original = original_of(&mut tx, job, sha256, dedupe).await?;
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
             asset_id = $7, next_attempt_at = 0, updated_at = $8, fingerprint = $9 \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(sha256)
        .bind(mime)
        .bind(dup_of)
        .bind(&asset_id)
        .bind(now_ms())
        .bind(&job.fingerprint)
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
}

async fn same_size_on(ex: impl Into<Ex<'_>>, job: &HashJob) -> Result<SameSize, LedgerError> {
    let (any, pending): (bool, bool) = match &job.fingerprint {
        Some(print) => {
            stmt(SAME_PRINT_SQL.as_str())
                .bind(job.size)
                .bind(job.id)
                .bind(print.clone())
                .fetch_one(ex)
                .await?
        }
        None => {
            stmt(SAME_SIZE_SQL.as_str())
                .bind(job.size)
                .bind(job.id)
                .fetch_one(ex)
                .await?
        }
    };
    Ok(match (any, pending) {
        (_, true) => SameSize::Pending,
        (true, false) => SameSize::Hashed,
        (false, false) => SameSize::None,
    })
}

/// Whether the record is still `discovered` with the stat it was hashed at.
async fn still_as_hashed(tx: &mut Tx, job: &HashJob) -> Result<bool, LedgerError> {
    let current: Option<(String, Option<i64>, Option<i64>)> =
        stmt("SELECT state, size, mtime_ns FROM files WHERE id = $1")
            .bind(job.id)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(matches!(
        current,
        Some((state, size, mtime))
            if state == FileState::Discovered.as_str()
                && size == Some(job.size)
                && mtime == Some(job.mtime_ns)
    ))
}

/// Another record of this path kept with this content: the version this
/// file is again (a touched but unchanged file, or one put back).
async fn same_version(
    tx: &mut Tx,
    job: &HashJob,
    sha256: &str,
) -> Result<Option<i64>, LedgerError> {
    Ok(stmt(format!(
        "SELECT id FROM files WHERE path_bytes = $1 AND sha256 = $2 AND id != $3 \
         AND state NOT IN ({}) ORDER BY id DESC LIMIT 1",
        sql_list(FileState::NOT_A_KEPT_VERSION)
    ))
    .bind(&job.path_bytes)
    .bind(sha256)
    .bind(job.id)
    .scalar_optional(&mut *tx)
    .await?)
}

/// Record `id`'s file as the version `into`: `into` takes its stat and
/// `id` goes.
async fn merge_into(tx: &mut Tx, into: i64, id: i64) -> Result<(), LedgerError> {
    stmt(
        "UPDATE files SET size = s.size, mtime_ns = s.mtime_ns, device = s.device, \
         inode = s.inode, updated_at = $3 \
         FROM (SELECT size, mtime_ns, device, inode FROM files WHERE id = $2) AS s \
         WHERE files.id = $1",
    )
    .bind(into)
    .bind(id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    stmt("DELETE FROM files WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The record this content (or, with `dedupe = "path"`, this path) is
/// already uploaded or being uploaded by, with its asset if it has one.
async fn original_of(
    tx: &mut Tx,
    job: &HashJob,
    sha256: &str,
    dedupe: Dedupe,
) -> Result<Option<(i64, Option<String>)>, LedgerError> {
    let holding = sql_list(FileState::HOLDING_ASSET);
    Ok(match dedupe {
        Dedupe::Content => {
            stmt(format!(
                "SELECT id, asset_id FROM files WHERE sha256 = $1 AND id != $2 AND state IN \
                 ({holding}) ORDER BY id LIMIT 1"
            ))
            .bind(sha256)
            .bind(job.id)
            .fetch_optional(&mut *tx)
            .await?
        }
        Dedupe::Path => {
            stmt(format!(
                "SELECT id, asset_id FROM files WHERE path_bytes = $1 AND id != $2 AND state IN \
                 ({holding}) ORDER BY id DESC LIMIT 1"
            ))
            .bind(&job.path_bytes)
            .bind(job.id)
            .fetch_optional(&mut *tx)
            .await?
        }
        Dedupe::Off => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn plan(ledger: &Ledger, sql: &str) -> String {
        let rows: Vec<(i64, i64, i64, String)> = stmt(format!("EXPLAIN QUERY PLAN {sql}"))
            .bind(1i64)
            .bind(2i64)
            .bind("f")
            .fetch_all(&ledger.pool)
            .await
            .expect("explain");
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    /// Each of the fingerprint questions is an index probe: many files of
    /// one size and different content must not make each question a pass
    /// over every record of that size.
    #[tokio::test]
    async fn a_hashing_round_reads_the_index_in_order_without_sorting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        let plan = stmt(to_hash_sql(64)).bind(2i64).explain(&ledger.pool).await;
        assert!(plan.contains("files_state_due"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[tokio::test]
    async fn same_size_and_fingerprint_questions_probe_the_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        let plan = plan(&ledger, &SAME_PRINT_SQL).await;
        for probe in [
            "files_live_size (size=? AND fingerprint=?)",
            "files_unhashed_size (size=? AND fingerprint=?)",
            "files_unprinted_size (size=?)",
        ] {
            assert!(plan.contains(probe), "{probe}:\n{plan}");
        }
        assert!(!plan.contains("SCAN files"), "{plan}");
        // The hash stage's batched queueing asks the first question inside
        // its UPDATE: the same probes.
        let rows: Vec<(i64, i64, i64, String)> =
            stmt(format!("EXPLAIN QUERY PLAN {}", *QUEUE_IF_ALONE_SQL))
                .bind(1i64)
                .bind(2i64)
                .bind("f")
                .bind("discovered")
                .bind("queued")
                .bind("video/mp4")
                .bind(3i64)
                .bind(4i64)
                .fetch_all(&ledger.pool)
                .await
                .expect("explain");
        let plan = rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n");
        for probe in [
            "files_live_size (size=? AND fingerprint=?)",
            "files_unprinted_size (size=?)",
        ] {
            assert!(plan.contains(probe), "{probe}:\n{plan}");
        }
        assert!(!plan.contains("SCAN files"), "{plan}");
        ledger.close().await;
    }
}
