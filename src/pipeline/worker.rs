//! An upload worker: claims the next due `queued` record, sends it, and
//! records the outcome. `upload.workers` of these run at once; the ledger
//! is the queue, so a crash loses nothing.
//!
//! Per attempt: check the file is still what was hashed; if an earlier
//! attempt may have reached the platform, look for it there first (filename
//! plus the sha256 stamp) instead of sending it again; send; commit the
//! asset id before anything else; on failure, let the error's class decide
//! (retry with backoff, pause everyone, or fail).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::discover::{new_file, path_from_bytes, same_stat};
use super::eligibility::{MediaKind, kind_of};
use crate::api::{
    ApiError, Created, DirectUpload, ErrorClass, SHA256_STAMP, Stamp, URL_STAMP, wire_filename,
};
use crate::ledger::{AttemptEnd, Event, LOOKUP_DELAY_MS, NewFile, UploadJob, now_ms, to_ms};

/// Run one worker until `stop` (no new claims) or `abort` (drop the
/// attempt in flight, leaving its record queued for a lookup).
pub async fn run(shared: Arc<Shared>, stop: CancellationToken, abort: CancellationToken) {
    let mut backoff = super::retry::LedgerBackoff::default();
    loop {
        if stop.is_cancelled() || !shared.gate.wait_open(&stop).await {
            return;
        }
        match shared
            .ledger
            .claim_batch(shared.lease_ms(), shared.claim_batch())
            .await
        {
            Ok(jobs) if !jobs.is_empty() => {
                backoff.ok();
                if !work_through(&shared, jobs, &stop, &abort).await {
                    return;
                }
                continue;
            }
            Ok(_) => backoff.ok(),
            Err(e) => {
                super::ledger_failed(&e, "cannot claim from the ledger; retrying");
                if !super::pause(&stop, backoff.failed()).await {
                    return;
                }
                continue;
            }
        }
        let due = match shared.ledger.next_due().await {
            Ok(Some(at)) => Some(at),
            _ => None,
        };
        if !super::wait_for_queued(&shared, &stop, due).await {
            return;
        }
    }
}

/// Send the claimed records one after another; false if the worker was
/// aborted. What a stop or an abort leaves unstarted goes back to the queue.
async fn work_through(
    shared: &Shared,
    jobs: Vec<UploadJob>,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> bool {
    // Each is cancelled when this daemon no longer holds its record: its
    // lease ran out and another daemon took it over, or the heartbeat
    // cannot renew it (see pipeline/fleet.rs). All are held (and renewed)
    // from the claim on.
    let held: Vec<(UploadJob, CancellationToken)> = jobs
        .into_iter()
        .map(|job| {
            let lost = shared.claims.hold(job.id, job.epoch);
            (job, lost)
        })
        .collect();
    let mut left = held.into_iter();
    let mut aborted = false;
    let accepted = Held::new(left.len() > 1);
    for (job, lost) in left.by_ref() {
        // Held acceptances are not kept through a pause (a 429's wait, a
        // rejected key): recorded first.
        if !matches!(shared.gate.state(), super::gate::GateState::Open) {
            record_held(shared, accepted.take(), abort).await;
        }
        // A record taken over before its turn is no longer ours to send.
        if !lost.is_cancelled() {
            tokio::select! {
                biased;
                _ = abort.cancelled() => {
                    interrupted(shared, &job).await;
                    aborted = true;
                }
                _ = lost.cancelled() => {
                    tracing::warn!(
                        file_id = job.id,
                        path = %job.display(),
                        "stopped sending: this daemon no longer holds the record (another daemon took it over, or its lease could not be renewed); whoever sends it next looks it up first"
                    );
                }
                _ = attempt(shared, &job, stop, &accepted) => {}
            }
        }
        // A record whose acceptance is held stays held until it is recorded.
        if !accepted.holds(job.id) {
            shared.claims.release(job.id, job.epoch);
        }
        if aborted || stop.is_cancelled() {
            break;
        }
    }
    record_held(shared, accepted.take(), abort).await;
    let mut unstarted = Vec::new();
    for (job, lost) in left {
        shared.claims.release(job.id, job.epoch);
        if !lost.is_cancelled() {
            unstarted.push(job);
        }
    }
    if let Err(e) = shared.ledger.unclaim(&unstarted).await {
        // Left `uploading`: the next start's recovery requeues them.
        tracing::warn!(records = unstarted.len(), error = %e, "could not give back unstarted uploads");
    }
    !aborted
}

/// The attempt was cut off by shutdown: back to the queue, to be looked up
/// on the platform before it is sent again.
async fn interrupted(shared: &Shared, job: &UploadJob) {
    crate::metrics::retry("interrupted");
    let end = AttemptEnd {
        outcome: "interrupted",
        error: Some("stopped during the upload".into()),
        ..AttemptEnd::default()
    };
    let next_at = now_ms() + LOOKUP_DELAY_MS;
    if let Err(e) = shared
        .ledger
        .retry_later(job, &end, next_at, false, true)
        .await
    {
        tracing::warn!(file_id = job.id, error = %e, "could not requeue an interrupted upload");
    }
}

/// Registers the upload in the progress table for as long as it lives.
struct InFlightGuard<'a> {
    shared: &'a Shared,
    id: i64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.shared.progress.remove(self.id);
    }
}

