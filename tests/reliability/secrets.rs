//! Secrets: with a known key and `RUST_LOG=trace`, every command and the
//! failure paths (server errors, a rejected key, an unreachable API, bad
//! configuration, the key put where it does not belong) print the key
//! nowhere — not on stdout, not in a log line, not in a panic — and the
//! ledger never holds it. A key file others can read gets a warning.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tl_ingest::emulator::Faults;

use super::{assert_no_panic, figures};
use crate::helpers::{DEADLINE, KEY, Kind, TestEnv, output, text, wait_until, write_media};

/// Another key the emulator refuses: it must not leak either.
const WRONG: &str = "tlk_WRONG_SECRET_5150_do_not_print";

/// Every secret and the output it must not be in.
fn assert_clean(what: &str, haystack: &[u8]) {
    for secret in [KEY, WRONG] {
        assert!(
            !haystack
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{what} shows the key {secret:?}:\n{}",
            String::from_utf8_lossy(haystack)
        );
    }
}

/// The binary with trace logging everywhere.
fn traced(env: &TestEnv, key: &str, config: &Path) -> Command {
    let mut cmd = env.bare_cmd(key);
    cmd.env("RUST_LOG", "trace").arg("--config").arg(config);
    cmd
}

struct Runs {
    count: usize,
}

impl Runs {
    /// Run, check the output, return it.
    async fn check(&mut self, what: &str, cmd: Command) -> Output {
        let out = tokio::time::timeout(DEADLINE, output(cmd))
            .await
            .unwrap_or_else(|_| panic!("{what} did not end"));
        let all = text(&out);
        assert_no_panic(what, &all);
        assert_clean(what, &out.stdout);
        assert_clean(what, &out.stderr);
        self.count += 1;
        out
    }
}

