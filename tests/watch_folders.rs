//! Watched folders that go away and come back (README.md, "Watched folders
//! that go away"): the real binary, its log, and the ledger it writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tl_ingest::emulator::Faults;
use tl_ingest::ledger::Ledger;

use crate::helpers::{KEY, Kind, TestEnv, dump, output, text, wait_until, write_media};

/// "Within a few seconds": the periodic rescan of these tests is an hour
/// away, so only noticing the folder's return can find the files in time.
const FEW_SECONDS: Duration = Duration::from_secs(15);

/// `tl-ingest run` with its log in a file the test reads while it runs.
struct Run {
    child: Option<Child>,
    log: PathBuf,
}

impl Run {
    fn start(env: &TestEnv, config: &Path) -> Run {
        let log = env.dir.path().join("daemon.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = env.bare_cmd(KEY);
        cmd.arg("--config").arg(config).arg("run");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn tl-ingest run");
        Run {
            child: Some(child),
            log,
        }
    }

    /// The log so far, without colours.
    fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Wait until `line` is in the log `times` times (or more).
    async fn wait_for_log(&mut self, line: &str, times: usize) {
        let end = tokio::time::Instant::now() + crate::helpers::DEADLINE;
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            tick.tick().await;
            if self.log().matches(line).count() >= times {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the daemon exited ({status}):\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < end,
                "no {line:?} ({times} times) in the log:\n{}",
                self.log()
            );
        }
    }

    /// SIGTERM, and its exit code 0.
    async fn stop(mut self) -> String {
        use rustix::process::{Pid, Signal, kill_process};
        let child = self.child.take().expect("running");
        kill_process(Pid::from_child(&child), Signal::TERM).expect("SIGTERM");
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await
        .expect("stops in time")
        .expect("join")
        .expect("wait");
        let log = self.log();
        assert_eq!(out.status.code(), Some(0), "{log}");
        log
    }
}

/// `text` without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn gone_line(root: &Path) -> String {
    format!(
        "watch folder {} is gone (removed or unmounted); waiting for it to come back",
        root.display()
    )
}

fn back_line(root: &Path) -> String {
    format!("watch folder {} is back", root.display())
}

/// Every record of `path`, oldest first: (state, sha256).
async fn records_of(env: &TestEnv, path: &Path) -> Vec<(String, Option<String>)> {
    let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
    let want = path.display().to_string();
    let mut all: Vec<_> = ledger
        .history(&[], None)
        .await
        .expect("history")
        .into_iter()
        .filter(|r| r.path.as_deref() == Some(want.as_str()))
        .map(|r| (r.id, r.state, r.sha256))
        .collect();
    ledger.close().await;
    all.sort();
    all.into_iter().map(|(_, s, h)| (s, h)).collect()
}

/// Wait, at most `within`, for the newest record of each path to be ready.
async fn ready_within(env: &TestEnv, paths: &[PathBuf], within: Duration) {
    let check = || async {
        let Ok(ledger) = Ledger::open_existing_at(&env.ledger).await else {
            return false;
        };
        let mut all = true;
        for p in paths {
            use std::os::unix::ffi::OsStrExt;
            let rec = ledger
                .latest_for_path(p.as_os_str().as_bytes())
                .await
                .ok()
                .flatten();
            all &= rec.is_some_and(|r| r.state == "ready");
        }
        ledger.close().await;
        all
    };
    let waited = tokio::time::timeout(within, async {
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            tick.tick().await;
            if check().await {
                return;
            }
        }
    })
    .await;
    if waited.is_err() {
        let ledger = Ledger::open_existing_at(&env.ledger).await.expect("ledger");
        panic!(
            "not all of {paths:?} ready within {within:?}; ledger:\n{}",
            dump(&ledger).await
        );
    }
}

/// The daemon's /metrics page (empty if it does not answer).
async fn metrics(port: u16) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return String::new();
    };
    resp.text().await.unwrap_or_default()
}

