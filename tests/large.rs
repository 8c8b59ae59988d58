//! Large files (multipart, resumable), URLs, and what happens after ready.

use std::path::Path;
use std::time::Duration;

use tl_ingest::emulator::{EmulatorConfig, Faults};
use tl_ingest::ledger::{Ledger, Location};

use crate::helpers::{KEY, Kind, TestEnv, dump, output, record_of, text, wait_until, write_media};

/// A sparse file of `size` bytes that starts like an MP4 (so the platform
/// accepts it); returns its sha256, computed independently.
fn sparse_mp4(path: &Path, size: u64) -> String {
    use sha2::Digest;
    use std::io::Write;
    let header = crate::helpers::media(Kind::Mp4, 4096, 77);
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(&header).expect("header");
    f.set_len(size).expect("sparse");
    drop(f);
    let mut h = sha2::Sha256::new();
    h.update(&header);
    let zeros = vec![0u8; 1 << 20];
    let mut left = size - header.len() as u64;
    while left > 0 {
        let n = left.min(zeros.len() as u64);
        h.update(&zeros[..usize::try_from(n).expect("small")]);
        left -= n;
    }
    hex::encode(h.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mb_file_goes_up_in_chunks_and_arrives_exact() {
    let env = TestEnv::new().await;
    let big = env.inbox.join("camera.mp4");
    let sha = sparse_mp4(&big, 300_000_000);
    // Default limits: 300 MB is over the 200 MB direct limit.
    let ledger = env
        .run_pipeline(env.config(), std::slice::from_ref(&big))
        .await;
    let rec = record_of(&ledger, &big).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    let stats = env.emulator.stats();
    assert_eq!(stats.uploads_by_sha256.get(&sha), Some(&1), "{stats:?}");
    assert_eq!(stats.multipart_sessions, 1);
    assert_eq!(
        stats.chunk_puts,
        300_000_000u64.div_ceil(5_242_880),
        "each chunk once"
    );
    assert_eq!(stats.create_requests, 0, "no direct upload was tried");
}

/// The number of chunks the ledger holds for the newest record of `path`.
async fn recorded_chunks(ledger: &Location, path: &Path) -> (Option<String>, usize) {
    let Ok(ledger) = Ledger::open_existing_at(ledger).await else {
        return (None, 0);
    };
    let abs = std::path::absolute(path).expect("absolute");
    use std::os::unix::ffi::OsStrExt;
    let id = ledger
        .latest_for_path(abs.as_os_str().as_bytes())
        .await
        .ok()
        .flatten()
        .map(|r| r.id);
    let out = match id {
        Some(id) => match ledger.session(id).await.ok().flatten() {
            Some((s, chunks)) => (Some(s.upload_id), chunks.len()),
            None => (None, 0),
        },
        None => (None, 0),
    };
    ledger.close().await;
    out
}

/// Start `upload` on a slow emulator, SIGKILL it once `min_chunks` chunks
/// are recorded; returns the session id and how many chunks were recorded.
async fn kill_midway(env: &TestEnv, file: &Path, min_chunks: usize) -> (String, usize) {
    let mut child = env
        .cmd(KEY)
        .env("TL_INGEST__UPLOAD__MULTIPART_THRESHOLD", "10MB")
        .arg("upload")
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let (lp, fp) = (env.ledger.clone(), file.to_path_buf());
    wait_until(crate::helpers::DEADLINE, "chunks recorded", || {
        let (lp, fp) = (lp.clone(), fp.clone());
        async move { recorded_chunks(&lp, &fp).await.1 >= min_chunks }
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let (session, n) = recorded_chunks(&env.ledger, file).await;
    (session.expect("a session was saved"), n)
}

fn chunked_env_config() -> EmulatorConfig {
    EmulatorConfig {
        multipart_chunk_size: 1 << 20,
        ..EmulatorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_half_way_resumes_the_same_session_without_resending_chunks() {
    let env = TestEnv::with(
        chunked_env_config(),
        Faults {
            latency_ms: 300,
            ..Faults::default()
        },
    )
    .await;
    let file = env.inbox.join("long.mp4");
    let size = 40u64 << 20;
    let sha = sparse_mp4(&file, size);
    let total = size.div_ceil(1 << 20);

    let (session, recorded) = kill_midway(&env, &file, 8).await;
    // Sent unhashed (one read, README.md "Large files"): whether the killed
    // run had read to the end and recorded the hash depends on timing; the
    // resume without it is `chunk_reader`'s
    // `a_resumed_session_streams_the_missing_chunks_and_hashes_from_the_first_byte`.
    let hashed_before_kill = chunks_then_hash(&env.ledger, &file).await.1.is_some();
    // PUTs the killed run had on the wire may still complete on the server.
    let emulator = &env.emulator;
    crate::helpers::wait_until(
        crate::helpers::DEADLINE,
        "the killed run's requests ended",
        || {
            let busy = emulator.stats().requests_in_progress;
            async move { busy == 0 }
        },
    )
    .await;
    let puts_before = env.emulator.stats().chunk_puts;
    env.emulator.set_faults(Faults::default());
    let out = env
        .upload_bin_with(&[&file], &["TL_INGEST__UPLOAD__MULTIPART_THRESHOLD=10MB"])
        .await;
    assert!(out.status.success(), "{}", text(&out));

    let stats = env.emulator.stats();
    assert_eq!(
        stats.multipart_sessions, 1,
        "the same session was resumed: {stats:?}"
    );
    let resent = stats.chunk_puts - puts_before;
    assert_eq!(
        resent,
        total - recorded as u64,
        "only the chunks without a recorded ETag were sent again"
    );
    assert_eq!(stats.uploads_by_sha256.get(&sha), Some(&1));
    assert!(stats.chunk_puts_by_upload.contains_key(&session));
    // Hashed from the first byte again on resume: the chunks the platform
    // already had were read for the hash only. The hash and the stamp are
    // the file's.
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let rec = record_of(&ledger, &file).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
    ledger.close().await;
    let assets = env.emulator.assets();
    assert_eq!(assets.len(), 1, "{assets:?}");
    assert_eq!(
        assets[0].user_metadata,
        Some(serde_json::json!({ "tl_ingest_sha256": sha })),
        "{assets:?}"
    );
    eprintln!(
        "RELIABILITY multipart.resume_one_read: chunks={total} recorded_before_kill={recorded} \
         hash_recorded_before_kill={hashed_before_kill} sent_after={resent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_replaced() {
    let env = TestEnv::with(
        chunked_env_config(),
        Faults {
            latency_ms: 300,
            ..Faults::default()
        },
    )
    .await;
    let file = env.inbox.join("expires.mp4");
    let sha = sparse_mp4(&file, 30u64 << 20);
    let (session, _) = kill_midway(&env, &file, 4).await;
    assert!(env.emulator.expire_session(&session));
    env.emulator.set_faults(Faults::default());
    let out = env
        .upload_bin_with(&[&file], &["TL_INGEST__UPLOAD__MULTIPART_THRESHOLD=10MB"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let stats = env.emulator.stats();
    assert_eq!(stats.multipart_sessions, 2, "a new session: {stats:?}");
    assert_eq!(stats.uploads_by_sha256.get(&sha), Some(&1));
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    assert_eq!(record_of(&ledger, &file).await.state, "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_queued_once_and_bad_ones_refused() {
    let env = TestEnv::new().await;
    let mut cmd = env.cmd(KEY);
    cmd.args(["add-url", "ftp://example.com/a.mp4"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("only http and https"), "{}", text(&out));

    let mut cmd = env.cmd(KEY);
    cmd.args([
        "add-url",
        "https://media.example.com/clip.mp4",
        "--filename",
        "clip.mp4",
    ]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    let mut cmd = env.cmd(KEY);
    cmd.args(["add-url", "https://media.example.com/clip.mp4"]);
    let out = output(cmd).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("known"),
        "{}",
        text(&out)
    );

    // A daemon picks it up, and a .urls list dropped in its folder.
    let config = env.write_daemon_config(&env.inbox_watch());
    let daemon = env.start_daemon(&config);
    std::fs::write(
        env.inbox.join("batch.urls"),
        "# from the field\nhttps://media.example.com/a.mov\nhttps://media.example.com/b.mov\nnot a url\n",
    )
    .expect("write list");
    let location = env.ledger.clone();
    wait_until(crate::helpers::DEADLINE, "three URL records ready", || {
        let location = location.clone();
        async move {
            let Ok(l) = Ledger::open_existing_at(&location).await else {
                return false;
            };
            let recs = l.history(&[], None).await.unwrap_or_default();
            l.close().await;
            recs.iter()
                .filter(|r| r.url.is_some() && r.state == "ready")
                .count()
                == 3
        }
    })
    .await;
    // The list again, with one more line: only the new URL is queued.
    std::fs::write(
        env.inbox.join("batch.urls"),
        "https://media.example.com/a.mov\nhttps://media.example.com/b.mov\nhttps://media.example.com/c.mov\n",
    )
    .expect("rewrite list");
    wait_until(crate::helpers::DEADLINE, "the new URL ready", || {
        let location = location.clone();
        async move {
            let Ok(l) = Ledger::open_existing_at(&location).await else {
                return false;
            };
            let recs = l.history(&[], None).await.unwrap_or_default();
            l.close().await;
            recs.iter().any(|r| {
                r.url.as_deref() == Some("https://media.example.com/c.mov") && r.state == "ready"
            })
        }
    })
    .await;
    daemon.stop().await;
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let recs = ledger.history(&[], None).await.expect("history");
    assert_eq!(
        recs.iter().filter(|r| r.url.is_some()).count(),
        4,
        "{}",
        dump(&ledger).await
    );
    let named = recs
        .iter()
        .find(|r| r.url.as_deref() == Some("https://media.example.com/clip.mp4"))
        .expect("clip");
    assert!(named.asset_id.is_some());
    let json = serde_json::to_string(&recs).expect("json");
    assert!(json.contains("https://media.example.com/a.mov"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_ready_files_move_failures_get_a_sidecar_and_assets_are_indexed() {
    let env = TestEnv::with(
        EmulatorConfig {
            ready_delay: Duration::from_millis(400),
            ..EmulatorConfig::default()
        },
        Faults::default(),
    )
    .await;
    let extra = format!(
        "[watcher]\nsettle = \"200ms\"\nrescan_interval = \"1h\"\n[[watch]]\npath = {:?}\nafter_upload = {{ move_to = \"done\" }}\non_failure = {{ move_to = \"failed\" }}\nindex_id = \"idx-news\"\n",
        env.inbox.display().to_string()
    );
    let config = env.write_daemon_config(&extra);
    let mut daemon = env.start_daemon(&config);
    let good = env.inbox.join("day1/clip.mp4");
    write_media(&good, Kind::Mp4, 20_000, 1);
    let bad = env.inbox.join("noise.mov");
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8 | 0x80)
        .collect();
    std::fs::write(&bad, noise).expect("write");

    // Not moved before ready.
    daemon
        .wait(&env, std::slice::from_ref(&good), "processing")
        .await;
    assert!(good.exists(), "moved before the asset was ready");

    daemon
        .wait(&env, std::slice::from_ref(&good), "indexed")
        .await;
    let moved = env.inbox.join("done/day1/clip.mp4");
    wait_until(crate::helpers::DEADLINE, "the file moved", || {
        let m = moved.clone();
        async move { m.exists() }
    })
    .await;
    assert!(!good.exists());

    let failed_to = env.inbox.join("failed/noise.mov");
    let sidecar = env.inbox.join("failed/noise.mov.error.json");
    wait_until(
        crate::helpers::DEADLINE,
        "the failure moved with its sidecar",
        || {
            let (f, s) = (failed_to.clone(), sidecar.clone());
            async move { f.exists() && s.exists() }
        },
    )
    .await;
    let why: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sidecar).expect("read")).expect("json");
    assert!(
        why["error"]
            .as_str()
            .unwrap_or("")
            .contains("could not process"),
        "{why}"
    );
    daemon.stop().await;

    // Moved files were not picked up again.
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let recs = ledger.history(&[], None).await.expect("history");
    assert_eq!(recs.len(), 2, "{}", dump(&ledger).await);
    assert_eq!(env.emulator.stats().indexed_assets, 1);
    let rec = record_of(&ledger, &good).await;
    assert_eq!(rec.state, "indexed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_upload_removes_the_file_once_ready() {
    let env = TestEnv::new().await;
    let extra = format!(
        "[watcher]\nsettle = \"200ms\"\nrescan_interval = \"1h\"\n[[watch]]\npath = {:?}\nafter_upload = \"delete\"\n",
        env.inbox.display().to_string()
    );
    let config = env.write_daemon_config(&extra);
    let mut daemon = env.start_daemon(&config);
    let clip = env.inbox.join("gone-soon.mp4");
    write_media(&clip, Kind::Mp4, 9000, 4);
    daemon
        .wait(&env, std::slice::from_ref(&clip), "ready")
        .await;
    wait_until(crate::helpers::DEADLINE, "the file deleted", || {
        let c = clip.clone();
        async move { !c.exists() }
    })
    .await;
    daemon.stop().await;
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let rec = record_of(&ledger, &clip).await;
    assert_eq!(rec.state, "ready");
    assert_eq!(rec.file_action.as_deref(), Some("deleted"));
}

/// Chunks of 1 MiB, with chunk URLs signed with a header the PUTs must carry.
fn signed_headers_config() -> EmulatorConfig {
    EmulatorConfig {
        upload_headers: [(
            "x-amz-server-side-encryption".to_owned(),
            "AES256".to_owned(),
        )]
        .into(),
        ..chunked_env_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_sends_the_headers_its_urls_were_signed_with() {
    let env = TestEnv::with(
        signed_headers_config(),
        Faults {
            latency_ms: 300,
            ..Faults::default()
        },
    )
    .await;
    let file = env.inbox.join("signed.mp4");
    let size = 24u64 << 20;
    let sha = sparse_mp4(&file, size);
    let total = size.div_ceil(1 << 20);

    let (session, recorded) = kill_midway(&env, &file, 6).await;
    let emulator = &env.emulator;
    wait_until(
        crate::helpers::DEADLINE,
        "the killed run's requests ended",
        || {
            let busy = emulator.stats().requests_in_progress;
            async move { busy == 0 }
        },
    )
    .await;
    let puts_before = env.emulator.stats().chunk_puts;
    env.emulator.set_faults(Faults::default());
    let out = env
        .upload_bin_with(&[&file], &["TL_INGEST__UPLOAD__MULTIPART_THRESHOLD=10MB"])
        .await;
    assert!(out.status.success(), "{}", text(&out));

    let stats = env.emulator.stats();
    assert_eq!(stats.multipart_sessions, 1, "the same session: {stats:?}");
    assert!(stats.chunk_puts_by_upload.contains_key(&session));
    assert_eq!(
        stats.chunk_puts - puts_before,
        total - recorded as u64,
        "only the missing chunks were sent"
    );
    assert_eq!(
        stats.chunk_put_refusals.get("SignatureDoesNotMatch"),
        None,
        "every chunk PUT carried the signed headers: {stats:?}"
    );
    assert_eq!(stats.uploads_by_sha256.get(&sha), Some(&1));
    eprintln!(
        "RELIABILITY multipart.signed_headers_resume: chunks={total} recorded_before_kill={recorded} \
         sent_after={} refusals={:?}",
        stats.chunk_puts - puts_before,
        stats.chunk_put_refusals
    );
}

/// `show --format json` of a file, parsed.
async fn show_json(env: &TestEnv, file: &Path) -> serde_json::Value {
    let mut cmd = env.cmd(KEY);
    cmd.args(["show", "--format", "json"]).arg(file);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// A session that ends at run time after a third of its chunks is replaced
/// in the same attempt: the file is ready once, through the second session.
async fn a_session_ended_mid_upload_is_replaced(faults: Faults, reason: &str) {
    let env = TestEnv::with(signed_headers_config(), Faults::default()).await;
    let file = env.inbox.join("ends.mp4");
    let size = 12u64 << 20;
    let sha = sparse_mp4(&file, size);
    env.emulator.set_faults(faults);
    let out = env
        .upload_bin_with(&[&file], &["TL_INGEST__UPLOAD__MULTIPART_THRESHOLD=10MB"])
        .await;
    assert!(out.status.success(), "{}", text(&out));

    let stats = env.emulator.stats();
    eprintln!(
        "RELIABILITY multipart.session_{reason:?}: sessions={} chunk_puts={} refusals={:?}",
        stats.multipart_sessions, stats.chunk_puts, stats.chunk_put_refusals
    );
    assert_eq!(stats.multipart_sessions, 2, "one replacement: {stats:?}");
    assert_eq!(stats.multipart_completed, 1);
    assert_eq!(stats.uploads_by_sha256.get(&sha), Some(&1), "ready once");
    assert!(
        stats.chunk_put_refusals.contains_key("NoSuchUpload"),
        "the store refused chunks of the ended session: {stats:?}"
    );
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let rec = record_of(&ledger, &file).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    assert_eq!(rec.attempts, 1, "replaced within the attempt");
    ledger.close().await;
    // The first session's asset is not left behind as a second copy.
    let ready: Vec<_> = env
        .emulator
        .assets()
        .into_iter()
        .filter(|a| a.sha256.as_deref() == Some(sha.as_str()))
        .collect();
    assert_eq!(ready.len(), 1, "{ready:?}");

    let shown = show_json(&env, &file).await;
    let sessions = shown["multipart_sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2, "{shown}");
    assert_eq!(sessions[0]["outcome"], reason, "{shown}");
    assert_eq!(sessions[0]["replaced"], true);
    assert_eq!(sessions[1]["outcome"], "completed", "{shown}");
    let mut cmd = env.cmd(KEY);
    cmd.arg("show").arg(&file);
    let out = output(cmd).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("multipart sessions: 2 (1 replaced)"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expired_mid_upload_is_replaced_and_the_file_is_ready_once() {
    let faults = Faults {
        expire_session_after_chunks: 4,
        ..Faults::default()
    };
    a_session_ended_mid_upload_is_replaced(faults, "expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_aborted_mid_upload_is_replaced_and_the_file_is_ready_once() {
    let faults = Faults {
        abort_session_after_chunks: 4,
        ..Faults::default()
    };
    a_session_ended_mid_upload_is_replaced(faults, "the platform no longer has it").await;
}

/// The record of `path` in a ledger another process is writing: how many
/// chunks it has recorded, then its sha256.
async fn chunks_then_hash(ledger: &Location, path: &Path) -> (usize, Option<String>) {
    let chunks = recorded_chunks(ledger, path).await.1;
    let Ok(ledger) = Ledger::open_existing_at(ledger).await else {
        return (chunks, None);
    };
    let abs = std::path::absolute(path).expect("absolute");
    use std::os::unix::ffi::OsStrExt;
    let sha = ledger
        .latest_for_path(abs.as_os_str().as_bytes())
        .await
        .ok()
        .flatten()
        .and_then(|r| r.sha256);
    ledger.close().await;
    (chunks, sha)
}

/// Wait for `child` to exit without reaping it, read what it read (`rchar`
/// of /proc/PID/io: every byte its read calls returned, page cache or not),
/// then reap it.
async fn bytes_read_by(mut child: std::process::Child) -> (std::process::ExitStatus, u64) {
    tokio::task::spawn_blocking(move || {
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::waitid(
            rustix::process::WaitId::Pid(pid),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
        )
        .expect("waitid");
        let io = std::fs::read_to_string(format!("/proc/{}/io", child.id())).expect("/proc/PID/io");
        let rchar = io
            .lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no rchar in {io}"));
        (child.wait().expect("reap"), rchar)
    })
    .await
    .expect("join")
}

/// README.md, "Large files": a file no other record shares a size with is
/// sent in chunks while it is hashed, in one read: its session is created
/// without the stamp (the hash is not known yet: hashing first would have
/// put it there, and added none afterwards), the process reads the file's
/// bytes once, the asset assembled from the chunks has the file's sha256,
/// the ledger records it, and the stamp is added to the asset once its
/// session completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_sent_while_it_is_hashed_in_one_read_then_stamped() {
    let env = TestEnv::with(chunked_env_config(), Faults::default()).await;
    let file = env.inbox.join("one-read.mp4");
    let size = 40u64 << 20;
    let sha = sparse_mp4(&file, size);
    let child = env
        .cmd(KEY)
        .env("TL_INGEST__UPLOAD__MULTIPART_THRESHOLD", "10MB")
        .arg("upload")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let (status, read) = bytes_read_by(child).await;
    assert!(status.success(), "{status}");
    eprintln!("RELIABILITY multipart.one_read: size={size} bytes_read={read}");
    assert!(
        read < size + size / 8,
        "the file was read once: {read} bytes read for a file of {size}"
    );

    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let rec = record_of(&ledger, &file).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    assert_eq!(
        rec.sha256.as_deref(),
        Some(sha.as_str()),
        "the ledger has the hash"
    );
    ledger.close().await;
    let stats = env.emulator.stats();
    assert_eq!(stats.multipart_sessions, 1, "{stats:?}");
    assert_eq!(stats.uploads_by_sha256.get(&sha), Some(&1), "{stats:?}");
    assert_eq!(
        stats.user_metadata_updates, 1,
        "the session went without the stamp, added afterwards: {stats:?}"
    );
    let assets = env.emulator.assets();
    assert_eq!(assets.len(), 1);
    assert_eq!(assets[0].sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(
        assets[0].user_metadata,
        Some(serde_json::json!({ "tl_ingest_sha256": sha })),
        "the stamp was added after the session completed"
    );
}

/// A PATCH the platform refuses (no such route): the upload still ends
/// ready, unstamped, and one warning says what `reconcile` then cannot
/// match; the next large file is hashed first, its stamp in its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stamp_update_leaves_the_upload_ready_and_later_files_hashed_first() {
    let env = TestEnv::with(
        chunked_env_config(),
        Faults {
            user_metadata_status: 405,
            ..Faults::default()
        },
    )
    .await;
    let a = env.inbox.join("a.mp4");
    let b = env.inbox.join("b.mp4");
    let sha_a = sparse_mp4(&a, 12u64 << 20);
    let sha_b = sparse_mp4(&b, 13u64 << 20);
    let out = env
        .upload_bin_with(
            &[&a, &b],
            &[
                "TL_INGEST__UPLOAD__MULTIPART_THRESHOLD=10MB",
                "TL_INGEST__UPLOAD__WORKERS=1",
            ],
        )
        .await;
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        log.matches("refused to add the sha256 stamp").count(),
        1,
        "said once: {log}"
    );
    assert!(log.contains("`reconcile` cannot list"), "{log}");

    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    for (file, sha) in [(&a, &sha_a), (&b, &sha_b)] {
        let rec = record_of(&ledger, file).await;
        assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
        assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
    }
    ledger.close().await;
    let stats = env.emulator.stats();
    assert_eq!(stats.user_metadata_updates, 0, "{stats:?}");
    // One worker: the first file went unstamped, the second was hashed
    // first and carried its stamp in its session.
    let stamps: Vec<Option<String>> = env
        .emulator
        .assets()
        .iter()
        .map(|asset| {
            asset
                .user_metadata
                .as_ref()
                .and_then(|m| m.get("tl_ingest_sha256"))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(stamps.len(), 2, "{stamps:?}");
    assert_eq!(stamps[0], None, "{stamps:?}");
    let second = env.emulator.assets()[1].sha256.clone();
    assert_eq!(stamps[1], second, "{stamps:?}");
}

/// A PATCH that keeps failing (5xx): tried a few times, then the upload
/// stands, unstamped, with a warning naming the asset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stamp_update_leaves_the_upload_ready() {
    let env = TestEnv::with(
        chunked_env_config(),
        Faults {
            user_metadata_status: 503,
            ..Faults::default()
        },
    )
    .await;
    let file = env.inbox.join("c.mp4");
    let sha = sparse_mp4(&file, 12u64 << 20);
    let out = env
        .upload_bin_with(&[&file], &["TL_INGEST__UPLOAD__MULTIPART_THRESHOLD=10MB"])
        .await;
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("could not add the sha256 stamp to the asset"),
        "{log}"
    );
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let rec = record_of(&ledger, &file).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
    ledger.close().await;
    let assets = env.emulator.assets();
    assert_eq!(assets.len(), 1);
    let stamp = assets[0]
        .user_metadata
        .as_ref()
        .and_then(|m| m.get("tl_ingest_sha256"));
    assert_eq!(stamp, None, "{assets:?}");
    assert_eq!(env.emulator.stats().user_metadata_updates, 0);
}

/// Killed after the platform completed the session but before the stamp
/// was added and the asset id committed: the next run finds the session
/// completed, adds the stamp, and commits that asset (RELIABILITY.md,
/// "Multipart sessions").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_completed_session_and_its_stamp_the_next_run_stamps_it() {
    let env = TestEnv::with(
        chunked_env_config(),
        Faults {
            // Every answer comes late: the completing report's too, so the
            // client is still waiting for it when it is killed.
            answer_delay_ms: 2000,
            ..Faults::default()
        },
    )
    .await;
    let file = env.inbox.join("late.mp4");
    let sha = sparse_mp4(&file, 12u64 << 20);
    let mut child = env
        .cmd(KEY)
        .env("TL_INGEST__UPLOAD__MULTIPART_THRESHOLD", "10MB")
        .arg("upload")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let emulator = &env.emulator;
    wait_until(crate::helpers::DEADLINE, "the session completed", || {
        let done = emulator.stats().multipart_completed;
        async move { done >= 1 }
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let assets = env.emulator.assets();
    assert_eq!(assets.len(), 1, "{assets:?}");
    let stamp_of = |a: &tl_ingest::emulator::AssetView| {
        a.user_metadata
            .as_ref()
            .and_then(|m| m.get("tl_ingest_sha256"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    assert_eq!(stamp_of(&assets[0]), None, "killed before the stamp");
    {
        let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
        let rec = record_of(&ledger, &file).await;
        assert_eq!(rec.asset_id, None, "killed before the commit");
        ledger.close().await;
    }

    env.emulator.set_faults(Faults::default());
    let out = env
        .upload_bin_with(&[&file], &["TL_INGEST__UPLOAD__MULTIPART_THRESHOLD=10MB"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let stats = env.emulator.stats();
    assert_eq!(stats.multipart_sessions, 1, "no second session: {stats:?}");
    let assets = env.emulator.assets();
    assert_eq!(assets.len(), 1, "{assets:?}");
    assert_eq!(stamp_of(&assets[0]).as_deref(), Some(sha.as_str()));
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let rec = record_of(&ledger, &file).await;
    assert_eq!(rec.state, "ready", "{}", dump(&ledger).await);
    assert_eq!(rec.asset_id.as_deref(), Some(assets[0].id.as_str()));
    assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()));
    ledger.close().await;
}
