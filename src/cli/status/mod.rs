//! `tl-ingest status`: a one-line verdict, whether a daemon holds the
//! ledger, the daemons that share it (the fleet), counts per state, what is
//! in flight, the queue, the last errors.
//!
//! Everything comes from the ledger and the lock file: `status` runs in
//! another process than the daemon, which may be running or not. Every
//! daemon, on either engine, has a row in the ledger's `daemons` table with
//! its last heartbeat; one that has not stopped and has missed three beats
//! is shown STALE (it died, hangs, or lost the database).

//!
//! Here: what `status` reads ([`Facts`]) and the command; the verdict,
//! the text and the JSON each have their file.

mod json;
mod text;
mod verdict;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::history::Stdout;
use super::text::colour_stdout;
use super::{CliError, CliResult, Context, Globals};
use crate::ledger::disk::{Disk, disk_of, folder_of};
use crate::ledger::fleet::DaemonInfo;
use crate::ledger::query::{InFlight, RecentAttempt};
use crate::ledger::{FileState, Location, Record, now_ms};
use crate::ledger::{Holder, LedgerLock};
use json::to_json;
use text::to_text;
use verdict::verdict;

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
            let here = crate::host::host_name();
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

/// Facts, attempts and daemons for the tests of each part.
#[cfg(test)]
mod fixtures {
    use super::*;

    pub(super) const NOW: i64 = 1_750_000_000_000;

    pub(super) fn facts(counts: &[(FileState, i64)], attempts: Vec<RecentAttempt>) -> Facts {
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

    pub(super) fn attempt(
        id: i64,
        ago_ms: i64,
        outcome: &str,
        state: &str,
        next: i64,
    ) -> RecentAttempt {
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

    pub(super) fn daemon(
        id: i64,
        host: &str,
        heartbeat_ago: i64,
        stopped_ago: Option<i64>,
    ) -> DaemonInfo {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::daemon;
    use super::*;

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
}
