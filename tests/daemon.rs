//! The daemon in-process: watching, settling, restarts, moves, reloads and
//! the rescan safety net.

use std::time::Duration;

use tl_ingest::daemon::Control;
use tl_ingest::ledger::Ledger;

use crate::helpers::{Kind, TestEnv, write_media};

async fn ready_count(env: &TestEnv) -> usize {
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let n = ledger
        .history(&[tl_ingest::ledger::FileState::Ready], None)
        .await
        .expect("history")
        .len();
    ledger.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_before_during_and_while_down_are_ready_once() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let before = env.inbox.join("before.mp4");
    write_media(&before, Kind::Mp4, 30_000, 1);

    let mut daemon = env.start_daemon(&config);
    let during = env.inbox.join("sub/dir/during.mov");
    write_media(&during, Kind::Mp4, 40_000, 2);
    daemon
        .wait(&env, &[before.clone(), during.clone()], "ready")
        .await;
    daemon.stop().await;

    let while_down = env.inbox.join("down.wav");
    write_media(&while_down, Kind::Wav, 20_000, 3);
    let mut daemon = env.start_daemon(&config);
    daemon
        .wait(&env, std::slice::from_ref(&while_down), "ready")
        .await;
    daemon.stop().await;

    let stats = env.emulator.stats();
    assert_eq!(stats.assets_created, 3, "{stats:?}");
    assert!(
        stats.uploads_by_sha256.values().all(|n| *n == 1),
        "{stats:?}"
    );

    // A restart over known files sends nothing.
    let mut daemon = env.start_daemon(&config);
    let marker = env.inbox.join("marker.mp4");
    write_media(&marker, Kind::Mp4, 1000, 4);
    daemon.wait(&env, &[marker], "ready").await;
    daemon.stop().await;
    assert_eq!(env.emulator.stats().assets_created, 4, "only the new file");
    assert_eq!(ready_count(&env).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_is_uploaded_once_with_its_final_bytes() {
    use std::io::Write;
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut daemon = env.start_daemon(&config);
    let slow = env.inbox.join("slow.mp4");
    let mut f = std::fs::File::create(&slow).expect("create");
    let mut all = crate::helpers::media(Kind::Mp4, 1000, 9);
    f.write_all(&all).expect("write");
    // Append every 100 ms for 2 s: longer than the 300 ms settle time in
    // total, never still for that long. (The pace of the writer is the
    // scenario, not a wait for the daemon.)
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for i in 0..20u8 {
        pace.tick().await;
        let chunk = vec![i; 5000];
        f.write_all(&chunk).expect("append");
        f.flush().expect("flush");
        all.extend_from_slice(&chunk);
    }
    drop(f);
    daemon
        .wait(&env, std::slice::from_ref(&slow), "ready")
        .await;
    daemon.stop().await;
    let stats = env.emulator.stats();
    assert_eq!(stats.create_requests, 1, "uploaded once: {stats:?}");
    let sha = crate::helpers::sha256_hex(&all);
    assert_eq!(
        stats.uploads_by_sha256.get(&sha),
        Some(&1),
        "with its final bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_moved_within_the_root_after_upload_is_not_uploaded_again() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut daemon = env.start_daemon(&config);
    let first = env.inbox.join("a.mp4");
    write_media(&first, Kind::Mp4, 25_000, 5);
    daemon
        .wait(&env, std::slice::from_ref(&first), "ready")
        .await;
    let moved = env.inbox.join("archive/renamed.mp4");
    std::fs::create_dir_all(moved.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&first, &moved).expect("move");
    daemon
        .wait(&env, std::slice::from_ref(&moved), "duplicate")
        .await;
    daemon.stop().await;
    assert_eq!(env.emulator.stats().create_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_root_and_a_broken_config_is_rejected() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut daemon = env.start_daemon(&config);
    let second = env.dir.path().join("second");
    std::fs::create_dir(&second).expect("mkdir");

    // Broken: the daemon keeps the old config and keeps working.
    let good = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, format!("{good}\n[upload]\nwokers = 3\n")).expect("break it");
    daemon.controls.send(Control::Reload).await.expect("reload");
    let a = env.inbox.join("still-working.mp4");
    write_media(&a, Kind::Mp4, 5000, 6);
    daemon.wait(&env, std::slice::from_ref(&a), "ready").await;

    // Fixed, with a second root: files there are picked up.
    let with_second = format!(
        "{good}[[watch]]\npath = {:?}\n",
        second.display().to_string()
    );
    std::fs::write(&config, with_second).expect("write");
    daemon.controls.send(Control::Reload).await.expect("reload");
    let b = second.join("new-root.mp4");
    write_media(&b, Kind::Mp4, 6000, 7);
    daemon.wait(&env, std::slice::from_ref(&b), "ready").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_rescan_catches_what_the_watcher_missed() {
    // A poll watcher that will not look again for an hour stands in for a
    // watcher that lost its events: only the rescan can find the file.
    let env = TestEnv::new().await;
    let extra = format!(
        "[watcher]\nmode = \"poll\"\npoll_interval = \"1h\"\nsettle = \"200ms\"\nrescan_interval = \"400ms\"\n[[watch]]\npath = {:?}\n",
        env.inbox.display().to_string()
    );
    let config = env.write_daemon_config(&extra);
    let mut daemon = env.start_daemon(&config);
    // Let the poll watcher take its initial snapshot without the file.
    tokio::task::yield_now().await;
    let missed = env.inbox.join("missed.mp4");
    write_media(&missed, Kind::Mp4, 7000, 8);
    daemon
        .wait(&env, std::slice::from_ref(&missed), "ready")
        .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_watch_folder_is_a_configuration_error() {
    let env = TestEnv::new().await;
    let extra = "[[watch]]\npath = \"/definitely/not/a/folder\"\n";
    let config = env.write_daemon_config(extra);
    let daemon = env.start_daemon(&config);
    let result = tokio::time::timeout(Duration::from_secs(10), daemon.task)
        .await
        .expect("returns at once")
        .expect("join");
    let err = result.expect_err("must refuse to start");
    let msg = err.to_string();
    assert!(
        msg.contains("watch[0].path") && msg.contains("/definitely/not/a/folder"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_are_served() {
    let env = TestEnv::new().await;
    // A free port: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let extra = format!(
        "{}[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n",
        env.inbox_watch()
    );
    let config = env.write_daemon_config(&extra);
    let mut daemon = env.start_daemon(&config);
    let clip = env.inbox.join("counted.mp4");
    write_media(&clip, Kind::Mp4, 12_345, 11);
    daemon
        .wait(&env, std::slice::from_ref(&clip), "ready")
        .await;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    // Gauges are refreshed by the status tick: wait for the ready count.
    crate::helpers::wait_until(
        crate::helpers::DEADLINE,
        "metrics showing the upload",
        || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let Ok(resp) = http.get(format!("{base}/metrics")).send().await else {
                    return false;
                };
                let page = resp.text().await.unwrap_or_default();
                // Every series carries the host label, first.
                let host = format!("host=\"{}\"", tl_ingest::host::host_name());
                let uploaded = page
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix(&format!("tl_ingest_uploaded_bytes_total{{{host}}} "))
                    })
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                let ready_gauge = page.lines().any(|l| {
                    l.starts_with(&format!("tl_ingest_files{{{host},state=\"ready\"}}"))
                        && l.split_whitespace()
                            .last()
                            .and_then(|v| v.parse::<f64>().ok())
                            >= Some(1.0)
                });
                uploaded >= 12_345.0
                    && ready_gauge
                    && page.contains("tl_ingest_upload_duration_seconds")
            }
        },
    )
    .await;
    daemon.stop().await;
}
