//! The whole pipeline, in-process, against the emulator.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tl_ingest::emulator::{EmulatorConfig, Faults};
use tl_ingest::ledger::FileState;

use crate::helpers::{Kind, TestEnv, dump, record_of, write_media};

/// 20 files of every kind, in nested folders, a few hundred KB each.
fn twenty_files(env: &TestEnv) -> BTreeMap<PathBuf, String> {
    let kinds = [Kind::Mp4, Kind::Wav, Kind::Mp3, Kind::Png, Kind::Jpg];
    let exts = ["mp4", "wav", "mp3", "png", "jpg"];
    (0..20u64)
        .map(|i| {
            let k = usize::try_from(i).expect("small") % kinds.len();
            let path = env
                .inbox
                .join(format!("batch{}", i % 3))
                .join(format!("file{i}.{}", exts[k]));
            let size = 1000 + usize::try_from(i).expect("small") * 37_001;
            let sha = write_media(&path, kinds[k], size, i);
            (path, sha)
        })
        .collect()
}

#[tokio::test]
async fn twenty_mixed_files_are_ready_once_and_a_rerun_uploads_nothing() {
    let env = TestEnv::new().await;
    let files = twenty_files(&env);
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;

    let stats = env.emulator.stats();
    for (path, sha) in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(
            rec.state,
            "ready",
            "{}\n{}",
            path.display(),
            dump(&ledger).await
        );
        assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(
            stats.uploads_by_sha256.get(sha),
            Some(&1),
            "the emulator received exactly these bytes, once: {}",
            path.display()
        );
    }
    assert_eq!(stats.assets_created, 20);
    assert_eq!(stats.uploads_by_sha256.len(), 20);
    // Every asset id in the ledger is one the platform holds.
    let assets: Vec<String> = env.emulator.assets().into_iter().map(|a| a.id).collect();
    for rec in ledger.history(&[], None).await.expect("history") {
        assert!(assets.contains(rec.asset_id.as_ref().expect("asset id")));
    }
    ledger.close().await;

    let before = env.emulator.stats().create_requests;
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;
    assert_eq!(
        env.emulator.stats().create_requests,
        before,
        "a rerun sends nothing"
    );
    assert_eq!(ledger.history(&[], None).await.expect("history").len(), 20);
}

#[tokio::test]
async fn the_same_content_under_two_names_is_uploaded_once() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    let b = env.inbox.join("copy of a.mp4");
    let sha = write_media(&a, Kind::Mp4, 50_000, 7);
    std::fs::copy(&a, &b).expect("copy");
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;

    let (ra, rb) = (record_of(&ledger, &a).await, record_of(&ledger, &b).await);
    let mut states = [ra.state.as_str(), rb.state.as_str()];
    states.sort();
    assert_eq!(states, ["duplicate", "ready"], "{}", dump(&ledger).await);
    let (orig, dup) = if ra.state == "ready" {
        (ra, rb)
    } else {
        (rb, ra)
    };
    assert!(orig.asset_id.is_some());
    assert_eq!(
        dup.asset_id, orig.asset_id,
        "the duplicate points at the asset"
    );
    assert_eq!(dup.duplicate_of, Some(orig.id));
    assert_eq!(env.emulator.stats().uploads_by_sha256.get(&sha), Some(&1));
}

