//! Crash loop: the daemon (the real binary) SIGKILLed at random moments
//! and started again, over and over; then left to finish. Every file must
//! end `ready`, with exactly one `ready` record, its own bytes on the
//! platform, and no asset uploaded twice: a record a kill left `uploading`
//! is looked up on the platform before it is sent again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tl_ingest::emulator::{EmulatorConfig, Faults};
use tl_ingest::ledger::{FileState, Ledger, Location};

use super::{assert_no_panic, figures, scaled, spawn_daemon, terminate};
use crate::helpers::{Kind, TestEnv, dump, write_media};

/// The seed of the kill moments (and of the file contents).
const SEED: u64 = 0x7e1_1ab1e;

/// What the ledger held right after a kill.
#[derive(Debug, Default)]
struct AtKill {
    uploading: usize,
    processing: usize,
    finished: usize,
}

async fn snapshot(ledger: &Location) -> AtKill {
    let Ok(ledger) = Ledger::open_existing_at(ledger).await else {
        return AtKill::default();
    };
    let mut at = AtKill::default();
    for (state, n) in ledger.counts().await.expect("counts") {
        let n = usize::try_from(n).expect("count");
        match state {
            FileState::Uploading => at.uploading += n,
            FileState::Processing => at.processing += n,
            s if s.is_terminal() => at.finished += n,
            _ => {}
        }
    }
    ledger.close().await;
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_every_file_ends_ready_once_with_its_own_bytes() {
    let n_files = scaled(300, 1000);
    let n_kills = scaled(20, 60);
    // Every request takes a little while, so that kills find uploads in
    // flight; assets turn ready quickly.
    let env = TestEnv::with(
        EmulatorConfig::default(),
        Faults {
            latency_ms: 40,
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

    let mut files: BTreeMap<PathBuf, String> = BTreeMap::new();
    for i in 0..n_files {
        let path = env.inbox.join(format!("d{}/clip{i:04}.mp4", i % 10));
        let size = 2_000 + (i * 37) % 5_000;
        let seed = SEED + u64::try_from(i).expect("small");
        files.insert(path.clone(), write_media(&path, Kind::Mp4, size, seed));
    }
    let paths: Vec<PathBuf> = files.keys().cloned().collect();

    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut kills = Vec::new();
    for _ in 0..n_kills {
        let mut child = spawn_daemon(&env, &config, &log);
        // The random moment is the scenario, not a wait for the daemon:
        // anywhere from start-up (recovery, the first scan) to mid-upload.
        // Until then the daemon must keep running: wait for it to exit,
        // with the moment as the deadline, and kill it when that passes.
        let moment = Duration::from_millis(rng.u64(20..800));
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
        kills.push(snapshot(&env.ledger).await);
    }
    let kill_phase = started.elapsed();

    // Once more, to the end.
    let child = spawn_daemon(&env, &config, &log);
    env.wait_for_state(&paths, "ready").await;
    let code = terminate(child, Duration::from_secs(30)).await;
    let total = started.elapsed();
    let log_text = std::fs::read_to_string(&log).expect("read daemon log");
    assert_eq!(code, Some(0), "the last run stops cleanly:\n{log_text}");
    assert_no_panic("the daemon", &log_text);

    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let records = ledger.history(&[], None).await.expect("history");
    let stats = env.emulator.stats();
    let assets: BTreeMap<String, Option<String>> = env
        .emulator
        .assets()
        .into_iter()
        .map(|a| (a.id, a.sha256))
        .collect();
    let mut found_on_platform = 0;
    let mut interrupted = 0;
    let mut attempts = 0;
    for rec in &records {
        for a in ledger.attempts(rec.id).await.expect("attempts") {
            attempts += 1;
            match a.outcome.as_deref() {
                Some("found") => found_on_platform += 1,
                Some("interrupted") => interrupted += 1,
                _ => {}
            }
        }
    }
    for (path, sha) in &files {
        let abs = std::path::absolute(path).expect("absolute");
        let shown = abs.to_string_lossy();
        let of_path: Vec<_> = records
            .iter()
            .filter(|r| r.path.as_deref() == Some(&*shown))
            .collect();
        let ready: Vec<_> = of_path.iter().filter(|r| r.state == "ready").collect();
        assert_eq!(
            (of_path.len(), ready.len()),
            (1, 1),
            "exactly one record, ready, for {shown}:\n{}",
            dump(&ledger).await
        );
        let asset = ready[0].asset_id.as_deref().expect("asset id");
        assert_eq!(
            assets.get(asset),
            Some(&Some(sha.clone())),
            "the platform holds this file's bytes under its asset: {shown}"
        );
    }
    let duplicates: u64 = stats.uploads_by_sha256.values().map(|n| n - 1).sum();
    figures(
        "crash_loop",
        &[
            ("files", n_files.to_string()),
            ("kills", n_kills.to_string()),
            (
                "kills_with_uploads_in_flight",
                kills.iter().filter(|k| k.uploading > 0).count().to_string(),
            ),
            (
                "kills_before_any_finished",
                kills.iter().filter(|k| k.finished == 0).count().to_string(),
            ),
            (
                "kills_after_all_finished",
                kills
                    .iter()
                    .filter(|k| k.finished >= n_files)
                    .count()
                    .to_string(),
            ),
            (
                "records_left_uploading",
                kills.iter().map(|k| k.uploading).sum::<usize>().to_string(),
            ),
            (
                "records_left_processing",
                kills
                    .iter()
                    .map(|k| k.processing)
                    .sum::<usize>()
                    .to_string(),
            ),
            ("attempts_interrupted", interrupted.to_string()),
            (
                "found_on_platform_not_resent",
                found_on_platform.to_string(),
            ),
            ("attempts", attempts.to_string()),
            ("create_requests", stats.create_requests.to_string()),
            ("assets_created", stats.assets_created.to_string()),
            ("duplicate_uploads", duplicates.to_string()),
            ("kill_phase_s", format!("{:.1}", kill_phase.as_secs_f64())),
            ("total_s", format!("{:.1}", total.as_secs_f64())),
        ],
    );
    assert_eq!(
        records.len(),
        n_files,
        "one record per file, none lost or doubled"
    );
    assert_eq!(
        duplicates, 0,
        "nothing uploaded twice: {:?}",
        stats.uploads_by_sha256
    );
    assert_eq!(stats.assets_created, u64::try_from(n_files).expect("n"));
    assert!(
        kills.iter().any(|k| k.uploading > 0),
        "at least one kill caught an upload in flight: {kills:?}"
    );
}
