//! `tl-ingest doctor`: one line per check, and for each problem the fix.
//!
//! Checks, in order: the system's CA certificates load; the API key is
//! present; the base URL answers; the key
//! is accepted (one cheap authenticated `GET /assets`); each watched folder
//! exists and can be read (and written where files are deleted or moved);
//! its filesystem (network filesystems are polled); the inotify watch limit
//! against the number of folders to watch; the ledger's integrity (read
//! only: the file is never changed); the ledger's filesystem; free disk
//! space beside the ledger. Exit 1 if any check fails; warnings do not fail.
//!
//! On a PostgreSQL ledger (`ledger.url`) the ledger checks are instead: the
//! server answers and accepts the login (failures in words, the URL never
//! with its password); its version; the schema's version against this
//! build's (and each applied migration's checksum); whether TLS protects a
//! connection that leaves this host; this host's clock against the
//! database's; stale daemons in the fleet. These read only: the schema is
//! never migrated by `doctor`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::status::{DaemonState, heartbeat_age, stale_after};
use super::{CliResult, Context, Globals, out, start_emulator};
use crate::api::{ApiClient, ApiError, ClientOptions};
use crate::config::{ConfigFile, FileAction, FileActionName, WatchConfig, WatcherMode};
use crate::ledger::diagnose::{
    self, ClockReading, ConnectFailure, Integrity, PgProbe, PgSchema, PgTarget, ServerVersion,
    SslMode,
};
use crate::ledger::{Ledger, Location, PgUrl, now_ms, schema_version};
use crate::secret::{API_KEY_ENV, ApiKey, KeyError, load_api_key};
use crate::watch::fstype::network_fs;

#[derive(Debug, Args)]
pub struct Cmd {}

/// Under this much free space beside the ledger, a warning.
const MIN_FREE: u64 = 1_000_000_000;
/// The folder count stops here: enough to compare with any sane limit.
const MAX_FOLDERS_COUNTED: u64 = 2_000_000;
/// The probe request must not take the configured upload timeout (30 min).
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
const INOTIFY_LIMIT: &str = "/proc/sys/fs/inotify/max_user_watches";
/// The key file the packaged unit hands the daemon as a credential
/// (LoadCredential= in systemd/tl-ingest.service).
const SERVICE_KEY_FILE: &str = "/etc/tl-ingest/api-key";
/// How long the PostgreSQL server gets to accept a connection.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL older than this is refused; older than `PG_SUPPORTED` warned.
const PG_OLDEST: i64 = 130_000;
const PG_SUPPORTED: i64 = 140_000;
/// The host's clock may differ from the database's by this much (ms).
const CLOCK_SKEW_MS: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// The checks so far; each is printed as soon as it is known.
struct Report {
    tty: bool,
    /// Keys to scrub from every line (never printed, only compared).
    secrets: Vec<ApiKey>,
    /// The ledger's URL: its password is scrubbed from every line too.
    ledger_url: Option<PgUrl>,
    counts: [usize; 4],
}

impl Report {
    fn line(&mut self, status: Status, name: &str, detail: &str, fix: Option<&str>) {
        self.counts[status as usize] += 1;
        let (mark, colour) = match (status, self.tty) {
            (Status::Ok, true) => ("✓", "32"),
            (Status::Warn, true) => ("!", "33"),
            (Status::Fail, true) => ("✗", "31"),
            (Status::Skip, true) => ("-", "2"),
            (Status::Ok, false) => ("OK  ", ""),
            (Status::Warn, false) => ("WARN", ""),
            (Status::Fail, false) => ("FAIL", ""),
            (Status::Skip, false) => ("SKIP", ""),
        };
        let mark = if colour.is_empty() {
            mark.to_string()
        } else {
            format!("\x1b[{colour}m{mark}\x1b[0m")
        };
        let mut text = format!("{mark} {name}: {detail}");
        if let Some(fix) = fix {
            text.push_str(" — fix: ");
            text.push_str(fix);
        }
        for key in &self.secrets {
            // A key this short would blank ordinary text; none is.
            if key.expose().len() >= 4 {
                text = text.replace(key.expose(), "<redacted>");
            }
        }
        // URLs are shown redacted already; this is for a driver message
        // that might quote one. A password this short would blank ordinary
        // text.
        if let Some(url) = &self.ledger_url
            && url_password(url.expose()).is_some_and(|p| p.len() >= 4)
        {
            text = url.redact_text(&text);
        }
        out(&text);
    }

    fn ok(&mut self, name: &str, detail: &str) {
        self.line(Status::Ok, name, detail, None);
    }

