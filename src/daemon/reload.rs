//! SIGHUP: re-read the configuration and switch over only if all of it
//! works; uploads in flight finish first.

use std::sync::Arc;

use super::roots::{arm_roots, root_names};
use super::{ClientSource, Daemon, make_client, systemd};
use crate::config::Config;
use crate::ledger::Location;
use crate::pipeline::Pipeline;

impl Daemon {
    /// SIGHUP: re-read the configuration; apply it only if all of it works.
    pub(super) async fn reload(&mut self) {
        systemd::reloading().await;
        // Requeued interrupted uploads are not announced: count afresh.
        self.counts = None;
        match self.try_reload().await {
            Ok(()) => tracing::info!(roots = self.roots.len(), "configuration reloaded"),
            Err(e) => {
                // The message may quote a value, and a value may be the key:
                // the running one here, the newly configured one in
                // `try_reload`.
                let e = self.pipeline.client().redact(&e);
                tracing::error!(error = %e, "configuration not reloaded; still running on the previous one")
            }
        }
        systemd::ready().await;
    }

    async fn try_reload(&mut self) -> Result<(), String> {
        let (config, _) = Config::load(&self.setup.load).map_err(|e| e.to_string())?;
        let env = &self.setup.load.env;
        let location =
            |c: &Config| Location::from_settings(c.ledger_path(env), c.ledger.url.as_deref());
        if location(&config) != location(&self.config)
            && matches!(self.setup.client, ClientSource::Configured)
        {
            tracing::warn!(
                "ledger.path or ledger.url changed: that takes a restart; keeping the current ledger"
            );
        }
        let client = make_client(&self.setup, &config).map_err(|e| e.to_string())?;
        let roots = arm_roots(&self.setup, &config, &self.feed_tx)
            .map_err(|e| client.redact(&e.to_string()))?;
        // Everything checks out: switch over.
        self.roots = roots;
        self.settler.set_settle(config.watcher.settle);
        let config = Arc::new(config);
        // A new client (a new key, perhaps) and new upload settings take a
        // new pipeline; uploads in flight finish first.
        self.running.drain(self.config.upload.shutdown_grace).await;
        self.pipeline = Pipeline::new(self.ledger.clone(), client, config.clone());
        // Uploads cut off by the drain are queued for a lookup already;
        // this also covers any the drain could not record. Whatever
        // happens, the new pipeline starts: the old one is gone.
        if let Err(e) = self.pipeline.recover().await {
            tracing::warn!(error = %e, "could not requeue interrupted uploads; the next start will");
        }
        if let Err(e) = self.ledger.set_roots(&root_names(&self.roots)).await {
            tracing::warn!(error = %e, "could not record the watched folders in the ledger");
        }
        self.running = self.pipeline.start();
        self.config = config;
        self.scan_all("reload");
        Ok(())
    }
}
