//! The shared ledger's fleet operations, one step at a time, with several
//! handles on one PostgreSQL database standing for daemons on different
//! hosts: claims, leases, takeover, fencing, pacing (fencing also on
//! SQLite, where a reload takes records back). The PostgreSQL tests run when
//! `TL_INGEST_TEST_POSTGRES_URL` is set; skipped with a message otherwise.

use std::collections::BTreeSet;
use std::time::Duration;

use tl_ingest::ledger::{
    AttemptEnd, Dedupe, Discovery, FileState, Ledger, LedgerError, Location, NewFile, Origin,
};

use crate::helpers::pg;

const ROOT: &str = "/share/in";

/// Two daemons on two hosts watching the same shared folder.
async fn two_hosts(lease_ms: i64) -> (Ledger, Ledger) {
    let url = pg::fresh_database().await;
    let location = Location::Postgres(url);
    let a = Ledger::open_at(&location).await.expect("open a");
    let b = Ledger::open_at(&location).await.expect("open b");
    a.join("host-a", &[ROOT.into()], lease_ms)
        .await
        .expect("join a");
    b.join("host-b", &[ROOT.into()], lease_ms)
        .await
        .expect("join b");
    (a, b)
}

fn file(i: u64) -> NewFile {
    let path = format!("{ROOT}/clip{i}.mp4");
    NewFile {
        path_bytes: path.as_bytes().to_vec(),
        path,
        size: 1_000 + i,
        mtime_ns: 1,
        device: 7,
        inode: i,
        user_metadata: None,
        origin: Some(Origin {
            root: ROOT.into(),
            ..Origin::default()
        }),
    }
}

/// Discover and hash `n` files through `ledger`: `n` queued records.
async fn queue(ledger: &Ledger, n: u64) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let Discovery::New(id) = ledger.discover(&file(i)).await.expect("discover") else {
            panic!("a new record");
        };
        ids.push(id);
    }
    let jobs = ledger.to_hash(1000).await.expect("to_hash");
    assert_eq!(
        jobs.len(),
        ids.len(),
        "the discovering host hashes its files"
    );
    for job in jobs {
        ledger
            .record_hash(
                &job,
                &format!("{:064x}", job.id),
                Some("video/mp4"),
                Dedupe::Content,
            )
            .await
            .expect("hash");
    }
    ids
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

