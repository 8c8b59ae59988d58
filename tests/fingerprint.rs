//! Same size is not same content: records of one size are told apart by
//! their fingerprint (64 KiB from the start, the middle and the end), so a
//! file goes in one read, hashed as it is sent, unless a same-size record's
//! fingerprint matches (README.md, "What happens to a file"). The ledger's
//! side on either engine, then the whole pipeline, counting reads.

use std::path::{Path, PathBuf};

use tl_ingest::ledger::{
    AttemptEnd, Dedupe, Discovery, FileState, HashJob, HashOutcome, Ledger, NewFile, SameSize,
};

use crate::helpers::{DEADLINE, Kind, TestEnv, dump, media, record_of, sha256_hex, write_media};

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

/// A new record, as the hash stage sees it once it has taken the
/// fingerprint `print` (`None`: as an older daemon, without one).
async fn found(ledger: &Ledger, path: &str, size: u64, print: Option<&str>) -> HashJob {
    let Discovery::New(id) = ledger
        .discover(&file(path, size, 1))
        .await
        .expect("discover")
    else {
        panic!("new");
    };
    let job = ledger
        .to_hash(100)
        .await
        .expect("to_hash")
        .into_iter()
        .find(|j| j.id == id)
        .expect("record waits for hashing");
    HashJob {
        fingerprint: print.map(str::to_owned),
        ..job
    }
}

async fn state(ledger: &Ledger, id: i64) -> FileState {
    let rec = ledger.record(id).await.expect("record").expect("exists");
    FileState::parse(&rec.state).expect("state")
}

/// A record of the same size counts only if its fingerprint matches; the
/// fingerprint never makes a duplicate on its own.
#[tokio::test]
async fn a_same_size_record_counts_only_when_its_fingerprint_matches() {
    let (_d, ledger) = open().await;
    // As a daemon does: on a shared ledger, the twins it may read are those
    // its host can see.
    ledger.join("fp-host", &[], 30_000).await.expect("join");
    let a = found(&ledger, "/in/a.mp4", 10, Some("print-a")).await;
    assert_eq!(ledger.same_size(&a).await.expect("q"), SameSize::None);
    assert_eq!(
        ledger.queue_unhashed(&a, None).await.expect("queue"),
        HashOutcome::QueuedUnhashed
    );
    let sending = ledger.claim(30_000).await.expect("claim").expect("due");
    assert_eq!((sending.id, sending.sha256.as_deref()), (a.id, None));

    // Same size, another fingerprint: one pass too, while `a` is being sent.
    let b = found(&ledger, "/in/b.mp4", 10, Some("print-b")).await;
    assert_eq!(ledger.same_size(&b).await.expect("q"), SameSize::None);
    assert_eq!(
        ledger.queue_unhashed(&b, None).await.expect("queue"),
        HashOutcome::QueuedUnhashed
    );

    // Same fingerprint as `a`, whose hash is unknown: it waits.
    let c = found(&ledger, "/in/c.mp4", 10, Some("print-a")).await;
    assert_eq!(ledger.same_size(&c).await.expect("q"), SameSize::Pending);
    assert_eq!(
        ledger.queue_unhashed(&c, None).await.expect("queue"),
        HashOutcome::Wait
    );
    assert_eq!(
        ledger
            .record_hash(&c, "sha-c", None, Dedupe::Content)
            .await
            .expect("hash"),
        HashOutcome::Wait
    );
    let twins = ledger.unhashed_twins(&c).await.expect("twins");
    assert_eq!(
        twins.iter().map(|t| t.id).collect::<Vec<_>>(),
        [a.id],
        "only the twin whose fingerprint matches is worth hashing"
    );

    // `a`'s upload learns its hash: `c` is hashed in full before it is
    // queued, and its other content makes it no duplicate.
    let hashed = tl_ingest::ledger::UploadJob {
        sha256: Some("sha-a".into()),
        ..sending
    };
    ledger
        .accept(&hashed, "asset-a", &AttemptEnd::default())
        .await
        .expect("accept");
    assert_eq!(ledger.same_size(&c).await.expect("q"), SameSize::Hashed);
    assert_eq!(
        ledger.queue_unhashed(&c, None).await.expect("queue"),
        HashOutcome::NeedsHash
    );
    assert_eq!(
        ledger
            .record_hash(&c, "sha-c", None, Dedupe::Content)
            .await
            .expect("hash"),
        HashOutcome::Queued,
        "a fingerprint match with other content is no duplicate"
    );
    // The same full hash is.
    let d = found(&ledger, "/in/d.mp4", 10, Some("print-a")).await;
    assert_eq!(
        ledger
            .record_hash(&d, "sha-a", None, Dedupe::Content)
            .await
            .expect("hash"),
        HashOutcome::Duplicate { of: a.id }
    );
    assert_eq!(state(&ledger, b.id).await, FileState::Queued);
    let rec_c = ledger.record(c.id).await.expect("q").expect("c");
    assert_eq!(rec_c.sha256.as_deref(), Some("sha-c"));
}

