//! The ledger's operations against a real SQLite file (or, in the suite's
//! PostgreSQL pass, a fresh PostgreSQL database): discovery, hashing
//! outcomes, claims, recovery, and what happens to duplicates.

use tl_ingest::ledger::{
    AttemptEnd, ClaimBatch, Dedupe, Discovery, FileState, HashJob, HashOutcome, Ledger,
    LedgerError, NewFile, SameSize, UploadJob,
};

fn file(path: &str, size: u64, mtime_ns: i64) -> NewFile {
    NewFile {
        path_bytes: path.as_bytes().to_vec(),
        path: path.to_string(),
        size,
        mtime_ns,
        device: 1,
        inode: 42,
        user_metadata: None,
        origin: None,
    }
}

async fn open() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = crate::helpers::pg::ledger_location(dir.path().join("l.db")).await;
    let ledger = Ledger::open_at(&location).await.expect("open");
    (dir, ledger)
}

async fn hash_job(ledger: &Ledger, id: i64) -> HashJob {
    ledger
        .to_hash(100)
        .await
        .expect("to_hash")
        .into_iter()
        .find(|j| j.id == id)
        .expect("record waits for hashing")
}

async fn state(ledger: &Ledger, id: i64) -> FileState {
    ledger
        .record(id)
        .await
        .expect("query")
        .expect("exists")
        .state()
        .expect("state")
}

/// Discover and hash a file; returns its id and the hash outcome.
async fn add(ledger: &Ledger, f: &NewFile, sha: &str) -> (i64, HashOutcome) {
    let Discovery::New(id) = ledger.discover(f).await.expect("discover") else {
        panic!("expected a new record");
    };
    let job = hash_job(ledger, id).await;
    let outcome = ledger
        .record_hash(&job, sha, Some("video/mp4"), Dedupe::Content)
        .await
        .expect("hash");
    (id, outcome)
}

#[tokio::test]
async fn discovery_knows_unchanged_files_and_follows_changes() {
    let (_d, ledger) = open().await;
    let f = file("/in/a.mp4", 10, 1000);
    let Discovery::New(id) = ledger.discover(&f).await.expect("discover") else {
        panic!("new");
    };
    assert_eq!(
        ledger.discover(&f).await.expect("again"),
        Discovery::Known {
            id,
            state: FileState::Discovered
        }
    );
    // Changed before it was sent: the same record follows the file.
    let grown = file("/in/a.mp4", 20, 2000);
    assert_eq!(
        ledger.discover(&grown).await.expect("changed"),
        Discovery::Changed(id)
    );
    let job = hash_job(&ledger, id).await;
    assert_eq!((job.size, job.mtime_ns), (20, 2000));
}

#[tokio::test]
async fn a_new_version_of_a_finished_file_is_a_new_record() {
    let (_d, ledger) = open().await;
    let (id, _) = add(&ledger, &file("/in/a.mp4", 10, 1000), "aa").await;
    let job = ledger.claim(30_000).await.expect("claim").expect("due");
    ledger
        .accept(&job, "asset1", &AttemptEnd::default())
        .await
        .expect("accept");
    let newer = file("/in/a.mp4", 11, 3000);
    let Discovery::New(id2) = ledger.discover(&newer).await.expect("discover") else {
        panic!("a modified uploaded file is a new version");
    };
    assert_ne!(id, id2);
    assert_eq!(state(&ledger, id).await, FileState::Processing);
}

#[tokio::test]
async fn same_content_elsewhere_is_a_duplicate_that_gets_the_asset() {
    let (_d, ledger) = open().await;
    let (a, out_a) = add(&ledger, &file("/in/a.mp4", 10, 1), "same").await;
    assert_eq!(out_a, HashOutcome::Queued);
    let (b, out_b) = add(&ledger, &file("/in/b.mp4", 10, 1), "same").await;
    assert_eq!(out_b, HashOutcome::Duplicate { of: a });
    assert_eq!(state(&ledger, b).await, FileState::Duplicate);

    let job = ledger.claim(30_000).await.expect("claim").expect("due");
    assert_eq!(job.id, a, "the duplicate is never claimed");
    assert!(ledger.claim(30_000).await.expect("claim").is_none());
    ledger
        .accept(&job, "asset-a", &AttemptEnd::default())
        .await
        .expect("accept");
    let rec_b = ledger.record(b).await.expect("q").expect("b");
    assert_eq!(rec_b.asset_id.as_deref(), Some("asset-a"));
}

