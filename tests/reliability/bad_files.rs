//! Bad files: what people and programs leave in a drop folder. Special
//! files and loops never hang or fail a run; a file that vanishes or loses
//! its read permission ends `failed` with the reason; a file truncated
//! while it is sent is noticed and sent again as it now is.
//!
//! Covered elsewhere and listed in RELIABILITY.md: zero-byte, text named
//! `.mp4`, a 20 GB sparse file (`pipeline::empty_non_media_and_oversized_
//! files_are_skipped_with_a_reason`), random bytes (`pipeline::content_the_
//! platform_cannot_process_fails_with_its_message`), odd names
//! (`pipeline::odd_file_names_upload`), a file rewritten during upload
//! (`pipeline::a_file_rewritten_during_its_upload_is_detected_and_sent_again`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use tl_ingest::config::WatchConfig;
use tl_ingest::emulator::Faults;
use tl_ingest::ledger::{FileState, Ledger};
use tl_ingest::pipeline::{Filter, discover};

use super::{NOBODY, assert_no_panic, figures, is_root};
use crate::helpers::{
    DEADLINE, KEY, Kind, TestEnv, dump, output, record_of, sha256_hex, text, write_media,
};

/// A FIFO at `path`, or false if `mkfifo` is missing.
fn mkfifo(path: &Path) -> bool {
    std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_sockets_symlink_loops_and_a_folder_named_mp4_never_hang_or_fail_a_run() {
    use std::os::unix::fs::symlink;
    let env = TestEnv::new().await;
    let good = env.inbox.join("good.mp4");
    write_media(&good, Kind::Mp4, 5_000, 1);
    let inside = env.inbox.join("x.mp4/inside.mp4");
    write_media(&inside, Kind::Mp4, 6_000, 2);
    let fifo = env.inbox.join("pipe.mp4");
    let have_fifo = mkfifo(&fifo);
    let _socket =
        std::os::unix::net::UnixListener::bind(env.inbox.join("sock.mp4")).expect("socket");
    symlink("loop-b.mp4", env.inbox.join("loop-a.mp4")).expect("symlink");
    symlink("loop-a.mp4", env.inbox.join("loop-b.mp4")).expect("symlink");
    symlink(".", env.inbox.join("self")).expect("symlink");
    symlink("nowhere.mp4", env.inbox.join("dangling.mp4")).expect("symlink");
    let link = env.inbox.join("link.mp4");
    symlink("good.mp4", &link).expect("symlink");

    // The one-shot upload: it ends, and only the real files are recorded.
    let out = tokio::time::timeout(DEADLINE, env.upload_bin(&[&env.inbox]))
        .await
        .expect("upload ends: nothing blocks on a FIFO or loops");
    let all = text(&out);
    assert_no_panic("upload", &all);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("loop-a.mp4") && all.contains("dangling.mp4"),
        "the unreadable links are named: {all}"
    );
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    assert_eq!(record_of(&ledger, &inside).await.state, "ready");
    // A link to a file is that file: one of the two is the duplicate.
    let mut pair = [
        record_of(&ledger, &good).await.state,
        record_of(&ledger, &link).await.state,
    ];
    pair.sort();
    assert_eq!(pair, ["duplicate", "ready"], "{}", dump(&ledger).await);
    let records = ledger.history(&[], None).await.expect("history");
    assert_eq!(records.len(), 3, "{}", dump(&ledger).await);
    ledger.close().await;

    // The daemon over the same folder: it keeps working around them.
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut daemon = env.start_daemon(&config);
    let later = env.inbox.join("later.mp4");
    write_media(&later, Kind::Mp4, 7_000, 3);
    daemon.wait(&env, &[later], "ready").await;
    daemon.stop().await;
    figures(
        "bad_files.special",
        &[
            ("fifo", have_fifo.to_string()),
            ("socket", "true".into()),
            ("symlink_loops", "2".into()),
            ("folder_named_mp4", "true".into()),
            ("records", "3 (+1 for the daemon)".into()),
            ("hung", "false".into()),
        ],
    );
}

