//! Large files in chunks (`/assets/multipart-uploads`), resumable.
//!
//! The session (upload id, asset id, chunk size, and the `upload_headers`
//! every chunk PUT must carry) is saved in the ledger before a byte is
//! sent, and each chunk's ETag as soon as its PUT succeeds. An attempt
//! first asks the platform about a saved session: a completed one just
//! needs its asset id committed, an active one is continued (only chunks
//! the platform has not accepted are reported, only chunks with no ETag are
//! sent, with the saved headers), and an expired, failed or vanished one is
//! replaced. Chunks are read by byte range straight from the source file
//! and streamed, a few at once: memory does not depend on file or chunk
//! size.
//!
//! A file whose hash is not known yet is sent in one read (README.md,
//! "Large files"): its session is created without the sha256 stamp, and
//! `chunk_reader` reads the file once, start to end, hashing it and handing
//! the chunks to the PUTs. The worker adds the stamp to the asset once the
//! session completes.
//!
//! Storage failures are about the session, not the file (RELIABILITY.md,
//! "Multipart sessions"): a chunk the store refuses (404 `NoSuchUpload`, a
//! 403 that a fresh URL does not cure, another 4xx) makes the worker ask the
//! platform about the session. Still `active`: a fresh URL and another try
//! of that chunk after the shared backoff. Over (`expired`, `failed`,
//! gone): a new session at once, in the same attempt. Only the API's own
//! refusals fail the file, and so does a third session given up in a row,
//! so that a broken store cannot loop for ever.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::StreamExt;

use super::Shared;
use super::chunk_reader::{Feed, Pieces};
use crate::api::{ApiError, ChunkBody, ChunkError, ErrorClass, StorageError};
use crate::ledger::upload_sessions::{Chunk, Session};
use crate::ledger::{UploadJob, now_ms};

/// Chunks in flight at once, per file.
pub(super) const PARALLEL_CHUNKS: usize = 4;
/// Chunks per report and per presigned-URL request (the API's maximum).
const BATCH: u64 = 50;
/// Tries per chunk within one session: transient failures, and refusals by
/// the store while the platform calls the session active. Past them a
/// transient failure ends the attempt (the record is retried later and
/// resumes the session); a refusal gives the session up.
const CHUNK_TRIES: u32 = 3;
/// Sessions given up in a row before the file fails.
const MAX_SESSIONS: u32 = 3;

/// What the caller needs to send a file in chunks.
#[derive(Debug)]
pub struct Upload<'a> {
    pub job: &'a UploadJob,
    pub path: &'a Path,
    pub filename: &'a str,
    pub kind: &'static str,
    pub size: u64,
    /// Sent with a new session: the sha256 stamp is in it when the hash is
    /// known (`job.sha256`); otherwise the file is hashed while it is sent.
    pub user_metadata: &'a serde_json::Map<String, serde_json::Value>,
    pub sent: Arc<AtomicU64>,
}

/// A file the platform has every chunk of.
#[derive(Debug)]
pub struct Sent {
    pub asset_id: String,
    /// The file's sha256 when it was hashed while it was sent.
    pub sha256: Option<String>,
    /// The asset may lack the sha256 stamp: its session was created
    /// without it, or by an earlier attempt (which may not have had it).
    pub needs_stamp: bool,
}

/// A session being sent.
#[derive(Debug)]
struct Live {
    session: Session,
    headers: BTreeMap<String, String>,
    /// Chunks whose PUT succeeded: ETag and size.
    etags: BTreeMap<u64, (String, u64)>,
    /// Chunks the platform has accepted.
    reported: BTreeSet<u64>,
    /// Presigned URLs in hand (never saved: they are credentials).
    urls: BTreeMap<u64, String>,
}

/// Why sending a session stopped.
#[derive(Debug)]
enum Stop {
    /// The attempt ends with this error; the session is kept.
    Attempt(ApiError),
    /// The session is over or useless: replace it.
    Over {
        /// Metrics label: `expired`, `failed`, `gone`, `refused`.
        reason: &'static str,
        /// For the ledger and the log.
        why: String,
        /// The store's last answer, if a chunk PUT was refused.
        last: Option<StorageError>,
    },
    /// Another chunk already ended the session; nothing was tried.
    Skipped,
}