async fn attempt(shared: &Shared, job: &UploadJob, stop: &CancellationToken, accepted: &Held) {
    let outcome = match (&job.path_bytes, &job.url) {
        (Some(bytes), _) => send_file(shared, job, &path_from_bytes(bytes), stop, accepted).await,
        (None, Some(url)) => send_url(shared, job, url, stop).await,
        (None, None) => Err(Outcome::Finish(
            Event::Fail,
            unsent("unsupported", "record has neither a path nor a URL"),
        )),
    };
    record_outcome(shared, job, outcome).await;
}

/// Record how an attempt ended, unless it was accepted (recorded then).
async fn record_outcome(shared: &Shared, job: &UploadJob, outcome: Result<(), Outcome>) {
    let ledger = &shared.ledger;
    // The outcome is held here until the ledger takes it: a full disk or a
    // lost connection is waited out (a shutdown's abort cuts this off; the
    // record is then looked up on the platform before it is sent again).
    let never = CancellationToken::new();
    let what = "could not record the attempt's outcome; holding it until the ledger takes it";
    let result = match outcome {
        Ok(()) => Ok(()),
        Err(Outcome::Finish(event, end)) => {
            super::until_recorded(&never, what, || ledger.finish_unsent(job, event, &end)).await
        }
        Err(Outcome::Retry {
            end,
            next_at,
            counted,
            lookup,
        }) => {
            super::until_recorded(&never, what, || {
                ledger.retry_later(job, &end, next_at, counted, lookup)
            })
            .await
        }
        Err(Outcome::Changed(end, stat)) => {
            super::until_recorded(&never, what, || {
                ledger.changed_during_upload(job, &end, stat.as_deref())
            })
            .await
        }
    };
    if let Err(e) = result {
        tracing::warn!(file_id = job.id, error = %e, "could not record the attempt's outcome");
    }
}

/// How an attempt that did not end `processing` ended.
enum Outcome {
    Finish(Event, AttemptEnd),
    Retry {
        end: AttemptEnd,
        next_at: i64,
        counted: bool,
        lookup: bool,
    },
    Changed(AttemptEnd, Option<Box<NewFile>>),
}

fn unsent(outcome: &'static str, error: &str) -> AttemptEnd {
    AttemptEnd {
        outcome,
        error: Some(error.to_string()),
        ..AttemptEnd::default()
    }
}

/// Is the file still the version that was hashed?
enum DiskCheck {
    Same,
    Vanished,
    Unreadable(String),
    /// Cannot be looked at now (a network mount away): try again later.
    Unavailable(String),
    Changed(Box<NewFile>),
}

fn check_disk(path: &Path, job: &UploadJob) -> DiskCheck {
    match std::fs::metadata(path) {
        Ok(meta) => {
            let now = new_file(path, &meta, None);
            let same = same_stat(
                &now,
                job.size.unwrap_or(-1),
                job.mtime_ns.unwrap_or(-1),
                job.inode.unwrap_or(-1),
            );
            if same {
                DiskCheck::Same
            } else {
                DiskCheck::Changed(Box::new(now))
            }
        }
        // Gone with its folder (README.md, "Watched folders that go away"):
        // it may come back; waited for like an unreadable mount.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match crate::watch::presence::went_with_its_folder(path, job.device) {
                Some(why) => DiskCheck::Unavailable(why),
                None => DiskCheck::Vanished,
            }
        }
        Err(e) if crate::io_error::is_transient(&e) => DiskCheck::Unavailable(e.to_string()),
        Err(e) => DiskCheck::Unreadable(e.to_string()),
    }
}

/// [`check_disk`] on a blocking thread (a stat can hang on a network mount).
async fn check_disk_off_thread(path: &Path, job: &UploadJob) -> DiskCheck {
    let (p, j) = (path.to_path_buf(), job.clone());
    tokio::task::spawn_blocking(move || check_disk(&p, &j))
        .await
        .unwrap_or_else(|e| DiskCheck::Unreadable(e.to_string()))
}

/// The largest file read whole before it is sent: one blocking task checks,
/// reads and hashes it, where a streamed file costs four hand-offs between
/// threads (BENCHMARKS.md, S1). The same as the stream's read size, so the
/// memory an upload holds is no more than streaming's.
const WHOLE_READ: u64 = 256 * 1024;

/// A small file's bytes and their sha256.
struct WholeFile {
    bytes: bytes::Bytes,
    sha256: String,
}

