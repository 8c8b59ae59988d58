//! Batched status polling: the assets due are asked about up to 50 per
//! `GET /assets?asset_ids=…`, an asset the list leaves out is asked about
//! alone, and each answer is recorded for its own file (README.md, "What
//! happens to a file").

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tl_ingest::api::{ApiClient, ClientOptions};
use tl_ingest::config::{Config, WatchConfig};
use tl_ingest::emulator::{EmulatorConfig, Faults, Stats};
use tl_ingest::ledger::{FileState, Ledger};
use tl_ingest::pipeline::{Filter, Pipeline, discover};
use tl_ingest::secret::ApiKey;

use crate::helpers::sql::Sql;
use crate::helpers::{DEADLINE, KEY, Kind, TestEnv, dump, record_of, write_media};

/// An emulator whose assets settle at once: every asset is `ready` (or
/// `failed`) the first time it is asked about.
async fn settling_at_once(faults: Faults) -> TestEnv {
    TestEnv::with(
        EmulatorConfig {
            ready_delay: Duration::from_millis(1),
            ..EmulatorConfig::default()
        },
        faults,
    )
    .await
}

/// `n` small MP4 files in the inbox.
fn small_files(env: &TestEnv, n: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let path = env.inbox.join(format!("small{i:03}.mp4"));
            write_media(
                &path,
                Kind::Mp4,
                2_000 + usize::try_from(i).expect("small"),
                9_000 + i,
            );
            path
        })
        .collect()
}

/// Upload `paths` with a poll interval of an hour and stop once every one
/// of them is `processing`: the platform holds the assets, nobody has
/// asked about them yet, and all are due.
async fn upload_without_polling(env: &TestEnv, paths: &[PathBuf]) {
    let mut config: Config = env.config();
    config.api.poll_interval = Duration::from_secs(3600);
    let ledger = Ledger::open_at(&env.ledger).await.expect("ledger opens");
    let client = ApiClient::new(
        &ClientOptions {
            base_url: env.emulator.base_url(),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        },
        &ApiKey::new(KEY).expect("key"),
    )
    .expect("client");
    let pipeline = Pipeline::new(ledger.clone(), client, Arc::new(config));
    pipeline.recover().await.expect("recover");
    let mut changes = ledger.subscribe();
    let running = pipeline.start();
    let filter = Filter::new(&WatchConfig::for_path(PathBuf::new())).expect("filter");
    discover(&ledger, paths, &filter, None, None)
        .await
        .expect("discover");
    let want = i64::try_from(paths.len()).expect("small");
    let processing = || async {
        ledger
            .counts()
            .await
            .expect("counts")
            .into_iter()
            .find(|(state, _)| *state == FileState::Processing)
            .map_or(0, |(_, n)| n)
    };
    let all_up = tokio::time::timeout(DEADLINE, async {
        while processing().await < want {
            // Any committed change may be the last one; a lag is a change too.
            let _ = changes.recv().await;
        }
    })
    .await;
    if all_up.is_err() {
        panic!(
            "the uploads did not finish; ledger:\n{}",
            dump(&ledger).await
        );
    }
    running.shutdown(Duration::ZERO).await;
    ledger.close().await;
    // As if accepted a minute ago: every one is due when the poller starts,
    // however quickly the next run follows.
    Sql::connect(&env.ledger)
        .await
        .exec(
            "UPDATE files SET updated_at = updated_at - 60000 WHERE state = 'processing'",
            &[],
        )
        .await;
}

/// What the emulator saw between two snapshots, of the status requests.
fn status_requests(before: &Stats, after: &Stats) -> (u64, u64) {
    (
        after.list_requests - before.list_requests,
        after.asset_get_requests - before.asset_get_requests,
    )
}

/// 120 assets processing when the poller starts: one round asks about them
/// in ceil(120 / 50) = 3 list requests and asks about none alone. Polling
/// each asset on its own would make 120 `GET /assets/{id}` instead.
#[tokio::test]
async fn a_round_of_120_assets_costs_three_list_requests_and_no_single_gets() {
    let env = settling_at_once(Faults::default()).await;
    let files = small_files(&env, 120);
    upload_without_polling(&env, &files).await;
    let before = env.emulator.stats();
    assert_eq!(before.assets_created, 120);

    let ledger = env.run_pipeline(env.config(), &files).await;
    for path in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert_eq!(rec.attempts, 1, "{}", dump(&ledger).await);
    }
    let after = env.emulator.stats();
    let (lists, gets) = status_requests(&before, &after);
    assert_eq!(
        gets, 0,
        "no asset the list answered for is asked about alone ({lists} lists)"
    );
    // 3 in one round; 4 at most if an asset was not ready yet (1 ms after
    // its upload) and had to be asked about again.
    assert!(
        (3..=4).contains(&lists),
        "{lists} list requests for 120 assets ({gets} alone)"
    );
    assert_eq!(after.create_requests, before.create_requests);
}

