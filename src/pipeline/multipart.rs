//! Large files in chunks (`/assets/multipart-uploads`), resumable.
//!
//! The session (upload id, asset id, chunk size) is saved in the ledger
//! before a byte is sent, and each chunk's ETag as soon as its PUT
//! succeeds. An attempt first asks the platform about a saved session: a
//! completed one just needs its asset id committed, an active one is
//! continued (only chunks the platform has not accepted are reported, only
//! chunks with no ETag are sent), and an expired or failed one is replaced.
//! Chunks are read by byte range straight from the source file and
//! streamed, a few at once: memory does not depend on file or chunk size.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures_util::StreamExt;

use super::Shared;
use crate::api::{ApiError, ChunkError, ErrorClass};
use crate::ledger::multipart::Session;
use crate::ledger::{UploadJob, now_ms};

/// Chunks in flight at once, per file.
const PARALLEL_CHUNKS: usize = 4;
/// Chunks per report and per presigned-URL request (the API's maximum).
const BATCH: u64 = 50;
/// Tries per chunk within one attempt before the attempt gives up (the
/// record is then retried with backoff, resuming the session).
const CHUNK_TRIES: u32 = 3;

/// What the caller needs to send a file in chunks.
#[derive(Debug)]
pub struct Upload<'a> {
    pub job: &'a UploadJob,
    pub path: &'a Path,
    pub filename: &'a str,
    pub kind: &'static str,
    pub size: u64,
    pub user_metadata: &'a serde_json::Map<String, serde_json::Value>,
    pub sent: Arc<AtomicU64>,
}

/// Send (or finish sending) the file; returns the asset id once the
/// platform has every chunk.
pub async fn send(shared: &Shared, up: &Upload<'_>) -> Result<String, ApiError> {
    let ledger = &shared.ledger;
    let client = &shared.client;
    let file_id = up.job.id;

    let mut reported: BTreeSet<u64> = BTreeSet::new();
    let mut session = None;
    if let Some((saved, chunks)) = ledger.session(file_id).await.map_err(ledger_err)? {
        let fresh = saved.expires_at.is_none_or(|t| t > now_ms());
        let same_shape = saved.total_chunks
            == i64::try_from(total_chunks(up.size, saved.chunk_size)).unwrap_or(-1);
        if fresh && same_shape {
            match client.multipart_status(&saved.upload_id).await {
                Ok((Some(status), _)) if status == "completed" => {
                    tracing::info!(path = %up.job.display(), "the upload session had already completed");
                    return Ok(saved.asset_id);
                }
                Ok((Some(status), _)) if status == "expired" || status == "failed" => {
                    tracing::info!(path = %up.job.display(), status, "the upload session is over; starting a new one");
                }
                Ok((_, done)) => {
                    reported.extend(done);
                    // Chunks sent earlier whose report did not go through.
                    tracing::info!(
                        path = %up.job.display(),
                        accepted = reported.len(),
                        total = saved.total_chunks,
                        "resuming the upload session"
                    );
                    session = Some((saved, chunks));
                }
                Err(e) if e.class() == ErrorClass::NotFound => {
                    tracing::info!(path = %up.job.display(), "the upload session is gone; starting a new one");
                }
                Err(e) => return Err(e),
            }
        } else {
            tracing::info!(path = %up.job.display(), "the saved upload session expired; starting a new one");
        }
    }

    let (session, etags, mut urls, headers) = match session {
        Some((s, chunks)) => {
            let etags: BTreeMap<u64, (String, u64)> = chunks
                .into_iter()
                .filter_map(|c| {
                    Some((
                        u64::try_from(c.chunk_index).ok()?,
                        (c.etag, u64::try_from(c.size).ok()?),
                    ))
                })
                .collect();
            (s, etags, BTreeMap::new(), default_headers())
        }
        None => {
            let created = client
                .create_multipart(
                    up.filename,
                    up.kind,
                    up.size,
                    shared.config.api.enable_hls,
                    shared.config.api.enable_thumbnail,
                    up.user_metadata,
                )
                .await?;
            let (Some(upload_id), Some(asset_id), Some(chunk_size)) = (
                created.upload_id.clone(),
                created.asset_id.clone(),
                created.chunk_size,
            ) else {
                return Err(ApiError::Malformed {
                    status: 201,
                    detail: "the upload session has no upload_id, asset_id or chunk_size".into(),
                });
            };
            if chunk_size == 0 {
                return Err(ApiError::Malformed {
                    status: 201,
                    detail: "the upload session has a chunk_size of 0".into(),
                });
            }
            let chunk_size = i64::try_from(chunk_size).unwrap_or(i64::MAX);
            let s = Session {
                file_id,
                upload_id,
                asset_id,
                chunk_size,
                total_chunks: i64::try_from(total_chunks(up.size, chunk_size)).unwrap_or(i64::MAX),
                expires_at: created
                    .expires_at
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .map(crate::ledger::to_ms),
                created_at: now_ms(),
            };
            ledger
                .save_session(&s, up.job.epoch)
                .await
                .map_err(ledger_err)?;
            let urls = created
                .upload_urls
                .into_iter()
                .map(|u| (u.chunk_index, u.url))
                .collect();
            let headers = if created.upload_headers.is_empty() {
                default_headers()
            } else {
                created.upload_headers
            };
            (s, BTreeMap::new(), urls, headers)
        }
    };

    let chunk_size = u64::try_from(session.chunk_size).unwrap_or(u64::MAX);
    let total = u64::try_from(session.total_chunks).unwrap_or(0);
    // Progress counts what the platform already has.
    let already: u64 = reported
        .iter()
        .map(|i| chunk_len(up.size, chunk_size, *i))
        .sum();
    up.sent.store(already, std::sync::atomic::Ordering::Relaxed);

    let mut start = 1;
    while start <= total {
        let end = (start + BATCH - 1).min(total);
        let batch: Vec<u64> = (start..=end).filter(|i| !reported.contains(i)).collect();
        start = end + 1;
        if batch.is_empty() {
            continue;
        }
        // Chunks that still need a PUT, and URLs for them.
        let to_put: Vec<u64> = batch
            .iter()
            .copied()
            .filter(|i| !etags.contains_key(i))
            .collect();
        if to_put.iter().any(|i| !urls.contains_key(i))
            && let (Some(first), Some(last)) = (to_put.first(), to_put.last())
        {
            for u in client
                .presigned_urls(&session.upload_id, *first, last - first + 1)
                .await?
            {
                urls.insert(u.chunk_index, u.url);
            }
        }
        let results: Vec<Result<(u64, String, u64), ApiError>> = futures_util::stream::iter(to_put)
            .map(|idx| {
                put_one(
                    shared,
                    up,
                    &session,
                    &headers,
                    urls.get(&idx).cloned(),
                    idx,
                    chunk_size,
                )
            })
            .buffer_unordered(PARALLEL_CHUNKS)
            .collect()
            .await;
        let mut proofs: Vec<(u64, String, u64)> = batch
            .iter()
            .filter_map(|i| etags.get(i).map(|(e, s)| (*i, e.clone(), *s)))
            .collect();
        for r in results {
            proofs.push(r?);
        }
        proofs.sort();
        let result = client.report_chunks(&session.upload_id, &proofs).await?;
        let indices: Vec<i64> = proofs
            .iter()
            .filter_map(|(i, _, _)| i64::try_from(*i).ok())
            .collect();
        ledger
            .mark_reported(file_id, &indices)
            .await
            .map_err(ledger_err)?;
        reported.extend(proofs.iter().map(|(i, _, _)| *i));
        if result.url.is_some() || result.total_completed.is_some_and(|n| n >= total) {
            break;
        }
    }
    if u64::try_from(reported.len()).unwrap_or(0) < total {
        // Every chunk was reported but the platform does not say it is
        // complete: ask it.
        let (status, done) = client.multipart_status(&session.upload_id).await?;
        if status.as_deref() != Some("completed") && (done.len() as u64) < total {
            return Err(ApiError::Malformed {
                status: 200,
                detail: format!(
                    "the platform has {} of {total} chunks after all were reported",
                    done.len()
                ),
            });
        }
    }
    Ok(session.asset_id)
}