/// [`check_disk`], then, if the file is the recorded version, its `size`
/// bytes and their hash. A read that fails or comes up short gives no
/// bytes: the streamed upload then meets the same problem and reports it.
async fn read_whole_off_thread(
    path: &Path,
    job: &UploadJob,
    size: u64,
) -> (DiskCheck, Option<WholeFile>) {
    use sha2::Digest;
    use std::io::Read;
    let (p, j) = (path.to_path_buf(), job.clone());
    let read = tokio::task::spawn_blocking(move || {
        let check = check_disk(&p, &j);
        if !matches!(check, DiskCheck::Same) {
            return (check, None);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let whole = std::fs::File::open(&p)
            .and_then(|f| f.take(size).read_to_end(&mut bytes))
            .is_ok_and(|n| n as u64 == size);
        let read = whole.then(|| WholeFile {
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            bytes: bytes.into(),
        });
        (check, read)
    })
    .await;
    read.unwrap_or_else(|e| (DiskCheck::Unreadable(e.to_string()), None))
}

/// sha256 of the file on a blocking thread, for an attempt that needs it
/// before sending; the file must still be the version discovery recorded.
async fn hash_off_thread(shared: &Shared, path: &Path, job: &UploadJob) -> Result<String, Outcome> {
    let (p, j) = (path.to_path_buf(), job.clone());
    let hashed = tokio::task::spawn_blocking(move || {
        let sha256 = super::hasher::sha256_file(&p);
        (sha256, check_disk(&p, &j))
    })
    .await;
    match hashed {
        Ok((Ok(sha256), DiskCheck::Same)) => {
            shared
                .reads
                .examined(u64::try_from(job.size.unwrap_or(0)).unwrap_or(0));
            Ok(sha256)
        }
        Ok((Err(e), DiskCheck::Same)) => Err(Outcome::Finish(
            Event::Fail,
            unsent("unreadable", &format!("cannot read the file: {e}")),
        )),
        Ok((_, check)) => Err(disk_problem(shared, job, check, "while it was hashed", 0)
            .unwrap_or_else(|| retry_now("hashing again"))),
        Err(e) => Err(retry_now(&format!("the hashing task failed: {e}"))),
    }
}

/// Record the hash of a record being sent before the attempt ends (a
/// failure to do so only costs a twin some waiting).
async fn remember_hash(shared: &Shared, job: &UploadJob, sha256: &str) {
    if let Err(e) = shared.ledger.set_sha256(job, sha256).await {
        tracing::debug!(file_id = job.id, error = %e, "could not record the hash");
    }
}

/// The file is not what was hashed any more: say what to do about it.
fn disk_problem(
    shared: &Shared,
    job: &UploadJob,
    check: DiskCheck,
    when: &str,
    bytes_sent: u64,
) -> Option<Outcome> {
    match check {
        DiskCheck::Same => None,
        DiskCheck::Vanished => Some(Outcome::Finish(
            Event::Fail,
            AttemptEnd {
                outcome: "vanished",
                bytes_sent,
                error: Some(format!("the file vanished {when}")),
                ..AttemptEnd::default()
            },
        )),
        // Retried with backoff, like a transient API error.
        DiskCheck::Unavailable(reason) => Some(classify(
            shared,
            job,
            &ApiError::Transport {
                what: "cannot read the file now",
                detail: reason,
                body_sent: false,
            },
            bytes_sent,
        )),
        DiskCheck::Unreadable(reason) => Some(Outcome::Finish(
            Event::Fail,
            AttemptEnd {
                outcome: "unreadable",
                bytes_sent,
                error: Some(format!("cannot read the file: {reason}")),
                ..AttemptEnd::default()
            },
        )),
        DiskCheck::Changed(stat) => {
            crate::metrics::retry("changed");
            Some(Outcome::Changed(
                AttemptEnd {
                    outcome: "changed",
                    bytes_sent,
                    error: Some(format!("the file changed {when}; it will be hashed again")),
                    ..AttemptEnd::default()
                },
                Some(stat),
            ))
        }
    }
}

/// Send a file: check it is still what was hashed, hash it first if the
/// attempt needs the hash, look for an earlier attempt's asset, then send
/// it in one request or in chunks.
async fn send_file(
    shared: &Shared,
    job: &UploadJob,
    path: &Path,
    stop: &CancellationToken,
    accepted: &Held,
) -> Result<(), Outcome> {
    let size = job.size.and_then(|s| u64::try_from(s).ok());
    let kind = kind_of(path, job.mime.as_deref());
    let multipart = size.is_some_and(|s| shared.limits.multipart(kind, s));
    let (before, read) = match size.filter(|&s| !multipart && s <= WHOLE_READ) {
        Some(s) => read_whole_off_thread(path, job, s).await,
        None => (check_disk_off_thread(path, job).await, None),
    };
    if let Some(problem) = disk_problem(shared, job, before, "before upload", 0) {
        return Err(problem);
    }
    let Some(size) = size else {
        return Err(Outcome::Changed(
            unsent(
                "changed",
                "record was queued without a size; examining it again",
            ),
            None,
        ));
    };
    let filename = wire_filename(path.file_name().unwrap_or_default());
    let hashed_now = read.is_some() && job.sha256.is_none();
    let job = &*hash_first(shared, job, path, multipart, read.as_ref()).await?;

    // A multipart upload resumes its saved session instead.
    if job.lookup_first
        && !multipart
        && let Some(id) = look_up(shared, job, &filename, stop).await?
    {
        return commit_found(shared, job, &id).await;
    }

    if !shared.gate.before_request(stop).await {
        return Err(retry_now("stopped before sending"));
    }
    let user_metadata = job
        .user_metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<serde_json::Map<_, _>>(m).ok())
        .unwrap_or_default();
    let file = FileToSend {
        path,
        content: read.map(|r| r.bytes),
        hashed_now,
        filename,
        size,
        kind,
        user_metadata,
    };
    if multipart {
        send_chunked(shared, job, file).await
    } else {
        send_direct(shared, job, file, accepted).await
    }
}

