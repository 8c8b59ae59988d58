//! The gate every request to the platform passes: shared by all workers
//! and the poller, so that a 429 pauses the whole pool until the server's
//! reset time, a rejected key stops everything with one clear error, and
//! `requests_per_minute` paces uploads client-side.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::ledger::Ledger;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest a single 429 may pause the pool: a server that asks for
/// more is taken as lying, and asked again after this long.
const MAX_RATE_LIMIT_PAUSE: Duration = crate::api::MAX_RETRY_AFTER;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateState {
    Open,
    /// A 429 said to wait; nobody sends before `until`.
    RateLimited {
        until: Instant,
        wall: SystemTime,
    },
    /// The API key was rejected; nothing is sent until [`Gate::resume`].
    AuthRejected {
        message: String,
    },
}

#[derive(Debug)]
pub struct Gate {
    /// The current state. Senders: workers and the poller when they see a
    /// 429 or a 401/403, and `resume`. Receivers: every task about to send,
    /// and the CLI (to stop a one-shot upload on a rejected key).
    state: watch::Sender<GateState>,
    /// Minimum spacing of paced requests; `None` means unlimited.
    spacing: Option<Duration>,
    /// When the next paced request may go.
    next_slot: Mutex<Instant>,
    /// A shared ledger: the pacing and the 429 pause hold for the fleet.
    fleet: Option<Ledger>,
    /// When the fleet's 429 pause was last read (see [`Gate::wait_open`]).
    fleet_checked: Mutex<Option<Instant>>,
}

/// How stale this host's view of the fleet's 429 pause may be: well under
/// the moment a server would count requests after its 429 as ignoring it.
const FLEET_PAUSE_FRESH: Duration = Duration::from_millis(20);

impl Gate {
    pub fn new(requests_per_minute: u32) -> Gate {
        let spacing =
            (requests_per_minute > 0).then(|| Duration::from_secs(60) / requests_per_minute);
        Gate {
            state: watch::Sender::new(GateState::Open),
            spacing,
            next_slot: Mutex::new(Instant::now()),
            fleet: None,
            fleet_checked: Mutex::new(None),
        }
    }

    /// On a shared ledger, pace requests and share 429 pauses with every
    /// daemon on it (through the ledger); otherwise this process alone.
    pub(super) fn for_fleet(mut self, ledger: &Ledger) -> Gate {
        if ledger.is_shared() {
            self.fleet = Some(ledger.clone());
        }
        self
    }

    pub fn state(&self) -> GateState {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<GateState> {
        self.state.subscribe()
    }

    /// Wait until requests may go. Returns false if `cancel` fired first.
    pub(super) async fn wait_open(&self, cancel: &CancellationToken) -> bool {
        if let Some(ledger) = &self.fleet {
            self.sync_fleet_pause(ledger).await;
        }
        let mut rx = self.state.subscribe();
        loop {
            let current = rx.borrow_and_update().clone();
            match current {
                GateState::Open => return true,
                GateState::RateLimited { until, .. } => {
                    if until <= Instant::now() {
                        self.state.send_if_modified(|s| {
                            let expired = matches!(s, GateState::RateLimited { until: u, .. } if *u <= Instant::now());
                            if expired {
                                *s = GateState::Open;
                            }
                            expired
                        });
                        continue;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        _ = tokio::time::sleep_until(until) => {}
                        _ = rx.changed() => {}
                    }
                }
                GateState::AuthRejected { .. } => {
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        changed = rx.changed() => if changed.is_err() { return false },
                    }
                }
            }
        }
    }