#[tokio::test]
async fn when_the_original_fails_one_duplicate_takes_its_place() {
    let (_d, ledger) = open().await;
    let (a, _) = add(&ledger, &file("/in/a.mp4", 10, 1), "same").await;
    let (b, _) = add(&ledger, &file("/in/b.mp4", 10, 1), "same").await;
    let (c, _) = add(&ledger, &file("/in/c.mp4", 10, 1), "same").await;
    let job = ledger.claim(30_000).await.expect("claim").expect("due");
    assert_eq!(job.id, a);
    let end = AttemptEnd {
        outcome: "permanent",
        error: Some("refused".into()),
        ..AttemptEnd::default()
    };
    ledger
        .finish_unsent(&job, tl_ingest::ledger::Event::Fail, &end)
        .await
        .expect("fail");
    assert_eq!(state(&ledger, a).await, FileState::Failed);
    assert_eq!(state(&ledger, b).await, FileState::Queued, "nothing lost");
    // The content is still sent once: c now duplicates b.
    assert_eq!(state(&ledger, c).await, FileState::Duplicate);
    let rec_c = ledger.record(c).await.expect("q").expect("c");
    assert_eq!(rec_c.duplicate_of, Some(b));
    let job = ledger
        .claim(30_000)
        .await
        .expect("claim")
        .expect("b is due");
    assert_eq!(job.id, b);
    assert!(ledger.claim(30_000).await.expect("claim").is_none());
}

#[tokio::test]
async fn the_same_version_seen_again_merges_into_its_record() {
    let (_d, ledger) = open().await;
    let (a, _) = add(&ledger, &file("/in/a.mp4", 10, 1), "same").await;
    // Touched: new mtime, same bytes. A new record appears, then merges.
    let job = ledger.claim(30_000).await.expect("claim").expect("due");
    ledger
        .accept(&job, "asset-a", &AttemptEnd::default())
        .await
        .expect("accept");
    let (b, out) = add(&ledger, &file("/in/a.mp4", 10, 99), "same").await;
    assert_eq!(out, HashOutcome::Merged { into: a });
    assert!(ledger.record(b).await.expect("q").is_none());
    assert_eq!(
        ledger
            .discover(&file("/in/a.mp4", 10, 99))
            .await
            .expect("d"),
        Discovery::Known {
            id: a,
            state: FileState::Processing
        }
    );
}

#[tokio::test]
async fn concurrent_claims_take_each_record_once() {
    let (_d, ledger) = open().await;
    for i in 0..5 {
        add(
            &ledger,
            &file(&format!("/in/{i}.mp4"), 10, 1),
            &format!("h{i}"),
        )
        .await;
    }
    let claims: Vec<_> = (0..12)
        .map(|_| {
            let l = ledger.clone();
            tokio::spawn(async move { l.claim(30_000).await.expect("claim").map(|j| j.id) })
        })
        .collect();
    let mut ids = Vec::new();
    for c in claims {
        if let Some(id) = c.await.expect("join") {
            ids.push(id);
        }
    }
    ids.sort();
    assert_eq!(ids.len(), 5, "{ids:?}");
    ids.dedup();
    assert_eq!(ids.len(), 5, "a record was claimed twice");
}

#[tokio::test]
async fn a_stale_transition_is_refused() {
    let (_d, ledger) = open().await;
    let (a, _) = add(&ledger, &file("/in/a.mp4", 10, 1), "h").await;
    let job = ledger.claim(30_000).await.expect("claim").expect("due");
    ledger
        .accept(&job, "x", &AttemptEnd::default())
        .await
        .expect("accept");
    let again = ledger.accept(&job, "y", &AttemptEnd::default()).await;
    assert!(
        matches!(again, Err(LedgerError::Conflict { id, .. }) if id == a),
        "{again:?}"
    );
    let rec = ledger.record(a).await.expect("q").expect("a");
    assert_eq!(rec.asset_id.as_deref(), Some("x"));
}

