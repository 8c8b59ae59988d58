//! `tl-ingest status`: a one-line verdict, whether a daemon holds the
//! ledger, the daemons that share it (the fleet), counts per state, what is
//! in flight, the queue, the last errors.
//!
//! Everything comes from the ledger and the lock file: `status` runs in
//! another process than the daemon, which may be running or not. Every
//! daemon, on either engine, has a row in the ledger's `daemons` table with
//! its last heartbeat; one that has not stopped and has missed three beats
//! is shown STALE (it died, hangs, or lost the database).

use std::cmp::Reverse;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::history::{
    Stdout, ago, colour_stdout, human_size, record_json, shorten_middle, span, state_cell,
};
use super::{CliError, CliResult, Context, Globals};
use crate::daemon::lock::{Holder, LedgerLock};
use crate::ledger::disk::{Disk, disk_of, folder_of};
use crate::ledger::fleet::DaemonInfo;
use crate::ledger::query::{InFlight, RecentAttempt};
use crate::ledger::{FileState, Location, Record, now_ms, rfc3339};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    /// One JSON object.
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// The same as `--format json`.
    #[arg(long, hide = true)]
    pub json: bool,
}

/// How many recent attempts the verdict looks at.
const ATTEMPT_WINDOW: u32 = 50;
const HOUR_MS: i64 = 3_600_000;

pub(crate) use crate::pipeline::{heartbeat_interval, stale_after};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a `daemons` row says about its daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DaemonState {
    Running,
    /// Not stopped, but its heartbeat is late.
    Stale,
    Stopped,
}

impl DaemonState {
    /// Judged by the daemon's own lease (a fleet's hosts may run with
    /// different ones, for a while); `stale_after_ms` (from the local
    /// configuration) for a daemon that did not record its lease.
    pub(crate) fn of(d: &DaemonInfo, stale_after_ms: i64) -> DaemonState {
        let stale_after_ms = d
            .lease_ms
            .map_or(stale_after_ms, |l| millis(stale_after(lease_of(l))));
        if d.stopped_at.is_some() {
            DaemonState::Stopped
        } else if heartbeat_age(d) > stale_after_ms {
            DaemonState::Stale
        } else {
            DaemonState::Running
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            DaemonState::Running => "running",
            DaemonState::Stale => "stale",
            DaemonState::Stopped => "stopped",
        }
    }
}

