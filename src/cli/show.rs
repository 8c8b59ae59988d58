//! `tl-ingest show KEY`: one record in full: every field, every attempt,
//! the multipart session if any, and what happened after `ready`.
//!
//! KEY is a path, a URL, an asset id, a sha256 prefix (6+ hex characters)
//! or a record id (`#123`, or a plain number). A key that names several
//! records lists them and exits 2; so does a key that names none. The
//! resolution here is shared with `retry` and `forget`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::history::record_json;
use super::text::human_size;
use super::{CliError, CliResult, Context, Globals, out};
use crate::ledger::admin::{Detail, Found, MIN_SHA_PREFIX};
use crate::ledger::upload_sessions::{Chunk, Session, SessionLog};
use crate::ledger::{AttemptRow, Ledger, LedgerError, Record, now_ms, rfc3339};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct Cmd {
    /// A path, URL, asset id, sha256 prefix (at least 6 hex characters) or
    /// record id (#123).
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Text for people, or one JSON object.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

pub(super) fn ledger_err(e: LedgerError) -> CliError {
    CliError::failed(e.to_string())
}

/// The display form of a record: its path or URL.
pub(super) fn display(r: &Record) -> &str {
    r.path.as_deref().or(r.url.as_deref()).unwrap_or("")
}

/// What a key names, for the commands that take one: the records, newest
/// first when they are the versions of one path or URL.
pub(super) struct Resolved {
    pub records: Vec<Record>,
    /// The records are the versions of one path or URL.
    pub versions: bool,
}

/// Resolve `key`; nothing or several records (other than the versions of
/// one path) is a usage error (exit 2) that says what to do.
pub(super) async fn resolve(ledger: &Ledger, key: &str) -> Result<Resolved, CliError> {
    match ledger.find(key).await.map_err(ledger_err)? {
        Found::None => Err(CliError::usage(format!(
            "no record matches {key:?} (a path, URL, asset id, sha256 prefix of at least \
             {MIN_SHA_PREFIX} hex characters, or #ID; `tl-ingest history` lists records)"
        ))),
        Found::Versions(records) => Ok(Resolved {
            records,
            versions: true,
        }),
        Found::One(record) => Ok(Resolved {
            records: vec![*record],
            versions: false,
        }),
        Found::Ambiguous(records) => {
            let mut msg =
                format!("{key:?} matches several records; name one with #ID (or a longer prefix):");
            for r in records.iter().take(50) {
                msg.push_str(&format!("\n  #{:<6} {:<10}  {}", r.id, r.state, display(r)));
            }
            if records.len() > 50 {
                msg.push_str("\n  … and more");
            }
            Err(CliError::usage(msg))
        }
    }
}

/// Resolve every key, reporting every key that fails (exit 2) before
/// anything is done.
pub(super) async fn resolve_all(
    ledger: &Ledger,
    keys: &[String],
) -> Result<Vec<Resolved>, CliError> {
    let mut resolved = Vec::with_capacity(keys.len());
    let mut errors = Vec::new();
    for key in keys {
        match resolve(ledger, key).await {
            Ok(r) => resolved.push(r),
            Err(e) if e.code == 2 => errors.push(e.message),
            Err(e) => return Err(e),
        }
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(CliError::usage(errors.join("\n")))
    }
}

/// Everything `show` prints about one record.
struct Full {
    record: Record,
    detail: Option<Detail>,
    attempts: Vec<AttemptRow>,
    session: Option<(Session, Vec<Chunk>)>,
    /// Every multipart session the file has had, oldest first.
    sessions: Vec<SessionLog>,
    duplicates: Vec<Record>,
    original: Option<Record>,
    older: Vec<Record>,
}

pub async fn run(globals: &Globals, args: Cmd) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let ledger = ctx.read_ledger().await?;
    let result = gather(&ledger, &args.key).await;
    ledger.close().await;
    let full = result?;
    match args.format {
        Format::Json => {
            let _ = out(&to_json(&full).to_string());
        }
        Format::Text => {
            for line in to_text(&full) {
                if !out(&line) {
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn gather(ledger: &Ledger, key: &str) -> Result<Full, CliError> {
    let mut resolved = resolve(ledger, key).await?;
    let older = if resolved.versions {
        resolved.records.split_off(1.min(resolved.records.len()))
    } else {
        Vec::new()
    };
    let Some(record) = resolved.records.pop() else {
        return Err(CliError::usage(format!("no record matches {key:?}")));
    };
    let id = record.id;
    let detail = ledger.detail(id).await.map_err(ledger_err)?;
    let attempts = ledger.attempts(id).await.map_err(ledger_err)?;
    let session = ledger.session(id).await.map_err(ledger_err)?;
    let sessions = ledger.session_log(id).await.map_err(ledger_err)?;
    let duplicates = ledger.duplicates_of(id).await.map_err(ledger_err)?;
    let original = match record.duplicate_of {
        Some(of) => ledger.record(of).await.map_err(ledger_err)?,
        None => None,
    };
    Ok(Full {
        record,
        detail,
        attempts,
        session,
        sessions,
        duplicates,
        original,
        older,
    })
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A time with how long ago it was.
fn when(ms: i64) -> String {
    let ago = now_ms().saturating_sub(ms);
    if ago >= 0 {
        let secs = u64::try_from(ago / 1000).unwrap_or(0);
        format!(
            "{} ({} ago)",
            rfc3339(ms),
            humantime::format_duration(Duration::from_secs(secs))
        )
    } else {
        let secs = u64::try_from(-ago / 1000).unwrap_or(0);
        format!(
            "{} (in {})",
            rfc3339(ms),
            humantime::format_duration(Duration::from_secs(secs))
        )
    }
}

fn duration_ms(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        // Whole tenths of a second are enough for an attempt.
        let d = Duration::from_millis(ms - ms % 100);
        humantime::format_duration(d).to_string()
    }
}

fn to_text(f: &Full) -> Vec<String> {
    let mut lines = Vec::new();
    record_fields(f, &mut lines);
    lines.push(String::new());
    attempt_lines(f, &mut lines);
    lines.push(String::new());
    session_lines(f, &mut lines);
    lines.push(String::new());
    after_ready_lines(f, &mut lines);
    lines
}

/// One `name  value` line per field of the record, its detail and its
/// relations (older versions, duplicates).
fn record_fields(f: &Full, lines: &mut Vec<String>) {
    let r = &f.record;
    let mut field = |name: &str, value: String| lines.push(format!("{name:<17} {value}"));
    field("record", format!("#{}", r.id));
    match (&r.path, &r.url) {
        (Some(p), _) => field("path", p.clone()),
        (None, Some(u)) => field("url", u.clone()),
        (None, None) => field("path", "-".into()),
    }
    field("state", r.state.clone());
    field("asset_id", opt(r.asset_id.as_deref()));
    field("sha256", opt(r.sha256.as_deref()));
    field(
        "size",
        r.size
            .map_or_else(|| "-".into(), |s| format!("{} ({s} bytes)", human_size(s))),
    );
    field("mime", opt(r.mime.as_deref()));
    field("attempts", r.attempts.to_string());
    field("last_error", opt(r.last_error.as_deref()));
    field(
        "duplicate_of",
        match (&r.duplicate_of, &f.original) {
            (Some(of), Some(o)) => format!("#{of} {} ({})", display(o), o.state),
            (Some(of), None) => format!("#{of}"),
            (None, _) => "-".into(),
        },
    );
    field(
        "next_attempt_at",
        if r.next_attempt_at > 0 && r.state == "queued" {
            when(r.next_attempt_at)
        } else {
            "-".into()
        },
    );
    field("discovered_at", when(r.discovered_at));
    field("uploaded_at", opt(r.uploaded_at.map(when)));
    field("ready_at", opt(r.ready_at.map(when)));
    field("updated_at", when(r.updated_at));
    if let Some(d) = &f.detail {
        detail_fields(d, &mut field);
    }
    if !f.older.is_empty() {
        let older: Vec<String> = f
            .older
            .iter()
            .map(|o| format!("#{} ({})", o.id, o.state))
            .collect();
        field("older versions", older.join(", "));
    }
    if !f.duplicates.is_empty() {
        let dups: Vec<String> = f
            .duplicates
            .iter()
            .map(|d| format!("#{} {}", d.id, display(d)))
            .collect();
        field("duplicated by", dups.join(", "));
    }
}

/// The fields only a file's record has: what the watcher saw, its watch.
fn detail_fields(d: &Detail, field: &mut impl FnMut(&str, String)) {
    field("mtime", opt(d.mtime_ns.map(|ns| rfc3339(ns / 1_000_000))));
    field(
        "device/inode",
        match (d.device, d.inode) {
            (Some(dev), Some(ino)) => format!("{dev}/{ino}"),
            _ => "-".into(),
        },
    );
    field("filename", opt(d.filename.as_deref()));
    field("watch", opt(d.root.as_deref()));
    field("user_metadata", opt(d.user_metadata.as_deref()));
    field("after_upload", opt(d.after_upload.as_deref()));
    field("on_failure", opt(d.on_failure.as_deref()));
    field(
        "lookup_first",
        if d.lookup_first {
            "yes (an earlier attempt may have reached the platform)".into()
        } else {
            "no".into()
        },
    );
}

/// Every attempt: when, how long, how it ended, what was sent.
fn attempt_lines(f: &Full, lines: &mut Vec<String>) {
    if f.attempts.is_empty() {
        lines.push("attempts: none".into());
        return;
    }
    lines.push(format!("attempts ({}):", f.attempts.len()));
    for (n, a) in f.attempts.iter().enumerate() {
        let took = match a.ended_at {
            Some(end) => duration_ms(end - a.started_at),
            None => "running".into(),
        };
        lines.push(format!(
            "  {:>2}. {}  {:>8}  {:<12}  {:<8}  {:>9} sent",
            n + 1,
            rfc3339(a.started_at),
            took,
            a.outcome.as_deref().unwrap_or("-"),
            a.http_status
                .map_or_else(|| "-".into(), |s| format!("HTTP {s}")),
            human_size(a.bytes_sent),
        ));
        if let Some(e) = &a.error {
            lines.push(format!("      error: {e}"));
        }
    }
}

/// The multipart session in use, then every session the record had.
fn session_lines(f: &Full, lines: &mut Vec<String>) {
    match &f.session {
        None => lines.push("multipart session: none".into()),
        Some((s, chunks)) => {
            let reported = chunks.iter().filter(|c| c.reported).count();
            lines.push("multipart session:".into());
            lines.push(format!("  {:<15} {}", "upload_id", s.upload_id));
            lines.push(format!("  {:<15} {}", "asset_id", s.asset_id));
            lines.push(format!(
                "  {:<15} {} of {} recorded, {} reported ({} each)",
                "chunks",
                chunks.len(),
                s.total_chunks,
                reported,
                human_size(s.chunk_size)
            ));
            lines.push(format!("  {:<15} {}", "created_at", when(s.created_at)));
            lines.push(format!(
                "  {:<15} {}",
                "expires_at",
                opt(s.expires_at.map(when))
            ));
        }
    }
    if f.sessions.is_empty() {
        return;
    }
    lines.push(format!(
        "multipart sessions: {} ({} replaced)",
        f.sessions.len(),
        f.sessions.iter().filter(|s| replaced(s)).count()
    ));
    for s in &f.sessions {
        lines.push(format!(
            "  {}  asset {}  {} chunks  started {}  {}",
            s.upload_id,
            s.asset_id,
            s.total_chunks,
            rfc3339(s.created_at),
            s.outcome.as_deref().unwrap_or("in use")
        ));
    }
}

/// The index the asset went to, if asked, and what became of the file.
fn after_ready_lines(f: &Full, lines: &mut Vec<String>) {
    let r = &f.record;
    lines.push("after ready:".into());
    let index_id = f.detail.as_ref().and_then(|d| d.index_id.as_deref());
    let indexed = f
        .detail
        .as_ref()
        .and_then(|d| d.indexed_asset_id.as_deref());
    lines.push(format!(
        "  {:<15} {}",
        "index",
        match (index_id, indexed) {
            (None, _) => "none asked for".to_string(),
            (Some(idx), None) => format!("{idx} (not submitted yet)"),
            (Some(idx), Some(a)) => format!("{idx}, indexed asset {a} ({})", r.state),
        }
    ));
    lines.push(format!(
        "  {:<15} {}",
        "file_action",
        r.file_action.as_deref().unwrap_or("-")
    ));
}

fn replaced(s: &SessionLog) -> bool {
    s.outcome
        .as_deref()
        .is_some_and(|o| o != "completed" && o != "dropped")
}

/// A stored JSON text as JSON (as a string if it is not valid JSON).
fn json_text(text: Option<&str>) -> serde_json::Value {
    match text {
        None => serde_json::Value::Null,
        Some(t) => serde_json::from_str(t).unwrap_or_else(|_| json!(t)),
    }
}

fn to_json(f: &Full) -> serde_json::Value {
    let r = &f.record;
    let mut v = record_json(r);
    let attempts: Vec<serde_json::Value> = f
        .attempts
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "started_at": rfc3339(a.started_at),
                "ended_at": a.ended_at.map(rfc3339),
                "duration_ms": a.ended_at.map(|e| e - a.started_at),
                "outcome": a.outcome,
                "http_status": a.http_status,
                "bytes_sent": a.bytes_sent,
                "error": a.error,
            })
        })
        .collect();
    let multipart = f.session.as_ref().map(|(s, chunks)| {
        json!({
            "upload_id": s.upload_id,
            "asset_id": s.asset_id,
            "chunk_size": s.chunk_size,
            "total_chunks": s.total_chunks,
            "chunks_recorded": chunks.len(),
            "chunks_reported": chunks.iter().filter(|c| c.reported).count(),
            "created_at": rfc3339(s.created_at),
            "expires_at": s.expires_at.map(rfc3339),
        })
    });
    let sessions: Vec<serde_json::Value> = f
        .sessions
        .iter()
        .map(|s| {
            json!({
                "upload_id": s.upload_id,
                "asset_id": s.asset_id,
                "total_chunks": s.total_chunks,
                "created_at": rfc3339(s.created_at),
                "ended_at": s.ended_at.map(rfc3339),
                "outcome": s.outcome,
                "replaced": replaced(s),
            })
        })
        .collect();
    let d = f.detail.as_ref();
    let extra = json!({
        "next_attempt_at": (r.next_attempt_at > 0).then(|| rfc3339(r.next_attempt_at)),
        "mtime_ns": d.and_then(|d| d.mtime_ns),
        "device": d.and_then(|d| d.device),
        "inode": d.and_then(|d| d.inode),
        "filename": d.and_then(|d| d.filename.clone()),
        "root": d.and_then(|d| d.root.clone()),
        "user_metadata": json_text(d.and_then(|d| d.user_metadata.as_deref())),
        "after_upload": json_text(d.and_then(|d| d.after_upload.as_deref())),
        "on_failure": json_text(d.and_then(|d| d.on_failure.as_deref())),
        "lookup_first": d.is_some_and(|d| d.lookup_first),
        "index_id": d.and_then(|d| d.index_id.clone()),
        "indexed_asset_id": d.and_then(|d| d.indexed_asset_id.clone()),
        "attempt_log": attempts,
        "multipart": multipart,
        "multipart_sessions": sessions,
        "duplicated_by": f.duplicates.iter().map(|d| d.id).collect::<Vec<_>>(),
        "older_versions": f.older.iter().map(|o| o.id).collect::<Vec<_>>(),
    });
    if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        obj.extend(extra);
    }
    v
}