/// The value of the series `name{host=...}` on a metrics page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_removed_and_made_again_is_watched_again_within_seconds() {
    let env = TestEnv::new().await;
    // A free port for /metrics: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = env.write_daemon_config(&format!(
        "{}[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n",
        env.inbox_watch()
    ));
    let root = env.inbox.clone();
    let before = root.join("before.mp4");
    write_media(&before, Kind::Mp4, 5000, 1);
    let mut daemon = Run::start(&env, &config);
    ready_within(
        &env,
        std::slice::from_ref(&before),
        crate::helpers::DEADLINE,
    )
    .await;

    // What an operator's `rm -rf inbox && mkdir inbox` does, then a file
    // written at once (before the daemon can have watched the new folder).
    std::fs::remove_dir_all(&root).expect("rm -rf inbox");
    std::fs::create_dir(&root).expect("mkdir inbox");
    let early = root.join("early.mp4");
    write_media(&early, Kind::Mp4, 6000, 2);
    daemon.wait_for_log(&gone_line(&root), 1).await;
    daemon.wait_for_log(&back_line(&root), 1).await;

    // Once it is back: a file written, and one renamed in from elsewhere.
    let started = tokio::time::Instant::now();
    let written = root.join("written.mp4");
    write_media(&written, Kind::Mp4, 7000, 3);
    let elsewhere = env.dir.path().join("elsewhere.mp4");
    write_media(&elsewhere, Kind::Mp4, 8000, 4);
    let renamed = root.join("renamed.mp4");
    std::fs::rename(&elsewhere, &renamed).expect("rename in");
    let fresh = [early.clone(), written.clone(), renamed.clone()];
    ready_within(&env, &fresh, FEW_SECONDS).await;
    eprintln!(
        "RELIABILITY root_removed_and_made_again: new files ready {} ms after the folder was back",
        started.elapsed().as_millis()
    );

    // Gone for a while: `status`, `doctor` and the metrics say so.
    std::fs::remove_dir_all(&root).expect("rm -rf inbox");
    daemon.wait_for_log(&gone_line(&root), 2).await;
    let gauge = "tl_ingest_watch_folders_gone";
    let counter = "tl_ingest_watch_folders_gone_total";
    wait_until(
        crate::helpers::DEADLINE,
        "the metrics of a gone folder",
        || async {
            let page = metrics(port).await;
            metric(&page, gauge) == Some(1.0) && metric(&page, counter) == Some(2.0)
        },
    )
    .await;
    let mut status = env.bare_cmd(KEY);
    status.arg("--config").arg(&config).arg("status");
    let out = output(status).await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("watch folder {} is gone", root.display())),
        "{}",
        text(&out)
    );
    let mut doctor = env.bare_cmd(KEY);
    doctor.arg("--config").arg(&config).arg("doctor");
    let out = output(doctor).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("does not exist (removed, or a share not mounted?)"),
        "{}",
        text(&out)
    );
    std::fs::create_dir(&root).expect("mkdir inbox");
    daemon.wait_for_log(&back_line(&root), 2).await;
    wait_until(crate::helpers::DEADLINE, "the gauge back at 0", || async {
        metric(&metrics(port).await, gauge) == Some(0.0)
    })
    .await;

    let log = daemon.stop().await;
    assert_eq!(log.matches(&gone_line(&root)).count(), 2, "{log}");
    assert_eq!(log.matches(&back_line(&root)).count(), 2, "{log}");
    // The file that went with the folder keeps its record.
    assert_eq!(records_of(&env, &before).await.len(), 1);
    assert_eq!(records_of(&env, &before).await[0].0, "ready");
    let stats = env.emulator.stats();
    assert_eq!(stats.assets_created, 4, "{stats:?}");
    assert!(
        stats.uploads_by_sha256.values().all(|n| *n == 1),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_root_removed_and_made_again_is_polled_again() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch().replace(
        "[watcher]\n",
        "[watcher]\nmode = \"poll\"\npoll_interval = \"200ms\"\n",
    ));
    let root = env.inbox.clone();
    let mut daemon = Run::start(&env, &config);
    daemon.wait_for_log("watching by polling", 1).await;
    std::fs::remove_dir_all(&root).expect("rm -rf inbox");
    daemon.wait_for_log(&gone_line(&root), 1).await;
    std::fs::create_dir(&root).expect("mkdir inbox");
    daemon.wait_for_log(&back_line(&root), 1).await;
    // Watched again the way it was (the mode is chosen afresh).
    daemon.wait_for_log("watching by polling", 2).await;
    let written = root.join("written.mp4");
    write_media(&written, Kind::Mp4, 7000, 3);
    ready_within(&env, std::slice::from_ref(&written), FEW_SECONDS).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subfolder_removed_and_made_again_is_watched_again() {
    let env = TestEnv::new().await;
    let config = env.write_daemon_config(&env.inbox_watch());
    let sub = env.inbox.join("sub");
    let old = sub.join("old.mp4");
    write_media(&old, Kind::Mp4, 5000, 1);
    let daemon = Run::start(&env, &config);
    ready_within(&env, std::slice::from_ref(&old), crate::helpers::DEADLINE).await;

    std::fs::remove_dir_all(&sub).expect("rm -rf sub");
    std::fs::create_dir(&sub).expect("mkdir sub");
    let early = sub.join("early.mp4");
    write_media(&early, Kind::Mp4, 6000, 2);
    // A moment later (the new folder watched by then or not: either way).
    let nested = sub.join("deeper/later.mp4");
    write_media(&nested, Kind::Mp4, 7000, 3);
    let elsewhere = env.dir.path().join("elsewhere.mp4");
    write_media(&elsewhere, Kind::Mp4, 8000, 4);
    let renamed = sub.join("renamed.mp4");
    std::fs::rename(&elsewhere, &renamed).expect("rename in");
    ready_within(&env, &[early, nested, renamed], FEW_SECONDS).await;

    let log = daemon.stop().await;
    // The root never went.
    assert!(!log.contains("is gone"), "{log}");
    assert_eq!(records_of(&env, &old).await.len(), 1);
    assert_eq!(env.emulator.stats().assets_created, 4);
}