#[tokio::test]
async fn recovery_requeues_interrupted_uploads_for_a_lookup() {
    // SQLite in both passes: one daemon per ledger there (the lock file),
    // so whatever is `uploading` at start-up was cut off by the last run.
    // On PostgreSQL a claim is another daemon's until its lease expires
    // (`take_over_expired`).
    let dir = tempfile::tempdir().expect("tempdir");
    let location = tl_ingest::ledger::Location::Sqlite(dir.path().join("l.db"));
    let a = {
        let ledger = Ledger::open_at(&location).await.expect("open");
        let (a, _) = add(&ledger, &file("/in/a.mp4", 10, 1), "h").await;
        ledger.claim(30_000).await.expect("claim").expect("due");
        ledger.close().await;
        a
    };
    let ledger = Ledger::open_at(&location).await.expect("reopen");
    let before = tl_ingest::ledger::now_ms();
    assert_eq!(ledger.recover().await.expect("recover"), 1);
    // Queued again, but not at once: the cut-off request may still become
    // an asset on the platform, and the lookup must come after that.
    assert_eq!(state(&ledger, a).await, FileState::Queued);
    assert!(ledger.claim(30_000).await.expect("claim").is_none());
    let due = ledger.next_due().await.expect("due").expect("queued");
    assert!(
        due >= before + tl_ingest::ledger::LOOKUP_DELAY_MS,
        "due {due}, recovered at {before}"
    );
    let rec = ledger.record(a).await.expect("q").expect("a");
    assert_eq!(rec.next_attempt_at, due);
    // When due, it is looked up before it is sent again.
    let sql = crate::helpers::sql::Sql::connect(&location).await;
    let lookup = sql
        .fetch_bool("SELECT lookup_first FROM files WHERE id = $1", &[a])
        .await;
    assert!(lookup, "must be looked up before sending again");
    sql.close().await;
    let attempts = ledger.attempts(a).await.expect("attempts");
    assert_eq!(attempts[0].outcome.as_deref(), Some("interrupted"));
}

