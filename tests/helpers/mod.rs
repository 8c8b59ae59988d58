//! Shared fixtures: a temp dir with an inbox and a ledger, an emulator on
//! a free loopback port, media files of known content, and ways to run the
//! pipeline in-process or the binary, each with a deadline.

#![allow(dead_code)]

pub mod pg;
pub mod sql;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tl_ingest::api::{ApiClient, ClientOptions};
use tl_ingest::config::{Config, LoadOptions, WatchConfig};
use tl_ingest::emulator::{Emulator, EmulatorConfig, Faults};
use tl_ingest::ledger::{Ledger, Location, Record};
use tl_ingest::pipeline::{Filter, discover};
use tl_ingest::pipeline::{Pipeline, ReadCounts};
use tl_ingest::secret::ApiKey;

/// How long any one test may wait for the pipeline to finish.
pub const DEADLINE: Duration = Duration::from_secs(90);

pub const KEY: &str = "test-key-0123456789";

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Mp4,
    Wav,
    Mp3,
    Png,
    Jpg,
}

/// A header `infer` recognises, then `size` bytes in all, seeded noise after it.
pub fn media(kind: Kind, size: usize, seed: u64) -> Vec<u8> {
    let header: &[u8] = match kind {
        Kind::Mp4 => b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom",
        Kind::Wav => b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0",
        Kind::Mp3 => b"ID3\x04\0\0\0\0\0\0",
        Kind::Png => b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        Kind::Jpg => b"\xFF\xD8\xFF\xE0\0\x10JFIF\0",
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = header.to_vec();
    while out.len() < size {
        out.push(rng.u8(..));
    }
    out.truncate(size.max(header.len()));
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Write a media file; returns its sha256.
pub fn write_media(path: &Path, kind: Kind, size: usize, seed: u64) -> String {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent");
    }
    let bytes = media(kind, size, seed);
    std::fs::write(path, &bytes).expect("write media");
    sha256_hex(&bytes)
}

pub struct TestEnv {
    pub dir: TempDir,
    pub inbox: PathBuf,
    /// `dir/ledger.db`: the ledger file in the SQLite pass and for the
    /// tests pinned to SQLite; in the PostgreSQL pass nothing is there.
    pub ledger_path: PathBuf,
    /// Where the test's ledger is: `ledger_path`, or a fresh PostgreSQL
    /// database in the suite's PostgreSQL pass (`TL_INGEST_TEST_ENGINE`).
    pub ledger: Location,
    pub emulator: Emulator,
}

/// Which engine a fixture's ledger is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    /// The suite's engine: SQLite, or PostgreSQL in the PostgreSQL pass.
    Suite,
    /// SQLite whatever the pass: tests about the ledger file itself (its
    /// bytes, its lock, its folder and disk).
    Sqlite,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        Self::with(EmulatorConfig::default(), Faults::default()).await
    }

    pub async fn with_faults(faults: Faults) -> TestEnv {
        Self::with(EmulatorConfig::default(), faults).await
    }

    pub async fn with(emulator: EmulatorConfig, faults: Faults) -> TestEnv {
        Self::start(emulator, faults, Engine::Suite).await
    }

    /// A platform that ignores the form fields after the file.
    pub async fn dropping_trailing_fields() -> TestEnv {
        let emulator = EmulatorConfig {
            ignore_fields_after_file: true,
            ..EmulatorConfig::default()
        };
        Self::with(emulator, Faults::default()).await
    }

    /// The sha256 stamp on the platform's asset `asset_id`, if it has one.
    pub fn stamp_on_platform(&self, asset_id: Option<&str>) -> Option<String> {
        let asset = self
            .emulator
            .assets()
            .into_iter()
            .find(|a| Some(a.id.as_str()) == asset_id)?;
        let stamp = asset
            .user_metadata?
            .get(tl_ingest::api::SHA256_STAMP)?
            .clone();
        stamp.as_str().map(str::to_owned)
    }

    /// A fixture whose ledger is the SQLite file `ledger_path` in both
    /// passes, for tests about that file (its bytes, `<ledger>.lock`, the
    /// folder and disk it is on).
    pub async fn sqlite() -> TestEnv {
        Self::sqlite_with(EmulatorConfig::default(), Faults::default()).await
    }

    /// [`TestEnv::sqlite`] with an emulator of the test's choosing.
    pub async fn sqlite_with(emulator: EmulatorConfig, faults: Faults) -> TestEnv {
        Self::start(emulator, faults, Engine::Sqlite).await
    }

    async fn start(emulator: EmulatorConfig, faults: Faults, engine: Engine) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).expect("inbox");
        // Assets are ready 50 ms after upload unless the test chose a delay.
        let ready_delay = if emulator.ready_delay == EmulatorConfig::default().ready_delay {
            Duration::from_millis(50)
        } else {
            emulator.ready_delay
        };
        let emulator = Emulator::start(EmulatorConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            api_key: KEY.into(),
            ready_delay,
            faults,
            ..emulator
        })
        .await
        .expect("emulator starts");
        let ledger_path = dir.path().join("ledger.db");
        let ledger = match engine {
            Engine::Suite => pg::ledger_location(ledger_path.clone()).await,
            Engine::Sqlite => Location::Sqlite(ledger_path.clone()),
        };
        TestEnv {
            dir,
            inbox,
            ledger_path,
            ledger,
            emulator,
        }
    }

    /// Whether this fixture's ledger is on PostgreSQL.
    pub fn on_postgres(&self) -> bool {
        matches!(self.ledger, Location::Postgres(_))
    }

    /// Defaults, pointed at the emulator and the temp ledger, with fast
    /// timings. Never reads the developer's config or environment.
    pub fn config(&self) -> Config {
        let opts = LoadOptions {
            explicit: Some(self.write_config()),
            env: BTreeMap::new(),
            cwd: Some(self.dir.path().to_path_buf()),
        };
        Config::load(&opts).expect("test config loads").0
    }

    /// The `[ledger]` section for this fixture's ledger. A PostgreSQL
    /// ledger is named by `ledger.url`, which wins over `ledger.path`
    /// (kept, for what derives from it).
    pub fn ledger_toml(&self) -> String {
        let url = match &self.ledger {
            Location::Postgres(url) => format!("url = {:?}\n", url.expose()),
            Location::Sqlite(_) => String::new(),
        };
        format!(
            "[ledger]\npath = {:?}\n{url}",
            self.ledger_path.display().to_string()
        )
    }

    /// The same settings as a TOML file, for the binary.
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        let text = format!(
            "[api]\nbase_url = {:?}\npoll_interval = \"30ms\"\nrequest_timeout = \"60s\"\n{}\
             [upload]\ninitial_backoff = \"20ms\"\nmax_backoff = \"300ms\"\nmax_attempts = 12\n",
            self.emulator.base_url(),
            self.ledger_toml(),
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// The binary, with the test's config and key and nothing else from
    /// the environment.
    pub fn cmd(&self, key: &str) -> Command {
        let mut cmd = self.bare_cmd(key);
        cmd.arg("--config").arg(self.write_config());
        cmd
    }

    /// The binary in the temp dir with a clean environment, no config named.
    pub fn bare_cmd(&self, key: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tl-ingest"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("TWELVELABS_API_KEY", key)
            .current_dir(self.dir.path());
        cmd
    }

    /// `upload PATHS` with extra `NAME=VALUE` environment settings.
    pub async fn upload_bin_with(&self, paths: &[&Path], env: &[&str]) -> Output {
        let mut cmd = self.cmd(KEY);
        for kv in env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        cmd.arg("upload").args(paths);
        output(cmd).await
    }

    /// Run `upload PATHS` with the binary and return its output.
    pub async fn upload_bin(&self, paths: &[&Path]) -> Output {
        let mut cmd = self.cmd(KEY);
        cmd.arg("upload").args(paths);
        output(cmd).await
    }

    /// Run the pipeline in-process over `paths` until nothing is unfinished.
    /// A client of this fixture's emulator, with the test key.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(
            &ClientOptions {
                base_url: self.emulator.base_url(),
                request_timeout: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(5),
            },
            &ApiKey::new(KEY).expect("key"),
        )
        .expect("client")
    }

    pub async fn run_pipeline(&self, config: Config, paths: &[PathBuf]) -> Ledger {
        self.run_pipeline_with(config, paths, |_| ()).await
    }

    /// The same, calling `before` with the pipeline's ledger handle before
    /// anything starts (to follow its change feed).
    pub async fn run_pipeline_with<F: FnOnce(&Ledger)>(
        &self,
        config: Config,
        paths: &[PathBuf],
        before: F,
    ) -> Ledger {
        self.run_pipeline_within(config, paths, before, DEADLINE)
            .await
    }

    /// [`TestEnv::run_pipeline_with`], with its own deadline (soak runs).
    pub async fn run_pipeline_within<F: FnOnce(&Ledger)>(
        &self,
        config: Config,
        paths: &[PathBuf],
        before: F,
        deadline: Duration,
    ) -> Ledger {
        self.run_pipeline_counting(config, paths, before, deadline)
            .await
            .0
    }

    /// [`TestEnv::run_pipeline_within`], with the bytes of file content
    /// the pipeline read (its test hook).
    pub async fn run_pipeline_counting<F: FnOnce(&Ledger)>(
        &self,
        config: Config,
        paths: &[PathBuf],
        before: F,
        deadline: Duration,
    ) -> (Ledger, ReadCounts) {
        let ledger = Ledger::open_at(&self.ledger).await.expect("ledger opens");
        before(&ledger);
        let pipeline = Pipeline::new(ledger.clone(), self.client(), Arc::new(config));
        pipeline.recover().await.expect("recover");
        let mut changes = ledger.subscribe();
        let started = tl_ingest::ledger::now_ms();
        let running = pipeline.start();
        let filter = Filter::new(&WatchConfig::for_path(PathBuf::new())).expect("filter");
        discover(&ledger, paths, &filter, None, Some(started))
            .await
            .expect("discover");
        let finished = tokio::time::timeout(deadline, async {
            while ledger.unfinished().await.expect("count") > 0 {
                // Any committed change may be the last one; a lag is a change too.
                let _ = changes.recv().await;
            }
        })
        .await;
        if finished.is_err() {
            let dump = dump(&ledger).await;
            panic!("pipeline did not finish within {deadline:?}; ledger:\n{dump}");
        }
        running.shutdown(Duration::ZERO).await;
        (ledger, pipeline.content_reads())
    }
}

