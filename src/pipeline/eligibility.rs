//! Which files are media worth sending, decided before a byte leaves.
//!
//! A file is a candidate by its extension (see [`crate::pipeline::discover`]);
//! here its first bytes name its type. Content plainly identified as
//! something else (text, archives, documents, executables) is skipped with
//! the reason; content the check cannot recognise is sent, and the platform
//! decides. Empty and over-limit files are skipped before anything is read
//! beyond the first bytes.

use std::path::Path;

use bytesize::ByteSize;

use crate::config::UploadConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Video,
    Audio,
    Image,
}

pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "qt", "mkv", "webm", "avi", "wmv", "flv", "mpg", "mpeg", "mts", "m2ts",
    "ts", "3gp", "3g2", "mxf", "ogv", "vob",
];
pub const AUDIO_EXTENSIONS: &[&str] = &[
    "mp3", "wav", "flac", "m4a", "aac", "ogg", "oga", "opus", "wma", "aif", "aiff",
];
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif",
];

/// How many leading bytes the content check reads.
pub const HEAD_LEN: usize = 8192;

/// The media kind an extension names, if any (case-insensitive).
pub fn kind_from_extension(path: &Path) -> Option<MediaKind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    let ext = ext.as_str();
    if VIDEO_EXTENSIONS.contains(&ext) {
        Some(MediaKind::Video)
    } else if AUDIO_EXTENSIONS.contains(&ext) {
        Some(MediaKind::Audio)
    } else if IMAGE_EXTENSIONS.contains(&ext) {
        Some(MediaKind::Image)
    } else {
        None
    }
}

/// The platform's size limits, from `[upload]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_direct: u64,
    pub max_image: u64,
    pub max_multipart: u64,
    pub multipart_threshold: u64,
}

impl Limits {
    pub fn from_config(u: &UploadConfig) -> Limits {
        Limits {
            max_direct: u.max_direct_size.as_u64(),
            max_image: u.max_image_size.as_u64(),
            max_multipart: u.max_multipart_size.as_u64(),
            multipart_threshold: u.multipart_threshold.as_u64(),
        }
    }

    /// Video and audio above the threshold (or above what a direct upload
    /// takes) go up in chunks; images never do.
    pub fn multipart(&self, kind: MediaKind, size: u64) -> bool {
        kind != MediaKind::Image && size > self.multipart_threshold.min(self.max_direct)
    }
}

/// The kind of a hashed file: by the type its content was recognised as,
/// else by its name, else video (the platform decides).
pub fn kind_of(path: &Path, mime: Option<&str>) -> MediaKind {
    match mime.and_then(|m| m.split('/').next()) {
        Some("video") => MediaKind::Video,
        Some("audio") => MediaKind::Audio,
        Some("image") => MediaKind::Image,
        _ => kind_from_extension(path).unwrap_or(MediaKind::Video),
    }
}

impl MediaKind {
    /// The `type` of a multipart session.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Image => "image",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it; `mime` is what the content check recognised, if anything.
    Send {
        kind: MediaKind,
        mime: Option<String>,
    },
    Skip(String),
}

/// Judge a file by its size, name and first bytes.
pub fn judge(path: &Path, size: u64, head: &[u8], limits: &Limits) -> Verdict {
    if size == 0 {
        return Verdict::Skip("empty file".into());
    }
    let (kind, mime) = match infer::get(head) {
        Some(t) => match t.matcher_type() {
            infer::MatcherType::Video => (MediaKind::Video, Some(t.mime_type())),
            infer::MatcherType::Audio => (MediaKind::Audio, Some(t.mime_type())),
            infer::MatcherType::Image => (MediaKind::Image, Some(t.mime_type())),
            _ => {
                return Verdict::Skip(format!(
                    "not media: the content is {} ({})",
                    t.mime_type(),
                    t.extension()
                ));
            }
        },
        None if looks_like_text(head) => {
            return Verdict::Skip("not media: the content is text".into());
        }
        // Unrecognised: trust the name, and let the platform decide.
        None => (kind_from_extension(path).unwrap_or(MediaKind::Video), None),
    };
    let too_big = |limit: u64, what: &str| {
        Verdict::Skip(format!(
            "too large: {} is over the {} limit of {} for {what}",
            ByteSize(size).display().si(),
            "platform's",
            ByteSize(limit).display().si()
        ))
    };
    match kind {
        MediaKind::Image if size > limits.max_image => return too_big(limits.max_image, "images"),
        MediaKind::Video | MediaKind::Audio if size > limits.max_multipart => {
            return too_big(limits.max_multipart, "video and audio");
        }
        _ => {}
    }
    Verdict::Send {
        kind,
        mime: mime.map(str::to_string),
    }
}