/// What became of a saved session.
#[derive(Debug)]
enum Resumed {
    None,
    Completed(String),
    Live(Box<Live>),
    Over(Session, &'static str, String),
}

/// Send (or finish sending) the file, hashing it on the way when its hash
/// is not known; returns once the platform has every chunk.
pub async fn send(shared: &Shared, up: &Upload<'_>) -> Result<Sent, ApiError> {
    let one_pass = up.job.sha256.is_none();
    let mut given_up = 0u32;
    // A session made by an earlier attempt may lack the stamp.
    let mut resumed = true;
    let mut live = match resume(shared, up).await? {
        Resumed::Completed(asset_id) => {
            return Ok(Sent {
                asset_id,
                sha256: None,
                needs_stamp: true,
            });
        }
        Resumed::Live(live) => *live,
        Resumed::Over(session, reason, why) => {
            given_up += 1;
            give_up(shared, up, &session, reason, &why).await?;
            resumed = false;
            start(shared, up).await?
        }
        Resumed::None => {
            resumed = false;
            start(shared, up).await?
        }
    };
    loop {
        // Hashed from the first byte for each session, resumed or new.
        let feed = one_pass.then(|| feed_for(shared, up, &live));
        match run(shared, up, &mut live, feed.as_ref()).await {
            Ok(()) => {
                let sha256 = match feed {
                    Some(feed) => Some(feed.finish().await?),
                    None => None,
                };
                let s = &live.session;
                if let Err(e) = shared
                    .ledger
                    .end_session(s.file_id, &s.upload_id, "completed")
                    .await
                {
                    tracing::debug!(error = %e, "could not log the completed upload session");
                }
                return Ok(Sent {
                    asset_id: live.session.asset_id,
                    sha256,
                    needs_stamp: resumed || one_pass,
                });
            }
            Err(Stop::Attempt(e)) => return Err(e),
            // Only chunks skip; the batch reports what stopped it.
            Err(Stop::Skipped) => {
                return Err(ApiError::Transport {
                    what: "chunk upload",
                    detail: "the upload session stopped without a reason".into(),
                    body_sent: false,
                });
            }
            Err(Stop::Over { reason, why, last }) => {
                given_up += 1;
                give_up(shared, up, &live.session, reason, &why).await?;
                if given_up >= MAX_SESSIONS {
                    return Err(ApiError::SessionsBurned {
                        sessions: given_up,
                        last: last.map_or(why, |e| e.to_string()),
                    });
                }
                resumed = false;
                live = start(shared, up).await?;
            }
        }
    }
}

/// The one read of the file for this session: every chunk the platform
/// does not have yet is handed to its PUT (the others are read for the
/// hash only).
fn feed_for(shared: &Shared, up: &Upload<'_>, live: &Live) -> Feed {
    let chunk_size = u64::try_from(live.session.chunk_size).unwrap_or(u64::MAX);
    // Exactly the chunks `run` PUTs: a chunk handed over that no PUT
    // takes would hold its buffer until the feed ends.
    Feed::start(
        (&shared.ledger, &shared.reads),
        up.job,
        up.path,
        up.size,
        chunk_size,
        to_put(live).collect(),
    )
}

/// The chunks still to PUT, in order: neither reported to the platform nor
/// holding an ETag.
fn to_put(live: &Live) -> impl Iterator<Item = u64> + '_ {
    let total = u64::try_from(live.session.total_chunks).unwrap_or(0);
    (1..=total).filter(|i| !live.reported.contains(i) && !live.etags.contains_key(i))
}