/// Ask `ledger` to take over expired claims until it takes one (within
/// 10 s); how long that took.
async fn take_over_one(ledger: &Ledger) -> Duration {
    let start = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if ledger.take_over_expired().await.expect("take over") == 1 {
                return start.elapsed();
            }
        }
    })
    .await
    .expect("the expired claim is taken over")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_from_two_hosts_take_each_record_once() {
    if pg::server_url().is_none() {
        return pg::skipped("fleet_ledger::claims_from_two_hosts_take_each_record_once");
    }
    let (a, b) = two_hosts(30_000).await;
    let ids = queue(&a, 40).await;
    let claim_all = |l: Ledger| async move {
        let mut got = Vec::new();
        while let Some(job) = l.claim(30_000).await.expect("claim") {
            got.push(job.id);
        }
        got
    };
    let (ga, gb) = tokio::join!(
        tokio::spawn(claim_all(a.clone())),
        tokio::spawn(claim_all(b.clone()))
    );
    let (ga, gb) = (ga.expect("a"), gb.expect("b"));
    let all: BTreeSet<i64> = ga.iter().chain(&gb).copied().collect();
    assert_eq!(ga.len() + gb.len(), ids.len(), "no record claimed twice");
    assert_eq!(all, ids.iter().copied().collect::<BTreeSet<_>>());
    let ds = a.daemons(0).await.expect("daemons");
    let in_flight: i64 = ds.iter().map(|d| d.in_flight).sum();
    assert_eq!(
        in_flight, 40,
        "every claim is recorded with its daemon: {ds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_lease_ran_out_is_taken_over_and_its_old_owner_is_fenced_off() {
    if pg::server_url().is_none() {
        return pg::skipped(
            "fleet_ledger::a_claim_whose_lease_ran_out_is_taken_over_and_its_old_owner_is_fenced_off",
        );
    }
    const LEASE_MS: i64 = 1000;
    let (a, b) = two_hosts(LEASE_MS).await;
    let ids = queue(&a, 1).await;
    let job = a.claim(LEASE_MS).await.expect("claim").expect("due");
    assert_eq!(
        b.take_over_expired().await.expect("reap"),
        0,
        "a live lease stays"
    );
    // A renews once, then stops (it died, or lost the database).
    let held = a
        .heartbeat(LEASE_MS, &[job.id])
        .await
        .expect("beat")
        .expect("leases");
    assert_eq!(held, vec![job.id]);
    let after = take_over_one(&b).await;
    assert!(
        after >= Duration::from_millis(900),
        "taken over {after:?} after the last renewal, before the lease ran out"
    );
    assert_eq!(state(&b, ids[0]).await, FileState::Queued);
    let end = AttemptEnd {
        outcome: "accepted",
        http_status: Some(201),
        ..AttemptEnd::default()
    };
    // A's late answer cannot land: the record is no longer its.
    let late = a.accept(&job, "asset-from-a", &end).await;
    assert!(
        matches!(late, Err(LedgerError::Conflict { .. })),
        "{late:?}"
    );
    // B claims it after the lookup delay, marked to be looked up first.
    let attempts = b.attempts(ids[0]).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("interrupted"));
    assert!(
        attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("taken over"))
    );
    let heir = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if let Some(job) = b.claim(30_000).await.expect("claim") {
                return job;
            }
        }
    })
    .await
    .expect("B claims the record once it is due");
    assert_eq!(heir.id, job.id);
    assert!(
        heir.lookup_first,
        "looked up on the platform before it is sent again"
    );
    b.accept(&heir, "asset-from-b", &end)
        .await
        .expect("B's answer lands");
    // A's heartbeat no longer lists it: its worker would stop.
    let held = a
        .heartbeat(LEASE_MS, &[job.id])
        .await
        .expect("beat")
        .expect("leases");
    assert!(held.is_empty(), "{held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_does_not_take_files_from_folders_it_does_not_watch() {
    if pg::server_url().is_none() {
        return pg::skipped(
            "fleet_ledger::a_host_does_not_take_files_from_folders_it_does_not_watch",
        );
    }
    let url = pg::fresh_database().await;
    let location = Location::Postgres(url);
    let a = Ledger::open_at(&location).await.expect("open a");
    let c = Ledger::open_at(&location).await.expect("open c");
    a.join("host-a", &[ROOT.into()], 30_000)
        .await
        .expect("join a");
    c.join("host-c", &["/elsewhere".into()], 30_000)
        .await
        .expect("join c");
    let Discovery::New(id) = a.discover(&file(1)).await.expect("discover") else {
        panic!("new");
    };
    assert!(
        c.to_hash(10).await.expect("to_hash").is_empty(),
        "c cannot read it"
    );
    let jobs = a.to_hash(10).await.expect("to_hash");
    assert_eq!(jobs.len(), 1);
    a.record_hash(
        &jobs[0],
        &"e".repeat(64),
        Some("video/mp4"),
        Dedupe::Content,
    )
    .await
    .expect("hash");
    assert!(
        c.claim(30_000).await.expect("claim").is_none(),
        "nor send it"
    );
    assert_eq!(
        a.claim(30_000).await.expect("claim").map(|j| j.id),
        Some(id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_slots_are_spaced_for_the_fleet_and_a_pause_holds_them_back() {
    if pg::server_url().is_none() {
        return pg::skipped(
            "fleet_ledger::request_slots_are_spaced_for_the_fleet_and_a_pause_holds_them_back",
        );
    }
    let (a, b) = two_hosts(30_000).await;
    // Alternating hosts, back to back: each slot 1 s after the last.
    let mut waits = Vec::new();
    for l in [&a, &b, &a, &b] {
        waits.push(l.reserve_request(1_000).await.expect("slot"));
    }
    for (i, w) in waits.iter().enumerate() {
        let expect = 1_000 * i64::try_from(i).expect("small");
        assert!(
            (expect - 100..=expect).contains(w),
            "slot {i}: wait {w} ms, not ~{expect}"
        );
    }
    assert_eq!(b.fleet_pause_left().await.expect("pause"), 0);
    a.pause_fleet(5_000).await.expect("429 on a");
    let left = b.fleet_pause_left().await.expect("pause");
    assert!(
        (4_000..=5_000).contains(&left),
        "b sees a's pause: {left} ms"
    );
    // The next slot comes after the pause, whatever the spacing said.
    let wait = b.reserve_request(10).await.expect("slot");
    assert!(wait >= left - 100, "a slot inside the pause: {wait} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_renews_only_the_uploads_its_workers_still_hold() {
    if pg::server_url().is_none() {
        return pg::skipped(
            "fleet_ledger::a_heartbeat_renews_only_the_uploads_its_workers_still_hold",
        );
    }
    const LEASE_MS: i64 = 1000;
    let (a, b) = two_hosts(LEASE_MS).await;
    let ids = queue(&a, 2).await;
    let kept = a.claim(LEASE_MS).await.expect("claim").expect("due");
    let dropped = a.claim(LEASE_MS).await.expect("claim").expect("due");
    assert_eq!(
        BTreeSet::from([kept.id, dropped.id]),
        ids.iter().copied().collect()
    );
    // A's workers still send `kept`; `dropped` was given up (A could not
    // tell the ledger at the time). A keeps beating.
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let beating = {
        let (a, answers) = (a.clone(), answers.clone());
        let kept = kept.id;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let held = a
                    .heartbeat(LEASE_MS, &[kept])
                    .await
                    .map_err(|e| e.to_string());
                answers.lock().expect("lock").push(held);
            }
        })
    };
    take_over_one(&b).await;
    beating.abort();
    assert_eq!(
        state(&b, dropped.id).await,
        FileState::Queued,
        "given up: taken over"
    );
    assert_eq!(
        state(&b, kept.id).await,
        FileState::Uploading,
        "still sent: kept"
    );
    let answers = answers.lock().expect("lock").clone();
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|held| held == &Ok(Some(vec![kept.id]))),
        "every beat renewed the kept upload alone: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_of_a_daemon_that_is_gone_passes_to_exactly_one_other() {
    if pg::server_url().is_none() {
        return pg::skipped(
            "fleet_ledger::the_work_of_a_daemon_that_is_gone_passes_to_exactly_one_other",
        );
    }
    let (a, b) = two_hosts(30_000).await;
    let location = a.location().clone();
    let c = Ledger::open_at(&location).await.expect("open c");
    c.join("host-c", &[ROOT.into()], 30_000)
        .await
        .expect("join c");
    let ids = queue(&a, 1).await;
    let job = a.claim(30_000).await.expect("claim").expect("due");
    let end = AttemptEnd {
        outcome: "accepted",
        http_status: Some(201),
        ..AttemptEnd::default()
    };
    a.accept(&job, "asset-1", &end).await.expect("accept");
    let polls = |l: &Ledger| {
        let l = l.clone();
        async move {
            l.processing(10, i64::MAX)
                .await
                .expect("processing")
                .into_iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        }
    };
    // While A lives, only A asks about its asset.
    assert_eq!(polls(&a).await, ids);
    assert_eq!(b.adopt_orphans().await.expect("adopt"), 0);
    assert!(polls(&b).await.is_empty() && polls(&c).await.is_empty());
    // A stops: one of the others takes it on, and only that one.
    a.leave().await.expect("leave");
    let (nb, nc) = tokio::join!(b.adopt_orphans(), c.adopt_orphans());
    let (nb, nc) = (nb.expect("adopt b"), nc.expect("adopt c"));
    assert_eq!(nb + nc, 1, "adopted once: b {nb}, c {nc}");
    let (pb, pc) = (polls(&b).await, polls(&c).await);
    assert_eq!(pb.len() + pc.len(), 1, "one follower: b {pb:?}, c {pc:?}");
    assert_eq!(b.adopt_orphans().await.expect("again"), 0);
    assert_eq!(c.adopt_orphans().await.expect("again"), 0);
}

