//! The ledger stops taking writes mid-run (issue 13): its disk fills up,
//! the disk fills between an upload's `201` and its commit, its PostgreSQL
//! server goes away for a few seconds. The daemon (the real binary) waits,
//! says so once, recovers by itself when the ledger writes again, and
//! loses nothing: every file ends `ready` once, none `failed`, nothing is
//! uploaded twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tl_ingest::emulator::{EmulatorConfig, Faults};
use tl_ingest::ledger::{Ledger, Location};

use super::{assert_no_panic, figures, spawn_daemon_with, terminate};
use crate::helpers::{DEADLINE, Kind, TestEnv, dump, output, text, wait_until, write_media};

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| SmallDisk {
            path: path.to_path_buf(),
        })
    }

    /// Another program fills it: a file as large as the free space allows.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join("filler")).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Each file has one record, `ready`, and its bytes reached the platform
/// once; nothing anywhere `failed`.
async fn assert_each_ready_once(env: &TestEnv, ledger: &Ledger, files: &BTreeMap<PathBuf, String>) {
    let records = ledger.history(&[], None).await.expect("history");
    let assets: BTreeMap<String, Option<String>> = env
        .emulator
        .assets()
        .into_iter()
        .map(|a| (a.id, a.sha256))
        .collect();
    for (path, sha) in files {
        let abs = std::path::absolute(path).expect("absolute");
        let shown = abs.to_string_lossy();
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
        assert_eq!(
            of_path[0].state,
            "ready",
            "{shown}:\n{}",
            dump(ledger).await
        );
        let asset = of_path[0].asset_id.as_deref().expect("asset id");
        assert_eq!(
            assets.get(asset),
            Some(&Some(sha.clone())),
            "{shown}'s bytes"
        );
    }
    assert!(
        records.iter().all(|r| r.state != "failed"),
        "none failed:\n{}",
        dump(ledger).await
    );
    let stats = env.emulator.stats();
    let twice: Vec<_> = stats
        .uploads_by_sha256
        .iter()
        .filter(|(_, n)| **n > 1)
        .collect();
    let named: Vec<_> = twice
        .iter()
        .filter_map(|(sha, _)| files.iter().find(|(_, s)| s == sha).map(|(p, _)| p))
        .collect();
    assert!(
        twice.is_empty(),
        "uploaded more than once: {twice:?} {named:?}"
    );
    assert_eq!(stats.assets_created, u64::try_from(files.len()).expect("n"));
}

/// Wait until the newest record of every file is `ready`, failing at once
/// if the daemon exits.
async fn wait_all_ready(env: &TestEnv, child: &mut Child, paths: &[PathBuf], log: &Path) {
    let end = Instant::now() + DEADLINE;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "the daemon exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let Ok(ledger) = Ledger::open_existing_at(&env.ledger).await else {
            continue;
        };
        let mut ready = 0;
        for p in paths {
            let abs = std::path::absolute(p).expect("absolute");
            use std::os::unix::ffi::OsStrExt;
            if let Ok(Some(r)) = ledger.latest_for_path(abs.as_os_str().as_bytes()).await
                && r.state == "ready"
            {
                ready += 1;
            }
        }
        if ready == paths.len() {
            ledger.close().await;
            return;
        }
        if Instant::now() > end {
            panic!(
                "{ready} of {} ready in time; ledger:\n{}\nlog:\n{}",
                paths.len(),
                dump(&ledger).await,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        ledger.close().await;
    }
}

