//! The filesystem a SQLite ledger lives on: how much room it has left,
//! whether it takes writes, and which mount it is. `status` and `doctor`
//! read it to tell an operator why the ledger stopped writing (the daemon
//! itself learns it from its writes, see `health`).

use std::path::{Path, PathBuf};

use super::{Ledger, LedgerError, engine::stmt};

/// Less free space than this cannot take a ledger's next WAL pages: full.
pub const NEARLY_FULL: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Bytes free to this user.
    pub free: u64,
    pub total: u64,
    pub read_only: bool,
    /// The mount point and filesystem type, when /proc says.
    pub mount: Option<(PathBuf, String)>,
}

impl Disk {
    pub fn is_full(&self) -> bool {
        self.free < NEARLY_FULL
    }

    /// "/var (ext4)", or the folder when the mount is unknown.
    pub fn where_(&self, dir: &Path) -> String {
        match &self.mount {
            Some((at, fs)) => format!("{} ({fs})", at.display()),
            None => dir.display().to_string(),
        }
    }
}

/// The folder holding a ledger file.
pub fn folder_of(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The filesystem holding `dir`.
pub fn disk_of(dir: &Path) -> Option<Disk> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(Disk {
        free: st.f_bavail.saturating_mul(st.f_frsize),
        total: st.f_blocks.saturating_mul(st.f_frsize),
        read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        mount: mount_of(dir),
    })
}

/// The longest mount point in /proc/self/mounts that holds `dir`.
fn mount_of(dir: &Path) -> Option<(PathBuf, String)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, at, fs) = (f.next()?, f.next()?, f.next()?);
            // Spaces in mount points are written as \040.
            let at = PathBuf::from(at.replace("\\040", " "));
            dir.starts_with(&at).then(|| (at, fs.to_string()))
        })
        .max_by_key(|(at, _)| at.as_os_str().len())
}

impl Ledger {
    /// When the last write to any record went through (Unix ms).
    pub async fn last_write(&self) -> Result<Option<i64>, LedgerError> {
        Ok(stmt("SELECT max(updated_at) FROM files")
            .scalar_one::<Option<i64>>(&self.pool)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_has_room_and_a_mount() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = disk_of(dir.path()).expect("statvfs");
        assert!(disk.total > 0);
        assert!(!disk.read_only);
        let (at, fs) = disk.mount.expect("a mount");
        assert!(
            dir.path().starts_with(&at)
                || std::fs::canonicalize(dir.path()).is_ok_and(|p| p.starts_with(&at))
        );
        assert!(!fs.is_empty());
    }
}
