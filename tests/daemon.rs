//! The daemon in-process: watching, settling, restarts, moves; and as the
//! real binary, where what it logs is the point: reloads and the rescan
//! safety net.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::Signal;
use tl_ingest::ledger::Ledger;

use crate::helpers::{DEADLINE, KEY, Kind, TestEnv, write_media};

/// `tl-ingest run` as a child process, its log (stderr) read as it comes.
struct Logged {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Logged {
    fn run(env: &TestEnv, config: &Path) -> Logged {
        let mut cmd = env.bare_cmd(KEY);
        cmd.arg("--config")
            .arg(config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tl-ingest run");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Logged { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// The first log line containing `needle`, once there is one (a
    /// bounded poll: the log is another process's).
    async fn wait_for_line(&mut self, needle: &str) -> String {
        let end = tokio::time::Instant::now() + DEADLINE;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited ({status}) before logging {needle:?}:\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < end,
                "no log line with {needle:?} in time:\n{log}"
            );
        }
    }

    fn signal(&self, sig: Signal) {
        use rustix::process::{Pid, kill_process};
        kill_process(Pid::from_child(&self.child), sig).expect("send signal");
    }

    /// SIGTERM, and it exits 0 in time.
    async fn stop(mut self) {
        self.signal(Signal::TERM);
        let end = tokio::time::Instant::now() + DEADLINE;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let status = loop {
            tick.tick().await;
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(tokio::time::Instant::now() < end, "no exit in time");
        };
        assert!(status.success(), "{status:?}\n{}", self.log());
    }
}

impl Drop for Logged {
    /// A test that fails leaves no daemon behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn ready_count(env: &TestEnv) -> usize {
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let n = ledger
        .history(&[tl_ingest::ledger::FileState::Ready], None)
        .await
        .expect("history")
        .len();
    ledger.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_before_during_and_while_down_are_ready_once() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let before = env.inbox.join("before.mp4");
    write_media(&before, Kind::Mp4, 30_000, 1);

    let mut daemon = env.start_daemon(&config);
    let during = env.inbox.join("sub/dir/during.mov");
    write_media(&during, Kind::Mp4, 40_000, 2);
    daemon
        .wait(&env, &[before.clone(), during.clone()], "ready")
        .await;
    daemon.stop().await;

    let while_down = env.inbox.join("down.wav");
    write_media(&while_down, Kind::Wav, 20_000, 3);
    let mut daemon = env.start_daemon(&config);
    daemon
        .wait(&env, std::slice::from_ref(&while_down), "ready")
        .await;
    daemon.stop().await;

    let stats = env.emulator.stats();
    assert_eq!(stats.assets_created, 3, "{stats:?}");
    assert!(
        stats.uploads_by_sha256.values().all(|n| *n == 1),
        "{stats:?}"
    );

