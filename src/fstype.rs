//! Is a folder on a network (or FUSE) filesystem? inotify sees only local
//! changes, so such roots are polled instead.

use std::path::Path;

/// `statfs` magic numbers of filesystems whose changes inotify may miss.
const NETWORK_FS: &[(i64, &str)] = &[
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x6573_5546, "FUSE"),
    (0x0102_1997, "9P"),
    (0x00C3_6400, "Ceph"),
    (0x5346_414F, "AFS"),
    (0x6B41_4653, "AFS"),
    (0x7461_636F, "OCFS2"),
    (0x0116_1970, "GFS2"),
];

/// The network filesystem `path` is on, if it is on one.
pub fn network_fs(path: &Path) -> Option<&'static str> {
    let st = rustix::fs::statfs(path).ok()?;
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    NETWORK_FS
        .iter()
        .find(|(m, _)| *m == magic || *m == (magic & 0xFFFF_FFFF))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_local() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(network_fs(dir.path()), None);
    }
}