#[tokio::test]
async fn a_corrupt_ledger_is_a_clear_error() {
    // SQLite in both passes: a file of junk where the ledger should be.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l.db");
    std::fs::write(&path, vec![0x42u8; 8192]).expect("write junk");
    let err = Ledger::open(&path).await.expect_err("junk is not a ledger");
    let msg = err.to_string();
    assert!(
        msg.contains("l.db") && msg.contains("not a valid SQLite ledger"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        vec![0x42u8; 8192],
        "nothing overwritten"
    );
}

#[tokio::test]
async fn a_file_put_back_to_an_older_version_stays_known() {
    let (_d, ledger) = open().await;
    let v1 = file("/in/a.mp4", 10, 1);
    let (a, _) = add(&ledger, &v1, "one").await;
    let job = ledger.claim(30_000).await.expect("claim").expect("due");
    ledger
        .accept(&job, "asset-1", &AttemptEnd::default())
        .await
        .expect("accept");
    // Version 2, then back to version 1's bytes (new mtime): merged into a.
    let (_, _) = add(&ledger, &file("/in/a.mp4", 12, 2), "two").await;
    let job = ledger.claim(30_000).await.expect("claim").expect("due");
    ledger
        .accept(&job, "asset-2", &AttemptEnd::default())
        .await
        .expect("accept");
    let back = file("/in/a.mp4", 10, 3);
    let (_, out) = add(&ledger, &back, "one").await;
    assert_eq!(out, HashOutcome::Merged { into: a });
    assert!(
        ledger.is_current(&back).await.expect("query"),
        "a rescan must not settle and hash it again"
    );
}

/// A file of a size no other record has cannot be a duplicate: it is queued
/// unhashed (the upload hashes it), and a later file of that size waits for
/// the hash, then dedupes against it.
#[tokio::test]
async fn a_unique_size_is_queued_unhashed_and_a_twin_waits_for_its_hash() {
    let (_d, ledger) = open().await;
    let Discovery::New(a) = ledger
        .discover(&file("/in/a.mp4", 10, 1))
        .await
        .expect("discover")
    else {
        panic!("new");
    };
    let job_a = hash_job(&ledger, a).await;
    assert_eq!(ledger.same_size(&job_a).await.expect("q"), SameSize::None);
    assert_eq!(
        ledger
            .queue_unhashed(&job_a, Some("video/mp4"))
            .await
            .expect("queue"),
        HashOutcome::QueuedUnhashed
    );
    let claimed = ledger.claim(30_000).await.expect("claim").expect("due");
    assert_eq!((claimed.id, claimed.sha256.as_deref()), (a, None));

    // The twin arrives while `a` is being sent with its hash unknown.
    let Discovery::New(b) = ledger
        .discover(&file("/in/b.mp4", 10, 2))
        .await
        .expect("discover")
    else {
        panic!("new");
    };
    let job_b = hash_job(&ledger, b).await;
    assert_eq!(
        ledger.same_size(&job_b).await.expect("q"),
        SameSize::Pending
    );
    assert_eq!(
        ledger.queue_unhashed(&job_b, None).await.expect("queue"),
        HashOutcome::Wait
    );
    assert_eq!(
        ledger
            .record_hash(&job_b, "same", None, Dedupe::Content)
            .await
            .expect("hash"),
        HashOutcome::Wait,
        "no dedupe decision while the other hash is unknown"
    );
    assert_eq!(state(&ledger, b).await, FileState::Discovered);
    assert!(
        ledger.to_hash(100).await.expect("to_hash").is_empty(),
        "a waiting record is not taken again at once"
    );
    assert!(ledger.next_hash_due().await.expect("due").is_some());

    // The upload learns the hash and commits it with the asset id.
    let hashed = tl_ingest::ledger::UploadJob {
        sha256: Some("same".into()),
        ..claimed
    };
    ledger
        .accept(&hashed, "asset-a", &AttemptEnd::default())
        .await
        .expect("accept");
    let rec_a = ledger.record(a).await.expect("q").expect("a");
    assert_eq!(rec_a.sha256.as_deref(), Some("same"));
    assert_eq!(ledger.same_size(&job_b).await.expect("q"), SameSize::Hashed);
    assert_eq!(
        ledger.queue_unhashed(&job_b, None).await.expect("queue"),
        HashOutcome::NeedsHash,
        "a known size is hashed before it is queued"
    );
    assert_eq!(
        ledger
            .record_hash(&job_b, "same", None, Dedupe::Content)
            .await
            .expect("hash"),
        HashOutcome::Duplicate { of: a }
    );
}

/// The hash stage queues a round of fingerprinted records in one
/// transaction, in order: each only if no other record could hold the same
/// content, so of two twins found together only the first goes unhashed,
/// and a record changed since it was examined is left alone.
#[tokio::test]
async fn a_round_of_records_is_queued_together_but_twins_are_not() {
    let (_d, ledger) = open().await;
    let mut jobs = Vec::new();
    for (name, mtime) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        let Discovery::New(id) = ledger
            .discover(&file(&format!("/in/{name}.mp4"), 10, mtime))
            .await
            .expect("discover")
        else {
            panic!("new");
        };
        jobs.push(hash_job(&ledger, id).await);
    }
    // a and b look alike, c is other content; d changed after it was looked at.
    let prints = ["p1", "p1", "p2", "p3"];
    for (job, print) in jobs.iter_mut().zip(prints) {
        job.fingerprint = Some(print.into());
    }
    ledger
        .discover(&file("/in/d.mp4", 10, 5))
        .await
        .expect("rediscover");
    let round: Vec<_> = jobs.iter().map(|j| (j, Some("video/mp4"))).collect();
    let queued = ledger.queue_unhashed_many(&round).await.expect("queue");
    assert_eq!(queued, [true, false, true, false]);
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(state(&ledger, ids[0]).await, FileState::Queued);
    assert_eq!(state(&ledger, ids[1]).await, FileState::Discovered);
    assert_eq!(state(&ledger, ids[2]).await, FileState::Queued);
    // The twin left behind goes the single way: it waits for a's hash.
    assert_eq!(
        ledger.same_size(&jobs[1]).await.expect("q"),
        SameSize::Pending
    );
    // Records without a fingerprint are never queued this way.
    let unprinted = HashJob {
        fingerprint: None,
        ..jobs[1].clone()
    };
    let queued = ledger
        .queue_unhashed_many(&[(&unprinted, None)])
        .await
        .expect("queue");
    assert_eq!(queued, [false]);
}

