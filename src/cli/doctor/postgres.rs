//! The checks of a PostgreSQL ledger (`ledger.url`): the connection and
//! login, the server's version, the schema's version, TLS, the clock, and
//! stale daemons in the fleet. They read only: the schema is never migrated.

use std::time::Duration;

use super::report::Report;
use crate::cli::Context;
use crate::cli::status::{DaemonState, heartbeat_age, stale_after};
use crate::cli::text::span;
use crate::ledger::diagnose::{
    ClockReading, ConnectFailure, PgProbe, PgSchema, PgTarget, ServerVersion, SslMode,
};
use crate::ledger::{Ledger, Location, PgUrl, now_ms, schema_version};

/// How long the PostgreSQL server gets to accept a connection.
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL older than this is refused; older than `PG_SUPPORTED` warned.
const PG_OLDEST: i64 = 130_000;
const PG_SUPPORTED: i64 = 140_000;
/// The host's clock may differ from the database's by this much (ms).
const CLOCK_SKEW_MS: i64 = 1000;

/// The checks of a PostgreSQL ledger, on one connection of its own.
pub(super) async fn postgres_checks(ctx: &Context, url: &PgUrl, r: &mut Report) {
    const CONNECT: &str = "ledger connection";
    let pg = match PgTarget::parse(url) {
        Ok(pg) => pg,
        Err(e) => {
            r.fail(
                CONNECT,
                &format!("{url} cannot be used: {e}"),
                "fix ledger.url, e.g. postgres://tl_ingest@db.example/tl_ingest?sslmode=verify-full",
            );
            return;
        }
    };
    let target = pg.address();
    let connected = tokio::time::timeout(PG_CONNECT_TIMEOUT, pg.connect()).await;
    let mut probe = match connected {
        Ok(Ok(probe)) => probe,
        Ok(Err(e)) => {
            let (detail, fix) = pg_failure(&e, &pg, &target);
            r.fail(
                CONNECT,
                &format!("cannot connect to {url}: {}", url.redact_text(&detail)),
                &fix,
            );
            r.skip("ledger", "not checked: no connection to the database");
            return;
        }
        Err(_) => {
            r.fail(
                CONNECT,
                &format!(
                    "cannot connect to {url}: no answer from {target} within {}s",
                    PG_CONNECT_TIMEOUT.as_secs()
                ),
                "is the server up, and does the network (firewall, security group) let this host reach it?",
            );
            r.skip("ledger", "not checked: no connection to the database");
            return;
        }
    };
    r.ok(
        CONNECT,
        &format!(
            "{url}: logged in as {} to database {}",
            pg.user(),
            pg.database()
        ),
    );
    pg_version_check(&mut probe, r).await;
    let schema = pg_schema_check(&mut probe, r).await;
    pg_tls_check(&mut probe, &pg, r).await;
    pg_clock_check(&mut probe, r).await;
    probe.close().await;
    match schema {
        Schema::Current => fleet_check(ctx, url, r).await,
        Schema::Missing => r.skip("daemons", "none: no daemon has used this ledger yet"),
        Schema::Other => r.skip(
            "daemons",
            "not checked: the ledger's schema is not this version's",
        ),
    }
}

/// A failed connection in words, and its fix.
fn pg_failure(e: &ConnectFailure, pg: &PgTarget, target: &str) -> (String, String) {
    let user = pg.user();
    let database = pg.database();
    match e {
        ConnectFailure::LoginRefused(message) => (
            format!("the server refused the login of {user} ({message})"),
            format!(
                "check the user and its password (PGPASSWORD or ~/.pgpass rather than in the URL), and that pg_hba.conf lets {user} in from this host"
            ),
        ),
        ConnectFailure::NoDatabase(message) => (
            format!("there is no database {database} ({message})"),
            format!("create it: psql -c 'CREATE DATABASE {database} OWNER {user}'"),
        ),
        ConnectFailure::TooManyConnections(message) => (
            format!("the server has no connection to spare ({message})"),
            "raise max_connections on the server, or run fewer clients".into(),
        ),
        ConnectFailure::NotAccepting(message) => (
            format!("the server is not accepting connections yet ({message})"),
            "wait until it has started (or left recovery), then try again".into(),
        ),
        ConnectFailure::Server(message) => (
            message.clone(),
            "see the server's log for this connection".into(),
        ),
        ConnectFailure::Refused => (
            format!("the connection was refused: nothing listens on {target}"),
            "start PostgreSQL, or fix the host and port in ledger.url (the server's listen_addresses and port)".into(),
        ),
        ConnectFailure::Unreachable(io) => (
            format!("cannot reach {target}: {io}"),
            "check the host name in ledger.url, DNS, and that the network lets this host reach the server".into(),
        ),
        ConnectFailure::Tls(t) => (
            format!("TLS failed: {t}"),
            "check sslmode and sslrootcert in ledger.url: the server's certificate must come from a CA this host trusts and name the host in the URL".into(),
        ),
        ConnectFailure::Configuration(c) => (
            format!("ledger.url is not usable: {c}"),
            "fix ledger.url, e.g. postgres://tl_ingest@db.example/tl_ingest?sslmode=verify-full".into(),
        ),
        ConnectFailure::Other(other) => (
            other.clone(),
            "check ledger.url and the server's log".into(),
        ),
    }
}

