//! The emulator's asset store: every asset created and not deleted, in creation order,
//! with the lazily computed `processing -> ready | failed` status and the JSON shapes
//! (`Asset`, `AssetDetail`, [`AssetView`]) the routes return. A multipart asset is
//! `uploading` (shown as `processing` on the wire) until its session completes; only then
//! does its processing clock start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

// Tokio's clock, so that tests running with paused time see assets settle in step.
use tokio::time::Instant;

use serde_json::{Map, Value, json};

use super::model::{AssetView, new_object_id};

/// Message of a media-rejected asset. The API says the text is not part of the contract.
pub(crate) const UNSUPPORTED_MEDIA_MESSAGE: &str =
    "The file could not be processed: unsupported or corrupt media";

/// Message of a multipart asset whose session expired (or failed) before it completed.
pub(crate) const ABANDONED_UPLOAD_MESSAGE: &str =
    "The multipart upload was not completed before its session expired";

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

/// Where an asset is in its life; the status is computed from it at each look.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// A multipart upload still receiving chunks; abandoned once `deadline` passes.
    Uploading { deadline: Instant },
    /// Its multipart session expired or failed: `failed`, for good.
    Abandoned,
    /// Received in full at `since`: `processing` for the ready delay, then the outcome.
    Settling { since: Instant },
}

#[derive(Clone, Debug)]
pub(crate) struct Asset {
    pub id: String,
    pub new: NewAsset,
    created_at: SystemTime,
    phase: Phase,
}

impl Asset {
    /// Status at this instant: `uploading` (multipart, not complete), `processing`, `ready`
    /// or `failed`. Computed from timestamps, so no timer task is needed.
    pub fn status(&self, ready_delay: Duration) -> &'static str {
        match self.phase {
            Phase::Uploading { deadline } if Instant::now() < deadline => "uploading",
            Phase::Uploading { .. } | Phase::Abandoned => "failed",
            Phase::Settling { since } if since.elapsed() < ready_delay => "processing",
            Phase::Settling { .. } => match self.new.outcome {
                Outcome::Ready => "ready",
                Outcome::Failed(_) => "failed",
            },
        }
    }

    /// The status as the API shows it: the platform has no `uploading` status.
    pub fn api_status(&self, ready_delay: Duration) -> &'static str {
        match self.status(ready_delay) {
            "uploading" => "processing",
            status => status,
        }
    }

    /// Why the asset failed, once it has.
    fn failure(&self, ready_delay: Duration) -> Option<&str> {
        if self.status(ready_delay) != "failed" {
            return None;
        }
        match (&self.phase, &self.new.outcome) {
            (Phase::Settling { .. }, Outcome::Failed(message)) => Some(message),
            (Phase::Settling { .. }, Outcome::Ready) => None,
            _ => Some(ABANDONED_UPLOAD_MESSAGE),
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
        if let Value::Object(obj) = &mut value {
            obj.insert("status".into(), json!(self.api_status(ready_delay)));
            obj.insert("size".into(), json!(self.new.size));
            if let Some(message) = self.failure(ready_delay) {
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
            _ => kind_from_filename(&self.new.filename).unwrap_or("video"),
        }
    }
}

/// Assets keyed by creation sequence (so "newest first" is a reverse walk) plus an id index.
#[derive(Debug, Default)]
pub(crate) struct Store {
    by_seq: BTreeMap<u64, Asset>,
    seq_by_id: HashMap<String, u64>,
    next_seq: u64,
    /// Assets to remove once they have been reported `ready` (fault `vanish_after_ready`).
    vanishing: HashSet<String>,
}

impl Store {
    /// A fully received asset: its processing clock starts now.
    pub fn insert(&mut self, new: NewAsset) -> Asset {
        let since = Instant::now();
        self.insert_in(new, Phase::Settling { since })
    }

    /// A multipart asset, `uploading` until [`Store::finish_upload`] or `deadline`.
    pub fn insert_uploading(&mut self, new: NewAsset, deadline: Instant) -> Asset {
        self.insert_in(new, Phase::Uploading { deadline })
    }

    /// Completes a multipart asset with what was received and starts its processing
    /// clock. False if the asset was deleted meanwhile (or is not uploading).
    pub fn finish_upload(&mut self, id: &str, received: Received) -> bool {
        let Some(asset) = self.get_mut(id) else {
            return false;
        };
        if !matches!(asset.phase, Phase::Uploading { .. }) {
            return false;
        }
        asset.new.sha256 = Some(received.sha256);
        asset.new.size = received.size;
        asset.new.file_type = Some(received.file_type);
        asset.new.outcome = received.outcome;
        asset.phase = Phase::Settling {
            since: Instant::now(),
        };
        true
    }

    /// Marks a multipart asset `failed` because its session ended without completing.
    pub fn abandon_upload(&mut self, id: &str) {
        if let Some(asset) = self.get_mut(id)
            && matches!(asset.phase, Phase::Uploading { .. })
        {
            asset.phase = Phase::Abandoned;
        }
    }

    fn insert_in(&mut self, new: NewAsset, phase: Phase) -> Asset {
        let id = loop {
            let id = new_object_id();
            if !self.seq_by_id.contains_key(&id) {
                break id;
            }
        };
        let asset = Asset {
            id: id.clone(),
            new,
            created_at: SystemTime::now(),
            phase,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_by_id.insert(id, seq);
        self.by_seq.insert(seq, asset.clone());
        asset
    }

    /// Replaces an asset's `user_metadata` (`None`: it has none). False if there is no
    /// such asset.
    pub fn set_user_metadata(&mut self, id: &str, meta: Option<Value>) -> bool {
        match self.get_mut(id) {
            Some(asset) => {
                asset.new.user_metadata = meta;
                true
            }
            None => false,
        }
    }

    pub fn get(&self, id: &str) -> Option<&Asset> {
        self.seq_by_id.get(id).and_then(|seq| self.by_seq.get(seq))
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Asset> {
        let seq = self.seq_by_id.get(id)?;
        self.by_seq.get_mut(seq)
    }

    /// The asset is to vanish once it has been reported `ready`.
    pub fn mark_vanishing(&mut self, id: &str) {
        self.vanishing.insert(id.to_owned());
    }

    /// Removes the asset if it was marked to vanish; true if it was.
    pub fn vanish(&mut self, id: &str) -> bool {
        self.vanishing.remove(id) && self.remove(id)
    }

    pub fn remove(&mut self, id: &str) -> bool {
        self.vanishing.remove(id);
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

/// What a completed multipart upload turned out to be.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub sha256: String,
    pub size: u64,
    pub file_type: String,
    pub outcome: Outcome,
}

/// `image`, `video` or `audio` as named by a filename's extension, if it names one.
pub(crate) fn kind_from_filename(filename: &str) -> Option<&'static str> {
    const VIDEO: &[&str] = &[
        "mp4", "m4v", "mov", "mkv", "webm", "avi", "wmv", "flv", "mpg", "mpeg", "ts", "mts",
        "m2ts", "3gp", "3g2", "mxf", "ogv",
    ];
    const AUDIO: &[&str] = &[
        "mp3", "wav", "flac", "aac", "m4a", "ogg", "oga", "opus", "aif", "aiff", "wma", "amr",
    ];
    const IMAGE: &[&str] = &[
        "jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "heic", "heif", "avif",
    ];
    let (_, ext) = filename.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    [(VIDEO, "video"), (AUDIO, "audio"), (IMAGE, "image")]
        .into_iter()
        .find(|(list, _)| list.contains(&ext.as_str()))
        .map(|(_, kind)| kind)
}
