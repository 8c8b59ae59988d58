//! State shared by every connection of one emulator: configuration, current faults with
//! their RNG, counters and the asset store. Each lives behind its own short-held mutex;
//! no lock is ever held across an `.await`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::faults::FaultState;
use super::store::Store;
use super::{EmulatorConfig, Faults, Stats};

/// Upload limits and timing, fixed for the life of the emulator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub ready_delay: Duration,
    pub max_direct_size: u64,
    pub max_image_size: u64,
}

/// `Debug` is written by hand so that the API key never reaches a log.
pub(crate) struct Shared {
    pub api_key: String,
    pub limits: Limits,
    faults: Mutex<FaultState>,
    stats: Mutex<Stats>,
    store: Mutex<Store>,
}

impl Shared {
    pub fn new(config: EmulatorConfig) -> Self {
        Self {
            api_key: config.api_key,
            limits: Limits {
                ready_delay: config.ready_delay,
                max_direct_size: config.max_direct_size,
                max_image_size: config.max_image_size,
            },
            faults: Mutex::new(FaultState::new(config.faults)),
            stats: Mutex::new(Stats::default()),
            store: Mutex::new(Store::default()),
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
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A panic while a lock was held cannot leave these plain counters and maps in a state
/// worse than "one request half-recorded", so keep serving rather than cascade panics.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
