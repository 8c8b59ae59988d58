//! State shared by every connection of one emulator, composed of the parts below it:
//! configuration, current faults with their RNG, counters, the asset store, the
//! multipart sessions and the indexed assets. Each lives behind its own short-held
//! mutex; no lock is ever held across an `.await`, and no two are held at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::config::{EmulatorConfig, Faults};
use super::faults::FaultState;
use super::indexed_assets::IndexedAssets;
use super::model::{AssetView, Stats};
use super::sessions::Sessions;
use super::store::Store;

/// Upload limits and timing, fixed for the life of the emulator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub ready_delay: Duration,
    pub max_direct_size: u64,
    pub max_image_size: u64,
    pub max_multipart_size: u64,
    /// Never 0.
    pub multipart_chunk_size: u64,
    pub single_use_urls: bool,
    pub ignore_fields_after_file: bool,
    pub url_ttl: Duration,
}

impl Limits {
    /// The largest body any upload route (direct upload or chunk PUT) accepts.
    pub fn largest_upload_body(&self) -> u64 {
        self.max_direct_size
            .max(self.max_image_size)
            .max(self.multipart_chunk_size)
    }
}

/// `Debug` is written by hand so that the API key never reaches a log.
pub(crate) struct Shared {
    pub api_key: String,
    pub limits: Limits,
    /// The listening address, for presigned URLs when a request has no `Host`.
    pub addr: SocketAddr,
    /// Where received chunks are kept until their session completes.
    pub chunk_root: ChunkRoot,
    /// Headers every chunk PUT must carry (`EmulatorConfig::upload_headers`).
    pub upload_headers: std::collections::BTreeMap<String, String>,
    faults: Mutex<FaultState>,
    stats: Mutex<Stats>,
    store: Mutex<Store>,
    sessions: Mutex<Sessions>,
    indexed: Mutex<IndexedAssets>,
}

impl Shared {
    pub fn new(config: EmulatorConfig, addr: SocketAddr) -> Self {
        Self {
            api_key: config.api_key,
            limits: Limits {
                ready_delay: config.ready_delay,
                max_direct_size: config.max_direct_size,
                max_image_size: config.max_image_size,
                max_multipart_size: config.max_multipart_size,
                multipart_chunk_size: config.multipart_chunk_size.max(1),
                single_use_urls: config.single_use_urls,
                ignore_fields_after_file: config.ignore_fields_after_file,
                url_ttl: config.url_ttl,
            },
            addr,
            chunk_root: ChunkRoot::new(),
            upload_headers: config.upload_headers,
            faults: Mutex::new(FaultState::new(config.faults)),
            stats: Mutex::new(Stats::default()),
            store: Mutex::new(Store::default()),
            sessions: Mutex::new(Sessions::default()),
            indexed: Mutex::new(IndexedAssets::default()),
        }
    }

    pub fn faults(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.faults)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.faults().replace(faults);
    }

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn sessions(&self) -> MutexGuard<'_, Sessions> {
        lock(&self.sessions)
    }

    pub fn indexed(&self) -> MutexGuard<'_, IndexedAssets> {
        lock(&self.indexed)
    }

    /// Every asset created and not deleted, oldest first, as tests and the admin API see it.
    pub fn asset_views(&self) -> Vec<AssetView> {
        let ready_delay = self.limits.ready_delay;
        let store = self.store();
        store
            .oldest_first()
            .map(|a| a.to_view(ready_delay))
            .collect()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("limits", &self.limits)
            .field("addr", &self.addr)
            .field("chunk_root", &self.chunk_root)
            .finish_non_exhaustive()
    }
}

/// A private folder under the system temp dir, one subfolder per multipart session.
/// Created on first use; removed with everything in it when the emulator is dropped.
#[derive(Debug)]
pub(crate) struct ChunkRoot {
    path: PathBuf,
}

impl ChunkRoot {
    fn new() -> Self {
        let name = format!(
            "tl-emulator-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        );
        Self {
            path: std::env::temp_dir().join(name),
        }
    }

    /// The folder of one session's chunks (not created here).
    pub fn session_dir(&self, upload_id: &str) -> PathBuf {
        self.path.join(upload_id)
    }
}

impl Drop for ChunkRoot {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, path = %self.path.display(), "could not remove emulator chunks");
            }
        }
    }
}

/// A panic while a lock was held cannot leave these plain counters and maps in a state
/// worse than "one request half-recorded", so keep serving rather than cascade panics.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
