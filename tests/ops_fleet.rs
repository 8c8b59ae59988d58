//! The fleet as operators see it, through the real binary: `status` lists
//! the daemons sharing a ledger and flags a stale one, `doctor` checks a
//! PostgreSQL ledger, and `config` never shows the ledger's password. The
//! PostgreSQL tests run when `TL_INGEST_TEST_POSTGRES_URL` names a server.

use std::process::Output;

use crate::helpers::{KEY, TestEnv, output, text};

const PASSWORD: &str = "secretpw";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `all` that starts with `prefix`.
fn line_starting<'a>(all: &'a str, prefix: &str) -> Option<&'a str> {
    all.lines().find(|l| l.starts_with(prefix))
}

#[tokio::test]
async fn config_with_a_ledger_url_never_shows_its_password() {
    let env = TestEnv::new().await;
    let url =
        format!("postgres://tl_ingest:{PASSWORD}@db.example:5432/tl_ingest?sslmode=verify-full");
    // In the file, with a ledger.path whose folder does not exist: it is
    // not used, so `config check` does not ask for it.
    let path = env.dir.path().join("fleet.toml");
    std::fs::write(
        &path,
        format!("[ledger]\npath = \"/no/such/folder/l.db\"\nurl = {url:?}\nlease = \"20s\"\n"),
    )
    .expect("write config");
    let run = |args: &[&str], env_url: Option<&str>| {
        let mut cmd = env.bare_cmd(KEY);
        cmd.arg("--config").arg(&path).args(args);
        if let Some(u) = env_url {
            cmd.env("TL_INGEST__LEDGER__URL", u);
        }
        output(cmd)
    };

    let out = run(&["config", "check"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));

    let out = run(&["config", "show"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "url = ").expect("url shown");
    assert!(
        line.contains("\"postgres://tl_ingest:***@db.example:5432/tl_ingest?sslmode=verify-full\""),
        "{line}"
    );
    assert!(
        line.ends_with(&format!("# file {}", path.display())),
        "{line}"
    );
    assert!(
        line_starting(&shown, "lease = \"20s\"").is_some(),
        "{shown}"
    );

    // From the environment, as a unit's Environment= would set it.
    let from_env = format!("postgres://other:{PASSWORD}@db2.example/tl");
    let out = run(&["config", "show"], Some(&from_env)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    let shown = stdout(&out);
    let line = line_starting(&shown, "url = ").expect("url shown");
    assert!(
        line.contains("\"postgres://other:***@db2.example/tl\"")
            && line.ends_with("# env TL_INGEST__LEDGER__URL"),
        "{line}"
    );

    // Without a URL, the missing folder of ledger.path is a problem again.
    std::fs::write(&path, "[ledger]\npath = \"/no/such/folder/l.db\"\n").expect("write config");
    let out = run(&["config", "check"], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("ledger.path"), "{}", text(&out));
}
