//! Multipart upload sessions: their chunk slots, the presigned-URL grants, and their life
//! (`active` -> `completed` | `failed` | `expired`). Pure bookkeeping, done under the
//! sessions mutex; the routes (`upload_sessions`, `chunks`) do the file I/O around it.
//!
//! Each chunk slot keeps the latest PUT of the chunk and, once a report accepted it, the
//! reported one: a chunk re-PUT after its report does not change what is assembled.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;
// Tokio's clock, like the asset store, so paused-time tests see expiry in step.
use tokio::time::Instant;

use super::error::ApiError;
use super::model::{new_object_id, rfc3339};

/// How long a session accepts chunks and reports.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Presigned URLs in the create answer: the first chunks only, as on the platform.
pub(crate) const INITIAL_URL_COUNT: u64 = 10;
/// Most URLs one `presigned-urls` request may ask for.
pub(crate) const MAX_URL_COUNT: u64 = 50;

/// A chunk as received by one PUT: where its bytes are, and its ETag (unquoted).
#[derive(Clone, Debug)]
pub(crate) struct StoredChunk {
    pub path: PathBuf,
    pub etag: String,
    pub len: u64,
    pub uploaded_at: SystemTime,
}

#[derive(Debug, Default)]
struct Slot {
    latest: Option<StoredChunk>,
    reported: Option<StoredChunk>,
    reported_at: Option<SystemTime>,
}

/// One presigned URL handed out, keyed by its `sig`.
#[derive(Debug)]
struct Grant {
    index: u64,
    expires: Instant,
    used: bool,
}

/// A presigned URL to give to a client.
#[derive(Debug)]
pub(crate) struct UrlGrant {
    pub chunk_index: u64,
    pub sig: String,
    pub expires_at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Active,
    /// Every chunk is reported; the chunks are being hashed.
    Completing,
    Completed,
    Failed,
}

/// A session's status at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionStatus {
    Active,
    Completing,
    Completed,
    Failed,
    Expired,
}

impl SessionStatus {
    /// The wire name; the platform has no "completing", which is still `active`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active | Self::Completing => "active",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    pub id: String,
    pub asset_id: String,
    pub filename: String,
    pub total_size: u64,
    pub chunk_size: u64,
    pub total_chunks: u64,
    /// Folder of this session's chunk files.
    pub dir: PathBuf,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
    updated_at: SystemTime,
    expires: Instant,
    expired_on_purpose: bool,
    phase: Phase,
    slots: BTreeMap<u64, Slot>,
    reported: u64,
    reported_bytes: u64,
    grants: HashMap<String, Grant>,
    /// Turns true when completion has ended, either way.
    done: watch::Sender<bool>,
}

/// What a new session is made of; the id comes from [`Sessions::new_id`].
#[derive(Debug)]
pub(crate) struct NewSession {
    pub id: String,
    pub asset_id: String,
    pub filename: String,
    pub total_size: u64,
    pub chunk_size: u64,
    pub dir: PathBuf,
}

impl Session {
    pub fn new(new: NewSession) -> Self {
        let now = SystemTime::now();
        Self {
            total_chunks: new.total_size.div_ceil(new.chunk_size),
            id: new.id,
            asset_id: new.asset_id,
            filename: new.filename,
            total_size: new.total_size,
            chunk_size: new.chunk_size,
            dir: new.dir,
            created_at: now,
            expires_at: now + SESSION_TTL,
            updated_at: now,
            expires: Instant::now() + SESSION_TTL,
            expired_on_purpose: false,
            phase: Phase::Active,
            slots: BTreeMap::new(),
            reported: 0,
            reported_bytes: 0,
            grants: HashMap::new(),
            done: watch::Sender::new(false),
        }
    }

    /// The instant the session expires (when its asset gives up waiting too).
    pub fn deadline(&self) -> Instant {
        self.expires
    }

    pub fn status(&self) -> SessionStatus {
        match self.phase {
            Phase::Active if self.expired_on_purpose || Instant::now() >= self.expires => {
                SessionStatus::Expired
            }
            Phase::Active => SessionStatus::Active,
            Phase::Completing => SessionStatus::Completing,
            Phase::Completed => SessionStatus::Completed,
            Phase::Failed => SessionStatus::Failed,
        }
    }

    /// Exact length of chunk `index` (1-based): `chunk_size`, the last one the remainder.
    pub fn chunk_len(&self, index: u64) -> u64 {
        if index < self.total_chunks {
            self.chunk_size
        } else {
            self.total_size - self.chunk_size * (self.total_chunks - 1)
        }
    }

    /// An entry of `GET /assets/multipart-uploads`.
    pub fn to_summary_json(&self) -> Value {
        json!({
            "upload_id": self.id,
            "status": self.status().as_str(),
            "total_size": self.total_size,
            "chunk_size": self.chunk_size,
            "total_chunks": self.total_chunks,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
        })
    }

