//! PostgreSQL for the tests: a fresh database per fixture on the server
//! named by `TL_INGEST_TEST_POSTGRES_URL`, and the switch that runs the
//! whole suite on PostgreSQL (`TL_INGEST_TEST_ENGINE=postgres`).

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;
use tl_ingest::ledger::{Location, PgUrl};

pub const URL_VAR: &str = "TL_INGEST_TEST_POSTGRES_URL";
pub const ENGINE_VAR: &str = "TL_INGEST_TEST_ENGINE";

/// The server for PostgreSQL tests, if one is configured.
pub fn server_url() -> Option<String> {
    std::env::var(URL_VAR).ok().filter(|u| !u.trim().is_empty())
}

/// Whether fixtures put their ledgers on PostgreSQL (the suite's second pass).
pub fn suite_on_postgres() -> bool {
    std::env::var(ENGINE_VAR).is_ok_and(|e| e == "postgres")
}

/// Say that a PostgreSQL test did not run, where a passing test's output
/// still shows (libtest captures only the print macros). In CI (`CI` set)
/// the test fails instead: `.ci/run` starts a server, so a missing URL is a
/// broken set-up that must not pass green.
pub fn skipped(test: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!(
            "{test} needs PostgreSQL, and in CI {URL_VAR} must be set (.ci/run starts a server)"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: {URL_VAR} is not set (scripts/throwaway-postgres starts a server)"
    );
}

/// A new, empty database on the test server; its URL.
pub async fn fresh_database() -> PgUrl {
    static N: AtomicU32 = AtomicU32::new(0);
    let server = server_url().unwrap_or_else(|| panic!("{URL_VAR} must be set"));
    let name = format!(
        "tl_test_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    );
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {server}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    let _ = admin.close().await;
    let base = match server.rsplit_once('/') {
        Some((base, _db)) => base.to_owned(),
        None => server.clone(),
    };
    PgUrl::parse(&format!("{base}/{name}")).expect("test url")
}

/// Where a test's ledger goes: a fresh PostgreSQL database in the suite's
/// PostgreSQL pass, else `file` (a SQLite ledger).
pub async fn ledger_location(file: std::path::PathBuf) -> Location {
    if suite_on_postgres() {
        Location::Postgres(fresh_database().await)
    } else {
        Location::Sqlite(file)
    }
}