/// A host that cannot see a file another host found (its mount of the
/// share is down) does not fail it: it hands it back, and the host that
/// found it takes it when it is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_one_host_cannot_see_is_handed_back_not_failed() {
    if pg::server_url().is_none() {
        return pg::skipped("fleet_ledger::a_file_one_host_cannot_see_is_handed_back_not_failed");
    }
    let (a, b) = two_hosts(30_000).await;
    let Discovery::New(id) = a.discover(&file(1)).await.expect("discover") else {
        panic!("new");
    };
    // b gets to it first (it watches the share too).
    let jobs = b.to_hash(10).await.expect("to_hash");
    assert_eq!(jobs.len(), 1);
    assert!(
        b.found_elsewhere(jobs[0].origin_host.as_deref()),
        "{:?}",
        jobs[0]
    );
    assert!(!a.found_elsewhere(jobs[0].origin_host.as_deref()));
    // What b's hash stage does when it cannot see the file.
    b.examine_later(
        &jobs[0],
        0,
        "cannot read the file now: this host does not see it",
    )
    .await
    .expect("hand back");
    assert_eq!(state(&a, id).await, FileState::Discovered);
    let mine = a.to_hash(10).await.expect("to_hash");
    assert_eq!(
        mine.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![id],
        "a takes it"
    );
}