    fn warn(&mut self, name: &str, detail: &str, fix: &str) {
        self.line(Status::Warn, name, detail, Some(fix));
    }

    fn fail(&mut self, name: &str, detail: &str, fix: &str) {
        self.line(Status::Fail, name, detail, Some(fix));
    }

    fn skip(&mut self, name: &str, detail: &str) {
        self.line(Status::Skip, name, detail, None);
    }
}

pub async fn run(globals: &Globals, _args: Cmd) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let mut report = Report {
        tty: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        secrets: ctx
            .env
            .get(API_KEY_ENV)
            .and_then(|k| ApiKey::new(k))
            .into_iter()
            .collect(),
        ledger_url: match ctx.ledger_location() {
            Location::Postgres(url) => Some(url),
            Location::Sqlite(_) => None,
        },
        counts: [0; 4],
    };
    match &ctx.file {
        ConfigFile::Path(p) => report.ok("configuration", &format!("loaded {}", p.display())),
        ConfigFile::None => report.ok(
            "configuration",
            "no file: built-in defaults and environment",
        ),
    }

    match crate::api::check_tls_roots() {
        Ok(()) => report.ok("CA certificates", "the system's CA certificates load"),
        Err(e) => report.fail(
            "CA certificates",
            &e.to_string(),
            "install the system's CA bundle (apt install ca-certificates)",
        ),
    }
    api_checks(&ctx, &mut report).await;
    let native_roots = watch_checks(&ctx, &mut report);
    inotify_check(&ctx, native_roots, &mut report).await;
    match ctx.ledger_location() {
        Location::Postgres(url) => postgres_checks(&ctx, &url, &mut report).await,
        Location::Sqlite(_) => ledger_checks(&ctx, &mut report).await,
    }

    let [ok, warn, fail, skip] = report.counts;
    let total = ok + warn + fail + skip;
    let mut summary = if fail == 0 {
        format!("doctor: {ok} of {total} checks OK, none failed")
    } else {
        format!("doctor: {fail} of {total} checks failed")
    };
    if warn > 0 {
        summary.push_str(&format!(
            ", {warn} warning{}",
            if warn == 1 { "" } else { "s" }
        ));
    }
    out(&summary);
    Ok(if fail > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Key present, base URL reachable, key accepted.
async fn api_checks(ctx: &Context, r: &mut Report) {
    const PRESENT: &str = "API key present";
    const REACHABLE: &str = "API reachable";
    const ACCEPTED: &str = "API key accepted";
    let (_emulator, base_url, key) = if ctx.emulator {
        match start_emulator().await {
            Ok((emu, key)) => {
                r.ok(
                    PRESENT,
                    "the built-in emulator's throwaway key (--emulator)",
                );
                r.secrets.push(key.clone());
                let url = emu.base_url();
                (Some(emu), url, Some(key))
            }
            Err(e) => {
                r.fail(
                    "emulator",
                    &e.message,
                    "run without --emulator, or free a loopback port",
                );
                return;
            }
        }
    } else {
        let base = ctx.config.api.base_url.clone();
        match load_api_key(&ctx.env, ctx.config.api.key_file.as_deref()) {
            Ok((key, source)) => {
                r.ok(PRESENT, &format!("from {source}"));
                r.secrets.push(key.clone());
                (None, base, Some(key))
            }
            // Outside the service (root or a member of its group, from a
            // shell) the key is the unit's credential file.
            Err(KeyError::Missing) if Path::new(SERVICE_KEY_FILE).exists() => {
                match load_api_key(&Default::default(), Some(Path::new(SERVICE_KEY_FILE))) {
                    Ok((key, _)) => {
                        r.ok(
                            PRESENT,
                            &format!("the service's credential file {SERVICE_KEY_FILE}"),
                        );
                        r.secrets.push(key.clone());
                        (None, base, Some(key))
                    }
                    Err(_) => {
                        r.ok(
                            PRESENT,
                            &format!("the service's credential file {SERVICE_KEY_FILE} exists (only root and systemd read it)"),
                        );
                        (None, base, None)
                    }
                }
            }
            Err(e) => {
                let fix = match &e {
                    KeyError::Missing => {
                        "export TWELVELABS_API_KEY=…, or set api.key_file, or LoadCredential=twelvelabs-api-key:… in the unit"
                    }
                    KeyError::Unreadable { .. } => {
                        "make the key file readable by the user tl-ingest runs as (owned by it, chmod 600)"
                    }
                    KeyError::Empty { .. } => "write the API key into the key file",
                };
                r.fail(PRESENT, &e.to_string(), fix);
                (None, base, None)
            }
        }
    };

    // Without a key, reachability is still worth knowing: a placeholder
    // key is refused, and the refusal proves the API answers.
    let probe_key = match &key {
        Some(k) => k.clone(),
        None => match ApiKey::new("tl-ingest-doctor-no-key") {
            Some(k) => k,
            None => return,
        },
    };
    let opts = ClientOptions {
        base_url: base_url.clone(),
        request_timeout: ctx.config.api.request_timeout.min(PROBE_TIMEOUT),
        connect_timeout: ctx.config.api.connect_timeout.min(PROBE_TIMEOUT),
    };
    let client = match ApiClient::new(&opts, &probe_key) {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                REACHABLE,
                &format!("cannot make a client: {e}"),
                "check the API key for stray characters",
            );
            return;
        }
    };
    let not_checked = "not checked: the API did not answer usably";
    let base = &crate::config::redact_url(&base_url);
    match client.list_assets(None, 1, 1).await {
        Ok(_) => {
            r.ok(REACHABLE, &format!("{base} answers"));
            if key.is_some() {
                r.ok(ACCEPTED, "an authenticated GET /assets succeeded");
            } else {
                r.skip(ACCEPTED, "no key to check");
            }
        }
        Err(ApiError::Transport { detail, .. }) => {
            r.fail(
                REACHABLE,
                &format!("{base} is not reachable ({detail})"),
                "check api.base_url, DNS, proxy settings and the firewall; is the host up?",
            );
            r.skip(ACCEPTED, "not checked: the API is not reachable");
        }
        Err(e @ ApiError::Status { status, .. }) => match status {
            401 | 403 => {
                r.ok(REACHABLE, &format!("{base} answers"));
                if key.is_some() {
                    r.fail(
                        ACCEPTED,
                        &format!("the key was rejected ({e})"),
                        "put a valid key (TwelveLabs dashboard → API keys) in $TWELVELABS_API_KEY, api.key_file or the credential",
                    );
                } else {
                    r.skip(ACCEPTED, "no key to check");
                }
            }
            429 => {
                r.ok(REACHABLE, &format!("{base} answers"));
                r.warn(
                    ACCEPTED,
                    &format!("not confirmed: rate limited ({e})"),
                    "run doctor again in a minute; lower upload.requests_per_minute if this persists",
                );
            }
            404 => {
                r.fail(
                    REACHABLE,
                    &format!("{base} answered {e} for /assets"),
                    "api.base_url should be the v1.3 API, e.g. https://api.twelvelabs.io/v1.3",
                );
                r.skip(ACCEPTED, not_checked);
            }
            _ => {
                r.fail(
                    REACHABLE,
                    &format!("{base} answered {e}"),
                    "if it is 5xx the platform has trouble: try later; otherwise check api.base_url and any proxy",
                );
                r.skip(ACCEPTED, not_checked);
            }
        },
        Err(e) => {
            r.fail(
                REACHABLE,
                &format!("{base} does not answer like the TwelveLabs API: {e}"),
                "check api.base_url (e.g. https://api.twelvelabs.io/v1.3) and any proxy",
            );
            r.skip(ACCEPTED, not_checked);
        }
    }
}

