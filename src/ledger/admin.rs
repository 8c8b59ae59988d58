//! Record administration for the operator commands: finding a record by
//! what an operator knows of it (`show`, `retry`, `forget`), putting failed
//! records back in the queue, removing records, and pruning old ones.
//!
//! State changes go through [`FileState::on`] as a compare-and-set inside
//! one transaction, like every other write of the ledger.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sqlx::FromRow;

use super::engine::stmt;
use super::files::RECORD_COLUMNS;
use super::state::{Event, FileState, sql_list};
use super::{Change, Ledger, LedgerError, Record, now_ms};

/// At most this many candidates are listed for an ambiguous key.
const MAX_CANDIDATES: i64 = 50;

/// The shortest sha256 prefix accepted as a key.
pub const MIN_SHA_PREFIX: usize = 6;

/// What a key (path, URL, asset id, sha256 prefix, record id) names.
#[derive(Debug, Clone)]
pub enum Found {
    /// Nothing.
    None,
    /// One path or URL: all its records, newest first (the older ones are
    /// earlier versions of the file). Never empty.
    Versions(Vec<Record>),
    /// Exactly one record (by id, asset id or sha256 prefix).
    One(Box<Record>),
    /// Several records (at most `MAX_CANDIDATES` + 1), by id.
    Ambiguous(Vec<Record>),
}

/// The columns of a record that [`Record`] leaves out, for `show`.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct Detail {
    /// The exact OS path (bytes); `path` is its display form.
    #[serde(skip)]
    pub path_bytes: Option<Vec<u8>>,
    pub mtime_ns: Option<i64>,
    pub device: Option<i64>,
    pub inode: Option<i64>,
    pub user_metadata: Option<String>,
    pub lookup_first: bool,
    pub root: Option<String>,
    pub filename: Option<String>,
    pub index_id: Option<String>,
    pub after_upload: Option<String>,
    pub on_failure: Option<String>,
    pub indexed_asset_id: Option<String>,
}

/// What `retry` did to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeued {
    /// Back in line, attempts reset (a file is hashed and deduplicated first).
    Queued,
    /// Not failed: left as is.
    NotFailed(FileState),
    /// No such record (any more).
    Gone,
}

/// What `forget` did to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forgotten {
    /// Deleted with its attempts and multipart session. `requeued`: a record
    /// that duplicated it and had no asset yet, queued to be sent itself.
    Removed { requeued: Option<i64> },
    /// Being uploaded right now: not deleted.
    InFlight,
    /// No such record (any more).
    Gone,
}

/// What `prune` removed (or would remove).
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Terminal records older than the cutoff.
    pub old: u64,
    /// Of those, removed (or to be removed with a dry run).
    pub removed: u64,
    /// With a dry run: the records that would be removed, by id.
    pub would_remove: Vec<Record>,
}

/// A candidate of `prune` that is the newest record of its path, to be
/// kept while its file is still on disk.
#[derive(Debug, Clone, FromRow)]
pub struct NewestOfPath {
    pub id: i64,
    pub path_bytes: Vec<u8>,
}

/// A lowercase hex sha256 prefix of acceptable length, if `key` is one.
fn sha_prefix(key: &str) -> Option<String> {
    let ok =
        (MIN_SHA_PREFIX..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| key.to_ascii_lowercase())
}

