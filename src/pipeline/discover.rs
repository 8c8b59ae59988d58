//! Finding candidate files: walking folders, filtering names with the
//! watch's globs, and recording what is found in the ledger.
//!
//! Only regular files are candidates (FIFOs, sockets and devices are never
//! opened); symlinks to files are followed, symlinks to folders are not (no
//! loops). The walk runs on a blocking thread and hands files over a
//! bounded channel, so memory does not grow with the size of the tree.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use tokio::sync::mpsc;

use super::eligibility::kind_from_extension;
use crate::config::WatchConfig;
use crate::ledger::{Discovery, FileState, Ledger, LedgerError, NewFile};

/// Which names a watch takes.
#[derive(Debug, Clone)]
pub struct Filter {
    /// `None`: the default media extensions.
    include: Option<GlobSet>,
    exclude: GlobSet,
    /// Folders (relative to the root) that files are moved into after
    /// upload or failure: never picked up again.
    skip_dirs: Vec<PathBuf>,
    /// Also take `*.urls` lists (the daemon reads them; `upload` does not).
    url_lists: bool,
}

fn glob_set(globs: &[String]) -> Result<GlobSet, globset::Error> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(Glob::new(g)?);
    }
    b.build()
}

impl Filter {
    pub fn new(watch: &WatchConfig) -> Result<Filter, globset::Error> {
        let include = if watch.include.is_empty() {
            None
        } else {
            Some(glob_set(&watch.include)?)
        };
        let root = std::path::absolute(&watch.path).unwrap_or_else(|_| watch.path.clone());
        let skip_dirs = [&watch.after_upload, &watch.on_failure]
            .into_iter()
            .filter_map(|a| match a {
                crate::config::FileAction::MoveTo { move_to } if move_to.is_absolute() => {
                    move_to.strip_prefix(&root).ok().map(Path::to_path_buf)
                }
                crate::config::FileAction::MoveTo { move_to } => Some(move_to.clone()),
                crate::config::FileAction::Named(_) => None,
            })
            .collect();
        Ok(Filter {
            include,
            exclude: glob_set(&watch.exclude)?,
            skip_dirs,
            url_lists: false,
        })
    }

    /// Take `*.urls` lists too.
    pub fn with_url_lists(mut self) -> Filter {
        self.url_lists = true;
        self
    }

    /// `rel` is the path relative to the watched root.
    pub fn accepts(&self, rel: &Path) -> bool {
        if self.excluded(rel) {
            return false;
        }
        if self.url_lists && self.is_url_list(rel) {
            return true;
        }
        match &self.include {
            Some(set) => set.is_match(rel),
            None => kind_from_extension(rel).is_some(),
        }
    }

    /// A list of URLs to ingest (`*.urls`), not excluded.
    pub fn is_url_list(&self, rel: &Path) -> bool {
        rel.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("urls"))
            && !self.excluded(rel)
    }

    fn excluded(&self, rel: &Path) -> bool {
        self.exclude.is_match(rel) || self.skip_dirs.iter().any(|d| rel.starts_with(d))
    }
}

/// The ledger's view of a file on disk.
pub fn new_file(path: &Path, meta: &std::fs::Metadata, user_metadata: Option<&str>) -> NewFile {
    NewFile {
        path_bytes: path.as_os_str().as_bytes().to_vec(),
        path: path.to_string_lossy().into_owned(),
        size: meta.len(),
        mtime_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
        device: meta.dev(),
        inode: meta.ino(),
        user_metadata: user_metadata.map(str::to_string),
        origin: None,
    }
}

/// The path the ledger stores as raw bytes (names need not be UTF-8).
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// Same size, mtime and inode as recorded.
pub fn same_stat(a: &NewFile, size: i64, mtime_ns: i64, inode: i64) -> bool {
    i64::try_from(a.size).ok() == Some(size)
        && a.mtime_ns == mtime_ns
        && i64::try_from(a.inode).ok() == Some(inode)
}

/// Files recorded together at most (one read, one transaction).
const BATCH: usize = 512;

/// What a walk found, for the command's summary.
#[derive(Debug, Default, Clone)]
pub struct WalkReport {
    /// Every candidate path, in walk order.
    pub paths: Vec<PathBuf>,
    /// The record of each path, in the same order.
    pub ids: Vec<i64>,
    /// Records that were already finished as failed and were queued again.
    pub requeued: usize,
    /// Problems met on the way (unreadable folders, vanished entries).
    pub problems: Vec<String>,
}