fn ledger_files(ledger: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", ".lock"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", ledger.display())))
        .filter(|p| p.exists())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_in_no_output_no_log_and_not_in_the_ledger_even_at_trace_level() {
    // SQLite in both passes: the check reads the ledger's files (the
    // database, its WAL and shared memory, the lock) byte by byte.
    let env = TestEnv::sqlite().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let a = env.inbox.join("a.mp4");
    write_media(&a, Kind::Mp4, 4_000, 1);
    write_media(&env.inbox.join("b.wav"), Kind::Wav, 4_000, 2);
    let mut runs = Runs { count: 0 };
    let ok = |out: &Output, code: i32| {
        assert_eq!(out.status.code(), Some(code), "{}", text(out));
    };

    // Success paths: every command.
    let mut cmd = traced(&env, KEY, &config);
    cmd.args(["upload", "inbox"]);
    ok(&runs.check("upload", cmd).await, 0);
    for args in [
        &["status"][..],
        &["status", "--format", "json"],
        &["history"],
        &["history", "--format", "json"],
        &["history", "--format", "csv"],
        &["show", "inbox/a.mp4"],
        &["retry", "--failed"],
        &["reconcile"],
        &["prune", "--older-than", "30d"],
        &["config", "check"],
        &["config", "show"],
        &["doctor"],
        &["completions", "bash"],
        &["add-url", "https://cdn.example.com/clip.mp4"],
        &["forget", "--yes", "inbox/a.mp4"],
    ] {
        let mut cmd = traced(&env, KEY, &config);
        cmd.args(args);
        let out = runs.check(&args.join(" "), cmd).await;
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "{}: {}",
            args.join(" "),
            text(&out)
        );
    }

    // The daemon, with the server failing under it, then stopped.
    env.emulator.set_faults(Faults {
        error_before_body: 0.3,
        error_after_body: 0.3,
        rate_limit: 0.2,
        retry_after_secs: 1,
        seed: Some(3),
        ..Faults::default()
    });
    let log = env.dir.path().join("daemon.log");
    let daemon = super::spawn_daemon_with(&env, &config, &log, &[("RUST_LOG", "trace")]);
    env.wait_for_state(std::slice::from_ref(&a), "ready").await;
    let code = super::terminate(daemon, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    let log_bytes = std::fs::read(&log).expect("log");
    assert_no_panic("run", &String::from_utf8_lossy(&log_bytes));
    assert_clean("run", &log_bytes);
    assert!(
        String::from_utf8_lossy(&log_bytes).contains("TRACE"),
        "trace logging was on"
    );
    runs.count += 1;
    env.emulator.set_faults(Faults::default());

    // Failure paths: a rejected key, an unreachable API, bad configuration.
    write_media(&env.inbox.join("c.mp4"), Kind::Mp4, 4_000, 3);
    let mut cmd = traced(&env, WRONG, &config);
    cmd.args(["upload", "inbox"]);
    ok(&runs.check("upload with a rejected key", cmd).await, 2);
    let mut cmd = traced(&env, WRONG, &config);
    cmd.arg("doctor");
    ok(&runs.check("doctor with a rejected key", cmd).await, 1);

    let unreachable = env.dir.path().join("unreachable.toml");
    let text_cfg = std::fs::read_to_string(&config)
        .expect("read")
        .replace(&env.emulator.base_url(), "http://127.0.0.1:9/v1.3")
        .replace("max_attempts = 12", "max_attempts = 2");
    std::fs::write(&unreachable, text_cfg).expect("write");
    for args in [&["upload", "inbox"][..], &["doctor"], &["reconcile"]] {
        let mut cmd = traced(&env, KEY, &unreachable);
        cmd.args(args);
        runs.check(&format!("{} (API unreachable)", args.join(" ")), cmd)
            .await;
    }

    // The key where it does not belong: in the TOML (unknown key, and a
    // syntax error on its very line) and in a TL_INGEST__ variable.
    for (name, body) in [
        ("key-known.toml", format!("[api]\nkey = {KEY:?}\n")),
        ("key-broken.toml", format!("[api]\nkey = \"{KEY}\n")),
        ("key-value.toml", format!("[api]\nbase_url = {KEY:?}\n")),
    ] {
        let path = env.dir.path().join(name);
        std::fs::write(&path, body).expect("write");
        for args in [&["config", "check"][..], &["upload", "inbox"]] {
            let mut cmd = traced(&env, KEY, &path);
            cmd.args(args);
            let out = runs
                .check(&format!("{} with {name}", args.join(" ")), cmd)
                .await;
            ok(&out, 2);
        }
    }
    let mut cmd = traced(&env, KEY, &config);
    cmd.env("TL_INGEST__API__KEY", KEY)
        .args(["config", "check"]);
    ok(&runs.check("TL_INGEST__API__KEY", cmd).await, 2);
    let mut cmd = traced(&env, KEY, &config);
    cmd.env("TL_INGEST__UPLOAD__WORKERS", KEY)
        .args(["config", "show"]);
    ok(
        &runs.check("a bad value from the environment", cmd).await,
        2,
    );

    // The emulator's own key (TL_EMULATOR_API_KEY) stays hidden too.
    let emu_log = env.dir.path().join("emulator.log");
    let mut emu = env.bare_cmd("");
    emu.env("RUST_LOG", "trace")
        .env("TL_EMULATOR_API_KEY", KEY)
        .args(["emulator", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&emu_log).expect("log")));
    let child = emu.spawn().expect("spawn emulator");
    let watch_log = emu_log.clone();
    wait_until(DEADLINE, "the emulator listening", || {
        let p = watch_log.clone();
        async move { std::fs::read_to_string(p).is_ok_and(|t| t.contains("listening")) }
    })
    .await;
    {
        use rustix::process::{Pid, Signal, kill_process};
        kill_process(Pid::from_child(&child), Signal::INT).expect("SIGINT");
    }
    let mut child = child;
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_clean("emulator", &std::fs::read(&emu_log).expect("log"));
    runs.count += 1;

    // And never in the ledger.
    let files = ledger_files(&env.ledger_path);
    assert!(!files.is_empty());
    for f in &files {
        assert_clean(&f.display().to_string(), &std::fs::read(f).expect("read"));
    }
    figures(
        "secrets",
        &[
            ("runs", runs.count.to_string()),
            ("rust_log", "trace".into()),
            ("ledger_files_checked", files.len().to_string()),
            ("key_found", "0".into()),
        ],
    );
}