#[tokio::test]
async fn faults_and_rate_limits_still_end_ready_with_nothing_uploaded_twice() {
    let faults = Faults {
        error_before_body: 0.15,
        error_after_body: 0.15,
        rate_limit: 0.10,
        retry_after_secs: 1,
        reset_mid_body: 0.20,
        latency_ms: 5,
        seed: Some(20261129),
        ..Faults::default()
    };
    let env = TestEnv::with_faults(faults).await;
    let mut shas = Vec::new();
    // Enough requests that every kind of fault is all but certain to occur
    // (with 24 files, no reset landing on an upload happened about 1 run in
    // 100: the draws are shared with the polls, in arrival order).
    for i in 0..40u64 {
        let path = env.inbox.join(format!("clip{i}.mp4"));
        shas.push((
            path.clone(),
            write_media(
                &path,
                Kind::Mp4,
                200_000 + 1000 * usize::try_from(i).expect("small"),
                100 + i,
            ),
        ));
    }
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;
    let stats = env.emulator.stats();
    for (path, sha) in &shas {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert_eq!(
            stats.uploads_by_sha256.get(sha),
            Some(&1),
            "uploaded twice: {}",
            path.display()
        );
    }
    assert!(
        stats.injected_errors_before_body + stats.injected_errors_after_body > 0
            && stats.injected_rate_limits > 0
            && stats.injected_resets > 0,
        "the storm happened: {stats:?}"
    );
    // The retries are on record.
    let mut outcomes = BTreeMap::<String, usize>::new();
    for rec in ledger.history(&[], None).await.expect("history") {
        for a in ledger.attempts(rec.id).await.expect("attempts") {
            *outcomes.entry(a.outcome.unwrap_or_default()).or_default() += 1;
        }
    }
    assert!(
        outcomes.get("transient").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.get("accepted").copied().unwrap_or(0)
            + outcomes.get("found").copied().unwrap_or(0),
        40,
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_permanent_refusal_fails_after_one_attempt_with_the_platforms_message() {
    // The platform's limit is lower than ours: it refuses with a 400.
    let env = TestEnv::with(
        EmulatorConfig {
            max_direct_size: 10_000,
            ..EmulatorConfig::default()
        },
        Faults::default(),
    )
    .await;
    let big = env.inbox.join("big.mp4");
    write_media(&big, Kind::Mp4, 20_000, 1);
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&big))
        .await;
    let rec = record_of(&ledger, &big).await;
    assert_eq!(rec.state, "failed", "{}", dump(&ledger).await);
    assert_eq!(rec.attempts, 1);
    let err = rec.last_error.expect("reason");
    assert!(
        err.contains("400") && err.contains("file too large"),
        "{err}"
    );
    assert_eq!(env.emulator.stats().create_requests, 1, "never retried");
}

#[tokio::test]
async fn content_the_platform_cannot_process_fails_with_its_message() {
    let env = TestEnv::new().await;
    let noise = env.inbox.join("noise.mov");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x80)
        .collect();
    std::fs::write(&noise, bytes).expect("write");
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&noise))
        .await;
    let rec = record_of(&ledger, &noise).await;
    assert_eq!(rec.state, "failed");
    assert!(rec.asset_id.is_some(), "it was sent; the platform decided");
    assert!(
        rec.last_error
            .as_deref()
            .unwrap_or("")
            .contains("could not process"),
        "{rec:?}"
    );
}

#[tokio::test]
async fn empty_non_media_and_oversized_files_are_skipped_with_a_reason() {
    let env = TestEnv::new().await;
    let empty = env.inbox.join("empty.mp4");
    std::fs::write(&empty, b"").expect("write");
    let text = env.inbox.join("notes.mp4");
    std::fs::write(&text, "this is not a video\n").expect("write");
    let sparse = env.inbox.join("huge.mp4");
    let f = std::fs::File::create(&sparse).expect("create");
    f.set_len(20 * 1000 * 1000 * 1000).expect("sparse 20 GB");
    drop(f);
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;
    for (path, reason) in [
        (&empty, "empty file"),
        (&text, "not media: the content is text"),
        (&sparse, "too large"),
    ] {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, FileState::Skipped.as_str(), "{}", path.display());
        let got = rec.last_error.unwrap_or_default();
        assert!(got.starts_with(reason), "{}: {got}", path.display());
    }
    assert_eq!(env.emulator.stats().create_requests, 0, "nothing was sent");
}

