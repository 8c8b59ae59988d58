//! SQL for `reconcile`: the records that claim an asset, and putting one
//! back in the queue when the platform has lost its asset.

use sqlx::FromRow;

use super::engine::stmt;
use super::state::{Event, FileState, sql_list};
use super::{Change, Ledger, LedgerError, now_ms};

/// A record whose asset should exist on the platform.
#[derive(Debug, Clone, FromRow)]
pub struct Claimed {
    pub id: i64,
    pub asset_id: String,
    pub state: String,
    pub path: Option<String>,
    pub url: Option<String>,
}

impl Claimed {
    pub fn display(&self) -> String {
        self.path
            .clone()
            .or_else(|| self.url.clone())
            .unwrap_or_default()
    }
}

impl Ledger {
    /// Finished records with an asset, by id, after `after_id` (paging).
    pub async fn claimed_assets(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, LedgerError> {
        Ok(stmt(format!(
            "SELECT id, asset_id, state, path, url FROM files \
             WHERE id > $1 AND asset_id IS NOT NULL AND state IN ({}) \
             ORDER BY id LIMIT {limit}",
            sql_list(FileState::ASSET_READY)
        ))
        .bind(after_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether any record points at this asset.
    pub async fn knows_asset(&self, asset_id: &str) -> Result<bool, LedgerError> {
        let n: i64 = stmt("SELECT count(*) FROM files WHERE asset_id = $1")
            .bind(asset_id)
            .scalar_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// The URL record that carries this stamp, if any: its id and URL.
    pub async fn stamped(&self, stamp: &str) -> Result<Option<(i64, String)>, LedgerError> {
        Ok(
            stmt("SELECT id, url FROM files WHERE stamp = $1 AND url IS NOT NULL LIMIT 1")
                .bind(stamp)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The platform lost this record's asset: queue the file again (attempts
    /// reset, no lookup: there is nothing to find).
    pub async fn requeue_lost(&self, c: &Claimed, reason: &str) -> Result<(), LedgerError> {
        let from = FileState::parse(&c.state)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown state {:?}", c.state)))?;
        let to = from.on(Event::Requeue)?;
        let done = stmt(
            "UPDATE files SET state = $3, asset_id = NULL, indexed_asset_id = NULL, attempts = 0, \
             lookup_first = FALSE, next_attempt_at = 0, uploaded_at = NULL, ready_at = NULL, \
             last_error = $4, updated_at = $5 WHERE id = $1 AND state = $2",
        )
        .bind(c.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(reason)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Err(LedgerError::Conflict {
                id: c.id,
                expected: from.as_str(),
            });
        }
        self.announce(Change {
            id: c.id,
            path: c.display(),
            state: to,
            asset_id: None,
            detail: Some(reason.to_string()),
        });
        Ok(())
    }
}