/// The newest record of `path`: (state, last error).
async fn newest(env: &TestEnv, path: &Path) -> Option<(String, Option<String>)> {
    use std::os::unix::ffi::OsStrExt;
    let ledger = Ledger::open_existing_at(&env.ledger).await.ok()?;
    let rec = ledger
        .latest_for_path(path.as_os_str().as_bytes())
        .await
        .ok()
        .flatten();
    ledger.close().await;
    rec.map(|r| (r.state, r.last_error))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_away_with_its_folder_waits_and_goes_up_when_the_folder_is_back() {
    // Every upload is refused with a 429 until the folder has gone: the
    // file is queued, not sent, when it goes.
    let env = TestEnv::with_faults(Faults {
        rate_limit: 1.0,
        retry_after_secs: 1,
        ..Faults::default()
    })
    .await;
    let config = env.write_daemon_config(&env.inbox_watch());
    // Enough tries (20 ms to 300 ms apart) for the test's steps.
    let patient = std::fs::read_to_string(&config)
        .expect("read")
        .replace("max_attempts = 12", "max_attempts = 40");
    std::fs::write(&config, patient).expect("write");
    let root = env.inbox.clone();
    let file = root.join("waiting.mp4");
    write_media(&file, Kind::Mp4, 5000, 1);
    let mut daemon = Run::start(&env, &config);
    let emulator = &env.emulator;
    wait_until(crate::helpers::DEADLINE, "a refused upload", || async {
        emulator.stats().injected_rate_limits > 0
    })
    .await;

    // The operator moves the folder away; the platform takes uploads again.
    let away = env.dir.path().join("inbox.away");
    std::fs::rename(&root, &away).expect("move the folder away");
    daemon.wait_for_log(&gone_line(&root), 1).await;
    env.emulator.set_faults(Faults::default());
    wait_until(
        crate::helpers::DEADLINE,
        "the file waiting for its folder",
        || async {
            newest(&env, &file)
                .await
                .is_some_and(|(_, e)| e.is_some_and(|e| e.contains("is gone")))
        },
    )
    .await;
    let (state, _) = newest(&env, &file).await.expect("record");
    assert_ne!(state, "failed", "a file away with its folder is not failed");

    std::fs::rename(&away, &root).expect("move the folder back");
    daemon.wait_for_log(&back_line(&root), 1).await;
    ready_within(&env, std::slice::from_ref(&file), FEW_SECONDS).await;
    daemon.stop().await;
    assert_eq!(records_of(&env, &file).await.len(), 1, "the same record");
    assert_eq!(env.emulator.stats().assets_created, 1);
}

/// Mounts made by the test, undone whatever happens.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
    }
}