#[tokio::test]
async fn a_key_file_others_can_read_gets_a_warning_and_a_private_one_none() {
    let env = TestEnv::new().await;
    let key_file = env.dir.path().join("api-key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write key");
    let config = env.write_config();
    let with_key = env.dir.path().join("with-key.toml");
    let text_cfg = std::fs::read_to_string(&config).expect("read").replacen(
        "[api]\n",
        &format!("[api]\nkey_file = {:?}\n", key_file.display().to_string()),
        1,
    );
    std::fs::write(&with_key, text_cfg).expect("write");
    write_media(&env.inbox.join("a.mp4"), Kind::Mp4, 3_000, 1);
    let mut seen = Vec::new();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let mut cmd = env.bare_cmd("");
        cmd.env_remove("TWELVELABS_API_KEY")
            .arg("--config")
            .arg(&with_key)
            .args(["upload", "inbox"]);
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_clean("upload with a key file", &out.stderr);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("can be read by other users"),
            warned,
            "mode {mode:o}: {stderr}"
        );
        seen.push(format!(
            "{mode:o}:{}",
            if warned { "warned" } else { "quiet" }
        ));
    }
    figures("secrets.key_file_mode", &[("modes", seen.join(","))]);
}

/// What a presigned chunk URL of the emulator looks like: its path and its
/// signature parameter. Neither may appear anywhere.
const URL_MARKS: [&str; 2] = ["/_s3/", "sig="];

fn assert_no_presigned_url(what: &str, haystack: &[u8]) {
    for mark in URL_MARKS {
        assert!(
            !haystack.windows(mark.len()).any(|w| w == mark.as_bytes()),
            "{what} shows a presigned URL ({mark:?}):\n{}",
            String::from_utf8_lossy(haystack)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_every_chunk_fails_the_file_after_three_sessions_and_no_url_leaks() {
    let env = TestEnv::sqlite_with(
        tl_ingest::emulator::EmulatorConfig {
            multipart_chunk_size: 1 << 20,
            ..tl_ingest::emulator::EmulatorConfig::default()
        },
        Faults {
            chunk_error_status: 404,
            ..Faults::default()
        },
    )
    .await;
    let config = env.write_config();
    let file = env.inbox.join("big.mp4");
    let mut bytes = crate::helpers::media(Kind::Mp4, 4096, 8);
    bytes.resize(3 << 20, 0);
    std::fs::write(&file, &bytes).expect("write");
    let mut runs = Runs { count: 0 };
    let mut cmd = traced(&env, KEY, &config);
    cmd.env("TL_INGEST__UPLOAD__MULTIPART_THRESHOLD", "1MB")
        .args(["upload", "inbox"]);
    let out = runs
        .check("upload to a store refusing every chunk", cmd)
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_no_presigned_url("upload", &out.stdout);
    assert_no_presigned_url("upload", &out.stderr);

    let stats = env.emulator.stats();
    assert_eq!(stats.multipart_sessions, 3, "{stats:?}");
    assert_eq!(stats.chunk_puts, 0);
    let ledger = tl_ingest::ledger::Ledger::open_existing_at(&env.ledger)
        .await
        .expect("ledger");
    let rec = crate::helpers::record_of(&ledger, &file).await;
    ledger.close().await;
    assert_eq!(rec.state, "failed");
    let error = rec.last_error.unwrap_or_default();
    assert!(
        error.contains("3 upload sessions in a row") && error.contains("404 NoSuchUpload"),
        "{error}"
    );
    assert!(error.contains("chunk "), "names the chunk: {error}");

    for args in [
        &["show", "inbox/big.mp4"][..],
        &["show", "--format", "json", "inbox/big.mp4"],
        &["history", "--format", "json"],
        &["status"],
    ] {
        let mut cmd = traced(&env, KEY, &config);
        cmd.args(args);
        let out = runs.check(&args.join(" "), cmd).await;
        assert_no_presigned_url(&args.join(" "), &out.stdout);
        assert_no_presigned_url(&args.join(" "), &out.stderr);
    }
    let files = ledger_files(&env.ledger_path);
    assert!(!files.is_empty());
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        assert_no_presigned_url(&f.display().to_string(), &bytes);
        assert_clean(&f.display().to_string(), &bytes);
    }
    figures(
        "secrets.presigned_urls",
        &[
            ("sessions", stats.multipart_sessions.to_string()),
            ("runs", runs.count.to_string()),
            ("urls_found", "0".into()),
        ],
    );
}