/// A record holding an asset without a fingerprint (from before migration
/// 0009, or queued by an older daemon) matches any of its size; a record
/// not examined yet matches none (it compares itself when examined).
#[tokio::test]
async fn a_record_without_a_fingerprint_matches_any_and_an_unexamined_one_none() {
    let (_d, ledger) = open().await;
    let old = found(&ledger, "/in/old.mp4", 10, None).await;
    assert_eq!(
        ledger.queue_unhashed(&old, None).await.expect("queue"),
        HashOutcome::QueuedUnhashed
    );
    let new = found(&ledger, "/in/new.mp4", 10, Some("print-n")).await;
    assert_eq!(ledger.same_size(&new).await.expect("q"), SameSize::Pending);
    let twins = ledger.unhashed_twins(&new).await.expect("twins");
    assert_eq!(twins.iter().map(|t| t.id).collect::<Vec<_>>(), [old.id]);
    ledger
        .set_twin_sha256(&twins[0], "sha-old")
        .await
        .expect("twin hash");
    assert_eq!(ledger.same_size(&new).await.expect("q"), SameSize::Hashed);

    // Not examined yet: no fingerprint, and it does not count.
    let _waiting = found(&ledger, "/in/waiting.mp4", 20, None).await;
    let other = found(&ledger, "/in/other.mp4", 20, Some("print-o")).await;
    assert_eq!(ledger.same_size(&other).await.expect("q"), SameSize::None);
    // Without its own fingerprint a record counts every one of its size.
    let unknown = found(&ledger, "/in/unknown.mp4", 20, None).await;
    assert_eq!(
        ledger.same_size(&unknown).await.expect("q"),
        SameSize::Hashed
    );
}

/// The pipeline over `files`, counting the bytes it read.
async fn run(env: &TestEnv, files: &[PathBuf]) -> (Ledger, tl_ingest::pipeline::ReadCounts) {
    env.run_pipeline_counting(env.config(), files, |_| (), DEADLINE)
        .await
}

/// 1 MiB: over three fingerprint regions, under the multipart threshold.
const SIZE: usize = 1 << 20;

/// Write `bytes` to `path`; its sha256.
fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).expect("write");
    sha256_hex(bytes)
}

