//! The daemon as systemd runs it: the real binary, signals, the notify
//! socket, the ledger lock, and the unit file.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use tl_ingest::emulator::Faults;
use tl_ingest::ledger::Ledger;

use crate::helpers::{KEY, Kind, TestEnv, dump, output, record_of, text, write_media};

fn spawn_run(env: &TestEnv, config: &Path, notify: Option<&Path>) -> Child {
    let mut cmd = env.bare_cmd(KEY);
    cmd.arg("--config").arg(config).arg("run");
    if let Some(sock) = notify {
        cmd.env("NOTIFY_SOCKET", sock);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tl-ingest run")
}

fn signal(child: &Child, sig: &str) {
    use rustix::process::{Pid, Signal, kill_process};
    let sig = match sig {
        "TERM" => Signal::TERM,
        "HUP" => Signal::HUP,
        other => panic!("no such signal in these tests: {other}"),
    };
    kill_process(Pid::from_child(child), sig).expect("send signal");
}

/// Wait for the child to exit, at most `limit`; its status and stderr.
async fn exit_within(child: Child, limit: Duration) -> (Option<i32>, String) {
    let waited = tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let out = waited.expect("exits in time").expect("join").expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Receive notify datagrams until one contains `want` (or time runs out).
async fn expect_notification(sock: &UnixDatagram, seen: &mut Vec<String>, want: &str) {
    let sock = sock.try_clone().expect("clone socket");
    let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
    while !seen.iter().any(|m| m.contains(want)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {want} in {seen:?}"
        );
        let s = sock.try_clone().expect("clone");
        let msg = tokio::task::spawn_blocking(move || {
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            let mut buf = [0u8; 4096];
            s.recv(&mut buf)
                .ok()
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .await
        .expect("join");
        if let Some(m) = msg {
            seen.push(m);
        }
    }
    drop(sock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_status_and_stopping_and_a_second_daemon_exits_3() {
    // SQLite in both passes: the second daemon is refused by the ledger's
    // lock file, and `status` names the holder from it. (A PostgreSQL
    // ledger is shared by a fleet: a second daemon is welcome there.)
    let env = TestEnv::sqlite().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let a = env.inbox.join("a.mp4");
    write_media(&a, Kind::Mp4, 10_000, 1);

    let daemon = spawn_run(&env, &config, Some(&sock_path));
    let mut seen = Vec::new();
    expect_notification(&sock, &mut seen, "READY=1").await;
    expect_notification(&sock, &mut seen, "STATUS=").await;

    // The same ledger cannot have two daemons.
    let mut second = env.bare_cmd(KEY);
    second.arg("--config").arg(&config).arg("run");
    let out = output(second).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains(&format!("pid {}", daemon.id())), "{msg}");

    // `status` sees the daemon.
    let mut status = env.bare_cmd(KEY);
    status.arg("--config").arg(&config).arg("status");
    let out = output(status).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("running (pid {}", daemon.id())),
        "{}",
        text(&out)
    );

    signal(&daemon, "TERM");
    expect_notification(&sock, &mut seen, "STOPPING=1").await;
    let (code, stderr) = exit_within(daemon, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_socket_nobody_reads_does_not_stall_the_daemon() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    // Fill its queue (net.unix.max_dgram_qlen datagrams), as a supervisor
    // that stopped reading leaves it: every notification would block.
    let filler = UnixDatagram::unbound().expect("socket");
    filler.set_nonblocking(true).expect("non-blocking");
    let mut queued = 0;
    loop {
        match filler.send_to(b"FILLER=1\n", &sock_path) {
            Ok(_) => queued += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the notify socket: {e}"),
        }
        assert!(queued < 100_000, "the notify socket never filled");
    }

    let daemon = spawn_run(&env, &config, Some(&sock_path));
    let before = env.inbox.join("before.mp4");
    write_media(&before, Kind::Mp4, 5000, 1);
    env.wait_for_state(std::slice::from_ref(&before), "ready")
        .await;
    // Still turning after STATUS= refreshes were refused.
    let after = env.inbox.join("after.mp4");
    write_media(&after, Kind::Mp4, 6000, 2);
    env.wait_for_state(std::slice::from_ref(&after), "ready")
        .await;

    // Reading again, the supervisor hears from it again.
    let mut seen = Vec::new();
    expect_notification(&sock, &mut seen, "STATUS=").await;
    signal(&daemon, "TERM");
    expect_notification(&sock, &mut seen, "STOPPING=1").await;
    let (code, stderr) = exit_within(daemon, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_upload_exits_0_within_the_grace_and_the_next_start_finishes() {
    // Every request takes 3 s: uploads are in flight when SIGTERM comes,
    // and a 300 ms grace is not enough for them.
    let env = TestEnv::with_faults(Faults {
        latency_ms: 3000,
        ..Faults::default()
    })
    .await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let text_config = std::fs::read_to_string(&config)
        .expect("read")
        .replace("[upload]\n", "[upload]\nshutdown_grace = \"300ms\"\n");
    std::fs::write(&config, text_config).expect("write");
    let files: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = env.inbox.join(format!("clip{i}.mp4"));
            write_media(&p, Kind::Mp4, 50_000, 40 + i);
            p
        })
        .collect();

    let daemon = spawn_run(&env, &config, None);
    let location = env.ledger.clone();
    crate::helpers::wait_until(crate::helpers::DEADLINE, "uploads in flight", || {
        let location = location.clone();
        async move {
            let Ok(l) = Ledger::open_existing_at(&location).await else {
                return false;
            };
            let n = l.in_flight().await.map(|v| v.len()).unwrap_or(0);
            l.close().await;
            n > 0
        }
    })
    .await;
    signal(&daemon, "TERM");
    let (code, stderr) = exit_within(daemon, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{stderr}");

    // Nothing is left claimed: every record can be picked up again.
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    assert!(
        ledger.in_flight().await.expect("q").is_empty(),
        "{}",
        dump(&ledger).await
    );
    ledger.close().await;

    env.emulator.set_faults(Faults::default());
    let daemon = spawn_run(&env, &config, None);
    env.wait_for_state(&files, "ready").await;
    signal(&daemon, "TERM");
    let (code, stderr) = exit_within(daemon, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    for f in &files {
        assert_eq!(record_of(&ledger, f).await.state, "ready");
    }
    let stats = env.emulator.stats();
    assert!(
        stats.uploads_by_sha256.values().all(|n| *n == 1),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_daemon_running() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let daemon = spawn_run(&env, &config, None);
    let before = env.inbox.join("before.mp4");
    write_media(&before, Kind::Mp4, 5000, 1);
    env.wait_for_state(std::slice::from_ref(&before), "ready")
        .await;

    let good = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, "this is [not toml").expect("break");
    signal(&daemon, "HUP");
    let after = env.inbox.join("after.mp4");
    write_media(&after, Kind::Mp4, 6000, 2);
    env.wait_for_state(std::slice::from_ref(&after), "ready")
        .await;

    // The key pasted where a URL belongs: the refusal may quote the value,
    // and the log must not show it.
    let pasted = good
        .lines()
        .map(|l| {
            if l.starts_with("base_url") {
                format!("base_url = {KEY:?}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(pasted.contains(KEY), "{pasted}");
    std::fs::write(&config, pasted).expect("paste the key");
    signal(&daemon, "HUP");
    let later = env.inbox.join("later.mp4");
    write_media(&later, Kind::Mp4, 7000, 3);
    env.wait_for_state(std::slice::from_ref(&later), "ready")
        .await;
    std::fs::write(&config, good).expect("restore");

    signal(&daemon, "TERM");
    let (code, stderr) = exit_within(daemon, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("configuration not reloaded").count(),
        2,
        "{stderr}"
    );
    assert!(!stderr.contains(KEY), "the key was logged: {stderr}");
}

/// A reload that names a new key (a new key file) and fails on something
/// else that quotes the new key: the error logged is redacted with the new
/// key as well as the running one.
#[tokio::test]
async fn a_failed_reload_is_redacted_with_the_new_key_too() {
    const NEW_KEY: &str = "tlk_the_new_key_0123456789";
    let env = TestEnv::new().await;
    let write_key = |name: &str, key: &str| {
        use std::os::unix::fs::PermissionsExt;
        let path = env.dir.path().join(name);
        std::fs::write(&path, key).expect("key file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    };
    let old_file = write_key("old.key", KEY);
    let new_file = write_key("new.key", NEW_KEY);
    let base = env.write_daemon_config(&env.inbox_watch());
    let good = std::fs::read_to_string(&base).expect("read").replacen(
        "[api]\n",
        &format!("[api]\nkey_file = {:?}\n", old_file.display().to_string()),
        1,
    );
    std::fs::write(&base, &good).expect("config");
    let mut cmd = env.bare_cmd(KEY);
    cmd.env_remove("TWELVELABS_API_KEY");
    let daemon = cmd
        .arg("--config")
        .arg(&base)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tl-ingest run");
    let before = env.inbox.join("before.mp4");
    write_media(&before, Kind::Mp4, 5000, 1);
    env.wait_for_state(std::slice::from_ref(&before), "ready")
        .await;

    // The new key file, and the new key pasted as a folder to watch.
    let missing = env.dir.path().join(NEW_KEY);
    let broken = good.replace(
        &old_file.display().to_string(),
        &new_file.display().to_string(),
    ) + &format!("[[watch]]\npath = {:?}\n", missing.display().to_string());
    assert!(broken.contains(&new_file.display().to_string()), "{broken}");
    std::fs::write(&base, broken).expect("break");
    signal(&daemon, "HUP");
    let later = env.inbox.join("later.mp4");
    write_media(&later, Kind::Mp4, 6000, 2);
    env.wait_for_state(std::slice::from_ref(&later), "ready")
        .await;
    std::fs::write(&base, good).expect("restore");
    signal(&daemon, "TERM");
    let (code, stderr) = exit_within(daemon, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("configuration not reloaded").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("<redacted>"),
        "the folder is named, redacted: {stderr}"
    );
    assert!(
        !stderr.contains(NEW_KEY),
        "the new key was logged: {stderr}"
    );
    assert!(
        !stderr.contains(KEY),
        "the running key was logged: {stderr}"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let have = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("systemd-analyze is not installed; unit verification skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/tl-ingest.service"
    ))
    .expect("read unit")
    .replace("/usr/bin/tl-ingest", env!("CARGO_BIN_EXE_tl-ingest"));
    let path = dir.path().join("tl-ingest.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("tl-ingest.service:"), "warnings: {stderr}");
}
