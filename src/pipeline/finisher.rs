//! What happens to a file once it is done: `after_upload` (keep, delete,
//! or move, only once its asset is `ready`) and `on_failure` (keep, or move
//! with a `<name>.error.json` sidecar saying why). A move keeps the path
//! relative to the watched folder and never overwrites: a numeric suffix is
//! added instead. A file that changed since it was uploaded is a new version
//! and is left alone.
//!
//! A folder going away is never the end of it, nor a reason to fail a file
//! (README.md, "Watched folders that go away"): a target folder that is
//! missing is created again; a file away with its watched folder, or a
//! target that cannot be reached now (a network mount down), is tried again
//! with the upload backoff, up to `upload.max_attempts`, before what could
//! not be done is recorded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::discover::path_from_bytes;
use crate::config::{FileAction, FileActionName};
use crate::ledger::after::ActionJob;
use crate::ledger::{FileState, now_ms};
use crate::watch::presence::went_with_its_folder;

const BATCH: u32 = 100;

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut wake = shared.ledger.entries(shared.finish_wake());
    // Records whose action must wait: tries so far, and when to try again
    // (Unix ms). In memory: a restart simply tries again.
    let mut later: HashMap<i64, (u32, i64)> = HashMap::new();
    let mut backoff = super::retry::LedgerBackoff::default();
    loop {
        wake.take();
        // A ledger that fails is waited out, not taken for nothing to do.
        let jobs = match shared.ledger.pending_actions(BATCH).await {
            Ok(jobs) => {
                backoff = super::retry::LedgerBackoff::default();
                jobs
            }
            Err(e) => {
                super::ledger_failed(&e, "cannot read the file actions due from the ledger");
                if !super::pause(&stop, backoff.failed()).await {
                    return;
                }
                continue;
            }
        };
        let mut acted = false;
        for job in &jobs {
            if stop.is_cancelled() {
                return;
            }
            if later.get(&job.id).is_some_and(|(_, at)| *at > now_ms()) {
                continue;
            }
            acted = true;
            let outcome = {
                let job = job.clone();
                tokio::task::spawn_blocking(move || act(&job)).await
            };
            let done = match outcome {
                Ok(Acted::Done(text)) => text,
                Ok(Acted::Later(why)) => {
                    let tries = later.get(&job.id).map_or(0, |(n, _)| *n) + 1;
                    match shared.policy.next(tries) {
                        Some(wait) => {
                            tracing::warn!(path = %job.path, reason = %why, retry_in = ?wait, "file action must wait");
                            let at = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                            later.insert(job.id, (tries, at));
                            continue;
                        }
                        None => format!("not done: {why} (gave up after {tries} tries)"),
                    }
                }
                Err(e) => format!("not done: {e}"),
            };
            later.remove(&job.id);
            // Held until the ledger takes it: the file is already moved or
            // deleted, and doing it again would record a wrong outcome.
            let recorded = super::until_recorded(&stop, "could not record the file action", || {
                shared.ledger.set_file_action(job.id, &done)
            })
            .await;
            if let Err(e) = recorded {
                super::ledger_failed(
                    &e,
                    &format!("could not record the file action of file {}", job.id),
                );
                if stop.is_cancelled() {
                    return;
                }
            }
        }
        if acted {
            continue;
        }
        // Nothing to do now: wait for a record to finish, or the first one
        // waiting to be due.
        later.retain(|id, _| jobs.iter().any(|j| j.id == *id));
        let due = later.values().map(|(_, at)| *at).min();
        if !super::wait_for_entries(Some(&mut wake), &stop, due).await {
            return;
        }
    }
}

/// What became of a file action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acted {
    /// Done, or not to be done: what to record.
    Done(String),
    /// Not possible now, perhaps later (the reason).
    Later(String),
}

/// Do the action (blocking).
pub fn act(job: &ActionJob) -> Acted {
    let action: FileAction = match serde_json::from_str(&job.action) {
        Ok(a) => a,
        Err(e) => {
            return Acted::Done(format!(
                "not done: the recorded action cannot be read ({e})"
            ));
        }
    };
    let path = path_from_bytes(&job.path_bytes);
    if !still_the_uploaded_version(&path, job) {
        if !path.exists()
            && let Some(why) = went_with_its_folder(&path, job.device)
        {
            return Acted::Later(why);
        }
        return Acted::Done("kept: the file changed or moved since".into());
    }
    Acted::Done(match action {
        FileAction::Named(FileActionName::Keep) => "kept".into(),
        FileAction::Named(FileActionName::Delete) => match std::fs::remove_file(&path) {
            Ok(()) => "deleted".into(),
            Err(e) if crate::io_error::is_transient(&e) => {
                return Acted::Later(format!("cannot delete it now: {e}"));
            }
            Err(e) => format!("not deleted: {e}"),
        },
        FileAction::MoveTo { move_to } => {
            let failed = job.state == FileState::Failed.as_str();
            match move_file(&path, job.root.as_deref().map(Path::new), &move_to) {
                Ok(dest) => {
                    let mut text = format!("moved to {}", dest.display());
                    if failed {
                        match write_sidecar(&dest, job) {
                            Ok(sidecar) => text.push_str(&format!(" with {}", sidecar.display())),
                            Err(e) => text.push_str(&format!(" (no error file: {e})")),
                        }
                    }
                    text
                }
                // The target went away between its creation and the move,
                // or is on a mount that does not answer now.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || crate::io_error::is_transient(&e) =>
                {
                    return Acted::Later(format!("cannot move it now: {e}"));
                }
                Err(e) => format!("not moved: {e}"),
            }
        }
    })
}