    /// `GET /assets/multipart-uploads/{id}`: one page of chunks, 1-based.
    pub fn to_status_json(&self, page: u64, page_limit: u64) -> Value {
        let skip = (page - 1).saturating_mul(page_limit);
        let last = skip.saturating_add(page_limit).min(self.total_chunks);
        let chunks: Vec<Value> = (skip.saturating_add(1)..=last)
            .map(|index| self.chunk_json(index))
            .collect();
        json!({
            "upload_id": self.id,
            "status": self.status().as_str(),
            "uploaded_chunks": chunks,
            "chunks_completed": self.reported,
            "chunks_failed": 0,
            "chunks_pending": self.total_chunks - self.reported,
            "total_size": self.total_size,
            "uploaded_size": self.reported_bytes,
            "page_info": {
                "limit_per_page": page_limit,
                "page": page,
                "total_page": self.total_chunks.div_ceil(page_limit),
                "total_results": self.total_chunks,
            },
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }

    fn chunk_json(&self, index: u64) -> Value {
        let slot = self.slots.get(&index);
        match slot.map(|s| (&s.reported, s.reported_at, &s.latest)) {
            Some((Some(reported), reported_at, _)) => json!({
                "index": index,
                "status": "completed",
                "uploaded_at": rfc3339(reported.uploaded_at),
                "updated_at": rfc3339(reported_at.unwrap_or(reported.uploaded_at)),
            }),
            Some((None, _, Some(latest))) => json!({
                "index": index,
                "status": "pending",
                "uploaded_at": rfc3339(latest.uploaded_at),
                "updated_at": rfc3339(latest.uploaded_at),
            }),
            _ => json!({ "index": index, "status": "pending" }),
        }
    }

    /// The 400s and 404s every session operation but status gives a session not active.
    fn check_active(&self) -> Result<(), ApiError> {
        match self.status() {
            SessionStatus::Active => Ok(()),
            SessionStatus::Expired => Err(ApiError::upload_expired()),
            SessionStatus::Completing | SessionStatus::Completed => Err(ApiError::invalid(
                "The multipart upload is already completed.",
            )),
            SessionStatus::Failed => Err(ApiError::invalid(
                "The multipart upload failed; start a new one.",
            )),
        }
    }
}

/// Why a chunk PUT is refused before its body is read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PutRefusal {
    /// 403: unknown signature, wrong chunk, expired or used URL.
    Forbidden(&'static str),
    /// 404 `NoSuchUpload`: the upload is unknown or ended (expired, aborted, completed).
    NoSuchUpload,
    /// 400: the body is not exactly the chunk's length.
    WrongLength { expected: u64 },
}

/// Permission to store one chunk PUT, with the file to write it to.
#[derive(Debug)]
pub(crate) struct PutTicket {
    pub path: PathBuf,
}

/// One entry of a report's `completed_chunks`.
#[derive(Debug)]
pub(crate) struct ReportedChunk {
    pub index: u64,
    pub proof: String,
    pub chunk_size: Option<u64>,
}

/// What a report did, and what the reporter must wait for.
#[derive(Debug)]
pub(crate) struct ReportOutcome {
    pub asset_id: String,
    pub processed: u64,
    pub duplicate: u64,
    pub total_completed: u64,
    pub completion: Completion,
}

#[derive(Debug)]
pub(crate) enum Completion {
    /// Some chunks are still unreported.
    NotYet,
    /// This report completed the upload: the caller runs the job, then waits.
    Start(CompletionJob, watch::Receiver<bool>),
    /// Another report is completing it: wait.
    Wait(watch::Receiver<bool>),
    /// Completed before this report.
    Done,
}

/// The chunks to assemble, in order.
#[derive(Debug)]
pub(crate) struct CompletionJob {
    pub upload_id: String,
    pub asset_id: String,
    pub filename: String,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Sessions keyed by creation sequence (for newest-first listing) plus an id index.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_seq: BTreeMap<u64, Session>,
    seq_by_id: HashMap<String, u64>,
    next_seq: u64,
}

impl Sessions {
    /// A fresh upload id, shaped like the platform's ids.
    pub fn new_id(&self) -> String {
        loop {
            let id = new_object_id();
            if !self.seq_by_id.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn insert(&mut self, session: Session) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_by_id.insert(session.id.clone(), seq);
        self.by_seq.insert(seq, session);
    }

    pub fn get(&self, id: &str) -> Option<&Session> {
        self.seq_by_id.get(id).and_then(|seq| self.by_seq.get(seq))
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Session> {
        let seq = self.seq_by_id.get(id)?;
        self.by_seq.get_mut(seq)
    }

    fn session(&mut self, id: &str) -> Result<&mut Session, ApiError> {
        self.get_mut(id)
            .ok_or_else(|| ApiError::not_found("multipart upload"))
    }

    /// Sessions not completed (active, expired or failed), newest first.
    pub fn unfinished_newest_first(&self) -> impl Iterator<Item = &Session> {
        self.by_seq
            .values()
            .rev()
            .filter(|s| s.status() != SessionStatus::Completed)
    }

    /// Fresh URLs (new signatures) for chunks `start..start + count`, clipped to the last
    /// chunk. `start` is 1-based; `count` is 1 to [`MAX_URL_COUNT`].
    pub fn grant_urls(
        &mut self,
        id: &str,
        start: u64,
        count: u64,
        ttl: Duration,
    ) -> Result<Vec<UrlGrant>, ApiError> {
        let session = self.session(id)?;
        session.check_active()?;
        if start == 0 || start > session.total_chunks {
            return Err(ApiError::invalid(format!(
                "start must be between 1 and {}, not {start}",
                session.total_chunks
            )));
        }
        if count == 0 || count > MAX_URL_COUNT {
            return Err(ApiError::invalid(format!(
                "count must be between 1 and {MAX_URL_COUNT}, not {count}"
            )));
        }
        let now = Instant::now();
        // Forget URLs that can no longer be used, so the map stays small.
        session.grants.retain(|_, g| g.expires > now);
        let expires = now + ttl;
        let expires_at = SystemTime::now() + ttl;
        let last = start.saturating_add(count - 1).min(session.total_chunks);
        let mut urls = Vec::new();
        for index in start..=last {
            let sig = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            let grant = Grant {
                index,
                expires,
                used: false,
            };
            session.grants.insert(sig.clone(), grant);
            urls.push(UrlGrant {
                chunk_index: index,
                sig,
                expires_at,
            });
        }
        session.updated_at = SystemTime::now();
        Ok(urls)
    }

    /// Checks a chunk PUT's URL and length before its body is read. With `single_use`,
    /// the URL is spent from here on, whatever becomes of the body.
    pub fn begin_put(
        &mut self,
        id: &str,
        index: u64,
        sig: &str,
        content_length: u64,
        single_use: bool,
    ) -> Result<PutTicket, PutRefusal> {
        use PutRefusal::Forbidden;
        let session = self.get_mut(id).ok_or(PutRefusal::NoSuchUpload)?;
        if session.status() != SessionStatus::Active {
            return Err(PutRefusal::NoSuchUpload);
        }
        let expected = match session.grants.get(sig) {
            Some(grant) if grant.index != index => {
                return Err(Forbidden("The signature is not valid for this chunk."));
            }
            Some(grant) if Instant::now() >= grant.expires => {
                return Err(Forbidden("The presigned URL has expired."));
            }
            Some(grant) if single_use && grant.used => {
                return Err(Forbidden("The presigned URL was already used."));
            }
            Some(_) => session.chunk_len(index),
            None => return Err(Forbidden("Unknown upload or invalid signature.")),
        };
        if content_length != expected {
            return Err(PutRefusal::WrongLength { expected });
        }
        if let Some(grant) = session.grants.get_mut(sig) {
            grant.used = true;
        }
        let name = format!("{index:06}-{:016x}.chunk", fastrand::u64(..));
        Ok(PutTicket {
            path: session.dir.join(name),
        })
    }

    /// Records a fully received chunk as the latest PUT of its index. Returns the file it
    /// replaces (to delete, unless a report still holds it), or gives the chunk back if
    /// the session stopped accepting chunks meanwhile.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the rejected chunk, handed back for cleanup"
    )]
    pub fn finish_put(
        &mut self,
        id: &str,
        index: u64,
        chunk: StoredChunk,
    ) -> Result<Option<PathBuf>, StoredChunk> {
        let Some(session) = self.get_mut(id) else {
            return Err(chunk);
        };
        if session.status() != SessionStatus::Active {
            return Err(chunk);
        }
        session.updated_at = SystemTime::now();
        let slot = session.slots.entry(index).or_default();
        let old = slot.latest.replace(chunk);
        let held = |path: &PathBuf| slot.reported.as_ref().is_some_and(|r| &r.path == path);
        Ok(old.map(|c| c.path).filter(|path| !held(path)))
    }

    /// Applies a report: all of it or (on any bad entry) none of it.
    pub fn report(
        &mut self,
        id: &str,
        entries: &[ReportedChunk],
    ) -> Result<ReportOutcome, ApiError> {
        let session = self.session(id)?;
        match session.status() {
            SessionStatus::Expired => return Err(ApiError::upload_expired()),
            SessionStatus::Failed => {
                return Err(ApiError::invalid(
                    "The multipart upload failed; start a new one.",
                ));
            }
            _ => {}
        }
        for entry in entries {
            validate_entry(session, entry)?;
        }
        let now = SystemTime::now();
        let (mut processed, mut duplicate) = (0, 0);
        for entry in entries {
            let slot = session.slots.entry(entry.index).or_default();
            if slot.reported.is_some() {
                duplicate += 1;
                continue;
            }
            // Validated: an unreported chunk's proof matches its latest PUT.
            slot.reported.clone_from(&slot.latest);
            slot.reported_at = Some(now);
            session.reported += 1;
            session.reported_bytes += slot.latest.as_ref().map_or(0, |c| c.len);
            processed += 1;
        }
        if processed > 0 {
            session.updated_at = now;
        }
        let completion = if session.reported < session.total_chunks {
            Completion::NotYet
        } else {
            match session.phase {
                Phase::Active => {
                    session.phase = Phase::Completing;
                    let job = CompletionJob {
                        upload_id: session.id.clone(),
                        asset_id: session.asset_id.clone(),
                        filename: session.filename.clone(),
                        dir: session.dir.clone(),
                        files: session
                            .slots
                            .values()
                            .filter_map(|s| s.reported.as_ref().map(|c| c.path.clone()))
                            .collect(),
                    };
                    Completion::Start(job, session.done.subscribe())
                }
                Phase::Completing => Completion::Wait(session.done.subscribe()),
                Phase::Completed | Phase::Failed => Completion::Done,
            }
        };
        Ok(ReportOutcome {
            asset_id: session.asset_id.clone(),
            processed,
            duplicate,
            total_completed: session.reported,
            completion,
        })
    }

    /// Ends a completion: the session is `completed` (or `failed`), and waiters wake.
    pub fn finish_completion(&mut self, id: &str, ok: bool) {
        if let Some(session) = self.get_mut(id) {
            session.phase = if ok { Phase::Completed } else { Phase::Failed };
            session.updated_at = SystemTime::now();
            session.done.send_replace(true);
        }
    }

    /// Whether chunk PUTs to this session are still taken.
    pub fn accepting(&self, id: &str) -> bool {
        self.get(id)
            .is_some_and(|s| s.status() == SessionStatus::Active)
    }

    /// Aborts an active (or timed-out) session: it is forgotten, as S3 forgets an aborted
    /// upload. Returns its asset id and chunk folder, or `None` if unknown or finished.
    pub fn abort(&mut self, id: &str) -> Option<(String, PathBuf)> {
        let status = self.get(id)?.status();
        if !matches!(status, SessionStatus::Active | SessionStatus::Expired) {
            return None;
        }
        let seq = self.seq_by_id.remove(id)?;
        let session = self.by_seq.remove(&seq)?;
        // Anyone waiting on a completion that will not come.
        session.done.send_replace(true);
        Some((session.asset_id, session.dir))
    }

    /// Expires an active (or already timed-out) session now. Returns its asset id and
    /// chunk folder, or `None` if unknown or finished.
    pub fn expire(&mut self, id: &str) -> Option<(String, PathBuf)> {
        let session = self.get_mut(id)?;
        if !matches!(
            session.status(),
            SessionStatus::Active | SessionStatus::Expired
        ) {
            return None;
        }
        session.expired_on_purpose = true;
        session.updated_at = SystemTime::now();
        Some((session.asset_id.clone(), session.dir.clone()))
    }
}

/// A report entry is good if its chunk was PUT and the proof is the ETag of its latest
/// PUT, or of the PUT already reported (a duplicate report).
fn validate_entry(session: &Session, entry: &ReportedChunk) -> Result<(), ApiError> {
    let index = entry.index;
    if index == 0 || index > session.total_chunks {
        return Err(ApiError::invalid(format!(
            "chunk_index must be between 1 and {}, not {index}",
            session.total_chunks
        )));
    }
    let slot = session.slots.get(&index);
    let proof = bare_etag(&entry.proof);
    let matching = slot.and_then(|s| {
        let candidates = [s.reported.as_ref(), s.latest.as_ref()];
        candidates.into_iter().flatten().find(|c| c.etag == proof)
    });
    let Some(chunk) = matching else {
        return Err(ApiError::invalid(
            if slot.is_none_or(|s| s.latest.is_none()) {
                format!("Chunk {index} was never uploaded.")
            } else {
                format!("The proof of chunk {index} does not match its ETag.")
            },
        ));
    };
    match entry.chunk_size {
        Some(size) if size != chunk.len => Err(ApiError::invalid(format!(
            "chunk_size of chunk {index} is {size}, but {} bytes were uploaded",
            chunk.len
        ))),
        _ => Ok(()),
    }
}

/// An ETag without the quotes S3 puts around it (clients may send either form).
pub(crate) fn bare_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}
