//! The binary, end to end: exit codes, messages, output formats, and a
//! SIGKILL in the middle of an upload.

use std::time::Duration;

use tl_ingest::emulator::{EmulatorConfig, Faults};
use tl_ingest::ledger::Ledger;

use crate::helpers::sql::Sql;
use crate::helpers::{Kind, TestEnv, dump, output, record_of, text, wait_until, write_media};

#[tokio::test]
async fn upload_prints_each_file_and_exits_0_then_history_reads_it() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    let sha = write_media(&a, Kind::Mp4, 40_000, 1);
    let out = env.upload_bin(&[&env.inbox]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ready") && stdout.contains("a.mp4"),
        "{}",
        text(&out)
    );

    let mut cmd = env.cmd("unused");
    cmd.args(["history", "--format", "json"]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
    for field in [
        "id",
        "path",
        "state",
        "asset_id",
        "sha256",
        "size",
        "attempts",
        "last_error",
        "discovered_at",
        "uploaded_at",
        "ready_at",
        "updated_at",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["state"], "ready");
    assert_eq!(v["sha256"], sha.as_str());
    assert!(
        v["ready_at"].as_str().expect("time").ends_with('Z'),
        "RFC 3339 UTC: {v}"
    );
}

#[tokio::test]
async fn a_failed_file_makes_upload_exit_1() {
    let env = TestEnv::with(
        EmulatorConfig {
            max_direct_size: 1000,
            ..EmulatorConfig::default()
        },
        Faults::default(),
    )
    .await;
    write_media(&env.inbox.join("a.mp4"), Kind::Mp4, 5000, 1);
    let out = env.upload_bin(&[&env.inbox]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("failed"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_rejected_key_stops_with_a_clear_message_and_fails_no_file() {
    let env = TestEnv::new().await;
    let a = env.inbox.join("a.mp4");
    write_media(&a, Kind::Mp4, 5000, 1);
    let wrong = "wrong-key-SECRET-4242";
    let mut cmd = env.cmd(wrong);
    cmd.arg("upload").arg(&env.inbox);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("the API key was rejected"), "{all}");
    assert!(!all.contains(wrong), "the key must never be printed: {all}");

    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let rec = record_of(&ledger, &a).await;
    assert_eq!(rec.state, "queued", "{}", dump(&ledger).await);
    assert_eq!(rec.attempts, 0, "a key problem is not the file's fault");
    let bytes = if env.on_postgres() {
        let sql = Sql::connect(&env.ledger).await;
        let rows = sql.postgres_rows_text().await;
        sql.close().await;
        rows.into_bytes()
    } else {
        std::fs::read(&env.ledger_path).expect("read ledger")
    };
    assert!(
        !bytes.windows(wrong.len()).any(|w| w == wrong.as_bytes()),
        "the key is not in the ledger"
    );
    ledger.close().await;

    // With the right key the same files go through.
    let out = env.upload_bin(&[&env.inbox]).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let env = TestEnv::new().await;
    let mut cmd = env.cmd(crate::helpers::KEY);
    cmd.args(["upload", "/definitely/not/here.mp4"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no such file"), "{}", text(&out));

    let mut cmd = env.cmd("");
    cmd.env_remove("TWELVELABS_API_KEY")
        .arg("upload")
        .arg(&env.inbox);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no API key"), "{}", text(&out));

    std::fs::write(env.dir.path().join("bad.toml"), "[upload]\nwokers = 2\n").expect("write");
    let mut cmd = env.bare_cmd(crate::helpers::KEY);
    cmd.args(["--config", "bad.toml", "status"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("bad.toml") && msg.contains("wokers"), "{msg}");
}

#[tokio::test]
async fn sigkill_during_an_upload_then_a_rerun_leaves_every_file_ready_once() {
    // Slow requests keep uploads in flight long enough to be killed.
    let env = TestEnv::with_faults(Faults {
        latency_ms: 400,
        ..Faults::default()
    })
    .await;
    let mut files = Vec::new();
    for i in 0..8u64 {
        let p = env.inbox.join(format!("clip{i}.mp4"));
        let sha = write_media(&p, Kind::Mp4, 300_000, 900 + i);
        files.push((p, sha));
    }
    let mut child = env
        .cmd(crate::helpers::KEY)
        .arg("upload")
        .arg(&env.inbox)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");

    // Wait until an upload is under way, then kill without warning.
    let location = env.ledger.clone();
    wait_until(Duration::from_secs(30), "an upload in flight", || {
        let location = location.clone();
        async move {
            let Ok(ledger) = Ledger::open_existing_at(&location).await else {
                return false;
            };
            let busy = ledger
                .in_flight()
                .await
                .map(|v| !v.is_empty())
                .unwrap_or(false);
            ledger.close().await;
            busy
        }
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    env.emulator.set_faults(Faults::default());
    let out = env.upload_bin(&[&env.inbox]).await;
    assert!(out.status.success(), "{}", text(&out));

    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let records = ledger.history(&[], None).await.expect("history");
    let stats = env.emulator.stats();
    for (p, sha) in &files {
        let rec = record_of(&ledger, p).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        let ready = records
            .iter()
            .filter(|r| r.sha256.as_deref() == Some(sha) && r.state == "ready")
            .count();
        assert_eq!(ready, 1, "exactly one ready record for {}", p.display());
        assert_eq!(
            stats.uploads_by_sha256.get(sha),
            Some(&1),
            "sent twice: {}",
            p.display()
        );
    }
}

#[tokio::test]
async fn the_emulator_needs_no_key_and_keeps_its_own_ledger() {
    let env = TestEnv::new().await;
    write_media(&env.inbox.join("demo.mp4"), Kind::Mp4, 8000, 1);
    let mut cmd = env.bare_cmd("");
    cmd.env_remove("TWELVELABS_API_KEY")
        .args(["upload", "--emulator", "inbox"]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !env.dir.path().join("tl-ingest.db").exists(),
        "the real ledger is untouched"
    );
    assert!(env.dir.path().join("tl-ingest-emulator.db").exists());

    let mut cmd = env.bare_cmd("");
    cmd.args(["history", "--emulator", "--format", "json"]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"state\":\"ready\""),
        "{}",
        text(&out)
    );
}

/// A minimal system without Debian's `ca-certificates`: the daemon and
/// doctor say what is missing and how to fix it, not "builder error".
#[tokio::test]
async fn without_ca_certificates_the_error_says_install_them() {
    let env = TestEnv::new().await;
    let empty_file = env.dir.path().join("no-certs.pem");
    std::fs::write(&empty_file, "").expect("write");
    let empty_dir = env.dir.path().join("no-certs");
    std::fs::create_dir(&empty_dir).expect("mkdir");
    let want = "no CA certificates found in /etc/ssl/certs: install ca-certificates";

    let mut cmd = env.cmd(crate::helpers::KEY);
    cmd.env("SSL_CERT_FILE", &empty_file)
        .env("SSL_CERT_DIR", &empty_dir)
        .arg("upload")
        .arg(&env.inbox);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(want), "{}", text(&out));

    let mut cmd = env.cmd(crate::helpers::KEY);
    cmd.env("SSL_CERT_FILE", &empty_file)
        .env("SSL_CERT_DIR", &empty_dir)
        .arg("doctor");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = text(&out)
        .lines()
        .find(|l| l.contains("CA certificates"))
        .map(str::to_string);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.starts_with("FAIL") && l.contains(want)),
        "{}",
        text(&out)
    );
}
