//! `tl-ingest history`: records, newest first, as a table, JSON lines or CSV.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, ValueEnum};

use super::text::{BOLD, ago, colour_stdout, human_size, pad, paint, shorten_middle, state_cell};
use super::{CliError, CliResult, Context, Globals};
use crate::ledger::query::HistoryFilter;
use crate::ledger::{FileState, Record, now_ms, rfc3339, to_ms};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned columns for people (100 columns wide).
    Table,
    /// One JSON object per line.
    Json,
    /// A header row, then one row per record.
    Csv,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only records in this state (repeatable).
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<FileState>,
    /// Only records discovered since then: a duration ago (`90m`, `2h`,
    /// `7d`) or a time (RFC 3339, e.g. `2025-01-31T12:00:00Z`, or a date).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub since: Option<i64>,
    /// Only records discovered before then (the same forms as --since).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub until: Option<i64>,
    /// Only records whose path (or URL) matches this glob (`*`, `?`,
    /// `[...]`; case-sensitive; `*` also matches `/`), e.g. '*/clips/*.mp4'.
    #[arg(long = "path", value_name = "GLOB")]
    pub path: Option<String>,
    /// At most this many records.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

fn parse_state(s: &str) -> Result<FileState, String> {
    FileState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = FileState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state {s:?}; one of: {}", names.join(", "))
    })
}

/// `2h`, `7d`, `90m` (ago) or an RFC 3339 time or a date, to Unix ms.
fn parse_when(s: &str) -> Result<i64, String> {
    parse_when_at(s, SystemTime::now())
}

fn parse_when_at(s: &str, now: SystemTime) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ago) = humantime::parse_duration(s) {
        let at = now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH);
        return Ok(to_ms(at));
    }
    parse_time(s).ok_or_else(|| {
        format!(
            "{s:?} is neither a duration ago (90m, 2h, 7d) nor a time \
             (RFC 3339 like 2025-01-31T12:00:00Z, or 2025-01-31)"
        )
    })
}

/// RFC 3339 with any offset (`Z`, `+02:00`, `-0500`), or a bare date (UTC
/// midnight).
fn parse_time(s: &str) -> Option<i64> {
    if s.len() == 10 {
        return humantime::parse_rfc3339(&format!("{s}T00:00:00Z"))
            .ok()
            .map(to_ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Some(to_ms(t));
    }
    // humantime knows only UTC: take a numeric offset off and apply it.
    let split = s.len().checked_sub(6)?;
    let (local, offset) = if s.is_char_boundary(split) && s[split..].contains(':') {
        s.split_at(split)
    } else {
        let split = s.len().checked_sub(5)?;
        if !s.is_char_boundary(split) {
            return None;
        }
        s.split_at(split)
    };
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = offset[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    Some(to_ms(local) - sign * (hours * 60 + minutes) * 60_000)
}

/// A record as JSON, as `history --format json` shows it (README.md,
/// "Commands"): written straight out for `history`, as a value by
/// [`record_json`]. `path` for a file, else `url`.
pub(crate) struct RecordJson<'a>(pub &'a Record);

impl serde::Serialize for RecordJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.0;
        let mut m = s.serialize_map(Some(15))?;
        m.serialize_entry("id", &r.id)?;
        match (&r.path, &r.url) {
            (Some(p), _) => m.serialize_entry("path", p)?,
            (None, Some(u)) => m.serialize_entry("url", u)?,
            (None, None) => m.serialize_entry("path", &None::<&str>)?,
        }
        m.serialize_entry("state", &r.state)?;
        m.serialize_entry("asset_id", &r.asset_id)?;
        m.serialize_entry("sha256", &r.sha256)?;
        m.serialize_entry("size", &r.size)?;
        m.serialize_entry("mime", &r.mime)?;
        m.serialize_entry("attempts", &r.attempts)?;
        m.serialize_entry("last_error", &r.last_error)?;
        m.serialize_entry("duplicate_of", &r.duplicate_of)?;
        m.serialize_entry("discovered_at", &rfc3339(r.discovered_at))?;
        m.serialize_entry("uploaded_at", &r.uploaded_at.map(rfc3339))?;
        m.serialize_entry("ready_at", &r.ready_at.map(rfc3339))?;
        m.serialize_entry("updated_at", &rfc3339(r.updated_at))?;
        m.serialize_entry("file_action", &r.file_action)?;
        m.end()
    }
}