/// A record that changes while it waits is examined again at once.
#[tokio::test]
async fn a_changed_file_is_not_kept_waiting() {
    let (_d, ledger) = open().await;
    let (_a, _) = add(&ledger, &file("/in/a.mp4", 10, 1), "aa").await;
    let Discovery::New(b) = ledger
        .discover(&file("/in/b.mp4", 10, 2))
        .await
        .expect("discover")
    else {
        panic!("new");
    };
    let job_b = hash_job(&ledger, b).await;
    ledger.wait_for_hash(&job_b).await.expect("wait");
    assert!(ledger.to_hash(100).await.expect("to_hash").is_empty());
    assert_eq!(
        ledger
            .discover(&file("/in/b.mp4", 11, 3))
            .await
            .expect("discover"),
        Discovery::Changed(b)
    );
    let job = hash_job(&ledger, b).await;
    assert_eq!(job.size, 11);
}

/// Several processes opening a new ledger at once (the daemon starting while
/// `status` runs) all get a migrated ledger: none fails on a migration the
/// other applied first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_of_a_new_ledger_all_succeed() {
    // On PostgreSQL: four hosts' daemons starting on a new, empty database.
    for round in 0..10 {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = crate::helpers::pg::ledger_location(dir.path().join("l.db")).await;
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let location = location.clone();
                tokio::spawn(async move {
                    Ledger::open_at(&location)
                        .await
                        .map(|l| l.location().clone())
                })
            })
            .collect();
        for open in opens {
            let opened = open.await.expect("task");
            assert!(opened.is_ok(), "round {round}: {opened:?}");
        }
    }
}

/// A failed file tried again is hashed and deduplicated afresh: if its
/// content was uploaded since by another file, it becomes that file's
/// duplicate instead of being sent twice.
#[tokio::test]
async fn a_retried_failure_whose_content_was_uploaded_since_is_a_duplicate() {
    let (_d, ledger) = open().await;
    let Discovery::New(b) = ledger
        .discover(&file("/in/b.mp4", 10, 1))
        .await
        .expect("discover")
    else {
        panic!("new");
    };
    ledger
        .fail(b, FileState::Discovered, "the file vanished before upload")
        .await
        .expect("fail");
    // Meanwhile the same content arrives under another name and is uploaded.
    let (a, _) = add(&ledger, &file("/in/a.mp4", 10, 2), "same").await;
    let job = ledger.claim(30_000).await.expect("claim").expect("due");
    assert_eq!(job.id, a);
    ledger
        .accept(&job, "asset-a", &AttemptEnd::default())
        .await
        .expect("accept");

    assert_eq!(
        ledger.requeue(b).await.expect("retry"),
        tl_ingest::ledger::admin::Requeued::Queued
    );
    assert_eq!(state(&ledger, b).await, FileState::Discovered);
    let job_b = hash_job(&ledger, b).await;
    assert_eq!(
        ledger
            .record_hash(&job_b, "same", None, Dedupe::Content)
            .await
            .expect("hash"),
        HashOutcome::Duplicate { of: a }
    );
    let rec = ledger.record(b).await.expect("q").expect("b");
    assert_eq!(rec.asset_id.as_deref(), Some("asset-a"));
}