/// Each root: exists, readable, writable where needed, its filesystem.
/// Returns the roots inotify will watch (local ones, in native mode).
fn watch_checks(ctx: &Context, r: &mut Report) -> Vec<(PathBuf, bool)> {
    let config = &ctx.config;
    let mut native = Vec::new();
    if config.watch.is_empty() {
        r.skip(
            "watch folders",
            "none configured (`run` needs a [[watch]] table; `upload` does not)",
        );
        return native;
    }
    for (i, w) in config.watch.iter().enumerate() {
        let path = std::path::absolute(&w.path).unwrap_or_else(|_| w.path.clone());
        let name = format!("watch[{i}] {}", path.display());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                r.fail(
                    &name,
                    "is not a folder",
                    &format!("point watch[{i}].path at a folder"),
                );
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                r.fail(
                    &name,
                    "does not exist (removed, or a share not mounted?); a running daemon \
                     waits for it and watches it again when it is back",
                    &format!(
                        "create it (mkdir -p {}), mount it, or fix watch[{i}].path",
                        path.display()
                    ),
                );
                continue;
            }
            Err(e) => {
                r.fail(
                    &name,
                    &format!("cannot be read: {e}"),
                    "give the user tl-ingest runs as access to it",
                );
                continue;
            }
        }
        if let Err(e) = std::fs::read_dir(&path) {
            r.fail(
                &name,
                &format!("cannot be listed: {e}"),
                "give the user tl-ingest runs as read and execute permission on it",
            );
            continue;
        }
        match write_problem(&path, w) {
            Some((detail, fix)) => r.fail(&name, &detail, &fix),
            None => r.ok(&name, &access_summary(w)),
        }
        let fs_name = format!("filesystem of watch[{i}]");
        match (network_fs(&path), config.watcher.mode) {
            (Some(fs), WatcherMode::Native) => r.warn(
                &fs_name,
                &format!(
                    "{fs}: inotify misses changes made on other machines, so this folder is polled"
                ),
                "set watcher.mode = \"poll\" to say so (and tune watcher.poll_interval)",
            ),
            (Some(fs), WatcherMode::Poll) => r.ok(&fs_name, &format!("{fs}, polled")),
            (None, WatcherMode::Native) => {
                r.ok(&fs_name, "local");
                native.push((path.clone(), w.recursive));
            }
            (None, WatcherMode::Poll) => r.ok(&fs_name, "local (polled: watcher.mode = \"poll\")"),
        }
    }
    native
}