/// A record's fields as JSON (see [`RecordJson`]).
pub fn record_json(r: &Record) -> serde_json::Value {
    serde_json::to_value(RecordJson(r)).unwrap_or(serde_json::Value::Null)
}

/// The CSV columns: the JSON fields, with both `path` and `url`.
const CSV_HEADER: [&str; 16] = [
    "id",
    "path",
    "url",
    "state",
    "asset_id",
    "sha256",
    "size",
    "mime",
    "attempts",
    "last_error",
    "duplicate_of",
    "discovered_at",
    "uploaded_at",
    "ready_at",
    "updated_at",
    "file_action",
];

fn csv_row(r: &Record) -> [String; 16] {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let time = |v: Option<i64>| v.map(rfc3339).unwrap_or_default();
    [
        r.id.to_string(),
        opt(&r.path),
        opt(&r.url),
        r.state.clone(),
        opt(&r.asset_id),
        opt(&r.sha256),
        num(r.size),
        opt(&r.mime),
        r.attempts.to_string(),
        opt(&r.last_error),
        num(r.duplicate_of),
        rfc3339(r.discovered_at),
        time(r.uploaded_at),
        time(r.ready_at),
        rfc3339(r.updated_at),
        opt(&r.file_action),
    ]
}

/// Buffered stdout that stops quietly when the reader goes away (`| head`)
/// and reports any other write error.
pub(crate) struct Stdout {
    w: std::io::BufWriter<std::io::Stdout>,
    closed: bool,
    error: Option<std::io::Error>,
}

impl Stdout {
    pub(crate) fn new() -> Stdout {
        Stdout {
            w: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            closed: false,
            error: None,
        }
    }

    /// Write `bytes`; false once nothing more should be written.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> bool {
        if self.closed {
            return false;
        }
        match self.w.write_all(bytes) {
            Ok(()) => true,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    pub(crate) fn line(&mut self, line: &str) -> bool {
        self.write(line.as_bytes()) && self.write(b"\n")
    }

    fn fail(&mut self, e: std::io::Error) {
        self.closed = true;
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            self.error = Some(e);
        }
    }

    /// Flush; a reader that went away is fine, anything else is an error.
    pub(crate) fn finish(mut self) -> Result<(), CliError> {
        if !self.closed
            && let Err(e) = self.w.flush()
        {
            self.fail(e);
        }
        match self.error.take() {
            Some(e) => Err(CliError::failed(format!("cannot write the output: {e}"))),
            None => Ok(()),
        }
    }
}

/// The table layout: fixed widths so rows stream out as they are read,
/// the path taking what is left of [`TABLE_WIDTH`].
struct Table {
    id: usize,
    path: usize,
    colour: bool,
    now: i64,
}

const TABLE_WIDTH: usize = 100;
const STATE_W: usize = 10; // "processing"
const SIZE_W: usize = 8; // "999.9 MB"
const AGE_W: usize = 8; // "364d ago"
const ASSET_W: usize = 24; // the platform's ids
const GAP: &str = "  ";

impl Table {
    fn new(max_id: i64, colour: bool) -> Table {
        let id = max_id.to_string().len().max(2);
        let fixed = id + STATE_W + SIZE_W + AGE_W + ASSET_W + 5 * GAP.len();
        Table {
            id,
            path: TABLE_WIDTH.saturating_sub(fixed).max(12),
            colour,
            now: now_ms(),
        }
    }

