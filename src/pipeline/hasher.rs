//! The hash stage: every `discovered` record is checked for eligibility,
//! hashed (sha256, streamed, on a blocking thread), and then queued,
//! deduplicated or skipped by the ledger.
//!
//! A duplicate has the same size and the same fingerprint as its original
//! (sha256 over 64 KiB from the start, the middle and the end; see
//! [`fingerprint`]), which costs a few reads. So when no other record has a
//! file's size and fingerprint, the file is queued unhashed and hashed in
//! the same read as its upload, which halves the reading and hashing. Until
//! that hash is known, another file of the same size and fingerprint waits
//! for it (see [`SameSize`]). Only the full sha256 makes a duplicate.
//! Multipart uploads too: their stamp is added to the asset once their
//! session completes (see `chunk_reader`).

use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::discover::{new_file, path_from_bytes};
use super::eligibility::{HEAD_LEN, Limits, Verdict, judge};
use super::read_count::ContentReads;
use crate::ledger::{FileState, HashJob, HashOutcome, LedgerError, NewFile, SameSize};

/// Read size for hashing: large reads keep syscalls out of the profile.
const HASH_BUFFER: usize = 1024 * 1024;
/// Records taken from the ledger per round.
const BATCH: u32 = 64;
/// Bytes taken from each of a file's start, middle and end for its
/// fingerprint.
pub const FINGERPRINT_REGION: u64 = 64 * 1024;

/// What looking at a file found.
#[derive(Debug)]
pub enum Examined {
    /// Eligible; `sha256` is `None` when it was left to the upload.
    Send {
        sha256: Option<String>,
        mime: Option<String>,
    },
    Skip(String),
    /// The file is gone.
    Vanished,
    /// It exists but cannot be read; the reason.
    Unreadable(String),
    /// It cannot be read now for a reason that may pass (a network mount
    /// that is down or stale); the reason.
    Unavailable(String),
    /// It is not what discovery recorded (changed since, or while hashing).
    Changed(Box<NewFile>),
}

/// Open for reading without blocking on a FIFO that was put in a file's
/// place, and refuse anything but a regular file.
pub fn open_regular(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

/// A file judged eligible, still open, its fingerprint taken: what its
/// full hash, if it needs one now, continues from.
#[derive(Debug)]
pub struct Looked {
    file: std::fs::File,
    meta: std::fs::Metadata,
    found: NewFile,
    /// The first bytes, already read: the file's position is after them.
    head: Vec<u8>,
    mime: Option<String>,
    fingerprint: String,
}

/// Judge and hash one file (blocking). With `leave_hash`, an eligible file
/// that will go up in one request is not hashed.
pub fn examine(
    path: &Path,
    job: &HashJob,
    limits: &Limits,
    leave_hash: bool,
    reads: &ContentReads,
) -> Examined {
    match look(path, job, limits, reads) {
        Ok(looked) => finish(path, job, looked, leave_hash, reads),
        Err(examined) => examined,
    }
}

/// Judge one file and take its fingerprint (blocking): a few reads. An
/// eligible file comes back open; anything else as what was found.
pub fn look(
    path: &Path,
    job: &HashJob,
    limits: &Limits,
    reads: &ContentReads,
) -> Result<Looked, Examined> {
    let (file, meta) = match open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(vanished(path, job)),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(Examined::Skip("not a regular file".into()));
        }
        Err(e) => return Err(unreadable(&e)),
    };
    let found = new_file(path, &meta, None);
    if !same_size_and_mtime(&found, job) {
        return Err(Examined::Changed(Box::new(found)));
    }
    let mut head = vec![0u8; HEAD_LEN.min(usize::try_from(meta.len()).unwrap_or(HEAD_LEN))];
    if let Err(e) = (&file).read_exact(&mut head) {
        return Err(short_read(path, &e));
    }
    reads.examined(head.len() as u64);
    let mime = match judge(path, meta.len(), &head, limits) {
        Verdict::Skip(reason) => return Err(Examined::Skip(reason)),
        Verdict::Send { mime, .. } => mime,
    };
    let fingerprint = match fingerprint(&file, meta.len(), &head) {
        Ok((fingerprint, read)) => {
            reads.examined(read);
            fingerprint
        }
        Err(e) => return Err(short_read(path, &e)),
    };
    Ok(Looked {
        file,
        meta,
        found,
        head,
        mime,
        fingerprint,
    })
}

