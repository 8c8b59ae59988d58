//! The hash stage: every `discovered` record is checked for eligibility,
//! hashed (sha256, streamed, on a blocking thread), and then queued,
//! deduplicated or skipped by the ledger.

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
use crate::ledger::{FileState, HashJob, HashOutcome, NewFile};

/// Read size for hashing: large reads keep syscalls out of the profile.
const HASH_BUFFER: usize = 1024 * 1024;
/// Records taken from the ledger per round.
const BATCH: u32 = 64;

/// What looking at a file found.
#[derive(Debug)]
pub enum Examined {
    Send {
        sha256: String,
        mime: Option<String>,
    },
    Skip(String),
    /// The file is gone.
    Vanished,
    /// It exists but cannot be read; the reason.
    Unreadable(String),
    /// It is not what discovery recorded (changed since, or while hashing).
    Changed(Box<NewFile>),
}

/// Open for reading without blocking on a FIFO that was put in a file's
/// place, and refuse anything but a regular file.
pub fn open_regular(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
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

/// Judge and hash one file (blocking).
pub fn examine(path: &Path, job: &HashJob, limits: &Limits) -> Examined {
    let (mut file, meta) = match open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Examined::Vanished,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Examined::Skip("not a regular file".into());
        }
        Err(e) => return Examined::Unreadable(e.to_string()),
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
        return Examined::Unreadable(e.to_string());
    }
    let mime = match judge(path, meta.len(), &head, limits) {
        Verdict::Skip(reason) => return Examined::Skip(reason),
        Verdict::Send { mime, .. } => mime,
    };
    let mut hasher = Sha256::new();
    hasher.update(&head);
    let mut buf = vec![0u8; HASH_BUFFER];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Examined::Unreadable(e.to_string()),
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Examined::Vanished,
        Err(e) => return Examined::Unreadable(e.to_string()),
    }
    Examined::Send {
        sha256: hex::encode(hasher.finalize()),
        mime,
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
    loop {
        // Changes from before this round are covered by the query below.
        while changes.try_recv().is_ok() {}
        let jobs = match shared.ledger.to_hash(BATCH).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the ledger; retrying");
                if !super::pause(&stop, std::time::Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        if jobs.is_empty() {
            let woke =
                super::wait_for_state(&mut changes, &stop, FileState::Discovered, None).await;
            if !woke {
                return;
            }
            continue;
        }
        // Stop between files when told to (a hash already running finishes
        // on its thread; its result is simply not recorded).
        futures_util::stream::iter(jobs)
            .take_until(stop.cancelled())
            .for_each_concurrent(parallel, |job| {
                let shared = shared.clone();
                async move { hash_one(&shared, job).await }
            })
            .await;
        if stop.is_cancelled() {
            return;
        }
    }
}

async fn hash_one(shared: &Shared, job: HashJob) {
    let path = path_from_bytes(&job.path_bytes);
    let limits = shared.limits;
    let examined = {
        let (path, job) = (path.clone(), job.clone());
        tokio::task::spawn_blocking(move || examine(&path, &job, &limits)).await
    };
    let ledger = &shared.ledger;
    let result = match examined {
        Err(e) => {
            tracing::error!(path = %job.path, error = %e, "hashing task failed");
            return;
        }
        Ok(Examined::Send { sha256, mime }) => ledger
            .record_hash(&job, &sha256, mime.as_deref(), shared.config.upload.dedupe)
            .await
            .map(|outcome| match outcome {
                HashOutcome::Merged { into } => {
                    tracing::debug!(path = %job.path, into, "same version as an existing record");
                }
                HashOutcome::Duplicate { .. } | HashOutcome::Queued | HashOutcome::Gone => {}
            }),
        Ok(Examined::Skip(reason)) => ledger.skip(job.id, &reason).await,
        Ok(Examined::Vanished) => {
            ledger
                .fail(
                    job.id,
                    FileState::Discovered,
                    "the file vanished before upload",
                )
                .await
        }
        Ok(Examined::Unreadable(reason)) => {
            ledger
                .fail(
                    job.id,
                    FileState::Discovered,
                    &format!("cannot read the file: {reason}"),
                )
                .await
        }
        // Record the new stat; the record comes round again to be hashed.
        Ok(Examined::Changed(now)) => ledger.discover(&now).await.map(|_| ()),
    };
    if let Err(e) = result {
        tracing::warn!(path = %job.path, error = %e, "could not record the hash result");
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