#[tokio::test]
async fn odd_file_names_upload() {
    use std::os::unix::ffi::OsStrExt;
    let env = TestEnv::new().await;
    let names: Vec<PathBuf> = vec![
        env.inbox.join("with space.mp4"),
        env.inbox.join("ünïcødé 視頻.mp4"),
        env.inbox.join("new\nline.mp4"),
        env.inbox
            .join(std::ffi::OsStr::from_bytes(b"bad\xff\xfebytes.mp4")),
        env.inbox.join("quote\"and'semicolon;.mp4"),
    ];
    for (i, p) in names.iter().enumerate() {
        write_media(
            p,
            Kind::Mp4,
            3000 + i,
            50 + u64::try_from(i).expect("small"),
        );
    }
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;
    for p in &names {
        let rec = record_of(&ledger, p).await;
        assert_eq!(rec.state, "ready", "{:?}\n{}", p, dump(&ledger).await);
    }
    assert_eq!(env.emulator.stats().assets_created, 5);
}

#[tokio::test]
async fn a_file_rewritten_during_its_upload_is_detected_and_sent_again() {
    use std::io::Write;
    // The platform holds every request for a while: time to change the file.
    let env = TestEnv::with_faults(Faults {
        latency_ms: 700,
        ..Faults::default()
    })
    .await;
    let clip = env.inbox.join("growing.mp4");
    write_media(&clip, Kind::Mp4, 100_000, 3);
    let append_once_uploading = |ledger: &tl_ingest::ledger::Ledger| {
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
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&clip)
                .expect("open for append");
            f.write_all(&[7u8; 5000]).expect("append");
        });
    };
    let ledger = env
        .run_pipeline_with(
            env.config(),
            std::slice::from_ref(&clip),
            append_once_uploading,
        )
        .await;
    let final_bytes = std::fs::read(&clip).expect("read");
    let final_sha = crate::helpers::sha256_hex(&final_bytes);
    let rec = record_of(&ledger, &clip).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    assert_eq!(
        rec.sha256.as_deref(),
        Some(final_sha.as_str()),
        "the new content was sent"
    );
    let attempts = ledger.attempts(rec.id).await.expect("attempts");
    assert!(
        attempts
            .iter()
            .any(|a| a.outcome.as_deref() == Some("changed")),
        "{attempts:?}"
    );
    // The asset made from the half-old bytes was removed again.
    let on_platform: Vec<_> = env.emulator.assets();
    assert_eq!(on_platform.len(), 1, "{on_platform:?}");
    assert_eq!(on_platform[0].sha256.as_deref(), Some(final_sha.as_str()));
}

/// Files of sizes no other record has are hashed in the same read as their
/// upload: the stamp, sent after the file, is on every asset, and the
/// ledger holds the same hash.
#[tokio::test]
async fn a_file_hashed_during_its_upload_is_stamped_with_its_sha256() {
    let env = TestEnv::new().await;
    let files: Vec<(PathBuf, String)> = (0..4u64)
        .map(|i| {
            let p = env.inbox.join(format!("clip{i}.mp4"));
            let sha = write_media(
                &p,
                Kind::Mp4,
                300_000 + 1000 * usize::try_from(i).expect("small"),
                i,
            );
            (p, sha)
        })
        .collect();
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;
    let assets = env.emulator.assets();
    for (path, sha) in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
        let asset = assets
            .iter()
            .find(|a| Some(&a.id) == rec.asset_id.as_ref())
            .expect("the asset exists");
        assert_eq!(
            asset.sha256.as_deref(),
            Some(sha.as_str()),
            "bytes received"
        );
        let stamp = asset
            .user_metadata
            .as_ref()
            .and_then(|m| m.get(tl_ingest::api::SHA256_STAMP))
            .and_then(|v| v.as_str());
        assert_eq!(stamp, Some(sha.as_str()), "{}", path.display());
    }
}

