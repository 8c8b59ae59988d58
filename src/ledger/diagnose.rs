//! Read-only facts about a ledger, for `doctor`: what the SQLite file or
//! the PostgreSQL server says, as plain data. Judging them (OK, warning,
//! failure, and the fix) is the caller's; nothing here changes a ledger or
//! migrates a schema.
//!
//! Errors are given in words. Text from the PostgreSQL driver passes
//! through [`PgUrl::redact_text`], as it may quote the URL.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::{PgUrl, now_ms};

/// What `PRAGMA integrity_check` found in a SQLite ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// Intact, with a tl-ingest schema.
    Ok,
    /// Intact, but no tl-ingest schema: some other SQLite file.
    NoSchema,
    /// The file could not be opened.
    Unopenable(String),
    /// The check ran and listed problems (never empty).
    Problems(Vec<String>),
    /// The check could not run: not a SQLite database.
    NotSqlite(String),
    /// The check passed, but the schema could not be read.
    SchemaUnreadable(String),
}

/// Check a SQLite ledger on a read-only connection: the file is never
/// changed, whatever it holds.
pub async fn sqlite_integrity(path: &Path) -> Integrity {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = match options.connect().await {
        Ok(c) => c,
        Err(e) => return Integrity::Unopenable(db_message(&e)),
    };
    let rows: Result<Vec<String>, _> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await;
    let found = match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => {
            let schema: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_one(&mut conn)
            .await;
            match schema {
                Ok(n) if n > 0 => Integrity::Ok,
                Ok(_) => Integrity::NoSchema,
                Err(e) => Integrity::SchemaUnreadable(db_message(&e)),
            }
        }
        Ok(rows) => Integrity::Problems(rows),
        Err(e) => Integrity::NotSqlite(db_message(&e)),
    };
    let _ = conn.close().await;
    found
}

/// The `sslmode` of a PostgreSQL URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// As written in a URL.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Why a connection to a PostgreSQL server failed. The strings are the
/// server's or the driver's words, redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The login was refused (SQLSTATE 28P01, 28000).
    LoginRefused(String),
    /// No such database (3D000).
    NoDatabase(String),
    /// No connection slot left (53300).
    TooManyConnections(String),
    /// Starting up or in recovery (57P03).
    NotAccepting(String),
    /// Any other refusal by the server.
    Server(String),
    /// Nothing listens at the address.
    Refused,
    /// Any other network failure.
    Unreachable(String),
    Tls(String),
    /// The URL parsed but cannot be used.
    Configuration(String),
    Other(String),
}

/// A PostgreSQL ledger's address, before connecting.
pub struct PgTarget {
    url: PgUrl,
    /// Holds the password: never shown (hence no derived `Debug`).
    options: PgConnectOptions,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({})", self.url)
    }
}

impl PgTarget {
    /// Parse `url`; the error is in words, redacted.
    pub fn parse(url: &PgUrl) -> Result<PgTarget, String> {
        match PgConnectOptions::from_str(url.expose()) {
            Ok(o) => Ok(PgTarget {
                url: url.clone(),
                options: o.application_name("tl-ingest doctor"),
            }),
            Err(e) => Err(url.redact_text(&e.to_string())),
        }
    }

    /// Where the connection goes: a Unix socket, or `host:port`.
    pub fn address(&self) -> String {
        match self.options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", self.options.get_host(), self.options.get_port()),
        }
    }

    pub fn user(&self) -> &str {
        self.options.get_username()
    }

    /// The database; PostgreSQL's default is the user's name.
    pub fn database(&self) -> &str {
        self.options.get_database().unwrap_or(self.user())
    }

    pub fn ssl_mode(&self) -> SslMode {
        match self.options.get_ssl_mode() {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Allow => SslMode::Allow,
            PgSslMode::Prefer => SslMode::Prefer,
            PgSslMode::Require => SslMode::Require,
            PgSslMode::VerifyCa => SslMode::VerifyCa,
            PgSslMode::VerifyFull => SslMode::VerifyFull,
        }
    }

    /// Whether the connection stays on this host (a Unix socket or
    /// loopback).
    pub fn is_local(&self) -> bool {
        if self.options.get_socket().is_some() {
            return true;
        }
        let host = self.options.get_host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        host.starts_with('/')
            || host.eq_ignore_ascii_case("localhost")
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// One connection of its own (no pool, no migration). No time limit:
    /// the caller sets its own.
    pub async fn connect(&self) -> Result<PgProbe, ConnectFailure> {
        let redact = |text: &str| self.url.redact_text(text);
        let conn = self.options.connect().await.map_err(|e| match e {
            sqlx::Error::Database(db) => {
                let message = redact(db.message());
                match db.code().as_deref() {
                    Some("28P01") | Some("28000") => ConnectFailure::LoginRefused(message),
                    Some("3D000") => ConnectFailure::NoDatabase(message),
                    Some("53300") => ConnectFailure::TooManyConnections(message),
                    Some("57P03") => ConnectFailure::NotAccepting(message),
                    _ => ConnectFailure::Server(message),
                }
            }
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                ConnectFailure::Refused
            }
            sqlx::Error::Io(io) => ConnectFailure::Unreachable(redact(&io.to_string())),
            sqlx::Error::Tls(t) => ConnectFailure::Tls(redact(&t.to_string())),
            sqlx::Error::Configuration(c) => ConnectFailure::Configuration(redact(&c.to_string())),
            other => ConnectFailure::Other(redact(&other.to_string())),
        })?;
        Ok(PgProbe {
            conn,
            url: self.url.clone(),
        })
    }
}