/// A file about to be sent, as the platform will see it.
struct FileToSend<'a> {
    path: &'a Path,
    /// Its bytes, if it was small enough to be read before sending.
    content: Option<bytes::Bytes>,
    /// Its hash comes from this attempt's read (the ledger may not have it).
    hashed_now: bool,
    filename: String,
    size: u64,
    kind: MediaKind,
    user_metadata: serde_json::Map<String, serde_json::Value>,
}

/// The job, with its hash if this attempt needs it before sending. The
/// hash stage leaves the hash to the upload when no other record has this
/// size and fingerprint (see `hasher`). A direct upload needs it first for
/// a lookup, and on a platform that drops a stamp sent after the file. A
/// multipart upload never looks up (its saved session says what the
/// platform has) and gets its stamp after the session completes, so it
/// needs the hash first only on a platform that refused to add a stamp
/// afterwards.
async fn hash_first<'a>(
    shared: &Shared,
    job: &'a UploadJob,
    path: &Path,
    multipart: bool,
    read: Option<&WholeFile>,
) -> Result<Cow<'a, UploadJob>, Outcome> {
    let needed = if multipart {
        !shared.stamp_after_session.load(Ordering::Relaxed)
    } else {
        job.lookup_first || !shared.stamp_after_file.load(Ordering::Relaxed)
    };
    if job.sha256.is_some() {
        return Ok(Cow::Borrowed(job));
    }
    // A file read whole has its hash already: its stamp goes ahead of it.
    let sha256 = match read {
        Some(read) => read.sha256.clone(),
        None if !needed => return Ok(Cow::Borrowed(job)),
        None => hash_off_thread(shared, path, job).await?,
    };
    if !needed {
        return Ok(Cow::Owned(UploadJob {
            sha256: Some(sha256),
            ..job.clone()
        }));
    }
    // Files of this size waiting for it need not wait for the upload.
    remember_hash(shared, job, &sha256).await;
    Ok(Cow::Owned(UploadJob {
        sha256: Some(sha256),
        ..job.clone()
    }))
}

