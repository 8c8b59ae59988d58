//! Bad setups: a configuration, key file or ledger that cannot work. Each
//! is one clear message and exit 2 from both `run` and `upload`, and
//! nothing on disk is overwritten or created.
//!
//! Covered elsewhere and listed in RELIABILITY.md: typos with suggestions
//! (`ops_config::config_check_typo_exits_2_with_file_and_suggestion`),
//! `config check` on missing folders and key files
//! (`ops_config::config_check_finds_missing_folders_and_unreadable_key_file`),
//! a corrupt ledger opened in-process (`ledger::a_corrupt_ledger_is_a_clear_error`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{NOBODY, assert_no_panic, figures, is_root};
use crate::helpers::{KEY, Kind, TestEnv, output, text, write_media};

/// Every file under `dir` and its bytes: what "nothing overwritten" compares.
/// Lock files are left out: they hold the pid of whoever tried last.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| e.path().extension().is_none_or(|x| x != "lock"))
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            (e.into_path(), bytes)
        })
        .collect()
}

/// A config for the test's emulator with `api` lines added to `[api]`,
/// the ledger at `ledger`, `upload` lines in `[upload]`, and `tail` last.
fn config(env: &TestEnv, api: &str, ledger: &Path, upload: &str, tail: &str) -> String {
    format!(
        "[api]\nbase_url = {:?}\npoll_interval = \"30ms\"\n{api}[ledger]\npath = {:?}\n\
         [upload]\ninitial_backoff = \"20ms\"\nmax_backoff = \"300ms\"\n{upload}{tail}",
        env.emulator.base_url(),
        ledger.display().to_string(),
    )
}

/// `[[watch]]` on the inbox.
fn watch(env: &TestEnv) -> String {
    format!("[[watch]]\npath = {:?}\n", env.inbox.display().to_string())
}

fn at(env: &TestEnv, name: &str) -> PathBuf {
    env.dir.path().join(name)
}

/// One bad setup: its config, what to prepare, the words its message must hold.
struct Case {
    name: &'static str,
    toml: fn(&TestEnv) -> String,
    prepare: fn(&TestEnv),
    expect: &'static [&'static str],
    /// Run as `nobody` when the test runs as root (permission cases).
    drop_privileges: bool,
    /// Remove `TWELVELABS_API_KEY`, so that the key file is read.
    key_from_file: bool,
    /// Only the daemon reads it (`upload` takes its folders from the command line).
    daemon_only: bool,
}

fn nothing(_: &TestEnv) {}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "invalid TOML",
            toml: |_| "[upload\nworkers = 2\n".into(),
            prepare: nothing,
            expect: &["config.toml", "line 1"],
            drop_privileges: false,
            key_from_file: false,
            daemon_only: false,
        },
        Case {
            name: "wrong type",
            toml: |env| {
                config(
                    env,
                    "",
                    &env.ledger_path,
                    "workers = \"four\"\n",
                    &watch(env),
                )
            },
            prepare: nothing,
            expect: &["config.toml", "workers"],
            drop_privileges: false,
            key_from_file: false,
            daemon_only: false,
        },
        Case {
            name: "unknown key",
            toml: |env| config(env, "", &env.ledger_path, "wrokers = 4\n", &watch(env)),
            prepare: nothing,
            expect: &["config.toml", "unknown key `wrokers`", "workers"],
            drop_privileges: false,
            key_from_file: false,
            daemon_only: false,
        },
        Case {
            name: "missing watch folder",
            toml: |env| {
                let missing = at(env, "no-such-inbox").display().to_string();
                config(
                    env,
                    "",
                    &env.ledger_path,
                    "",
                    &format!("[[watch]]\npath = {missing:?}\n"),
                )
            },
            prepare: nothing,
            expect: &["no-such-inbox"],
            drop_privileges: false,
            key_from_file: false,
            daemon_only: true,
        },
        Case {
            name: "unreadable key file",
            toml: |env| {
                let key = at(env, "key-is-a-folder").display().to_string();
                config(
                    env,
                    &format!("key_file = {key:?}\n"),
                    &env.ledger_path,
                    "",
                    &watch(env),
                )
            },
            prepare: |env| std::fs::create_dir(at(env, "key-is-a-folder")).expect("mkdir"),
            expect: &["API key file", "key-is-a-folder"],
            drop_privileges: false,
            key_from_file: true,
            daemon_only: false,
        },
        Case {
            name: "ledger in a read-only folder",
            toml: |env| config(env, "", &at(env, "ro/ledger.db"), "", &watch(env)),
            prepare: |env| {
                let ro = at(env, "ro");
                std::fs::create_dir(&ro).expect("mkdir");
                std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555))
                    .expect("chmod");
            },
            expect: &["ro/ledger.db"],
            drop_privileges: true,
            key_from_file: false,
            daemon_only: false,
        },
        Case {
            name: "corrupt ledger",
            toml: |env| config(env, "", &at(env, "junk.db"), "", &watch(env)),
            prepare: |env| std::fs::write(at(env, "junk.db"), vec![0x42u8; 8192]).expect("junk"),
            expect: &["junk.db", "not a valid SQLite ledger"],
            drop_privileges: false,
            key_from_file: false,
            daemon_only: false,
        },
    ]
}