fn write_batch(dir: &Path, prefix: &str, n: usize, seed: u64) -> BTreeMap<PathBuf, String> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("{prefix}{i:02}.mp4"));
            let sha = write_media(&path, Kind::Mp4, 20_000 + i * 101, seed + i as u64);
            (path, sha)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledgers_disk_fills_and_is_freed_mid_run_and_nothing_is_lost() {
    // Uploads take a little while, so that the disk fills with some in flight.
    let env = TestEnv::sqlite_with(
        EmulatorConfig::default(),
        Faults {
            latency_ms: 30,
            ..Faults::default()
        },
    )
    .await;
    let mount = env.dir.path().join("small");
    let Some(disk) = SmallDisk::mount(&mount, "24m") else {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root and mount permission); the ledger's disk filling mid-run was not tried"
        );
        return;
    };
    let ledger_file = mount.join("ledger.db");
    let base = std::fs::read_to_string(env.write_config()).expect("read config");
    let base = base.replace(
        &format!("path = {:?}", env.ledger_path.display().to_string()),
        &format!("path = {:?}", ledger_file.display().to_string()),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = env.dir.path().join("outage.toml");
    std::fs::write(
        &config,
        format!(
            "{base}[watcher]\nsettle = \"100ms\"\nrescan_interval = \"1h\"\n[[watch]]\npath = {:?}\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n",
            env.inbox.display().to_string()
        ),
    )
    .expect("write config");
    let env = TestEnv {
        ledger: Location::Sqlite(ledger_file.clone()),
        ..env
    };
    let log = env.dir.path().join("daemon.log");
    let mut child = spawn_daemon_with(&env, &config, &log, &[("RUST_LOG", "info")]);
    let pid = child.id();

    // Before: 30 files, uploading.
    let mut files = write_batch(&env.inbox, "before", 30, 100);
    wait_until(DEADLINE, "the first uploads", || async {
        let Ok(ledger) = Ledger::open_existing_at(&env.ledger).await else {
            return false;
        };
        let counts = ledger.counts().await.unwrap_or_default();
        ledger.close().await;
        counts
            .iter()
            .any(|(s, n)| *s == tl_ingest::ledger::FileState::Ready && *n > 0)
    })
    .await;

    // Another program fills the ledger's filesystem; 30 more files arrive.
    disk.fill();
    let filled = Instant::now();
    files.extend(write_batch(&env.inbox, "during", 30, 200));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(DEADLINE, "the daemon to see the full disk", || async {
        log_text().contains("the ledger's disk is full")
    })
    .await;
    let noticed = filled.elapsed();

    // While it lasts: /healthz says so, `status` names the cause.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    wait_until(DEADLINE, "/healthz to answer unhealthy", || {
        let (http, healthz) = (http.clone(), healthz.clone());
        async move {
            match http.get(&healthz).send().await {
                Ok(r) if r.status() == 503 => {
                    r.text().await.unwrap_or_default().contains("disk is full")
                }
                _ => false,
            }
        }
    })
    .await;
    let mut cmd = env.bare_cmd(crate::helpers::KEY);
    cmd.arg("--config").arg(&config).arg("status");
    let status = output(cmd).await;
    let status_text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status_text.starts_with("stuck: the ledger's disk is full"),
        "{}",
        text(&status)
    );

    // The outage lasts a few seconds; CPU used meanwhile.
    let cpu_before = cpu_seconds(pid);
    let lines_before = log_text().lines().count();
    let outage_wait = Instant::now();
    wait_until(DEADLINE, "the outage to have lasted 5 s", || async {
        outage_wait.elapsed() >= Duration::from_secs(5)
    })
    .await;
    let cpu_waiting = cpu_seconds(pid) - cpu_before;
    let waited = outage_wait.elapsed();
    let lines_waiting = log_text().lines().count() - lines_before;
    let failed_meanwhile = count(&log_text(), "file failed");

    // Space comes back: the daemon finds out by itself.
    disk.free();
    let freed = Instant::now();
    wait_until(DEADLINE, "the daemon to write again", || async {
        log_text().contains("the ledger is writable again after")
    })
    .await;
    let recovered_in = freed.elapsed();
    // After: 30 more.
    files.extend(write_batch(&env.inbox, "after", 30, 300));
    let paths: Vec<PathBuf> = files.keys().cloned().collect();
    wait_all_ready(&env, &mut child, &paths, &log).await;
    let all_done = freed.elapsed();
    let cpu_total = cpu_seconds(pid);
    let code = terminate(child, Duration::from_secs(30)).await;
    let text_all = log_text();
    assert_eq!(code, Some(0), "stops cleanly:\n{text_all}");
    assert_no_panic("the daemon", &text_all);

    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    assert_each_ready_once(&env, &ledger, &files).await;
    ledger.close().await;
    let episodes = count(&text_all, "the ledger's disk is full");
    let recoveries = count(&text_all, "the ledger is writable again after");
    let poisoned = count(&text_all, "transaction depth");
    figures(
        "ledger_outage.disk_full",
        &[
            ("files", files.len().to_string()),
            ("noticed_after_s", format!("{:.1}", noticed.as_secs_f64())),
            (
                "outage_s",
                format!("{:.1}", (noticed + waited).as_secs_f64()),
            ),
            ("cpu_while_waiting_s", format!("{cpu_waiting:.2}")),
            ("waited_s", format!("{:.1}", waited.as_secs_f64())),
            ("log_lines_while_waiting", lines_waiting.to_string()),
            (
                "recovered_after_freeing_s",
                format!("{:.1}", recovered_in.as_secs_f64()),
            ),
            (
                "all_ready_after_freeing_s",
                format!("{:.1}", all_done.as_secs_f64()),
            ),
            ("cpu_total_s", format!("{cpu_total:.2}")),
            ("episodes_logged", episodes.to_string()),
            ("recoveries_logged", recoveries.to_string()),
        ],
    );
    assert_eq!(poisoned, 0, "no poisoned connection:\n{text_all}");
    assert_eq!(failed_meanwhile, 0);
    assert!(
        episodes >= 1 && episodes == recoveries,
        "each episode logged once, and its end: {episodes} vs {recoveries}"
    );
    assert!(
        lines_waiting < 50,
        "a quiet wait, not a line per call: {lines_waiting} lines in {waited:?}"
    );
    assert!(
        cpu_waiting < waited.as_secs_f64() / 4.0,
        "waiting costs little CPU: {cpu_waiting} s in {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_fills_between_a_201_and_its_commit_and_nothing_is_sent_twice() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&format!(
        "[watcher]\nsettle = \"100ms\"\nrescan_interval = \"1h\"\n[[watch]]\npath = {:?}\n",
        env.inbox.display().to_string()
    ));
    let log = env.dir.path().join("daemon.log");
    let mut child = spawn_daemon_with(
        &env,
        &config,
        &log,
        &[
            ("RUST_LOG", "info"),
            ("TL_INGEST_TEST_FAULT", "ledger-full-on-accept:3"),
        ],
    );
    let files = write_batch(&env.inbox, "clip", 12, 500);
    let paths: Vec<PathBuf> = files.keys().cloned().collect();
    wait_all_ready(&env, &mut child, &paths, &log).await;
    let code = terminate(child, Duration::from_secs(30)).await;
    let text_all = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, Some(0), "stops cleanly:\n{text_all}");
    assert_no_panic("the daemon", &text_all);
    assert!(
        text_all.contains("test fault: ledger writes fail"),
        "the fault fired:\n{text_all}"
    );
    assert_eq!(
        count(&text_all, "the ledger's disk is full"),
        1,
        "{text_all}"
    );
    assert_eq!(count(&text_all, "the ledger is writable again after"), 1);
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    assert_each_ready_once(&env, &ledger, &files).await;
    // The held asset id was recorded as accepted, without a lookup.
    let mut found = 0;
    for rec in ledger.history(&[], None).await.expect("history") {
        for a in ledger.attempts(rec.id).await.expect("attempts") {
            found += usize::from(a.outcome.as_deref() == Some("found"));
        }
    }
    ledger.close().await;
    figures(
        "ledger_outage.full_between_201_and_commit",
        &[
            ("files", files.len().to_string()),
            ("fault_s", "3".into()),
            ("found_by_lookup", found.to_string()),
            (
                "assets_created",
                env.emulator.stats().assets_created.to_string(),
            ),
        ],
    );
}

