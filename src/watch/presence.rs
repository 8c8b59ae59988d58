//! Is a watched folder still there, and still the same folder? inotify's
//! watches die with the folder they were set on: a root that is removed,
//! moved away or unmounted (and perhaps created or mounted again) is seen
//! by nothing else. The daemon looks at each root's device and inode every
//! few seconds (and at once when the watcher reports the root removed or
//! moved), and this module says what a look means: gone, back, or replaced
//! by another folder at the same path (see README.md, "Watched folders that
//! go away").

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Which folder a path names: a folder removed and made again, or a
/// filesystem mounted on it or unmounted from it, is another folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub device: u64,
    pub inode: u64,
}

/// The folder at `path`, or why there is none (blocking: a stat).
pub fn identify(path: &Path) -> Result<Identity, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(Identity {
            device: m.dev(),
            inode: m.ino(),
        }),
        Ok(_) => Err("it is not a folder".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A file that is not at its path: did it go with its folder (the folder
/// removed, or the filesystem it was on unmounted, so that the folder now
/// at its path is on another device than `device`, the file's)? Then it may
/// come back with the folder, and is waited for instead of failed; the
/// reason. `None`: the folder is there as it was, the file alone is gone
/// (blocking: a stat).
pub fn went_with_its_folder(file: &Path, device: Option<i64>) -> Option<String> {
    let folder = file.parent()?;
    match std::fs::metadata(folder) {
        Ok(m) if m.is_dir() => {
            let moved = device.is_some_and(|d| i64::try_from(m.dev()).ok() != Some(d));
            moved.then(|| {
                format!(
                    "its folder {} is not on the filesystem the file was on (unmounted?)",
                    folder.display()
                )
            })
        }
        Ok(_) => Some(format!(
            "its folder {} is not a folder now",
            folder.display()
        )),
        Err(e) => Some(format!(
            "its folder {} is gone (removed or unmounted): {e}",
            folder.display()
        )),
    }
}

/// What a look at a root found, against what was known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// As it was: present and the same folder, or still gone.
    None,
    /// It was there and is not now (the reason).
    Gone(String),
    /// It was gone and is there again.
    Back(Identity),
    /// Another folder is at the path than the one watched (removed and made
    /// again, or mounted on, or unmounted, between two looks).
    Replaced(Identity),
}

/// One root's presence, as the daemon last saw it.
#[derive(Debug, Clone)]
pub struct Presence {
    /// The folder watched; `None` while it is gone.
    identity: Option<Identity>,
    /// When it went (Unix ms), while it is gone.
    gone_since: Option<i64>,
}

impl Presence {
    /// A root found present, as `identity`.
    pub fn present(identity: Identity) -> Presence {
        Presence {
            identity: Some(identity),
            gone_since: None,
        }
    }

    pub fn is_gone(&self) -> bool {
        self.gone_since.is_some()
    }

    /// Since when it is gone (Unix ms).
    pub fn gone_since(&self) -> Option<i64> {
        self.gone_since
    }

    /// Take in a look at the root (`seen`, at `now_ms`) and say what
    /// changed. A look that did not answer is not a look: the caller does
    /// not call this for a stat that hung.
    pub fn observe(&mut self, seen: Result<Identity, String>, now_ms: i64) -> Change {
        match (seen, self.identity) {
            (Ok(id), Some(known)) if id == known && !self.is_gone() => Change::None,
            (Ok(id), _) if self.is_gone() => {
                *self = Presence::present(id);
                Change::Back(id)
            }
            (Ok(id), _) => {
                *self = Presence::present(id);
                Change::Replaced(id)
            }
            (Err(_), _) if self.is_gone() => Change::None,
            (Err(why), _) => self.mark_gone(why, now_ms),
        }
    }

    /// It is gone (the watcher said so, or it could not be watched again).
    pub fn mark_gone(&mut self, why: String, now_ms: i64) -> Change {
        if self.is_gone() {
            return Change::None;
        }
        self.identity = None;
        self.gone_since = Some(now_ms);
        Change::Gone(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Identity = Identity {
        device: 1,
        inode: 10,
    };
    const B: Identity = Identity {
        device: 2,
        inode: 10,
    };

    #[test]
    fn gone_is_said_once_then_back_once() {
        let mut p = Presence::present(A);
        assert_eq!(p.observe(Ok(A), 1), Change::None);
        assert_eq!(
            p.observe(Err("missing".into()), 2),
            Change::Gone("missing".into())
        );
        assert_eq!(p.gone_since(), Some(2));
        assert_eq!(p.observe(Err("missing".into()), 3), Change::None);
        assert_eq!(p.observe(Ok(B), 4), Change::Back(B));
        assert!(!p.is_gone());
        assert_eq!(p.observe(Ok(B), 5), Change::None);
    }

    #[test]
    fn another_folder_at_the_path_is_a_replacement() {
        let mut p = Presence::present(A);
        assert_eq!(p.observe(Ok(B), 1), Change::Replaced(B));
        assert_eq!(p.observe(Ok(B), 2), Change::None);
    }

    #[test]
    fn marked_gone_by_the_watcher_then_the_same_folder_is_back() {
        let mut p = Presence::present(A);
        assert_eq!(
            p.mark_gone("removed".into(), 1),
            Change::Gone("removed".into())
        );
        assert_eq!(p.mark_gone("removed".into(), 2), Change::None);
        assert_eq!(p.observe(Ok(A), 3), Change::Back(A));
    }

    #[test]
    fn a_file_gone_alone_is_gone_and_one_gone_with_its_folder_is_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let dev = identify(&sub).expect("folder").device;
        let dev = i64::try_from(dev).ok();
        let file = sub.join("a.mp4");
        assert_eq!(
            went_with_its_folder(&file, dev),
            None,
            "the folder is there"
        );
        assert_eq!(went_with_its_folder(&file, None), None);
        let other = dev.map(|d| d + 1);
        let why = went_with_its_folder(&file, other).expect("another filesystem");
        assert!(why.contains("unmounted"), "{why}");
        std::fs::remove_dir(&sub).expect("rmdir");
        let why = went_with_its_folder(&file, dev).expect("folder gone");
        assert!(why.contains("is gone"), "{why}");
    }

    #[test]
    fn identify_tells_folders_apart_and_names_what_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        std::fs::create_dir(&a).expect("mkdir");
        let first = identify(&a).expect("a folder");
        std::fs::remove_dir(&a).expect("rmdir");
        assert!(identify(&a).is_err());
        // Another folder (kept, so that its inode cannot be reused for `a`).
        let keep = dir.path().join("keep");
        std::fs::create_dir(&keep).expect("mkdir");
        std::fs::create_dir(&a).expect("mkdir again");
        let second = identify(&a).expect("a folder again");
        assert_eq!(identify(&keep).expect("keep").device, first.device);
        assert_ne!(identify(&keep), Ok(second));
        std::fs::write(dir.path().join("f"), b"x").expect("file");
        assert!(identify(&dir.path().join("f")).is_err());
    }
}
