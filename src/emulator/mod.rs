//! An in-process, TwelveLabs-compatible API server for tests, demos and benchmarks.
//!
//! It speaks the `/v1.3/assets` subset of the API (upload by `direct` file or `url`,
//! retrieve, list, delete, change `user_metadata`), multipart uploads
//! (`/v1.3/assets/multipart-uploads`, with S3-like presigned chunk URLs served at
//! `/_s3/{upload_id}/{chunk_index}?sig=...`) and indexing (`/v1.3/indexes/{index_id}/indexed-assets`). It turns assets `ready` (or
//! `failed`, for content that is not media) after a configurable delay, and injects
//! faults on request: latency, 429s, 500s before or after the body, and TCP resets
//! part-way through an upload or a chunk PUT. Uploads are streamed and hashed as they
//! arrive, so it keeps up with loopback upload benchmarks; multipart chunks go to files
//! in a private temp folder, removed when the emulator is dropped.
//!
//! This file owns the running [`Emulator`] and re-exports the rest of the public API.
//! The submodules are layered, each importing only those below it:
//! - at the bottom, plain data: `config` ([`EmulatorConfig`], [`Faults`]), `model`
//!   ([`Stats`], [`AssetView`], ids, timestamps), `error` and `params`;
//! - the parts of the state, each behind its own lock: `faults` (the faults and their
//!   RNG), `store` (assets), `sessions` (multipart sessions), `indexed_assets`;
//! - `state`, which composes them into the state every connection shares;
//! - the serving: `server` (connections), `gate` (key check and fault injection), the
//!   routes (`routes`, `upload`, `upload_sessions`, `user_metadata`, `chunks`,
//!   `indexing`); `throttle` paces request bodies for the slow link of
//!   `Faults::slow_bytes_per_sec`.

mod chunks;
mod config;
mod error;
mod faults;
mod gate;
mod indexed_assets;
mod indexing;
mod model;
mod params;
mod routes;
mod server;
mod sessions;
mod state;
mod store;
mod throttle;
mod upload;
mod upload_sessions;
mod user_metadata;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use self::config::{EmulatorConfig, Faults};
use self::model::SessionEnd;
pub use self::model::{AssetView, Stats};
use self::state::Shared;

/// A running emulator. Dropping it stops the server and all its connections.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; aborted on drop, which also aborts every connection task.
    task: JoinHandle<()>,
}

impl Emulator {
    /// Binds `config.listen`, then serves in a spawned task. The listener is bound before
    /// this returns, so clients can connect at once.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, addr));
        let router = routes::router(shared.clone());
        let task = tokio::spawn(server::accept_loop(listener, router));
        tracing::debug!(%addr, "emulator listening");
        Ok(Emulator { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:4010/v1.3`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1.3", self.addr)
    }

    /// Replaces the faults; takes effect for the next request. A `seed` restarts the
    /// fault sequence.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults().faults().clone()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats().clone()
    }

    /// Expires a multipart session now, as if its 24 hours had passed: reports and URL
    /// requests get 400 `upload_expired`, its chunk PUTs 404 `NoSuchUpload`, its status shows
    /// `expired`, its asset turns `failed`, and its chunk files are deleted. False if the
    /// upload id is unknown or the session already completed or failed.
    pub fn expire_session(&self, upload_id: &str) -> bool {
        upload_sessions::end_session(&self.shared, upload_id, SessionEnd::Expire)
    }

    /// Aborts a multipart session now: it is forgotten (its status and reports 404),
    /// its chunk PUTs get 404 `NoSuchUpload`, its asset turns `failed`, its chunk files
    /// are deleted. False if the upload id is unknown or the session already ended.
    pub fn abort_session(&self, upload_id: &str) -> bool {
        upload_sessions::end_session(&self.shared, upload_id, SessionEnd::Abort)
    }

    /// Every asset created and not deleted, oldest first. A multipart asset whose upload
    /// has not completed shows status `uploading` here (`processing` in the API).
    pub fn assets(&self) -> Vec<AssetView> {
        self.shared.asset_views()
    }

    /// Serves until the server task ends (it only ends when aborted or on panic).
    /// Dropping this future (e.g. on Ctrl-C in a `select!`) stops the server too.
    pub async fn wait(mut self) {
        // Await the handle in place, so that `Drop` still aborts it if we are cancelled.
        if let Err(error) = (&mut self.task).await {
            tracing::error!(%error, "emulator task ended");
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
