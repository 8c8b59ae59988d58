//! URL crash loop: URLs queued from a `.urls` file in a watched folder,
//! the emulator answering each request 400 ms after it has made the asset
//! (a slow network on the way back), and the daemon (the real binary)
//! SIGKILLed at random moments and started again; then left to finish.
//! Every URL must end `ready` once with exactly one asset on the platform:
//! a URL record carries a stamp of its own, and an upload a kill cut off
//! is looked up by it before the URL is sent again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tl_ingest::emulator::{EmulatorConfig, Faults};
use tl_ingest::ledger::{FileState, Ledger, Location};

use super::{assert_no_panic, figures, scaled, spawn_daemon, terminate};
use crate::helpers::{DEADLINE, TestEnv, dump, wait_until};

/// The seed of the kill moments.
const SEED: u64 = 0x00c7_a518;

/// Records a kill left `uploading`.
async fn uploading_at_kill(ledger: &Location) -> usize {
    let Ok(ledger) = Ledger::open_existing_at(ledger).await else {
        return 0;
    };
    let n = ledger
        .counts()
        .await
        .expect("counts")
        .into_iter()
        .filter(|(s, _)| *s == FileState::Uploading)
        .map(|(_, n)| usize::try_from(n).expect("count"))
        .sum();
    ledger.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_crash_loop_every_url_ends_ready_once_with_one_asset() {
    let n_urls = scaled(60, 300);
    let n_kills = scaled(8, 30);
    let env = TestEnv::with(
        EmulatorConfig::default(),
        Faults {
            answer_delay_ms: 400,
            ..Faults::default()
        },
    )
    .await;
    let extra = format!(
        "[watcher]\nsettle = \"100ms\"\nrescan_interval = \"1h\"\n[[watch]]\npath = {:?}\n",
        env.inbox.display().to_string()
    );
    let config = env.write_daemon_config(&extra);
    let log = env.dir.path().join("daemon.log");
    let urls: Vec<String> = (0..n_urls)
        .map(|i| format!("https://media.example.com/cam{}/clip{i:04}.mp4", i % 4))
        .collect();
    std::fs::write(
        env.inbox.join("cameras.urls"),
        format!("# cameras\n{}\n", urls.join("\n")),
    )
    .expect("write the list");

    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut kills = Vec::new();
    for _ in 0..n_kills {
        let mut child = spawn_daemon(&env, &config, &log);
        // The random moment is the scenario, not a wait for the daemon (see
        // crash_loop.rs): until then the daemon must keep running.
        let moment = Duration::from_millis(rng.u64(300..2500));
        let exited = tokio::time::timeout(moment, async {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                if let Some(status) = child.try_wait().expect("try_wait") {
                    return status;
                }
            }
        })
        .await;
        if let Ok(status) = exited {
            panic!(
                "the daemon exited by itself ({status}); log: {}",
                log.display()
            );
        }
        child.kill().expect("SIGKILL");
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("reap");
        kills.push(uploading_at_kill(&env.ledger).await);
    }
    let kill_phase = started.elapsed();

    // Once more, to the end. A run killed early (a loaded machine) may not
    // have logged its start: count the starts logged before this one.
    let starts_before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("tl-ingest is running")
        .count();
    let child = spawn_daemon(&env, &config, &log);
    wait_until(DEADLINE, "every URL ready", || async {
        let Ok(ledger) = Ledger::open_existing_at(&env.ledger).await else {
            return false;
        };
        let ready = ledger
            .counts()
            .await
            .map(|c| {
                c.iter()
                    .any(|(s, n)| *s == FileState::Ready && *n == i64::try_from(n_urls).expect("n"))
            })
            .unwrap_or(false);
        ledger.close().await;
        ready
    })
    .await;
    // Every URL may have been ready before this run began: the SIGTERM
    // must find the daemon started, with its signal handlers.
    wait_until(DEADLINE, "the last run started", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.matches("tl-ingest is running").count() > starts_before
    })
    .await;
    let code = terminate(child, Duration::from_secs(30)).await;
    let total = started.elapsed();
    let log_text = std::fs::read_to_string(&log).expect("read daemon log");
    assert_eq!(code, Some(0), "the last run stops cleanly:\n{log_text}");
    assert_no_panic("the daemon", &log_text);

    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let records = ledger.history(&[], None).await.expect("history");
    let stats = env.emulator.stats();
    let mut assets_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in env.emulator.assets() {
        assets_of
            .entry(a.url.clone().unwrap_or_default())
            .or_default()
            .push(a.id);
    }
    let (mut found, mut interrupted, mut attempts) = (0, 0, 0);
    for rec in &records {
        for a in ledger.attempts(rec.id).await.expect("attempts") {
            attempts += 1;
            match a.outcome.as_deref() {
                Some("found") => found += 1,
                Some("interrupted") => interrupted += 1,
                _ => {}
            }
        }
    }
    let duplicates: usize = assets_of.values().map(|ids| ids.len() - 1).sum();
    figures(
        "url_crash_loop",
        &[
            ("urls", n_urls.to_string()),
            ("kills", n_kills.to_string()),
            (
                "kills_with_uploads_in_flight",
                kills.iter().filter(|n| **n > 0).count().to_string(),
            ),
            (
                "records_left_uploading",
                kills.iter().sum::<usize>().to_string(),
            ),
            ("attempts_interrupted", interrupted.to_string()),
            ("found_on_platform_not_resent", found.to_string()),
            ("attempts", attempts.to_string()),
            ("create_requests", stats.create_requests.to_string()),
            ("assets_created", stats.assets_created.to_string()),
            ("duplicate_assets", duplicates.to_string()),
            ("kill_phase_s", format!("{:.1}", kill_phase.as_secs_f64())),
            ("total_s", format!("{:.1}", total.as_secs_f64())),
        ],
    );
    for url in &urls {
        let of_url: Vec<_> = records
            .iter()
            .filter(|r| r.url.as_deref() == Some(url.as_str()))
            .collect();
        assert_eq!(
            of_url.iter().map(|r| r.state.as_str()).collect::<Vec<_>>(),
            ["ready"],
            "exactly one record, ready, for {url}:\n{}",
            dump(&ledger).await
        );
        let on_platform = assets_of.get(url).cloned().unwrap_or_default();
        assert_eq!(
            on_platform.len(),
            1,
            "exactly one asset on the platform for {url}: {on_platform:?}"
        );
        assert_eq!(
            of_url[0].asset_id.as_deref(),
            Some(on_platform[0].as_str()),
            "the record names that asset: {url}"
        );
    }
    assert_eq!(records.len(), n_urls, "one record per URL");
    assert_eq!(duplicates, 0, "no URL uploaded twice: {assets_of:?}");
    assert!(
        kills.iter().any(|n| *n > 0),
        "at least one kill caught an upload in flight: {kills:?}"
    );
    ledger.close().await;
}