/// The server's version: 13 at the least, 14 or newer to be supported.
async fn pg_version_check(probe: &mut PgProbe, r: &mut Report) {
    const NAME: &str = "PostgreSQL version";
    let ServerVersion {
        number,
        name: shown,
    } = probe.server_version().await;
    match number {
        Some(n) if n < PG_OLDEST => r.fail(
            NAME,
            &format!("{shown} ({n}) is too old: tl-ingest needs PostgreSQL 13 or newer"),
            "upgrade the server to a supported PostgreSQL (14 or newer)",
        ),
        Some(n) if n < PG_SUPPORTED => r.warn(
            NAME,
            &format!("{shown} ({n}) works, but PostgreSQL 13 no longer gets fixes"),
            "upgrade the server to a supported PostgreSQL (14 or newer)",
        ),
        Some(n) => r.ok(NAME, &format!("{shown} ({n})")),
        None => r.skip(NAME, "the server did not say"),
    }
}

/// What [`pg_schema_check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// This build's: opening the ledger changes nothing.
    Current,
    /// No schema yet.
    Missing,
    /// Older, newer, half-migrated, or unknown.
    Other,
}

/// The schema's version against this build's.
async fn pg_schema_check(probe: &mut PgProbe, r: &mut Report) -> Schema {
    const NAME: &str = "ledger schema";
    let ours = schema_version(true);
    match probe.schema().await {
        Ok(PgSchema::Missing) => {
            if probe.may_create().await {
                r.ok(NAME, "none yet: the first daemon to start creates it");
            } else {
                r.fail(
                    NAME,
                    "none yet, and this user may not create tables in the database's schema",
                    "make the user the database's owner (ALTER DATABASE … OWNER TO …), or GRANT CREATE ON SCHEMA public TO it",
                );
            }
            Schema::Missing
        }
        Ok(PgSchema::Unfinished(v)) => {
            r.fail(
                NAME,
                &format!("migration {v} did not finish: the schema is half-changed"),
                "see the server's log for why; restore the database from a backup, or finish the migration by hand and mark it done",
            );
            Schema::Other
        }
        Ok(PgSchema::Changed(version)) => {
            r.fail(
                NAME,
                &format!(
                    "migration {version} was applied by a tl-ingest whose migration {version} differs from this one's: this one cannot open the ledger"
                ),
                "run one tl-ingest release on every host; a ledger migrated by a development build is best started afresh",
            );
            Schema::Other
        }
        Ok(PgSchema::Applied(Some(have))) if have == ours => {
            r.ok(NAME, &format!("version {have}, this tl-ingest's"));
            Schema::Current
        }
        Ok(PgSchema::Applied(Some(have))) if have > ours => {
            r.fail(
                NAME,
                &format!(
                    "version {have} is newer than this tl-ingest's ({ours}): a newer tl-ingest migrated it, and this one cannot open it"
                ),
                "upgrade tl-ingest on this host to the version the rest of the fleet runs",
            );
            Schema::Other
        }
        Ok(PgSchema::Applied(have)) => {
            let have = have.map_or_else(|| "none".to_string(), |v| v.to_string());
            let fix = if probe.may_create().await {
                "upgrade tl-ingest on every host of the fleet before starting them again: a host still on the older version cannot open the migrated ledger"
            } else {
                "this user may not create tables, so it cannot migrate: make it the database's owner, or GRANT CREATE ON SCHEMA public TO it"
            };
            r.warn(
                NAME,
                &format!(
                    "version {have}, older than this tl-ingest's ({ours}): the next start of this version migrates it"
                ),
                fix,
            );
            Schema::Other
        }
        Err(e) => {
            r.skip(NAME, &format!("cannot tell: {e}"));
            Schema::Other
        }
    }
}

