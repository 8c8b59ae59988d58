//! `config check`, `config show`, `doctor` and `completions`, through the
//! real binary.

use std::path::Path;
use std::process::Output;

use tl_ingest::ledger::Ledger;

use crate::helpers::{KEY, TestEnv, output, text};

async fn run(mut cmd: std::process::Command, args: &[&str]) -> Output {
    cmd.args(args);
    output(cmd).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `out` that starts with `prefix`.
fn line_starting<'a>(all: &'a str, prefix: &str) -> Option<&'a str> {
    all.lines().find(|l| l.starts_with(prefix))
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

#[tokio::test]
async fn config_check_ok_names_the_file() {
    let env = TestEnv::new().await;
    let out = run(env.cmd(KEY), &["config", "check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    assert!(shown.contains("configuration OK"), "{}", text(&out));
    assert!(shown.contains("config.toml"), "{}", text(&out));
}

#[tokio::test]
async fn config_check_typo_exits_2_with_file_and_suggestion() {
    let env = TestEnv::new().await;
    write(env.dir.path(), "bad.toml", "[upload]\nwokers = 3\n");
    let out = run(
        env.bare_cmd(KEY),
        &["--config", "bad.toml", "config", "check"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("bad.toml"), "names the file: {all}");
    assert!(
        all.contains("unknown key `wokers` in [upload]; did you mean `workers`?"),
        "{all}"
    );

    // A section typo, and a typo in an environment variable.
    write(env.dir.path(), "bad.toml", "[uplod]\nworkers = 3\n");
    let out = run(
        env.bare_cmd(KEY),
        &["--config", "bad.toml", "config", "check"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("did you mean [upload]?"),
        "{}",
        text(&out)
    );

    let mut cmd = env.cmd(KEY);
    cmd.env("TL_INGEST__UPLOAD__MAX_ATTEMTS", "3");
    let out = run(cmd, &["config", "check"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("TL_INGEST__UPLOAD__MAX_ATTEMTS")
            && all.contains("TL_INGEST__UPLOAD__MAX_ATTEMPTS"),
        "{all}"
    );
}

#[tokio::test]
async fn config_check_finds_missing_folders_and_unreadable_key_file() {
    let env = TestEnv::new().await;
    let missing = env.dir.path().join("no-such-folder");
    let a_file = write(env.dir.path(), "plain.txt", "x");
    let extra = format!(
        "[[watch]]\npath = {:?}\n[[watch]]\npath = {:?}\n[[watch]]\npath = {:?}\n",
        env.inbox.display().to_string(),
        missing.display().to_string(),
        a_file.display().to_string(),
    );
    let config = env.write_daemon_config(&extra);
    let mut cmd = env.bare_cmd(KEY);
    cmd.arg("--config").arg(&config);
    let out = run(cmd, &["config", "check"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("daemon.toml"), "{all}");
    assert!(
        all.contains("watch[1].path")
            && all.contains("no-such-folder")
            && all.contains("does not exist"),
        "{all}"
    );
    assert!(
        all.contains("watch[2].path") && all.contains("is not a folder"),
        "{all}"
    );
    assert!(!all.contains("watch[0]"), "the inbox exists: {all}");

    let mut cmd = env.cmd(KEY);
    cmd.env(
        "TL_INGEST__API__KEY_FILE",
        env.dir.path().join("absent-key"),
    );
    let out = run(cmd, &["config", "check"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("api.key_file") && text(&out).contains("absent-key"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn config_show_marks_sources_and_never_prints_the_key() {
    let env = TestEnv::new().await;
    let secret = "tlk-SECRET-do-not-print-8675309";
    let mut cmd = env.cmd(secret);
    cmd.env("TL_INGEST__UPLOAD__MAX_ATTEMPTS", "7");
    let out = run(cmd, &["config", "show"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(
        !all.contains(secret),
        "the key must never be printed: {all}"
    );
    let shown = stdout(&out);
    let config = env.dir.path().join("config.toml");

    let line = line_starting(&shown, "max_attempts = 7").expect("max_attempts shown");
    assert!(
        line.ends_with("# env TL_INGEST__UPLOAD__MAX_ATTEMPTS"),
        "{line}\n{shown}"
    );
    let line = line_starting(&shown, "initial_backoff = \"20ms\"").expect("backoff shown");
    assert!(
        line.ends_with(&format!("# file {}", config.display())),
        "{line}\n{shown}"
    );
    let line = line_starting(&shown, "workers = 4").expect("workers shown");
    assert!(line.ends_with("# default"), "{line}\n{shown}");
    assert!(
        shown.contains("[upload]") && shown.contains("[api]"),
        "{shown}"
    );
    assert!(
        shown.contains("$TWELVELABS_API_KEY"),
        "says where the key is from: {shown}"
    );

    // The key from a key file: its path is shown, never its content.
    let key_file = write(env.dir.path(), "api-key", &format!("{secret}\n"));
    let mut cmd = env.cmd("");
    cmd.env_remove("TWELVELABS_API_KEY")
        .env("TL_INGEST__API__KEY_FILE", &key_file);
    let out = run(cmd, &["config", "show"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(
        !all.contains(secret),
        "the key must never be printed: {all}"
    );
    assert!(all.contains("api.key_file"), "{all}");
    let shown = stdout(&out);
    let line = line_starting(&shown, "key_file = ").expect("key_file shown");
    assert!(line.ends_with("# env TL_INGEST__API__KEY_FILE"), "{line}");

    // A broken config is exit 2, as for check.
    write(env.dir.path(), "bad.toml", "[upload]\nwokers = 3\n");
    let out = run(
        env.bare_cmd(KEY),
        &["--config", "bad.toml", "config", "show"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn doctor_passes_with_the_right_key_and_a_healthy_setup() {
    // SQLite in both passes: the ledger checks here are the file's
    // (integrity, filesystem), and "doctor only reads the ledger" is
    // proved on its bytes.
    let env = TestEnv::sqlite().await;
    Ledger::open(&env.ledger_path)
        .await
        .expect("ledger created")
        .close()
        .await;
    let before = std::fs::read(&env.ledger_path).expect("read ledger");
    let config = env.write_daemon_config(&env.inbox_watch());
    let mut cmd = env.bare_cmd(KEY);
    cmd.arg("--config").arg(&config);
    let out = run(cmd, &["doctor"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    for check in [
        "OK   API key present",
        "OK   API reachable",
        "OK   API key accepted",
        "OK   watch[0]",
        "OK   ledger integrity",
        "OK   ledger filesystem",
    ] {
        assert!(line_starting(&shown, check).is_some(), "{check}:\n{shown}");
    }
    assert!(!shown.contains("FAIL"), "{shown}");
    assert!(!text(&out).contains(KEY), "{}", text(&out));
    assert_eq!(
        std::fs::read(&env.ledger_path).expect("read ledger"),
        before,
        "doctor only reads the ledger"
    );
}

#[tokio::test]
async fn doctor_says_a_wrong_key_was_rejected() {
    let env = TestEnv::new().await;
    let wrong = "wrong-key-SECRET-4242";
    let out = run(env.cmd(wrong), &["doctor"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "FAIL API key accepted").expect("key line");
    assert!(line.contains("rejected") && line.contains("fix:"), "{line}");
    assert!(
        line_starting(&shown, "OK   API reachable").is_some(),
        "a rejection proves the API answers: {shown}"
    );
    assert!(!text(&out).contains(wrong), "{}", text(&out));
}

#[tokio::test]
async fn doctor_tells_an_unreachable_api_from_a_rejection() {
    let env = TestEnv::new().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let config = write(
        env.dir.path(),
        "closed.toml",
        &format!(
            "[api]\nbase_url = \"http://127.0.0.1:{port}/v1.3\"\nconnect_timeout = \"2s\"\n{}",
            env.ledger_toml()
        ),
    );
    let mut cmd = env.bare_cmd(KEY);
    cmd.arg("--config").arg(&config);
    let out = run(cmd, &["doctor"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "FAIL API reachable").expect("reachability line");
    assert!(line.contains("not reachable"), "{line}");
    assert!(!shown.contains("rejected"), "not a key problem: {shown}");
}

#[tokio::test]
async fn doctor_fails_a_corrupt_ledger_and_leaves_it_untouched() {
    // SQLite in both passes: the corruption is in the ledger file.
    let env = TestEnv::sqlite().await;
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&env.ledger_path, &garbage).expect("write garbage");
    let out = run(env.cmd(KEY), &["doctor"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "FAIL ledger integrity").expect("integrity line");
    assert!(line.contains("fix:"), "{line}");
    assert_eq!(
        std::fs::read(&env.ledger_path).expect("read"),
        garbage,
        "the file is untouched"
    );
}

#[tokio::test]
async fn doctor_with_the_emulator_needs_no_key() {
    let env = TestEnv::new().await;
    let mut cmd = env.cmd("");
    cmd.env_remove("TWELVELABS_API_KEY");
    let out = run(cmd, &["--emulator", "doctor"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "OK   API key present").expect("key line");
    assert!(line.contains("emulator"), "{line}");
    assert!(
        line_starting(&shown, "OK   API key accepted").is_some(),
        "{shown}"
    );

    // Without --emulator and without a key: the key check fails, the
    // API is still found reachable.
    let mut cmd = env.cmd("");
    cmd.env_remove("TWELVELABS_API_KEY");
    let out = run(cmd, &["doctor"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = stdout(&out);
    assert!(
        line_starting(&shown, "FAIL API key present").is_some(),
        "{shown}"
    );
    assert!(
        line_starting(&shown, "OK   API reachable").is_some(),
        "{shown}"
    );
}

#[tokio::test]
async fn completions_and_man_page() {
    let env = TestEnv::new().await;
    for shell in ["bash", "zsh", "fish"] {
        let out = run(env.bare_cmd(KEY), &["completions", shell]).await;
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out));
        let script = stdout(&out);
        assert!(script.contains("tl-ingest"), "{shell}: {script}");
        assert!(script.contains("doctor"), "{shell} knows the commands");
    }
    let out = run(env.bare_cmd(KEY), &["completions", "man"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let page = stdout(&out);
    // roff: an optional string preamble (.ie/.el), then the title header.
    let first = page
        .lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el") && !l.starts_with(".\\\""))
        .unwrap_or_default();
    assert!(
        first.starts_with(".TH tl-ingest 1"),
        "{}",
        &page[..page.len().min(300)]
    );
    assert!(page.contains("doctor"), "the subcommands are listed");

    // For packaging: every page into a folder.
    let dir = env.dir.path().join("man");
    std::fs::create_dir(&dir).expect("mkdir");
    let mut cmd = env.bare_cmd(KEY);
    cmd.args(["completions", "man", "--dir"]).arg(&dir);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(dir.join("tl-ingest.1").is_file());
    assert!(dir.join("tl-ingest-doctor.1").is_file());
}