fn lease_of(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// How old a daemon's last heartbeat is, on the ledger's clock (ms).
pub(crate) fn heartbeat_age(d: &DaemonInfo) -> i64 {
    (d.now - d.heartbeat_at).max(0)
}

/// Everything `status` shows, read once.
struct Facts {
    now: i64,
    ledger: String,
    /// PostgreSQL: daemons on several hosts, no lock file.
    shared: bool,
    daemon: Option<Holder>,
    /// Daemons running, and those that stopped in the last hour.
    daemons: Vec<DaemonInfo>,
    heartbeat_ms: i64,
    stale_after_ms: i64,
    counts: Vec<(FileState, i64)>,
    queued: i64,
    oldest_queued: Option<i64>,
    next_due: Option<i64>,
    in_flight: Vec<InFlight>,
    errors: Vec<Record>,
    attempts: Vec<RecentAttempt>,
    failed_last_hour: i64,
    /// This host's watch folders that are not there now: path, why.
    gone_folders: Vec<(String, String)>,
    /// A SQLite ledger's filesystem, and its folder.
    disk: Option<(Disk, PathBuf)>,
    /// When a record was last written (Unix ms).
    last_write: Option<i64>,
}

impl Facts {
    fn count(&self, state: FileState) -> i64 {
        self.counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }

    fn unfinished(&self) -> i64 {
        self.counts
            .iter()
            .filter(|(s, _)| !s.is_terminal())
            .map(|(_, n)| n)
            .sum()
    }

    fn daemon_state(&self, d: &DaemonInfo) -> DaemonState {
        DaemonState::of(d, self.stale_after_ms)
    }

    fn daemons_in(&self, state: DaemonState) -> impl Iterator<Item = &DaemonInfo> {
        self.daemons
            .iter()
            .filter(move |d| self.daemon_state(d) == state)
    }

    /// Whether some daemon works on the ledger: the lock holder (SQLite),
    /// or a daemon whose heartbeat is current (PostgreSQL, where there is
    /// no lock file).
    fn daemon_running(&self) -> bool {
        self.daemon.is_some()
            || (self.shared && self.daemons_in(DaemonState::Running).next().is_some())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Idle,
    Working,
    RateLimited,
    Stuck,
}

impl Health {
    fn as_str(self) -> &'static str {
        match self {
            Health::Idle => "idle",
            Health::Working => "working",
            Health::RateLimited => "rate_limited",
            Health::Stuck => "stuck",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    health: Health,
    /// The whole line, starting with the verdict: `stuck: …`.
    line: String,
}

fn files(n: i64) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

/// Attempts that ended, with when and how, the latest end first. An
/// interruption (a stop or restart) says nothing about the platform: left out.
fn ended_attempts(attempts: &[RecentAttempt]) -> Vec<(&RecentAttempt, i64, &str)> {
    let mut ended: Vec<(&RecentAttempt, i64, &str)> = attempts
        .iter()
        .filter_map(|a| Some((a, a.ended_at?, a.outcome.as_deref()?)))
        .filter(|(_, _, outcome)| *outcome != "interrupted")
        .collect();
    ended.sort_by_key(|(a, at, _)| Reverse((*at, a.id)));
    ended
}

/// The one-line verdict, from the ledger alone.
fn verdict(f: &Facts) -> Verdict {
    let v = |health, line: String| Verdict { health, line };
    let unfinished = f.unfinished();
    let waiting = format!("{} waiting", files(unfinished));
    let ended = ended_attempts(&f.attempts);
    let newest = ended.first();

    // The daemon waits for the ledger's disk (see RELIABILITY.md); say why
    // nothing moves, and that nothing is lost.
    if let Some((disk, dir)) = &f.disk
        && (unfinished > 0 || f.daemon_running())
        && (disk.is_full() || disk.read_only)
    {
        let what = if disk.read_only {
            "the ledger is read-only"
        } else {
            "the ledger's disk is full"
        };
        let since = f
            .last_write
            .map(|at| format!(" since {} (its last write)", rfc3339(at)))
            .unwrap_or_default();
        let fix = if disk.read_only {
            format!("{} is mounted read-only", disk.where_(dir))
        } else {
            format!(
                "{} free on {}: free some space there",
                human_size(i64::try_from(disk.free).unwrap_or(i64::MAX)),
                disk.where_(dir)
            )
        };
        return v(
            Health::Stuck,
            format!(
                "stuck: {what}{since}; {fix}; {waiting}, nothing is lost, the daemon resumes by itself"
            ),
        );
    }

    if unfinished > 0
        && let Some((_, at, "auth")) = newest
    {
        return v(
            Health::Stuck,
            format!(
                "stuck: the API key was rejected ({}); {waiting}",
                ago(f.now, *at)
            ),
        );
    }
    if unfinished > 0 && !f.daemon_running() {
        let stale: Vec<&DaemonInfo> = f.daemons_in(DaemonState::Stale).collect();
        let line = match stale.iter().min_by_key(|d| heartbeat_age(d)) {
            Some(last) if f.shared => format!(
                "stuck: {waiting} and no daemon is running ({} STALE, the last heartbeat {} from {}); start one: tl-ingest run",
                stale.len(),
                ago(last.now, last.heartbeat_at),
                last.host
            ),
            _ => format!("stuck: {waiting} and no daemon is running (start one: tl-ingest run)"),
        };
        return v(Health::Stuck, line);
    }
    if let Some((a, _, "rate_limited")) = newest
        && a.file_state == FileState::Queued.as_str()
        && a.next_attempt_at > f.now
    {
        return v(
            Health::RateLimited,
            format!(
                "rate limited until {} (in {}); {waiting}",
                rfc3339(a.next_attempt_at),
                span(a.next_attempt_at - f.now)
            ),
        );
    }
    let last_hour = ended.iter().filter(|(_, at, _)| *at >= f.now - HOUR_MS);
    let (mut uploaded, mut refused) = (0, 0);
    for (_, _, outcome) in last_hour {
        match *outcome {
            "accepted" | "found" => uploaded += 1,
            "rate_limited" | "changed" => {}
            _ => refused += 1,
        }
    }
    let failed = f.failed_last_hour;
    // Three or more failures in the hour and no upload at all: not a
    // bad file or two, something is wrong.
    if unfinished > 0 && uploaded == 0 && (failed >= 3 || refused >= 3) {
        let line = if failed >= 3 {
            format!("stuck: {failed} failed in the last hour and none uploaded; {waiting}")
        } else {
            format!(
                "stuck: the last {refused} attempts failed and none uploaded in the last hour; {waiting}"
            )
        };
        return v(Health::Stuck, line);
    }
    let recent_failures = if failed > 0 {
        format!(" ({failed} failed in the last hour)")
    } else {
        String::new()
    };
    if unfinished > 0 {
        let parts: Vec<String> = [
            FileState::Uploading,
            FileState::Processing,
            FileState::Indexing,
            FileState::Queued,
            FileState::Discovered,
        ]
        .into_iter()
        .filter_map(|s| {
            let n = f.count(s);
            (n > 0).then(|| format!("{n} {s}"))
        })
        .collect();
        return v(
            Health::Working,
            format!("working: {}{recent_failures}", parts.join(", ")),
        );
    }
    v(
        Health::Idle,
        format!("idle: nothing to do{recent_failures}"),
    )
}

async fn gather(ctx: &Context) -> Result<Facts, CliError> {
    let location = ctx.ledger_location();
    let daemon = match &location {
        Location::Sqlite(path) => LedgerLock::holder(path),
        Location::Postgres(_) => None,
    };
    let ledger = ctx.read_ledger().await?;
    let failed = |e: crate::ledger::LedgerError| CliError::failed(e.to_string());
    let now = now_ms();
    let lease = ctx.config.ledger.lease;
    let gone_folders = gone_folders(&ctx.config.watch).await;
    let facts = async {
        let (queued, oldest_queued) = ledger.queue_stats().await?;
        let daemons = ledger.daemons(now - HOUR_MS).await?;
        // A shared ledger has no lock file: the daemon of this host is the
        // newest one here that is running and beating.
        let daemon = daemon.or_else(|| {
            let here = crate::ledger::fleet::host_name();
            let after = millis(stale_after(lease));
            daemons
                .iter()
                .filter(|d| d.host == here && DaemonState::of(d, after) == DaemonState::Running)
                .max_by_key(|d| d.started_at)
                .map(|d| Holder {
                    pid: u32::try_from(d.pid).ok(),
                    since_ms: Some(d.started_at),
                })
        });
        Ok::<_, crate::ledger::LedgerError>(Facts {
            now,
            ledger: location.to_string(),
            shared: ledger.is_shared(),
            daemon,
            daemons,
            heartbeat_ms: millis(heartbeat_interval(lease)),
            stale_after_ms: millis(stale_after(lease)),
            counts: ledger.counts().await?,
            queued,
            oldest_queued,
            next_due: ledger.next_due().await?,
            in_flight: ledger.in_flight_detail().await?,
            errors: ledger.last_errors(5).await?,
            attempts: ledger.recent_attempts(ATTEMPT_WINDOW).await?,
            failed_last_hour: ledger.failed_since(now - HOUR_MS).await?,
            gone_folders,
            disk: match &location {
                Location::Sqlite(path) => {
                    let dir = folder_of(path);
                    disk_of(&dir).map(|d| (d, dir))
                }
                Location::Postgres(_) => None,
            },
            last_write: ledger.last_write().await?,
        })
    }
    .await;
    ledger.close().await;
    facts.map_err(failed)
}

/// Longest `status` waits for the watch folders to answer a stat.
const FOLDER_LOOK: Duration = Duration::from_secs(2);

/// The configured watch folders that are not there (removed, moved away,
/// or on a share that is not mounted): a running daemon waits for them and
/// watches them again when they are back (README.md, "Watched folders that
/// go away").
async fn gone_folders(watch: &[crate::config::WatchConfig]) -> Vec<(String, String)> {
    let paths: Vec<std::path::PathBuf> = watch
        .iter()
        .map(|w| std::path::absolute(&w.path).unwrap_or_else(|_| w.path.clone()))
        .collect();
    if paths.is_empty() {
        return Vec::new();
    }
    let look = tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .filter_map(|p| {
                crate::watch::presence::identify(&p)
                    .err()
                    .map(|why| (p.display().to_string(), why))
            })
            .collect::<Vec<_>>()
    });
    match tokio::time::timeout(FOLDER_LOOK, look).await {
        Ok(Ok(gone)) => gone,
        _ => vec![(
            "(the watch folders)".into(),
            format!("did not answer within {} s", FOLDER_LOOK.as_secs()),
        )],
    }
}

pub async fn run(globals: &Globals, args: StatusArgs) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let facts = gather(&ctx).await?;
    let verdict = verdict(&facts);
    let json = args.json || args.format == Format::Json;
    let text = if json {
        to_json(&facts, &verdict).to_string()
    } else {
        to_text(&facts, &verdict, colour_stdout())
    };
    let mut stdout = Stdout::new();
    stdout.line(&text);
    stdout.finish()?;
    Ok(ExitCode::SUCCESS)
}