/// Every record, one per line, for failure messages.
pub async fn dump(ledger: &Ledger) -> String {
    ledger
        .history(&[], None)
        .await
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    format!(
                        "{} {} {:?} attempts={} asset={:?} err={:?}",
                        r.id, r.state, r.path, r.attempts, r.asset_id, r.last_error
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|e| e.to_string())
}

/// The newest record of a path.
pub async fn record_of(ledger: &Ledger, path: &Path) -> Record {
    let abs = std::path::absolute(path).expect("absolute");
    ledger
        .latest_for_path(abs.as_os_str().as_bytes())
        .await
        .expect("query")
        .unwrap_or_else(|| panic!("no record for {}", abs.display()))
}

/// Poll `check` every 20 ms until it holds, or panic after `deadline`.
/// For black-box tests of another process, where no event can be awaited.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = tokio::time::timeout(deadline, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if check().await {
                return;
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// How long one run of the binary may take: past it the test fails (and
/// kills it) instead of waiting forever on a command that hangs.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(300);

/// Run a command to completion off the async threads (the emulator serves
/// from this runtime meanwhile), as `Command::output` does, within
/// [`COMMAND_DEADLINE`].
pub async fn output(mut cmd: Command) -> Output {
    use std::process::Stdio;
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tl-ingest");
    let pid = rustix::process::Pid::from_child(&child);
    let waited = tokio::time::timeout(
        COMMAND_DEADLINE,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    match waited {
        Ok(joined) => joined.expect("join").expect("wait for tl-ingest"),
        Err(_) => {
            // Not reaped yet, so the pid is still this child's.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            panic!("tl-ingest {args:?} did not finish within {COMMAND_DEADLINE:?}; killed it");
        }
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A daemon running in-process on the test's emulator and ledger.
pub struct Daemon {
    pub controls: tokio::sync::mpsc::Sender<tl_ingest::daemon::Control>,
    pub task: tokio::task::JoinHandle<Result<(), tl_ingest::daemon::DaemonError>>,
}

impl TestEnv {
    /// The daemon config: the test config plus `extra` TOML (watches, watcher).
    pub fn write_daemon_config(&self, extra: &str) -> PathBuf {
        let base = std::fs::read_to_string(self.write_config()).expect("read config");
        let path = self.dir.path().join("daemon.toml");
        std::fs::write(&path, format!("{base}{extra}")).expect("write daemon config");
        path
    }

    /// `[[watch]]` on the inbox with a short settle time.
    pub fn inbox_watch(&self) -> String {
        format!(
            "[watcher]\nsettle = \"300ms\"\nrescan_interval = \"1h\"\n[[watch]]\npath = {:?}\n",
            self.inbox.display().to_string()
        )
    }

    /// Start `tl_ingest::daemon::run` in-process with the config file at `path`.
    pub fn start_daemon(&self, config_path: &Path) -> Daemon {
        use tl_ingest::daemon::{ClientSource, Setup};
        let load = LoadOptions {
            explicit: Some(config_path.to_path_buf()),
            env: BTreeMap::new(),
            cwd: Some(self.dir.path().to_path_buf()),
        };
        let (config, _) = Config::load(&load).expect("daemon config loads");
        let setup = Setup {
            load,
            ledger: self.ledger.clone(),
            client: ClientSource::Fixed {
                base_url: self.emulator.base_url(),
                key: ApiKey::new(KEY).expect("key"),
            },
            default_watch: None,
        };
        let (controls, rx) = tokio::sync::mpsc::channel(8);
        let task = tokio::spawn(tl_ingest::daemon::run(setup, config, rx));
        Daemon { controls, task }
    }

    /// Wait until the newest record of each path is in `state`, reading
    /// the ledger the daemon writes (another handle: poll with a deadline).
    pub async fn wait_for_state(&self, paths: &[PathBuf], state: &str) {
        self.wait_for_state_while(paths, state, None).await
    }

    /// The same, failing at once if `daemon` stops on its own.
    pub async fn wait_for_state_while(
        &self,
        paths: &[PathBuf],
        state: &str,
        daemon: Option<&mut Daemon>,
    ) {
        let end = tokio::time::Instant::now() + DEADLINE;
        let mut daemon = daemon;
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            tick.tick().await;
            if let Some(d) = daemon.as_deref_mut()
                && d.task.is_finished()
            {
                let result = (&mut d.task).await;
                panic!("the daemon stopped by itself: {result:?}");
            }
            if let Ok(ledger) = Ledger::open_existing_at(&self.ledger).await {
                let mut all = true;
                for p in paths {
                    let abs = std::path::absolute(p).expect("absolute");
                    let rec = ledger
                        .latest_for_path(abs.as_os_str().as_bytes())
                        .await
                        .ok()
                        .flatten();
                    all &= rec.is_some_and(|r| r.state == state);
                }
                let late = tokio::time::Instant::now() >= end;
                let dumped = if late {
                    dump(&ledger).await
                } else {
                    String::new()
                };
                ledger.close().await;
                if all {
                    return;
                }
                assert!(
                    !late,
                    "timed out waiting for files to be {state}; ledger:\n{dumped}"
                );
            }
            assert!(
                tokio::time::Instant::now() < end,
                "timed out: no ledger at all"
            );
        }
    }
}

impl Daemon {
    /// Wait for files to reach `state` while this daemon runs.
    pub async fn wait(&mut self, env: &TestEnv, paths: &[PathBuf], state: &str) {
        env.wait_for_state_while(paths, state, Some(self)).await
    }

    /// Ask it to stop and wait for it to return.
    pub async fn stop(self) {
        self.controls
            .send(tl_ingest::daemon::Control::Shutdown)
            .await
            .expect("daemon listening");
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("daemon stops in time")
            .expect("join")
            .expect("daemon ran without error");
    }
}
