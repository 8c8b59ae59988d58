//! The hash stage: every `discovered` record is checked for eligibility,
//! hashed (sha256, streamed, on a blocking thread), and then queued,
//! deduplicated or skipped by the ledger.
//!
//! A duplicate has the same size as its original. So when no other record
//! has a file's size, the file is queued unhashed and hashed in the same
//! read as its upload, which halves the reading and hashing. Until that
//! hash is known, another file of the same size waits for it (see
//! [`SameSize`]). Multipart uploads are always hashed first: their session
//! carries the stamp before a byte is sent.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::discover::{new_file, path_from_bytes};
use super::eligibility::{HEAD_LEN, Limits, Verdict, judge};
use crate::ledger::{FileState, HashJob, HashOutcome, LedgerError, NewFile, SameSize};

/// Read size for hashing: large reads keep syscalls out of the profile.
const HASH_BUFFER: usize = 1024 * 1024;
/// Records taken from the ledger per round.
const BATCH: u32 = 64;

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

/// Judge and hash one file (blocking). With `leave_hash`, an eligible file
/// that will go up in one request is not hashed.
pub fn examine(path: &Path, job: &HashJob, limits: &Limits, leave_hash: bool) -> Examined {
    let (mut file, meta) = match open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vanished(path, job),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Examined::Skip("not a regular file".into());
        }
        Err(e) => return unreadable(&e),
    };
    let found = new_file(path, &meta, None);
    if !same_size_and_mtime(&found, job) {
        return Examined::Changed(Box::new(found));
    }
    let mut head = vec![0u8; HEAD_LEN.min(usize::try_from(meta.len()).unwrap_or(HEAD_LEN))];
    if let Err(e) = file.read_exact(&mut head) {
        // Shorter than it was a moment ago: truncated, not unreadable.
        if e.kind() == std::io::ErrorKind::UnexpectedEof
            && let Ok(now) = std::fs::metadata(path)
        {
            return Examined::Changed(Box::new(new_file(path, &now, None)));
        }
        return unreadable(&e);
    }
    let mime = match judge(path, meta.len(), &head, limits) {
        Verdict::Skip(reason) => return Examined::Skip(reason),
        Verdict::Send { mime, .. } => mime,
    };
    if leave_hash {
        return Examined::Send { sha256: None, mime };
    }
    let mut hasher = Sha256::new();
    hasher.update(&head);
    let mut buf = vec![0u8; HASH_BUFFER];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return unreadable(&e),
        }
    }
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
        sha256: Some(hex::encode(hasher.finalize())),
        mime,
    }
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
    let mut changes = shared.ledger.subscribe();
    let parallel = shared.config.upload.workers.max(1);
    let mut backoff = super::retry::LedgerBackoff::default();
    loop {
        // Changes from before this round are covered by the query below.
        while changes.try_recv().is_ok() {}
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
            let woke = super::wait_for_state(&mut changes, &stop, FileState::Discovered, due).await;
            if !woke {
                return;
            }
            continue;
        }
        // Stop between files when told to (a hash already running finishes
        // on its thread; its result is simply not recorded).
        let recorded = futures_util::stream::iter(jobs)
            .take_until(stop.cancelled())
            .map(|job| {
                let shared = shared.clone();
                async move { hash_one(&shared, job).await }
            })
            .buffer_unordered(parallel)
            .fold(true, |all, ok| async move { all && ok })
            .await;
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

/// Examine one record and record the outcome; false if the ledger failed.
async fn hash_one(shared: &Shared, job: HashJob) -> bool {
    match hash_and_record(shared, &job).await {
        Ok(()) => true,
        Err(e) => {
            super::ledger_failed(
                &e,
                &format!("could not record the hash result of {}", job.path),
            );
            false
        }
    }
}

async fn hash_and_record(shared: &Shared, job: &HashJob) -> Result<(), LedgerError> {
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
    let mut examined = examine_off_thread(shared, job, leave_hash).await;
    if let Examined::Send { sha256: None, mime } = &examined {
        match ledger.queue_unhashed(job, mime.as_deref()).await? {
            HashOutcome::NeedsHash => examined = examine_off_thread(shared, job, false).await,
            HashOutcome::Wait => return ledger.wait_for_hash(job).await,
            _ => return Ok(()),
        }
    }
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
    let limits = shared.limits;
    let job = job.clone();
    tokio::task::spawn_blocking(move || examine(&path, &job, &limits, leave_hash))
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
        };
        let limits = Limits {
            max_direct: 1 << 30,
            max_image: 1 << 30,
            max_multipart: 1 << 40,
            multipart_threshold: 1 << 30,
        };
        std::fs::remove_file(&path).expect("rm");
        assert!(matches!(
            examine(&path, &job, &limits, false),
            Examined::Vanished
        ));
        std::fs::remove_dir(&sub).expect("rmdir");
        match examine(&path, &job, &limits, false) {
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