fn access_summary(w: &WatchConfig) -> String {
    match needs_write(w) {
        Some(why) => format!("readable and writable ({why})"),
        None => "readable".into(),
    }
}

/// Why tl-ingest must write in this root, if it must.
fn needs_write(w: &WatchConfig) -> Option<String> {
    let why = |key: &str, action: &FileAction| match action {
        FileAction::Named(FileActionName::Keep) => None,
        FileAction::Named(FileActionName::Delete) => Some(format!("{key} = \"delete\"")),
        FileAction::MoveTo { move_to } => Some(format!(
            "{key} = {{ move_to = {:?} }}",
            move_to.display().to_string()
        )),
    };
    let reasons: Vec<String> = [
        why("after_upload", &w.after_upload),
        why("on_failure", &w.on_failure),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

/// The detail and fix when a root (or a `move_to` target) cannot be written
/// though files must be deleted or moved.
fn write_problem(root: &Path, w: &WatchConfig) -> Option<(String, String)> {
    let why = needs_write(w)?;
    if !writable(root) {
        return Some((
            format!("is not writable, but {why}"),
            "give the user tl-ingest runs as write permission on it, or use \"keep\"".into(),
        ));
    }
    for action in [&w.after_upload, &w.on_failure] {
        let FileAction::MoveTo { move_to } = action else {
            continue;
        };
        let target = if move_to.is_absolute() {
            move_to.clone()
        } else {
            root.join(move_to)
        };
        // It is created when needed: the nearest existing folder must be writable.
        let existing = target.ancestors().find(|a| a.exists());
        match existing {
            Some(dir) if dir.is_dir() && writable(dir) => {}
            Some(dir) => {
                return Some((
                    format!(
                        "files cannot be moved to {}: {} is not a writable folder",
                        target.display(),
                        dir.display()
                    ),
                    "make the move_to folder writable, or choose another".into(),
                ));
            }
            None => {
                return Some((
                    format!("files cannot be moved to {}", target.display()),
                    "choose a move_to folder that can be created".into(),
                ));
            }
        }
    }
    None
}

fn writable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
}

/// The inotify limit against the folders the native watcher will watch.
async fn inotify_check(ctx: &Context, roots: Vec<(PathBuf, bool)>, r: &mut Report) {
    const NAME: &str = "inotify watches";
    if ctx.config.watcher.mode == WatcherMode::Poll {
        r.skip(NAME, "not used (watcher.mode = \"poll\")");
        return;
    }
    if roots.is_empty() {
        r.skip(NAME, "no local folder to watch");
        return;
    }
    let limit = match std::fs::read_to_string(INOTIFY_LIMIT)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    {
        Some(l) => l,
        None => {
            r.skip(NAME, &format!("cannot read {INOTIFY_LIMIT} (not Linux?)"));
            return;
        }
    };
    let cap = limit.saturating_add(1).min(MAX_FOLDERS_COUNTED);
    let counted = tokio::task::spawn_blocking(move || count_folders(&roots, cap)).await;
    let Ok(count) = counted else {
        r.skip(NAME, "could not count the folders");
        return;
    };
    let suggested = (count.saturating_mul(2)).next_power_of_two().max(524_288);
    let raise = format!(
        "echo fs.inotify.max_user_watches={suggested} | sudo tee /etc/sysctl.d/90-tl-ingest.conf && sudo sysctl --system (or set watcher.mode = \"poll\")"
    );
    if count > limit {
        r.fail(
            NAME,
            &format!(
                "{}{count} folders to watch, but fs.inotify.max_user_watches is {limit}",
                if count >= cap { "at least " } else { "" }
            ),
            &raise,
        );
    } else if count >= cap {
        r.warn(
            NAME,
            &format!("more than {cap} folders to watch (stopped counting); limit {limit}"),
            "watch fewer, deeper trees, or set watcher.mode = \"poll\"",
        );
    } else if count.saturating_mul(4) > limit.saturating_mul(3) {
        r.warn(
            NAME,
            &format!(
                "{count} folders to watch, close to fs.inotify.max_user_watches = {limit} (other programs use watches too)"
            ),
            &raise,
        );
    } else {
        let folders = if count == 1 { "folder" } else { "folders" };
        r.ok(
            NAME,
            &format!("{count} {folders} to watch, fs.inotify.max_user_watches = {limit}"),
        );
    }
}

/// Folders under the roots (one per non-recursive root), up to `cap`.
fn count_folders(roots: &[(PathBuf, bool)], cap: u64) -> u64 {
    let mut count = 0u64;
    for (root, recursive) in roots {
        if !recursive {
            count += 1;
        } else {
            let walk = walkdir::WalkDir::new(root)
                .follow_links(false)
                .into_iter()
                .filter_entry(|e| e.file_type().is_dir());
            for entry in walk {
                if entry.is_ok() {
                    count += 1;
                }
                if count >= cap {
                    return count;
                }
            }
        }
        if count >= cap {
            return count;
        }
    }
    count
}

/// Integrity, filesystem and free space of the ledger.
async fn ledger_checks(ctx: &Context, r: &mut Report) {
    const NAME: &str = "ledger";
    let path = ctx.ledger_path();
    let path = std::path::absolute(&path).unwrap_or(path);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        r.fail(
            NAME,
            &format!("its folder {} does not exist", dir.display()),
            "create the folder, or set ledger.path (StateDirectory= under systemd)",
        );
        return;
    }
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if writable(&dir) {
                r.ok(
                    NAME,
                    &format!(
                        "{} does not exist yet; it is created on first use",
                        path.display()
                    ),
                );
            } else {
                r.fail(
                    NAME,
                    &format!("{} cannot be created: {} is not writable", path.display(), dir.display()),
                    "give the user tl-ingest runs as write permission on the folder, or set ledger.path",
                );
            }
        }
        Err(e) => r.fail(
            NAME,
            &format!("{}: {e}", path.display()),
            "give the user tl-ingest runs as access to it",
        ),
        Ok(m) if !m.is_file() => r.fail(
            NAME,
            &format!("{} is not a file", path.display()),
            "set ledger.path to a file",
        ),
        Ok(_) => integrity(&path, r).await,
    }

    let fs_name = "ledger filesystem";
    match network_fs(&dir) {
        Some(fs) => r.warn(
            fs_name,
            &format!(
                "{} is on {fs}: SQLite locking there is unreliable",
                dir.display()
            ),
            "put ledger.path on a local disk (e.g. /var/lib/tl-ingest)",
        ),
        None => match crate::ledger::disk::disk_of(&dir) {
            Some(d) if d.read_only => r.fail(
                fs_name,
                &format!("{} is mounted read-only", d.where_(&dir)),
                "remount it read-write or move ledger.path; the daemon waits and resumes by itself",
            ),
            Some(d) => r.ok(fs_name, &format!("local: {}", d.where_(&dir))),
            None => r.ok(fs_name, "local"),
        },
    }

    let disk = "free disk";
    match crate::ledger::disk::disk_of(&dir) {
        Some(d) => {
            let size = |n: u64| bytesize::ByteSize(n).display().si().to_string();
            let shown = format!(
                "{} free of {} on {}",
                size(d.free),
                size(d.total),
                d.where_(&dir)
            );
            if d.is_full() {
                r.fail(
                    disk,
                    &format!("the ledger's disk is full: {shown}"),
                    "free some space there: the daemon waits for it and resumes by itself, nothing is lost",
                );
            } else if d.free < MIN_FREE {
                r.warn(
                    disk,
                    &format!("only {shown}"),
                    "free some space: the ledger and SQLite's journal need room to grow",
                );
            } else {
                r.ok(disk, &shown);
            }
        }
        None => r.skip(disk, "cannot tell: statvfs failed"),
    }
}

