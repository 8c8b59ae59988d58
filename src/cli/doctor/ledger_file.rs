//! An SQLite ledger: its file (integrity, read only), its filesystem, and
//! the free space beside it.

use std::path::{Path, PathBuf};

use super::report::Report;
use super::writable;
use crate::cli::Context;
use crate::fstype::network_fs;
use crate::ledger::diagnose::{self, Integrity};
use crate::ledger::disk::disk_of;

/// Under this much free space beside the ledger, a warning.
const MIN_FREE: u64 = 1_000_000_000;

/// Integrity, filesystem and free space of the ledger.
pub(super) async fn ledger_checks(ctx: &Context, r: &mut Report) {
    let path = ctx.ledger_path();
    let path = std::path::absolute(&path).unwrap_or(path);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        r.fail(
            "ledger",
            &format!("its folder {} does not exist", dir.display()),
            "create the folder, or set ledger.path (StateDirectory= under systemd)",
        );
        return;
    }
    file_check(&path, &dir, r).await;
    filesystem_check(&dir, r);
    free_disk_check(&dir, r);
}

/// The ledger file: not there yet (and creatable), or a file whose
/// integrity is checked.
async fn file_check(path: &Path, dir: &Path, r: &mut Report) {
    const NAME: &str = "ledger";
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if writable(dir) {
                r.ok(
                    NAME,
                    &format!(
                        "{} does not exist yet; it is created on first use",
                        path.display()
                    ),
                );
            } else {
                r.fail(
                    NAME,
                    &format!("{} cannot be created: {} is not writable", path.display(), dir.display()),
                    "give the user tl-ingest runs as write permission on the folder, or set ledger.path",
                );
            }
        }
        Err(e) => r.fail(
            NAME,
            &format!("{}: {e}", path.display()),
            "give the user tl-ingest runs as access to it",
        ),
        Ok(m) if !m.is_file() => r.fail(
            NAME,
            &format!("{} is not a file", path.display()),
            "set ledger.path to a file",
        ),
        Ok(_) => integrity(path, r).await,
    }
}

/// Local and writable: SQLite's locking is unreliable on a network
/// filesystem.
fn filesystem_check(dir: &Path, r: &mut Report) {
    const NAME: &str = "ledger filesystem";
    match network_fs(dir) {
        Some(fs) => r.warn(
            NAME,
            &format!(
                "{} is on {fs}: SQLite locking there is unreliable",
                dir.display()
            ),
            "put ledger.path on a local disk (e.g. /var/lib/tl-ingest)",
        ),
        None => match disk_of(dir) {
            Some(d) if d.read_only => r.fail(
                NAME,
                &format!("{} is mounted read-only", d.where_(dir)),
                "remount it read-write or move ledger.path; the daemon waits and resumes by itself",
            ),
            Some(d) => r.ok(NAME, &format!("local: {}", d.where_(dir))),
            None => r.ok(NAME, "local"),
        },
    }
}

/// Free space beside the ledger: full fails, under [`MIN_FREE`] warns.
fn free_disk_check(dir: &Path, r: &mut Report) {
    const NAME: &str = "free disk";
    let Some(d) = disk_of(dir) else {
        r.skip(NAME, "cannot tell: statvfs failed");
        return;
    };
    let size = |n: u64| bytesize::ByteSize(n).display().si().to_string();
    let shown = format!(
        "{} free of {} on {}",
        size(d.free),
        size(d.total),
        d.where_(dir)
    );
    if d.is_full() {
        r.fail(
            NAME,
            &format!("the ledger's disk is full: {shown}"),
            "free some space there: the daemon waits for it and resumes by itself, nothing is lost",
        );
    } else if d.free < MIN_FREE {
        r.warn(
            NAME,
            &format!("only {shown}"),
            "free some space: the ledger and SQLite's journal need room to grow",
        );
    } else {
        r.ok(NAME, &shown);
    }
}

/// The ledger's integrity, checked read only: the file is never changed,
/// whatever it holds.
async fn integrity(path: &Path, r: &mut Report) {
    const NAME: &str = "ledger integrity";
    let shown = path.display();
    let fix_corrupt = "stop the daemon, move the file aside (a new ledger is started) or restore a backup; `sqlite3 FILE .recover` may save its records";
    match diagnose::sqlite_integrity(path).await {
        Integrity::Ok => r.ok(NAME, &format!("{shown}: ok")),
        Integrity::NoSchema => r.fail(
            NAME,
            &format!("{shown} is an SQLite file without a tl-ingest schema"),
            "set ledger.path to the ledger, or move this file aside",
        ),
        Integrity::Unopenable(e) => r.fail(NAME, &format!("cannot open {shown}: {e}"), fix_corrupt),
        Integrity::SchemaUnreadable(e) => r.fail(NAME, &format!("{shown}: {e}"), fix_corrupt),
        Integrity::Problems(rows) => {
            let first = rows.first().cloned().unwrap_or_default();
            r.fail(
                NAME,
                &format!("{shown}: {} problem(s), first: {first}", rows.len()),
                fix_corrupt,
            );
        }
        Integrity::NotSqlite(e) => r.fail(
            NAME,
            &format!("{shown} is not a valid SQLite ledger: {e}"),
            fix_corrupt,
        ),
    }
}