/// Hash a looked-at file in full (blocking), unless `leave_hash` leaves it
/// to its upload.
pub fn finish(
    path: &Path,
    job: &HashJob,
    looked: Looked,
    leave_hash: bool,
    reads: &ContentReads,
) -> Examined {
    let Looked {
        mut file,
        meta,
        found,
        head,
        mime,
        fingerprint,
    } = looked;
    if leave_hash {
        return Examined::Send { sha256: None, mime };
    }
    // A fingerprint of the whole file is its sha256: nothing more to read.
    let sha256 = if meta.len() <= 3 * FINGERPRINT_REGION {
        fingerprint
    } else {
        let mut hasher = Sha256::new();
        hasher.update(&head);
        let mut buf = vec![0u8; HASH_BUFFER];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    reads.examined(n as u64);
                    hasher.update(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return unreadable(&e),
            }
        }
        hex::encode(hasher.finalize())
    };
    // Written to while we read it: the hash is of nothing that will last.
    match std::fs::metadata(path) {
        Ok(after) => {
            let after = new_file(path, &after, None);
            if !same_size_and_mtime(&after, job) || after.inode != found.inode {
                return Examined::Changed(Box::new(after));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vanished(path, job),
        Err(e) => return Examined::Unreadable(e.to_string()),
    }
    Examined::Send {
        sha256: Some(sha256),
        mime,
    }
}

/// The fingerprint of a file of `len` bytes that starts with `head`, and
/// the bytes read for it beyond `head`: sha256 (hex) over
/// [`FINGERPRINT_REGION`] bytes from its start, its middle and its end, or
/// over the whole file when it is at most three regions long (it is then
/// the file's sha256). Reads by offset: the file's position does not move.
pub fn fingerprint(file: &std::fs::File, len: u64, head: &[u8]) -> std::io::Result<(String, u64)> {
    let region = FINGERPRINT_REGION;
    let regions = if len <= 3 * region {
        vec![(0, len)]
    } else {
        vec![
            (0, region),
            ((len - region) / 2, region),
            (len - region, region),
        ]
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER.min(usize::try_from(region).unwrap_or(HASH_BUFFER))];
    let mut read = 0u64;
    for (start, n) in regions {
        let end = start + n;
        let mut at = start;
        // What the head already holds is not read again.
        let in_head = (head.len() as u64).min(end);
        if at < in_head {
            hasher.update(&head[at as usize..in_head as usize]);
            at = in_head;
        }
        while at < end {
            let want = usize::try_from(end - at)
                .unwrap_or(buf.len())
                .min(buf.len());
            file.read_exact_at(&mut buf[..want], at)?;
            hasher.update(&buf[..want]);
            read += want as u64;
            at += want as u64;
        }
    }
    Ok((hex::encode(hasher.finalize()), read))
}

/// A read that failed: a file shorter than it was a moment ago was
/// truncated, not unreadable.
fn short_read(path: &Path, e: &std::io::Error) -> Examined {
    if e.kind() == std::io::ErrorKind::UnexpectedEof
        && let Ok(now) = std::fs::metadata(path)
    {
        return Examined::Changed(Box::new(new_file(path, &now, None)));
    }
    unreadable(e)
}

/// A file not found: gone, or away with its folder (waited for).
fn vanished(path: &Path, job: &HashJob) -> Examined {
    match crate::watch::presence::went_with_its_folder(path, job.device) {
        Some(why) => Examined::Unavailable(why),
        None => Examined::Vanished,
    }
}

/// A read error, as transient (worth another try later) or not.
fn unreadable(e: &std::io::Error) -> Examined {
    if crate::io_error::is_transient(e) {
        Examined::Unavailable(e.to_string())
    } else {
        Examined::Unreadable(e.to_string())
    }
}

/// What discovery recorded is what is on disk now.
fn same_size_and_mtime(f: &NewFile, job: &HashJob) -> bool {
    i64::try_from(f.size).ok() == Some(job.size) && f.mtime_ns == job.mtime_ns
}

/// sha256 of a whole file, hex (blocking). Used by tests and tools.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The stage's loop: runs until `stop`.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut discovered = shared.ledger.entries(&[FileState::Discovered]);
    let parallel = shared.config.upload.workers.max(1);
    let mut backoff = super::retry::LedgerBackoff::default();
    loop {
        // Changes from before this round are covered by the query below.
        discovered.take();
        let jobs = match shared.ledger.to_hash(BATCH).await {
            Ok(jobs) => jobs,
            Err(e) => {
                super::ledger_failed(&e, "cannot read the ledger; retrying");
                if !super::pause(&stop, backoff.failed()).await {
                    return;
                }
                continue;
            }
        };
        if jobs.is_empty() {
            // Records waiting for a twin's hash are due soon.
            let due = shared.ledger.next_hash_due().await.ok().flatten();
            let woke = super::wait_for_entries(Some(&mut discovered), &stop, due).await;
            if !woke {
                return;
            }
            continue;
        }
        let recorded = hash_batch(&shared, jobs, parallel, &stop).await;
        if stop.is_cancelled() {
            return;
        }
        // A result the ledger could not take leaves its record due: do not
        // read the same files again at once (a full disk, say).
        if recorded {
            backoff.ok();
        } else if !super::pause(&stop, backoff.failed()).await {
            return;
        }
    }
}

