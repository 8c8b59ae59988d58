//! Stopping: no new work, uploads in flight get `upload.shutdown_grace`
//! to finish, and a second stop signal cuts them off at once.

use tokio::sync::mpsc;

use super::{Control, Daemon, systemd};

impl Daemon {
    pub(super) async fn shutdown(mut self, controls: &mut mpsc::Receiver<Control>) {
        systemd::stopping().await;
        tracing::info!(grace = ?self.config.upload.shutdown_grace, "stopping: finishing uploads in flight");
        for root in &mut self.roots {
            root.watcher = None;
        }
        self.running.stop();
        let grace = self.config.upload.shutdown_grace;
        tokio::select! {
            done = tokio::time::timeout(grace, self.running.finished()) => {
                if done.is_err() {
                    tracing::warn!("uploads still running after the grace period; stopping them");
                    self.running.abort();
                    self.running.finished().await;
                }
            }
            Some(Control::Shutdown) = controls.recv() => {
                tracing::warn!("second stop signal: stopping now");
                self.running.abort();
                self.running.finished().await;
            }
        }
        self.ledger.close().await;
        tracing::info!("stopped");
    }
}