/// A crash while a file was being sent unhashed: the next run hashes it,
/// finds the asset the platform already made from it, and sends nothing.
#[tokio::test]
async fn an_unhashed_upload_interrupted_by_a_crash_is_found_not_resent() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use tl_ingest::api::{ApiClient, ClientOptions, DirectUpload, Stamp};
    use tl_ingest::ledger::{Discovery, Ledger};

    let env = TestEnv::new().await;
    let clip = env.inbox.join("crash.mp4");
    let sha = write_media(&clip, Kind::Mp4, 123_457, 11);

    // The platform got the whole file before the "crash".
    let client = ApiClient::new(
        &ClientOptions {
            base_url: env.emulator.base_url(),
            request_timeout: std::time::Duration::from_secs(30),
            connect_timeout: std::time::Duration::from_secs(5),
        },
        &tl_ingest::secret::ApiKey::new(crate::helpers::KEY).expect("key"),
    )
    .expect("client");
    let created = client
        .create_direct(&DirectUpload {
            path: clip.clone(),
            filename: "crash.mp4".into(),
            size: 123_457,
            enable_hls: false,
            enable_thumbnail: false,
            user_metadata: serde_json::Map::new(),
            stamp: Stamp::in_flight(),
            content: None,
            sent: Arc::new(AtomicU64::new(0)),
        })
        .await
        .expect("upload");
    let asset_id = created.asset.id.expect("id");

    // The ledger the crash left: the record claimed, its hash unknown.
    {
        let ledger = Ledger::open_at(&env.ledger).await.expect("open");
        let meta = std::fs::metadata(&clip).expect("stat");
        let f = tl_ingest::pipeline::new_file(&clip, &meta, None);
        let Discovery::New(id) = ledger.discover(&f).await.expect("discover") else {
            panic!("new");
        };
        let job = ledger
            .to_hash(10)
            .await
            .expect("to_hash")
            .into_iter()
            .find(|j| j.id == id)
            .expect("job");
        ledger
            .queue_unhashed(&job, Some("video/mp4"))
            .await
            .expect("queue");
        let claimed = ledger.claim(30_000).await.expect("claim").expect("due");
        assert_eq!(claimed.sha256, None);
        ledger.close().await;
    }

    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&clip))
        .await;
    let rec = record_of(&ledger, &clip).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    assert_eq!(rec.asset_id.as_deref(), Some(asset_id.as_str()));
    assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
    let stats = env.emulator.stats();
    assert_eq!(stats.create_requests, 1, "nothing was sent again");
    let attempts = ledger.attempts(rec.id).await.expect("attempts");
    assert!(
        attempts
            .iter()
            .any(|a| a.outcome.as_deref() == Some("found")),
        "{attempts:?}"
    );
}

/// A copy that appears while the original is being sent unhashed waits for
/// the original's hash and becomes its duplicate: one upload.
#[tokio::test]
async fn a_copy_made_during_an_unhashed_upload_is_its_duplicate() {
    let env = TestEnv::with_faults(Faults {
        latency_ms: 500,
        ..Faults::default()
    })
    .await;
    let clip = env.inbox.join("orig.mp4");
    let copy = env.inbox.join("copy.mp4");
    let sha = write_media(&clip, Kind::Mp4, 200_000, 5);
    let copy_once_uploading = |ledger: &tl_ingest::ledger::Ledger| {
        let mut changes = ledger.subscribe();
        let (clip, copy, ledger) = (clip.clone(), copy.clone(), ledger.clone());
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(c) if c.state == FileState::Uploading => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            std::fs::copy(&clip, &copy).expect("copy");
            let meta = std::fs::metadata(&copy).expect("stat");
            let f = tl_ingest::pipeline::new_file(&copy, &meta, None);
            ledger.discover(&f).await.expect("discover the copy");
        });
    };
    let ledger = env
        .run_pipeline_with(
            env.config(),
            std::slice::from_ref(&clip),
            copy_once_uploading,
        )
        .await;
    let (orig, dup) = (
        record_of(&ledger, &clip).await,
        record_of(&ledger, &copy).await,
    );
    assert_eq!(orig.state, "ready", "{}", dump(&ledger).await);
    assert_eq!(dup.state, "duplicate", "{}", dump(&ledger).await);
    assert_eq!(dup.duplicate_of, Some(orig.id));
    assert_eq!(dup.asset_id, orig.asset_id);
    assert_eq!(env.emulator.stats().uploads_by_sha256.get(&sha), Some(&1));
}

