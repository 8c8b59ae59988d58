//! A fleet (issue 8): several daemons, the real binary, sharing one
//! PostgreSQL ledger and one folder. They run when
//! `TL_INGEST_TEST_POSTGRES_URL` names a server (`.ci/run` starts one) and
//! say they were skipped otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use tempfile::TempDir;
use tl_ingest::emulator::{Emulator, EmulatorConfig, Faults};
use tl_ingest::ledger::{FileState, Ledger, Location, PgUrl};

use crate::helpers::{KEY, Kind, dump, pg, write_media};

/// How long a scenario may take to finish.
const DEADLINE: Duration = Duration::from_secs(120);

/// One emulator, one PostgreSQL database, one shared inbox.
struct Fleet {
    dir: TempDir,
    inbox: PathBuf,
    emulator: Emulator,
    url: PgUrl,
}

impl Fleet {
    async fn new(faults: Faults) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).expect("inbox");
        let emulator = Emulator::start(EmulatorConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            api_key: KEY.into(),
            ready_delay: Duration::from_millis(50),
            faults,
            ..EmulatorConfig::default()
        })
        .await
        .expect("emulator starts");
        Fleet {
            dir,
            inbox,
            emulator,
            url: pg::fresh_database().await,
        }
    }

    /// A daemon's configuration: the shared ledger with a short lease, the
    /// shared inbox, and `extra` lines for `[upload]`.
    fn config(&self, name: &str, upload: &str) -> PathBuf {
        self.config_watching(name, upload, &self.inbox)
    }

    /// [`Fleet::config`] watching `inbox`.
    fn config_watching(&self, name: &str, upload: &str, inbox: &Path) -> PathBuf {
        self.config_full(name, upload, inbox, &self.url)
    }

    /// [`Fleet::config`] watching `inbox`, on the ledger at `url`.
    fn config_full(&self, name: &str, upload: &str, inbox: &Path, url: &PgUrl) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        let text = format!(
            "[api]\nbase_url = {:?}\npoll_interval = \"30ms\"\nrequest_timeout = \"60s\"\n\
             [ledger]\npath = {:?}\nurl = {:?}\nlease = \"2s\"\n\
             [upload]\ninitial_backoff = \"20ms\"\nmax_backoff = \"300ms\"\nmax_attempts = 12\n\
             shutdown_grace = \"5s\"\n{upload}\n\
             [watcher]\nsettle = \"100ms\"\nrescan_interval = \"1h\"\n\
             [[watch]]\npath = {:?}\n",
            self.emulator.base_url(),
            self.dir
                .path()
                .join(format!("{name}.db"))
                .display()
                .to_string(),
            url.expose(),
            inbox.display().to_string(),
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// `tl-ingest run` in the background, its output in `<name>.log`.
    fn spawn(&self, name: &str, config: &Path) -> Child {
        self.spawn_on("", name, config)
    }

    /// [`Fleet::spawn`] as if on host `host` (`TL_INGEST_HOST`; empty: this one).
    fn spawn_on(&self, host: &str, name: &str, config: &Path) -> Child {
        let log =
            std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("daemon log");
        let err = log.try_clone().expect("log handle");
        Command::new(env!("CARGO_BIN_EXE_tl-ingest"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("TWELVELABS_API_KEY", KEY)
            .env("RUST_LOG", "info")
            .env("TL_INGEST_HOST", host)
            .current_dir(self.dir.path())
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn daemon")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn ledger(&self) -> Ledger {
        Ledger::open_existing_at(&Location::Postgres(self.url.clone()))
            .await
            .expect("the shared ledger opens")
    }

    /// Media files in the inbox; path → sha256.
    fn write_files(&self, n: usize, size: usize, seed: u64) -> BTreeMap<PathBuf, String> {
        write_files_in(&self.inbox, n, size, seed)
    }

    /// Wait until every record is `ready` and there are `n` of them.
    async fn wait_all_ready(&self, ledger: &Ledger, n: usize, names: &[&str]) {
        let done = tokio::time::timeout(DEADLINE, async {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let counts = ledger.counts().await.expect("counts");
                let ready = counts
                    .iter()
                    .find(|(s, _)| *s == FileState::Ready)
                    .map_or(0, |(_, n)| *n);
                let all: i64 = counts.iter().map(|(_, n)| n).sum();
                if ready == all && usize::try_from(ready).expect("count") == n {
                    return;
                }
            }
        })
        .await;
        if done.is_err() {
            let logs: Vec<String> = names
                .iter()
                .map(|n| format!("--- {n}:\n{}", self.log(n)))
                .collect();
            panic!(
                "not every file became ready within {DEADLINE:?}; ledger:\n{}\n{}",
                dump(ledger).await,
                logs.join("\n")
            );
        }
    }

    /// Every file has one record, `ready`, whose asset holds its bytes, and
    /// no content reached the platform twice.
    async fn assert_each_uploaded_once(&self, ledger: &Ledger, files: &BTreeMap<PathBuf, String>) {
        let records = ledger.history(&[], None).await.expect("history");
        let assets: BTreeMap<String, Option<String>> = self
            .emulator
            .assets()
            .into_iter()
            .map(|a| (a.id, a.sha256))
            .collect();
        for (path, sha) in files {
            let shown = path.to_string_lossy();
            let of_path: Vec<_> = records
                .iter()
                .filter(|r| r.path.as_deref() == Some(&*shown))
                .collect();
            assert_eq!(
                of_path.len(),
                1,
                "one record for {shown}:\n{}",
                dump(ledger).await
            );
            assert_eq!(of_path[0].state, "ready", "{shown}");
            let asset = of_path[0].asset_id.as_deref().expect("asset id");
            assert_eq!(
                assets.get(asset),
                Some(&Some(sha.clone())),
                "{shown}'s bytes"
            );
        }
        let stats = self.emulator.stats();
        let twice: Vec<_> = stats
            .uploads_by_sha256
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect();
        assert!(twice.is_empty(), "uploaded more than once: {twice:?}");
        assert_eq!(stats.assets_created, u64::try_from(files.len()).expect("n"));
    }
}

/// `n` media files under `dir`; path → sha256.
fn write_files_in(dir: &Path, n: usize, size: usize, seed: u64) -> BTreeMap<PathBuf, String> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("d{}/clip{i:04}.mp4", i % 8));
            let sha = write_media(&path, Kind::Mp4, size + i * 13, seed + i as u64);
            (path, sha)
        })
        .collect()
}