/// A PostgreSQL cluster of this test's own, to stop and start; stopped on
/// drop.
struct OwnCluster {
    top: tempfile::TempDir,
    url: String,
}

impl OwnCluster {
    fn start() -> Option<OwnCluster> {
        let top = tempfile::Builder::new()
            .prefix("tl-outage-pg")
            .tempdir_in("/tmp")
            .ok()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/throwaway-postgres");
        let out = Command::new(script).arg(top.path()).output().ok()?;
        if !out.status.success() {
            eprintln!(
                "cannot start a PostgreSQL cluster: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(OwnCluster { top, url })
    }

    fn data(&self) -> PathBuf {
        self.top.path().join("pg/data")
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(Result::ok).map(|e| e.path()).max())
            .map(|p| p.join("bin/pg_ctl"))
            .unwrap_or_else(|| PathBuf::from("pg_ctl"));
        let mut cmd = if super::is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.arg("-D")
            .arg(self.data())
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Stop at once: every connection dropped, mid-transaction or not.
    fn stop(&self) -> bool {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])
    }

    /// Start again on the same port.
    fn restart(&self) -> bool {
        let port = self
            .url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} -c fsync=off -c max_connections=400",
            self.top.path().join("pg").display()
        );
        let log = self.top.path().join("pg/server.log");
        self.pg_ctl(&[
            "-l",
            &log.display().to_string(),
            "-w",
            "-t",
            "60",
            "-o",
            &opts,
            "start",
        ])
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