/// The ledger's integrity, checked read only: the file is never changed,
/// whatever it holds.
async fn integrity(path: &Path, r: &mut Report) {
    const NAME: &str = "ledger integrity";
    let shown = path.display();
    let fix_corrupt = "stop the daemon, move the file aside (a new ledger is started) or restore a backup; `sqlite3 FILE .recover` may save its records";
    match diagnose::sqlite_integrity(path).await {
        Integrity::Ok => r.ok(NAME, &format!("{shown}: ok")),
        Integrity::NoSchema => r.fail(
            NAME,
            &format!("{shown} is an SQLite file without a tl-ingest schema"),
            "set ledger.path to the ledger, or move this file aside",
        ),
        Integrity::Unopenable(e) => r.fail(NAME, &format!("cannot open {shown}: {e}"), fix_corrupt),
        Integrity::SchemaUnreadable(e) => r.fail(NAME, &format!("{shown}: {e}"), fix_corrupt),
        Integrity::Problems(rows) => {
            let first = rows.first().cloned().unwrap_or_default();
            r.fail(
                NAME,
                &format!("{shown}: {} problem(s), first: {first}", rows.len()),
                fix_corrupt,
            );
        }
        Integrity::NotSqlite(e) => r.fail(
            NAME,
            &format!("{shown} is not a valid SQLite ledger: {e}"),
            fix_corrupt,
        ),
    }
}

