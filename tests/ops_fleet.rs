//! The fleet as operators see it, through the real binary: `status` lists
//! the daemons sharing a ledger and flags a stale one, `doctor` checks a
//! PostgreSQL ledger, and `config` never shows the ledger's password. The
//! PostgreSQL tests run when `TL_INGEST_TEST_POSTGRES_URL` names a server.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;
use tl_ingest::ledger::{Ledger, Location, PgUrl};
use tokio_util::sync::CancellationToken;

use crate::helpers::sql::Sql;
use crate::helpers::{DEADLINE, KEY, TestEnv, output, pg, text, wait_until};

const PASSWORD: &str = "secretpw";
/// The lease the test members join with and renew (ms).
const LEASE_MS: i64 = 1000;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `all` that starts with `prefix`.
fn line_starting<'a>(all: &'a str, prefix: &str) -> Option<&'a str> {
    all.lines().find(|l| l.starts_with(prefix))
}

/// `url` with `password` written into it (the test server trusts loopback
/// logins, so any password is accepted and none is needed).
fn with_password(url: &PgUrl, password: &str) -> String {
    let text = url.expose();
    let (scheme, rest) = text.split_once("://").expect("a URL");
    let (userinfo, host) = rest.split_once('@').expect("a user in the URL");
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Three members of the fleet on `location`: one that beats every 100 ms
/// until the token is cancelled, one that joined and went silent, one that
/// left. Each is a separate ledger handle, as separate processes are.
async fn three_daemons(location: &Location) -> (CancellationToken, Vec<Ledger>) {
    let open = || async { Ledger::open_at(location).await.expect("open ledger") };
    let live = open().await;
    live.join("host-live", &[], LEASE_MS).await.expect("join");
    let silent = open().await;
    silent
        .join("host-silent", &[], LEASE_MS)
        .await
        .expect("join");
    let gone = open().await;
    gone.join("host-gone", &[], LEASE_MS).await.expect("join");
    gone.leave().await.expect("leave");

    let stop = CancellationToken::new();
    let beating = live.clone();
    let until = stop.clone();
    // A daemon's heartbeat, every 100 ms until the test is done.
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = until.cancelled() => return,
                _ = beat.tick() => {
                    let _ = beating.heartbeat(LEASE_MS, &[]).await;
                }
            }
        }
    });
    (stop, vec![live, silent, gone])
}

/// `status` with `ledger.lease = 1s` (stale after a second without a beat).
fn status_cmd(env: &TestEnv, ledger_url: Option<&str>, args: &[&str]) -> std::process::Command {
    let mut cmd = env.cmd(KEY);
    cmd.env("TL_INGEST__LEDGER__LEASE", "1s");
    if let Some(url) = ledger_url {
        cmd.env("TL_INGEST__LEDGER__URL", url);
    }
    cmd.arg("status").args(args);
    cmd
}

async fn status_json(env: &TestEnv, ledger_url: Option<&str>) -> Value {
    let out = output(status_cmd(env, ledger_url, &["--format", "json"])).await;
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON: {e}\n{}", text(&out)))
}

fn daemon<'a>(v: &'a Value, host: &str) -> &'a Value {
    v["daemons"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["host"] == host))
        .unwrap_or_else(|| panic!("{host} not listed: {v}"))
}