/// Examine a round of records and record the outcomes; false if the
/// ledger failed. Eligibility and the fingerprint come first (a few reads
/// each, `parallel` files at a time); the files that no other record could
/// be a copy of, nearly all of them, are then queued in one transaction
/// (rather than three for each), and the others go one by one. Stops
/// between files when told to (a read already running finishes on its
/// thread; its result is simply not recorded).
async fn hash_batch(
    shared: &Shared,
    jobs: Vec<HashJob>,
    parallel: usize,
    stop: &CancellationToken,
) -> bool {
    let looked: Vec<(HashJob, Result<Looked, Examined>)> = futures_util::stream::iter(jobs)
        .take_until(stop.cancelled())
        .map(|job| async move {
            match look_off_thread(shared, &job).await {
                Ok(looked) => {
                    let job = HashJob {
                        fingerprint: Some(looked.fingerprint.clone()),
                        ..job
                    };
                    (job, Ok(looked))
                }
                Err(examined) => (job, Err(examined)),
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    if stop.is_cancelled() {
        return true;
    }
    let eligible: Vec<(&HashJob, Option<&str>)> = looked
        .iter()
        .filter_map(|(job, l)| l.as_ref().ok().map(|l| (job, l.mime.as_deref())))
        .collect();
    let mut queued = match shared.ledger.queue_unhashed_many(&eligible).await {
        Ok(queued) => queued.into_iter(),
        Err(e) => {
            super::ledger_failed(&e, "could not record the hash stage's results");
            return false;
        }
    };
    let rest: Vec<_> = looked
        .into_iter()
        .filter(|(_, l)| match l {
            // One answer for each eligible file, in order.
            Ok(_) => queued.next() != Some(true),
            Err(_) => true,
        })
        .collect();
    futures_util::stream::iter(rest)
        .take_until(stop.cancelled())
        .map(|(job, looked)| async move {
            let done = match looked {
                Ok(looked) => decide(shared, &job, looked).await,
                Err(examined) => record(shared, &job, examined).await,
            };
            done.map_err(|e| {
                let what = format!("could not record the hash result of {}", job.path);
                super::ledger_failed(&e, &what);
            })
            .is_ok()
        })
        .buffer_unordered(parallel)
        .fold(true, |all, ok| async move { all && ok })
        .await
}

/// Hash a looked-at file now, or queue it unhashed, or keep it waiting,
/// as the other records of its size and fingerprint say.
async fn decide(shared: &Shared, job: &HashJob, looked: Looked) -> Result<(), LedgerError> {
    let ledger = &shared.ledger;
    let leave_hash = match ledger.same_size(job).await? {
        SameSize::Pending => {
            // Its twin's upload may take long to start or end (a retry
            // schedule, a rate limit holding the claim): hash the twin here
            // instead of waiting for it.
            for twin in ledger.unhashed_twins(job).await? {
                if let Examined::Send {
                    sha256: Some(sha256),
                    ..
                } = examine_off_thread(shared, &twin, false).await
                {
                    ledger.set_twin_sha256(&twin, &sha256).await?;
                }
            }
            if ledger.same_size(job).await? == SameSize::Pending {
                return ledger.wait_for_hash(job).await;
            }
            false
        }
        SameSize::None => true,
        SameSize::Hashed => false,
    };
    let mut examined = finish_off_thread(shared, job, looked, leave_hash).await;
    if let Examined::Send { sha256: None, mime } = &examined {
        match ledger.queue_unhashed(job, mime.as_deref()).await? {
            HashOutcome::NeedsHash => examined = examine_off_thread(shared, job, false).await,
            HashOutcome::Wait => return ledger.wait_for_hash(job).await,
            _ => return Ok(()),
        }
    }
    record(shared, job, examined).await
}

/// Record what examining a file found.
async fn record(shared: &Shared, job: &HashJob, examined: Examined) -> Result<(), LedgerError> {
    let ledger = &shared.ledger;
    // Another host found it: this host's view of the share may be what is
    // wrong. Try again later, any host (bounded by max_attempts).
    if ledger.found_elsewhere(job.origin_host.as_deref()) {
        match &examined {
            Examined::Vanished => {
                return unavailable(shared, job, "this host does not see it").await;
            }
            Examined::Unreadable(r) => {
                return unavailable(shared, job, &format!("this host cannot read it: {r}")).await;
            }
            _ => {}
        }
    }
    match examined {
        Examined::Send {
            sha256: Some(sha256),
            mime,
        } => {
            let dedupe = match shared.config.upload.dedupe {
                crate::config::Dedupe::Content => crate::ledger::Dedupe::Content,
                crate::config::Dedupe::Path => crate::ledger::Dedupe::Path,
                crate::config::Dedupe::Off => crate::ledger::Dedupe::Off,
            };
            let outcome = ledger
                .record_hash(job, &sha256, mime.as_deref(), dedupe)
                .await?;
            if let HashOutcome::Merged { into } = outcome {
                tracing::debug!(path = %job.path, into, "same version as an existing record");
            }
            Ok(())
        }
        // Only an examination that may leave the hash returns none.
        Examined::Send { sha256: None, .. } => Ok(()),
        Examined::Skip(reason) => ledger.skip(job.id, &reason).await,
        Examined::Vanished => {
            ledger
                .fail(
                    job.id,
                    FileState::Discovered,
                    "the file vanished before upload",
                )
                .await
        }
        Examined::Unreadable(reason) => {
            ledger
                .fail(
                    job.id,
                    FileState::Discovered,
                    &format!("cannot read the file: {reason}"),
                )
                .await
        }
        Examined::Unavailable(reason) => unavailable(shared, job, &reason).await,
        // Record the new stat; the record comes round again to be hashed.
        Examined::Changed(now) => ledger.discover(&now).await.map(|_| ()),
    }
}

/// [`examine`] on a blocking thread.
async fn examine_off_thread(shared: &Shared, job: &HashJob, leave_hash: bool) -> Examined {
    let path = path_from_bytes(&job.path_bytes);
    let (limits, reads) = (shared.limits, shared.reads.clone());
    let job = job.clone();
    tokio::task::spawn_blocking(move || examine(&path, &job, &limits, leave_hash, &reads))
        .await
        .unwrap_or_else(|e| Examined::Unreadable(format!("the hashing task failed: {e}")))
}

/// [`look`] on a blocking thread.
async fn look_off_thread(shared: &Shared, job: &HashJob) -> Result<Looked, Examined> {
    let path = path_from_bytes(&job.path_bytes);
    let (limits, reads) = (shared.limits, shared.reads.clone());
    let job = job.clone();
    tokio::task::spawn_blocking(move || look(&path, &job, &limits, &reads))
        .await
        .unwrap_or_else(|e| {
            Err(Examined::Unreadable(format!(
                "the hashing task failed: {e}"
            )))
        })
}

/// [`finish`] on a blocking thread.
async fn finish_off_thread(
    shared: &Shared,
    job: &HashJob,
    looked: Looked,
    leave_hash: bool,
) -> Examined {
    let path = path_from_bytes(&job.path_bytes);
    let reads = shared.reads.clone();
    let job = job.clone();
    tokio::task::spawn_blocking(move || finish(&path, &job, looked, leave_hash, &reads))
        .await
        .unwrap_or_else(|e| Examined::Unreadable(format!("the hashing task failed: {e}")))
}

/// The file cannot be read now, for a reason that may pass: try again
/// later with the upload backoff, and give up after `max_attempts`.
async fn unavailable(shared: &Shared, job: &HashJob, reason: &str) -> Result<(), LedgerError> {
    let ledger = &shared.ledger;
    let tried = u32::try_from(job.attempts + 1).unwrap_or(u32::MAX);
    match shared.policy.next(tried) {
        Some(wait) => {
            tracing::warn!(path = %job.path, error = %reason, retry_in = ?wait, "cannot read the file now; will try again");
            let at = crate::ledger::now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            ledger
                .examine_later(job, at, &format!("cannot read the file now: {reason}"))
                .await
        }
        None => {
            ledger
                .fail(
                    job.id,
                    FileState::Discovered,
                    &format!("gave up after {tried} tries: cannot read the file: {reason}"),
                )
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").expect("write");
        assert_eq!(
            sha256_file(&p).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// The fingerprint of bytes written to a file, as [`look`] takes it
    /// (after reading the head).
    fn fingerprint_of(bytes: &[u8]) -> (String, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).expect("write");
        let file = std::fs::File::open(&p).expect("open");
        let head = &bytes[..HEAD_LEN.min(bytes.len())];
        fingerprint(&file, bytes.len() as u64, head).expect("fingerprint")
    }

    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn the_fingerprint_of_a_small_file_is_its_sha256() {
        let region = usize::try_from(FINGERPRINT_REGION).expect("small");
        for len in [1, HEAD_LEN, HEAD_LEN + 1, region, 3 * region] {
            let data = patterned(len);
            let (print, read) = fingerprint_of(&data);
            assert_eq!(print, hex::encode(Sha256::digest(&data)), "{len}");
            assert_eq!(
                read,
                (len - HEAD_LEN.min(len)) as u64,
                "the head is not read again"
            );
        }
    }

    #[test]
    fn the_fingerprint_of_an_empty_file_is_the_empty_sha256() {
        assert_eq!(
            fingerprint_of(b""),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
                0
            )
        );
    }

    /// Over three regions long: the start, the middle and the end count,
    /// and nothing else (a collision the full hash then tells apart).
    #[test]
    fn the_fingerprint_of_a_large_file_covers_its_start_middle_and_end() {
        let region = usize::try_from(FINGERPRINT_REGION).expect("small");
        let len = 5 * region + 12_345;
        let data = patterned(len);
        let (print, read) = fingerprint_of(&data);
        let mid = (len - region) / 2;
        let regions = [
            &data[..region],
            &data[mid..mid + region],
            &data[len - region..],
        ];
        assert_eq!(print, hex::encode(Sha256::digest(regions.concat())));
        assert_eq!(
            read,
            (3 * region - HEAD_LEN) as u64,
            "three regions read, the head once"
        );
        let flipped = |at: usize| {
            let mut d = data.clone();
            d[at] ^= 0xff;
            fingerprint_of(&d).0
        };
        for inside in [
            0,
            HEAD_LEN + 1,
            region - 1,
            mid,
            mid + region - 1,
            len - region,
            len - 1,
        ] {
            assert_ne!(flipped(inside), print, "a byte at {inside} counts");
        }
        for outside in [region, mid - 1, mid + region, len - region - 1] {
            assert_eq!(flipped(outside), print, "a byte at {outside} does not");
        }
    }

    #[test]
    fn network_mount_errors_are_tried_again_and_others_are_not() {
        use rustix::io::Errno;
        for errno in [Errno::IO, Errno::STALE, Errno::TIMEDOUT, Errno::NOTCONN] {
            let e = std::io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(crate::io_error::is_transient(&e), "{e}");
            assert!(matches!(unreadable(&e), Examined::Unavailable(_)), "{e}");
        }
        for errno in [Errno::ACCESS, Errno::PERM, Errno::ISDIR, Errno::LOOP] {
            let e = std::io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(!crate::io_error::is_transient(&e), "{e}");
            assert!(matches!(unreadable(&e), Examined::Unreadable(_)), "{e}");
        }
    }

    #[test]
    fn a_file_gone_alone_vanished_and_one_gone_with_its_folder_is_waited_for() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let path = sub.join("a.mp4");
        std::fs::write(&path, b"not really media").expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        let found = new_file(&path, &meta, None);
        let job = HashJob {
            id: 1,
            path_bytes: found.path_bytes.clone(),
            path: found.path.clone(),
            size: i64::try_from(found.size).expect("size"),
            mtime_ns: found.mtime_ns,
            attempts: 0,
            origin_host: None,
            device: i64::try_from(meta.dev()).ok(),
            fingerprint: None,
        };
        let limits = Limits {
            max_direct: 1 << 30,
            max_image: 1 << 30,
            max_multipart: 1 << 40,
            multipart_threshold: 1 << 30,
        };
        std::fs::remove_file(&path).expect("rm");
        assert!(matches!(
            examine(&path, &job, &limits, false, &ContentReads::default()),
            Examined::Vanished
        ));
        std::fs::remove_dir(&sub).expect("rmdir");
        match examine(&path, &job, &limits, false, &ContentReads::default()) {
            Examined::Unavailable(why) => assert!(why.contains("is gone"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pipe.mp4");
        let ok = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("mkfifo not available; skipped");
            return;
        }
        let err = open_regular(&p).expect_err("fifo refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
