//! What happens to a file once it is done: `after_upload` (keep, delete,
//! or move, only once its asset is `ready`) and `on_failure` (keep, or move
//! with a `<name>.error.json` sidecar saying why). A move keeps the path
//! relative to the watched folder and never overwrites: a numeric suffix is
//! added instead. A file that changed since it was uploaded is a new version
//! and is left alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::discover::path_from_bytes;
use crate::config::{FileAction, FileActionName};
use crate::ledger::FileState;
use crate::ledger::after::ActionJob;

const BATCH: u32 = 100;

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut changes = shared.ledger.subscribe();
    loop {
        while changes.try_recv().is_ok() {}
        let jobs = shared
            .ledger
            .pending_actions(BATCH)
            .await
            .unwrap_or_default();
        for job in &jobs {
            if stop.is_cancelled() {
                return;
            }
            let outcome = {
                let job = job.clone();
                tokio::task::spawn_blocking(move || act(&job)).await
            };
            let done = match outcome {
                Ok(text) => text,
                Err(e) => format!("not done: {e}"),
            };
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
        if !jobs.is_empty() {
            continue;
        }
        let finished = [FileState::Ready, FileState::Indexed, FileState::Failed];
        if !super::wait_for_states(&mut changes, &stop, &finished, None).await {
            return;
        }
    }
}

/// Do the action (blocking); returns what was done, for the ledger.
pub fn act(job: &ActionJob) -> String {
    let action: FileAction = match serde_json::from_str(&job.action) {
        Ok(a) => a,
        Err(e) => return format!("not done: the recorded action cannot be read ({e})"),
    };
    let path = path_from_bytes(&job.path_bytes);
    if !still_the_uploaded_version(&path, job) {
        return "kept: the file changed or moved since".into();
    }
    match action {
        FileAction::Named(FileActionName::Keep) => "kept".into(),
        FileAction::Named(FileActionName::Delete) => match std::fs::remove_file(&path) {
            Ok(()) => "deleted".into(),
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
                Err(e) => format!("not moved: {e}"),
            }
        }
    }
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
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
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
