//! Fault storm: every kind of server trouble at once, at the rates of the
//! issue — 5xx before and after the body, 429 with `Retry-After`, resets
//! mid-body, latency — over the whole pipeline. Every file ends `ready`,
//! none is uploaded twice, none fails for good, the retries are on record,
//! and a 429 pauses the whole pool (the emulator counts requests that
//! arrived while one of its 429s still asked clients to wait).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tl_ingest::emulator::Faults;

use super::{figures, scaled};
use crate::helpers::{Kind, TestEnv, dump, record_of, write_media};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_storm_every_file_ready_once_and_429s_pause_the_whole_pool() {
    let n_files = scaled(60, 600);
    let faults = Faults {
        // 20 % 5xx: half before the body is read, half after it.
        error_before_body: 0.10,
        error_after_body: 0.10,
        rate_limit: 0.10,
        retry_after_secs: 1,
        reset_mid_body: 0.05,
        latency_ms: 10,
        seed: Some(0x5707_2026),
        ..Faults::default()
    };
    let env = TestEnv::with_faults(faults.clone()).await;
    let kinds = [Kind::Mp4, Kind::Wav, Kind::Png, Kind::Jpg, Kind::Mp3];
    let exts = ["mp4", "wav", "png", "jpg", "mp3"];
    let mut files: BTreeMap<PathBuf, String> = BTreeMap::new();
    for i in 0..n_files {
        let k = i % kinds.len();
        let path = env.inbox.join(format!("storm{i:04}.{}", exts[k]));
        // Large enough that a reset lands inside the body.
        let size = 20_000 + (i * 7_919) % 60_000;
        let sha = write_media(&path, kinds[k], size, 7_000 + i as u64);
        files.insert(path, sha);
    }
    let mut config = env.config();
    // At these rates an attempt fails about one time in three; 30 attempts
    // make a permanent failure (0.33^30) impossible in practice, so any
    // `failed` record is a bug, not bad luck.
    config.upload.max_attempts = 30;

    let started = Instant::now();
    // Each 429 pauses everything for a second: allow for them in soak runs.
    let deadline = Duration::from_secs(u64::try_from(scaled(90, 900)).expect("secs"));
    let ledger = env
        .run_pipeline_within(config, std::slice::from_ref(&env.inbox), |_| (), deadline)
        .await;
    let took = started.elapsed();

    let stats = env.emulator.stats();
    let mut outcomes = BTreeMap::<String, usize>::new();
    let mut retried_records = 0;
    for (path, sha) in &files {
        let rec = record_of(&ledger, path).await;
        assert_eq!(
            rec.state,
            "ready",
            "{}:\n{}",
            path.display(),
            dump(&ledger).await
        );
        assert_eq!(
            stats.uploads_by_sha256.get(sha),
            Some(&1),
            "uploaded exactly once: {}",
            path.display()
        );
        let attempts = ledger.attempts(rec.id).await.expect("attempts");
        if attempts.len() > 1 {
            retried_records += 1;
        }
        for a in attempts {
            *outcomes.entry(a.outcome.unwrap_or_default()).or_default() += 1;
        }
    }
    let duplicates: u64 = stats.uploads_by_sha256.values().map(|n| n - 1).sum();
    let injected = stats.injected_errors_before_body
        + stats.injected_errors_after_body
        + stats.injected_rate_limits
        + stats.injected_resets;
    let outcome_text: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    figures(
        "fault_storm",
        &[
            ("files", n_files.to_string()),
            ("requests", stats.requests.to_string()),
            ("faults_injected", injected.to_string()),
            (
                "5xx_before_body",
                stats.injected_errors_before_body.to_string(),
            ),
            (
                "5xx_after_body",
                stats.injected_errors_after_body.to_string(),
            ),
            ("429", stats.injected_rate_limits.to_string()),
            ("resets", stats.injected_resets.to_string()),
            ("latency_ms", faults.latency_ms.to_string()),
            ("records_retried", retried_records.to_string()),
            ("attempt_outcomes", outcome_text.join(",")),
            ("ready", files.len().to_string()),
            ("failed", "0".into()),
            ("duplicate_uploads", duplicates.to_string()),
            (
                "requests_while_rate_limited",
                stats.requests_while_rate_limited.to_string(),
            ),
            ("took_s", format!("{:.1}", took.as_secs_f64())),
        ],
    );
    assert!(
        stats.injected_errors_before_body > 0
            && stats.injected_errors_after_body > 0
            && stats.injected_rate_limits > 0
            && stats.injected_resets > 0,
        "every kind of fault happened: {stats:?}"
    );
    assert_eq!(duplicates, 0, "{:?}", stats.uploads_by_sha256);
    // The retries are on record, each with what went wrong.
    for outcome in ["transient", "rate_limited", "accepted"] {
        assert!(
            outcomes.get(outcome).copied().unwrap_or(0) > 0,
            "no {outcome} attempt on record: {outcomes:?}"
        );
    }
    assert_eq!(
        outcomes.get("accepted").copied().unwrap_or(0)
            + outcomes.get("found").copied().unwrap_or(0),
        n_files,
        "one accepted (or found) attempt per file: {outcomes:?}"
    );
    // A 429 stops every worker and the poller, not just the one that got it.
    assert_eq!(
        stats.requests_while_rate_limited, 0,
        "requests went out while a 429 asked everyone to wait: {stats:?}"
    );
}