/// A file that cannot be read now (a network mount away) is tried again
/// later, the try counted, and is not taken again before then.
#[tokio::test]
async fn a_file_unreadable_for_now_is_examined_again_later() {
    let (_d, ledger) = open().await;
    let Discovery::New(id) = ledger
        .discover(&file("/mnt/nas/a.mp4", 10, 1))
        .await
        .expect("discover")
    else {
        panic!("new");
    };
    let job = hash_job(&ledger, id).await;
    assert_eq!(job.attempts, 0);
    let later = tl_ingest::ledger::now_ms() + 60_000;
    ledger
        .examine_later(&job, later, "cannot read the file now: Stale file handle")
        .await
        .expect("later");
    assert!(ledger.to_hash(100).await.expect("to_hash").is_empty());
    assert_eq!(ledger.next_hash_due().await.expect("due"), Some(later));
    let rec = ledger.record(id).await.expect("q").expect("rec");
    assert_eq!(rec.state, "discovered");
    assert_eq!(rec.attempts, 1);
    assert!(
        rec.last_error
            .as_deref()
            .is_some_and(|e| e.contains("Stale"))
    );
}

/// On SQLite the lock proves that an earlier daemon is gone, however it
/// ended: the next one to join records it as stopped, so the fleet view
/// does not show a crashed daemon as running (or stale) forever.
#[tokio::test]
async fn joining_a_sqlite_ledger_closes_the_rows_of_earlier_daemons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l.db");
    let crashed = Ledger::open(&path).await.expect("open");
    let old = crashed.join("host", &[], 30_000).await.expect("join");
    crashed.close().await;
    let next = Ledger::open(&path).await.expect("open");
    let new = next.join("host", &[], 30_000).await.expect("join");
    let daemons = next.daemons(0).await.expect("daemons");
    let row = |id: i64| daemons.iter().find(|d| d.id == id).expect("listed");
    assert!(row(old.id).stopped_at.is_some(), "{daemons:?}");
    assert!(row(new.id).stopped_at.is_none(), "{daemons:?}");
}

/// `history --path GLOB` means the same on both engines (PostgreSQL has no
/// GLOB: the ledger matches a regex made from it there).
#[tokio::test]
async fn path_globs_match_alike_on_both_engines() {
    use tl_ingest::ledger::query::HistoryFilter;
    let (_d, ledger) = open().await;
    let paths = [
        "/in/a.mp4",
        "/in/b.MP4",
        "/in/a.mp4x",
        "/in/sub/c.mp4",
        "/in/x(1)+.mov",
        "/in/back\\slash.wav",
        "/in/vidéo.mp4",
        "/in/[odd].mp4",
    ];
    for (i, p) in paths.iter().enumerate() {
        let n = i64::try_from(i).expect("small");
        let mut f = file(p, 10, n + 1);
        f.inode = 100 + n.unsigned_abs();
        assert!(matches!(
            ledger.discover(&f).await.expect("discover"),
            Discovery::New(_)
        ));
    }
    for (glob, want) in [
        (
            "*.mp4",
            &[
                "/in/a.mp4",
                "/in/sub/c.mp4",
                "/in/vidéo.mp4",
                "/in/[odd].mp4",
            ][..],
        ),
        ("/in/?.mp4", &["/in/a.mp4"]),
        ("/in/[ab].*", &["/in/a.mp4", "/in/b.MP4", "/in/a.mp4x"]),
        (
            "/in/[^ab]*",
            &[
                "/in/sub/c.mp4",
                "/in/x(1)+.mov",
                "/in/vidéo.mp4",
                "/in/[odd].mp4",
            ],
        ),
        ("*(1)+*", &["/in/x(1)+.mov"]),
        ("*\\*", &["/in/back\\slash.wav"]),
        ("/in/vid?o.mp4", &["/in/vidéo.mp4"]),
        ("/in/[[]odd[]].mp4", &["/in/[odd].mp4"]),
        ("*/sub/*", &["/in/sub/c.mp4"]),
        ("/in/[abc", &[]),
        ("a.mp4", &[]),
    ] {
        let found = ledger
            .history_filtered(&HistoryFilter {
                path_glob: Some(glob.into()),
                ..HistoryFilter::default()
            })
            .await
            .expect("history");
        let mut found: Vec<String> = found.into_iter().filter_map(|r| r.path).collect();
        found.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(found, want, "--path {glob:?}");
    }
}