    // A restart over known files sends nothing.
    let mut daemon = env.start_daemon(&config);
    let marker = env.inbox.join("marker.mp4");
    write_media(&marker, Kind::Mp4, 1000, 4);
    daemon.wait(&env, &[marker], "ready").await;
    daemon.stop().await;
    assert_eq!(env.emulator.stats().assets_created, 4, "only the new file");
    assert_eq!(ready_count(&env).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_is_uploaded_once_with_its_final_bytes() {
    use std::io::Write;
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut daemon = env.start_daemon(&config);
    let slow = env.inbox.join("slow.mp4");
    let mut f = std::fs::File::create(&slow).expect("create");
    let mut all = crate::helpers::media(Kind::Mp4, 1000, 9);
    f.write_all(&all).expect("write");
    // Append every 100 ms for 2 s: longer than the 300 ms settle time in
    // total, never still for that long. (The pace of the writer is the
    // scenario, not a wait for the daemon.)
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for i in 0..20u8 {
        pace.tick().await;
        let chunk = vec![i; 5000];
        f.write_all(&chunk).expect("append");
        f.flush().expect("flush");
        all.extend_from_slice(&chunk);
    }
    drop(f);
    daemon
        .wait(&env, std::slice::from_ref(&slow), "ready")
        .await;
    daemon.stop().await;
    let stats = env.emulator.stats();
    assert_eq!(stats.create_requests, 1, "uploaded once: {stats:?}");
    let sha = crate::helpers::sha256_hex(&all);
    assert_eq!(
        stats.uploads_by_sha256.get(&sha),
        Some(&1),
        "with its final bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_moved_within_the_root_after_upload_is_not_uploaded_again() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut daemon = env.start_daemon(&config);
    let first = env.inbox.join("a.mp4");
    write_media(&first, Kind::Mp4, 25_000, 5);
    daemon
        .wait(&env, std::slice::from_ref(&first), "ready")
        .await;
    let moved = env.inbox.join("archive/renamed.mp4");
    std::fs::create_dir_all(moved.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&first, &moved).expect("move");
    daemon
        .wait(&env, std::slice::from_ref(&moved), "duplicate")
        .await;
    daemon.stop().await;
    assert_eq!(env.emulator.stats().create_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_root_and_a_broken_config_is_rejected() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut daemon = Logged::run(&env, &config);
    daemon.wait_for_line("start-up scan finished").await;
    let second = env.dir.path().join("second");
    std::fs::create_dir(&second).expect("mkdir");
    let with_second = |good: &str| {
        format!(
            "{good}[[watch]]\npath = {:?}\n",
            second.display().to_string()
        )
    };

    // Broken (and naming the second root): the reload is refused, with
    // the configuration's error, and the daemon keeps the old config.
    let good = std::fs::read_to_string(&config).expect("read");
    assert!(good.contains("[upload]\n"), "{good}");
    let broken = with_second(&good).replace("[upload]\n", "[upload]\nwokers = 3\n");
    std::fs::write(&config, broken).expect("break it");
    daemon.signal(Signal::HUP);
    let refused = daemon.wait_for_line("configuration not reloaded").await;
    assert!(refused.contains("wokers"), "the config's error: {refused}");
    assert!(
        !daemon.log().contains("configuration reloaded"),
        "{}",
        daemon.log()
    );
    let a = env.inbox.join("still-working.mp4");
    write_media(&a, Kind::Mp4, 5000, 6);
    env.wait_for_state(std::slice::from_ref(&a), "ready").await;

    // Fixed, with the second root: files there are picked up.
    std::fs::write(&config, with_second(&good)).expect("write");
    daemon.signal(Signal::HUP);
    daemon.wait_for_line("configuration reloaded").await;
    let b = second.join("new-root.mp4");
    write_media(&b, Kind::Mp4, 6000, 7);
    env.wait_for_state(std::slice::from_ref(&b), "ready").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_rescan_catches_what_the_watcher_missed() {
    // A poll watcher that will not look again for an hour stands in for a
    // watcher that lost its events: only the rescan can find the file.
    let env = TestEnv::new().await;
    let extra = format!(
        "[watcher]\nmode = \"poll\"\npoll_interval = \"1h\"\nsettle = \"200ms\"\nrescan_interval = \"400ms\"\n[[watch]]\npath = {:?}\n",
        env.inbox.display().to_string()
    );
    let config = env.write_daemon_config(&extra);
    let mut daemon = Logged::run(&env, &config);
    // The poll watcher has its snapshot and the start-up scan is over,
    // both without the file.
    daemon.wait_for_line("start-up scan finished").await;
    let missed = env.inbox.join("missed.mp4");
    write_media(&missed, Kind::Mp4, 7000, 8);
    env.wait_for_state(std::slice::from_ref(&missed), "ready")
        .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_watch_folder_is_a_configuration_error() {
    let env = TestEnv::new().await;
    let extra = "[[watch]]\npath = \"/definitely/not/a/folder\"\n";
    let config = env.write_daemon_config(extra);
    let daemon = env.start_daemon(&config);
    let result = tokio::time::timeout(Duration::from_secs(10), daemon.task)
        .await
        .expect("returns at once")
        .expect("join");
    let err = result.expect_err("must refuse to start");
    let msg = err.to_string();
    assert!(
        msg.contains("watch[0].path") && msg.contains("/definitely/not/a/folder"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_are_served() {
    let env = TestEnv::new().await;
    // A free port: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let extra = format!(
        "{}[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n",
        env.inbox_watch()
    );
    let config = env.write_daemon_config(&extra);
    let mut daemon = env.start_daemon(&config);
    let clip = env.inbox.join("counted.mp4");
    write_media(&clip, Kind::Mp4, 12_345, 11);
    daemon
        .wait(&env, std::slice::from_ref(&clip), "ready")
        .await;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    // Gauges are refreshed by the status tick: wait for the ready count.
    crate::helpers::wait_until(
        crate::helpers::DEADLINE,
        "metrics showing the upload",
        || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let Ok(resp) = http.get(format!("{base}/metrics")).send().await else {
                    return false;
                };
                let page = resp.text().await.unwrap_or_default();
                // Every series carries the host label, first.
                let host = format!("host=\"{}\"", tl_ingest::host::host_name());
                let uploaded = page
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix(&format!("tl_ingest_uploaded_bytes_total{{{host}}} "))
                    })
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                let ready_gauge = page.lines().any(|l| {
                    l.starts_with(&format!("tl_ingest_files{{{host},state=\"ready\"}}"))
                        && l.split_whitespace()
                            .last()
                            .and_then(|v| v.parse::<f64>().ok())
                            >= Some(1.0)
                });
                uploaded >= 12_345.0
                    && ready_gauge
                    && page.contains("tl_ingest_upload_duration_seconds")
            }
        },
    )
    .await;
    daemon.stop().await;
}