/// The saved session, if any, as the platform sees it now.
async fn resume(shared: &Shared, up: &Upload<'_>) -> Result<Resumed, ApiError> {
    let Some((saved, chunks)) = shared.ledger.session(up.job.id).await.map_err(ledger_err)? else {
        return Ok(Resumed::None);
    };
    if saved.expires_at.is_some_and(|t| t <= now_ms()) {
        return Ok(Resumed::Over(saved, "expired", "expired".into()));
    }
    let same_shape =
        saved.total_chunks == i64::try_from(total_chunks(up.size, saved.chunk_size)).unwrap_or(-1);
    if !same_shape {
        let why = "its chunks do not fit the file's size".to_string();
        return Ok(Resumed::Over(saved, "failed", why));
    }
    let path = up.job.display();
    match shared.client.multipart_status(&saved.upload_id).await {
        Ok((Some(status), _)) if status == "completed" => {
            tracing::info!(%path, "the upload session had already completed");
            if let Err(e) = shared
                .ledger
                .end_session(saved.file_id, &saved.upload_id, "completed")
                .await
            {
                tracing::debug!(error = %e, "could not log the completed upload session");
            }
            Ok(Resumed::Completed(saved.asset_id))
        }
        Ok((Some(status), _)) if status == "expired" || status == "failed" => {
            let reason = if status == "expired" {
                "expired"
            } else {
                "failed"
            };
            Ok(Resumed::Over(saved, reason, status))
        }
        Ok((_, done)) => {
            let headers = saved_headers(&saved);
            let reported: BTreeSet<u64> = done.into_iter().collect();
            // Chunks sent earlier whose report did not go through.
            tracing::info!(
                %path,
                accepted = reported.len(),
                total = saved.total_chunks,
                "resuming the upload session"
            );
            Ok(Resumed::Live(Box::new(Live {
                etags: etags_of(chunks),
                session: saved,
                headers,
                reported,
                urls: BTreeMap::new(),
            })))
        }
        Err(e) if e.class() == ErrorClass::NotFound => Ok(Resumed::Over(
            saved,
            "gone",
            "the platform no longer has it".into(),
        )),
        Err(e) => Err(e),
    }
}

/// A new session, saved (with its headers) before a byte is sent.
async fn start(shared: &Shared, up: &Upload<'_>) -> Result<Live, ApiError> {
    let created = shared
        .client
        .create_multipart(
            up.filename,
            up.kind,
            up.size,
            shared.config.api.enable_hls,
            shared.config.api.enable_thumbnail,
            up.user_metadata,
        )
        .await?;
    let malformed = |detail: String| ApiError::Malformed {
        status: 201,
        detail: format!("the upload session {detail}"),
    };
    let (Some(upload_id), Some(asset_id)) = (created.upload_id.clone(), created.asset_id.clone())
    else {
        return Err(malformed("has no upload_id or asset_id".into()));
    };
    let chunk_size = match created.chunk_size.get("chunk_size") {
        Ok(Some(n)) if n > 0 => n,
        Ok(_) => return Err(malformed("has no chunk_size".into())),
        Err(e) => return Err(malformed(e)),
    };
    let headers = if created.upload_headers.is_empty() {
        default_headers()
    } else {
        created.upload_headers.clone()
    };
    let session = Session {
        file_id: up.job.id,
        upload_id,
        asset_id,
        chunk_size: i64::try_from(chunk_size).unwrap_or(i64::MAX),
        total_chunks: i64::try_from(total_chunks(up.size, chunk_size)).unwrap_or(i64::MAX),
        expires_at: created
            .expires_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map(crate::ledger::to_ms),
        created_at: now_ms(),
        upload_headers: serde_json::to_string(&headers).ok(),
    };
    shared
        .ledger
        .save_session(&session, up.job.epoch)
        .await
        .map_err(ledger_err)?;
    up.sent.store(0, Ordering::Relaxed);
    // A URL whose index cannot be read is not used; the chunk gets a fresh one.
    let urls = created
        .upload_urls
        .into_iter()
        .filter_map(|u| Some((u.chunk_index.ok()?, u.url)))
        .collect();
    Ok(Live {
        session,
        headers,
        etags: BTreeMap::new(),
        reported: BTreeSet::new(),
        urls,
    })
}