fn daemon_json(h: &Holder) -> serde_json::Value {
    json!({ "pid": h.pid, "since": h.since_ms.map(rfc3339) })
}

fn fleet_json(f: &Facts, d: &DaemonInfo) -> serde_json::Value {
    let state = f.daemon_state(d);
    json!({
        "id": d.id,
        "host": d.host,
        "pid": d.pid,
        "version": d.version,
        "started_at": rfc3339(d.started_at),
        "heartbeat_at": rfc3339(d.heartbeat_at),
        "heartbeat_age_ms": heartbeat_age(d),
        "stopped_at": d.stopped_at.map(rfc3339),
        "in_flight": d.in_flight,
        "lease_ms": d.lease_ms,
        "state": state.as_str(),
        "stale": state == DaemonState::Stale,
    })
}

fn to_json(f: &Facts, verdict: &Verdict) -> serde_json::Value {
    let counts: serde_json::Map<String, serde_json::Value> = FileState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(f.count(*s))))
        .collect();
    let in_flight: Vec<serde_json::Value> = f
        .in_flight
        .iter()
        .map(|i| {
            let mut v = record_json(&i.record);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("attempt".into(), json!(i.attempt));
                obj.insert(
                    "attempt_started_at".into(),
                    json!(i.started_at.map(rfc3339)),
                );
                obj.insert(
                    "running_seconds".into(),
                    json!(i.started_at.map(|t| (f.now - t).max(0) / 1000)),
                );
                obj.insert("bytes_sent".into(), json!(i.bytes_sent));
                obj.insert("bytes_total".into(), json!(i.record.size));
            }
            v
        })
        .collect();
    let last_attempt = ended_attempts(&f.attempts).first().map(|(a, _, _)| {
        json!({
            "id": a.id,
            "file_id": a.file_id,
            "outcome": a.outcome,
            "http_status": a.http_status,
            "error": a.error,
            "started_at": rfc3339(a.started_at),
            "ended_at": a.ended_at.map(rfc3339),
        })
    });
    json!({
        "verdict": { "state": verdict.health.as_str(), "message": verdict.line },
        "ledger": f.ledger,
        "daemon": f.daemon.as_ref().map(daemon_json),
        "daemons": f.daemons.iter().map(|d| fleet_json(f, d)).collect::<Vec<_>>(),
        "heartbeat": {
            "interval_ms": f.heartbeat_ms,
            "stale_after_ms": f.stale_after_ms,
        },
        "counts": counts,
        "total": f.counts.iter().map(|(_, n)| n).sum::<i64>(),
        "queue": {
            "queued": f.queued,
            "oldest_discovered_at": f.oldest_queued.map(rfc3339),
            "oldest_age_seconds": f.oldest_queued.map(|t| (f.now - t).max(0) / 1000),
            // null: nothing queued, or the next one is due now.
            "next_attempt_at": f.next_due.filter(|t| *t > f.now).map(rfc3339),
        },
        "in_flight": in_flight,
        "recent_errors": f.errors.iter().map(record_json).collect::<Vec<_>>(),
        "failed_last_hour": f.failed_last_hour,
        "last_attempt": last_attempt,
        "gone_folders": f
            .gone_folders
            .iter()
            .map(|(path, reason)| json!({ "path": path, "reason": reason }))
            .collect::<Vec<_>>(),
    })
}