    fn header(&self) -> String {
        let line = format!(
            "{:>idw$}{GAP}{:<STATE_W$}{GAP}{:>SIZE_W$}{GAP}{:>AGE_W$}{GAP}{:<ASSET_W$}{GAP}{}",
            "ID",
            "STATE",
            "SIZE",
            "AGE",
            "ASSET",
            "PATH",
            idw = self.id
        );
        if self.colour {
            paint(&line, BOLD)
        } else {
            line
        }
    }

    fn row(&self, r: &Record) -> String {
        let size = r.size.map(human_size).unwrap_or_else(|| "-".into());
        let shown = r.path.as_deref().or(r.url.as_deref()).unwrap_or("");
        let line = format!(
            "{:>idw$}{GAP}{}{GAP}{:>SIZE_W$}{GAP}{:>AGE_W$}{GAP}{}{GAP}{}",
            r.id,
            state_cell(&r.state, STATE_W, self.colour),
            size,
            ago(self.now, r.discovered_at),
            pad(
                &shorten_middle(r.asset_id.as_deref().unwrap_or("-"), ASSET_W),
                ASSET_W
            ),
            shorten_middle(shown, self.path),
            idw = self.id
        );
        line.trim_end().to_string()
    }
}

enum Sink {
    Table(Table),
    Json,
    Csv,
}

