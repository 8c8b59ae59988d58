//! The watch folders: each exists, can be read (and written where files
//! are deleted or moved), and its filesystem; then the inotify watch limit
//! against the folders the native watcher will watch.

use std::path::{Path, PathBuf};

use super::report::Report;
use super::writable;
use crate::cli::Context;
use crate::config::{FileAction, FileActionName, WatchConfig, WatcherMode};
use crate::fstype::network_fs;

/// The folder count stops here: enough to compare with any sane limit.
const MAX_FOLDERS_COUNTED: u64 = 2_000_000;
const INOTIFY_LIMIT: &str = "/proc/sys/fs/inotify/max_user_watches";

/// Each root: exists, readable, writable where needed, its filesystem.
/// Returns the roots inotify will watch (local ones, in native mode).
pub(super) fn watch_checks(ctx: &Context, r: &mut Report) -> Vec<(PathBuf, bool)> {
    let config = &ctx.config;
    let mut native = Vec::new();
    if config.watch.is_empty() {
        r.skip(
            "watch folders",
            "none configured (`run` needs a [[watch]] table; `upload` does not)",
        );
        return native;
    }
    for (i, w) in config.watch.iter().enumerate() {
        let path = std::path::absolute(&w.path).unwrap_or_else(|_| w.path.clone());
        let name = format!("watch[{i}] {}", path.display());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                r.fail(
                    &name,
                    "is not a folder",
                    &format!("point watch[{i}].path at a folder"),
                );
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                r.fail(
                    &name,
                    "does not exist (removed, or a share not mounted?); a running daemon \
                     waits for it and watches it again when it is back",
                    &format!(
                        "create it (mkdir -p {}), mount it, or fix watch[{i}].path",
                        path.display()
                    ),
                );
                continue;
            }
            Err(e) => {
                r.fail(
                    &name,
                    &format!("cannot be read: {e}"),
                    "give the user tl-ingest runs as access to it",
                );
                continue;
            }
        }
        if let Err(e) = std::fs::read_dir(&path) {
            r.fail(
                &name,
                &format!("cannot be listed: {e}"),
                "give the user tl-ingest runs as read and execute permission on it",
            );
            continue;
        }
        match write_problem(&path, w) {
            Some((detail, fix)) => r.fail(&name, &detail, &fix),
            None => r.ok(&name, &access_summary(w)),
        }
        let fs_name = format!("filesystem of watch[{i}]");
        match (network_fs(&path), config.watcher.mode) {
            (Some(fs), WatcherMode::Native) => r.warn(
                &fs_name,
                &format!(
                    "{fs}: inotify misses changes made on other machines, so this folder is polled"
                ),
                "set watcher.mode = \"poll\" to say so (and tune watcher.poll_interval)",
            ),
            (Some(fs), WatcherMode::Poll) => r.ok(&fs_name, &format!("{fs}, polled")),
            (None, WatcherMode::Native) => {
                r.ok(&fs_name, "local");
                native.push((path.clone(), w.recursive));
            }
            (None, WatcherMode::Poll) => r.ok(&fs_name, "local (polled: watcher.mode = \"poll\")"),
        }
    }
    native
}

fn access_summary(w: &WatchConfig) -> String {
    match needs_write(w) {
        Some(why) => format!("readable and writable ({why})"),
        None => "readable".into(),
    }
}