#[tokio::test]
async fn a_claim_takes_small_files_together_from_a_deep_queue_and_gives_back_the_unstarted() {
    let (_d, ledger) = open().await;
    let (large, _) = add(&ledger, &file("/in/large.mp4", 5_000_000, 1), "large").await;
    let mut small = Vec::new();
    for i in 0..12 {
        let (id, out) = add(
            &ledger,
            &file(&format!("/in/s{i:02}.mp4"), 100, 1),
            &format!("s{i}"),
        )
        .await;
        assert_eq!(out, HashOutcome::Queued);
        small.push(id);
    }
    let batch = ClaimBatch {
        max: 4,
        small_bytes: 1000,
        deep: 4,
    };
    let claim = || async { ledger.claim_batch(30_000, batch).await.expect("claim") };
    let ids = |jobs: &[UploadJob]| jobs.iter().map(|j| j.id).collect::<Vec<_>>();

    // A large file at the head is claimed alone.
    assert_eq!(ids(&claim().await), vec![large]);
    // Small files go four at a time while at least four more are due...
    let first = claim().await;
    assert_eq!(ids(&first), small[0..4]);
    assert_eq!(ids(&claim().await), small[4..8]);
    // ...and one at a time once fewer are left, for the other workers.
    for id in &small[8..12] {
        assert_eq!(ids(&claim().await), vec![*id]);
    }
    assert!(claim().await.is_empty());

    // Each has its own attempt, open.
    let mut attempt_ids: Vec<i64> = first.iter().map(|j| j.attempt_id).collect();
    attempt_ids.dedup();
    assert_eq!(attempt_ids.len(), 4, "{first:?}");
    for job in &first {
        let attempts = ledger.attempts(job.id).await.expect("attempts");
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].id, job.attempt_id);
        assert!(attempts[0].ended_at.is_none());
    }

    // The first was sent; the rest are given back unstarted, except one
    // claimed again meanwhile (a stale hold gives back nothing).
    ledger
        .accept(&first[0], "asset-0", &AttemptEnd::default())
        .await
        .expect("accept");
    ledger.unclaim(&first[1..3]).await.expect("unclaim");
    let reclaimed = ledger.claim(30_000).await.expect("claim").expect("due");
    assert_eq!(reclaimed.id, first[1].id, "given back, due at once");
    ledger
        .unclaim(&[first[1].clone(), first[3].clone()])
        .await
        .expect("unclaim stale");
    assert_eq!(state(&ledger, first[0].id).await, FileState::Processing);
    assert_eq!(
        state(&ledger, first[1].id).await,
        FileState::Uploading,
        "the newer claim stands"
    );
    assert_eq!(state(&ledger, first[2].id).await, FileState::Queued);
    assert_eq!(state(&ledger, first[3].id).await, FileState::Queued);
    for job in &first[2..4] {
        assert!(
            ledger.attempts(job.id).await.expect("attempts").is_empty(),
            "an unstarted attempt leaves no row"
        );
    }
    assert_eq!(
        ledger.attempts(first[1].id).await.expect("attempts").len(),
        1
    );
    for expected in &first[2..4] {
        let again = ledger.claim(30_000).await.expect("claim").expect("due");
        assert_eq!(again.id, expected.id);
        assert!(!again.lookup_first, "nothing was sent: no lookup first");
    }
}

