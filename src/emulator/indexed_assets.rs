//! The indexed assets an emulator holds: what each copied from its asset when indexed,
//! and its `pending` -> `indexing` -> `ready` status, computed lazily like assets'.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::model::{new_object_id, rfc3339};

/// An asset indexed into an index, with what it copied from the asset when indexed.
#[derive(Debug, Clone)]
pub(crate) struct IndexedAsset {
    id: String,
    index_id: String,
    asset_id: String,
    filename: String,
    size: u64,
    user_metadata: Option<Value>,
    created_at: SystemTime,
    created: Instant,
}

impl IndexedAsset {
    /// A new indexed asset, `pending` from now, with what it copies from its asset.
    pub fn new(
        index_id: String,
        asset_id: String,
        filename: String,
        size: u64,
        user_metadata: Option<Value>,
    ) -> Self {
        Self {
            id: new_object_id(),
            index_id,
            asset_id,
            filename,
            size,
            user_metadata,
            created_at: SystemTime::now(),
            created: Instant::now(),
        }
    }

    /// `pending` for the first quarter of the delay, `indexing` for the rest, then `ready`.
    fn status(&self, ready_delay: Duration) -> &'static str {
        let elapsed = self.created.elapsed();
        if elapsed >= ready_delay {
            "ready"
        } else if elapsed < ready_delay / 4 {
            "pending"
        } else {
            "indexing"
        }
    }

    pub fn to_json(&self, ready_delay: Duration) -> Value {
        let status = self.status(ready_delay);
        let mut obj = Map::new();
        obj.insert("_id".into(), json!(self.id));
        obj.insert("asset_id".into(), json!(self.asset_id));
        obj.insert("index_id".into(), json!(self.index_id));
        obj.insert("status".into(), json!(status));
        obj.insert("created_at".into(), json!(rfc3339(self.created_at)));
        if status == "ready" {
            let indexed_at = rfc3339(self.created_at + ready_delay);
            obj.insert("indexed_at".into(), json!(indexed_at));
        }
        obj.insert(
            "system_metadata".into(),
            json!({ "filename": self.filename, "size": self.size }),
        );
        if let Some(meta) = &self.user_metadata {
            obj.insert("user_metadata".into(), meta.clone());
        }
        Value::Object(obj)
    }
}

/// Every indexed asset, by id.
#[derive(Debug, Default)]
pub(crate) struct IndexedAssets {
    by_id: HashMap<String, IndexedAsset>,
}

impl IndexedAssets {
    /// Adds an indexed asset (with a fresh id if its id is taken); returns its id.
    pub fn insert(&mut self, mut indexed: IndexedAsset) -> String {
        while self.by_id.contains_key(&indexed.id) {
            indexed.id = new_object_id();
        }
        let id = indexed.id.clone();
        self.by_id.insert(id.clone(), indexed);
        id
    }

    /// The indexed asset `id`, if it belongs to index `index_id`.
    pub fn get(&self, index_id: &str, id: &str) -> Option<&IndexedAsset> {
        self.by_id
            .get(id)
            .filter(|asset| asset.index_id == index_id)
    }
}