/// The password written in a `postgres://` URL, if any.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let (_, password) = userinfo.split_once(':')?;
    Some(password).filter(|p| !p.is_empty())
}

/// The checks of a PostgreSQL ledger, on one connection of its own.
async fn postgres_checks(ctx: &Context, url: &PgUrl, r: &mut Report) {
    const CONNECT: &str = "ledger connection";
    let pg = match PgTarget::parse(url) {
        Ok(pg) => pg,
        Err(e) => {
            r.fail(
                CONNECT,
                &format!("{url} cannot be used: {e}"),
                "fix ledger.url, e.g. postgres://tl_ingest@db.example/tl_ingest?sslmode=verify-full",
            );
            return;
        }
    };
    let target = pg.address();
    let connected = tokio::time::timeout(PG_CONNECT_TIMEOUT, pg.connect()).await;
    let mut probe = match connected {
        Ok(Ok(probe)) => probe,
        Ok(Err(e)) => {
            let (detail, fix) = pg_failure(&e, &pg, &target);
            r.fail(
                CONNECT,
                &format!("cannot connect to {url}: {}", url.redact_text(&detail)),
                &fix,
            );
            r.skip("ledger", "not checked: no connection to the database");
            return;
        }
        Err(_) => {
            r.fail(
                CONNECT,
                &format!(
                    "cannot connect to {url}: no answer from {target} within {}s",
                    PG_CONNECT_TIMEOUT.as_secs()
                ),
                "is the server up, and does the network (firewall, security group) let this host reach it?",
            );
            r.skip("ledger", "not checked: no connection to the database");
            return;
        }
    };
    r.ok(
        CONNECT,
        &format!(
            "{url}: logged in as {} to database {}",
            pg.user(),
            pg.database()
        ),
    );
    pg_version_check(&mut probe, r).await;
    let schema = pg_schema_check(&mut probe, r).await;
    pg_tls_check(&mut probe, &pg, r).await;
    pg_clock_check(&mut probe, r).await;
    probe.close().await;
    match schema {
        Schema::Current => fleet_check(ctx, url, r).await,
        Schema::Missing => r.skip("daemons", "none: no daemon has used this ledger yet"),
        Schema::Other => r.skip(
            "daemons",
            "not checked: the ledger's schema is not this version's",
        ),
    }
}

/// A failed connection in words, and its fix.
fn pg_failure(e: &ConnectFailure, pg: &PgTarget, target: &str) -> (String, String) {
    let user = pg.user();
    let database = pg.database();
    match e {
        ConnectFailure::LoginRefused(message) => (
            format!("the server refused the login of {user} ({message})"),
            format!(
                "check the user and its password (PGPASSWORD or ~/.pgpass rather than in the URL), and that pg_hba.conf lets {user} in from this host"
            ),
        ),
        ConnectFailure::NoDatabase(message) => (
            format!("there is no database {database} ({message})"),
            format!("create it: psql -c 'CREATE DATABASE {database} OWNER {user}'"),
        ),
        ConnectFailure::TooManyConnections(message) => (
            format!("the server has no connection to spare ({message})"),
            "raise max_connections on the server, or run fewer clients".into(),
        ),
        ConnectFailure::NotAccepting(message) => (
            format!("the server is not accepting connections yet ({message})"),
            "wait until it has started (or left recovery), then try again".into(),
        ),
        ConnectFailure::Server(message) => (
            message.clone(),
            "see the server's log for this connection".into(),
        ),
        ConnectFailure::Refused => (
            format!("the connection was refused: nothing listens on {target}"),
            "start PostgreSQL, or fix the host and port in ledger.url (the server's listen_addresses and port)".into(),
        ),
        ConnectFailure::Unreachable(io) => (
            format!("cannot reach {target}: {io}"),
            "check the host name in ledger.url, DNS, and that the network lets this host reach the server".into(),
        ),
        ConnectFailure::Tls(t) => (
            format!("TLS failed: {t}"),
            "check sslmode and sslrootcert in ledger.url: the server's certificate must come from a CA this host trusts and name the host in the URL".into(),
        ),
        ConnectFailure::Configuration(c) => (
            format!("ledger.url is not usable: {c}"),
            "fix ledger.url, e.g. postgres://tl_ingest@db.example/tl_ingest?sslmode=verify-full".into(),
        ),
        ConnectFailure::Other(other) => (
            other.clone(),
            "check ledger.url and the server's log".into(),
        ),
    }
}

