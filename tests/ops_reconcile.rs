//! `reconcile`: the ledger against the platform.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tl_ingest::api::{ApiClient, ClientOptions, DirectUpload, Stamp};
use tl_ingest::ledger::Ledger;
use tl_ingest::secret::ApiKey;

use crate::helpers::{KEY, Kind, TestEnv, output, record_of, text, write_media};

fn client(env: &TestEnv) -> ApiClient {
    ApiClient::new(
        &ClientOptions {
            base_url: env.emulator.base_url(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        },
        &ApiKey::new(KEY).expect("key"),
    )
    .expect("client")
}

#[tokio::test]
async fn lost_assets_are_reported_and_requeued_and_orphans_listed() {
    let env = TestEnv::new().await;
    let files: Vec<_> = (0..3u64)
        .map(|i| {
            let p = env.inbox.join(format!("r{i}.mp4"));
            let sha = write_media(
                &p,
                Kind::Mp4,
                4000 + usize::try_from(i).expect("small"),
                300 + i,
            );
            (p, sha)
        })
        .collect();
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;
    let lost = record_of(&ledger, &files[0].0).await;
    ledger.close().await;

    // The platform loses one asset, and holds one the ledger never heard of.
    let api = client(&env);
    api.delete_asset(lost.asset_id.as_deref().expect("asset"))
        .await
        .expect("delete");
    let stray = env.dir.path().join("stray.mp4");
    let stray_sha = write_media(&stray, Kind::Mp4, 3000, 999);
    // Stamped the way the pipeline does when it hashes during the upload.
    let created = api
        .create_direct(&DirectUpload {
            path: stray.clone(),
            filename: "stray.mp4".into(),
            size: 3000,
            enable_hls: false,
            enable_thumbnail: false,
            user_metadata: serde_json::Map::new(),
            stamp: Stamp::in_flight(),
            content: None,
            sent: Arc::new(AtomicU64::new(0)),
        })
        .await
        .expect("orphan upload");
    assert_eq!(created.sha256, stray_sha, "the stamp is the file's sha256");
    let orphan = created.asset.id.expect("id");

    let mut cmd = env.cmd(KEY);
    cmd.arg("reconcile");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("lost") && stdout.contains("r0.mp4"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains(&format!("orphan   {orphan}")),
        "{}",
        text(&out)
    );
    assert!(
        !stdout.contains("r1.mp4") && !stdout.contains("r2.mp4"),
        "{}",
        text(&out)
    );

    let mut cmd = env.cmd(KEY);
    cmd.args(["reconcile", "--requeue", "--no-orphans"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    assert_eq!(record_of(&ledger, &files[0].0).await.state, "queued");
    ledger.close().await;

    let out = env.upload_bin(&[&env.inbox]).await;
    assert!(out.status.success(), "{}", text(&out));
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    assert_eq!(record_of(&ledger, &files[0].0).await.state, "ready");
    assert_eq!(
        env.emulator.stats().uploads_by_sha256.get(&files[0].1),
        Some(&2)
    );

    // All in order now but the orphan.
    let mut cmd = env.cmd(KEY);
    cmd.args(["reconcile", "--no-orphans"]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn an_unreadable_asset_is_reported_and_the_check_goes_on() {
    let env = TestEnv::new().await;
    // An orphan first: the oldest asset, so the last entry of the newest-first page.
    let api = client(&env);
    let stray = env.dir.path().join("stray.mp4");
    write_media(&stray, Kind::Mp4, 3000, 998);
    let created = api
        .create_direct(&DirectUpload {
            path: stray.clone(),
            filename: "stray.mp4".into(),
            size: 3000,
            enable_hls: false,
            enable_thumbnail: false,
            user_metadata: serde_json::Map::new(),
            stamp: Stamp::in_flight(),
            content: None,
            sent: Arc::new(AtomicU64::new(0)),
        })
        .await
        .expect("orphan upload");
    let orphan = created.asset.id.expect("id");
    for i in 0..2u64 {
        write_media(
            &env.inbox.join(format!("u{i}.mp4")),
            Kind::Mp4,
            4000,
            500 + i,
        );
    }
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&env.inbox))
        .await;
    ledger.close().await;

    // Every asset answer (and the first entry of every page) has a field of
    // the wrong type.
    env.emulator.set_faults(tl_ingest::emulator::Faults {
        unreadable_asset: 1.0,
        ..tl_ingest::emulator::Faults::default()
    });
    let mut cmd = env.cmd(KEY);
    cmd.arg("reconcile");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let unreadable = stdout
        .lines()
        .filter(|l| l.starts_with("unreadable"))
        .count();
    assert_eq!(unreadable, 3, "two records and one page entry: {stdout}");
    assert!(stdout.contains("cannot be used"), "says why: {stdout}");
    assert!(
        stdout.contains(&format!("orphan   {orphan}")),
        "the page was read past its unreadable entry: {stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 finished record(s) checked"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("panicked"));
}

/// A URL asset the ledger does not know (a second upload of a URL record,
/// say) is listed as an orphan by the URL stamp it carries, naming the
/// record whose stamp it is.
#[tokio::test]
async fn orphaned_url_assets_are_found_by_their_stamp() {
    let env = TestEnv::new().await;
    let ledger = Ledger::open_at(&env.ledger).await.expect("ledger");
    let url = "https://media.example.com/cam/clip.mp4";
    let (id, _) = ledger.add_url(url, None, None, None).await.expect("add");
    ledger.close().await;
    let ledger = env.run_pipeline(env.config(), &[]).await;
    let rec = ledger.record(id).await.expect("q").expect("record");
    assert_eq!(rec.state, "ready");
    ledger.close().await;
    let api = client(&env);
    let sent = env.emulator.assets();
    assert_eq!(sent.len(), 1);
    let stamp = sent[0]
        .user_metadata
        .as_ref()
        .and_then(|m| m.get(tl_ingest::api::URL_STAMP))
        .and_then(|s| s.as_str())
        .expect("the upload carries the record's stamp")
        .to_owned();

    // All in order.
    let mut cmd = env.cmd(KEY);
    cmd.arg("reconcile");
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));

    // The same URL sent again with the same stamp, unrecorded.
    let mut meta = serde_json::Map::new();
    meta.insert(tl_ingest::api::URL_STAMP.into(), stamp.clone().into());
    let second = api
        .create_url(url, Some("clip.mp4"), false, false, &meta)
        .await
        .expect("create")
        .id
        .expect("id");
    let mut cmd = env.cmd(KEY);
    cmd.arg("reconcile");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("orphan   {second}")))
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert!(
        line.contains(&format!(
            "url stamp {stamp} (a second asset of #{id}, {url})"
        )),
        "{line}"
    );
}