/// Send every chunk the platform does not have and report it, batch by
/// batch. The PUTs run as one stream, [`PARALLEL_CHUNKS`] at once from the
/// first chunk to the last: a batch is reported as soon as all its chunks
/// are in, while the next batch's PUTs go on (waiting for a batch to drain
/// and be reported before the next began left the link idle for a few
/// hundred ms of a 1 GiB upload: BENCHMARKS.md, M1).
async fn run(
    shared: &Shared,
    up: &Upload<'_>,
    live: &mut Live,
    feed: Option<&Feed>,
) -> Result<(), Stop> {
    let chunk_size = u64::try_from(live.session.chunk_size).unwrap_or(u64::MAX);
    let total = u64::try_from(live.session.total_chunks).unwrap_or(0);
    // Progress counts what the platform already has.
    let already: u64 = live
        .reported
        .iter()
        .map(|i| chunk_len(up.size, chunk_size, *i))
        .sum();
    up.sent.store(already, Ordering::Relaxed);

    // Each batch: the chunks the platform does not have, and how many of
    // them still need their PUT.
    let mut batches: BTreeMap<u64, (Vec<u64>, usize)> = BTreeMap::new();
    for i in (1..=total).filter(|i| !live.reported.contains(i)) {
        let (chunks, missing) = batches.entry(batch_of(i)).or_default();
        chunks.push(i);
        if !live.etags.contains_key(&i) {
            *missing += 1;
        }
    }
    let unsent: Vec<u64> = to_put(live).collect();
    let (full_tx, full_rx) = tokio::sync::mpsc::unbounded_channel();
    // Batches whose chunks all have an ETag already (a resumed session)
    // are reported first.
    for (chunks, missing) in batches.values() {
        if *missing == 0 {
            let _ = full_tx.send(proofs_of(chunks, &live.etags));
        }
    }
    let over = AtomicBool::new(false);
    let Live {
        session,
        headers,
        etags,
        reported,
        urls,
    } = live;
    let urls = tokio::sync::Mutex::new(std::mem::take(urls));
    let putting = async {
        let mut results = futures_util::stream::iter(unsent)
            .map(|idx| {
                let chunk = ToPut {
                    idx,
                    chunk_size,
                    feed,
                };
                let (urls, over) = (&urls, &over);
                let (session, headers) = (&*session, &*headers);
                async move {
                    let url = url_for(shared, session, urls, (idx, total), over).await;
                    put_one(shared, up, (session, headers), url?, chunk, over).await
                }
            })
            .buffer_unordered(PARALLEL_CHUNKS);
        let mut stop = None;
        while let Some(r) = results.next().await {
            match r {
                Ok((idx, etag, len)) => {
                    etags.insert(idx, (etag, len));
                    if let Some((chunks, missing)) = batches.get_mut(&batch_of(idx)) {
                        *missing -= 1;
                        if *missing == 0 {
                            let _ = full_tx.send(proofs_of(chunks, etags));
                        }
                    }
                }
                // The first reason to end the session wins; an
                // attempt-ending error is kept only if no chunk ended the
                // session. Either way no further chunk starts.
                Err(Stop::Skipped) => {}
                Err(s @ Stop::Over { .. }) if !matches!(stop, Some(Stop::Over { .. })) => {
                    over.store(true, Ordering::Relaxed);
                    stop = Some(s);
                }
                Err(s @ Stop::Attempt(_)) if stop.is_none() => {
                    over.store(true, Ordering::Relaxed);
                    stop = Some(s);
                }
                Err(_) => {}
            }
        }
        // The reports end with the last full batch.
        drop(full_tx);
        stop
    };
    let reporting = report_batches(shared, session, reported, full_rx, total, &over);
    let (put_stop, report) = tokio::join!(putting, reporting);
    // URLs are single-use on some stores: the ones tried are gone, and the
    // rest are not worth keeping past this run. A session found over wins,
    // whichever side found it: the next session starts in this attempt.
    let complete = match (put_stop, report) {
        (Some(over @ Stop::Over { .. }), _) | (_, Err(over @ Stop::Over { .. })) => {
            return Err(over);
        }
        (Some(stop), _) | (None, Err(stop)) => return Err(stop),
        (None, Ok(complete)) => complete,
    };
    if complete {
        return Ok(());
    }
    if u64::try_from(live.reported.len()).unwrap_or(0) < total {
        // Every chunk was reported but the platform does not say it is
        // complete: ask it.
        let (status, done) = shared
            .client
            .multipart_status(&live.session.upload_id)
            .await
            .map_err(Stop::Attempt)?;
        if status.as_deref() != Some("completed") && (done.len() as u64) < total {
            return Err(Stop::Attempt(ApiError::Malformed {
                status: 200,
                detail: format!(
                    "the platform has {} of {total} chunks after all were reported",
                    done.len()
                ),
            }));
        }
    }
    Ok(())
}