/// An earlier attempt may have reached the platform: the asset id if the
/// platform has the file (its filename and sha256 stamp).
async fn look_up(
    shared: &Shared,
    job: &UploadJob,
    filename: &str,
    stop: &CancellationToken,
) -> Result<Option<String>, Outcome> {
    if !shared.gate.wait_open(stop).await {
        return Err(retry_now("stopped before the lookup"));
    }
    let sha256 = job.sha256.as_deref().unwrap_or_default();
    match shared.client.find_by_stamp(filename, sha256).await {
        Ok(Some(asset)) => {
            let id = asset.id.unwrap_or_default();
            tracing::info!(path = %job.display(), asset_id = %id, "found on the platform; not sending again");
            Ok(Some(id))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(classify(shared, job, &e, 0)),
    }
}

/// A large file in chunks (see `chunked_upload`). With its hash known, the
/// sha256 stamp goes in the session; without, the file is hashed while it
/// is sent (one read) and the stamp is added to the asset once the session
/// completes, before the asset id is committed (so that an attempt cut off
/// in between finds the completed session and adds it then). The session
/// is kept for the next attempt unless the file changed.
async fn send_chunked(
    shared: &Shared,
    job: &UploadJob,
    file: FileToSend<'_>,
) -> Result<(), Outcome> {
    let FileToSend {
        path,
        filename,
        size,
        kind,
        mut user_metadata,
        ..
    } = file;
    let sent = Arc::new(AtomicU64::new(0));
    if let Some(sha256) = &job.sha256 {
        user_metadata.insert(SHA256_STAMP.into(), sha256.clone().into());
    }
    shared
        .progress
        .insert(job.id, job.display(), size, sent.clone());
    let _guard = InFlightGuard { shared, id: job.id };
    let started = std::time::Instant::now();
    let up = super::chunked_upload::Upload {
        job,
        path,
        filename: &filename,
        kind: kind.as_str(),
        size,
        user_metadata: &user_metadata,
        sent: sent.clone(),
    };
    let result = super::chunked_upload::send(shared, &up).await;
    let bytes_sent = sent.load(Ordering::Relaxed);
    shared.reads.sent(bytes_sent);
    let check = check_disk_off_thread(path, job).await;
    if let Some(problem) = disk_problem(shared, job, check, "during upload", bytes_sent) {
        if let Ok(done) = &result {
            drop_changed(shared, &done.asset_id).await;
        }
        let _ = shared.ledger.drop_session(job.id).await;
        return Err(problem);
    }
    match result {
        Ok(done) => {
            let sent = (bytes_sent, started);
            accept_chunked(shared, job, path, done, sent).await
        }
        // The session is saved: the next attempt resumes it, no lookup needed.
        Err(e) => Err(without_lookup(classify(shared, job, &e, bytes_sent))),
    }
}

/// The platform has every chunk: stamp the asset if its session went
/// without the stamp, then commit it and forget the session.
async fn accept_chunked(
    shared: &Shared,
    job: &UploadJob,
    path: &Path,
    done: super::chunked_upload::Sent,
    (bytes_sent, started): (u64, std::time::Instant),
) -> Result<(), Outcome> {
    let id = done.asset_id;
    let sha256 = match done.sha256.or_else(|| job.sha256.clone()) {
        Some(sha256) => Some(sha256),
        // A session completed by an earlier attempt that was cut off
        // before the hash was recorded: hashed now, for the stamp.
        None => match hash_off_thread(shared, path, job).await {
            Ok(sha256) => Some(sha256),
            Err(problem @ Outcome::Changed(..)) => {
                drop_changed(shared, &id).await;
                let _ = shared.ledger.drop_session(job.id).await;
                return Err(problem);
            }
            // The platform has the whole file: the upload stands.
            Err(_) => {
                tracing::warn!(path = %job.display(), asset_id = %id, "could not hash the file after its upload; its asset goes without the sha256 stamp");
                None
            }
        },
    };
    if done.needs_stamp
        && let Some(sha256) = &sha256
    {
        add_stamp(shared, job, &id, sha256).await;
    }
    let job = &UploadJob {
        sha256,
        ..job.clone()
    };
    crate::metrics::upload_finished(bytes_sent, started.elapsed().as_secs_f64());
    let end = AttemptEnd {
        outcome: "accepted",
        http_status: Some(200),
        bytes_sent,
        error: None,
    };
    let committed = commit(shared, job, &id, &end).await;
    if committed.is_ok()
        && let Err(e) = shared.ledger.drop_session(job.id).await
    {
        tracing::debug!(error = %e, "could not forget a finished upload session");
    }
    committed
}

/// The platform holds bytes that are not the file's: remove them.
async fn drop_changed(shared: &Shared, asset_id: &str) {
    if let Err(e) = shared.client.delete_asset(asset_id).await {
        tracing::warn!(%asset_id, error = %e, "could not delete the asset of a changed file");
    }
}

/// Tries of the stamp's `PATCH` that fail for a reason that may pass.
const STAMP_TRIES: u32 = 3;

/// Add the sha256 stamp to a multipart asset whose session went without
/// it. The upload stands whatever the answer: without the stamp only
/// `reconcile` loses something (README.md, "Large files"). A platform that
/// refuses the call (no such route, not allowed) is told once per process,
/// and from then on multipart uploads are hashed first, their stamp in the
/// session.
async fn add_stamp(shared: &Shared, job: &UploadJob, asset_id: &str, sha256: &str) {
    let mut tries = 0u32;
    let e = loop {
        let e = match shared.client.add_sha256_stamp(asset_id, sha256).await {
            Ok(()) => return,
            Err(e) => e,
        };
        tries += 1;
        let wait = match e.class() {
            ErrorClass::Transient => shared.policy.delay(tries),
            ErrorClass::RateLimited { until } => until
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or_else(|| shared.policy.delay(tries))
                .min(crate::api::MAX_RETRY_AFTER),
            _ => break e,
        };
        if tries >= STAMP_TRIES {
            break e;
        }
        tracing::debug!(%asset_id, error = %e, retry_in = ?wait, "could not add the sha256 stamp; trying again");
        tokio::time::sleep(wait).await;
    };
    let refused = matches!(
        e.class(),
        ErrorClass::Permanent | ErrorClass::NotFound | ErrorClass::Auth
    );
    if refused && shared.stamp_after_session.swap(false, Ordering::Relaxed) {
        tracing::warn!(
            %asset_id,
            error = %e,
            "the platform refused to add the sha256 stamp to an asset after its upload; \
             the upload stands, but `reconcile` cannot list such an asset as an orphan \
             if its record is lost. Large files are hashed before they are sent from now on, \
             the stamp in their upload session"
        );
    } else {
        tracing::warn!(
            path = %job.display(),
            %asset_id,
            error = %e,
            "could not add the sha256 stamp to the asset; the upload stands, but `reconcile` \
             cannot list this asset as an orphan if its record is lost"
        );
    }
}

/// A file in one request; without a hash yet, its stamp follows the file
/// (computed while it is sent).
async fn send_direct(
    shared: &Shared,
    job: &UploadJob,
    file: FileToSend<'_>,
    accepted: &Held,
) -> Result<(), Outcome> {
    let sent = Arc::new(AtomicU64::new(0));
    let up = DirectUpload {
        path: PathBuf::from(file.path),
        filename: file.filename,
        size: file.size,
        enable_hls: shared.config.api.enable_hls,
        enable_thumbnail: shared.config.api.enable_thumbnail,
        user_metadata: file.user_metadata,
        content: file.content,
        stamp: match &job.sha256 {
            Some(sha256) => Stamp::Known(sha256.clone()),
            None => Stamp::in_flight(),
        },
        sent: sent.clone(),
    };
    shared
        .progress
        .insert(job.id, job.display(), up.size, sent.clone());
    let _guard = InFlightGuard { shared, id: job.id };
    let started = std::time::Instant::now();
    tracing::debug!(path = %job.display(), attempt = job.attempts + 1, "uploading");
    let result = shared.client.create_direct(&up).await;
    let bytes_sent = sent.load(Ordering::Relaxed);
    shared.reads.sent(bytes_sent);

    // Whatever the answer, a file that changed underneath is not the
    // content that was hashed.
    let check = check_disk_off_thread(file.path, job).await;
    match result {
        Ok(created) => {
            let stamped_after = matches!(up.stamp, Stamp::InFlight(_));
            let answer = Answer {
                created,
                stamped_after,
                check,
                bytes_sent,
                started,
            };
            accept_direct(shared, job, answer, accepted).await
        }
        Err(e) => {
            if let Some(problem) = disk_problem(shared, job, check, "during upload", bytes_sent) {
                return Err(problem);
            }
            // The whole file was read, so its hash is known: keep it for a
            // lookup or a later attempt.
            let known = match (&job.sha256, &up.stamp) {
                (None, Stamp::InFlight(stamped)) => stamped.get(),
                (Some(sha256), _) if file.hashed_now => Some(sha256),
                _ => None,
            };
            if let Some(sha256) = known {
                remember_hash(shared, job, sha256).await;
            }
            Err(classify(shared, job, &e, bytes_sent))
        }
    }
}

/// The platform's answer to a direct upload, and what the attempt saw.
struct Answer {
    created: Created,
    /// The stamp followed the file (no hash before sending).
    stamped_after: bool,
    /// The file on disk after the upload.
    check: DiskCheck,
    bytes_sent: u64,
    started: std::time::Instant,
}

/// The platform took a direct upload: commit its asset, unless the answer
/// has no asset id or the file changed while it was sent (then the asset,
/// holding bytes that are not the file's, is deleted).
async fn accept_direct(
    shared: &Shared,
    job: &UploadJob,
    answer: Answer,
    accepted: &Held,
) -> Result<(), Outcome> {
    let Answer {
        created: Created { asset, sha256 },
        stamped_after,
        check,
        bytes_sent,
        started,
    } = answer;
    if stamped_after {
        check_trailing_stamp(shared, &asset, &sha256);
    }
    let Some(id) = asset.id.filter(|id| !id.is_empty()) else {
        let e = ApiError::Malformed {
            status: 201,
            detail: "the response has no asset _id".into(),
        };
        return Err(classify(shared, job, &e, bytes_sent));
    };
    if let Some(problem) = disk_problem(shared, job, check, "during upload", bytes_sent) {
        // The platform holds bytes that are not the file's: remove them.
        if let Err(e) = shared.client.delete_asset(&id).await {
            tracing::warn!(asset_id = %id, error = %e, "could not delete the asset of a changed file");
        }
        return Err(problem);
    }
    let end = AttemptEnd {
        outcome: "accepted",
        http_status: Some(201),
        bytes_sent,
        error: None,
    };
    crate::metrics::upload_finished(bytes_sent, started.elapsed().as_secs_f64());
    let job = UploadJob {
        sha256: Some(sha256),
        ..job.clone()
    };
    // Only an asset stamped ahead of its file waits: a crash before it is
    // recorded leaves a lookup that finds it by that stamp.
    if accepted.defer && !stamped_after {
        accepted.hold(Accepted {
            job,
            asset_id: id,
            end,
        });
        return Ok(());
    }
    commit(shared, &job, &id, &end).await
}

/// The platform answers with the asset, `user_metadata` included. If the
/// stamp sent after the file is not in it, the platform may ignore fields
/// after the file, and a crashed upload could not be found by its stamp:
/// from then on every file is hashed before it is sent, with the stamp
/// ahead of it. An answer without `user_metadata` at all is valid (the API
/// leaves it out at will) and costs the one-read upload, nothing else: one
/// WARN line per process says so, never an error per file.
fn check_trailing_stamp(shared: &Shared, asset: &crate::api::Asset, sha256: &str) {
    if asset.sha256_stamp().as_deref() == Some(sha256) {
        return;
    }
    if shared.stamp_after_file.swap(false, Ordering::Relaxed) {
        if asset.user_metadata.is_none() {
            tracing::warn!(
                "the platform's answers leave user_metadata out (the API allows that), so the \
                 stamp sent after the file cannot be checked; hashing every file before \
                 sending it from now on"
            );
        } else {
            tracing::warn!(
                asset_id = asset.id.as_deref().unwrap_or_default(),
                "the platform dropped the user_metadata sent after the file; \
                 hashing every file before sending it from now on"
            );
        }
    }
}

/// `method=url`: the platform fetches the file itself. The record's own
/// stamp goes in `user_metadata`, so that an upload whose answer was lost
/// (a crash, a timeout) is found on the platform, like a file by its
/// sha256, before the URL is sent again.
async fn send_url(
    shared: &Shared,
    job: &UploadJob,
    url: &str,
    stop: &CancellationToken,
) -> Result<(), Outcome> {
    let stamp = match &job.stamp {
        Some(stamp) => stamp.clone(),
        // A record from before stamps: it gets one before its first request.
        None => match shared.ledger.set_stamp(job).await {
            Ok(stamp) => stamp,
            Err(e) => return Err(retry_now(&format!("could not record the URL's stamp: {e}"))),
        },
    };
    // The name is sent, not left to the platform, so that the lookup can
    // narrow its search by it.
    let filename = job
        .filename
        .clone()
        .or_else(|| super::urls::filename_of(url));
    if job.lookup_first {
        if !shared.gate.wait_open(stop).await {
            return Err(retry_now("stopped before the lookup"));
        }
        match shared
            .client
            .find_by_url_stamp(filename.as_deref(), &stamp)
            .await
        {
            Ok(Some(asset)) => {
                let id = asset.id.unwrap_or_default();
                tracing::info!(url, asset_id = %id, "found on the platform; not sending again");
                return commit_found(shared, job, &id).await;
            }
            Ok(None) => {}
            Err(e) => return Err(classify(shared, job, &e, 0)),
        }
    }
    if !shared.gate.before_request(stop).await {
        return Err(retry_now("stopped before sending"));
    }
    let mut user_metadata = job
        .user_metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<serde_json::Map<_, _>>(m).ok())
        .unwrap_or_default();
    user_metadata.insert(URL_STAMP.into(), stamp.into());
    let result = shared
        .client
        .create_url(
            url,
            filename.as_deref(),
            shared.config.api.enable_hls,
            shared.config.api.enable_thumbnail,
            &user_metadata,
        )
        .await;
    match result {
        Ok(asset) => match asset.id.filter(|id| !id.is_empty()) {
            Some(id) => {
                let end = AttemptEnd {
                    outcome: "accepted",
                    http_status: Some(201),
                    ..AttemptEnd::default()
                };
                commit(shared, job, &id, &end).await
            }
            None => Err(classify(
                shared,
                job,
                &ApiError::Malformed {
                    status: 201,
                    detail: "the response has no asset _id".into(),
                },
                0,
            )),
        },
        // An answer lost after the platform made the asset is looked up
        // by the stamp before the URL is sent again.
        Err(e) => Err(classify(shared, job, &e, 0)),
    }
}