/// Text output wider than this is shortened (paths, in the middle).
const WIDTH: usize = 100;

fn to_text(f: &Facts, verdict: &Verdict, colour: bool) -> String {
    let mut lines = Vec::new();
    let headline = if colour {
        let sgr = match verdict.health {
            Health::Idle => "32",
            Health::Working => "34",
            Health::RateLimited => "33",
            Health::Stuck => "1;31",
        };
        format!("\x1b[{sgr}m{}\x1b[0m", verdict.line)
    } else {
        verdict.line.clone()
    };
    lines.push(headline);
    lines.push(format!("ledger:   {}", f.ledger));
    let daemon = match &f.daemon {
        Some(h) => format!(
            "running (pid {}, since {})",
            h.pid.map_or("?".into(), |p| p.to_string()),
            h.since_ms
                .map_or("?".into(), |t| format!("{}, {}", rfc3339(t), ago(f.now, t)))
        ),
        // A shared ledger: this host's daemon (the others are listed below).
        None if f.shared => "not running on this host".into(),
        None => "not running".into(),
    };
    lines.push(format!("daemon:   {daemon}"));
    fleet_lines(f, colour, &mut lines);
    for (path, why) in &f.gone_folders {
        lines.push(format!(
            "folders:  watch folder {path} is gone ({why}); a running daemon waits for it to come back"
        ));
    }
    let total: i64 = f.counts.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = f
        .counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    lines.push(if parts.is_empty() {
        "records:  none".to_string()
    } else {
        format!("records:  {total} ({})", parts.join(", "))
    });
    let queue = match f.oldest_queued {
        Some(oldest) if f.queued > 0 => {
            let due = match f.next_due {
                Some(t) if t > f.now => format!("; next attempt in {}", span(t - f.now)),
                _ => String::new(),
            };
            format!(
                "{} queued, the oldest discovered {}{due}",
                f.queued,
                ago(f.now, oldest)
            )
        }
        _ => "empty".into(),
    };
    lines.push(format!("queue:    {queue}"));

    if let Some((a, at, outcome)) = ended_attempts(&f.attempts).first() {
        let status = a
            .http_status
            .map(|s| format!(" (HTTP {s})"))
            .unwrap_or_default();
        let error = a
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        let shown = a.path.as_deref().or(a.url.as_deref()).unwrap_or("");
        let name = std::path::Path::new(shown)
            .file_name()
            .map_or(shown.into(), |n| n.to_string_lossy());
        lines.push(format!(
            "last attempt: {outcome}{status} {}, {name}{error}",
            ago(f.now, *at)
        ));
    }
    if f.in_flight.is_empty() {
        lines.push("in flight: nothing".into());
    } else {
        lines.push("in flight:".into());
        for i in &f.in_flight {
            lines.push(in_flight_line(f, i));
        }
    }
    if f.errors.is_empty() {
        lines.push("last errors: none".into());
    } else {
        lines.push("last errors:".into());
        for r in &f.errors {
            let head = format!(
                "  #{}  {}  {}  ",
                r.id,
                state_cell(&r.state, 0, colour),
                ago(f.now, r.updated_at)
            );
            let used = format!("  #{}  {}  {}  ", r.id, r.state, ago(f.now, r.updated_at))
                .chars()
                .count();
            let shown = r.path.as_deref().or(r.url.as_deref()).unwrap_or("");
            lines.push(format!(
                "{head}{}",
                shorten_middle(shown, WIDTH.saturating_sub(used))
            ));
            lines.push(format!("      {}", r.last_error.as_deref().unwrap_or("")));
        }
    }
    lines.join("\n")
}

