//! The checks on values that types alone cannot express; each message
//! names the key.

use std::time::Duration;

use super::Config;
use crate::pg_url::PgUrl;

impl Config {
    /// Checks that types alone cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let u = &self.upload;
        if u.workers == 0 || u.workers > 256 {
            return Err(format!(
                "upload.workers: must be between 1 and 256, not {}",
                u.workers
            ));
        }
        if u.max_attempts == 0 {
            return Err("upload.max_attempts: must be at least 1".into());
        }
        if u.initial_backoff.is_zero() || u.initial_backoff > u.max_backoff {
            return Err(
                "upload.initial_backoff: must be above zero and not above upload.max_backoff"
                    .into(),
            );
        }
        if self.api.poll_interval.is_zero() {
            return Err("api.poll_interval: must be above zero".into());
        }
        if self.api.request_timeout.is_zero() || self.api.connect_timeout.is_zero() {
            return Err("api.request_timeout and api.connect_timeout: must be above zero".into());
        }
        let base = &self.api.base_url;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "api.base_url: must start with http:// or https://, not {base:?}"
            ));
        }
        let listen = &self.telemetry.metrics_listen;
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "telemetry.metrics_listen: {listen:?} is not host:port (e.g. \"127.0.0.1:9464\")"
            ));
        }
        if self.ledger.path.as_os_str().is_empty() {
            return Err("ledger.path: must not be empty".into());
        }
        if let Some(url) = &self.ledger.url {
            PgUrl::parse(url).map_err(|e| format!("ledger.url: {e}"))?;
        }
        if self.ledger.lease < Duration::from_secs(1) {
            return Err("ledger.lease: must be at least 1s".into());
        }
        for (i, w) in self.watch.iter().enumerate() {
            if w.path.as_os_str().is_empty() {
                return Err(format!("watch[{i}].path: must not be empty"));
            }
            for glob in w.include.iter().chain(&w.exclude) {
                globset::Glob::new(glob)
                    .map_err(|e| format!("watch[{i}]: invalid glob {glob:?}: {e}"))?;
            }
        }
        Ok(())
    }
}