/// Each asset is asked about one `poll_interval` after it was accepted, so
/// an asset the platform makes ready within that time is asked about once,
/// however the uploads are staggered. (Asking all of them in rounds would
/// ask the ones accepted late in a round too early.)
#[tokio::test]
async fn each_asset_is_asked_about_one_poll_interval_after_its_upload() {
    let env = TestEnv::with(
        EmulatorConfig {
            ready_delay: std::time::Duration::from_millis(350),
            ..EmulatorConfig::default()
        },
        // One worker and slow requests: the uploads end one by one.
        Faults {
            latency_ms: 100,
            ..Faults::default()
        },
    )
    .await;
    for i in 0..6u64 {
        write_media(
            &env.inbox.join(format!("s{i}.mp4")),
            Kind::Mp4,
            10_000 + 100 * usize::try_from(i).expect("small"),
            i,
        );
    }
    let mut config = env.config();
    config.api.poll_interval = std::time::Duration::from_millis(400);
    config.upload.workers = 1;
    let ledger = env
        .run_pipeline(config, std::slice::from_ref(&env.inbox))
        .await;
    let stats = env.emulator.stats();
    assert_eq!(stats.assets_created, 6, "{}", dump(&ledger).await);
    assert_eq!(
        stats.requests,
        6 + 6,
        "one create and one status request per asset: {stats:?}"
    );
}

/// A copy of a file queued unhashed whose upload cannot start (a long rate
/// limit) does not wait for it: the hash stage hashes the original itself,
/// and the copy becomes its duplicate at once.
#[tokio::test]
async fn a_copy_does_not_wait_for_an_original_held_back_by_a_rate_limit() {
    use std::sync::Arc;
    use std::time::Duration;
    use tl_ingest::ledger::Ledger;
    use tl_ingest::pipeline::Pipeline;
    use tl_ingest::pipeline::new_file;

    // Every request is refused with a one-hour 429: after the first one,
    // no upload even starts.
    let env = TestEnv::with_faults(Faults {
        rate_limit: 1.0,
        retry_after_secs: 3600,
        ..Faults::default()
    })
    .await;
    let first = env.inbox.join("first.mp4");
    let orig = env.inbox.join("orig.mp4");
    let copy = env.inbox.join("copy.mp4");
    write_media(&first, Kind::Mp4, 30_000, 20);
    let sha = write_media(&orig, Kind::Mp4, 40_000, 21);
    std::fs::copy(&orig, &copy).expect("copy");

    let ledger = Ledger::open_at(&env.ledger).await.expect("ledger");
    let pipeline = Pipeline::new(ledger.clone(), env.client(), Arc::new(env.config()));
    let mut changes = ledger.subscribe();
    let running = pipeline.start();
    let stat = |p: &std::path::Path| new_file(p, &std::fs::metadata(p).expect("stat"), None);
    let outcome = tokio::time::timeout(crate::helpers::DEADLINE, async {
        // The first file meets the 429: every worker pauses for an hour.
        let first_id = match ledger.discover(&stat(&first)).await.expect("discover") {
            tl_ingest::ledger::Discovery::New(id) => id,
            other => panic!("{other:?}"),
        };
        next_change(&mut changes, |c| {
            c.id == first_id && c.state == FileState::Uploading
        })
        .await;
        next_change(&mut changes, |c| {
            c.id == first_id && c.state == FileState::Queued
        })
        .await;
        // The original is queued unhashed, and nobody sends it.
        let orig_id = match ledger.discover(&stat(&orig)).await.expect("discover") {
            tl_ingest::ledger::Discovery::New(id) => id,
            other => panic!("{other:?}"),
        };
        next_change(&mut changes, |c| {
            c.id == orig_id && c.state == FileState::Queued
        })
        .await;
        ledger
            .discover(&stat(&copy))
            .await
            .expect("discover the copy");
        loop {
            let rec = record_of(&ledger, &copy).await;
            if rec.state != "discovered" {
                return rec;
            }
            let _ = changes.recv().await;
        }
    })
    .await;
    let rec_copy = match outcome {
        Ok(rec) => rec,
        Err(_) => panic!("the copy still waits:\n{}", dump(&ledger).await),
    };
    running.shutdown(Duration::ZERO).await;
    let rec_orig = record_of(&ledger, &orig).await;
    assert_eq!(rec_orig.state, "queued", "{}", dump(&ledger).await);
    assert_eq!(rec_orig.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(rec_copy.state, "duplicate", "{}", dump(&ledger).await);
    assert_eq!(rec_copy.duplicate_of, Some(rec_orig.id));
    assert_eq!(env.emulator.stats().assets_created, 0);
}

/// Wait for the first change `want` accepts.
async fn next_change(
    changes: &mut tokio::sync::broadcast::Receiver<tl_ingest::ledger::Change>,
    want: impl Fn(&tl_ingest::ledger::Change) -> bool,
) {
    loop {
        let c = changes.recv().await.expect("change feed");
        if want(&c) {
            return;
        }
    }
}

/// A platform that ignores form fields after the file would lose the stamp
/// sent there: the first upload shows it (the asset comes back without the
/// stamp), and every later file is hashed first, its stamp sent ahead.
/// (Streamed files only: a file of up to 256 KiB is read, hashed and then
/// sent, its stamp ahead of it, whatever the platform does.)
#[tokio::test]
async fn a_platform_that_drops_the_trailing_stamp_gets_it_ahead_of_the_file() {
    let env = TestEnv::dropping_trailing_fields().await;
    let files: Vec<(PathBuf, String)> = (0..4u64)
        .map(|i| {
            let p = env.inbox.join(format!("f{i}.mp4"));
            let size = STREAMED + 100 * usize::try_from(i).expect("small");
            let sha = write_media(&p, Kind::Mp4, size, 30 + i);
            (p, sha)
        })
        .collect();
    let mut config = env.config();
    config.upload.workers = 1;
    let ledger = env
        .run_pipeline(config, std::slice::from_ref(&env.inbox))
        .await;
    let mut unstamped = 0;
    for (path, sha) in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        match env.stamp_on_platform(rec.asset_id.as_deref()) {
            Some(s) => assert_eq!(&s, sha, "{}", path.display()),
            None => unstamped += 1,
        }
    }
    assert_eq!(unstamped, 1, "only the upload that showed the problem");
}