/// TLS on a connection that leaves this host, with the server's
/// certificate checked.
async fn pg_tls_check(probe: &mut PgProbe, pg: &PgTarget, r: &mut Report) {
    const NAME: &str = "ledger TLS";
    let mode = pg.ssl_mode();
    let mode_name = mode.name();
    let ssl = match probe.tls_in_use().await {
        Ok(Some(ssl)) => ssl,
        Ok(None) => {
            r.skip(NAME, "the server did not say");
            return;
        }
        Err(e) => {
            r.skip(NAME, &format!("cannot tell: {e}"));
            return;
        }
    };
    let verified = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let fix = "add sslmode=verify-full to ledger.url (and sslrootcert=/path/to/ca.pem when the server's certificate comes from a private CA)";
    match (pg.is_local(), ssl, verified) {
        (_, true, true) => r.ok(
            NAME,
            &format!("in use, the server's certificate checked (sslmode={mode_name})"),
        ),
        (true, true, false) => r.ok(NAME, &format!("in use (sslmode={mode_name})")),
        (true, false, _) => r.ok(
            NAME,
            &format!("not used (sslmode={mode_name}); the server is on this host"),
        ),
        (false, true, false) => r.warn(
            NAME,
            &format!(
                "in use, but the server's certificate is not checked (sslmode={mode_name}): another machine could pose as the server"
            ),
            fix,
        ),
        (false, false, _) => r.warn(
            NAME,
            &format!(
                "not used (sslmode={mode_name}): the login and the ledger's data cross the network in clear text"
            ),
            fix,
        ),
    }
}

/// This host's clock against the database's: leases and the fleet's pacing
/// use the database's clock, but records' times come from each host's.
async fn pg_clock_check(probe: &mut PgProbe, r: &mut Report) {
    const NAME: &str = "clock";
    let ClockReading {
        before,
        database: db,
        after,
    } = match probe.clock().await {
        Ok(reading) => reading,
        Err(e) => {
            r.skip(NAME, &format!("cannot tell: {e}"));
            return;
        }
    };
    let skew = (before + after) / 2 - db;
    let margin = CLOCK_SKEW_MS + (after - before) / 2;
    let shown = span(skew.abs());
    if skew.abs() > margin {
        r.warn(
            NAME,
            &format!(
                "this host's clock is {shown} {} the database server's",
                if skew > 0 { "ahead of" } else { "behind" }
            ),
            "keep every host's clock in sync (NTP: timedatectl set-ntp true, or chrony)",
        );
    } else {
        r.ok(NAME, "within a second of the database server's");
    }
}

/// Daemons of the fleet whose heartbeat is late, as `status` shows them.
async fn fleet_check(ctx: &Context, url: &PgUrl, r: &mut Report) {
    const NAME: &str = "daemons";
    let location = Location::Postgres(url.clone());
    // The schema is this build's: opening the ledger migrates nothing.
    let ledger = match Ledger::open_existing_at(&location).await {
        Ok(l) => l,
        Err(e) => {
            r.skip(NAME, &format!("not checked: {e}"));
            return;
        }
    };
    let listed = ledger.daemons(now_ms() - 3_600_000).await;
    ledger.close().await;
    let daemons = match listed {
        Ok(d) => d,
        Err(e) => {
            r.skip(NAME, &format!("not checked: {e}"));
            return;
        }
    };
    let after = i64::try_from(stale_after(ctx.config.ledger.lease).as_millis()).unwrap_or(i64::MAX);
    let state = |d| DaemonState::of(d, after);
    let running = daemons
        .iter()
        .filter(|d| state(d) == DaemonState::Running)
        .count();
    let stale: Vec<String> = daemons
        .iter()
        .filter(|d| state(d) == DaemonState::Stale)
        .map(|d| {
            format!(
                "{} pid {} (no heartbeat for {})",
                d.host,
                d.pid,
                span(heartbeat_age(d))
            )
        })
        .collect();
    if stale.is_empty() {
        r.ok(NAME, &format!("{running} running, none stale"));
    } else {
        r.warn(
            NAME,
            &format!(
                "{running} running, {} STALE: {}",
                stale.len(),
                stale.join(", ")
            ),
            "see whether that daemon still runs and reaches the database (`tl-ingest status` lists the fleet); its uploads are taken over once its lease (ledger.lease) runs out",
        );
    }
}