/// The report batch (of [`BATCH`] chunks, the API's maximum) a chunk is in.
fn batch_of(idx: u64) -> u64 {
    idx.saturating_sub(1) / BATCH
}

/// A batch's chunks with their ETags and sizes, in order.
fn proofs_of(chunks: &[u64], etags: &BTreeMap<u64, (String, u64)>) -> Vec<(u64, String, u64)> {
    chunks
        .iter()
        .filter_map(|i| etags.get(i).map(|(e, s)| (*i, e.clone(), *s)))
        .collect()
}

/// Report each full batch as it comes, and mark it reported in the ledger;
/// true once the platform says the upload is complete. A failed report
/// stops the PUTs still to start.
async fn report_batches(
    shared: &Shared,
    session: &Session,
    reported: &mut BTreeSet<u64>,
    mut full: tokio::sync::mpsc::UnboundedReceiver<Vec<(u64, String, u64)>>,
    total: u64,
    over: &AtomicBool,
) -> Result<bool, Stop> {
    let mut complete = false;
    while let Some(proofs) = full.recv().await {
        let stop = |s: Stop| {
            over.store(true, Ordering::Relaxed);
            s
        };
        let result = match shared
            .client
            .report_chunks(&session.upload_id, &proofs)
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(stop(api_stop(shared, session, e).await)),
        };
        let indices: Vec<i64> = proofs
            .iter()
            .filter_map(|(i, _, _)| i64::try_from(*i).ok())
            .collect();
        shared
            .ledger
            .mark_reported(session.file_id, &indices)
            .await
            .map_err(|e| stop(Stop::Attempt(ledger_err(e))))?;
        reported.extend(proofs.iter().map(|(i, _, _)| *i));
        complete |= result.url.is_some() || result.total_completed.ok().is_some_and(|n| n >= total);
    }
    Ok(complete)
}

/// The URL for chunk `idx`: one in hand (taken: a URL is never tried
/// twice), or a fresh set for the rest of its batch, in one request.
async fn url_for(
    shared: &Shared,
    session: &Session,
    urls: &tokio::sync::Mutex<BTreeMap<u64, String>>,
    (idx, total): (u64, u64),
    over: &AtomicBool,
) -> Result<Option<String>, Stop> {
    let mut urls = urls.lock().await;
    // Stopped while this one waited for the lock: ask for nothing more.
    if over.load(Ordering::Relaxed) {
        return Err(Stop::Skipped);
    }
    if let Some(url) = urls.remove(&idx) {
        return Ok(Some(url));
    }
    let last = ((batch_of(idx) + 1) * BATCH).min(total);
    match shared
        .client
        .presigned_urls(&session.upload_id, idx, last.saturating_sub(idx) + 1)
        .await
    {
        Ok(fresh) => urls.extend(
            fresh
                .into_iter()
                .filter_map(|u| Some((u.chunk_index.ok()?, u.url))),
        ),
        Err(e) => return Err(api_stop(shared, session, e).await),
    }
    // None: `put_one` asks for this chunk's URL alone.
    Ok(urls.remove(&idx))
}