fn still_the_uploaded_version(path: &Path, job: &ActionJob) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let mtime_ns = meta
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec());
    i64::try_from(meta.len()).ok() == job.size
        && Some(mtime_ns) == job.mtime_ns
        && i64::try_from(meta.ino()).ok() == job.inode
}

/// Move `path` under `dir` (relative to the watched folder `root` unless
/// absolute), keeping its path relative to `root`; never overwrite.
pub fn move_file(path: &Path, root: Option<&Path>, dir: &Path) -> std::io::Result<PathBuf> {
    let base = match (dir.is_absolute(), root) {
        (true, _) | (false, None) => dir.to_path_buf(),
        (false, Some(root)) => root.join(dir),
    };
    let rel = root
        .and_then(|r| path.strip_prefix(r).ok())
        .map(Path::to_path_buf)
        .or_else(|| path.file_name().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("file"));
    let wanted = base.join(rel);
    if let Some(parent) = wanted.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let dest = free_name(&wanted);
    match std::fs::rename(path, &dest) {
        Ok(()) => Ok(dest),
        // Another filesystem: copy, then remove the original.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            std::fs::copy(path, &dest)?;
            std::fs::remove_file(path)?;
            Ok(dest)
        }
        Err(e) => Err(e),
    }
}

/// `name.ext`, or `name-1.ext`, `name-2.ext`… whichever does not exist.
fn free_name(wanted: &Path) -> PathBuf {
    if !wanted.exists() {
        return wanted.to_path_buf();
    }
    let stem = wanted
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = wanted
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (1..)
        .map(|n| wanted.with_file_name(format!("{stem}-{n}{ext}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| wanted.to_path_buf())
}

/// `<name>.error.json` beside the moved file: why it failed.
fn write_sidecar(dest: &Path, job: &ActionJob) -> std::io::Result<PathBuf> {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".error.json");
    let sidecar = free_name(&dest.with_file_name(name));
    let body = serde_json::json!({
        "path": job.path,
        "moved_to": dest.to_string_lossy(),
        "state": job.state,
        "error": job.last_error,
        "attempts": job.attempts,
        "sha256": job.sha256,
        "asset_id": job.asset_id,
        "failed_at": crate::ledger::rfc3339(crate::ledger::now_ms()),
    });
    let text = serde_json::to_string_pretty(&body).map_err(std::io::Error::other)?;
    std::fs::write(&sidecar, text)?;
    Ok(sidecar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_for(path: &Path, root: &Path, action: &str) -> ActionJob {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).expect("stat");
        ActionJob {
            id: 1,
            path_bytes: path.as_os_str().as_bytes().to_vec(),
            path: path.display().to_string(),
            root: Some(root.display().to_string()),
            state: "ready".into(),
            size: i64::try_from(meta.len()).ok(),
            mtime_ns: Some(meta.mtime() * 1_000_000_000 + meta.mtime_nsec()),
            inode: i64::try_from(meta.ino()).ok(),
            sha256: None,
            asset_id: None,
            attempts: 1,
            last_error: None,
            action: action.into(),
            device: i64::try_from(meta.dev()).ok(),
        }
    }

    #[test]
    fn a_target_folder_removed_is_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("in");
        std::fs::create_dir_all(&root).expect("mkdir");
        let move_done = r#"{"move_to":"done"}"#;
        let first = root.join("a.mp4");
        std::fs::write(&first, b"one").expect("write");
        let done = act(&job_for(&first, &root, move_done));
        assert_eq!(
            done,
            Acted::Done(format!("moved to {}", root.join("done/a.mp4").display()))
        );
        std::fs::remove_dir_all(root.join("done")).expect("rm -rf done");
        let second = root.join("b.mp4");
        std::fs::write(&second, b"two").expect("write");
        let done = act(&job_for(&second, &root, move_done));
        assert_eq!(
            done,
            Acted::Done(format!("moved to {}", root.join("done/b.mp4").display()))
        );
    }

    #[test]
    fn a_file_away_with_its_watched_folder_waits_and_one_gone_alone_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("in");
        std::fs::create_dir_all(&root).expect("mkdir");
        let file = root.join("a.mp4");
        std::fs::write(&file, b"one").expect("write");
        let job = job_for(&file, &root, r#""delete""#);
        std::fs::remove_file(&file).expect("rm");
        assert_eq!(
            act(&job),
            Acted::Done("kept: the file changed or moved since".into())
        );
        std::fs::remove_dir(&root).expect("rmdir");
        match act(&job) {
            Acted::Later(why) => assert!(why.contains("is gone"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn moves_keep_the_relative_path_and_never_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("in");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        let first = root.join("a/b/clip.mp4");
        std::fs::write(&first, b"one").expect("write");
        let dest = move_file(&first, Some(&root), Path::new("done")).expect("move");
        assert_eq!(dest, root.join("done/a/b/clip.mp4"));
        assert!(!first.exists());

        std::fs::write(&first, b"two").expect("write");
        let dest2 = move_file(&first, Some(&root), Path::new("done")).expect("move");
        assert_eq!(dest2, root.join("done/a/b/clip-1.mp4"));
        assert_eq!(
            std::fs::read(&dest).expect("read"),
            b"one",
            "not overwritten"
        );
    }
}