/// A list that leaves an asset out (a lagging index) is not taken as the
/// asset being gone: it is asked about alone, and its file ends `ready`,
/// sent once.
#[tokio::test]
async fn an_asset_missing_from_the_list_is_asked_about_alone_and_ends_ready() {
    let env = settling_at_once(Faults {
        list_omits_asset: 1.0,
        ..Faults::default()
    })
    .await;
    let files = small_files(&env, 6);
    let ledger = env
        .run_pipeline_within(env.config(), &files, |_| (), Duration::from_secs(30))
        .await;
    let stats = env.emulator.stats();
    for path in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert_eq!(rec.attempts, 1, "never sent again: {}", dump(&ledger).await);
    }
    assert_eq!(stats.assets_created, 6);
    let (omitted, alone) = (&stats.omitted_from_lists, &stats.asset_gets_by_id);
    assert!(!omitted.is_empty(), "no list left an asset out");
    assert!(!alone.is_empty(), "no asset asked about alone");
    // Only the assets a list left out were asked about alone.
    for id in alone.keys() {
        assert!(
            omitted.contains_key(id),
            "{id} was asked about alone without being left out: {omitted:?} {alone:?}"
        );
    }
}

/// One asset of a batch fails processing on the platform: its file fails
/// with the platform's reason, the others of the same answer are `ready`.
#[tokio::test]
async fn an_asset_that_fails_in_a_batch_fails_its_file_only() {
    let env = settling_at_once(Faults::default()).await;
    let mut files = small_files(&env, 5);
    // An extension the platform takes, bytes it cannot make media of.
    let bad = env.inbox.join("not-really.mp4");
    std::fs::write(&bad, vec![0xab_u8; 3_000]).expect("write");
    files.push(bad.clone());
    upload_without_polling(&env, &files).await;
    let before = env.emulator.stats();

    let ledger = env.run_pipeline(env.config(), &files).await;
    let rec = record_of(&ledger, &bad).await;
    assert_eq!(rec.state, "failed", "{}", dump(&ledger).await);
    let why = rec.last_error.unwrap_or_default();
    assert!(
        why.contains("the platform could not process it") && why.contains("unsupported"),
        "{why}"
    );
    for path in &files[..5] {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    }
    let after = env.emulator.stats();
    let (lists, gets) = status_requests(&before, &after);
    // All six were answered by lists (one, or two if an asset was not ready
    // yet when first asked), none alone.
    assert_eq!(gets, 0, "asked about alone ({lists} lists)");
    assert!(
        (1..=2).contains(&lists),
        "{lists} list requests for 6 assets"
    );
}

/// A poll round's `ready` answers are recorded in one transaction; a
/// record that left `processing` meanwhile (failed, retried, forgotten) is
/// left as it is, and the others still move.
#[tokio::test]
async fn a_rounds_ready_answers_move_only_the_records_still_processing() {
    use tl_ingest::ledger::{AttemptEnd, Dedupe, Discovery, NewFile};

    let env = TestEnv::new().await;
    let ledger = Ledger::open_at(&env.ledger).await.expect("ledger opens");
    ledger.join("host", &[], 60_000).await.expect("join");
    for i in 0..3u64 {
        let path = format!("/in/clip{i}.mp4");
        let new = NewFile {
            path_bytes: path.as_bytes().to_vec(),
            path,
            size: 1_000 + i,
            mtime_ns: 1,
            device: 7,
            inode: i,
            user_metadata: None,
            origin: None,
        };
        let found = ledger.discover(&new).await.expect("discover");
        assert!(matches!(found, Discovery::New(_)), "{found:?}");
    }
    for job in ledger.to_hash(10).await.expect("to_hash") {
        let sha = format!("{:064x}", job.id);
        ledger
            .record_hash(&job, &sha, Some("video/mp4"), Dedupe::Content)
            .await
            .expect("hash");
    }
    let end = AttemptEnd {
        outcome: "accepted",
        http_status: Some(201),
        ..AttemptEnd::default()
    };
    while let Some(job) = ledger.claim(60_000).await.expect("claim") {
        let asset = format!("asset-{}", job.id);
        ledger.accept(&job, &asset, &end).await.expect("accept");
    }
    let jobs = ledger.processing(10, i64::MAX).await.expect("processing");
    assert_eq!(jobs.len(), 3, "{}", dump(&ledger).await);
    // One fails meanwhile (as `give_up` or another daemon would).
    ledger
        .fail(jobs[1].id, FileState::Processing, "given up")
        .await
        .expect("fail");

    let mut changes = ledger.subscribe();
    let all: Vec<_> = jobs.iter().collect();
    let moved = ledger.mark_ready_all(&all).await.expect("one transaction");
    let moved: Vec<i64> = moved.iter().map(|j| j.id).collect();
    assert_eq!(moved, [jobs[0].id, jobs[2].id]);
    for (job, want) in jobs.iter().zip(["ready", "failed", "ready"]) {
        let rec = ledger.record(job.id).await.expect("read").expect("there");
        assert_eq!(rec.state, want, "{}", dump(&ledger).await);
    }
    // Each record that moved is announced, once.
    let mut announced = Vec::new();
    while let Ok(change) = changes.try_recv() {
        announced.push((change.id, change.state));
    }
    assert_eq!(
        announced,
        [
            (jobs[0].id, FileState::Ready),
            (jobs[2].id, FileState::Ready)
        ]
    );
    // Nothing left to touch or mark: both are no-ops.
    ledger.touch_all(&all).await.expect("touch");
    assert!(ledger.mark_ready_all(&all).await.expect("again").is_empty());
}
