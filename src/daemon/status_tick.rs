//! What the daemon tells the outside about itself: systemd's STATUS= and
//! watchdog on every status tick, the queue and state metrics, and
//! /metrics + /healthz; a rejected API key is tried again from here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Daemon, DaemonError, systemd};
use crate::ledger::{FileState, now_ms};
use crate::pipeline::GateState;

/// Auth rejections are retried after this long, in case the key was fixed
/// on the platform's side.
const AUTH_RETRY: Duration = Duration::from_secs(300);
/// How often STATUS= (and the watchdog) are refreshed.
pub(super) const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Records are counted at least this often, for other processes' changes.
const RECOUNT_EVERY: Duration = Duration::from_secs(60);
/// /healthz fails when the main loop has not turned for this long.
const STALL: Duration = Duration::from_secs(30);

impl Daemon {
    /// Serve /metrics and /healthz when `telemetry.metrics_listen` is set.
    pub(super) async fn serve_metrics(&self, stop: CancellationToken) -> Result<(), DaemonError> {
        let listen = &self.config.telemetry.metrics_listen;
        if listen.is_empty() {
            return Ok(());
        }
        let addr: SocketAddr = listen.parse().map_err(|_| {
            DaemonError::Config(format!(
                "telemetry.metrics_listen: {listen:?} is not host:port"
            ))
        })?;
        let metrics = crate::metrics::install().map_err(|e| DaemonError::Config(e.to_string()))?;
        let (health, heartbeat) = (self.health.clone(), self.heartbeat.clone());
        let check = Arc::new(move || {
            let idle = now_ms().saturating_sub(heartbeat.load(Ordering::Relaxed));
            if idle > STALL.as_millis() as i64 {
                return Err(format!(
                    "the main loop has not turned for {} s",
                    idle / 1000
                ));
            }
            match health.lock() {
                Ok(h) => h.clone(),
                Err(_) => Err("health state unavailable".into()),
            }
        });
        let (bound, _task) = crate::metrics::serve(addr, metrics, check, stop)
            .await
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        tracing::info!(address = %bound, "serving /metrics and /healthz");
        Ok(())
    }

    /// Records per state: counted again only when this daemon changed
    /// something since, or now and then for changes other processes made
    /// (`retry`, `forget`); otherwise the ledger is only asked a cheap
    /// question, so that an idle daemon over a million records stays idle.
    async fn counts(&mut self) -> Result<Vec<(FileState, i64)>, crate::ledger::LedgerError> {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut changed = false;
        while let Ok(_) | Err(TryRecvError::Lagged(_)) = self.status_changes.try_recv() {
            changed = true;
        }
        match &self.counts {
            Some((counts, at)) if !changed && at.elapsed() < RECOUNT_EVERY => {
                self.ledger.ping().await?;
                Ok(counts.clone())
            }
            _ => {
                let counts = self.ledger.counts().await?;
                self.counts = Some((counts.clone(), Instant::now()));
                Ok(counts)
            }
        }
    }

    /// Refresh systemd's STATUS= and the watchdog; retry a rejected key
    /// after a while.
    pub(super) async fn status(&mut self) {
        self.heartbeat.store(now_ms(), Ordering::Relaxed);
        let mut healthy: Result<(), String> = Ok(());
        if let Ok((depth, oldest)) = self.ledger.queue_stats().await {
            let age = oldest.map_or(0, |t| now_ms().saturating_sub(t).max(0));
            crate::metrics::queue(depth, age as f64 / 1000.0);
        }
        match self.counts().await {
            Ok(counts) => self.report(&counts),
            Err(e) => {
                tracing::error!(error = %e, "the ledger does not answer");
                healthy = Err(format!("the ledger does not answer: {e}"));
            }
        }
        // Reads answer, writes do not: unhealthy until a write goes through.
        if let Some(outage) = self.ledger.health().outage() {
            let text = outage.describe();
            systemd::status(&format!("waiting: {text}"));
            healthy = Err(text);
        }
        if let Ok(mut h) = self.health.lock() {
            *h = healthy;
        }
        self.retry_rejected_key();
    }

    /// Publish the records per state: the metrics, STATUS=, and (the loop
    /// is turning and the ledger answers) the watchdog.
    fn report(&self, counts: &[(FileState, i64)]) {
        let by_state: Vec<(&str, i64)> = FileState::ALL
            .iter()
            .map(|s| {
                (
                    s.as_str(),
                    counts.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n),
                )
            })
            .collect();
        crate::metrics::files_by_state(&by_state);
        let n = |s: FileState| {
            counts
                .iter()
                .find(|(st, _)| *st == s)
                .map_or(0, |(_, n)| *n)
        };
        let mut text = format!(
            "{} uploading, {} queued, {} processing, {} ready, {} failed, {} settling",
            n(FileState::Uploading),
            n(FileState::Queued) + n(FileState::Discovered),
            n(FileState::Processing),
            n(FileState::Ready),
            n(FileState::Failed),
            self.settler.len()
        );
        match self.pipeline.gate().state() {
            GateState::AuthRejected { .. } => text.push_str("; paused: the API key was rejected"),
            GateState::RateLimited { wall, .. } => text.push_str(&format!(
                "; rate limited until {}",
                humantime::format_rfc3339_seconds(wall)
            )),
            GateState::Open => {}
        }
        systemd::status(&text);
        // The loop is turning and the ledger answers: tell the watchdog.
        if systemd::watchdog_interval().is_some() {
            systemd::watchdog();
        }
    }

    /// A rejected key is tried again `AUTH_RETRY` after this loop first
    /// saw it rejected.
    fn retry_rejected_key(&mut self) {
        match self.pipeline.gate().state() {
            GateState::AuthRejected { .. } => {
                let since = *self.auth_rejected_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= AUTH_RETRY {
                    tracing::info!("trying the API key again");
                    self.auth_rejected_at = None;
                    self.pipeline.gate().resume();
                }
            }
            _ => self.auth_rejected_at = None,
        }
    }
}