/// UTF-8 with no control characters but whitespace: a text file, not a
/// recording. (A cut-off multi-byte character at the end is allowed.)
fn looks_like_text(head: &[u8]) -> bool {
    if head.is_empty() {
        return false;
    }
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&head[..e.valid_up_to()]) {
            Ok(t) => t,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    text.chars()
        .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\u{c}'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_direct: 200_000_000,
        max_image: 32_000_000,
        max_multipart: 10_000_000_000,
        multipart_threshold: 200_000_000,
    };
    const MP4: &[u8] = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom\0\0\0\x08free";
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn judge_name(name: &str, size: u64, head: &[u8]) -> Verdict {
        judge(Path::new(name), size, head, &LIMITS)
    }

    #[test]
    fn media_is_sent_with_its_type() {
        assert_eq!(
            judge_name("a.mp4", 100, MP4),
            Verdict::Send {
                kind: MediaKind::Video,
                mime: Some("video/mp4".into())
            }
        );
        assert!(matches!(
            judge_name("a.png", 100, PNG),
            Verdict::Send {
                kind: MediaKind::Image,
                ..
            }
        ));
    }

    #[test]
    fn empty_text_and_archives_are_skipped() {
        assert_eq!(
            judge_name("a.mp4", 0, b""),
            Verdict::Skip("empty file".into())
        );
        assert_eq!(
            judge_name("a.mp4", 12, b"hello world\n"),
            Verdict::Skip("not media: the content is text".into())
        );
        let Verdict::Skip(reason) = judge_name("a.mp4", 100, b"PK\x03\x04\x14\0\0\0\x08\0") else {
            panic!("zip must be skipped");
        };
        assert!(reason.starts_with("not media"), "{reason}");
        let Verdict::Skip(reason) = judge_name("a.mov", 100, b"%PDF-1.7\n%\xe2\xe3") else {
            panic!("pdf must be skipped");
        };
        assert!(reason.contains("pdf"), "{reason}");
    }

    #[test]
    fn unrecognised_content_is_sent_for_the_platform_to_judge() {
        let random: Vec<u8> = (0..512u32).map(|i| (i * 7919 % 251) as u8 | 0x80).collect();
        assert_eq!(
            judge_name("clip.mov", 512, &random),
            Verdict::Send {
                kind: MediaKind::Video,
                mime: None
            }
        );
        assert!(matches!(
            judge_name("song.flac", 512, &random),
            Verdict::Send {
                kind: MediaKind::Audio,
                mime: None
            }
        ));
    }

    #[test]
    fn size_limits_per_kind() {
        assert!(matches!(
            judge_name("a.png", 32_000_001, PNG),
            Verdict::Skip(_)
        ));
        assert!(matches!(
            judge_name("a.png", 32_000_000, PNG),
            Verdict::Send { .. }
        ));
        let Verdict::Skip(reason) = judge_name("a.mp4", 20_000_000_000, MP4) else {
            panic!("20 GB must be skipped");
        };
        assert!(reason.starts_with("too large"), "{reason}");
        assert!(matches!(
            judge_name("a.mp4", 200_000_000, MP4),
            Verdict::Send { .. }
        ));
    }

    #[test]
    fn extensions_case_insensitive() {
        assert_eq!(
            kind_from_extension(Path::new("X.MP4")),
            Some(MediaKind::Video)
        );
        assert_eq!(
            kind_from_extension(Path::new("a.Wav")),
            Some(MediaKind::Audio)
        );
        assert_eq!(kind_from_extension(Path::new("notes.txt")), None);
        assert_eq!(kind_from_extension(Path::new("noext")), None);
    }
}
