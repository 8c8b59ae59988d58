//! SQL for what happens after an upload: indexing the asset into the
//! watch's `index_id`, and acting on the file (`after_upload`,
//! `on_failure`) once it has finished.

use sqlx::FromRow;

use super::engine::stmt;
use super::state::{Event, FileState, sql_list};
use super::{Change, Ledger, LedgerError, now_ms};

/// A record to index, or being indexed.
#[derive(Debug, Clone, FromRow)]
pub struct IndexJob {
    pub id: i64,
    pub asset_id: String,
    pub index_id: String,
    pub indexed_asset_id: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
}

impl IndexJob {
    pub fn display(&self) -> String {
        self.path
            .clone()
            .or_else(|| self.url.clone())
            .unwrap_or_default()
    }
}

/// A finished record whose file still has something to be done to it.
#[derive(Debug, Clone, FromRow)]
pub struct ActionJob {
    pub id: i64,
    pub path_bytes: Vec<u8>,
    pub path: String,
    pub root: Option<String>,
    pub state: String,
    pub size: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub inode: Option<i64>,
    pub sha256: Option<String>,
    pub asset_id: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// JSON of the action to take (`after_upload` or `on_failure`).
    pub action: String,
    /// The device the file was on (a file missing from a folder now on
    /// another device went with an unmounted filesystem).
    #[sqlx(default)]
    pub device: Option<i64>,
}

impl Ledger {
    /// Ready records whose watch wants them indexed, not yet submitted.
    pub async fn to_index(&self, limit: u32) -> Result<Vec<IndexJob>, LedgerError> {
        Ok(stmt(format!(
            "SELECT id, asset_id, index_id, indexed_asset_id, path, url FROM files \
             WHERE state = 'ready' AND index_id IS NOT NULL AND asset_id IS NOT NULL{} \
             ORDER BY id LIMIT {limit}",
            self.followed_by_me()
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records being indexed.
    pub async fn indexing(&self, limit: u32) -> Result<Vec<IndexJob>, LedgerError> {
        Ok(stmt(format!(
            "SELECT id, asset_id, index_id, indexed_asset_id, path, url FROM files \
             WHERE state = 'indexing' AND indexed_asset_id IS NOT NULL{} \
             ORDER BY updated_at, id LIMIT {limit}",
            self.followed_by_me()
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The index accepted the asset: `ready` → `indexing`.
    pub async fn start_indexing(
        &self,
        job: &IndexJob,
        indexed_asset_id: &str,
    ) -> Result<(), LedgerError> {
        let from = FileState::Ready;
        let to = from.on(Event::Index)?;
        let done = stmt(
            "UPDATE files SET state = $3, indexed_asset_id = $4, updated_at = $5 \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(indexed_asset_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Err(LedgerError::Conflict {
                id: job.id,
                expected: from.as_str(),
            });
        }
        self.announce(Change {
            id: job.id,
            path: job.display(),
            state: to,
            asset_id: Some(job.asset_id.clone()),
            detail: Some(format!("index {}", job.index_id)),
        });
        Ok(())
    }

    /// The index says the asset is ready: `indexing` → `indexed`.
    pub async fn mark_indexed(&self, job: &IndexJob) -> Result<(), LedgerError> {
        let from = FileState::Indexing;
        let to = from.on(Event::Indexed)?;
        let done = stmt(
            "UPDATE files SET state = $3, last_error = NULL, updated_at = $4 \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Err(LedgerError::Conflict {
                id: job.id,
                expected: from.as_str(),
            });
        }
        self.announce(Change {
            id: job.id,
            path: job.display(),
            state: to,
            asset_id: Some(job.asset_id.clone()),
            detail: None,
        });
        Ok(())
    }

    /// The index refused the asset outright (no such index, say): the
    /// record goes `ready` → `indexing` → `failed` with the reason, in one
    /// transaction, so it is not submitted again and again.
    pub async fn refuse_indexing(&self, id: i64, reason: &str) -> Result<(), LedgerError> {
        let from = FileState::Ready;
        let via = from.on(Event::Index)?;
        let to = via.on(Event::Fail)?;
        let mut tx = self.pool.begin().await?;
        let done = stmt(
            "UPDATE files SET state = $3, last_error = $4, updated_at = $5 \
             WHERE id = $1 AND state = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(reason)
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(LedgerError::Conflict {
                id,
                expected: from.as_str(),
            });
        }
        let path: Option<String> = stmt("SELECT coalesce(path, url) FROM files WHERE id = $1")
            .bind(id)
            .scalar_optional(&mut tx)
            .await?
            .flatten();
        tx.commit().await?;
        self.announce(Change {
            id,
            path: path.unwrap_or_default(),
            state: to,
            asset_id: None,
            detail: Some(reason.to_string()),
        });
        Ok(())
    }

    /// Note a transient indexing problem on the record (it is tried again).
    pub async fn note_index_error(&self, id: i64, error: &str) -> Result<(), LedgerError> {
        stmt("UPDATE files SET last_error = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(error)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Finished records with a file action still to do: `after_upload` once
    /// the asset is ready (or later), `on_failure` once failed.
    pub async fn pending_actions(&self, limit: u32) -> Result<Vec<ActionJob>, LedgerError> {
        // A file is moved or deleted only by a daemon that can see it.
        let visible = self.visible_to_me("$1");
        let mut q = stmt(format!(
            "SELECT id, path_bytes, path, root, state, size, mtime_ns, device, inode, sha256, \
             asset_id, attempts, last_error, \
             CASE WHEN state = 'failed' THEN on_failure ELSE after_upload END AS action \
             FROM files WHERE file_action IS NULL AND path_bytes IS NOT NULL AND path IS NOT NULL \
             AND ((state IN ({ready}) AND after_upload IS NOT NULL) \
               OR (state = 'failed' AND on_failure IS NOT NULL)){}{visible} \
             ORDER BY id LIMIT {limit}",
            self.followed_by_me(),
            ready = sql_list(FileState::ASSET_READY),
        ));
        if !visible.is_empty() {
            q = q.bind(self.me_host());
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Record what was done with the file (it is not done again).
    pub async fn set_file_action(&self, id: i64, done: &str) -> Result<(), LedgerError> {
        stmt("UPDATE files SET file_action = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(done)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        tracing::info!(file_id = id, action = done, "file action");
        Ok(())
    }
}