/// The fleet view on a shared ledger: every daemon listed, the silent one STALE
/// once it missed three beats, the live one not, the one that left stopped.
async fn status_shows_the_fleet(env: &TestEnv, location: &Location, ledger_url: Option<&str>) {
    let (stop, ledgers) = three_daemons(location).await;
    let last = std::sync::Mutex::new(Value::Null);
    wait_until(DEADLINE, "the silent daemon shown stale", || async {
        let v = status_json(env, ledger_url).await;
        let stale = daemon(&v, "host-silent")["stale"] == true;
        *last.lock().expect("lock") = v;
        stale
    })
    .await;
    let v = last.into_inner().expect("lock");
    assert_eq!(v["heartbeat"]["stale_after_ms"], 1000, "{v}");
    let live = daemon(&v, "host-live");
    assert_eq!(live["state"], "running", "{v}");
    assert_eq!(live["stale"], false, "{v}");
    assert_eq!(live["pid"], std::process::id(), "{v}");
    assert_eq!(live["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(live["in_flight"], 0, "{v}");
    assert!(
        live["heartbeat_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    assert_eq!(daemon(&v, "host-silent")["state"], "stale", "{v}");
    assert!(
        daemon(&v, "host-silent")["heartbeat_age_ms"]
            .as_i64()
            .is_some_and(|ms| ms > 1000),
        "{v}"
    );
    let gone = daemon(&v, "host-gone");
    assert_eq!(gone["state"], "stopped", "{v}");
    assert_eq!(gone["stale"], false, "a daemon that left is not stale: {v}");
    assert!(gone["stopped_at"].is_string(), "{v}");

    let out = output(status_cmd(env, ledger_url, &[])).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("daemons:  1 running, 1 STALE, 1 stopped in the last hour"),
        "{shown}"
    );
    let row = |host: &str| {
        shown
            .lines()
            .find(|l| l.contains(host))
            .unwrap_or_else(|| panic!("no row for {host}: {shown}"))
    };
    assert!(row("host-live").ends_with("running"), "{shown}");
    assert!(
        row("host-silent").contains("STALE: no heartbeat for"),
        "{shown}"
    );
    assert!(row("host-gone").contains("stopped"), "{shown}");
    assert!(!row("host-gone").contains("STALE"), "{shown}");
    assert_eq!(
        shown.lines().filter(|l| l.contains("STALE:")).count(),
        1,
        "{shown}"
    );
    // The daemon line is about this host: none of the three is on it.
    let expected = if ledger_url.is_some() {
        "daemon:   not running on this host"
    } else {
        "daemon:   not running"
    };
    assert!(shown.contains(expected), "{shown}");

    stop.cancel();
    for l in ledgers {
        l.close().await;
    }
}

/// SQLite: one daemon at a time (the lock file). One that hangs is flagged
/// STALE; the next to start records it as stopped.
#[tokio::test]
async fn status_flags_a_hung_sqlite_daemon_until_the_next_one_starts() {
    let env = TestEnv::sqlite().await;
    let location = Location::Sqlite(env.ledger_path.clone());
    let hung = Ledger::open_at(&location).await.expect("open ledger");
    hung.join("host-hung", &[], LEASE_MS).await.expect("join");
    wait_until(DEADLINE, "the hung daemon shown stale", || async {
        daemon(&status_json(&env, None).await, "host-hung")["stale"] == true
    })
    .await;
    let shown = stdout(&output(status_cmd(&env, None, &[])).await);
    assert!(shown.contains("1 STALE"), "{shown}");
    assert!(shown.contains("STALE: no heartbeat for"), "{shown}");

    let next = Ledger::open_at(&location).await.expect("open ledger");
    next.join("host-next", &[], LEASE_MS).await.expect("join");
    let v = status_json(&env, None).await;
    assert_eq!(daemon(&v, "host-hung")["state"], "stopped", "{v}");
    assert_eq!(daemon(&v, "host-hung")["stale"], false, "{v}");
    hung.close().await;
    next.close().await;
}

#[tokio::test]
async fn status_lists_the_fleet_on_postgres() {
    if pg::server_url().is_none() {
        pg::skipped("status_lists_the_fleet_on_postgres");
        return;
    }
    let env = TestEnv::new().await;
    let url = pg::fresh_database().await;
    let location = Location::Postgres(url.clone());
    let with_secret = with_password(&url, PASSWORD);
    status_shows_the_fleet(&env, &location, Some(&with_secret)).await;

    let out = output(status_cmd(&env, Some(&with_secret), &[])).await;
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    assert!(stdout(&out).contains(":***@"), "{}", text(&out));
}

#[tokio::test]
async fn doctor_checks_a_postgres_ledger() {
    if pg::server_url().is_none() {
        pg::skipped("doctor_checks_a_postgres_ledger");
        return;
    }
    let env = TestEnv::new().await;
    let url = pg::fresh_database().await;
    let location = Location::Postgres(url.clone());
    let config = env.write_daemon_config(&env.inbox_watch());
    let doctor = || {
        let mut cmd = env.bare_cmd(KEY);
        cmd.arg("--config")
            .arg(&config)
            .env("TL_INGEST__LEDGER__URL", with_password(&url, PASSWORD))
            .arg("doctor");
        cmd
    };

    // A new database: no schema yet, which the first daemon creates.
    let out = output(doctor()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    assert!(
        line_starting(&shown, "OK   ledger schema: none yet").is_some(),
        "{shown}"
    );

    // A ledger in use, with one daemon.
    let (stop, ledgers) = three_daemons(&location).await;
    let out = output(doctor()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    for check in [
        "OK   ledger connection",
        "OK   PostgreSQL version",
        "OK   ledger schema: version",
        "OK   ledger TLS",
    ] {
        assert!(line_starting(&shown, check).is_some(), "{check}:\n{shown}");
    }
    assert!(!shown.contains("FAIL"), "{shown}");
    // The SQLite checks do not apply.
    assert!(!shown.contains("ledger integrity"), "{shown}");
    assert!(!shown.contains("free disk"), "{shown}");
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    assert!(
        shown.contains(":***@"),
        "the URL is shown redacted: {shown}"
    );

    // Once the silent one missed three beats, doctor names it: judged by
    // its own lease (1 s), however long the local configuration's is.
    wait_until(DEADLINE, "doctor naming the stale daemon", || {
        let mut cmd = doctor();
        cmd.env("TL_INGEST__LEDGER__LEASE", "1h");
        async move {
            let out = output(cmd).await;
            line_starting(
                &stdout(&out),
                "WARN daemons: 1 running, 1 STALE: host-silent pid",
            )
            .is_some()
        }
    })
    .await;
    stop.cancel();
    for l in ledgers {
        l.close().await;
    }

    // A migration applied by a build whose SQL differs (same version,
    // another checksum): this build cannot open the ledger; doctor says so.
    let mut conn = sqlx::PgConnection::connect(url.expose())
        .await
        .expect("connect");
    sqlx::query(
        "UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea \
         WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&mut conn)
    .await
    .expect("change a checksum");
    let _ = conn.close().await;
    let out = output(doctor()).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "FAIL ledger schema: migration").expect("schema line");
    assert!(line.contains("cannot open the ledger"), "{line}");
    assert!(
        line_starting(&shown, "SKIP daemons: not checked").is_some(),
        "{shown}"
    );
}

#[tokio::test]
async fn doctor_says_it_cannot_reach_the_ledger_and_hides_the_password() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut cmd = env.bare_cmd(KEY);
    cmd.arg("--config")
        .arg(&config)
        .env(
            "TL_INGEST__LEDGER__URL",
            format!("postgres://u:{PASSWORD}@127.0.0.1:1/x"),
        )
        .arg("doctor");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "FAIL ledger connection").expect("connection line");
    assert!(
        line.contains("cannot connect to postgres://u:***@127.0.0.1:1/x")
            && line.contains("refused")
            && line.contains("fix:"),
        "{line}"
    );
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    // The API checks still ran; only the ledger is unreachable.
    assert!(
        line_starting(&shown, "OK   API key accepted").is_some(),
        "{shown}"
    );
}

#[tokio::test]
async fn config_with_a_ledger_url_never_shows_its_password() {
    let env = TestEnv::new().await;
    let url =
        format!("postgres://tl_ingest:{PASSWORD}@db.example:5432/tl_ingest?sslmode=verify-full");
    // In the file, with a ledger.path whose folder does not exist: it is
    // not used, so `config check` does not ask for it.
    let path = env.dir.path().join("fleet.toml");
    std::fs::write(
        &path,
        format!("[ledger]\npath = \"/no/such/folder/l.db\"\nurl = {url:?}\nlease = \"20s\"\n"),
    )
    .expect("write config");
    let run = |args: &[&str], env_url: Option<&str>| {
        let mut cmd = env.bare_cmd(KEY);
        cmd.arg("--config").arg(&path).args(args);
        if let Some(u) = env_url {
            cmd.env("TL_INGEST__LEDGER__URL", u);
        }
        output(cmd)
    };

    let out = run(&["config", "check"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));

    let out = run(&["config", "show"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "url = ").expect("url shown");
    assert!(
        line.contains("\"postgres://tl_ingest:***@db.example:5432/tl_ingest?sslmode=verify-full\""),
        "{line}"
    );
    assert!(
        line.ends_with(&format!("# file {}", path.display())),
        "{line}"
    );
    assert!(
        line_starting(&shown, "lease = \"20s\"").is_some(),
        "{shown}"
    );

    // From the environment, as a unit's Environment= would set it.
    let from_env = format!("postgres://other:{PASSWORD}@db2.example/tl");
    let out = run(&["config", "show"], Some(&from_env)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "url = ").expect("url shown");
    assert!(
        line.contains("\"postgres://other:***@db2.example/tl\"")
            && line.ends_with("# env TL_INGEST__LEDGER__URL"),
        "{line}"
    );

    // Without a URL, the missing folder of ledger.path is a problem again.
    std::fs::write(&path, "[ledger]\npath = \"/no/such/folder/l.db\"\n").expect("write config");
    let out = run(&["config", "check"], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("ledger.path"), "{}", text(&out));
}

/// The test server's CA, when it speaks TLS (`scripts/throwaway-postgres`
/// sets it up where openssl is installed).
async fn test_server_ca() -> Option<std::path::PathBuf> {
    let server = pg::server_url()?;
    let mut conn = sqlx::PgConnection::connect(&server).await.ok()?;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let cert: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let _ = conn.close().await;
    let ca = std::path::Path::new(&cert).with_file_name("ca.crt");
    (ssl == "on" && std::fs::File::open(&ca).is_ok()).then_some(ca)
}

/// `ledger.url` asking for TLS gets it, through rustls: with
/// `sslmode=verify-full` the server's certificate is checked against the
/// given CA and its name against the URL's host, and a host the
/// certificate does not name is refused in words.
#[tokio::test]
async fn a_ledger_url_asking_for_verified_tls_gets_it() {
    const NAME: &str = "ops_fleet::a_ledger_url_asking_for_verified_tls_gets_it";
    if pg::server_url().is_none() {
        return pg::skipped(NAME);
    }
    let Some(ca) = test_server_ca().await else {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("skipped {NAME}: the test server has no TLS (no openssl when it started)\n")
                .as_bytes(),
        );
        return;
    };
    let url = pg::fresh_database().await;
    let tls = |host: &str| {
        let text = url
            .expose()
            .replacen("@127.0.0.1:", &format!("@{host}:"), 1);
        PgUrl::parse(&format!(
            "{text}?sslmode=verify-full&sslrootcert={}",
            ca.display()
        ))
        .expect("url")
    };
    let ledger = Ledger::open_at(&Location::Postgres(tls("localhost")))
        .await
        .expect("verified TLS to the name on the certificate");
    ledger.ping().await.expect("the ledger answers over TLS");
    ledger.close().await;

    let refused = Ledger::open_at(&Location::Postgres(tls("127.0.0.1")))
        .await
        .expect_err("the certificate names localhost, not 127.0.0.1");
    let said = refused.to_string();
    assert!(
        said.contains("TLS failed") && said.contains("not valid for name \"127.0.0.1\""),
        "{said}"
    );

    // doctor says TLS is in use and the certificate checked.
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut cmd = env.bare_cmd(KEY);
    cmd.arg("--config")
        .arg(&config)
        .env("TL_INGEST__LEDGER__URL", tls("localhost").expose())
        .arg("doctor");
    let shown = stdout(&output(cmd).await);
    assert!(
        line_starting(
            &shown,
            "OK   ledger TLS: in use, the server's certificate checked"
        )
        .is_some(),
        "{shown}"
    );
}

/// Daemons that stopped long ago are pruned (a day's worth and at most 50
/// stopped rows are kept), running ones never; `status` judges each daemon
/// by the lease it recorded, not the local one; a daemon joining again (a
/// reload) records its new lease.
async fn daemons_are_pruned_and_judged_by_their_own_lease(
    env: &TestEnv,
    location: &Location,
    ledger_url: Option<&str>,
) {
    let open = || async { Ledger::open_at(location).await.expect("open ledger") };
    let old = open().await;
    old.join("host-old", &[], LEASE_MS).await.expect("join");
    old.leave().await.expect("leave");
    old.close().await;
    let recent = open().await;
    recent
        .join("host-recent", &[], LEASE_MS)
        .await
        .expect("join");
    recent.leave().await.expect("leave");
    recent.close().await;
    let sql = Sql::connect(location).await;
    let now = tl_ingest::ledger::now_ms();
    sql.exec(
        "UPDATE daemons SET heartbeat_at = $1, stopped_at = $1 WHERE host = 'host-old'",
        &[now - 2 * 24 * 3_600_000],
    )
    .await;
    // A daemon restarted in a loop two hours ago: 60 rows.
    sql.exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60) \
         INSERT INTO daemons (host, pid, version, started_at, heartbeat_at, stopped_at) \
         SELECT 'host-loop', i, 'x', $1, $1, $1 + i FROM n",
        &[now - 2 * 3_600_000],
    )
    .await;

    // Joining prunes.
    let short = open().await;
    short.join("host-short", &[], LEASE_MS).await.expect("join");
    assert!(
        sql.fetch_bool(
            "SELECT count(*) = 0 FROM daemons WHERE host = 'host-old'",
            &[]
        )
        .await,
        "stopped two days ago: pruned"
    );
    assert!(
        sql.fetch_bool(
            "SELECT count(*) = 1 FROM daemons WHERE host = 'host-recent'",
            &[]
        )
        .await,
        "stopped a moment ago: kept"
    );
    assert!(
        sql.fetch_bool(
            "SELECT count(*) = 49 FROM daemons WHERE host = 'host-loop' AND pid > 11",
            &[]
        )
        .await
            && sql
                .fetch_bool(
                    "SELECT count(*) = 49 FROM daemons WHERE host = 'host-loop'",
                    &[]
                )
                .await,
        "the newest 50 stopped rows are kept (the recent one and 49 of the loop)"
    );
    assert!(
        sql.fetch_bool(
            "SELECT count(*) = 1 FROM daemons WHERE host = 'host-short' AND stopped_at IS NULL",
            &[]
        )
        .await,
        "a running daemon is never pruned"
    );
    // Pruning again removes nothing more.
    assert_eq!(short.prune_daemons().await.expect("prune"), 0);

    // Another daemon on a long lease, silent too (a fleet: on SQLite a new
    // daemon proves the old one gone, so there it is left out).
    let long = if matches!(location, Location::Postgres(_)) {
        let long = open().await;
        long.join("host-long", &[], 3_600_000).await.expect("join");
        Some(long)
    } else {
        None
    };
    // The local lease is an hour: only the daemon's own (1 s) makes it stale.
    let status = |env: &TestEnv| {
        let mut cmd = status_cmd(env, ledger_url, &["--format", "json"]);
        cmd.env("TL_INGEST__LEDGER__LEASE", "1h");
        cmd
    };
    wait_until(DEADLINE, "the short-lease daemon shown stale", || async {
        let out = output(status(env)).await;
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        daemon(&v, "host-short")["stale"] == true
    })
    .await;
    let out = output(status(env)).await;
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(daemon(&v, "host-short")["lease_ms"], LEASE_MS, "{v}");
    if long.is_some() {
        assert_eq!(daemon(&v, "host-long")["stale"], false, "{v}");
        assert_eq!(daemon(&v, "host-long")["state"], "running", "{v}");
    }
    // A reload with a longer lease: the row says so, and the daemon is no
    // longer late by it.
    short
        .join("host-short", &[], 3_600_000)
        .await
        .expect("join again");
    assert_eq!(short.lease_ms(), 3_600_000);
    let out = output(status(env)).await;
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(daemon(&v, "host-short")["lease_ms"], 3_600_000, "{v}");
    assert_eq!(daemon(&v, "host-short")["stale"], false, "{v}");
    sql.close().await;
    short.close().await;
    if let Some(long) = long {
        long.close().await;
    }
}

#[tokio::test]
async fn daemons_are_pruned_and_judged_by_their_own_lease_on_sqlite() {
    let env = TestEnv::sqlite().await;
    let location = Location::Sqlite(env.ledger_path.clone());
    daemons_are_pruned_and_judged_by_their_own_lease(&env, &location, None).await;
}

#[tokio::test]
async fn daemons_are_pruned_and_judged_by_their_own_lease_on_postgres() {
    if pg::server_url().is_none() {
        pg::skipped("daemons_are_pruned_and_judged_by_their_own_lease_on_postgres");
        return;
    }
    let env = TestEnv::new().await;
    let url = pg::fresh_database().await;
    let location = Location::Postgres(url.clone());
    daemons_are_pruned_and_judged_by_their_own_lease(&env, &location, Some(url.expose())).await;
}
