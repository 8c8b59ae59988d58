//! `show`, `retry`, `forget` and `prune`: the binary against ledgers the
//! real pipeline (or daemon) filled, and the ledger functions behind them.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tl_ingest::emulator::{EmulatorConfig, Faults};
use tl_ingest::ledger::upload_sessions::Session;
use tl_ingest::ledger::{Ledger, now_ms};

use crate::helpers::{KEY, Kind, TestEnv, dump, output, record_of, text, write_media};

/// Run the binary with the test config and `args`.
async fn cli(env: &TestEnv, args: &[&str]) -> Output {
    let mut cmd = env.cmd(KEY);
    cmd.args(args);
    output(cmd).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `show KEY --format json`, which must succeed.
async fn show_json(env: &TestEnv, key: &str) -> serde_json::Value {
    let out = cli(env, &["show", key, "--format", "json"]).await;
    assert!(out.status.success(), "show {key}: {}", text(&out));
    serde_json::from_str(stdout(&out).trim()).expect("one JSON object")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// An emulator that refuses files over 1000 bytes with a 400: a permanent
/// error, so such files end `failed` after one attempt.
async fn refusing_env() -> TestEnv {
    TestEnv::with(
        EmulatorConfig {
            max_direct_size: 1000,
            ..EmulatorConfig::default()
        },
        Faults::default(),
    )
    .await
}

#[tokio::test]
async fn show_finds_a_record_by_path_asset_id_sha256_prefix_and_id() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    let b = env.inbox.join("b.mp4");
    let sha = write_media(&a, Kind::Mp4, 30_000, 1);
    write_media(&b, Kind::Mp4, 20_000, 2);
    let ledger = env.run_pipeline(env.config(), &[a.clone(), b]).await;
    let rec = record_of(&ledger, &a).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    let asset = rec.asset_id.clone().expect("asset id");

    // By absolute path, as text: every field and the attempt.
    let out = cli(&env, &["show", path_str(&a)]).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = stdout(&out);
    for needle in [
        format!("#{}", rec.id),
        sha.clone(),
        asset.clone(),
        "ready".to_string(),
        "attempts (1):".to_string(),
        "multipart session: none".to_string(),
        "after ready:".to_string(),
    ] {
        assert!(shown.contains(&needle), "missing {needle:?}:\n{shown}");
    }

    // By a path relative to the current directory (the binary runs in the
    // temp dir), by asset id, by sha256 prefix, by #id and by plain id.
    let id = rec.id.to_string();
    let hash_id = format!("#{}", rec.id);
    for key in [
        "inbox/a.mp4",
        asset.as_str(),
        &sha[..10],
        &sha.to_uppercase()[..8],
        hash_id.as_str(),
        id.as_str(),
    ] {
        let v = show_json(&env, key).await;
        assert_eq!(v["id"], rec.id, "show {key}: {v}");
        assert_eq!(v["sha256"], sha.as_str());
        assert_eq!(v["asset_id"], asset.as_str());
        assert_eq!(v["state"], "ready");
    }

    // The attempt in full.
    let v = show_json(&env, path_str(&a)).await;
    let log = v["attempt_log"].as_array().expect("attempt_log");
    assert_eq!(log.len(), 1, "{v}");
    assert_eq!(log[0]["outcome"], "accepted", "{v}");
    assert!(log[0]["ended_at"].as_str().is_some(), "{v}");
    assert!(log[0]["duration_ms"].as_i64().is_some(), "{v}");
    assert!(log[0]["bytes_sent"].as_i64().unwrap_or(0) >= 30_000, "{v}");
    assert!(v["multipart"].is_null(), "{v}");
    assert!(v["ready_at"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test]
async fn show_with_an_ambiguous_prefix_lists_the_candidates_and_exits_2() {
    let env = TestEnv::new().await;
    // Same content twice: one upload and a duplicate, both with this sha256.
    let a = env.inbox.join("a.mp4");
    let copy = env.inbox.join("copy.mp4");
    let sha = write_media(&a, Kind::Mp4, 12_000, 3);
    write_media(&copy, Kind::Mp4, 12_000, 3);
    let ledger = env
        .run_pipeline(env.config(), &[a.clone(), copy.clone()])
        .await;
    let ra = record_of(&ledger, &a).await;
    let rc = record_of(&ledger, &copy).await;
    let mut states = [ra.state.as_str(), rc.state.as_str()];
    states.sort_unstable();
    assert_eq!(states, ["duplicate", "ready"], "{}", dump(&ledger).await);

    let out = cli(&env, &["show", &sha[..8]]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    for r in [&ra, &rc] {
        assert!(
            err.contains(&format!("#{}", r.id)) && err.contains(r.path.as_deref().unwrap_or("?")),
            "candidate #{} missing:\n{err}",
            r.id
        );
    }
    assert!(err.contains("ready") && err.contains("duplicate"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", text(&out));

    // The asset id names the record that owns the asset, not its duplicate.
    let (owner, dup) = if ra.state == "ready" {
        (&ra, &rc)
    } else {
        (&rc, &ra)
    };
    let v = show_json(&env, owner.asset_id.as_deref().expect("asset")).await;
    assert_eq!(v["id"], owner.id);
    assert_eq!(v["duplicated_by"], serde_json::json!([dup.id]));
    let v = show_json(&env, &format!("#{}", dup.id)).await;
    assert_eq!(v["duplicate_of"], owner.id);
}

#[tokio::test]
async fn show_of_an_unknown_key_exits_2_with_a_clear_message() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    write_media(&a, Kind::Mp4, 5000, 4);
    env.run_pipeline(env.config(), std::slice::from_ref(&a))
        .await;
    for key in ["inbox/nope.mp4", "0123456789abcdef", "#999999", "abc"] {
        let out = cli(&env, &["show", key]).await;
        assert_eq!(out.status.code(), Some(2), "show {key}: {}", text(&out));
        assert!(
            stderr(&out).contains("no record matches"),
            "show {key}: {}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn retry_requeues_a_failed_record_and_upload_sends_it_again() {
    let env = refusing_env().await;
    let a = env.inbox.join("a.mp4");
    let ok = env.inbox.join("small.mp4");
    write_media(&a, Kind::Mp4, 5000, 5);
    write_media(&ok, Kind::Mp4, 500, 6);
    let ledger = env
        .run_pipeline(env.config(), &[a.clone(), ok.clone()])
        .await;
    let failed = record_of(&ledger, &a).await;
    assert_eq!(failed.state, "failed", "{}", dump(&ledger).await);
    assert_eq!(failed.attempts, 1);
    assert!(failed.last_error.is_some());
    assert_eq!(env.emulator.stats().create_requests, 2);

    // A record that did not fail is reported and left alone.
    let out = cli(&env, &["retry", path_str(&a), path_str(&ok)]).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = stdout(&out);
    assert!(
        said.contains("queued") && said.contains("a.mp4"),
        "{}",
        text(&out)
    );
    assert!(
        said.contains("not failed (state ready); left as is"),
        "{}",
        text(&out)
    );
    let requeued = record_of(&ledger, &a).await;
    assert_eq!(requeued.id, failed.id, "the same record");
    assert_eq!(
        requeued.state, "discovered",
        "to be hashed and deduplicated again"
    );
    assert_eq!(requeued.attempts, 0);
    assert_eq!(requeued.last_error, None);
    assert_eq!(record_of(&ledger, &ok).await.state, "ready");

    // Retrying what is queued changes nothing.
    let out = cli(&env, &["retry", path_str(&a)]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("not failed (state discovered)"));

    // The next upload sends it again (and the emulator refuses it again).
    let out = env.upload_bin(&[&a]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(env.emulator.stats().create_requests, 3, "sent once more");
    let again = record_of(&ledger, &a).await;
    assert_eq!(again.id, failed.id);
    assert_eq!(again.state, "failed");
    assert_eq!(again.attempts, 1, "counted from zero");
    let v = show_json(&env, path_str(&a)).await;
    assert_eq!(
        v["attempt_log"].as_array().map(Vec::len),
        Some(2),
        "both attempts kept: {v}"
    );
}

#[tokio::test]
async fn retry_failed_requeues_every_failed_record() {
    let env = refusing_env().await;
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| env.inbox.join(format!("big{i}.mp4")))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        write_media(p, Kind::Mp4, 4000 + i, 10 + i as u64);
    }
    let ok = env.inbox.join("ok.mp4");
    write_media(&ok, Kind::Mp4, 600, 20);
    let mut all = paths.clone();
    all.push(ok.clone());
    let ledger = env.run_pipeline(env.config(), &all).await;

    let out = cli(&env, &["retry"]).await;
    assert_eq!(out.status.code(), Some(2), "nothing named: {}", text(&out));

    let out = cli(&env, &["retry", "--failed"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("3 record(s) queued again"),
        "{}",
        text(&out)
    );
    // Files go back to be examined, hashed and deduplicated afresh.
    for p in &paths {
        let r = record_of(&ledger, p).await;
        assert_eq!((r.state.as_str(), r.attempts), ("discovered", 0), "{p:?}");
    }
    assert_eq!(record_of(&ledger, &ok).await.state, "ready");

    let out = cli(&env, &["retry", "--failed"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("nothing to retry"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_picks_up_a_retried_record() {
    // Every request fails (500) until the record has used its 2 attempts.
    let env = TestEnv::with_faults(Faults {
        error_before_body: 1.0,
        ..Faults::default()
    })
    .await;
    let base = std::fs::read_to_string(env.write_config()).expect("config");
    let config = env.dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            base.replace("max_attempts = 12", "max_attempts = 2"),
            env.inbox_watch()
        ),
    )
    .expect("write config");
    let mut daemon = env.start_daemon(&config);
    let a = env.inbox.join("a.mp4");
    let sha = write_media(&a, Kind::Mp4, 8000, 30);
    daemon.wait(&env, std::slice::from_ref(&a), "failed").await;

    env.emulator.set_faults(Faults::default());
    let out = cli(&env, &["retry", "inbox/a.mp4"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let started = std::time::Instant::now();
    daemon.wait(&env, std::slice::from_ref(&a), "ready").await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "picked up without a restart"
    );
    daemon.stop().await;
    assert_eq!(env.emulator.stats().uploads_by_sha256.get(&sha), Some(&1));
}

#[tokio::test]
async fn forget_with_yes_makes_upload_send_the_file_again() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    let sha = write_media(&a, Kind::Mp4, 9000, 40);
    let out = env.upload_bin(&[&a]).await;
    assert!(out.status.success(), "{}", text(&out));
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let old = record_of(&ledger, &a).await;
    assert_eq!(old.state, "ready");

    // Uploading it again does nothing: it is known.
    let out = env.upload_bin(&[&a]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.emulator.stats().uploads_by_sha256.get(&sha), Some(&1));

    let out = cli(&env, &["forget", "--yes", "inbox/a.mp4"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("forgot"), "{}", text(&out));
    assert!(ledger.record(old.id).await.expect("query").is_none());
    assert!(ledger.attempts(old.id).await.expect("query").is_empty());

    let out = env.upload_bin(&[&a]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        env.emulator.stats().uploads_by_sha256.get(&sha),
        Some(&2),
        "uploaded again"
    );
    let new = record_of(&ledger, &a).await;
    assert_eq!(new.state, "ready");
    // A new record, never the old id (an id in an old log line must not
    // name another file), with none of the old attempts.
    assert!(new.id > old.id, "new id {} after {}", new.id, old.id);
    assert_eq!(ledger.attempts(new.id).await.expect("query").len(), 1);
}

/// `forget` the newest records (a file and a URL), then a new file and a
/// new URL: their ids are above every id ever used.
#[tokio::test]
async fn ids_are_never_reused_after_forget() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    write_media(&a, Kind::Mp4, 3000, 60);
    let out = env.upload_bin(&[&a]).await;
    assert!(out.status.success(), "{}", text(&out));
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let (url_id, _) = ledger
        .add_url("https://media.example.com/x.mp4", None, None, None)
        .await
        .expect("add url");
    let file_id = record_of(&ledger, &a).await.id;
    let highest = file_id.max(url_id);
    let out = cli(
        &env,
        &["forget", "--yes", "inbox/a.mp4", &format!("#{url_id}")],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(ledger.record(url_id).await.expect("query").is_none());
    assert!(ledger.record(file_id).await.expect("query").is_none());

    let b = env.inbox.join("b.mp4");
    write_media(&b, Kind::Mp4, 3100, 61);
    let out = env.upload_bin(&[&b]).await;
    assert!(out.status.success(), "{}", text(&out));
    let new_file = record_of(&ledger, &b).await.id;
    let (new_url, fresh) = ledger
        .add_url("https://media.example.com/y.mp4", None, None, None)
        .await
        .expect("add url");
    assert!(fresh);
    assert!(
        new_file > highest && new_url > new_file,
        "ids {new_file} and {new_url} after {highest} was used"
    );
    ledger.close().await;
}

#[tokio::test]
async fn forget_without_a_terminal_or_yes_exits_2_and_keeps_the_record() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    write_media(&a, Kind::Mp4, 7000, 41);
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&a))
        .await;
    let rec = record_of(&ledger, &a).await;
    // `output` pipes stdin/stdout/stderr: no terminal.
    let out = cli(&env, &["forget", path_str(&a)]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("--yes"), "{}", text(&out));
    assert!(ledger.record(rec.id).await.expect("query").is_some());

    let out = cli(&env, &["forget", "--yes", "inbox/nothing.mp4"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(ledger.record(rec.id).await.expect("query").is_some());
}

#[tokio::test]
async fn forget_removes_attempts_and_session_and_clears_duplicate_pointers() {
    let env = refusing_env().await;
    // A failed record with a multipart session, and a ready record with a
    // duplicate pointing at it.
    let big = env.inbox.join("big.mp4");
    let small = env.inbox.join("small.mp4");
    let twin = env.inbox.join("twin.mp4");
    write_media(&big, Kind::Mp4, 4000, 50);
    write_media(&small, Kind::Mp4, 700, 51);
    write_media(&twin, Kind::Mp4, 700, 51);
    let ledger = env
        .run_pipeline(env.config(), &[big.clone(), small.clone()])
        .await;
    let ledger2 = env
        .run_pipeline(env.config(), std::slice::from_ref(&twin))
        .await;
    drop(ledger2);
    let failed = record_of(&ledger, &big).await;
    let owner = record_of(&ledger, &small).await;
    let dup = record_of(&ledger, &twin).await;
    assert_eq!(failed.state, "failed", "{}", dump(&ledger).await);
    assert_eq!(dup.state, "duplicate", "{}", dump(&ledger).await);
    assert_eq!(dup.duplicate_of, Some(owner.id));

    // The record's current claim token: one per claim, each with an attempt.
    let epoch =
        i64::try_from(ledger.attempts(failed.id).await.expect("attempts").len()).expect("small");
    ledger
        .save_session(
            &Session {
                file_id: failed.id,
                upload_id: "up-123".into(),
                asset_id: "asset-123".into(),
                chunk_size: 1000,
                total_chunks: 4,
                expires_at: None,
                created_at: now_ms(),
                upload_headers: None,
            },
            epoch,
        )
        .await
        .expect("session");
    ledger
        .record_chunk(failed.id, epoch, 0, "etag-0", 1000)
        .await
        .expect("chunk");
    ledger
        .record_chunk(failed.id, epoch, 1, "etag-1", 1000)
        .await
        .expect("chunk");
    ledger
        .mark_reported(failed.id, &[0])
        .await
        .expect("reported");
    let v = show_json(&env, path_str(&big)).await;
    assert_eq!(v["multipart"]["upload_id"], "up-123", "{v}");
    assert_eq!(v["multipart"]["chunks_recorded"], 2, "{v}");
    assert_eq!(v["multipart"]["chunks_reported"], 1, "{v}");
    assert_eq!(v["multipart"]["total_chunks"], 4, "{v}");
    let out = cli(&env, &["show", path_str(&big)]).await;
    assert!(
        stdout(&out).contains("2 of 4 recorded, 1 reported"),
        "{}",
        text(&out)
    );

    let failed_key = format!("#{}", failed.id);
    let owner_key = format!("#{}", owner.id);
    let out = cli(&env, &["forget", "-y", &failed_key, &owner_key]).await;
    assert!(out.status.success(), "{}", text(&out));
    for id in [failed.id, owner.id] {
        assert!(ledger.record(id).await.expect("query").is_none());
        assert!(ledger.attempts(id).await.expect("query").is_empty());
    }
    assert!(ledger.session(failed.id).await.expect("query").is_none());
    let dup_after = ledger.record(dup.id).await.expect("query").expect("kept");
    assert_eq!(dup_after.duplicate_of, None, "ON DELETE SET NULL");
    assert_eq!(dup_after.state, "duplicate");
    assert_eq!(dup_after.asset_id, owner.asset_id, "still names the asset");
}

#[tokio::test]
async fn prune_keeps_the_newest_record_of_a_path_and_removes_older_ones() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    let b = env.inbox.join("b.mp4");
    write_media(&a, Kind::Mp4, 6000, 60);
    write_media(&b, Kind::Mp4, 6500, 61);
    let ledger = env
        .run_pipeline(env.config(), &[a.clone(), b.clone()])
        .await;
    let v1 = record_of(&ledger, &a).await;
    // A new version of a.mp4 (different size, so a different stat).
    write_media(&a, Kind::Mp4, 7000, 62);
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&a))
        .await;
    let v2 = record_of(&ledger, &a).await;
    let rb = record_of(&ledger, &b).await;
    assert_ne!(v1.id, v2.id, "{}", dump(&ledger).await);
    assert_eq!(v2.state, "ready");

    // Nothing is 90 days old yet.
    let out = cli(&env, &["prune", "--older-than", "90d"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("removed 0"), "{}", text(&out));
    assert!(ledger.record(v1.id).await.expect("query").is_some());

    // Everything 100 days old: only the old version may go.
    let past = now_ms() - 100 * 86_400_000;
    for id in [v1.id, v2.id, rb.id] {
        ledger.set_updated_at(id, past).await.expect("backdate");
    }
    let out = cli(&env, &["prune", "--older-than", "90d", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("would remove #{}", v1.id)),
        "{}",
        text(&out)
    );
    assert!(
        ledger.record(v1.id).await.expect("query").is_some(),
        "dry run"
    );

    let out = cli(&env, &["prune", "--older-than", "90d"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("removed 1 of 3"), "{}", text(&out));
    assert!(ledger.record(v1.id).await.expect("query").is_none());
    assert!(ledger.attempts(v1.id).await.expect("query").is_empty());
    assert!(ledger.record(v2.id).await.expect("query").is_some());
    assert!(ledger.record(rb.id).await.expect("query").is_some());

    // Kept records are still known: uploading again sends nothing.
    let before = env.emulator.stats().create_requests;
    let out = env.upload_bin(&[&env.inbox]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.emulator.stats().create_requests, before);
}

#[tokio::test]
async fn prune_keeps_an_original_that_a_kept_duplicate_points_at() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    let twin = env.inbox.join("twin.mp4");
    write_media(&a, Kind::Mp4, 5000, 70);
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&a))
        .await;
    let original = record_of(&ledger, &a).await;
    write_media(&twin, Kind::Mp4, 5000, 70);
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&twin))
        .await;
    let dup = record_of(&ledger, &twin).await;
    assert_eq!(dup.duplicate_of, Some(original.id));
    // a.mp4 gets a new version: the original is no longer the newest
    // record of its path, but twin.mp4 (newest of its path, on disk)
    // points at it.
    write_media(&a, Kind::Mp4, 5500, 71);
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&a))
        .await;
    assert_ne!(record_of(&ledger, &a).await.id, original.id);

    let out = cli(&env, &["prune", "--older-than", "0s"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("removed 0"), "{}", text(&out));
    assert!(ledger.record(original.id).await.expect("query").is_some());

    // Once twin.mp4 is gone from disk its record may go, and the original
    // with it.
    std::fs::remove_file(&twin).expect("rm");
    let out = cli(&env, &["prune", "--older-than", "0s"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("removed 2"), "{}", text(&out));
    assert!(ledger.record(original.id).await.expect("query").is_none());
    assert!(ledger.record(dup.id).await.expect("query").is_none());
    assert_eq!(record_of(&ledger, &a).await.state, "ready");
}
