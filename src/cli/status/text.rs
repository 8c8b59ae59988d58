//! `status` as text for people: the verdict, then one line (or a few) per
//! subject, paths shortened to fit [`WIDTH`] columns.

use super::verdict::{Health, Verdict, ended_attempts};
use super::{DaemonState, Facts, heartbeat_age, heartbeat_interval, lease_of, millis};
use crate::cli::text::{
    BLUE, BOLD_RED, GREEN, YELLOW, ago, columns, human_size, pad, paint, shorten_middle, span,
    state_cell,
};
use crate::ledger::query::InFlight;
use crate::ledger::rfc3339;

/// Text output wider than this is shortened (paths, in the middle).
pub(super) const WIDTH: usize = 100;

pub(super) fn to_text(f: &Facts, verdict: &Verdict, colour: bool) -> String {
    let mut lines = vec![
        headline(verdict, colour),
        format!("ledger:   {}", f.ledger),
        format!("daemon:   {}", daemon_line(f)),
    ];
    fleet_lines(f, colour, &mut lines);
    for (path, why) in &f.gone_folders {
        lines.push(format!(
            "folders:  watch folder {path} is gone ({why}); a running daemon waits for it to come back"
        ));
    }
    lines.push(records_line(f));
    lines.push(format!("queue:    {}", queue_line(f)));
    lines.extend(last_attempt_line(f));
    in_flight_lines(f, &mut lines);
    error_lines(f, colour, &mut lines);
    lines.join("\n")
}

/// The verdict, coloured by its health.
fn headline(verdict: &Verdict, colour: bool) -> String {
    if !colour {
        return verdict.line.clone();
    }
    let style = match verdict.health {
        Health::Idle => GREEN,
        Health::Working => BLUE,
        Health::RateLimited => YELLOW,
        Health::Stuck => BOLD_RED,
    };
    paint(&verdict.line, style)
}

/// Whether this host's daemon runs, with its pid and since when.
fn daemon_line(f: &Facts) -> String {
    match &f.daemon {
        Some(h) => format!(
            "running (pid {}, since {})",
            h.pid.map_or("?".into(), |p| p.to_string()),
            h.since_ms
                .map_or("?".into(), |t| format!("{}, {}", rfc3339(t), ago(f.now, t)))
        ),
        // A shared ledger: this host's daemon (the others are listed below).
        None if f.shared => "not running on this host".into(),
        None => "not running".into(),
    }
}

/// `records:` with the count of each state that has any.
fn records_line(f: &Facts) -> String {
    let total: i64 = f.counts.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = f
        .counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    if parts.is_empty() {
        "records:  none".to_string()
    } else {
        format!("records:  {total} ({})", parts.join(", "))
    }
}

/// How many are queued, the oldest, and when the next attempt is due.
fn queue_line(f: &Facts) -> String {
    match f.oldest_queued {
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
    }
}

/// How the newest attempt that ended went, if one did.
fn last_attempt_line(f: &Facts) -> Option<String> {
    let ended = ended_attempts(&f.attempts);
    let (a, at, outcome) = ended.first()?;
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
    Some(format!(
        "last attempt: {outcome}{status} {}, {name}{error}",
        ago(f.now, *at)
    ))
}

fn in_flight_lines(f: &Facts, lines: &mut Vec<String>) {
    if f.in_flight.is_empty() {
        lines.push("in flight: nothing".into());
        return;
    }
    lines.push("in flight:".into());
    for i in &f.in_flight {
        lines.push(in_flight_line(f, i));
    }
}

/// The last errors: each record's line, then its error below it.
fn error_lines(f: &Facts, colour: bool, lines: &mut Vec<String>) {
    if f.errors.is_empty() {
        lines.push("last errors: none".into());
        return;
    }
    lines.push("last errors:".into());
    for r in &f.errors {
        let head = format!(
            "  #{}  {}  {}  ",
            r.id,
            state_cell(&r.state, 0, colour),
            ago(f.now, r.updated_at)
        );
        let used = columns(&format!(
            "  #{}  {}  {}  ",
            r.id,
            r.state,
            ago(f.now, r.updated_at)
        ));
        let shown = r.path.as_deref().or(r.url.as_deref()).unwrap_or("");
        lines.push(format!(
            "{head}{}",
            shorten_middle(shown, WIDTH.saturating_sub(used))
        ));
        lines.push(format!("      {}", r.last_error.as_deref().unwrap_or("")));
    }
}

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
                if colour { paint(&text, BOLD_RED) } else { text }
            }
            (DaemonState::Stopped, Some(at)) => format!("stopped {}", ago(d.now, at)),
            (DaemonState::Stopped, None) => "stopped".into(),
        });
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| columns(&r[c])).max().unwrap_or(0))
        .collect();
    for (row, state) in rows.iter().zip(&states) {
        let mut line = String::new();
        for (cell, &width) in row.iter().zip(&widths) {
            line.push_str("  ");
            line.push_str(&pad(cell, width));
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
    let path = shorten_middle(shown, WIDTH.saturating_sub(columns(&head)));
    format!("{head}{path}")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{NOW, daemon, facts};
    use super::super::json::to_json;
    use super::super::verdict::{Health, verdict};
    use super::*;
    use crate::ledger::{FileState, Record};

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

    #[test]
    fn cjk_and_emoji_names_keep_the_columns_in_line() {
        let mut f = facts(&[(FileState::Queued, 1)], vec![]);
        f.daemons = vec![
            daemon(2, "取り込み-東京", 2_000, None),
            daemon(1, "🎬-box", 300_000, None),
        ];
        let error = |id: i64, path: String| Record {
            id,
            path: Some(path),
            url: None,
            state: "failed".into(),
            asset_id: None,
            sha256: None,
            size: None,
            mime: None,
            attempts: 1,
            last_error: Some("refused".into()),
            duplicate_of: None,
            next_attempt_at: 0,
            discovered_at: NOW - 100_000,
            uploaded_at: None,
            ready_at: None,
            updated_at: NOW - 8000,
            file_action: None,
        };
        f.errors = vec![
            error(8, format!("/srv/{}家族の休日.mp4", "映画/".repeat(40))),
            error(9, format!("/srv/{}party-🎉.mp4", "🎬/".repeat(60))),
        ];
        let text = to_text(&f, &verdict(&f), false);
        let header = text
            .lines()
            .find(|l| l.contains("HEARTBEAT"))
            .expect("header");
        let col = |line: &str, needle: &str| {
            let at = line
                .find(needle)
                .unwrap_or_else(|| panic!("{needle}: {line}"));
            columns(&line[..at])
        };
        let heartbeat = col(header, "HEARTBEAT");
        for (host, ago) in [("取り込み-東京", "2s ago"), ("🎬-box", "5m ago")] {
            let row = text.lines().find(|l| l.contains(host)).expect("daemon row");
            assert_eq!(col(row, ago), heartbeat, "{header}\n{row}");
        }
        for name in ["家族の休日.mp4", "party-🎉.mp4"] {
            let line = text
                .lines()
                .find(|l| l.ends_with(name))
                .unwrap_or_else(|| panic!("{name}: {text}"));
            assert!(columns(line) <= WIDTH, "{} columns: {line}", columns(line));
        }
    }
}