fn looks_like_url(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn parse_state(state: &str) -> Result<FileState, LedgerError> {
    FileState::parse(state).ok_or_else(|| LedgerError::Corrupt(format!("unknown state {state:?}")))
}

impl Ledger {
    /// Find the records `key` names: `#ID`, a URL, a path (absolute or
    /// relative to the current directory), an asset id (also an indexed
    /// asset id), a sha256 prefix of at least [`MIN_SHA_PREFIX`] hex
    /// characters, or a plain record id. A path or URL wins over the rest;
    /// otherwise every kind of match counts, and several are ambiguous.
    pub async fn find(&self, key: &str) -> Result<Found, LedgerError> {
        if let Some(id) = key.strip_prefix('#') {
            return Ok(match id.trim().parse::<i64>() {
                Ok(id) => self
                    .record(id)
                    .await?
                    .map_or(Found::None, |r| Found::One(Box::new(r))),
                Err(_) => Found::None,
            });
        }
        if looks_like_url(key) {
            let records = self
                .by_column("url", key.as_bytes().to_vec(), true, None)
                .await?;
            return Ok(if records.is_empty() {
                Found::None
            } else {
                Found::Versions(records)
            });
        }
        if !key.is_empty() {
            let records = self.records_of_path(Path::new(key)).await?;
            if !records.is_empty() {
                return Ok(Found::Versions(records));
            }
        }

        let mut found: Vec<Record> = Vec::new();
        // An asset id: the record that owns the asset, not its duplicates
        // (which carry the same id), unless only duplicates have it.
        let by_asset = self
            .by_column(
                "asset_id",
                key.as_bytes().to_vec(),
                false,
                Some(MAX_CANDIDATES + 1),
            )
            .await?;
        let owners: Vec<Record> = by_asset
            .iter()
            .filter(|r| r.state != FileState::Duplicate.as_str())
            .cloned()
            .collect();
        found.extend(if owners.is_empty() { by_asset } else { owners });
        if let Some(prefix) = sha_prefix(key) {
            let mut q = stmt(format!(
                "SELECT {RECORD_COLUMNS} FROM files WHERE sha256 >= "
            ));
            q.push_bind(prefix.clone())
                .push(" AND sha256 < ")
                .push_bind(format!("{prefix}g"))
                .push(format!(" ORDER BY id LIMIT {}", MAX_CANDIDATES + 1));
            let by_sha: Vec<Record> = q.fetch_all(&self.pool).await?;
            found.extend(by_sha);
        }
        if key.bytes().all(|b| b.is_ascii_digit())
            && let Ok(id) = key.parse::<i64>()
            && let Some(r) = self.record(id).await?
        {
            found.push(r);
        }
        if found.is_empty() {
            // Indexed asset ids are rare keys and have no index: last.
            let mut q = stmt(format!(
                "SELECT {RECORD_COLUMNS} FROM files WHERE indexed_asset_id = "
            ));
            q.push_bind(key.to_string())
                .push(format!(" ORDER BY id LIMIT {}", MAX_CANDIDATES + 1));
            found = q.fetch_all(&self.pool).await?;
        }
        found.sort_by_key(|r| r.id);
        found.dedup_by_key(|r| r.id);
        Ok(match found.len() {
            0 => Found::None,
            1 => found.pop().map_or(Found::None, |r| Found::One(Box::new(r))),
            _ => Found::Ambiguous(found),
        })
    }

    /// Every record of a file path, newest first. The path is made
    /// absolute as discovery does; failing that, it is tried resolved.
    pub async fn records_of_path(&self, path: &Path) -> Result<Vec<Record>, LedgerError> {
        let Ok(abs) = std::path::absolute(path) else {
            return Ok(Vec::new());
        };
        let records = self
            .by_column(
                "path_bytes",
                abs.as_os_str().as_bytes().to_vec(),
                true,
                None,
            )
            .await?;
        if !records.is_empty() {
            return Ok(records);
        }
        match std::fs::canonicalize(path) {
            Ok(real) if real != abs => {
                self.by_column(
                    "path_bytes",
                    real.as_os_str().as_bytes().to_vec(),
                    true,
                    None,
                )
                .await
            }
            _ => Ok(records),
        }
    }

    /// Records whose `column` equals `value`, newest or oldest first, at
    /// most `limit`.
    async fn by_column(
        &self,
        column: &'static str,
        value: Vec<u8>,
        newest_first: bool,
        limit: Option<i64>,
    ) -> Result<Vec<Record>, LedgerError> {
        let mut q = stmt(format!(
            "SELECT {RECORD_COLUMNS} FROM files WHERE {column} = "
        ));
        // Text columns compare with text, the path with its bytes.
        if column == "path_bytes" {
            q.push_bind(value);
        } else {
            q.push_bind(String::from_utf8_lossy(&value).into_owned());
        }
        q.push(if newest_first {
            " ORDER BY id DESC"
        } else {
            " ORDER BY id"
        });
        if let Some(limit) = limit {
            q.push(format!(" LIMIT {limit}"));
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// The columns `show` prints beyond the [`Record`].
    pub async fn detail(&self, id: i64) -> Result<Option<Detail>, LedgerError> {
        Ok(stmt(
            "SELECT path_bytes, mtime_ns, device, inode, user_metadata, lookup_first, root, filename, \
             index_id, after_upload, on_failure, indexed_asset_id FROM files WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records that point at `id` as their original (its duplicates).
    pub async fn duplicates_of(&self, id: i64) -> Result<Vec<Record>, LedgerError> {
        let mut q = stmt(format!(
            "SELECT {RECORD_COLUMNS} FROM files WHERE duplicate_of = "
        ));
        q.push_bind(id).push(" ORDER BY id");
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Every `failed` record, oldest first.
    pub async fn failed_records(&self) -> Result<Vec<Record>, LedgerError> {
        Ok(stmt(format!(
            "SELECT {RECORD_COLUMNS} FROM files WHERE state = {} ORDER BY id",
            sql_list(&[FileState::Failed])
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// An operator asks for another try of a `failed` record, with
    /// attempts, backoff, last error and the file action of the failure
    /// reset, so that the retry ends like a first try: a file goes back to
    /// `discovered` ([`Event::Reexamine`]) to be hashed and deduplicated
    /// again, a URL to `queued` ([`Event::Requeue`]). Any other state is
    /// left as is.
    pub async fn requeue(&self, id: i64) -> Result<Requeued, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, Option<String>, Option<String>)> =
            stmt("SELECT state, path, url FROM files WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut tx)
                .await?;
        let Some((state, path, url)) = row else {
            return Ok(Requeued::Gone);
        };
        let from = parse_state(&state)?;
        if from != FileState::Failed {
            return Ok(Requeued::NotFailed(from));
        }
        let event = if path.is_some() {
            Event::Reexamine
        } else {
            Event::Requeue
        };
        let to = from.on(event)?;
        let done = stmt(
            "UPDATE files SET state = $3, attempts = 0, next_attempt_at = 0, last_error = NULL, \
             file_action = NULL, updated_at = $4 WHERE id = $1 AND state = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(LedgerError::Conflict {
                id,
                expected: from.as_str(),
            });
        }
        tx.commit().await?;
        self.announce(Change {
            id,
            path: path.or(url).unwrap_or_default(),
            state: to,
            asset_id: None,
            detail: Some("queued again by an operator".into()),
        });
        Ok(Requeued::Queued)
    }

    /// Remove a record so that its file is uploaded again when it is next
    /// seen. Its attempts and multipart session go with it (ON DELETE
    /// CASCADE); records that duplicated it keep its asset id and lose the
    /// pointer (ON DELETE SET NULL), except when it had no asset yet: then
    /// the oldest of them is queued to be sent itself and the others point
    /// at that one. A record being uploaded is not removed.
    pub async fn forget(&self, id: i64) -> Result<Forgotten, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, Option<String>)> =
            stmt("SELECT state, asset_id FROM files WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut tx)
                .await?;
        let Some((state, asset_id)) = row else {
            return Ok(Forgotten::Gone);
        };
        if parse_state(&state)? == FileState::Uploading {
            return Ok(Forgotten::InFlight);
        }
        let requeued = match asset_id {
            Some(_) => None,
            None => super::files::release_duplicates_tx(&mut tx, id)
                .await?
                .into_iter()
                .next(),
        };
        let done = stmt("DELETE FROM files WHERE id = $1 AND state = $2")
            .bind(id)
            .bind(&state)
            .execute(&mut tx)
            .await?;
        if done.rows_affected() != 1 {
            return Err(LedgerError::Conflict {
                id,
                expected: FileState::parse(&state).map_or("unchanged", FileState::as_str),
            });
        }
        tx.commit().await?;
        tracing::info!(file_id = id, state = %state, "record forgotten");
        if let Some((heir, path)) = &requeued {
            self.announce(Change {
                id: *heir,
                path: path.clone().unwrap_or_default(),
                state: FileState::Queued,
                asset_id: None,
                detail: Some("the record it duplicated was forgotten; sending it itself".into()),
            });
        }
        Ok(Forgotten::Removed {
            requeued: requeued.map(|(heir, _)| heir),
        })
    }

    /// `prune` candidates that are the newest record of their path and not
    /// `ready`/`indexed` (those are always kept): the caller keeps the ones
    /// whose file is still on disk, which would otherwise be found again
    /// and sent (or failed) again.
    pub async fn prune_newest_of_paths(
        &self,
        cutoff_ms: i64,
    ) -> Result<Vec<NewestOfPath>, LedgerError> {
        Ok(stmt(format!(
            "SELECT f.id, f.path_bytes FROM files f \
             WHERE f.state IN ({}) AND f.updated_at < $1 \
             AND f.path_bytes IS NOT NULL \
             AND f.id = (SELECT max(g.id) FROM files g WHERE g.path_bytes = f.path_bytes)",
            sql_list(FileState::ENDED_WITHOUT_ASSET)
        ))
        .bind(cutoff_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Remove terminal records last changed before `cutoff_ms`, except what
    /// dedupe needs: a `ready`/`indexed` record that is the newest record
    /// of its path (or URL), the records in `keep`, and every record that a
    /// kept record points at through `duplicate_of`. One transaction; with
    /// `dry_run` nothing is removed and the report lists what would be.
    pub async fn prune(
        &self,
        cutoff_ms: i64,
        keep: &[i64],
        dry_run: bool,
    ) -> Result<PruneReport, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let terminal = sql_list(FileState::TERMINAL);
        let old: i64 = stmt(format!(
            "SELECT count(*) FROM files WHERE state IN ({terminal}) AND updated_at < $1"
        ))
        .bind(cutoff_ms)
        .scalar_one(&mut tx)
        .await?;
        // The ids to remove, in a table of this connection's own: SQLite's
        // `temp` schema, PostgreSQL's `pg_temp` (dropped at commit).
        let (ids, create) = if self.pool.is_postgres() {
            (
                "pg_temp.prune_ids",
                "CREATE TEMP TABLE IF NOT EXISTS prune_ids (id BIGINT PRIMARY KEY) ON COMMIT DROP",
            )
        } else {
            (
                "temp.prune_ids",
                "CREATE TEMP TABLE IF NOT EXISTS prune_ids (id INTEGER PRIMARY KEY)",
            )
        };
        stmt(create).execute(&mut tx).await?;
        stmt(format!("DELETE FROM {ids}")).execute(&mut tx).await?;
        stmt(format!(
            "INSERT INTO {ids} (id) SELECT f.id FROM files f \
             WHERE f.state IN ({terminal}) \
             AND f.updated_at < $1 \
             AND NOT (f.state IN ({with_asset}) AND ( \
               (f.path_bytes IS NOT NULL AND \
                 f.id = (SELECT max(g.id) FROM files g WHERE g.path_bytes = f.path_bytes)) \
               OR (f.path_bytes IS NULL AND f.url IS NOT NULL AND \
                 f.id = (SELECT max(g.id) FROM files g WHERE g.url = f.url))))",
            with_asset = sql_list(FileState::ENDED_WITH_ASSET),
        ))
        .bind(cutoff_ms)
        .execute(&mut tx)
        .await?;
        for id in keep {
            stmt(format!("DELETE FROM {ids} WHERE id = $1"))
                .bind(id)
                .execute(&mut tx)
                .await?;
        }
        // Keep what kept records point at, until nothing more is kept.
        loop {
            let kept = stmt(format!(
                "DELETE FROM {ids} WHERE id IN (SELECT f.duplicate_of FROM files f \
                 WHERE f.duplicate_of IS NOT NULL \
                 AND f.id NOT IN (SELECT id FROM {ids}))"
            ))
            .execute(&mut tx)
            .await?
            .rows_affected();
            if kept == 0 {
                break;
            }
        }
        let mut report = PruneReport {
            old: u64::try_from(old).unwrap_or(0),
            ..PruneReport::default()
        };
        if dry_run {
            let q = stmt(format!(
                "SELECT {RECORD_COLUMNS} FROM files WHERE id IN (SELECT id FROM {ids}) \
                 ORDER BY id"
            ));
            report.would_remove = q.fetch_all(&mut tx).await?;
            report.removed = u64::try_from(report.would_remove.len()).unwrap_or(u64::MAX);
            tx.rollback().await?;
            return Ok(report);
        }
        report.removed = stmt(format!(
            "DELETE FROM files WHERE id IN (SELECT id FROM {ids})"
        ))
        .execute(&mut tx)
        .await?
        .rows_affected();
        stmt(format!("DROP TABLE {ids}")).execute(&mut tx).await?;
        tx.commit().await?;
        tracing::info!(removed = report.removed, "ledger pruned");
        Ok(report)
    }

    /// Give the freed pages back to the filesystem (after `prune`). On
    /// PostgreSQL a plain VACUUM of the ledger's tables: it makes the space
    /// reusable without locking out the fleet's daemons (VACUUM FULL would),
    /// and refreshes the planner's statistics after a large delete.
    pub async fn vacuum(&self) -> Result<(), LedgerError> {
        let sql = if self.pool.is_postgres() {
            "VACUUM (ANALYZE) files, attempts, multipart_sessions, multipart_chunks"
        } else {
            "VACUUM"
        };
        stmt(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Set a record's `updated_at` (Unix ms): for tests and tooling that
    /// need old records without waiting.
    pub async fn set_updated_at(&self, id: i64, updated_at_ms: i64) -> Result<(), LedgerError> {
        stmt("UPDATE files SET updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(updated_at_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