/// The server's version: 13 at the least, 14 or newer to be supported.
async fn pg_version_check(probe: &mut PgProbe, r: &mut Report) {
    const NAME: &str = "PostgreSQL version";
    let ServerVersion {
        number,
        name: shown,
    } = probe.server_version().await;
    match number {
        Some(n) if n < PG_OLDEST => r.fail(
            NAME,
            &format!("{shown} ({n}) is too old: tl-ingest needs PostgreSQL 13 or newer"),
            "upgrade the server to a supported PostgreSQL (14 or newer)",
        ),
        Some(n) if n < PG_SUPPORTED => r.warn(
            NAME,
            &format!("{shown} ({n}) works, but PostgreSQL 13 no longer gets fixes"),
            "upgrade the server to a supported PostgreSQL (14 or newer)",
        ),
        Some(n) => r.ok(NAME, &format!("{shown} ({n})")),
        None => r.skip(NAME, "the server did not say"),
    }
}

/// What [`pg_schema_check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// This build's: opening the ledger changes nothing.
    Current,
    /// No schema yet.
    Missing,
    /// Older, newer, half-migrated, or unknown.
    Other,
}

/// The schema's version against this build's.
async fn pg_schema_check(probe: &mut PgProbe, r: &mut Report) -> Schema {
    const NAME: &str = "ledger schema";
    let ours = schema_version(true);
    match probe.schema().await {
        Ok(PgSchema::Missing) => {
            if probe.may_create().await {
                r.ok(NAME, "none yet: the first daemon to start creates it");
            } else {
                r.fail(
                    NAME,
                    "none yet, and this user may not create tables in the database's schema",
                    "make the user the database's owner (ALTER DATABASE … OWNER TO …), or GRANT CREATE ON SCHEMA public TO it",
                );
            }
            Schema::Missing
        }
        Ok(PgSchema::Unfinished(v)) => {
            r.fail(
                NAME,
                &format!("migration {v} did not finish: the schema is half-changed"),
                "see the server's log for why; restore the database from a backup, or finish the migration by hand and mark it done",
            );
            Schema::Other
        }
        Ok(PgSchema::Changed(version)) => {
            r.fail(
                NAME,
                &format!(
                    "migration {version} was applied by a tl-ingest whose migration {version} differs from this one's: this one cannot open the ledger"
                ),
                "run one tl-ingest release on every host; a ledger migrated by a development build is best started afresh",
            );
            Schema::Other
        }
        Ok(PgSchema::Applied(Some(have))) if have == ours => {
            r.ok(NAME, &format!("version {have}, this tl-ingest's"));
            Schema::Current
        }
        Ok(PgSchema::Applied(Some(have))) if have > ours => {
            r.fail(
                NAME,
                &format!(
                    "version {have} is newer than this tl-ingest's ({ours}): a newer tl-ingest migrated it, and this one cannot open it"
                ),
                "upgrade tl-ingest on this host to the version the rest of the fleet runs",
            );
            Schema::Other
        }
        Ok(PgSchema::Applied(have)) => {
            let have = have.map_or_else(|| "none".to_string(), |v| v.to_string());
            let fix = if probe.may_create().await {
                "upgrade tl-ingest on every host of the fleet before starting them again: a host still on the older version cannot open the migrated ledger"
            } else {
                "this user may not create tables, so it cannot migrate: make it the database's owner, or GRANT CREATE ON SCHEMA public TO it"
            };
            r.warn(
                NAME,
                &format!(
                    "version {have}, older than this tl-ingest's ({ours}): the next start of this version migrates it"
                ),
                fix,
            );
            Schema::Other
        }
        Err(e) => {
            r.skip(NAME, &format!("cannot tell: {e}"));
            Schema::Other
        }
    }
}

