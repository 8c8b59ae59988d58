//! The emulator's asset store: every asset created and not deleted, in creation order,
//! with the lazily computed `processing -> ready | failed` status and the JSON shapes
//! (`Asset`, `AssetDetail`, [`AssetView`]) the routes return.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

// Tokio's clock, so that tests running with paused time see assets settle in step.
use tokio::time::Instant;

use serde_json::{Map, Value, json};

use super::AssetView;

/// Message of a media-rejected asset. The API says the text is not part of the contract.
pub(crate) const UNSUPPORTED_MEDIA_MESSAGE: &str =
    "The file could not be processed: unsupported or corrupt media";

/// How an asset will end once its processing delay has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ready,
    Failed(String),
}

/// Everything the store needs to create an asset; built by the upload route.
#[derive(Clone, Debug)]
pub(crate) struct NewAsset {
    pub method: &'static str,
    pub filename: String,
    pub sha256: Option<String>,
    pub size: u64,
    pub file_type: Option<String>,
    pub user_metadata: Option<Value>,
    pub url: Option<String>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug)]
pub(crate) struct Asset {
    pub id: String,
    pub new: NewAsset,
    created_at: SystemTime,
    created: Instant,
}

impl Asset {
    /// Status at this instant: computed from the creation time, so no timer task is needed.
    pub fn status(&self, ready_delay: Duration) -> &'static str {
        if self.created.elapsed() < ready_delay {
            return "processing";
        }
        match self.new.outcome {
            Outcome::Ready => "ready",
            Outcome::Failed(_) => "failed",
        }
    }

    /// The `Asset` object (POST /assets response). Status is always `processing` there,
    /// as the platform answers every upload asynchronously.
    pub fn to_asset_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("_id".into(), json!(self.id));
        obj.insert("method".into(), json!(self.new.method));
        obj.insert("status".into(), json!("processing"));
        obj.insert("filename".into(), json!(self.new.filename));
        if let Some(file_type) = &self.new.file_type {
            obj.insert("file_type".into(), json!(file_type));
        }
        let created_at = humantime::format_rfc3339_millis(self.created_at).to_string();
        obj.insert("created_at".into(), json!(created_at));
        if let Some(meta) = &self.new.user_metadata {
            obj.insert("user_metadata".into(), meta.clone());
        }
        Value::Object(obj)
    }

    /// The `AssetDetail` object (GET routes): `Asset` plus `size`, live status and `error`.
    pub fn to_detail_json(&self, ready_delay: Duration) -> Value {
        let mut value = self.to_asset_json();
        let status = self.status(ready_delay);
        if let Value::Object(obj) = &mut value {
            obj.insert("status".into(), json!(status));
            obj.insert("size".into(), json!(self.new.size));
            if let (Outcome::Failed(message), "failed") = (&self.new.outcome, status) {
                obj.insert("error".into(), json!({ "message": message }));
            }
        }
        value
    }

    pub fn to_view(&self, ready_delay: Duration) -> AssetView {
        AssetView {
            id: self.id.clone(),
            method: self.new.method.to_string(),
            filename: self.new.filename.clone(),
            sha256: self.new.sha256.clone(),
            size: self.new.size,
            file_type: self.new.file_type.clone(),
            status: self.status(ready_delay).to_string(),
            user_metadata: self.new.user_metadata.clone(),
            url: self.new.url.clone(),
        }
    }

    /// `image`, `video` or `audio`, for the `asset_types[]` filter.
    pub fn kind(&self) -> &'static str {
        match &self.new.file_type {
            Some(mime) if mime.starts_with("image/") => "image",
            Some(mime) if mime.starts_with("audio/") => "audio",
            Some(mime) if mime.starts_with("video/") => "video",
            _ => super::upload::kind_from_filename(&self.new.filename).unwrap_or("video"),
        }
    }
}

/// Assets keyed by creation sequence (so "newest first" is a reverse walk) plus an id index.
#[derive(Debug, Default)]
pub(crate) struct Store {
    by_seq: BTreeMap<u64, Asset>,
    seq_by_id: HashMap<String, u64>,
    next_seq: u64,
}

impl Store {
    pub fn insert(&mut self, new: NewAsset) -> Asset {
        let id = loop {
            let id = new_asset_id();
            if !self.seq_by_id.contains_key(&id) {
                break id;
            }
        };
        let asset = Asset {
            id: id.clone(),
            new,
            created_at: SystemTime::now(),
            created: Instant::now(),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_by_id.insert(id, seq);
        self.by_seq.insert(seq, asset.clone());
        asset
    }

    pub fn get(&self, id: &str) -> Option<&Asset> {
        self.seq_by_id.get(id).and_then(|seq| self.by_seq.get(seq))
    }

    pub fn remove(&mut self, id: &str) -> bool {
        match self.seq_by_id.remove(id) {
            Some(seq) => self.by_seq.remove(&seq).is_some(),
            None => false,
        }
    }

    /// All assets, newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &Asset> {
        self.by_seq.values().rev()
    }

    /// All assets, oldest first (the admin view reads like a log).
    pub fn oldest_first(&self) -> impl Iterator<Item = &Asset> {
        self.by_seq.values()
    }
}

/// 24 lowercase hex characters, shaped like the platform's ObjectId-style ids:
/// 8 hex of creation time (so ids sort roughly by age) and 16 random hex.
fn new_asset_id() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Truncation to 32 bits is intended: that is the width of the timestamp part.
    format!("{:08x}{:016x}", secs as u32, fastrand::u64(..))
}