/// The lookup found the asset an earlier attempt made: record it, nothing
/// sent.
async fn commit_found(shared: &Shared, job: &UploadJob, asset_id: &str) -> Result<(), Outcome> {
    let end = AttemptEnd {
        outcome: "found",
        http_status: Some(200),
        ..AttemptEnd::default()
    };
    commit(shared, job, asset_id, &end).await
}

async fn commit(
    shared: &Shared,
    job: &UploadJob,
    asset_id: &str,
    end: &AttemptEnd,
) -> Result<(), Outcome> {
    // The asset exists: its id is held here until the ledger records it
    // (a full disk, a lost connection), so that it is not sent again.
    let never = CancellationToken::new();
    let recorded = super::until_recorded(
        &never,
        "could not record the asset id; holding it until the ledger takes it",
        || shared.ledger.accept(job, asset_id, end),
    )
    .await;
    recorded.map_err(|e| unrecorded(job, asset_id, &e))
}

/// The asset exists but is not recorded: the next attempt looks it up
/// rather than sending the file again.
fn unrecorded(job: &UploadJob, asset_id: &str, e: &crate::ledger::LedgerError) -> Outcome {
    tracing::error!(path = %job.display(), asset_id, error = %e, "could not record the asset id");
    Outcome::Retry {
        end: unsent(
            "transient",
            &format!("could not record asset {asset_id}: {e}"),
        ),
        next_at: now_ms() + 1000,
        counted: false,
        lookup: true,
    }
}