/// Walk `roots` (files or folders, recursively), record every candidate in
/// the ledger, and return what was found. A file named directly is taken
/// whatever its extension; files inside folders pass `filter`. With
/// `requeue_failed_before`, a file whose newest record failed before that
/// instant (Unix ms) is queued again.
pub async fn discover(
    ledger: &Ledger,
    roots: &[PathBuf],
    filter: &Filter,
    user_metadata: Option<&str>,
    requeue_failed_before: Option<i64>,
) -> Result<WalkReport, LedgerError> {
    let (tx, mut rx) = mpsc::channel::<Result<(PathBuf, std::fs::Metadata), String>>(256);
    let roots = roots.to_vec();
    let filter = filter.clone();
    let walker = tokio::task::spawn_blocking(move || walk(&roots, &filter, &tx));
    let mut report = WalkReport::default();
    // A full disk or a lost connection is waited out (the ledger says so
    // once), not a failed run.
    let never = tokio_util::sync::CancellationToken::new();
    let mut batch: Vec<(PathBuf, NewFile)> = Vec::with_capacity(BATCH);
    while let Some(item) = rx.recv().await {
        // Whatever the walk has found meanwhile goes in the same batch:
        // one read for the files the ledger knows, one transaction for
        // the rest (see `Ledger::discover_many`).
        let mut next = Some(item);
        while let Some(item) = next.take() {
            match item {
                Ok((path, meta)) => {
                    let found = new_file(&path, &meta, user_metadata);
                    batch.push((path, found));
                }
                Err(problem) => {
                    tracing::warn!(error = %problem, "skipping while walking");
                    report.problems.push(problem);
                }
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let files: Vec<NewFile> = batch.iter().map(|(_, f)| f.clone()).collect();
        let discoveries = super::until_recorded(
            &never,
            "cannot record the files; waiting for the ledger",
            || ledger.discover_many(&files),
        )
        .await?;
        for ((path, _), discovery) in batch.drain(..).zip(discoveries) {
            if let Discovery::Known {
                id,
                state: FileState::Failed,
            } = discovery
                && let Some(before) = requeue_failed_before
                && super::until_recorded(
                    &never,
                    "cannot requeue the file; waiting for the ledger",
                    || ledger.requeue_failed_before(id, before),
                )
                .await?
            {
                report.requeued += 1;
            }
            let id = match discovery {
                Discovery::New(id) | Discovery::Changed(id) | Discovery::Known { id, .. } => id,
            };
            report.paths.push(path);
            report.ids.push(id);
        }
    }
    if let Err(e) = walker.await {
        report
            .problems
            .push(format!("the folder walk stopped: {e}"));
    }
    Ok(report)
}

/// A candidate file and its metadata, or a problem met on the way.
pub type Found = Result<(PathBuf, std::fs::Metadata), String>;

fn walk(roots: &[PathBuf], filter: &Filter, tx: &mpsc::Sender<Found>) {
    for root in roots {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.clone());
        let meta = match std::fs::metadata(&root) {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("{}: {e}", root.display())));
                continue;
            }
        };
        if meta.is_file() {
            if tx.blocking_send(Ok((root, meta))).is_err() {
                return;
            }
            continue;
        }
        if !walk_tree(&root, &root, true, filter, &mut |found| {
            tx.blocking_send(found).is_ok()
        }) {
            return;
        }
    }
}

/// Walk `start` (a folder inside the watched `root`, or the root itself),
/// handing every regular file that passes `filter` (matched on its path
/// relative to `root`) to `sink`, which returns false to stop the walk.
/// Returns false if the sink stopped it.
pub fn walk_tree(
    root: &Path,
    start: &Path,
    recursive: bool,
    filter: &Filter,
    sink: &mut dyn FnMut(Found) -> bool,
) -> bool {
    let mut walker = walkdir::WalkDir::new(start).follow_links(false);
    if !recursive {
        walker = walker.max_depth(1);
    }
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                if !sink(Err(e.to_string())) {
                    return false;
                }
                continue;
            }
        };
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        if !filter.accepts(rel) {
            continue;
        }
        // Regular files, and symlinks that lead to one.
        let meta = if ft.is_symlink() {
            std::fs::metadata(entry.path())
        } else {
            entry.metadata().map_err(std::io::Error::other)
        };
        let keep_going = match meta {
            Ok(m) if m.is_file() => sink(Ok((entry.into_path(), m))),
            Ok(_) => {
                tracing::debug!(path = %entry.path().display(), "not a regular file");
                true
            }
            Err(e) => sink(Err(format!("{}: {e}", entry.path().display()))),
        };
        if !keep_going {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_takes_media_and_drops_partials() {
        let f = Filter::new(&WatchConfig::for_path("/in".into())).expect("filter");
        assert!(f.accepts(Path::new("a.mp4")));
        assert!(f.accepts(Path::new("sub/dir/B.MOV")));
        assert!(!f.accepts(Path::new("notes.txt")));
        assert!(!f.accepts(Path::new(".hidden.mp4")));
        assert!(!f.accepts(Path::new("sub/.x/a.mp4")));
        assert!(!f.accepts(Path::new("a.mp4.part")));
        assert!(!f.accepts(Path::new("a.crdownload")));
    }

    #[test]
    fn move_targets_inside_the_root_are_never_picked_up() {
        let mut w = WatchConfig::for_path("/in".into());
        w.after_upload = crate::config::FileAction::MoveTo {
            move_to: "done".into(),
        };
        w.on_failure = crate::config::FileAction::MoveTo {
            move_to: "/in/failed".into(),
        };
        let f = Filter::new(&w).expect("filter");
        assert!(f.accepts(Path::new("new/clip.mp4")));
        assert!(!f.accepts(Path::new("done/clip.mp4")));
        assert!(!f.accepts(Path::new("failed/x/clip.mp4")));
        assert!(f.is_url_list(Path::new("batch.urls")));
        assert!(!f.is_url_list(Path::new("done/batch.urls")));
    }

    #[test]
    fn include_globs_replace_the_default() {
        let mut w = WatchConfig::for_path("/in".into());
        w.include = vec!["**/*.raw".into()];
        let f = Filter::new(&w).expect("filter");
        assert!(f.accepts(Path::new("x/y.raw")));
        assert!(!f.accepts(Path::new("y.mp4")));
    }
}