// Both daemons recover without exiting, every file ends `ready`, and
// nothing is sent twice: a claim the ledger acknowledged just before the
// server stopped is still there after the restart (the cluster runs with
// `synchronous_commit = off`; the daemon's sessions turn it on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stops_and_restarts_while_two_daemons_run_and_both_recover() {
    if crate::helpers::pg::server_url().is_none() {
        crate::helpers::pg::skipped("postgres_stops_and_restarts_while_two_daemons_run");
        return;
    }
    let Some(cluster) = OwnCluster::start() else {
        eprintln!("skipped: no PostgreSQL cluster of its own could be started here");
        return;
    };
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&cluster.url)
            .await
            .expect("reach the cluster");
        sqlx::query("CREATE DATABASE outage")
            .execute(&mut admin)
            .await
            .expect("create database");
        let _ = admin.close().await;
    }
    let base = cluster.url.rsplit_once('/').map_or("", |(b, _)| b);
    let url = tl_ingest::ledger::PgUrl::parse(&format!("{base}/outage")).expect("url");
    let env = TestEnv::with(
        EmulatorConfig::default(),
        Faults {
            latency_ms: 30,
            ..Faults::default()
        },
    )
    .await;
    let env = TestEnv {
        ledger: Location::Postgres(url.clone()),
        ..env
    };
    let config = |name: &str| {
        let path = env.dir.path().join(format!("{name}.toml"));
        let text = format!(
            "[api]\nbase_url = {:?}\npoll_interval = \"30ms\"\nrequest_timeout = \"60s\"\n\
             [ledger]\npath = {:?}\nurl = {:?}\nlease = \"2s\"\n\
             [upload]\ninitial_backoff = \"20ms\"\nmax_backoff = \"300ms\"\nmax_attempts = 12\n\
             shutdown_grace = \"5s\"\n\
             [watcher]\nsettle = \"100ms\"\nrescan_interval = \"1h\"\n\
             [[watch]]\npath = {:?}\n",
            env.emulator.base_url(),
            env.dir
                .path()
                .join(format!("{name}.db"))
                .display()
                .to_string(),
            url.expose(),
            env.inbox.display().to_string(),
        );
        std::fs::write(&path, text).expect("write config");
        path
    };
    let logs = [env.dir.path().join("a.log"), env.dir.path().join("b.log")];
    let mut a = spawn_daemon_with(
        &env,
        &config("a"),
        &logs[0],
        &[("RUST_LOG", "info"), ("TL_INGEST_HOST", "host-a")],
    );
    let mut b = spawn_daemon_with(
        &env,
        &config("b"),
        &logs[1],
        &[("RUST_LOG", "info"), ("TL_INGEST_HOST", "host-b")],
    );
    let mut files = write_batch(&env.inbox, "before", 30, 700);
    wait_until(DEADLINE, "the first uploads", || async {
        let Ok(ledger) = Ledger::open_existing_at(&env.ledger).await else {
            return false;
        };
        let counts = ledger.counts().await.unwrap_or_default();
        ledger.close().await;
        counts
            .iter()
            .any(|(s, n)| *s == tl_ingest::ledger::FileState::Ready && *n > 0)
    })
    .await;

    // The server goes away mid-run (connections dropped mid-transaction),
    // files keep arriving, and it comes back a few seconds later.
    assert!(cluster.stop(), "stop the server");
    let stopped = Instant::now();
    files.extend(write_batch(&env.inbox, "during", 20, 800));
    let cpu_before = cpu_seconds(a.id()) + cpu_seconds(b.id());
    wait_until(DEADLINE, "an outage of 4 s", || async {
        stopped.elapsed() >= Duration::from_secs(4)
    })
    .await;
    let cpu_waiting = cpu_seconds(a.id()) + cpu_seconds(b.id()) - cpu_before;
    for (child, log) in [(&mut a, &logs[0]), (&mut b, &logs[1])] {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "a daemon exited while the server was down:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    assert!(cluster.restart(), "start the server again");
    let outage = stopped.elapsed();
    let restarted = Instant::now();
    let read_log = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();
    // A daemon whose requests were all waiting for a connection while the
    // server was down saw no error: it has no outage to recover from.
    wait_until(
        DEADLINE,
        "the daemons that saw the outage to write again",
        || async {
            let logs = [read_log(0), read_log(1)];
            let saw = |l: &String| l.contains("waiting; nothing is lost");
            logs.iter().any(saw)
                && logs
                    .iter()
                    .all(|l| !saw(l) || l.contains("the ledger is writable again after"))
        },
    )
    .await;
    let recovered = restarted.elapsed();
    files.extend(write_batch(&env.inbox, "after", 10, 900));
    let paths: Vec<PathBuf> = files.keys().cloned().collect();
    wait_all_ready(&env, &mut a, &paths, &logs[0]).await;
    let all_ready = restarted.elapsed();
    for (child, log) in [(&mut a, &logs[0]), (&mut b, &logs[1])] {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "both daemons still run:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    let code_a = terminate(a, Duration::from_secs(30)).await;
    let code_b = terminate(b, Duration::from_secs(30)).await;
    let (log_a, log_b) = (read_log(0), read_log(1));
    assert_eq!(
        (code_a, code_b),
        (Some(0), Some(0)),
        "{log_a}\n---\n{log_b}"
    );
    assert_no_panic("daemon a", &log_a);
    assert_no_panic("daemon b", &log_b);
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    assert_each_ready_once(&env, &ledger, &files).await;
    ledger.close().await;
    let poisoned = count(&log_a, "transaction depth") + count(&log_b, "transaction depth");
    assert_eq!(poisoned, 0);
    figures(
        "ledger_outage.postgres_restart",
        &[
            ("files", files.len().to_string()),
            ("daemons", "2".into()),
            ("outage_s", format!("{:.1}", outage.as_secs_f64())),
            ("cpu_while_waiting_s", format!("{cpu_waiting:.2}")),
            (
                "both_writing_after_restart_s",
                format!("{:.1}", recovered.as_secs_f64()),
            ),
            (
                "all_ready_after_restart_s",
                format!("{:.1}", all_ready.as_secs_f64()),
            ),
            (
                "outages_logged",
                (count(&log_a, "waiting; nothing is lost")
                    + count(&log_b, "waiting; nothing is lost"))
                .to_string(),
            ),
        ],
    );
}

/// A claim the ledger returned is still there after the server is stopped
/// at once, even on a server run with `synchronous_commit = off` (which
/// acknowledges commits it has not written yet): a lost claim is a file
/// sent twice, with nothing recorded to look it up by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_survives_the_server_stopping_at_once_even_with_asynchronous_commits() {
    use sqlx::Connection;
    use tl_ingest::ledger::{Dedupe, Discovery, FileState, NewFile, Origin};
    if crate::helpers::pg::server_url().is_none() {
        crate::helpers::pg::skipped("a_claim_survives_the_server_stopping_at_once");
        return;
    }
    let Some(cluster) = OwnCluster::start() else {
        eprintln!("skipped: no PostgreSQL cluster of its own could be started here");
        return;
    };
    {
        let mut admin = sqlx::PgConnection::connect(&cluster.url)
            .await
            .expect("reach the cluster");
        let off: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut admin)
            .await
            .expect("show");
        assert_eq!(
            off, "off",
            "the server acknowledges commits before writing them"
        );
        // The WAL writer waits its longest, so that an acknowledged commit
        // stays unwritten until the stop below.
        for q in [
            "CREATE DATABASE durable",
            "ALTER SYSTEM SET wal_writer_delay = '10s'",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::query(q).execute(&mut admin).await.expect(q);
        }
        let _ = admin.close().await;
    }
    let base = cluster.url.rsplit_once('/').map_or("", |(b, _)| b);
    let location = Location::Postgres(
        tl_ingest::ledger::PgUrl::parse(&format!("{base}/durable")).expect("url"),
    );
    let ledger = Ledger::open_at(&location).await.expect("open");
    ledger
        .join("host-a", &["/share/in".into()], 60_000)
        .await
        .expect("join");
    let file = NewFile {
        path_bytes: b"/share/in/clip.mp4".to_vec(),
        path: "/share/in/clip.mp4".into(),
        size: 1_000,
        mtime_ns: 1,
        device: 7,
        inode: 1,
        user_metadata: None,
        origin: Some(Origin {
            root: "/share/in".into(),
            ..Origin::default()
        }),
    };
    let Discovery::New(id) = ledger.discover(&file).await.expect("discover") else {
        panic!("a new record");
    };
    for job in ledger.to_hash(10).await.expect("to_hash") {
        ledger
            .record_hash(
                &job,
                &format!("{:064x}", 1),
                Some("video/mp4"),
                Dedupe::Content,
            )
            .await
            .expect("hash");
    }
    let job = ledger.claim(60_000).await.expect("claim").expect("a job");
    assert_eq!(job.id, id);
    // The upload would start now; the server goes away at once.
    assert!(cluster.stop(), "stop the server");
    drop(ledger);
    assert!(cluster.restart(), "start the server again");
    let ledger = Ledger::open_existing_at(&location).await.expect("reopen");
    let record = ledger.record(id).await.expect("query");
    let state = record.as_ref().and_then(|r| r.state().ok());
    assert_eq!(
        state,
        Some(FileState::Uploading),
        "the claim is still recorded after the restart"
    );
    ledger.close().await;
}