/// Acceptances of small files sent one after another, which their worker
/// records together once its batch is done (one transaction for all:
/// `Ledger::accept_all`; BENCHMARKS.md, S1). Until then an asset id is in
/// memory only, as between any `201` and its commit: a crash leaves the
/// record `uploading`, and the next start looks it up on the platform by
/// its stamp before sending it again (RELIABILITY.md, section 1).
struct Held {
    /// Whether acceptances wait for the batch (more than one file).
    defer: bool,
    accepted: std::sync::Mutex<Vec<Accepted>>,
}

struct Accepted {
    job: UploadJob,
    asset_id: String,
    end: AttemptEnd,
}

impl Held {
    fn new(defer: bool) -> Held {
        Held {
            defer,
            accepted: std::sync::Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Accepted>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hold(&self, accepted: Accepted) {
        self.lock().push(accepted);
    }

    fn holds(&self, id: i64) -> bool {
        self.lock().iter().any(|a| a.job.id == id)
    }

    fn take(&self) -> Vec<Accepted> {
        std::mem::take(&mut *self.lock())
    }
}

/// Record held acceptances, waiting out a full or unreachable ledger as a
/// single acceptance does, unless the worker is aborted (then they are
/// left `uploading`, to be looked up by their stamp at the next start);
/// then let their records go.
async fn record_held(shared: &Shared, held: Vec<Accepted>, abort: &CancellationToken) {
    if held.is_empty() {
        return;
    }
    let uploads: Vec<(&UploadJob, &str, &AttemptEnd)> = held
        .iter()
        .map(|a| (&a.job, a.asset_id.as_str(), &a.end))
        .collect();
    let recorded = super::until_recorded(
        abort,
        "could not record the asset ids; holding them until the ledger takes them",
        || shared.ledger.accept_all(&uploads),
    )
    .await;
    if recorded.is_err() && abort.is_cancelled() {
        tracing::warn!(
            records = held.len(),
            "stopped before the ledger took these uploads' asset ids; the next start looks them up on the platform"
        );
        for a in &held {
            shared.claims.release(a.job.id, a.job.epoch);
        }
        return;
    }
    for (i, a) in held.iter().enumerate() {
        let result = match &recorded {
            Ok(each) => each.get(i).map_or(Ok(()), |r| r.as_ref().map(|_| ())),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            record_outcome(shared, &a.job, Err(unrecorded(&a.job, &a.asset_id, e))).await;
        }
        shared.claims.release(a.job.id, a.job.epoch);
    }
}

/// A multipart failure needs no lookup before the next attempt: the saved
/// session says what the platform has.
fn without_lookup(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Retry {
            end,
            next_at,
            counted,
            ..
        } => Outcome::Retry {
            end,
            next_at,
            counted,
            lookup: false,
        },
        other => other,
    }
}

fn retry_now(reason: &str) -> Outcome {
    Outcome::Retry {
        end: unsent("interrupted", reason),
        next_at: 0,
        counted: false,
        lookup: false,
    }
}

/// Turn an API error into what happens to the record.
fn classify(shared: &Shared, job: &UploadJob, e: &ApiError, bytes_sent: u64) -> Outcome {
    let failed = u32::try_from(job.attempts + 1).unwrap_or(u32::MAX);
    let end = AttemptEnd {
        outcome: "transient",
        http_status: e.http_status(),
        bytes_sent,
        error: Some(e.to_string()),
    };
    let lookup = e.maybe_received();
    match e.class() {
        ErrorClass::Transient => match shared.policy.next(failed) {
            Some(wait) => {
                crate::metrics::retry("transient");
                tracing::warn!(path = %job.display(), attempt = failed, error = %e, retry_in = ?wait, "upload failed; will retry");
                Outcome::Retry {
                    end,
                    next_at: now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
                    counted: true,
                    lookup,
                }
            }
            None => Outcome::Finish(
                Event::Fail,
                AttemptEnd {
                    error: Some(format!("gave up after {failed} attempts: {e}")),
                    ..end
                },
            ),
        },
        ErrorClass::RateLimited { until } => {
            crate::metrics::rate_limited();
            crate::metrics::retry("rate_limited");
            let now = SystemTime::now();
            let until = until
                .unwrap_or_else(|| now + shared.policy.delay(1))
                .min(now + crate::api::MAX_RETRY_AFTER);
            tracing::warn!(path = %job.display(), until = %humantime::format_rfc3339_seconds(until), "rate limited; pausing all uploads");
            shared.gate.rate_limited(until);
            Outcome::Retry {
                end: AttemptEnd {
                    outcome: "rate_limited",
                    ..end
                },
                next_at: to_ms(until),
                counted: false,
                lookup,
            }
        }
        ErrorClass::Auth => {
            let message = format!(
                "the API key was rejected by {} ({e}); uploads are paused until it is fixed",
                shared.client.base_url()
            );
            tracing::error!("{message}");
            crate::metrics::retry("auth");
            shared.gate.auth_rejected(message);
            Outcome::Retry {
                end: AttemptEnd {
                    outcome: "auth",
                    ..end
                },
                next_at: 0,
                counted: false,
                lookup,
            }
        }
        ErrorClass::Permanent | ErrorClass::NotFound => {
            let reason = match e {
                ApiError::LocalRead(_) | ApiError::SessionsBurned { .. } => e.to_string(),
                _ => format!("the platform refused it: {e}"),
            };
            Outcome::Finish(
                Event::Fail,
                AttemptEnd {
                    outcome: "permanent",
                    error: Some(reason),
                    ..end
                },
            )
        }
    }
}