/// Whether the daemon with `pid` comes to hold uploads in the number
/// `held` accepts, within the deadline.
async fn holds(ledger: &Ledger, pid: i64, held: impl Fn(i64) -> bool) -> bool {
    tokio::time::timeout(DEADLINE, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if let Ok(ds) = ledger.daemons(0).await
                && ds.iter().any(|d| d.pid == pid && held(d.in_flight))
            {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// Whether every daemon in `pids` has joined the ledger and runs, within
/// the deadline.
async fn all_joined(ledger: &Ledger, pids: &[i64]) -> bool {
    tokio::time::timeout(DEADLINE, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if let Ok(ds) = ledger.daemons(0).await
                && pids
                    .iter()
                    .all(|p| ds.iter().any(|d| d.pid == *p && d.stopped_at.is_none()))
            {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// SIGTERM and wait (a clean stop leaves the daemon's row `stopped`).
async fn terminate(mut child: Child) {
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let waited = tokio::task::spawn_blocking(move || {
        let status = child.wait();
        (child, status)
    });
    match tokio::time::timeout(Duration::from_secs(30), waited).await {
        Ok(Ok((_, status))) => {
            status.expect("wait");
        }
        _ => panic!("a daemon did not stop within 30 s of SIGTERM"),
    }
}

/// Per daemon id, the attempts that put a file on the platform.
async fn uploads_by_daemon(ledger: &Ledger) -> BTreeMap<i64, usize> {
    let mut by = BTreeMap::new();
    for rec in ledger.history(&[], None).await.expect("history") {
        for a in ledger.attempts(rec.id).await.expect("attempts") {
            if a.outcome.as_deref() == Some("accepted") {
                *by.entry(a.daemon_id.unwrap_or(-1)).or_insert(0) += 1;
            }
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_a_folder_and_upload_each_file_once() {
    if pg::server_url().is_none() {
        return pg::skipped("fleet::three_daemons_share_a_folder_and_upload_each_file_once");
    }
    let fleet = Fleet::new(Faults {
        latency_ms: 20,
        ..Faults::default()
    })
    .await;
    let names = ["a", "b", "c"];
    let daemons: Vec<Child> = names
        .iter()
        .map(|n| fleet.spawn(n, &fleet.config(n, "workers = 2")))
        .collect();
    let ledger = fleet.ledger().await;
    // The files arrive once all three run: a daemon slow to start (a
    // loaded CI machine) would otherwise find the work already taken.
    let pids: Vec<i64> = daemons.iter().map(|d| i64::from(d.id())).collect();
    assert!(
        all_joined(&ledger, &pids).await,
        "not every daemon joined the ledger:\n{}",
        names.map(|n| fleet.log(n)).join("\n")
    );
    let files = fleet.write_files(200, 3_000, 0xf1ee7);
    fleet.wait_all_ready(&ledger, files.len(), &names).await;
    for d in daemons {
        terminate(d).await;
    }
    fleet.assert_each_uploaded_once(&ledger, &files).await;

    let members = ledger.daemons(0).await.expect("daemons");
    assert_eq!(members.len(), 3, "three daemons joined: {members:?}");
    assert!(
        members.iter().all(|d| d.stopped_at.is_some()),
        "all stopped cleanly: {members:?}"
    );
    let by = uploads_by_daemon(&ledger).await;
    eprintln!("FLEET uploads per daemon: {by:?}");
    for d in &members {
        assert!(
            by.get(&d.id).copied().unwrap_or(0) > 0,
            "daemon {} (pid {}) uploaded nothing; work: {by:?}",
            d.id,
            d.pid
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemons_uploads_are_taken_over_after_its_lease_without_duplicates() {
    if pg::server_url().is_none() {
        return pg::skipped(
            "fleet::a_killed_daemons_uploads_are_taken_over_after_its_lease_without_duplicates",
        );
    }
    // Slow requests, so that the victim is caught with uploads in flight.
    let fleet = Fleet::new(Faults {
        latency_ms: 300,
        ..Faults::default()
    })
    .await;
    let files = fleet.write_files(24, 50_000, 0x5ead);
    let mut victim = fleet.spawn("victim", &fleet.config("victim", "workers = 4"));
    let victim_pid = i64::from(victim.id());
    let ledger = fleet.ledger().await;
    // Until the victim holds uploads; then it dies mid-upload.
    let caught = holds(&ledger, victim_pid, |n| n > 0).await;
    assert!(
        caught,
        "the victim never held an upload:\n{}",
        fleet.log("victim")
    );
    victim.kill().expect("SIGKILL");
    tokio::task::spawn_blocking(move || victim.wait())
        .await
        .expect("join")
        .expect("reap");
    let killed_at = SystemTime::now();
    let victim_id = ledger
        .daemons(0)
        .await
        .expect("daemons")
        .into_iter()
        .find(|d| d.pid == victim_pid)
        .map(|d| d.id)
        .expect("the victim joined");

    // On another host: it cannot know the victim is dead, only see its
    // lease run out.
    let heir = fleet.spawn_on("host-heir", "heir", &fleet.config("heir", "workers = 4"));
    fleet
        .wait_all_ready(&ledger, files.len(), &["victim", "heir"])
        .await;
    terminate(heir).await;
    fleet.assert_each_uploaded_once(&ledger, &files).await;

    // What the victim held was closed as taken over, and finished by the heir.
    let mut taken_over = 0;
    for rec in ledger.history(&[], None).await.expect("history") {
        let attempts = ledger.attempts(rec.id).await.expect("attempts");
        let cut = attempts.iter().any(|a| {
            a.daemon_id == Some(victim_id)
                && a.outcome.as_deref() == Some("interrupted")
                && a.error.as_deref().is_some_and(|e| e.contains("taken over"))
        });
        if cut {
            taken_over += 1;
            let last = attempts.last().expect("an attempt");
            assert_ne!(last.daemon_id, Some(victim_id), "{attempts:?}");
            assert!(
                matches!(last.outcome.as_deref(), Some("accepted" | "found")),
                "{attempts:?}"
            );
            let ended = last.ended_at.expect("ended");
            assert!(
                tl_ingest::ledger::from_ms(ended) > killed_at,
                "finished after the kill: {attempts:?}"
            );
        }
    }
    assert!(
        taken_over > 0,
        "the victim's uploads were taken over:\n{}",
        dump(&ledger).await
    );
    eprintln!("FLEET taken over after SIGKILL: {taken_over}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_and_a_429_pause_hold_for_the_whole_fleet() {
    if pg::server_url().is_none() {
        return pg::skipped("fleet::the_rate_limit_and_a_429_pause_hold_for_the_whole_fleet");
    }
    const RPM: u32 = 300; // one request every 200 ms, for the fleet
    let fleet = Fleet::new(Faults {
        rate_limit: 0.15,
        retry_after_secs: 1,
        ..Faults::default()
    })
    .await;
    let files = fleet.write_files(24, 2_000, 0x7a7e);
    let names = ["a", "b", "c"];
    let upload = format!("workers = 3\nrequests_per_minute = {RPM}");
    let daemons: Vec<Child> = names
        .iter()
        .map(|n| fleet.spawn(n, &fleet.config(n, &upload)))
        .collect();
    let ledger = fleet.ledger().await;
    fleet.wait_all_ready(&ledger, files.len(), &names).await;
    for d in daemons {
        terminate(d).await;
    }
    fleet.assert_each_uploaded_once(&ledger, &files).await;

    let stats = fleet.emulator.stats();
    let spacing = Duration::from_secs(60) / RPM;
    let mut times = stats.create_request_times.clone();
    times.sort();
    // Each request leaves when its slot comes; the network may bring two
    // a little closer together than they left.
    let slack = Duration::from_millis(60);
    let gaps: Vec<Duration> = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .collect();
    let closest = gaps.iter().min().copied().unwrap_or(spacing);
    eprintln!(
        "FLEET create requests={} closest_gap_ms={} rate_limited={} requests_while_rate_limited={}",
        times.len(),
        closest.as_millis(),
        stats.injected_rate_limits,
        stats.requests_while_rate_limited
    );
    assert!(
        closest + slack >= spacing,
        "two uploads {closest:?} apart across the fleet; the limit allows one per {spacing:?}"
    );
    assert!(
        stats.injected_rate_limits > 0,
        "the scenario served some 429s"
    );
    assert_eq!(
        stats.requests_while_rate_limited, 0,
        "a 429 to one daemon paused all of them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_sends_only_the_files_it_can_see() {
    if pg::server_url().is_none() {
        return pg::skipped("fleet::each_host_sends_only_the_files_it_can_see");
    }
    // Two capture hosts, each with its own drop folder. The busy one is
    // slow; the idle one must not take its files, which it cannot read.
    let fleet = Fleet::new(Faults {
        latency_ms: 50,
        ..Faults::default()
    })
    .await;
    let (inbox_a, inbox_b) = (fleet.dir.path().join("a-in"), fleet.dir.path().join("b-in"));
    let mut files = write_files_in(&inbox_a, 30, 4_000, 0xa);
    let few = write_files_in(&inbox_b, 3, 4_000, 0xb);
    files.extend(few.clone());
    let a = fleet.spawn_on(
        "host-a",
        "a",
        &fleet.config_watching("a", "workers = 1", &inbox_a),
    );
    let b = fleet.spawn_on(
        "host-b",
        "b",
        &fleet.config_watching("b", "workers = 4", &inbox_b),
    );
    let ledger = fleet.ledger().await;
    fleet
        .wait_all_ready(&ledger, files.len(), &["a", "b"])
        .await;
    terminate(a).await;
    terminate(b).await;
    fleet.assert_each_uploaded_once(&ledger, &files).await;

    let hosts: BTreeMap<i64, String> = ledger
        .daemons(0)
        .await
        .expect("daemons")
        .into_iter()
        .map(|d| (d.id, d.host))
        .collect();
    for rec in ledger.history(&[], None).await.expect("history") {
        let path = rec.path.clone().expect("a file");
        let own = if path.starts_with(&*inbox_a.to_string_lossy()) {
            "host-a"
        } else {
            "host-b"
        };
        for attempt in ledger.attempts(rec.id).await.expect("attempts") {
            let by = attempt
                .daemon_id
                .and_then(|d| hosts.get(&d))
                .map(String::as_str);
            assert_eq!(
                by,
                Some(own),
                "{path} was tried by another host: {attempt:?}"
            );
        }
    }
}

/// Run `sql` on the test server as its administrator.
async fn admin(sql: &str) {
    use sqlx::Connection;
    let server = pg::server_url().expect("server");
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .expect("admin connects");
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_cut_off_from_the_ledger_stops_sending_before_its_lease_runs_out() {
    if pg::server_url().is_none() {
        return pg::skipped(
            "fleet::a_daemon_cut_off_from_the_ledger_stops_sending_before_its_lease_runs_out",
        );
    }
    // Every request waits 10 s before the server reads its body: the
    // victim's uploads are in flight when it loses the database.
    let fleet = Fleet::new(Faults {
        latency_ms: 10_000,
        ..Faults::default()
    })
    .await;
    let files = fleet.write_files(3, 20_000, 0xfe9ce);
    // The victim logs in as a role of its own, which can be shut out.
    let role = format!("tl_victim_{}_{}", std::process::id(), fastrand::u32(..));
    admin(&format!("CREATE ROLE {role} LOGIN SUPERUSER")).await;
    let (base, db) = fleet.url.expose().rsplit_once('/').expect("url");
    let (_, at) = base.split_once('@').expect("url with a user");
    let victim_url = PgUrl::parse(&format!("postgres://{role}@{at}/{db}")).expect("url");
    let config = fleet.config_full("victim", "workers = 3", &fleet.inbox, &victim_url);
    let mut victim = fleet.spawn("victim", &config);
    let victim_pid = i64::from(victim.id());
    let ledger = fleet.ledger().await;
    let holding = holds(&ledger, victim_pid, |n| n == 3).await;
    assert!(
        holding,
        "the victim never sent all three:\n{}",
        fleet.log("victim")
    );

    // Cut the victim off; from now on the server answers at once, so an
    // upload the victim kept sending would land after the heir's.
    admin(&format!("ALTER ROLE {role} NOLOGIN")).await;
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ))
    .await;
    fleet.emulator.set_faults(Faults::default());
    let heir = fleet.spawn("heir", &fleet.config("heir", "workers = 3"));
    fleet
        .wait_all_ready(&ledger, files.len(), &["victim", "heir"])
        .await;
    // Past the moment the victim's own requests would have been read.
    let settled = tokio::time::timeout(Duration::from_secs(30), async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if fleet.emulator.stats().requests_in_progress == 0 {
                return;
            }
        }
    })
    .await;
    assert!(settled.is_ok(), "requests still in progress");
    terminate(heir).await;
    victim.kill().expect("SIGKILL");
    let _ = tokio::task::spawn_blocking(move || victim.wait()).await;
    fleet.assert_each_uploaded_once(&ledger, &files).await;
    let log = fleet.log("victim");
    assert!(
        log.contains("cannot renew this daemon's leases"),
        "the victim says why it stopped:\n{log}"
    );
    admin(&format!("DROP ROLE IF EXISTS {role}")).await;
}