/// TLS on a connection that leaves this host, with the server's
/// certificate checked.
async fn pg_tls_check(probe: &mut PgProbe, pg: &PgTarget, r: &mut Report) {
    const NAME: &str = "ledger TLS";
    let mode = pg.ssl_mode();
    let mode_name = mode.name();
    let ssl = match probe.tls_in_use().await {
        Ok(Some(ssl)) => ssl,
        Ok(None) => {
            r.skip(NAME, "the server did not say");
            return;
        }
        Err(e) => {
            r.skip(NAME, &format!("cannot tell: {e}"));
            return;
        }
    };
    let verified = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let fix = "add sslmode=verify-full to ledger.url (and sslrootcert=/path/to/ca.pem when the server's certificate comes from a private CA)";
    match (pg.is_local(), ssl, verified) {
        (_, true, true) => r.ok(
            NAME,
            &format!("in use, the server's certificate checked (sslmode={mode_name})"),
        ),
        (true, true, false) => r.ok(NAME, &format!("in use (sslmode={mode_name})")),
        (true, false, _) => r.ok(
            NAME,
            &format!("not used (sslmode={mode_name}); the server is on this host"),
        ),
        (false, true, false) => r.warn(
            NAME,
            &format!(
                "in use, but the server's certificate is not checked (sslmode={mode_name}): another machine could pose as the server"
            ),
            fix,
        ),
        (false, false, _) => r.warn(
            NAME,
            &format!(
                "not used (sslmode={mode_name}): the login and the ledger's data cross the network in clear text"
            ),
            fix,
        ),
    }
}

/// This host's clock against the database's: leases and the fleet's pacing
/// use the database's clock, but records' times come from each host's.
async fn pg_clock_check(probe: &mut PgProbe, r: &mut Report) {
    const NAME: &str = "clock";
    let ClockReading {
        before,
        database: db,
        after,
    } = match probe.clock().await {
        Ok(reading) => reading,
        Err(e) => {
            r.skip(NAME, &format!("cannot tell: {e}"));
            return;
        }
    };
    let skew = (before + after) / 2 - db;
    let margin = CLOCK_SKEW_MS + (after - before) / 2;
    let shown = super::history::span(skew.abs());
    if skew.abs() > margin {
        r.warn(
            NAME,
            &format!(
                "this host's clock is {shown} {} the database server's",
                if skew > 0 { "ahead of" } else { "behind" }
            ),
            "keep every host's clock in sync (NTP: timedatectl set-ntp true, or chrony)",
        );
    } else {
        r.ok(NAME, "within a second of the database server's");
    }
}

/// Daemons of the fleet whose heartbeat is late, as `status` shows them.
async fn fleet_check(ctx: &Context, url: &PgUrl, r: &mut Report) {
    const NAME: &str = "daemons";
    let location = Location::Postgres(url.clone());
    // The schema is this build's: opening the ledger migrates nothing.
    let ledger = match Ledger::open_existing_at(&location).await {
        Ok(l) => l,
        Err(e) => {
            r.skip(NAME, &format!("not checked: {e}"));
            return;
        }
    };
    let listed = ledger.daemons(now_ms() - 3_600_000).await;
    ledger.close().await;
    let daemons = match listed {
        Ok(d) => d,
        Err(e) => {
            r.skip(NAME, &format!("not checked: {e}"));
            return;
        }
    };
    let after = i64::try_from(stale_after(ctx.config.ledger.lease).as_millis()).unwrap_or(i64::MAX);
    let state = |d| DaemonState::of(d, after);
    let running = daemons
        .iter()
        .filter(|d| state(d) == DaemonState::Running)
        .count();
    let stale: Vec<String> = daemons
        .iter()
        .filter(|d| state(d) == DaemonState::Stale)
        .map(|d| {
            format!(
                "{} pid {} (no heartbeat for {})",
                d.host,
                d.pid,
                super::history::span(heartbeat_age(d))
            )
        })
        .collect();
    if stale.is_empty() {
        r.ok(NAME, &format!("{running} running, none stale"));
    } else {
        r.warn(
            NAME,
            &format!(
                "{running} running, {} STALE: {}",
                stale.len(),
                stale.join(", ")
            ),
            "see whether that daemon still runs and reaches the database (`tl-ingest status` lists the fleet); its uploads are taken over once its lease (ledger.lease) runs out",
        );
    }
}