/// Same size, other content: each file is read once, by its upload (plus
/// its fingerprint's 192 KiB), never hashed in full before it is sent, and
/// the ledger still gets both hashes.
#[tokio::test]
async fn same_size_different_content_is_read_once_and_sent_hashed_on_the_way() {
    let env = TestEnv::new().await;
    let files: Vec<(PathBuf, String)> = (0..2u64)
        .map(|i| {
            let p = env.inbox.join(format!("clip{i}.mp4"));
            let sha = write_media(&p, Kind::Mp4, SIZE, 40 + i);
            (p, sha)
        })
        .collect();
    let paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let (ledger, reads) = run(&env, &paths).await;
    for (path, sha) in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
    }
    let stats = env.emulator.stats();
    assert_eq!(stats.assets_created, 2);
    let total = 2 * SIZE as u64;
    assert_eq!(reads.sent, total, "each file sent once: {reads:?}");
    assert!(
        reads.examined <= 2 * 3 * 64 * 1024,
        "only the fingerprints were read before sending, no full hash: {reads:?}"
    );
}

/// Two identical files: the copy is deduplicated before it is sent.
#[tokio::test]
async fn same_content_is_deduplicated_before_it_is_sent() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    let b = env.inbox.join("b.mp4");
    let sha = write_media(&a, Kind::Mp4, SIZE, 50);
    std::fs::copy(&a, &b).expect("copy");
    let (ledger, _) = run(&env, &[a.clone(), b.clone()]).await;
    let (ra, rb) = (record_of(&ledger, &a).await, record_of(&ledger, &b).await);
    let mut states = [ra.state.as_str(), rb.state.as_str()];
    states.sort();
    assert_eq!(states, ["duplicate", "ready"], "{}", dump(&ledger).await);
    let stats = env.emulator.stats();
    assert_eq!(stats.create_requests, 1, "{stats:?}");
    assert_eq!(stats.uploads_by_sha256.get(&sha), Some(&1));
}

/// A fingerprint collision: the same size and the same start, middle and
/// end, one byte apart elsewhere. The full hash tells them apart: both
/// are sent, neither is a duplicate.
#[tokio::test]
async fn a_fingerprint_collision_is_hashed_in_full_and_both_are_sent() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    let b = env.inbox.join("b.mp4");
    let bytes = media(Kind::Mp4, SIZE, 60);
    let mut other = bytes.clone();
    // Between the start region and the middle one.
    other[100 * 1024] ^= 0xff;
    let (sha_a, sha_b) = (write(&a, &bytes), write(&b, &other));
    assert_ne!(sha_a, sha_b);
    let (ledger, reads) = run(&env, &[a.clone(), b.clone()]).await;
    for (path, sha) in [(&a, &sha_a), (&b, &sha_b)] {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(rec.duplicate_of, None);
    }
    let stats = env.emulator.stats();
    assert_eq!(stats.assets_created, 2, "{stats:?}");
    assert!(
        reads.examined >= SIZE as u64,
        "the matching fingerprint made a full hash necessary: {reads:?}"
    );
}

/// A file of up to 256 KiB is read once, by one blocking task that checks,
/// reads and hashes it, and is sent with its stamp ahead of it: even a
/// platform that drops the fields after the file keeps every stamp, and
/// nothing is hashed in full before the worker takes the file.
#[tokio::test]
async fn a_small_file_is_read_once_and_sent_with_its_stamp_ahead() {
    let env = TestEnv::dropping_trailing_fields().await;
    let sizes = [1_000usize, 70_000, 256 * 1024];
    let files: Vec<(PathBuf, String)> = sizes
        .iter()
        .zip(0u64..)
        .map(|(size, i)| {
            let p = env.inbox.join(format!("small{i}.mp4"));
            let sha = write_media(&p, Kind::Mp4, *size, 80 + i);
            (p, sha)
        })
        .collect();
    let paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let (ledger, reads) = run(&env, &paths).await;
    for (path, sha) in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
        let stamp = env.stamp_on_platform(rec.asset_id.as_deref());
        assert_eq!(stamp.as_deref(), Some(sha.as_str()), "{}", path.display());
    }
    let total: usize = sizes.iter().sum();
    assert_eq!(reads.sent, total as u64, "each file sent once: {reads:?}");
    assert!(
        reads.examined <= total as u64,
        "no more than a fingerprint of each read before sending: {reads:?}"
    );
}
