//! Whether the ledger can write now: an outage (disk full, read-only,
//! connection lost, damaged) is one episode from the first write that fails
//! to the first that commits again. Logged once when it starts ("the
//! ledger's disk is full (…): waiting; nothing is lost") and once when it
//! ends ("the ledger is writable again after 41 s"), not once per call; read
//! by `/healthz` and the daemon's rescan after an outage. Every driver error
//! is counted by class (`tl_ingest_ledger_errors_total`).
//!
//! Fault injection, for tests only: [`Health::inject_disk_full`] makes every
//! write fail as SQLite does on a full disk for a while (reads still work,
//! as they do on a full disk). The daemon binary can be given the same
//! fault with `TL_INGEST_TEST_FAULT=ledger-full-on-accept:<seconds>`: the
//! first time an upload's `201` is about to be recorded, writes start
//! failing for that long — the "disk fills between the 201 and its commit"
//! case of RELIABILITY.md. Nothing reads it unless it is set.

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::error::{ErrorClass, classify};

/// An outage in progress.
#[derive(Debug, Clone)]
pub struct Outage {
    pub class: ErrorClass,
    /// When the first write failed (Unix ms).
    pub since_ms: i64,
    /// The driver's words for the first failure.
    pub detail: String,
    started: Instant,
}

impl Outage {
    /// "the ledger's disk is full since 2026-…Z (database or disk is full)".
    pub fn describe(&self) -> String {
        format!(
            "{} since {} ({})",
            self.class.describe(),
            super::rfc3339(self.since_ms),
            self.detail
        )
    }
}

#[derive(Debug)]
pub struct Health {
    outage: Mutex<Option<Outage>>,
    /// Counts the outages that ended: a stage or the daemon waits on it to
    /// do again what the outage stopped.
    recovered: watch::Sender<u64>,
    fault_until: Mutex<Option<Instant>>,
    env_fault_fired: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            outage: Mutex::new(None),
            recovered: watch::Sender::new(0),
            fault_until: Mutex::new(None),
            env_fault_fired: AtomicBool::new(false),
        }
    }
}

/// The environment variable of the test-only fault (see the module head).
const FAULT_ENV: &str = "TL_INGEST_TEST_FAULT";

impl Health {
    /// A driver error: counted, and the start of an outage if it is one.
    pub(super) fn saw(&self, e: &sqlx::Error) {
        let class = classify(e);
        crate::metrics::ledger_error(class.as_str());
        if !class.is_outage() {
            return;
        }
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if outage.is_none() {
            let detail = e.to_string();
            tracing::error!(
                class = class.as_str(),
                error = %detail,
                "{} ({detail}): waiting; nothing is lost",
                class.describe()
            );
            *outage = Some(Outage {
                class,
                since_ms: super::now_ms(),
                detail,
                started: Instant::now(),
            });
        }
    }

    /// A write committed: the end of an outage, if one was on.
    pub(super) fn wrote(&self) {
        let ended = self.outage.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(o) = ended {
            let secs = o.started.elapsed().as_secs_f64();
            tracing::info!(
                class = o.class.as_str(),
                outage_ms = u64::try_from(o.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "the ledger is writable again after {secs:.0} s"
            );
            self.recovered.send_modify(|n| *n += 1);
        }
    }

    /// The outage going on, if any.
    pub fn outage(&self) -> Option<Outage> {
        self.outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes each time an outage ends.
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.recovered.subscribe()
    }

    /// Make every write fail with SQLite's "database or disk is full" for
    /// `d` (tests).
    pub fn inject_disk_full(&self, d: Duration) {
        *self.fault_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + d);
    }

    /// The injected fault, if one is on: the error a write gets.
    pub(super) fn fault(&self) -> Result<(), sqlx::Error> {
        let until = *self.fault_until.lock().unwrap_or_else(|p| p.into_inner());
        match until {
            Some(t) if Instant::now() < t => Err(sqlx::Error::Database(Box::new(InjectedFull))),
            _ => Ok(()),
        }
    }

    /// Arm the environment's fault if it names `point` (once per process).
    pub(super) fn fault_point(&self, point: &str) {
        let Ok(spec) = std::env::var(FAULT_ENV) else {
            return;
        };
        let Some((name, secs)) = spec.split_once(':') else {
            return;
        };
        if name != point || self.env_fault_fired.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(secs) = secs.parse::<f64>()
            && let Ok(d) = Duration::try_from_secs_f64(secs)
        {
            tracing::warn!(
                point,
                seconds = secs,
                "test fault: ledger writes fail as on a full disk"
            );
            self.inject_disk_full(d);
        }
    }
}

/// The error an injected fault gives: SQLite's own words and code.
#[derive(Debug)]
struct InjectedFull;

impl std::fmt::Display for InjectedFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database or disk is full (injected)")
    }
}

impl std::error::Error for InjectedFull {}

impl sqlx::error::DatabaseError for InjectedFull {
    fn message(&self) -> &str {
        "database or disk is full (injected)"
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("13"))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}