/// Nothing that was there is changed or gone; returns the names of files
/// that appeared (a lock file, a new empty ledger), for the figures.
fn assert_untouched(
    what: &str,
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<String> {
    for (path, bytes) in before {
        assert_eq!(
            after.get(path),
            Some(bytes),
            "{what}: {} changed",
            path.display()
        );
    }
    after
        .keys()
        .filter(|p| !before.contains_key(*p))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_setup_is_one_clear_message_and_exit_2_with_nothing_overwritten() {
    let mut outcomes = Vec::new();
    for case in cases() {
        // SQLite in both passes: the cases put the ledger file in a
        // read-only folder or fill it with junk, and "nothing created" is
        // checked on the files in the folder.
        let env = TestEnv::sqlite().await;
        write_media(&env.inbox.join("a.mp4"), Kind::Mp4, 3_000, 1);
        (case.prepare)(&env);
        let config = env.dir.path().join("config.toml");
        std::fs::write(&config, (case.toml)(&env)).expect("write config");
        if case.drop_privileges && is_root() {
            std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
        }
        for args in [vec!["run"], vec!["upload", "inbox"]] {
            let before = snapshot(env.dir.path());
            if case.daemon_only && args[0] != "run" {
                continue;
            }
            let mut cmd: Command = env.bare_cmd(KEY);
            if case.key_from_file {
                cmd.env_remove("TWELVELABS_API_KEY");
            }
            cmd.arg("--config").arg(&config).args(&args);
            if case.drop_privileges && is_root() {
                cmd.uid(NOBODY).gid(NOBODY);
            }
            let out = output(cmd).await;
            let all = text(&out);
            let what = format!("{} ({})", case.name, args[0]);
            assert_no_panic(&what, &all);
            assert_eq!(out.status.code(), Some(2), "{what}: {all}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            for word in case.expect {
                assert!(stderr.contains(word), "{what}: no {word:?} in:\n{all}");
            }
            let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
            assert!(lines <= 8, "{what}: one message, not a flood:\n{all}");
            let appeared = assert_untouched(&what, &before, &snapshot(env.dir.path()));
            // The lock file may appear; a new, empty ledger may not.
            let ledger_name = env
                .ledger_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            assert!(
                !appeared
                    .iter()
                    .any(|n| n.starts_with(&ledger_name) && !n.ends_with(".lock")),
                "{what}: a new ledger was left behind: {appeared:?}"
            );
            if appeared.is_empty() {
                outcomes.push(format!("{what}=2"));
            } else {
                outcomes.push(format!("{what}=2(created:{})", appeared.join("+")));
            }
        }
    }
    figures("bad_setups", &[("exit_codes", outcomes.join(";"))]);
}

/// A small tmpfs for the ledger, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| SmallDisk {
            path: path.to_path_buf(),
        })
    }

    /// Fill it: a file as large as the free space allows.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join("filler")).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_for_the_ledger_is_a_clear_error_and_exit_2() {
    // SQLite in both passes: the ledger file is on the disk that fills.
    let env = TestEnv::sqlite().await;
    let mount = env.dir.path().join("small");
    // Room for a new ledger's first run, whose WAL holds every migration
    // until a checkpoint (about 470 KiB at migration 0009); `fill` then
    // takes whatever is left.
    let Some(disk) = SmallDisk::mount(&mount, "1m") else {
        eprintln!(
            "skipped: cannot mount a small tmpfs here (needs root and mount permission); the full-disk case was not tried"
        );
        return;
    };
    let ledger = mount.join("ledger.db");
    let config = env.dir.path().join("full.toml");
    let base = std::fs::read_to_string(env.write_config()).expect("read config");
    let base = base.replace(
        &format!("path = {:?}", env.ledger_path.display().to_string()),
        &format!("path = {:?}", ledger.display().to_string()),
    );
    // `run` needs a folder to watch before it gets to the ledger.
    std::fs::write(&config, format!("{base}{}", watch(&env))).expect("write config");

    // A ledger that exists, then the disk fills up; new files come.
    write_media(&env.inbox.join("first.mp4"), Kind::Mp4, 3_000, 1);
    let mut cmd = env.bare_cmd(KEY);
    cmd.arg("--config").arg(&config).args(["upload", "inbox"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    disk.fill();
    for i in 0..40 {
        write_media(
            &env.inbox.join(format!("more{i}.mp4")),
            Kind::Mp4,
            3_000,
            10 + i,
        );
    }
    let before = std::fs::read(&ledger).expect("ledger bytes");
    let mut codes = Vec::new();
    let mut message = String::new();
    for args in [vec!["upload", "inbox"], vec!["run"]] {
        let mut cmd = env.bare_cmd(KEY);
        cmd.arg("--config").arg(&config).args(&args);
        let out = tokio::time::timeout(crate::helpers::DEADLINE, output(cmd))
            .await
            .expect("ends by itself");
        let all = text(&out);
        assert_no_panic(args[0], &all);
        assert_eq!(out.status.code(), Some(2), "{}: {all}", args[0]);
        assert!(
            all.contains("ledger.db") && all.contains("full"),
            "{}: says the ledger's disk is full: {all}",
            args[0]
        );
        codes.push(format!("{}=2", args[0]));
        message = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    // What was recorded before is still there.
    let ro = tl_ingest::ledger::Ledger::open_existing(&ledger).await;
    if let Ok(l) = ro {
        let n = l.history(&[], None).await.map(|h| h.len()).unwrap_or(0);
        assert!(n >= 1, "the first record survived");
        l.close().await;
    }
    assert!(!before.is_empty());
    figures(
        "bad_setups.full_disk",
        &[
            ("exit_codes", codes.join(",")),
            ("message", format!("{message:?}")),
        ],
    );
    drop(disk);
}
