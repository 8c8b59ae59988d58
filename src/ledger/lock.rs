//! One daemon per ledger: an exclusive `flock` on `<ledger>.lock`, holding
//! the owner's pid and start time. The kernel drops the lock when the
//! process dies, however it dies, so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::Location;

/// Who holds a ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// Unix ms when it took the lock.
    pub since_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the ledger {ledger} is held by another daemon{}", .holder.pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held { ledger: PathBuf, holder: Holder },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for as long as it lives.
#[derive(Debug)]
pub struct LedgerLock {
    _file: File,
    path: PathBuf,
}

pub fn lock_path(ledger: &Path) -> PathBuf {
    let mut name = ledger.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    ledger.with_file_name(name)
}

fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    let mut lines = text.lines();
    Holder {
        pid: lines.next().and_then(|l| l.trim().parse().ok()),
        since_ms: lines.next().and_then(|l| l.trim().parse().ok()),
    }
}

impl LedgerLock {
    /// The lock of a SQLite ledger; none for a shared (PostgreSQL) one,
    /// where daemons coordinate through claims and leases.
    pub fn acquire_for(ledger: &Location) -> Result<Option<LedgerLock>, LockError> {
        match ledger {
            Location::Sqlite(path) => Self::acquire(path).map(Some),
            Location::Postgres(_) => Ok(None),
        }
    }

    /// Take the ledger, or say who has it.
    pub fn acquire(ledger: &Path) -> Result<LedgerLock, LockError> {
        let path = lock_path(ledger);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    ledger: ledger.to_path_buf(),
                    holder: read_holder(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}\n{}", std::process::id(), super::now_ms()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(LedgerLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who holds the ledger now, if anyone (for `status`).
    pub fn holder(ledger: &Path) -> Option<Holder> {
        let mut file = File::open(lock_path(ledger)).ok()?;
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(TryLockError::WouldBlock) => Some(read_holder(&mut file)),
            Err(TryLockError::Error(_)) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_the_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = dir.path().join("l.db");
        assert_eq!(LedgerLock::holder(&ledger), None);
        let first = LedgerLock::acquire(&ledger).expect("first");
        let holder = LedgerLock::holder(&ledger).expect("held");
        assert_eq!(holder.pid, Some(std::process::id()));
        match LedgerLock::acquire(&ledger) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder.pid, Some(std::process::id()))
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert_eq!(LedgerLock::holder(&ledger), None);
        LedgerLock::acquire(&ledger).expect("free again");
    }
}