/// Over the 256 KiB a worker reads whole before sending: such a file is
/// streamed, and hashed on the way when no other record has its size.
const STREAMED: usize = 300_000;

/// An answer without `user_metadata` is valid: `upload` says once, as a
/// warning, what it does about it, and no file reports an error.
#[tokio::test]
async fn answers_without_user_metadata_get_one_warning_not_an_error_per_file() {
    let env = TestEnv::dropping_trailing_fields().await;
    // Sizes apart: a streamed file whose size no other has is hashed during
    // its upload.
    for i in 0..4u64 {
        let size = STREAMED + 100 * usize::try_from(i).expect("small");
        write_media(
            &env.inbox.join(format!("m{i}.mp4")),
            Kind::Mp4,
            size,
            70 + i,
        );
    }
    let mut cmd = env.cmd(crate::helpers::KEY);
    cmd.env("TL_INGEST__UPLOAD__WORKERS", "1")
        .arg("upload")
        .arg(&env.inbox);
    let out = crate::helpers::output(cmd).await;
    let all = crate::helpers::text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("user_metadata"))
        .count();
    assert_eq!(warnings, 1, "{stderr}");
    assert!(stderr.contains("hashing every file before"), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

/// A worker claims small files several at a time; a stop with some of them
/// not yet started gives those back to the queue as they were: no attempt
/// left behind, nothing marked to be looked up (none of their bytes went
/// out), nothing left `uploading`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_gives_back_the_small_files_a_worker_had_not_started() {
    use std::time::Duration;
    let env = TestEnv::with_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    })
    .await;
    let (ledger, running, _) = one_worker_holding_a_batch(&env, "s", 300, 0).await;
    running.shutdown(Duration::from_secs(30)).await;

    let uploading = count_in(&ledger, FileState::Uploading).await;
    assert_eq!(uploading, 0, "{}", dump(&ledger).await);
    // What was sent is recorded, its acceptance held for the batch included.
    let accepted =
        count_in(&ledger, FileState::Processing).await + count_in(&ledger, FileState::Ready).await;
    assert!(accepted > 0, "{}", dump(&ledger).await);
    assert_eq!(
        u64::try_from(accepted).expect("count"),
        env.emulator.stats().assets_created as u64,
        "{}",
        dump(&ledger).await
    );
    let mut given_back = 0;
    while let Some(job) = ledger.claim(30_000).await.expect("claim") {
        let attempts = ledger.attempts(job.id).await.expect("attempts");
        assert_eq!(attempts.len(), 1, "only the new claim's: {attempts:?}");
        assert!(!job.lookup_first, "{} was never sent", job.display());
        given_back += 1;
    }
    assert!(given_back > 0, "the batch had files not yet started");
    assert!(
        env.emulator.stats().assets_created < 40,
        "the stop came before the end"
    );
}