/// A chunk to PUT: its index (1-based), the session's chunk size, and the
/// feed its bytes come from when the file is hashed while it is sent.
#[derive(Clone, Copy)]
struct ToPut<'a> {
    idx: u64,
    chunk_size: u64,
    feed: Option<&'a Feed>,
}

/// PUT one chunk and record its ETag at once. A 403 gets a fresh URL at
/// once; other refusals by the store ask the platform about the session
/// (see the module head); transient failures are tried again after the
/// shared backoff.
async fn put_one(
    shared: &Shared,
    up: &Upload<'_>,
    (session, headers): (&Session, &BTreeMap<String, String>),
    url: Option<String>,
    chunk: ToPut<'_>,
    over: &AtomicBool,
) -> Result<(u64, String, u64), Stop> {
    let ToPut {
        idx,
        chunk_size,
        feed,
    } = chunk;
    let total = u64::try_from(session.total_chunks).unwrap_or(0);
    let offset = (idx - 1) * chunk_size;
    let len = chunk_len(up.size, chunk_size, idx);
    if over.load(Ordering::Relaxed) {
        return Err(Stop::Skipped);
    }
    // Streamed from the one read when the file is hashed while it is
    // sent; a retry reads the range from the file.
    let mut pieces = match feed {
        Some(feed) => feed.take(idx).await.map_err(Stop::Attempt)?,
        None => None,
    };
    let mut url = url;
    let mut fresh_url_tried = false;
    let mut tries = 0u32;
    loop {
        if over.load(Ordering::Relaxed) {
            return Err(Stop::Skipped);
        }
        let current = match url.take() {
            Some(u) => u,
            None => fresh_url(shared, session, idx).await?,
        };
        let counter = Arc::new(AtomicU64::new(0));
        let result = shared
            .client
            .put_chunk(
                &current,
                headers,
                chunk_body(&mut pieces, up.path, offset),
                (idx, total),
                len,
                counter,
            )
            .await;
        let transient = match result {
            Ok(etag) => return record_put(shared, up, session, idx, etag, len).await,
            // Expired or already used: a fresh URL, at once.
            Err(ChunkError::Refused(e)) if e.status == 403 && !fresh_url_tried => {
                tracing::debug!(error = %e, "upload URL refused; getting a fresh one");
                fresh_url_tried = true;
                continue;
            }
            Err(ChunkError::Refused(e)) if refused_by_store(e.status) => {
                store_refused(shared, up, session, e, tries, over).await?
            }
            Err(ChunkError::Refused(e)) => {
                url = Some(current);
                ApiError::Storage(e)
            }
            Err(ChunkError::Api(e)) if e.class() == ErrorClass::Transient => {
                url = Some(current);
                e
            }
            Err(ChunkError::Api(e)) => return Err(Stop::Attempt(e)),
        };
        tries += 1;
        if tries >= CHUNK_TRIES {
            return Err(Stop::Attempt(transient));
        }
        let wait = shared.policy.delay(tries);
        tracing::debug!(chunk = idx, error = %transient, retry_in = ?wait, "chunk upload failed; trying again");
        tokio::time::sleep(wait).await;
    }
}

/// A chunk's body: streamed from the one read the first time, its range
/// read from the file after that (and always when the hash is known).
fn chunk_body<'a>(pieces: &mut Option<Pieces>, path: &'a Path, offset: u64) -> ChunkBody<'a> {
    match pieces.take() {
        Some(stream) => ChunkBody::Stream(stream),
        None => ChunkBody::File { path, offset },
    }
}

/// A chunk the store took: its ETag is saved, then its bytes counted.
async fn record_put(
    shared: &Shared,
    up: &Upload<'_>,
    session: &Session,
    idx: u64,
    etag: String,
    len: u64,
) -> Result<(u64, String, u64), Stop> {
    shared
        .ledger
        .record_chunk(
            session.file_id,
            up.job.epoch,
            i64::try_from(idx).unwrap_or(i64::MAX),
            &etag,
            i64::try_from(len).unwrap_or(i64::MAX),
        )
        .await
        .map_err(|e| Stop::Attempt(ledger_err(e)))?;
    up.sent.fetch_add(len, Ordering::Relaxed);
    Ok((idx, etag, len))
}

