//! The one-line verdict of `status` (idle, working, rate limited, stuck),
//! judged from the ledger alone: the first rule that holds decides.

use std::cmp::Reverse;

use super::{DaemonState, Facts, HOUR_MS, heartbeat_age};
use crate::cli::text::{ago, human_size, span};
use crate::ledger::fleet::DaemonInfo;
use crate::ledger::query::RecentAttempt;
use crate::ledger::{FileState, rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    Idle,
    Working,
    RateLimited,
    Stuck,
}

impl Health {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Health::Idle => "idle",
            Health::Working => "working",
            Health::RateLimited => "rate_limited",
            Health::Stuck => "stuck",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) health: Health,
    /// The whole line, starting with the verdict: `stuck: …`.
    pub(super) line: String,
}

fn files(n: i64) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

/// An attempt that ended: the attempt, when it ended, and how.
pub(super) type Ended<'a> = (&'a RecentAttempt, i64, &'a str);

/// Attempts that ended, with when and how, the latest end first. An
/// interruption (a stop or restart) says nothing about the platform: left out.
pub(super) fn ended_attempts(attempts: &[RecentAttempt]) -> Vec<Ended<'_>> {
    let mut ended: Vec<Ended<'_>> = attempts
        .iter()
        .filter_map(|a| Some((a, a.ended_at?, a.outcome.as_deref()?)))
        .filter(|(_, _, outcome)| *outcome != "interrupted")
        .collect();
    ended.sort_by_key(|(a, at, _)| Reverse((*at, a.id)));
    ended
}

/// What every rule looks at.
struct Look<'a> {
    f: &'a Facts,
    /// Records not in a final state.
    unfinished: i64,
    /// `3 files waiting`.
    waiting: String,
    ended: Vec<Ended<'a>>,
}

impl Look<'_> {
    fn newest(&self) -> Option<&Ended<'_>> {
        self.ended.first()
    }
}

/// The one-line verdict, from the ledger alone.
pub(super) fn verdict(f: &Facts) -> Verdict {
    let unfinished = f.unfinished();
    let look = Look {
        f,
        unfinished,
        waiting: format!("{} waiting", files(unfinished)),
        ended: ended_attempts(&f.attempts),
    };
    ledger_disk_stuck(&look)
        .or_else(|| key_rejected(&look))
        .or_else(|| no_daemon(&look))
        .or_else(|| rate_limited(&look))
        .or_else(|| failing(&look))
        .unwrap_or_else(|| progress(&look))
}

fn stuck(line: String) -> Option<Verdict> {
    Some(Verdict {
        health: Health::Stuck,
        line,
    })
}

/// The daemon waits for the ledger's disk (see RELIABILITY.md); say why
/// nothing moves, and that nothing is lost.
fn ledger_disk_stuck(l: &Look<'_>) -> Option<Verdict> {
    let f = l.f;
    let (disk, dir) = f.disk.as_ref()?;
    if !((l.unfinished > 0 || f.daemon_running()) && (disk.is_full() || disk.read_only)) {
        return None;
    }
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
    let waiting = &l.waiting;
    stuck(format!(
        "stuck: {what}{since}; {fix}; {waiting}, nothing is lost, the daemon resumes by itself"
    ))
}

/// The newest attempt ended with the key refused, and work waits.
fn key_rejected(l: &Look<'_>) -> Option<Verdict> {
    let (_, at, outcome) = l.newest()?;
    if l.unfinished == 0 || *outcome != "auth" {
        return None;
    }
    stuck(format!(
        "stuck: the API key was rejected ({}); {}",
        ago(l.f.now, *at),
        l.waiting
    ))
}

/// Work waits and no daemon runs (on a shared ledger, the stale one named).
fn no_daemon(l: &Look<'_>) -> Option<Verdict> {
    let f = l.f;
    if l.unfinished == 0 || f.daemon_running() {
        return None;
    }
    let waiting = &l.waiting;
    let stale: Vec<&DaemonInfo> = f.daemons_in(DaemonState::Stale).collect();
    stuck(match stale.iter().min_by_key(|d| heartbeat_age(d)) {
        Some(last) if f.shared => format!(
            "stuck: {waiting} and no daemon is running ({} STALE, the last heartbeat {} from {}); start one: tl-ingest run",
            stale.len(),
            ago(last.now, last.heartbeat_at),
            last.host
        ),
        _ => format!("stuck: {waiting} and no daemon is running (start one: tl-ingest run)"),
    })
}

/// The newest attempt was rate limited and its file waits for the reset.
fn rate_limited(l: &Look<'_>) -> Option<Verdict> {
    let now = l.f.now;
    let (a, _, outcome) = l.newest()?;
    if *outcome != "rate_limited"
        || a.file_state != FileState::Queued.as_str()
        || a.next_attempt_at <= now
    {
        return None;
    }
    Some(Verdict {
        health: Health::RateLimited,
        line: format!(
            "rate limited until {} (in {}); {}",
            rfc3339(a.next_attempt_at),
            span(a.next_attempt_at - now),
            l.waiting
        ),
    })
}

/// Three or more failures in the hour and no upload at all: not a bad
/// file or two, something is wrong.
fn failing(l: &Look<'_>) -> Option<Verdict> {
    let f = l.f;
    let last_hour = l.ended.iter().filter(|(_, at, _)| *at >= f.now - HOUR_MS);
    let (mut uploaded, mut refused) = (0, 0);
    for (_, _, outcome) in last_hour {
        match *outcome {
            "accepted" | "found" => uploaded += 1,
            "rate_limited" | "changed" => {}
            _ => refused += 1,
        }
    }
    let failed = f.failed_last_hour;
    if l.unfinished == 0 || uploaded > 0 || (failed < 3 && refused < 3) {
        return None;
    }
    let waiting = &l.waiting;
    stuck(if failed >= 3 {
        format!("stuck: {failed} failed in the last hour and none uploaded; {waiting}")
    } else {
        format!(
            "stuck: the last {refused} attempts failed and none uploaded in the last hour; {waiting}"
        )
    })
}

/// Nothing is wrong: working (what on) or idle, with the hour's failures.
fn progress(l: &Look<'_>) -> Verdict {
    let f = l.f;
    let failed = f.failed_last_hour;
    let recent_failures = if failed > 0 {
        format!(" ({failed} failed in the last hour)")
    } else {
        String::new()
    };
    if l.unfinished == 0 {
        return Verdict {
            health: Health::Idle,
            line: format!("idle: nothing to do{recent_failures}"),
        };
    }
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
    Verdict {
        health: Health::Working,
        line: format!("working: {}{recent_failures}", parts.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{NOW, attempt, facts};
    use super::*;
    use crate::ledger::disk::Disk;

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
}