/// A worker holding the acceptances of a batch of small files when the
/// ledger's disk fills and the daemon is stopped: the stop's abort ends
/// the wait (the held records are left `uploading`), and the next run
/// looks them up by their stamp instead of sending them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_while_the_ledger_is_full_leaves_held_acceptances_to_a_lookup() {
    use std::time::Duration;
    let env = TestEnv::with_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    })
    .await;
    let (ledger, running, paths) = one_worker_holding_a_batch(&env, "h", 400, 1).await;
    ledger.health().inject_disk_full(Duration::from_secs(3600));
    let stopped = tokio::time::timeout(
        Duration::from_secs(30),
        running.shutdown(Duration::from_millis(500)),
    )
    .await;
    ledger.health().inject_disk_full(Duration::ZERO);
    assert!(
        stopped.is_ok(),
        "the stop waited for a ledger that stays full"
    );
    ledger.close().await;

    // The next run: everything ready, nothing uploaded twice.
    let mut config = env.config();
    config.upload.workers = 1;
    let ledger = env.run_pipeline(config, &paths).await;
    for p in &paths {
        assert_eq!(
            record_of(&ledger, p).await.state,
            "ready",
            "{}",
            dump(&ledger).await
        );
    }
    let stats = env.emulator.stats();
    assert_eq!(stats.assets_created, 40, "{stats:?}");
    assert!(
        stats.uploads_by_sha256.values().all(|n| *n == 1),
        "{stats:?}"
    );
}

/// How many records are in `state`.
async fn count_in(ledger: &tl_ingest::ledger::Ledger, state: FileState) -> i64 {
    ledger
        .counts()
        .await
        .expect("counts")
        .iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| *n)
}

/// A pipeline of one worker over 40 small files (named `prefix`NN), started
/// and left running once the worker holds a batch of them and `answered`
/// uploads were answered: the ledger, the running pipeline, the files.
async fn one_worker_holding_a_batch(
    env: &TestEnv,
    prefix: &str,
    seed: u64,
    answered: u64,
) -> (
    tl_ingest::ledger::Ledger,
    tl_ingest::pipeline::Running,
    Vec<PathBuf>,
) {
    use std::sync::Arc;
    use tl_ingest::ledger::Ledger;
    use tl_ingest::pipeline::{Filter, Pipeline, discover};
    let paths: Vec<PathBuf> = (0..40u64)
        .map(|i| {
            let p = env.inbox.join(format!("{prefix}{i:02}.mp4"));
            let size = 2_000 + usize::try_from(i).expect("small") * 7;
            write_media(&p, Kind::Mp4, size, seed + i);
            p
        })
        .collect();
    let mut config = env.config();
    config.upload.workers = 1;
    let ledger = Ledger::open_at(&env.ledger).await.expect("ledger");
    let pipeline = Pipeline::new(ledger.clone(), env.client(), Arc::new(config));
    let running = pipeline.start();
    let filter =
        Filter::new(&tl_ingest::config::WatchConfig::for_path(PathBuf::new())).expect("filter");
    discover(&ledger, &paths, &filter, None, None)
        .await
        .expect("discover");
    crate::helpers::wait_until(
        crate::helpers::DEADLINE,
        "one worker holding a batch",
        || async {
            count_in(&ledger, FileState::Uploading).await > 1
                && env.emulator.stats().assets_created >= answered
        },
    )
    .await;
    (ledger, running, paths)
}