/// The store refused a chunk (`tries`: failed tries so far): ask the
/// platform about the session. Over, or refused `CHUNK_TRIES` times: the
/// session is given up, and the file's other chunks skip. Still active:
/// the error, to try the chunk again with a fresh URL after the backoff.
async fn store_refused(
    shared: &Shared,
    up: &Upload<'_>,
    session: &Session,
    e: StorageError,
    tries: u32,
    over: &AtomicBool,
) -> Result<ApiError, Stop> {
    match session_state(shared, session).await? {
        Some((reason, why)) => {
            over.store(true, Ordering::Relaxed);
            tracing::info!(path = %up.job.display(), error = %e, session = %why, "the store refused a chunk of an upload session that is over");
            Err(Stop::Over {
                reason,
                why,
                last: Some(e),
            })
        }
        None if tries + 1 >= CHUNK_TRIES => {
            over.store(true, Ordering::Relaxed);
            Err(Stop::Over {
                reason: "refused",
                why: format!("the store kept refusing it ({e})"),
                last: Some(e),
            })
        }
        // Active: a fresh URL after the backoff.
        None => Ok(ApiError::Storage(e)),
    }
}

/// A store answer about the session rather than the moment: any 4xx but
/// 408 and 429 (404 `NoSuchUpload`, 403, 400 …). 5xx, 408 and 429 are
/// tried again on the same URL.
fn refused_by_store(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// A URL for one chunk.
async fn fresh_url(shared: &Shared, session: &Session, idx: u64) -> Result<String, Stop> {
    match shared
        .client
        .presigned_urls(&session.upload_id, idx, 1)
        .await
    {
        Ok(urls) => urls
            .into_iter()
            .find(|u| u.chunk_index.ok() == Some(idx))
            .map(|u| u.url)
            .ok_or_else(|| {
                Stop::Attempt(ApiError::Malformed {
                    status: 200,
                    detail: format!("no upload URL for chunk {idx}"),
                })
            }),
        Err(e) => Err(api_stop(shared, session, e).await),
    }
}

/// Whether the platform says the session is over: `None` while it is
/// active (or says something this version does not know), else the metrics
/// label and the reason.
async fn session_state(
    shared: &Shared,
    session: &Session,
) -> Result<Option<(&'static str, String)>, Stop> {
    match shared.client.multipart_state(&session.upload_id).await {
        Ok(Some(s)) if s == "expired" => Ok(Some(("expired", s))),
        Ok(Some(s)) if s == "failed" => Ok(Some(("failed", s))),
        // Completed while chunks were still being sent: the next attempt
        // finds it completed and commits its asset.
        Ok(Some(s)) if s == "completed" => Err(Stop::Attempt(ApiError::Malformed {
            status: 200,
            detail: "the upload session completed while chunks were still being sent".into(),
        })),
        Ok(_) => Ok(None),
        Err(e) if e.class() == ErrorClass::NotFound => {
            Ok(Some(("gone", "the platform no longer has it".into())))
        }
        Err(e) => Err(Stop::Attempt(e)),
    }
}

/// An API call of the session (URLs, report) failed. A 4xx may mean the
/// session ended (400 `upload_expired`, 404): if the platform says so, the
/// session is replaced; otherwise the error stands (a refusal of the file).
async fn api_stop(shared: &Shared, session: &Session, e: ApiError) -> Stop {
    if !matches!(e.class(), ErrorClass::Permanent | ErrorClass::NotFound) {
        return Stop::Attempt(e);
    }
    match session_state(shared, session).await {
        Ok(Some((reason, why))) => Stop::Over {
            reason,
            why,
            last: None,
        },
        Ok(None) => Stop::Attempt(e),
        Err(stop) => stop,
    }
}

/// Log a session as given up, forget it, and delete the asset it made (it
/// will never complete) if the platform lets us.
async fn give_up(
    shared: &Shared,
    up: &Upload<'_>,
    session: &Session,
    reason: &'static str,
    why: &str,
) -> Result<(), ApiError> {
    tracing::warn!(
        path = %up.job.display(),
        upload_id = %session.upload_id,
        reason = why,
        "giving up the upload session; starting a new one"
    );
    shared
        .ledger
        .end_session(session.file_id, &session.upload_id, why)
        .await
        .map_err(ledger_err)?;
    crate::metrics::session_replaced(reason);
    match shared.client.delete_asset(&session.asset_id).await {
        Ok(()) => {}
        Err(e) if matches!(e.class(), ErrorClass::NotFound | ErrorClass::Permanent) => {
            tracing::debug!(asset_id = %session.asset_id, error = %e, "the platform keeps the asset of a given-up session");
        }
        Err(e) => {
            tracing::warn!(asset_id = %session.asset_id, error = %e, "could not delete the asset of a given-up upload session");
        }
    }
    Ok(())
}

/// The headers saved with the session; the default for sessions saved
/// before they were kept.
fn saved_headers(s: &Session) -> BTreeMap<String, String> {
    s.upload_headers
        .as_deref()
        .and_then(|h| serde_json::from_str::<BTreeMap<String, String>>(h).ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(default_headers)
}

fn etags_of(chunks: Vec<Chunk>) -> BTreeMap<u64, (String, u64)> {
    chunks
        .into_iter()
        .filter_map(|c| {
            Some((
                u64::try_from(c.chunk_index).ok()?,
                (c.etag, u64::try_from(c.size).ok()?),
            ))
        })
        .collect()
}

fn default_headers() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "Content-Type".to_string(),
        "application/octet-stream".to_string(),
    )])
}