/// PUT one chunk, fetching a fresh URL when the one we have is refused,
/// and record its ETag at once.
async fn put_one(
    shared: &Shared,
    up: &Upload<'_>,
    session: &Session,
    headers: &BTreeMap<String, String>,
    url: Option<String>,
    idx: u64,
    chunk_size: u64,
) -> Result<(u64, String, u64), ApiError> {
    let client = &shared.client;
    let offset = (idx - 1) * chunk_size;
    let len = chunk_len(up.size, chunk_size, idx);
    let mut url = url;
    let mut tries = 0;
    loop {
        tries += 1;
        let current = match url.take() {
            Some(u) => u,
            None => client
                .presigned_urls(&session.upload_id, idx, 1)
                .await?
                .into_iter()
                .find(|u| u.chunk_index == idx)
                .map(|u| u.url)
                .ok_or_else(|| ApiError::Malformed {
                    status: 200,
                    detail: format!("no upload URL for chunk {idx}"),
                })?,
        };
        let counter = Arc::new(AtomicU64::new(0));
        let result = client
            .put_chunk(&current, headers, up.path, offset, len, counter.clone())
            .await;
        match result {
            Ok(etag) => {
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
                    .map_err(ledger_err)?;
                up.sent.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                return Ok((idx, etag, len));
            }
            // Expired or already used: a fresh URL, at once.
            Err(ChunkError::UrlRejected(status)) if tries < CHUNK_TRIES => {
                tracing::debug!(
                    chunk = idx,
                    status,
                    "upload URL refused; getting a fresh one"
                );
            }
            Err(ChunkError::Api(e))
                if tries < CHUNK_TRIES && e.class() == ErrorClass::Transient =>
            {
                tracing::debug!(chunk = idx, error = %e, "chunk upload failed; trying again");
                tokio::time::sleep(Duration::from_millis(200) * tries).await;
            }
            Err(ChunkError::UrlRejected(status)) => {
                return Err(ApiError::Transport {
                    what: "chunk upload",
                    detail: format!("the upload URL for chunk {idx} was refused (HTTP {status})"),
                    body_sent: false,
                });
            }
            Err(ChunkError::Api(e)) => return Err(e),
        }
    }
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
}