    /// Wait for the gate and for this request's slot under
    /// `requests_per_minute`.
    pub async fn before_request(&self, cancel: &CancellationToken) -> bool {
        if !self.wait_open(cancel).await {
            return false;
        }
        if let Some(ledger) = &self.fleet {
            match self.fleet_slot(ledger, cancel).await {
                Ok(go) => return go,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the shared ledger's rate limit; pacing this host alone");
                }
            }
        }
        let Some(spacing) = self.spacing else {
            return true;
        };
        let slot = {
            let mut next = match self.next_slot.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let slot = (*next).max(Instant::now());
            *next = slot + spacing;
            slot
        };
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep_until(slot) => true,
        }
    }

    /// A 429: pause everyone until `until` (a later pause wins).
    /// The fleet's next request slot (when requests are paced), then a last
    /// look at the fleet's 429 pause: another host may have been told to
    /// wait a moment ago. A slot that passed during a pause is given up for
    /// a new one, or every waiter would go at once when the pause ends.
    async fn fleet_slot(
        &self,
        ledger: &Ledger,
        cancel: &CancellationToken,
    ) -> Result<bool, crate::ledger::LedgerError> {
        loop {
            if let Some(spacing) = self.spacing {
                let spacing_ms = i64::try_from(spacing.as_millis()).unwrap_or(i64::MAX);
                let wait_ms = ledger.reserve_request(spacing_ms).await?;
                let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            let left = ledger.fleet_pause_left().await?;
            if left <= 0 && self.state() == GateState::Open {
                return Ok(true);
            }
            if left > 0 {
                self.pause_locally(Duration::from_millis(u64::try_from(left).unwrap_or(0)));
            }
            if !self.wait_open(cancel).await {
                return Ok(false);
            }
            if self.spacing.is_none() {
                return Ok(true);
            }
        }
    }

    /// Bring a 429 pause another host recorded to this host, reading it at
    /// most every [`FLEET_PAUSE_FRESH`].
    async fn sync_fleet_pause(&self, ledger: &Ledger) {
        {
            let mut checked = match self.fleet_checked.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if checked.is_some_and(|at| at.elapsed() < FLEET_PAUSE_FRESH) {
                return;
            }
            *checked = Some(Instant::now());
        }
        match ledger.fleet_pause_left().await {
            Ok(left) if left > 0 => {
                self.pause_locally(Duration::from_millis(u64::try_from(left).unwrap_or(0)));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the fleet's 429 pause"),
        }
    }

    /// Another host's 429: wait as it does, without telling the fleet again.
    pub(super) fn pause_locally(&self, wait: Duration) {
        let wait = wait.min(MAX_RATE_LIMIT_PAUSE);
        let deadline = Instant::now() + wait;
        self.state.send_if_modified(|s| match s {
            GateState::AuthRejected { .. } => false,
            GateState::RateLimited { until: u, .. } if *u >= deadline => false,
            _ => {
                *s = GateState::RateLimited {
                    until: deadline,
                    wall: SystemTime::now() + wait,
                };
                true
            }
        });
    }

    pub fn rate_limited(&self, until: SystemTime) {
        let wait = until
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_RATE_LIMIT_PAUSE);
        if let Some(ledger) = self.fleet.clone() {
            let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            tokio::spawn(async move {
                if let Err(e) = ledger.pause_fleet(wait_ms).await {
                    tracing::warn!(error = %e, "cannot share a 429 pause with the fleet");
                }
            });
        }
        self.pause_locally(wait);
    }

    /// A 401/403: stop sending until the key is fixed.
    pub(super) fn auth_rejected(&self, message: String) {
        self.state.send_if_modified(|s| {
            if matches!(s, GateState::AuthRejected { .. }) {
                return false;
            }
            *s = GateState::AuthRejected { message };
            true
        });
    }

    /// Open the gate again (a new key, or an operator's word).
    pub fn resume(&self) {
        self.state.send_replace(GateState::Open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_holds_everyone_until_reset() {
        let gate = std::sync::Arc::new(Gate::new(0));
        let cancel = CancellationToken::new();
        gate.rate_limited(SystemTime::now() + Duration::from_secs(30));
        let start = Instant::now();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (g, c) = (gate.clone(), cancel.clone());
                tokio::spawn(async move {
                    assert!(g.wait_open(&c).await);
                    Instant::now()
                })
            })
            .collect();
        for w in waiters {
            let opened = w.await.expect("join");
            assert!(
                opened - start >= Duration::from_secs(29),
                "{:?}",
                opened - start
            );
        }
        assert_eq!(gate.state(), GateState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_429_does_not_shorten_the_pause() {
        let gate = Gate::new(0);
        gate.rate_limited(SystemTime::now() + Duration::from_secs(60));
        gate.rate_limited(SystemTime::now() + Duration::from_secs(5));
        let start = Instant::now();
        assert!(gate.wait_open(&CancellationToken::new()).await);
        assert!(Instant::now() - start >= Duration::from_secs(59));
    }

    #[tokio::test(start_paused = true)]
    async fn auth_rejection_waits_for_resume_or_cancel() {
        let gate = std::sync::Arc::new(Gate::new(0));
        gate.auth_rejected("the API key was rejected".into());
        let cancel = CancellationToken::new();
        let waiter = {
            let (g, c) = (gate.clone(), cancel.clone());
            tokio::spawn(async move { g.wait_open(&c).await })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiter.is_finished(), "must not open by itself");
        gate.resume();
        assert!(waiter.await.expect("join"));

        gate.auth_rejected("again".into());
        cancel.cancel();
        assert!(!gate.wait_open(&cancel).await);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_spaces_requests() {
        let gate = Gate::new(60);
        let cancel = CancellationToken::new();
        let start = Instant::now();
        for _ in 0..4 {
            assert!(gate.before_request(&cancel).await);
        }
        let took = Instant::now() - start;
        assert!(took >= Duration::from_secs(3), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
    }
}