/// A daemon takes back its own record while the worker that first claimed
/// it still runs (that worker outlived its lease; on SQLite, a reload's
/// recovery): the first worker's late writes (its answer, a chunk ETag, a
/// new session) are refused, the second claim finds the asset the first
/// one made by the URL's stamp, and the platform holds one asset.
async fn taking_back_its_own_claim_fences_off_the_first_worker(location: &Location) {
    const LEASE_MS: i64 = 1000;
    let env = crate::helpers::TestEnv::new().await;
    let client = tl_ingest::api::ApiClient::new(
        &tl_ingest::api::ClientOptions {
            base_url: env.emulator.base_url(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        },
        &tl_ingest::secret::ApiKey::new(crate::helpers::KEY).expect("key"),
    )
    .expect("client");
    let a = Ledger::open_at(location).await.expect("open");
    a.join("host-a", &[ROOT.into()], LEASE_MS)
        .await
        .expect("join");
    let url = "https://media.example.com/a/clip.mp4";
    let (id, _) = a.add_url(url, None, None, None).await.expect("add");
    let first = a.claim(LEASE_MS).await.expect("claim").expect("due");
    let stamp = first.stamp.clone().expect("a URL record has its stamp");
    // The first worker's request: the platform makes the asset, and the
    // answer comes back too late.
    let mut meta = serde_json::Map::new();
    meta.insert(tl_ingest::api::URL_STAMP.into(), stamp.clone().into());
    let made = client
        .create_url(url, Some("clip.mp4"), false, false, &meta)
        .await
        .expect("create")
        .id
        .expect("asset id");

    // The same daemon takes the record back and claims it again.
    if matches!(location, Location::Postgres(_)) {
        take_over_one(&a).await;
    } else {
        assert_eq!(a.recover().await.expect("recover"), 1);
    }
    let second = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if let Some(job) = a.claim(30_000).await.expect("claim") {
                return job;
            }
        }
    })
    .await
    .expect("claimed again once due");
    assert_eq!(second.id, id);
    assert!(second.epoch > first.epoch, "a new token per claim");
    assert!(second.lookup_first);
    assert_eq!(second.stamp.as_deref(), Some(stamp.as_str()));

    // The first worker's late writes are refused.
    let end = AttemptEnd {
        outcome: "accepted",
        http_status: Some(201),
        ..AttemptEnd::default()
    };
    let late = a.accept(&first, &made, &end).await;
    assert!(
        matches!(late, Err(LedgerError::Conflict { .. })),
        "{late:?}"
    );
    let late = a.retry_later(&first, &end, 0, true, true).await;
    assert!(
        matches!(late, Err(LedgerError::Conflict { .. })),
        "{late:?}"
    );
    // Nothing of the refused writes stays: no attempt ends "accepted".
    let attempts = a.attempts(id).await.expect("attempts");
    assert!(
        attempts
            .iter()
            .all(|x| x.outcome.as_deref() != Some("accepted")),
        "{attempts:?}"
    );
    let session = tl_ingest::ledger::upload_sessions::Session {
        file_id: id,
        upload_id: "up-2".into(),
        asset_id: "asset-2".into(),
        chunk_size: 10,
        total_chunks: 2,
        expires_at: None,
        created_at: 0,
        upload_headers: None,
    };
    let late = a.save_session(&session, first.epoch).await;
    assert!(
        matches!(late, Err(LedgerError::Conflict { .. })),
        "{late:?}"
    );
    a.save_session(&session, second.epoch)
        .await
        .expect("the current attempt's session");
    let late = a.record_chunk(id, first.epoch, 1, "etag-stale", 10).await;
    assert!(
        matches!(late, Err(LedgerError::Conflict { .. })),
        "{late:?}"
    );
    a.record_chunk(id, second.epoch, 1, "etag-1", 10)
        .await
        .expect("the current attempt's chunk");
    let (_, chunks) = a.session(id).await.expect("session").expect("saved");
    assert_eq!(
        chunks.iter().map(|c| c.etag.as_str()).collect::<Vec<_>>(),
        ["etag-1"]
    );
    a.drop_session(id).await.expect("drop");

    // The second claim finds the asset by the stamp instead of sending it.
    let found = client
        .find_by_url_stamp(Some("clip.mp4"), &stamp)
        .await
        .expect("lookup")
        .expect("found by its stamp");
    assert_eq!(found.id.as_deref(), Some(made.as_str()));
    a.accept(&second, &made, &end)
        .await
        .expect("the current attempt's answer lands");
    let rec = a.record(id).await.expect("q").expect("record");
    assert_eq!(
        (rec.state.as_str(), rec.asset_id.as_deref()),
        ("processing", Some(made.as_str()))
    );
    assert_eq!(env.emulator.assets().len(), 1, "one asset on the platform");
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_back_its_own_claim_fences_off_the_first_worker_on_postgres() {
    if pg::server_url().is_none() {
        return pg::skipped(
            "fleet_ledger::taking_back_its_own_claim_fences_off_the_first_worker_on_postgres",
        );
    }
    let url = pg::fresh_database().await;
    taking_back_its_own_claim_fences_off_the_first_worker(&Location::Postgres(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_back_its_own_claim_fences_off_the_first_worker_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = Location::Sqlite(dir.path().join("ledger.db"));
    taking_back_its_own_claim_fences_off_the_first_worker(&location).await;
}