/// The longest host name shown in full; longer ones are cut in the middle.
const HOST_WIDTH: usize = 32;

/// `daemons:` with a count per state, then one row per daemon, in columns.
fn fleet_lines(f: &Facts, colour: bool, lines: &mut Vec<String>) {
    if f.daemons.is_empty() {
        lines.push("daemons:  none in the last hour".into());
        return;
    }
    let count = |state| f.daemons_in(state).count();
    let (running, stale, stopped) = (
        count(DaemonState::Running),
        count(DaemonState::Stale),
        count(DaemonState::Stopped),
    );
    let mut parts = vec![format!("{running} running")];
    if stale > 0 {
        parts.push(format!("{stale} STALE"));
    }
    if stopped > 0 {
        parts.push(format!("{stopped} stopped in the last hour"));
    }
    lines.push(format!("daemons:  {}", parts.join(", ")));

    let mut rows = vec![[
        "ID".to_string(),
        "HOST".into(),
        "PID".into(),
        "VERSION".into(),
        "STARTED".into(),
        "HEARTBEAT".into(),
        "IN FLIGHT".into(),
    ]];
    let mut states = vec!["STATE".to_string()];
    for d in &f.daemons {
        let state = f.daemon_state(d);
        rows.push([
            d.id.to_string(),
            shorten_middle(&d.host, HOST_WIDTH),
            d.pid.to_string(),
            d.version.clone(),
            ago(d.now, d.started_at),
            ago(d.now, d.heartbeat_at),
            match state {
                DaemonState::Stopped => "-".into(),
                _ => d.in_flight.to_string(),
            },
        ]);
        states.push(match (state, d.stopped_at) {
            (DaemonState::Running, _) => "running".into(),
            (DaemonState::Stale, _) => {
                let text = format!(
                    "STALE: no heartbeat for {} (one is due every {})",
                    span(heartbeat_age(d)),
                    short_span(
                        d.lease_ms
                            .map_or(f.heartbeat_ms, |l| millis(heartbeat_interval(lease_of(l))))
                    )
                );
                if colour {
                    format!("\x1b[1;31m{text}\x1b[0m")
                } else {
                    text
                }
            }
            (DaemonState::Stopped, Some(at)) => format!("stopped {}", ago(d.now, at)),
            (DaemonState::Stopped, None) => "stopped".into(),
        });
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (row, state) in rows.iter().zip(&states) {
        let mut line = String::new();
        for (cell, &width) in row.iter().zip(&widths) {
            line.push_str(&format!("  {cell:<width$}"));
        }
        line.push_str("  ");
        line.push_str(state);
        lines.push(line.trim_end().to_string());
    }
}

/// A heartbeat interval: `10s`, or in ms under a second.
fn short_span(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        span(ms)
    }
}