/// Files new to the ledger, found together, are written in one statement
/// (both engines): each gets its own record, in the batch's order, with
/// an id above every id ever given, even after the highest was forgotten.
#[tokio::test]
async fn new_files_found_together_get_their_own_records_and_fresh_ids() {
    let (_dir, ledger) = open().await;
    let Discovery::New(first) = ledger
        .discover(&file("/in/first.mp4", 10, 1))
        .await
        .expect("discover")
    else {
        panic!("new")
    };
    ledger.forget(first).await.expect("forget");
    let batch: Vec<NewFile> = (0..5u64)
        .map(|i| file(&format!("/in/batch-{i}.mp4"), 100 + i, 1))
        .collect();
    let found = ledger.discover_many(&batch).await.expect("discover");
    let ids: Vec<i64> = found
        .iter()
        .map(|d| match d {
            Discovery::New(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    for (f, id) in batch.iter().zip(&ids) {
        assert!(*id > first, "id {id} after {first} was given");
        let rec = ledger.record(*id).await.expect("q").expect("record");
        assert_eq!(rec.path.as_deref(), Some(f.path.as_str()));
        assert_eq!(rec.size, Some(i64::try_from(f.size).expect("size")));
        assert_eq!(rec.state, "discovered");
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    ledger.close().await;
}

/// A worker's small files are accepted together (`accept_all`, one
/// transaction): each held record gets its asset and its attempt ends
/// `accepted`, its duplicates point at the asset; one that was claimed
/// again meanwhile is refused alone, and nothing of its acceptance is
/// written, not even to its duplicate.
#[tokio::test]
async fn small_files_accepted_together_record_each_and_refuse_one_no_longer_held() {
    let (_d, ledger) = open().await;
    let mut small = Vec::new();
    for i in 0..8 {
        let (id, out) = add(
            &ledger,
            &file(&format!("/in/s{i}.mp4"), 100, 1),
            &format!("s{i}"),
        )
        .await;
        assert_eq!(out, HashOutcome::Queued);
        small.push(id);
    }
    let (twin, out) = add(&ledger, &file("/in/twin.mp4", 100, 1), "s1").await;
    assert_eq!(out, HashOutcome::Duplicate { of: small[1] });
    let batch = ClaimBatch {
        max: 4,
        small_bytes: 1000,
        deep: 4,
    };
    let jobs = ledger.claim_batch(30_000, batch).await.expect("claim");
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), small[0..4]);
    // The second is given up and claimed again: its first claim is stale.
    let failed = AttemptEnd {
        outcome: "transient",
        ..AttemptEnd::default()
    };
    ledger
        .retry_later(&jobs[1], &failed, 0, false, false)
        .await
        .expect("retry");
    let again = ledger.claim(30_000).await.expect("claim").expect("due");
    assert_eq!(again.id, small[1]);

    let end = AttemptEnd {
        outcome: "accepted",
        http_status: Some(201),
        ..AttemptEnd::default()
    };
    let assets = ["a0", "a1", "a2", "a3"];
    let uploads: Vec<(&UploadJob, &str, &AttemptEnd)> =
        jobs.iter().zip(assets).map(|(j, a)| (j, a, &end)).collect();
    let results = ledger.accept_all(&uploads).await.expect("accept");
    assert!(
        results[0].is_ok() && results[2].is_ok() && results[3].is_ok(),
        "{results:?}"
    );
    assert!(
        matches!(results[1], Err(LedgerError::Conflict { id, .. }) if id == small[1]),
        "{results:?}"
    );
    for (job, asset) in jobs.iter().zip(assets) {
        let rec = ledger.record(job.id).await.expect("q").expect("record");
        let attempts = ledger.attempts(job.id).await.expect("attempts");
        let first = attempts
            .iter()
            .find(|a| a.id == job.attempt_id)
            .expect("its attempt");
        if job.id == small[1] {
            assert_eq!(rec.state, "uploading", "the newer claim stands");
            assert_eq!(rec.asset_id, None);
            assert_eq!(first.outcome.as_deref(), Some("transient"));
        } else {
            assert_eq!(rec.state, "processing");
            assert_eq!(rec.asset_id.as_deref(), Some(asset));
            assert_eq!(first.outcome.as_deref(), Some("accepted"));
        }
    }
    let twin = ledger.record(twin).await.expect("q").expect("record");
    assert_eq!(
        (twin.state.as_str(), twin.asset_id),
        ("duplicate", None),
        "the refused acceptance left the duplicate as it was"
    );
    ledger
        .accept(&again, "a1-again", &end)
        .await
        .expect("the current claim is accepted");
    ledger.close().await;
}
