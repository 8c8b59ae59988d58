//! Server lies: answers that are not what the API promises — JSON cut off
//! half-way, a `201` without `_id`, an HTML page with `200 OK`, a status
//! nobody documented, an asset that is `ready` and then gone. Each ends in
//! a clear state or a retry, never a panic and never a second upload.
//!
//! Each runs the real binary (`upload`) against the emulator, so that a
//! panic anywhere would show in its output and its exit code.

use std::path::PathBuf;

use tl_ingest::emulator::{EmulatorConfig, Faults, Stats};
use tl_ingest::ledger::Ledger;

use super::{assert_no_panic, figures};
use crate::helpers::{KEY, Kind, TestEnv, dump, output, record_of, text, write_media};

const FILES: usize = 8;

/// `FILES` small media files in the inbox.
fn some_files(env: &TestEnv, prefix: &str) -> Vec<(PathBuf, String)> {
    (0..FILES)
        .map(|i| {
            let p = env.inbox.join(format!("{prefix}{i}.mp4"));
            let sha = write_media(&p, Kind::Mp4, 3_000 + i * 101, 40_000 + i as u64);
            (p, sha)
        })
        .collect()
}

/// Upload the inbox with the binary under `faults`; expect exit 0, no
/// panic, every file ready and uploaded exactly once. Returns the stats,
/// the attempts' outcomes and errors, and the ledger.
async fn upload_through(
    scenario: &str,
    faults: Faults,
) -> (TestEnv, Vec<(PathBuf, String)>, Stats, Vec<String>, Ledger) {
    upload_through_emulator(scenario, EmulatorConfig::default(), faults).await
}

/// [`upload_through`] an emulator set up by the test.
async fn upload_through_emulator(
    scenario: &str,
    emulator: EmulatorConfig,
    faults: Faults,
) -> (TestEnv, Vec<(PathBuf, String)>, Stats, Vec<String>, Ledger) {
    let env = TestEnv::with(emulator, faults).await;
    let files = some_files(&env, scenario);
    let out = env.upload_bin(&[&env.inbox]).await;
    assert_no_panic("upload", &text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let stats = env.emulator.stats();
    let mut seen = Vec::new();
    for (path, sha) in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert_eq!(
            stats.uploads_by_sha256.get(sha),
            Some(&1),
            "uploaded exactly once: {}",
            path.display()
        );
        for a in ledger.attempts(rec.id).await.expect("attempts") {
            seen.push(format!(
                "{}: {}",
                a.outcome.unwrap_or_default(),
                a.error.unwrap_or_default()
            ));
        }
        if let Some(e) = rec.last_error {
            seen.push(format!("last_error: {e}"));
        }
    }
    (env, files, stats, seen, ledger)
}

fn count(seen: &[String], prefix: &str) -> usize {
    seen.iter().filter(|s| s.starts_with(prefix)).count()
}

#[tokio::test]
async fn json_cut_off_half_way_is_retried_and_looked_up_never_sent_twice() {
    let (_env, _files, stats, seen, _ledger) = upload_through(
        "cut",
        Faults {
            malformed_json: 0.3,
            seed: Some(11),
            ..Faults::default()
        },
    )
    .await;
    assert!(stats.injected_malformed_json > 0, "{stats:?}");
    figures(
        "server_lies.malformed_json",
        &[
            ("files", FILES.to_string()),
            ("lies", stats.injected_malformed_json.to_string()),
            ("ready", FILES.to_string()),
            ("assets_created", stats.assets_created.to_string()),
        ],
    );
    assert_eq!(stats.assets_created, FILES as u64, "{seen:?}");
}

#[tokio::test]
async fn a_201_without_an_id_is_found_by_its_stamp_instead_of_sent_again() {
    let (_env, _files, stats, seen, _ledger) = upload_through(
        "noid",
        Faults {
            missing_id: 1.0,
            ..Faults::default()
        },
    )
    .await;
    // Every upload's answer lacked its id: each was then found on the
    // platform by filename and sha256 stamp.
    assert_eq!(stats.injected_missing_ids, FILES as u64, "{stats:?}");
    assert_eq!(count(&seen, "found"), FILES, "{seen:?}");
    assert!(
        seen.iter()
            .any(|s| s.starts_with("transient") && s.contains("no asset _id")),
        "the attempt says why: {seen:?}"
    );
    figures(
        "server_lies.missing_id",
        &[
            ("files", FILES.to_string()),
            ("lies", stats.injected_missing_ids.to_string()),
            ("found_by_stamp", count(&seen, "found").to_string()),
            ("assets_created", stats.assets_created.to_string()),
        ],
    );
    assert_eq!(stats.assets_created, FILES as u64);
}