fn in_flight_line(f: &Facts, i: &InFlight) -> String {
    let r = &i.record;
    let running = match i.started_at {
        Some(t) if f.daemon_running() => {
            format!("attempt {}, running {}", i.attempt, span(f.now - t))
        }
        Some(_) => format!(
            "attempt {}, cut off (resumes when a daemon starts)",
            i.attempt
        ),
        None => format!("attempt {}", i.attempt.max(1)),
    };
    let bytes = match (i.bytes_sent, r.size) {
        (Some(sent), Some(total)) => format!("{} of {} sent", human_size(sent), human_size(total)),
        (Some(sent), None) => format!("{} sent", human_size(sent)),
        (None, Some(total)) => human_size(total),
        (None, None) => String::new(),
    };
    let head = format!("  #{}  {running}  {bytes}  ", r.id);
    let shown = r.path.as_deref().or(r.url.as_deref()).unwrap_or("");
    let path = shorten_middle(shown, WIDTH.saturating_sub(head.chars().count()));
    format!("{head}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000;

    fn facts(counts: &[(FileState, i64)], attempts: Vec<RecentAttempt>) -> Facts {
        Facts {
            now: NOW,
            ledger: "l.db".into(),
            shared: false,
            daemon: Some(Holder {
                pid: Some(42),
                since_ms: Some(NOW - 60_000),
            }),
            daemons: Vec::new(),
            heartbeat_ms: 10_000,
            stale_after_ms: 30_000,
            counts: counts.to_vec(),
            queued: 0,
            oldest_queued: None,
            next_due: None,
            in_flight: Vec::new(),
            errors: Vec::new(),
            attempts,
            failed_last_hour: 0,
            gone_folders: Vec::new(),
            disk: None,
            last_write: None,
        }
    }

    fn attempt(id: i64, ago_ms: i64, outcome: &str, state: &str, next: i64) -> RecentAttempt {
        RecentAttempt {
            id,
            file_id: id,
            started_at: NOW - ago_ms - 1000,
            ended_at: Some(NOW - ago_ms),
            outcome: Some(outcome.into()),
            http_status: None,
            error: None,
            file_state: state.into(),
            next_attempt_at: next,
            path: Some(format!("/in/{id}.mp4")),
            url: None,
        }
    }

    #[test]
    fn a_full_or_read_only_ledger_disk_is_the_verdict() {
        let mut f = facts(&[(FileState::Queued, 3)], Vec::new());
        let disk = Disk {
            free: 4096,
            total: 24 << 20,
            read_only: false,
            mount: Some(("/var".into(), "tmpfs".into())),
        };
        f.disk = Some((disk.clone(), "/var/lib/tl-ingest".into()));
        f.last_write = Some(NOW - 41_000);
        let v = verdict(&f);
        assert_eq!(v.health, Health::Stuck);
        assert_eq!(
            v.line,
            format!(
                "stuck: the ledger's disk is full since {} (its last write); 4.1 kB free on /var (tmpfs): free some space there; 3 files waiting, nothing is lost, the daemon resumes by itself",
                rfc3339(NOW - 41_000)
            )
        );
        f.disk = Some((
            Disk {
                read_only: true,
                free: 1 << 30,
                ..disk.clone()
            },
            "/var/lib/tl-ingest".into(),
        ));
        assert!(
            verdict(&f)
                .line
                .starts_with("stuck: the ledger is read-only since "),
            "{}",
            verdict(&f).line
        );
        // Room enough: the usual verdict.
        f.disk = Some((
            Disk {
                free: 1 << 30,
                ..disk
            },
            "/var/lib/tl-ingest".into(),
        ));
        assert!(verdict(&f).line.starts_with("working"));
    }

    #[test]
    fn verdicts() {
        use FileState as S;
        let idle = facts(
            &[(S::Ready, 3)],
            vec![attempt(1, 5000, "accepted", "ready", 0)],
        );
        assert_eq!(verdict(&idle).health, Health::Idle);
        assert_eq!(verdict(&idle).line, "idle: nothing to do");

        let working = facts(&[(S::Ready, 3), (S::Uploading, 2), (S::Queued, 5)], vec![]);
        assert_eq!(verdict(&working).line, "working: 2 uploading, 5 queued");

        let auth = facts(
            &[(S::Queued, 2)],
            vec![
                attempt(2, 180_000, "auth", "queued", 0),
                attempt(1, 200_000, "accepted", "ready", 0),
            ],
        );
        let v = verdict(&auth);
        assert_eq!(v.health, Health::Stuck);
        assert_eq!(
            v.line,
            "stuck: the API key was rejected (3m ago); 2 files waiting"
        );

        let mut down = facts(&[(S::Queued, 1)], vec![]);
        down.daemon = None;
        assert!(
            verdict(&down).line.contains("no daemon is running"),
            "{:?}",
            verdict(&down)
        );

        let limited = facts(
            &[(S::Queued, 4)],
            vec![attempt(1, 1000, "rate_limited", "queued", NOW + 42_000)],
        );
        let v = verdict(&limited);
        assert_eq!(v.health, Health::RateLimited);
        assert!(
            v.line.starts_with("rate limited until 20") && v.line.contains("(in 42s)"),
            "{v:?}"
        );

        let mut failing = facts(
            &[(S::Queued, 1), (S::Failed, 4)],
            (1..=4)
                .map(|i| attempt(i, i * 1000, "permanent", "failed", 0))
                .collect(),
        );
        failing.failed_last_hour = 4;
        assert_eq!(
            verdict(&failing).line,
            "stuck: 4 failed in the last hour and none uploaded; 1 file waiting"
        );
        // One success in the hour: working, with the failures noted.
        failing
            .attempts
            .insert(0, attempt(9, 100, "accepted", "processing", 0));
        assert_eq!(
            verdict(&failing).line,
            "working: 1 queued (4 failed in the last hour)"
        );
    }

    #[test]
    fn text_fits_and_names_the_daemon() {
        let mut f = facts(&[(FileState::Uploading, 1)], vec![]);
        f.in_flight.push(InFlight {
            record: Record {
                id: 7,
                path: Some(format!("/srv/{}clip.mp4", "very-deep/".repeat(20))),
                url: None,
                state: "uploading".into(),
                asset_id: None,
                sha256: None,
                size: Some(400_000_000),
                mime: None,
                attempts: 1,
                last_error: None,
                duplicate_of: None,
                next_attempt_at: 0,
                discovered_at: NOW - 100_000,
                uploaded_at: None,
                ready_at: None,
                updated_at: NOW - 8000,
                file_action: None,
            },
            attempt: 2,
            started_at: Some(NOW - 8000),
            bytes_sent: Some(100_000_000),
        });
        let text = to_text(&f, &verdict(&f), false);
        assert!(text.contains("daemon:   running (pid 42, since "), "{text}");
        let line = text
            .lines()
            .find(|l| l.contains("#7"))
            .expect("in-flight line");
        assert!(
            line.contains("attempt 2, running 8s  100.0 MB of 400.0 MB sent"),
            "{line}"
        );
        assert!(
            line.ends_with("clip.mp4") && line.chars().count() <= WIDTH,
            "{line}"
        );
    }

    #[test]
    fn a_gone_watch_folder_is_shown() {
        let mut f = facts(&[], vec![]);
        let text = to_text(&f, &verdict(&f), false);
        assert!(!text.contains("folders:"), "{text}");
        f.gone_folders
            .push(("/srv/inbox".into(), "No such file or directory".into()));
        let text = to_text(&f, &verdict(&f), false);
        assert!(
            text.contains("folders:  watch folder /srv/inbox is gone (No such file or directory)"),
            "{text}"
        );
        let json = to_json(&f, &verdict(&f));
        assert_eq!(json["gone_folders"][0]["path"], "/srv/inbox");
    }

    #[tokio::test]
    async fn gone_folders_are_the_configured_ones_that_are_not_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let here = dir.path().join("here");
        std::fs::create_dir(&here).expect("mkdir");
        let gone = dir.path().join("gone");
        let watch = [
            crate::config::WatchConfig::for_path(here),
            crate::config::WatchConfig::for_path(gone.clone()),
        ];
        let found = gone_folders(&watch).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, gone.display().to_string());
    }

    fn daemon(id: i64, host: &str, heartbeat_ago: i64, stopped_ago: Option<i64>) -> DaemonInfo {
        DaemonInfo {
            id,
            host: host.into(),
            pid: 1000 + id,
            version: "0.1.0".into(),
            started_at: NOW - 7_200_000,
            heartbeat_at: NOW - heartbeat_ago,
            stopped_at: stopped_ago.map(|a| NOW - a),
            in_flight: id,
            lease_ms: None,
            now: NOW,
        }
    }

    #[test]
    fn each_daemon_is_judged_stale_by_its_own_lease() {
        // Five seconds without a heartbeat: late for a daemon on a 3 s
        // lease, not for one on 30 s, whatever the local configuration.
        let mut short = daemon(1, "a", 5_000, None);
        short.lease_ms = Some(3_000);
        let mut long = daemon(2, "b", 5_000, None);
        long.lease_ms = Some(30_000);
        assert_eq!(DaemonState::of(&short, 30_000), DaemonState::Stale);
        assert_eq!(DaemonState::of(&long, 1_000), DaemonState::Running);
        // One that did not record its lease: the local one decides.
        let old = daemon(3, "c", 5_000, None);
        assert_eq!(DaemonState::of(&old, 1_000), DaemonState::Stale);
        assert_eq!(DaemonState::of(&old, 30_000), DaemonState::Running);
    }

    #[test]
    fn stale_means_three_beats_missed() {
        let s = Duration::from_secs;
        assert_eq!(heartbeat_interval(s(30)), s(10));
        assert_eq!(stale_after(s(30)), s(30));
        // The beat is at most 10 s: a long lease is still watched closely.
        assert_eq!(heartbeat_interval(s(600)), s(10));
        assert_eq!(stale_after(s(600)), s(30));
        assert_eq!(heartbeat_interval(s(3)), s(1));
        assert_eq!(stale_after(s(3)), s(3));
        // Never under a second.
        assert_eq!(stale_after(s(1)), s(1));

        let after = 30_000;
        assert_eq!(
            DaemonState::of(&daemon(1, "a", 29_000, None), after),
            DaemonState::Running
        );
        assert_eq!(
            DaemonState::of(&daemon(1, "a", 31_000, None), after),
            DaemonState::Stale
        );
        // A daemon that stopped is never stale, however old its last beat.
        assert_eq!(
            DaemonState::of(&daemon(1, "a", 3_000_000, Some(3_000_000)), after),
            DaemonState::Stopped
        );
    }

    #[test]
    fn the_fleet_is_listed_with_stale_daemons_flagged() {
        let mut f = facts(&[(FileState::Queued, 2)], vec![]);
        f.shared = true;
        f.daemon = None;
        f.daemons = vec![
            daemon(3, "ingest-a.example", 2_000, None),
            daemon(2, "ingest-b", 300_000, None),
            daemon(1, "ingest-a.example", 4_000_000, Some(1_200_000)),
        ];
        let text = to_text(&f, &verdict(&f), false);
        assert!(
            text.contains("daemon:   not running on this host"),
            "no daemon of this host: {text}"
        );
        assert!(
            text.contains("daemons:  1 running, 1 STALE, 1 stopped in the last hour"),
            "{text}"
        );
        let row = |host: &str, needle: &str| {
            text.lines()
                .find(|l| l.contains(host) && l.contains(needle))
                .unwrap_or_else(|| panic!("no {host} {needle} row: {text}"))
                .to_string()
        };
        let live = row("ingest-a.example", "1003");
        assert!(
            live.ends_with("running") && live.contains("2s ago"),
            "{live}"
        );
        let stale = row("ingest-b", "1002");
        assert!(
            stale.ends_with("STALE: no heartbeat for 5m (one is due every 10s)"),
            "{stale}"
        );
        let gone = row("ingest-a.example", "1001");
        assert!(gone.ends_with("stopped 20m ago"), "{gone}");
        // The columns line up.
        let header = text
            .lines()
            .find(|l| l.contains("HEARTBEAT"))
            .expect("header");
        let col = header.find("HEARTBEAT").expect("column");
        assert_eq!(stale.find("5m ago"), Some(col), "{header}\n{stale}");
        assert!(verdict(&f).line.starts_with("working"), "a daemon runs");

        let json = to_json(&f, &verdict(&f));
        let listed = json["daemons"].as_array().expect("daemons");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[1]["host"], "ingest-b");
        assert_eq!(listed[1]["state"], "stale");
        assert_eq!(listed[1]["stale"], true);
        assert_eq!(listed[1]["heartbeat_age_ms"], 300_000);
        assert_eq!(listed[0]["stale"], false);
        assert_eq!(listed[2]["state"], "stopped");
        assert_eq!(json["heartbeat"]["stale_after_ms"], 30_000);

        // Nobody alive: stuck, and the stale one is named.
        f.daemons.remove(0);
        let v = verdict(&f);
        assert_eq!(v.health, Health::Stuck);
        assert_eq!(
            v.line,
            "stuck: 2 files waiting and no daemon is running (1 STALE, the last heartbeat 5m ago from ingest-b); start one: tl-ingest run"
        );
    }

    #[test]
    fn on_sqlite_the_lock_line_stays_beside_the_daemons() {
        let mut f = facts(&[(FileState::Ready, 1)], vec![]);
        f.daemons = vec![daemon(1, "box", 1_000, None)];
        let text = to_text(&f, &verdict(&f), false);
        assert!(text.contains("daemon:   running (pid 42"), "{text}");
        assert!(text.contains("daemons:  1 running"), "{text}");
        f.daemons.clear();
        let text = to_text(&f, &verdict(&f), false);
        assert!(text.contains("daemons:  none in the last hour"), "{text}");
    }
}