fn total_chunks(size: u64, chunk_size: impl TryInto<u64>) -> u64 {
    let chunk = chunk_size.try_into().unwrap_or(0).max(1);
    size.div_ceil(chunk)
}

/// Bytes in chunk `idx` (1-based): `chunk_size`, the last one the rest.
fn chunk_len(size: u64, chunk_size: u64, idx: u64) -> u64 {
    let start = (idx - 1).saturating_mul(chunk_size);
    size.saturating_sub(start).min(chunk_size)
}

/// A ledger failure mid-upload: retried like a network failure, and the
/// session is resumed.
fn ledger_err(e: crate::ledger::LedgerError) -> ApiError {
    ApiError::Transport {
        what: "ledger",
        detail: e.to_string(),
        body_sent: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(total_chunks(10, 4u64), 3);
        assert_eq!(total_chunks(12, 4u64), 3);
        assert_eq!(total_chunks(0, 4u64), 0);
        assert_eq!(chunk_len(10, 4, 1), 4);
        assert_eq!(chunk_len(10, 4, 3), 2);
        assert_eq!(chunk_len(12, 4, 3), 4);
        assert_eq!((1..=3).map(|i| chunk_len(10, 4, i)).sum::<u64>(), 10);
    }

    #[test]
    fn what_the_store_says_about_the_session() {
        for status in [400, 403, 404, 409, 410, 412] {
            assert!(refused_by_store(status), "{status}");
        }
        for status in [408, 429, 500, 502, 503] {
            assert!(!refused_by_store(status), "{status}");
        }
    }

    #[test]
    fn headers_saved_with_a_session_come_back() {
        let mut s = Session {
            file_id: 1,
            upload_id: "u".into(),
            asset_id: "a".into(),
            chunk_size: 4,
            total_chunks: 3,
            expires_at: None,
            created_at: 0,
            upload_headers: Some(r#"{"Content-Type":"video/mp4","x-amz-acl":"private"}"#.into()),
        };
        assert_eq!(
            saved_headers(&s).get("x-amz-acl").map(String::as_str),
            Some("private")
        );
        s.upload_headers = None;
        assert_eq!(saved_headers(&s), default_headers());
        s.upload_headers = Some("not json".into());
        assert_eq!(saved_headers(&s), default_headers());
    }
}