#[tokio::test]
async fn a_file_deleted_between_discovery_and_hashing_fails_with_the_reason() {
    let env = TestEnv::new().await;
    let doomed = env.inbox.join("doomed.mp4");
    let kept = env.inbox.join("kept.mp4");
    write_media(&doomed, Kind::Mp4, 5_000, 4);
    write_media(&kept, Kind::Mp4, 5_000, 5);
    {
        let ledger = Ledger::open_at(&env.ledger).await.expect("ledger");
        let filter = Filter::new(&WatchConfig::for_path(PathBuf::new())).expect("filter");
        discover(
            &ledger,
            std::slice::from_ref(&env.inbox),
            &filter,
            None,
            Some(tl_ingest::ledger::now_ms()),
        )
        .await
        .expect("discover");
        ledger.close().await;
    }
    std::fs::remove_file(&doomed).expect("delete");
    let ledger = env.run_pipeline(env.config(), &[]).await;
    let rec = record_of(&ledger, &doomed).await;
    assert_eq!(rec.state, "failed", "{}", dump(&ledger).await);
    assert_eq!(
        rec.last_error.as_deref(),
        Some("the file vanished before upload")
    );
    assert_eq!(record_of(&ledger, &kept).await.state, "ready");
    assert_eq!(env.emulator.stats().create_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_while_its_upload_waits_out_a_429_fails_with_the_reason() {
    // Every request is refused with a 429 until the file is gone.
    let env = TestEnv::with_faults(Faults {
        rate_limit: 1.0,
        retry_after_secs: 1,
        ..Faults::default()
    })
    .await;
    let doomed = env.inbox.join("doomed.mp4");
    write_media(&doomed, Kind::Mp4, 5_000, 6);
    let faults_url = format!("http://{}/_emulator/faults", env.emulator.addr());
    let delete_on_first_429 = |ledger: &Ledger| {
        let mut changes = ledger.subscribe();
        let (doomed, faults_url) = (doomed.clone(), faults_url.clone());
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(c)
                        if c.state == FileState::Queued
                            && c.detail.as_deref().is_some_and(|d| d.contains("429")) =>
                    {
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            std::fs::remove_file(&doomed).expect("delete");
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::new()
                .put(faults_url)
                .json(&serde_json::json!({}))
                .send()
                .await
                .expect("clear the faults");
        });
    };
    let ledger = env
        .run_pipeline_with(
            env.config(),
            std::slice::from_ref(&doomed),
            delete_on_first_429,
        )
        .await;
    let rec = record_of(&ledger, &doomed).await;
    assert_eq!(rec.state, "failed", "{}", dump(&ledger).await);
    assert_eq!(
        rec.last_error.as_deref(),
        Some("the file vanished before upload")
    );
    assert_eq!(env.emulator.stats().assets_created, 0);
}

#[tokio::test]
async fn a_file_truncated_during_its_upload_is_detected_and_sent_again() {
    // The platform holds every request for a while: time to cut the file.
    let env = TestEnv::with_faults(Faults {
        latency_ms: 700,
        ..Faults::default()
    })
    .await;
    let clip = env.inbox.join("shrinking.mp4");
    write_media(&clip, Kind::Mp4, 200_000, 7);
    let truncate_once_uploading = |ledger: &Ledger| {
        let mut changes = ledger.subscribe();
        let clip = clip.clone();
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(c) if c.state == FileState::Uploading => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&clip)
                .expect("open");
            f.set_len(50_000).expect("truncate");
        });
    };
    let ledger = env
        .run_pipeline_with(
            env.config(),
            std::slice::from_ref(&clip),
            truncate_once_uploading,
        )
        .await;
    let now = sha256_hex(&std::fs::read(&clip).expect("read"));
    let rec = record_of(&ledger, &clip).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    assert_eq!(
        rec.sha256.as_deref(),
        Some(now.as_str()),
        "sent as it now is"
    );
    assert_eq!(rec.size, Some(50_000));
    let attempts = ledger.attempts(rec.id).await.expect("attempts");
    assert!(
        attempts
            .iter()
            .any(|a| a.outcome.as_deref() == Some("changed")),
        "{attempts:?}"
    );
    let held = env.emulator.assets();
    assert_eq!(
        held.len(),
        1,
        "no asset of the longer bytes is left: {held:?}"
    );
    assert_eq!(held[0].sha256.as_deref(), Some(now.as_str()));
}

#[tokio::test]
async fn a_file_without_read_permission_fails_with_the_reason() {
    let env = TestEnv::new().await;
    let locked = env.inbox.join("locked.mp4");
    let open = env.inbox.join("open.mp4");
    write_media(&locked, Kind::Mp4, 5_000, 8);
    write_media(&open, Kind::Mp4, 5_000, 9);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let mut cmd = env.cmd(KEY);
    cmd.arg("upload").arg(&env.inbox);
    if is_root() {
        // Root reads anything: run the binary as nobody, in folders it may use.
        for dir in [env.dir.path(), env.inbox.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let out = output(cmd).await;
    let all = text(&out);
    assert_no_panic("upload", &all);
    assert_eq!(out.status.code(), Some(1), "one file failed: {all}");
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let rec = record_of(&ledger, &locked).await;
    assert_eq!(rec.state, "failed", "{}", dump(&ledger).await);
    let why = rec.last_error.unwrap_or_default();
    assert!(
        why.starts_with("cannot read the file") && why.contains("ermission denied"),
        "{why}"
    );
    assert_eq!(record_of(&ledger, &open).await.state, "ready");
    assert_eq!(env.emulator.stats().create_requests, 1);
    figures(
        "bad_files.unreadable",
        &[
            (
                "as",
                if is_root() { "nobody" } else { "the test user" }.into(),
            ),
            ("state", "failed".into()),
            ("reason", format!("{why:?}")),
        ],
    );
}