fn mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn umount(path: &Path) {
    let out = Command::new("umount").arg(path).output().expect("umount");
    assert!(
        out.status.success(),
        "umount {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copy keeping the mtime (`cp -p`), as a share that comes back keeps it.
fn copy_keeping_mtime(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-p")
        .arg(from)
        .arg(to)
        .output()
        .expect("cp");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tmpfs_unmounted_and_mounted_again_sends_only_the_new_files() {
    let env = TestEnv::new().await;
    let root = env.inbox.clone();
    let root_s = root.display().to_string();
    let mut mounts = Mounts(Vec::new());
    if let Err(e) = mount(&["-t", "tmpfs", "-o", "size=8m", "tmpfs", &root_s]) {
        eprintln!("skipped: cannot mount a tmpfs on {root_s} ({e}); needs root");
        return;
    }
    mounts.0.push(root.clone());
    let config = env.write_daemon_config(&env.inbox_watch());
    let a = root.join("a.mp4");
    let b = root.join("sub/b.mp4");
    write_media(&a, Kind::Mp4, 5000, 1);
    write_media(&b, Kind::Mp4, 6000, 2);
    let mut daemon = Run::start(&env, &config);
    ready_within(&env, &[a.clone(), b.clone()], crate::helpers::DEADLINE).await;
    // What the share holds, kept aside with its mtimes.
    let saved = env.dir.path().join("saved");
    std::fs::create_dir(&saved).expect("mkdir");
    copy_keeping_mtime(&a, &saved.join("a.mp4"));
    copy_keeping_mtime(&b, &saved.join("b.mp4"));
    let numbers = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).expect("stat");
        (m.dev(), m.ino())
    };
    let first_numbers = [numbers(&a), numbers(&b)];
    // The share as it will come back: another tmpfs, mounted now so that
    // it cannot be given the first one's device number once that is free.
    let stage = env.dir.path().join("stage");
    std::fs::create_dir(&stage).expect("mkdir stage");
    let stage_s = stage.display().to_string();
    if let Err(e) = mount(&["-t", "tmpfs", "-o", "size=8m", "tmpfs", &stage_s]) {
        panic!("mounting a second tmpfs failed after the first worked: {e}");
    }
    mounts.0.push(stage.clone());

    // Unmounted: the folder underneath is what is at the path now. It is
    // watched, and a file written into it is sent like any other.
    umount(&root);
    mounts.0.retain(|m| m != &root);
    daemon.wait_for_log(&gone_line(&root), 1).await;
    daemon.wait_for_log(&back_line(&root), 1).await;
    let under = root.join("under.mp4");
    write_media(&under, Kind::Mp4, 7000, 3);
    ready_within(&env, std::slice::from_ref(&under), FEW_SECONDS).await;

    // Mounted again (a new tmpfs: new device and inodes), with what it
    // held, mtimes kept, and a new file: it is made ready aside and
    // appears at the path all at once, as a share does.
    std::fs::write(stage.join("other.txt"), b"made first").expect("write");
    std::fs::create_dir(stage.join("sub")).expect("mkdir");
    copy_keeping_mtime(&saved.join("a.mp4"), &stage.join("a.mp4"));
    copy_keeping_mtime(&saved.join("b.mp4"), &stage.join("sub/b.mp4"));
    // The files come back as other files to the kernel: only their path,
    // size and mtime say they are the same.
    let again = [
        numbers(&stage.join("a.mp4")),
        numbers(&stage.join("sub/b.mp4")),
    ];
    for (first, again) in first_numbers.iter().zip(&again) {
        assert_ne!(first, again, "new device or inode numbers");
    }
    let new = root.join("new.mp4");
    write_media(&stage.join("new.mp4"), Kind::Mp4, 8000, 4);
    mount(&["--bind", &stage_s, &root_s]).expect("bind the staged tmpfs on the root");
    let remounted = tokio::time::Instant::now();
    mounts.0.push(root.clone());
    daemon.wait_for_log(&back_line(&root), 2).await;
    ready_within(&env, std::slice::from_ref(&new), FEW_SECONDS).await;
    eprintln!(
        "RELIABILITY tmpfs_remounted: new file ready {} ms after the mount",
        remounted.elapsed().as_millis()
    );

    // A file written after the return goes too (the new mount is watched).
    let later = root.join("later.mp4");
    write_media(&later, Kind::Mp4, 9000, 5);
    ready_within(&env, std::slice::from_ref(&later), FEW_SECONDS).await;

    let log = daemon.stop().await;
    assert_eq!(log.matches(&gone_line(&root)).count(), 2, "{log}");
    assert_eq!(log.matches(&back_line(&root)).count(), 2, "{log}");
    // The files that came back are the records they had: not read again
    // (without adoption they would be hashed in full, then merged into
    // their records), not sent twice.
    let adopted = log
        .lines()
        .filter(|l| l.contains("files found again as they were recorded: not read or sent again"))
        .collect::<Vec<_>>();
    assert!(
        adopted.len() == 1 && adopted[0].contains("files=2"),
        "{log}"
    );
    for p in [&a, &b] {
        let recs = records_of(&env, p).await;
        assert_eq!(recs.len(), 1, "{}: {recs:?}", p.display());
        assert_eq!(recs[0].0, "ready", "{}", p.display());
    }
    // The file written underneath is hidden by the mount; its record stays.
    assert_eq!(records_of(&env, &under).await.len(), 1);
    let stats = env.emulator.stats();
    assert_eq!(
        stats.assets_created, 5,
        "a, b, under, new, later: {stats:?}"
    );
    assert!(
        stats.uploads_by_sha256.values().all(|n| *n == 1),
        "{stats:?}"
    );
    drop(mounts);
}