#[tokio::test]
async fn an_html_page_with_200_is_not_taken_for_an_answer() {
    let (_env, _files, stats, seen, _ledger) = upload_through(
        "html",
        Faults {
            html_200: 0.3,
            seed: Some(12),
            ..Faults::default()
        },
    )
    .await;
    assert!(stats.injected_html_200 > 0, "{stats:?}");
    figures(
        "server_lies.html_200",
        &[
            ("files", FILES.to_string()),
            ("lies", stats.injected_html_200.to_string()),
            ("ready", FILES.to_string()),
            ("assets_created", stats.assets_created.to_string()),
        ],
    );
    assert_eq!(stats.assets_created, FILES as u64, "{seen:?}");
    // An upload answered with the page is on record as such.
    assert!(
        seen.iter()
            .any(|s| s.starts_with("transient") && s.contains("200") && s.contains("an HTML page")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_undocumented_status_is_waited_out_never_failed() {
    // The lie is in answers about assets, and the poller asks about 50 at
    // once: assets that take a while to be ready are asked about in several
    // rounds, so that some answers lie whatever order the requests come in.
    let emulator = EmulatorConfig {
        ready_delay: std::time::Duration::from_millis(300),
        ..EmulatorConfig::default()
    };
    let (_env, _files, stats, seen, _ledger) = upload_through_emulator(
        "odd",
        emulator,
        Faults {
            unknown_status: 0.6,
            seed: Some(13),
            ..Faults::default()
        },
    )
    .await;
    assert!(stats.injected_unknown_status > 0, "{stats:?}");
    assert_eq!(count(&seen, "permanent"), 0, "{seen:?}");
    figures(
        "server_lies.unknown_status",
        &[
            ("files", FILES.to_string()),
            ("lies", stats.injected_unknown_status.to_string()),
            ("ready", FILES.to_string()),
            ("failed", "0".into()),
        ],
    );
}

#[tokio::test]
async fn a_ready_asset_that_later_404s_is_reported_by_reconcile_and_sent_again() {
    let (env, files, stats, _seen, ledger) = upload_through(
        "gone",
        Faults {
            vanish_after_ready: 1.0,
            ..Faults::default()
        },
    )
    .await;
    ledger.close().await;
    assert_eq!(stats.vanished_assets, FILES as u64, "{stats:?}");
    env.emulator.set_faults(Faults::default());

    // reconcile: every one of them reported lost, exit 1, no panic.
    let mut cmd = env.cmd(KEY);
    cmd.args(["reconcile", "--no-orphans"]);
    let out = output(cmd).await;
    assert_no_panic("reconcile", &text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lost_lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("lost"))
        .count();
    assert_eq!(lost_lines, FILES, "{}", text(&out));

    // --requeue, and the next upload sends each once more, to an asset that stays.
    let mut cmd = env.cmd(KEY);
    cmd.args(["reconcile", "--no-orphans", "--requeue"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = env.upload_bin(&[&env.inbox]).await;
    assert_no_panic("upload", &text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let held: Vec<String> = env.emulator.assets().into_iter().map(|a| a.id).collect();
    for (path, _) in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert!(held.contains(rec.asset_id.as_ref().expect("asset id")));
    }
    let mut cmd = env.cmd(KEY);
    cmd.args(["reconcile", "--no-orphans"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "all match now: {}", text(&out));
    figures(
        "server_lies.vanish_after_ready",
        &[
            ("files", FILES.to_string()),
            ("vanished", stats.vanished_assets.to_string()),
            ("reported_lost", lost_lines.to_string()),
            ("ready_after_requeue", FILES.to_string()),
        ],
    );
}
