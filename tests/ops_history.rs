//! `history` and `status`, through the binary, on ledgers the real
//! pipeline wrote (and, where a moment must be staged, rows set in SQL).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tl_ingest::emulator::{EmulatorConfig, Faults};
use tl_ingest::ledger::LedgerLock;
use tl_ingest::ledger::{Ledger, now_ms};

use crate::helpers::sql::Sql;
use crate::helpers::{KEY, Kind, TestEnv, output, record_of, text, write_media};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

async fn run(env: &TestEnv, args: &[&str]) -> Output {
    let mut cmd = env.cmd("unused");
    cmd.args(args);
    output(cmd).await
}

/// Run, expect exit 0, return stdout.
async fn stdout_of(env: &TestEnv, args: &[&str]) -> String {
    let out = run(env, args).await;
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `history --format json ARGS`: the objects, in order.
async fn history_json(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["history", "--format", "json"];
    all.extend_from_slice(args);
    stdout_of(env, &all)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn names(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .map(|v| {
            let p = v["path"].as_str().expect("path");
            Path::new(p)
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Four files through the real pipeline: `old.mp4` (ready, discovered 2 d
/// ago), `big.mp4` (failed: over the emulator's size limit, 3 h ago),
/// `sub/pic.png` (ready, just now), `with, "comma".mp4` (ready, 30 min ago),
/// plus a file deep enough to need shortening (ready, 1 min ago).
struct Staged {
    env: TestEnv,
    long: PathBuf,
}

async fn staged() -> Staged {
    let env = TestEnv::with(
        EmulatorConfig {
            max_direct_size: 4000,
            ..EmulatorConfig::default()
        },
        Faults::default(),
    )
    .await;
    let old = env.inbox.join("old.mp4");
    let big = env.inbox.join("big.mp4");
    let pic = env.inbox.join("sub/pic.png");
    let comma = env.inbox.join("with, \"comma\".mp4");
    let long = env.inbox.join(
        "a-rather-long-folder-name/another-long-folder-name-here/and-one-more-level/\
         final-clip-name.mp4",
    );
    write_media(&old, Kind::Mp4, 2000, 1);
    write_media(&big, Kind::Mp4, 9000, 2);
    write_media(&pic, Kind::Png, 1500, 3);
    write_media(&comma, Kind::Mp4, 2500, 4);
    write_media(&long, Kind::Mp4, 1800, 5);
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;
    let mut ids = Vec::new();
    for (p, state) in [
        (&old, "ready"),
        (&big, "failed"),
        (&pic, "ready"),
        (&comma, "ready"),
        (&long, "ready"),
    ] {
        let r = record_of(&ledger, p).await;
        assert_eq!(r.state, state, "{}", p.display());
        ids.push(r.id);
    }
    ledger.close().await;
    let sql = Sql::connect(&env.ledger).await;
    let now = now_ms();
    for (id, ago) in ids.iter().zip([2 * DAY, 3 * HOUR, 0, HOUR / 2, 60_000]) {
        sql.exec(
            "UPDATE files SET discovered_at = $2 WHERE id = $1",
            &[*id, now - ago],
        )
        .await;
    }
    sql.close().await;
    Staged { env, long }
}

#[tokio::test]
async fn history_filters_by_state_time_path_and_limit() {
    let Staged { env, .. } = staged().await;
    let all = history_json(&env, &[]).await;
    assert_eq!(
        names(&all),
        [
            "pic.png",
            "final-clip-name.mp4",
            "with, \"comma\".mp4",
            "big.mp4",
            "old.mp4"
        ],
        "newest first"
    );

    let failed = history_json(&env, &["--state", "failed"]).await;
    assert_eq!(names(&failed), ["big.mp4"]);
    assert!(
        failed[0]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{:?}",
        failed[0]
    );
    let both = history_json(
        &env,
        &["--state", "failed", "--state", "ready", "--limit", "3"],
    )
    .await;
    assert_eq!(
        names(&both),
        ["pic.png", "final-clip-name.mp4", "with, \"comma\".mp4"]
    );

    assert_eq!(
        names(&history_json(&env, &["--since", "90m"]).await),
        ["pic.png", "final-clip-name.mp4", "with, \"comma\".mp4"]
    );
    assert_eq!(
        names(&history_json(&env, &["--until", "1h"]).await),
        ["big.mp4", "old.mp4"]
    );
    assert_eq!(
        names(&history_json(&env, &["--since", "3d", "--until", "1d"]).await),
        ["old.mp4"]
    );
    // An RFC 3339 time, with an offset.
    let five_hours_ago = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - Duration::from_secs(5 * 3600),
    )
    .to_string();
    // The same instant written as +02:00.
    let utc = humantime::parse_rfc3339(&five_hours_ago).expect("parse");
    let in_berlin_time = humantime::format_rfc3339_seconds(utc + Duration::from_secs(2 * 3600))
        .to_string()
        .replace('Z', "+02:00");
    for since in [&five_hours_ago, &in_berlin_time] {
        assert_eq!(
            names(
                &history_json(
                    &env,
                    &["--since", since, "--state", "failed", "--state", "ready"]
                )
                .await
            )
            .len(),
            4,
            "--since {since}"
        );
    }

    assert_eq!(
        names(&history_json(&env, &["--path", "*/sub/*"]).await),
        ["pic.png"]
    );
    assert_eq!(
        names(&history_json(&env, &["--path", "*.mp4", "--limit", "2"]).await),
        ["final-clip-name.mp4", "with, \"comma\".mp4"]
    );
    assert!(history_json(&env, &["--path", "*.mov"]).await.is_empty());
    assert!(history_json(&env, &["--limit", "0"]).await.is_empty());

    // A bad value is a usage error.
    for bad in [
        &["history", "--since", "yesterday"][..],
        &["history", "--state", "bogus"],
        &["history", "--format", "xml"],
    ] {
        let out = run(&env, bad).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
    }
    let out = run(&env, &["history", "--since", "yesterday"]).await;
    assert!(text(&out).contains("neither a duration"), "{}", text(&out));
}

#[tokio::test]
async fn history_json_csv_and_table_formats() {
    let Staged { env, long } = staged().await;

    // JSON: one object per line with the fields README.md "Commands" lists.
    let objs = history_json(&env, &[]).await;
    assert_eq!(objs.len(), 5);
    for v in &objs {
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
        for field in ["discovered_at", "updated_at"] {
            let t = v[field].as_str().expect("time");
            assert!(t.ends_with('Z'), "{field}: {t}");
            humantime::parse_rfc3339(t).expect("RFC 3339");
        }
    }

    // CSV: a header, then the same records, quoted where needed.
    let csv_text = stdout_of(&env, &["history", "--format", "csv"]).await;
    assert!(
        csv_text.starts_with(
            "id,path,url,state,asset_id,sha256,size,mime,attempts,last_error,duplicate_of,\
             discovered_at,uploaded_at,ready_at,updated_at,file_action\n"
        ),
        "{csv_text}"
    );
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().expect("header").clone();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 5);
    let col = |name: &str| headers.iter().position(|h| h == name).expect(name);
    for (row, obj) in rows.iter().zip(&objs) {
        assert_eq!(row[col("id")], obj["id"].to_string());
        assert_eq!(&row[col("path")], obj["path"].as_str().expect("path"));
        assert_eq!(&row[col("state")], obj["state"].as_str().expect("state"));
        assert_eq!(&row[col("sha256")], obj["sha256"].as_str().expect("sha256"));
        assert_eq!(
            &row[col("discovered_at")],
            obj["discovered_at"].as_str().expect("time")
        );
    }
    assert!(
        rows.iter()
            .any(|r| r[col("path")].ends_with("with, \"comma\".mp4"))
    );
    let empty = stdout_of(&env, &["history", "--format", "csv", "--state", "indexing"]).await;
    assert_eq!(
        empty.lines().count(),
        1,
        "an empty CSV still has its header"
    );

    // Table: aligned, within 100 columns, long paths cut in the middle,
    // no colour when stdout is not a terminal.
    let table = stdout_of(&env, &["history"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert!(lines[0].trim_start().starts_with("ID"), "{table}");
    for h in ["STATE", "SIZE", "AGE", "ASSET", "PATH"] {
        assert!(lines[0].contains(h), "{table}");
    }
    for l in &lines {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}",
            l.chars().count()
        );
        assert!(!l.contains('\x1b'), "colour on a pipe: {l:?}");
    }
    let state_at = lines[0].find("STATE").expect("STATE");
    let path_at = lines[0].find("PATH").expect("PATH");
    for l in &lines[1..] {
        let state = &l[state_at..];
        assert!(
            state.starts_with("ready") || state.starts_with("failed"),
            "misaligned: {l}"
        );
        assert!(l[path_at..].starts_with('/'), "misaligned: {l}");
    }
    let long_line = lines
        .iter()
        .find(|l| l.contains("final-clip-name.mp4"))
        .expect("long path row");
    assert!(long_line.contains('…'), "{long_line}");
    assert!(long.display().to_string().chars().count() > 40);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("2d ago") && l.contains("old.mp4")),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("3h ago") && l.contains("failed")),
        "{table}"
    );
    assert!(
        lines.iter().any(|l| l.contains("kB")),
        "human sizes: {table}"
    );
}

/// Many rows staged in SQL, so the output is far larger than a pipe holds.
async fn big_ledger(env: &TestEnv, n: i64) {
    let ledger = Ledger::open_at(&env.ledger).await.expect("create");
    ledger.close().await;
    let sql = Sql::connect(&env.ledger).await;
    sql.exec_either(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO files (path_bytes, path, size, sha256, state, asset_id, discovered_at, \
         updated_at, ready_at) \
         SELECT CAST('/media/inbox/clip-' || i || '.mp4' AS BLOB), '/media/inbox/clip-' || i || '.mp4', \
         1000 * i, printf('%064x', i), 'ready', printf('%024x', i), $2 - i * 1000, $2, $2 FROM n",
        "INSERT INTO files (path_bytes, path, size, sha256, state, asset_id, discovered_at, \
         updated_at, ready_at) \
         SELECT convert_to('/media/inbox/clip-' || i || '.mp4', 'UTF8'), \
         '/media/inbox/clip-' || i || '.mp4', 1000 * i, lpad(to_hex(i), 64, '0'), 'ready', \
         lpad(to_hex(i), 24, '0'), $2 - i * 1000, $2, $2 FROM generate_series(1, $1) AS n(i)",
        &[n, now_ms()],
    )
    .await;
    sql.close().await;
}

#[tokio::test]
async fn history_into_a_closed_pipe_exits_0_quietly() {
    let env = TestEnv::new().await;
    big_ledger(&env, 5000).await;
    for format in ["json", "csv", "table"] {
        let mut cmd = env.cmd("unused");
        cmd.args(["history", "--format", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (status, first, stderr) = tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("spawn");
            let mut first = String::new();
            {
                let stdout = child.stdout.take().expect("stdout");
                let mut reader = BufReader::new(stdout);
                reader.read_line(&mut first).expect("first line");
                // Dropping the reader closes the pipe, like `| head -1`.
            }
            let out = child.wait_with_output().expect("wait");
            (
                out.status,
                first,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .expect("join");
        assert!(!first.is_empty(), "{format}: nothing written");
        assert_eq!(
            status.code(),
            Some(0),
            "{format}: {status:?}, stderr: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
        assert!(stderr.trim().is_empty(), "{format}: {stderr}");
    }
    // And all of it when someone reads it all.
    let all = stdout_of(&env, &["history", "--format", "json"]).await;
    assert_eq!(all.lines().count(), 5000);
}

#[tokio::test]
async fn status_text_and_json_on_a_ledger_with_records() {
    let Staged { env, .. } = staged().await;
    let out = stdout_of(&env, &["status"]).await;
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("idle"), "{out}");
    assert!(out.contains("daemon:   not running"), "{out}");
    assert!(out.contains("records:  5 (4 ready, 1 failed)"), "{out}");
    assert!(out.contains("queue:    empty"), "{out}");
    assert!(
        out.contains("last errors:") && out.contains("big.mp4"),
        "{out}"
    );
    for l in out.lines() {
        assert!(!l.contains('\x1b'), "colour on a pipe: {l:?}");
    }

    for args in [&["status", "--format", "json"][..], &["status", "--json"]] {
        let v: Value = serde_json::from_str(stdout_of(&env, args).await.trim()).expect("JSON");
        assert_eq!(v["verdict"]["state"], "idle", "{v}");
        assert_eq!(v["daemon"], Value::Null);
        assert_eq!(v["counts"]["ready"], 4);
        assert_eq!(v["counts"]["failed"], 1);
        assert_eq!(v["counts"]["queued"], 0);
        assert_eq!(v["total"], 5);
        assert_eq!(v["failed_last_hour"], 1);
        let errors = v["recent_errors"].as_array().expect("errors");
        assert_eq!(errors.len(), 1, "{v}");
        assert!(
            errors[0]["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("big.mp4")),
            "{v}"
        );
        assert_eq!(v["in_flight"], serde_json::json!([]));
    }
}

#[tokio::test]
async fn status_says_stuck_when_the_key_was_rejected() {
    let env = TestEnv::new().await;
    write_media(&env.inbox.join("a.mp4"), Kind::Mp4, 5000, 1);
    let mut cmd = env.cmd("wrong-key-SECRET-4242");
    cmd.arg("upload").arg(&env.inbox);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = stdout_of(&env, &["status"]).await;
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("stuck: the API key was rejected") && first.contains("1 file waiting"),
        "{out}"
    );
    assert!(!out.contains("SECRET-4242"), "{out}");
    let v: Value = serde_json::from_str(
        stdout_of(&env, &["status", "--format", "json"])
            .await
            .trim(),
    )
    .expect("JSON");
    assert_eq!(v["verdict"]["state"], "stuck", "{v}");
    assert_eq!(v["last_attempt"]["outcome"], "auth", "{v}");
    assert_eq!(v["queue"]["queued"], 1, "{v}");
    assert!(v["queue"]["oldest_age_seconds"].as_i64().is_some(), "{v}");
}

#[tokio::test]
async fn status_shows_the_upload_in_flight_and_a_rate_limit() {
    // SQLite in both passes: the daemon is staged as the holder of the
    // ledger's lock file, which is how `status` finds it there.
    let env = TestEnv::sqlite().await;
    let ledger = Ledger::open(&env.ledger_path).await.expect("create");
    ledger.close().await;
    // A daemon holds the ledger (this process), one file is being sent in
    // multipart (2 chunks of 5 MB accepted out of 40 MB), one waits after a
    // 429 until a minute from now.
    let _lock = LedgerLock::acquire(&env.ledger_path).expect("lock");
    let pool = Sql::connect(&env.ledger).await;
    let now = now_ms();
    pool.exec(
        "INSERT INTO files (id, path_bytes, path, size, sha256, state, attempts, discovered_at, \
         updated_at) VALUES (1, CAST('/media/big.mp4' AS BLOB), '/media/big.mp4', 40000000, \
         'aa', 'uploading', 1, $1 - 60000, $1 - 9000)",
        &[now],
    )
    .await;
    pool.exec(
        "INSERT INTO attempts (file_id, started_at, ended_at, outcome, error) \
         VALUES (1, $1 - 50000, $1 - 40000, 'transient', 'connection reset')",
        &[now],
    )
    .await;
    pool.exec(
        "INSERT INTO attempts (file_id, started_at) VALUES (1, $1 - 9000)",
        &[now],
    )
    .await;
    pool.exec(
        "INSERT INTO multipart_sessions (file_id, upload_id, asset_id, chunk_size, total_chunks, \
         created_at) VALUES (1, 'u1', 'a1', 5000000, 8, $1)",
        &[now],
    )
    .await;
    pool.exec(
        "INSERT INTO multipart_chunks (file_id, chunk_index, etag, size) \
         VALUES (1, 0, 'e0', 5000000), (1, 1, 'e1', 5000000)",
        &[],
    )
    .await;
    pool.exec(
        "INSERT INTO files (id, path_bytes, path, size, sha256, state, next_attempt_at, \
         last_error, discovered_at, updated_at) VALUES (2, CAST('/media/b.mp4' AS BLOB), \
         '/media/b.mp4', 3000, 'bb', 'queued', $1 + 60000, 'rate limited (429)', $1 - 120000, $1)",
        &[now],
    )
    .await;
    pool.exec(
        "INSERT INTO attempts (file_id, started_at, ended_at, outcome, http_status, error) \
         VALUES (2, $1 - 1000, $1 - 500, 'rate_limited', 429, 'rate limited (429)')",
        &[now],
    )
    .await;
    pool.close().await;

    let out = stdout_of(&env, &["status"]).await;
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("rate limited until "), "{out}");
    assert!(first.contains("2 files waiting"), "{out}");
    assert!(
        out.contains(&format!("daemon:   running (pid {}", std::process::id())),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("/media/big.mp4") && l.contains("attempt"))
        .unwrap_or_else(|| panic!("no in-flight line: {out}"));
    let running: i64 = line
        .split("attempt 2, running ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no running time: {line}"));
    assert!((9..60).contains(&running), "{line}");
    assert!(line.contains("10.0 MB of 40.0 MB sent"), "{line}");
    assert!(
        out.contains("queue:    1 queued, the oldest discovered 2m ago; next attempt in"),
        "{out}"
    );

    let v: Value = serde_json::from_str(
        stdout_of(&env, &["status", "--format", "json"])
            .await
            .trim(),
    )
    .expect("JSON");
    assert_eq!(v["verdict"]["state"], "rate_limited", "{v}");
    assert_eq!(v["daemon"]["pid"], std::process::id(), "{v}");
    let flight = &v["in_flight"][0];
    assert_eq!(flight["attempt"], 2, "{v}");
    assert_eq!(flight["bytes_sent"], 10_000_000, "{v}");
    assert_eq!(flight["bytes_total"], 40_000_000, "{v}");
    assert!(
        flight["running_seconds"].as_i64().is_some_and(|s| s >= 9),
        "{v}"
    );
}

#[tokio::test]
async fn status_while_a_daemon_runs() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut daemon = env.start_daemon(&config);
    let a = env.inbox.join("a.mp4");
    write_media(&a, Kind::Mp4, 3000, 7);
    daemon.wait(&env, &[a], "ready").await;

    let mut cmd = env.bare_cmd(KEY);
    cmd.arg("--config").arg(&config).arg("status");
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("idle"), "{stdout}");
    assert!(
        stdout.contains(&format!("running (pid {}", std::process::id())),
        "{stdout}"
    );
    let mut cmd = env.bare_cmd(KEY);
    cmd.arg("--config")
        .arg(&config)
        .args(["status", "--format", "json"]);
    let out = output(cmd).await;
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["daemon"]["pid"], std::process::id(), "{v}");
    assert!(
        v["daemon"]["since"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{v}"
    );
    assert_eq!(v["counts"]["ready"], 1, "{v}");
    daemon.stop().await;
}
