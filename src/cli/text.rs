//! Text for people at a terminal: sizes and ages in words, widths in
//! terminal columns (a CJK character or an emoji takes two), and colours.

use std::io::IsTerminal;

use anstyle::{AnsiColor, Style};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// A size for people: SI units (`40.0 kB`).
pub(crate) fn human_size(bytes: i64) -> String {
    bytesize::ByteSize(u64::try_from(bytes).unwrap_or(0))
        .display()
        .si()
        .to_string()
}

/// How long ago `then_ms` was, in one unit: `12s ago`, `3m ago`, `5h ago`,
/// `2d ago`.
pub(crate) fn ago(now_ms: i64, then_ms: i64) -> String {
    format!("{} ago", span(now_ms.saturating_sub(then_ms)))
}

/// A span of time in its largest sensible unit: `12s`, `3m`, `5h`, `2d`.
pub(crate) fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How many terminal columns `text` takes.
pub(crate) fn columns(text: &str) -> usize {
    text.width()
}

/// `text` followed by spaces up to `width` columns (`format!`'s `{:<w$}`
/// counts `char`s, not columns).
pub(crate) fn pad(text: &str, width: usize) -> String {
    let mut padded = text.to_string();
    padded.extend(std::iter::repeat_n(
        ' ',
        width.saturating_sub(columns(text)),
    ));
    padded
}

/// `text` in at most `width` columns, cut in the middle with `…`.
pub(crate) fn shorten_middle(text: &str, width: usize) -> String {
    if columns(text) <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    // The end (the file name) says more than the start: keep more of it.
    let keep = width - 1;
    let head = keep / 3;
    let tail = keep - head;
    let mut out = take_columns(text.chars(), head);
    out.push('…');
    let end: String = take_columns(text.chars().rev(), tail);
    out.extend(end.chars().rev());
    out
}

/// The leading `chars` that fit in `width` columns.
fn take_columns(chars: impl Iterator<Item = char>, width: usize) -> String {
    let mut used = 0;
    chars
        .take_while(|c| {
            used += c.width().unwrap_or(0);
            used <= width
        })
        .collect()
}

/// Whether to colour stdout: a terminal, and no `NO_COLOR`, no `TERM=dumb`.
pub(crate) fn colour_stdout() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

const fn fg(colour: AnsiColor) -> Style {
    Style::new().fg_color(Some(anstyle::Color::Ansi(colour)))
}

pub(crate) const GREEN: Style = fg(AnsiColor::Green);
pub(crate) const YELLOW: Style = fg(AnsiColor::Yellow);
pub(crate) const BLUE: Style = fg(AnsiColor::Blue);
pub(crate) const CYAN: Style = fg(AnsiColor::Cyan);
pub(crate) const RED: Style = fg(AnsiColor::Red);
pub(crate) const BOLD_RED: Style = RED.bold();
pub(crate) const BOLD: Style = Style::new().bold();
pub(crate) const DIM: Style = Style::new().dimmed();

/// `text` in `style`, and back to plain after it.
pub(crate) fn paint(text: &str, style: Style) -> String {
    format!("{style}{text}{style:#}")
}

/// A state's colour.
fn state_style(state: &str) -> Style {
    match state {
        "ready" | "indexed" => GREEN,
        "failed" => BOLD_RED,
        "duplicate" => CYAN,
        "skipped" => DIM,
        "uploading" | "processing" | "indexing" => BLUE,
        _ => YELLOW, // discovered, queued
    }
}

/// `state` padded to `width`, coloured as its state when `colour`.
pub(crate) fn state_cell(state: &str, width: usize, colour: bool) -> String {
    let padded = pad(state, width);
    if colour {
        paint(&padded, state_style(state))
    } else {
        padded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_shortening() {
        assert_eq!(ago(100_000, 88_000), "12s ago");
        assert_eq!(ago(1_000_000, 820_000), "3m ago");
        assert_eq!(ago(3 * 86_400_000, 86_400_000), "2d ago");
        assert_eq!(ago(0, 5000), "0s ago", "a clock that went back");
        assert_eq!(shorten_middle("short", 10), "short");
        let s = shorten_middle("/srv/media/inbox/2024/holiday/very-long-name.mp4", 20);
        assert_eq!(s.chars().count(), 20);
        assert!(
            s.starts_with("/srv/") && s.ends_with("-name.mp4") && s.contains('…'),
            "{s}"
        );
    }

    #[test]
    fn wide_characters_take_two_columns() {
        let name = "/srv/映画/家族の休日の記録-🎬🎉.mp4";
        assert_eq!(columns("映画"), 4);
        assert_eq!(columns("🎬"), 2);
        for width in 6..columns(name) {
            let s = shorten_middle(name, width);
            assert!(columns(&s) <= width, "{width}: {s}");
            // A wide character that does not fit leaves a column, at each end.
            assert!(columns(&s) + 2 >= width, "{width}: {s}");
            assert!(s.ends_with(".mp4") && s.contains('…'), "{s}");
        }
        assert_eq!(columns(&pad("映画", 6)), 6);
        assert_eq!(pad("映画", 6), "映画  ");
        assert_eq!(pad("toolong", 3), "toolong");
    }

    #[test]
    fn colours_are_the_ansi_codes_and_only_when_asked() {
        assert_eq!(
            state_cell("processing", 10, true),
            "\x1b[34mprocessing\x1b[0m"
        );
        assert_eq!(state_cell("ready", 7, true), "\x1b[32mready  \x1b[0m");
        assert_eq!(
            state_cell("failed", 0, true),
            "\x1b[1m\x1b[31mfailed\x1b[0m"
        );
        assert_eq!(state_cell("skipped", 0, true), "\x1b[2mskipped\x1b[0m");
        assert_eq!(state_cell("queued", 7, false), "queued ");
        assert_eq!(paint("x", BOLD), "\x1b[1mx\x1b[0m");
    }
}
