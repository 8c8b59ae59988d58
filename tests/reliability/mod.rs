//! The reliability suite (issue 7): the promises of README.md and RELIABILITY.md — nothing
//! lost, nothing repeated, no partial files, clear errors — under abuse.
//!
//! Each scenario prints one `RELIABILITY <scenario>: key=value ...` line
//! with its figures (see them with `-- --nocapture`); RELIABILITY.md at the
//! repository root records them. `TL_INGEST_SOAK=1` scales every scenario
//! up (more files, more kills, more property cases).

mod bad_files;
mod bad_setups;
mod crash_loop;
mod fault_storm;
mod ledger_outage;
mod props;
mod secrets;
mod server_lies;
mod url_crash_loop;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::helpers::{KEY, TestEnv};

/// Whether the long soak mode was asked for (`TL_INGEST_SOAK=1`).
pub fn soak() -> bool {
    std::env::var("TL_INGEST_SOAK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `quick` in the default run, `long` in soak mode.
pub fn scaled(quick: usize, long: usize) -> usize {
    if soak() { long } else { quick }
}

/// Print a scenario's figures on one line, for RELIABILITY.md.
pub fn figures(scenario: &str, pairs: &[(&str, String)]) {
    let line: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("RELIABILITY {scenario}: {}", line.join(" "));
}

/// Whether this process runs as root (then file modes do not stop it, and
/// a test that needs an unreadable file runs the binary as `nobody`).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The uid/gid a root test drops to.
pub const NOBODY: u32 = 65534;

/// `tl-ingest --config CONFIG run` in the background, its stderr appended
/// to `log`.
pub fn spawn_daemon(env: &TestEnv, config: &Path, log: &Path) -> Child {
    spawn_daemon_with(env, config, log, &[])
}

/// [`spawn_daemon`] with extra environment settings.
pub fn spawn_daemon_with(env: &TestEnv, config: &Path, log: &Path, vars: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open daemon log");
    let mut cmd = env.bare_cmd(KEY);
    cmd.envs(vars.iter().copied());
    cmd.arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    cmd.spawn().expect("spawn tl-ingest run")
}

/// SIGTERM, then wait (at most `limit`) for the exit code.
pub async fn terminate(child: Child, limit: Duration) -> Option<i32> {
    use rustix::process::{Pid, Signal, kill_process};
    kill_process(Pid::from_child(&child), Signal::TERM).expect("send SIGTERM");
    let mut child = child;
    let waited =
        tokio::time::timeout(limit, tokio::task::spawn_blocking(move || child.wait())).await;
    waited
        .expect("exits in time")
        .expect("join")
        .expect("wait")
        .code()
}

/// Every occurrence of "panicked" in some output, for a clear failure.
pub fn assert_no_panic(what: &str, output: &str) {
    assert!(!output.contains("panicked"), "{what} panicked:\n{output}");
}