/// Why tl-ingest must write in this root, if it must.
fn needs_write(w: &WatchConfig) -> Option<String> {
    let why = |key: &str, action: &FileAction| match action {
        FileAction::Named(FileActionName::Keep) => None,
        FileAction::Named(FileActionName::Delete) => Some(format!("{key} = \"delete\"")),
        FileAction::MoveTo { move_to } => Some(format!(
            "{key} = {{ move_to = {:?} }}",
            move_to.display().to_string()
        )),
    };
    let reasons: Vec<String> = [
        why("after_upload", &w.after_upload),
        why("on_failure", &w.on_failure),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

/// The detail and fix when a root (or a `move_to` target) cannot be written
/// though files must be deleted or moved.
fn write_problem(root: &Path, w: &WatchConfig) -> Option<(String, String)> {
    let why = needs_write(w)?;
    if !writable(root) {
        return Some((
            format!("is not writable, but {why}"),
            "give the user tl-ingest runs as write permission on it, or use \"keep\"".into(),
        ));
    }
    for action in [&w.after_upload, &w.on_failure] {
        let FileAction::MoveTo { move_to } = action else {
            continue;
        };
        let target = if move_to.is_absolute() {
            move_to.clone()
        } else {
            root.join(move_to)
        };
        // It is created when needed: the nearest existing folder must be writable.
        let existing = target.ancestors().find(|a| a.exists());
        match existing {
            Some(dir) if dir.is_dir() && writable(dir) => {}
            Some(dir) => {
                return Some((
                    format!(
                        "files cannot be moved to {}: {} is not a writable folder",
                        target.display(),
                        dir.display()
                    ),
                    "make the move_to folder writable, or choose another".into(),
                ));
            }
            None => {
                return Some((
                    format!("files cannot be moved to {}", target.display()),
                    "choose a move_to folder that can be created".into(),
                ));
            }
        }
    }
    None
}

/// The inotify limit against the folders the native watcher will watch.
pub(super) async fn inotify_check(ctx: &Context, roots: Vec<(PathBuf, bool)>, r: &mut Report) {
    const NAME: &str = "inotify watches";
    if ctx.config.watcher.mode == WatcherMode::Poll {
        r.skip(NAME, "not used (watcher.mode = \"poll\")");
        return;
    }
    if roots.is_empty() {
        r.skip(NAME, "no local folder to watch");
        return;
    }
    let limit = match std::fs::read_to_string(INOTIFY_LIMIT)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    {
        Some(l) => l,
        None => {
            r.skip(NAME, &format!("cannot read {INOTIFY_LIMIT} (not Linux?)"));
            return;
        }
    };
    let cap = limit.saturating_add(1).min(MAX_FOLDERS_COUNTED);
    let counted = tokio::task::spawn_blocking(move || count_folders(&roots, cap)).await;
    let Ok(count) = counted else {
        r.skip(NAME, "could not count the folders");
        return;
    };
    let suggested = (count.saturating_mul(2)).next_power_of_two().max(524_288);
    let raise = format!(
        "echo fs.inotify.max_user_watches={suggested} | sudo tee /etc/sysctl.d/90-tl-ingest.conf && sudo sysctl --system (or set watcher.mode = \"poll\")"
    );
    if count > limit {
        r.fail(
            NAME,
            &format!(
                "{}{count} folders to watch, but fs.inotify.max_user_watches is {limit}",
                if count >= cap { "at least " } else { "" }
            ),
            &raise,
        );
    } else if count >= cap {
        r.warn(
            NAME,
            &format!("more than {cap} folders to watch (stopped counting); limit {limit}"),
            "watch fewer, deeper trees, or set watcher.mode = \"poll\"",
        );
    } else if count.saturating_mul(4) > limit.saturating_mul(3) {
        r.warn(
            NAME,
            &format!(
                "{count} folders to watch, close to fs.inotify.max_user_watches = {limit} (other programs use watches too)"
            ),
            &raise,
        );
    } else {
        let folders = if count == 1 { "folder" } else { "folders" };
        r.ok(
            NAME,
            &format!("{count} {folders} to watch, fs.inotify.max_user_watches = {limit}"),
        );
    }
}

/// Folders under the roots (one per non-recursive root), up to `cap`.
fn count_folders(roots: &[(PathBuf, bool)], cap: u64) -> u64 {
    let mut count = 0u64;
    for (root, recursive) in roots {
        if !recursive {
            count += 1;
        } else {
            let walk = walkdir::WalkDir::new(root)
                .follow_links(false)
                .into_iter()
                .filter_entry(|e| e.file_type().is_dir());
            for entry in walk {
                if entry.is_ok() {
                    count += 1;
                }
                if count >= cap {
                    return count;
                }
            }
        }
        if count >= cap {
            return count;
        }
    }
    count
}
