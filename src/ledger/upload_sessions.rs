//! SQL for multipart sessions: the session of a file and the chunks whose
//! PUT succeeded, written as the upload goes so that a restart resumes the
//! same session and sends only what is missing. Every session a file has
//! had stays in `multipart_session_log` after it ends, with its outcome.

use sqlx::FromRow;

use super::engine::stmt;
use super::{Ledger, LedgerError, now_ms};

/// A file's multipart session as the ledger holds it.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Session {
    pub file_id: i64,
    pub upload_id: String,
    pub asset_id: String,
    pub chunk_size: i64,
    pub total_chunks: i64,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    /// The headers every chunk PUT must carry, as a JSON object (`None`
    /// for sessions saved before they were kept).
    pub upload_headers: Option<String>,
}

/// One session a file has had, in use or ended.
#[derive(Debug, Clone, FromRow, PartialEq, Eq, serde::Serialize)]
pub struct SessionLog {
    pub upload_id: String,
    pub asset_id: String,
    pub total_chunks: i64,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    /// "completed", why it was given up, or `None` while in use.
    pub outcome: Option<String>,
}

/// A chunk whose PUT succeeded.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Chunk {
    pub chunk_index: i64,
    pub etag: String,
    pub size: i64,
    pub reported: bool,
}

/// A write of an attempt whose claim is no longer current (fencing).
fn stale(id: i64) -> LedgerError {
    LedgerError::Conflict {
        id,
        expected: "claimed by this attempt",
    }
}

impl Ledger {
    /// The file's session and its chunks, if it has one.
    pub async fn session(
        &self,
        file_id: i64,
    ) -> Result<Option<(Session, Vec<Chunk>)>, LedgerError> {
        let session: Option<Session> = stmt(
            "SELECT file_id, upload_id, asset_id, chunk_size, total_chunks, expires_at, created_at, \
             upload_headers FROM multipart_sessions WHERE file_id = $1",
        )
        .bind(file_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(session) = session else {
            return Ok(None);
        };
        let chunks = stmt(
            "SELECT chunk_index, etag, size, reported FROM multipart_chunks \
             WHERE file_id = $1 ORDER BY chunk_index",
        )
        .bind(file_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((session, chunks)))
    }

    /// Remember a new session (replacing any old one and its chunks)
    /// before a byte of it is sent, and log it, for the attempt of claim
    /// `epoch` (a stale attempt is refused: it must not replace the current
    /// one's).
    pub async fn save_session(&self, s: &Session, epoch: i64) -> Result<(), LedgerError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let current: Option<i64> = stmt("SELECT epoch FROM files WHERE id = $1")
            .bind(s.file_id)
            .scalar_optional(&mut tx)
            .await?;
        if current != Some(epoch) {
            return Err(stale(s.file_id));
        }
        stmt("DELETE FROM multipart_sessions WHERE file_id = $1")
            .bind(s.file_id)
            .execute(&mut tx)
            .await?;
        stmt(
            "INSERT INTO multipart_sessions (file_id, upload_id, asset_id, chunk_size, \
             total_chunks, expires_at, created_at, upload_headers) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(s.file_id)
        .bind(&s.upload_id)
        .bind(&s.asset_id)
        .bind(s.chunk_size)
        .bind(s.total_chunks)
        .bind(s.expires_at)
        .bind(now)
        .bind(&s.upload_headers)
        .execute(&mut tx)
        .await?;
        // A session the log still shows in use was left behind unnamed.
        stmt(
            "UPDATE multipart_session_log SET ended_at = $2, outcome = 'replaced' \
             WHERE file_id = $1 AND outcome IS NULL",
        )
        .bind(s.file_id)
        .bind(now)
        .execute(&mut tx)
        .await?;
        stmt(
            "INSERT INTO multipart_session_log (file_id, upload_id, asset_id, total_chunks, \
             created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (file_id, upload_id) DO NOTHING",
        )
        .bind(s.file_id)
        .bind(&s.upload_id)
        .bind(&s.asset_id)
        .bind(s.total_chunks)
        .bind(now)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A session ended: log its `outcome` ("completed", or why it was given
    /// up) and, unless it completed, forget it and its chunks.
    pub async fn end_session(
        &self,
        file_id: i64,
        upload_id: &str,
        outcome: &str,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        stmt(
            "UPDATE multipart_session_log SET ended_at = $3, outcome = $4 \
             WHERE file_id = $1 AND upload_id = $2",
        )
        .bind(file_id)
        .bind(upload_id)
        .bind(now_ms())
        .bind(outcome)
        .execute(&mut tx)
        .await?;
        if outcome != "completed" {
            stmt("DELETE FROM multipart_sessions WHERE file_id = $1 AND upload_id = $2")
                .bind(file_id)
                .bind(upload_id)
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every session the file has had, oldest first.
    pub async fn session_log(&self, file_id: i64) -> Result<Vec<SessionLog>, LedgerError> {
        Ok(stmt(
            "SELECT upload_id, asset_id, total_chunks, created_at, ended_at, outcome \
             FROM multipart_session_log WHERE file_id = $1 ORDER BY created_at, upload_id",
        )
        .bind(file_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A chunk's PUT succeeded: keep its proof at once, if the attempt of
    /// claim `epoch` still holds the record (a stale ETag is refused).
    pub async fn record_chunk(
        &self,
        file_id: i64,
        epoch: i64,
        chunk_index: i64,
        etag: &str,
        size: i64,
    ) -> Result<(), LedgerError> {
        let done = stmt(
            "INSERT INTO multipart_chunks (file_id, chunk_index, etag, size) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM files WHERE id = $1 AND epoch = $5) \
             ON CONFLICT (file_id, chunk_index) DO UPDATE SET etag = $3, size = $4, reported = FALSE",
        )
        .bind(file_id)
        .bind(chunk_index)
        .bind(etag)
        .bind(size)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(stale(file_id));
        }
        Ok(())
    }

    /// The platform accepted these chunks' proofs.
    pub async fn mark_reported(&self, file_id: i64, chunks: &[i64]) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        for idx in chunks {
            stmt(
                "UPDATE multipart_chunks SET reported = TRUE WHERE file_id = $1 AND chunk_index = $2",
            )
            .bind(file_id)
            .bind(idx)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forget a session (finished, or its file changed). The log keeps it,
    /// ended as "dropped" unless its outcome is already known.
    pub async fn drop_session(&self, file_id: i64) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        stmt(
            "UPDATE multipart_session_log SET ended_at = $2, outcome = 'dropped' \
             WHERE file_id = $1 AND outcome IS NULL",
        )
        .bind(file_id)
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        stmt("DELETE FROM multipart_sessions WHERE file_id = $1")
            .bind(file_id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