/// `server_version_num` and `server_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// E.g. 160004; `None` if the server did not say.
    pub number: Option<i64>,
    /// E.g. "16.4"; empty if the server did not say.
    pub name: String,
}

/// A PostgreSQL ledger's schema against this build's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgSchema {
    /// No schema yet (no migration table).
    Missing,
    /// This migration started and did not finish.
    Unfinished(i64),
    /// This migration was applied with a text other than this build's.
    Changed(i64),
    /// The highest migration applied (`None`: none), all matching this
    /// build's.
    Applied(Option<i64>),
}

/// The database's clock between two readings of this host's (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    pub before: i64,
    pub database: i64,
    pub after: i64,
}

/// One open connection to a PostgreSQL ledger, for reading facts. Query
/// errors are in words, redacted.
pub struct PgProbe {
    conn: PgConnection,
    url: PgUrl,
}

impl std::fmt::Debug for PgProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgProbe({})", self.url)
    }
}

impl PgProbe {
    fn error(&self, e: &sqlx::Error) -> String {
        self.url.redact_text(&db_message(e))
    }

    pub async fn server_version(&mut self) -> ServerVersion {
        let num: Result<String, _> = sqlx::query_scalar("SHOW server_version_num")
            .fetch_one(&mut self.conn)
            .await;
        let shown: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut self.conn)
            .await
            .unwrap_or_default();
        ServerVersion {
            number: num.ok().and_then(|n| n.trim().parse().ok()),
            // "16.4 (Debian 16.4-1)": the version alone.
            name: shown.split_whitespace().next().unwrap_or("").to_string(),
        }
    }

    /// The schema as applied; read only.
    pub async fn schema(&mut self) -> Result<PgSchema, String> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.error(&e))?;
        if !exists {
            return Ok(PgSchema::Missing);
        }
        let dirty: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE NOT success ORDER BY version",
        )
        .fetch_all(&mut self.conn)
        .await
        .unwrap_or_default();
        if let Some(v) = dirty.first() {
            return Ok(PgSchema::Unfinished(*v));
        }
        let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&mut self.conn)
        .await
        .unwrap_or_default();
        let changed = applied.iter().find(|(version, checksum)| {
            super::postgres_migrator()
                .iter()
                .find(|m| m.version == *version)
                .is_some_and(|m| *m.checksum != **checksum)
        });
        if let Some((version, _)) = changed {
            return Ok(PgSchema::Changed(*version));
        }
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut self.conn)
            .await
            .map(PgSchema::Applied)
            .map_err(|e| self.error(&e))
    }

    /// Whether this user may create tables (and so migrate the schema).
    /// Since PostgreSQL 15 only the database's owner may, unless granted.
    /// If the server does not say, yes: the migration would tell.
    pub async fn may_create(&mut self) -> bool {
        sqlx::query_scalar::<_, bool>("SELECT has_schema_privilege(current_schema(), 'CREATE')")
            .fetch_one(&mut self.conn)
            .await
            .unwrap_or(true)
    }

    /// Whether this connection uses TLS; `None` if the server does not say.
    pub async fn tls_in_use(&mut self) -> Result<Option<bool>, String> {
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(&mut self.conn)
            .await
            .map_err(|e| self.error(&e))
    }

    /// The database's clock, read between two readings of this host's.
    pub async fn clock(&mut self) -> Result<ClockReading, String> {
        let before = now_ms();
        let database: Result<i64, _> =
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
                .fetch_one(&mut self.conn)
                .await;
        let after = now_ms();
        match database {
            Ok(database) => Ok(ClockReading {
                before,
                database,
                after,
            }),
            Err(e) => Err(self.error(&e)),
        }
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// The server's own message for a database error, else the driver's.
fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}