/// One CSV record, quoted as needed, with its line end.
fn csv_line(fields: &[String]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::WriterBuilder::new()
        .buffer_capacity(1024)
        .from_writer(Vec::new());
    w.write_record(fields)?;
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

pub async fn run(globals: &Globals, args: HistoryArgs) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let ledger = ctx.read_ledger().await?;
    let failed = |e: crate::ledger::LedgerError| CliError::failed(e.to_string());
    let csv_failed = |e: csv::Error| CliError::failed(format!("cannot write CSV: {e}"));
    let filter = HistoryFilter {
        states: args.states,
        since: args.since,
        until: args.until,
        path_glob: args.path,
        limit: args.limit,
    };
    let mut stdout = Stdout::new();
    let sink = match args.format {
        Format::Table => {
            let max_id = ledger.max_record_id().await.map_err(failed)?;
            let table = Table::new(max_id, colour_stdout());
            stdout.line(&table.header());
            Sink::Table(table)
        }
        Format::Json => Sink::Json,
        Format::Csv => {
            let header = csv_line(&CSV_HEADER.map(String::from)).map_err(csv_failed)?;
            stdout.write(&header);
            Sink::Csv
        }
    };
    let mut csv_error = None;
    let mut json_error = None;
    let result = ledger
        .history_each(&filter, |r| match &sink {
            Sink::Table(t) => stdout.line(&t.row(&r)),
            Sink::Json => match serde_json::to_string(&RecordJson(&r)) {
                Ok(line) => stdout.line(&line),
                Err(e) => {
                    json_error = Some(e);
                    false
                }
            },
            Sink::Csv => match csv_line(&csv_row(&r)) {
                Ok(line) => stdout.write(&line),
                Err(e) => {
                    csv_error = Some(e);
                    false
                }
            },
        })
        .await;
    ledger.close().await;
    result.map_err(failed)?;
    if let Some(e) = csv_error {
        return Err(csv_failed(e));
    }
    if let Some(e) = json_error {
        return Err(CliError::failed(format!("cannot write JSON: {e}")));
    }
    stdout.finish()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_and_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = to_ms(now);
        assert_eq!(parse_when_at("2h", now), Ok(ms - 7_200_000));
        assert_eq!(parse_when_at("7d", now), Ok(ms - 7 * 86_400_000));
        assert_eq!(parse_when_at("90m", now), Ok(ms - 5_400_000));
        let utc = parse_when_at("2025-01-31T12:00:00Z", now).expect("utc");
        assert_eq!(parse_when_at("2025-01-31T14:00:00+02:00", now), Ok(utc));
        assert_eq!(parse_when_at("2025-01-31T07:00:00-0500", now), Ok(utc));
        assert_eq!(parse_when_at("2025-01-31T12:00:00.000Z", now), Ok(utc));
        assert_eq!(
            parse_when_at("2025-01-31", now),
            Ok(utc - 12 * 3_600_000),
            "a date is UTC midnight"
        );
        assert!(parse_when_at("yesterday", now).is_err());
        assert!(parse_when_at("2025-01-31T12:00:00+2", now).is_err());
    }

    #[test]
    fn json_has_the_product_fields() {
        let mut r = record(1);
        let v = record_json(&r);
        for field in [
            "id",
            "path",
            "state",
            "asset_id",
            "sha256",
            "size",
            "attempts",
            "last_error",
            "discovered_at",
            "uploaded_at",
            "ready_at",
            "updated_at",
        ] {
            assert!(v.get(field).is_some(), "missing {field}: {v}");
        }
        assert!(v.get("url").is_none());
        r.path = None;
        r.url = Some("https://example.com/a.mp4".into());
        let v = record_json(&r);
        assert_eq!(v["url"], "https://example.com/a.mp4");
        assert!(v.get("path").is_none());
    }

    fn record(id: i64) -> Record {
        Record {
            id,
            path: Some("/in/a.mp4".into()),
            url: None,
            state: "ready".into(),
            asset_id: Some("0123456789abcdef01234567".into()),
            sha256: Some("ab".repeat(32)),
            size: Some(1234),
            mime: Some("video/mp4".into()),
            attempts: 1,
            last_error: None,
            duplicate_of: None,
            next_attempt_at: 0,
            discovered_at: 1_750_000_000_000,
            uploaded_at: Some(1_750_000_001_000),
            ready_at: None,
            updated_at: 1_750_000_002_000,
            file_action: None,
        }
    }

    #[test]
    fn a_table_row_fits_100_columns() {
        let t = Table::new(9_999_999, false);
        let r = Record {
            id: 9_999_999,
            path: Some(format!("/srv/{}/clip.mp4", "deep/".repeat(40))),
            state: "processing".into(),
            size: Some(123_456_789_012),
            discovered_at: now_ms() - 400 * 86_400_000,
            ..record(1)
        };
        let row = t.row(&r);
        assert!(
            row.chars().count() <= 100,
            "{} chars: {row}",
            row.chars().count()
        );
        assert!(t.header().chars().count() <= 100);
        assert!(row.ends_with("clip.mp4"), "{row}");
        let coloured = Table::new(1, true).row(&r);
        assert!(coloured.contains("\x1b[34mprocessing\x1b[0m"), "{coloured}");
    }

    #[test]
    fn cjk_and_emoji_file_names_keep_the_columns_in_line() {
        use super::super::text::columns;
        let t = Table::new(99, false);
        let header = t.header();
        let path_col = columns(&header[..header.find("PATH").expect("PATH")]);
        let row_of = |path: String| {
            t.row(&Record {
                path: Some(path),
                ..record(42)
            })
        };
        let short = ["/in/映画.mp4", "/in/🎬🎉 party.mp4", "/in/plain.mp4"];
        for path in short {
            let row = row_of(path.to_string());
            let at = row.find("/in/").expect("the path");
            assert_eq!(columns(&row[..at]), path_col, "{header}\n{row}");
            assert!(row.ends_with(path), "{row}");
        }
        let long = [
            format!("/srv/{}家族の休日の記録.mp4", "映画/".repeat(30)),
            format!("/srv/{}birthday-🎂🎉.mp4", "🎬/".repeat(40)),
        ];
        for path in long {
            let row = row_of(path);
            assert!(
                columns(&row) <= TABLE_WIDTH,
                "{} columns: {row}",
                columns(&row)
            );
            assert!(row.ends_with(".mp4") && row.contains('…'), "{row}");
        }
    }
}
