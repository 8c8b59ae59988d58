//! This daemon's part in a fleet sharing one ledger: a heartbeat that
//! renews the leases on what its workers are sending (and stops any upload
//! whose record another daemon has taken over), the takeover of records
//! whose daemon died, and the fleet-wide 429 pause brought to this host.
//!
//! On a SQLite ledger only the heartbeat runs (for `status`); there are no
//! leases, since the lock file proves nobody else is working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::ledger::LedgerError;

/// The records this process's workers hold, each with the token that
/// stops its upload when the record is no longer ours, and its claim's
/// epoch.
#[derive(Debug, Default)]
pub struct Claims(Mutex<HashMap<i64, (Instant, CancellationToken, i64)>>);

impl Claims {
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, (Instant, CancellationToken, i64)>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A worker claimed `id` with claim `epoch`: the token it watches. A
    /// worker still holding an older claim of it (this daemon took its own
    /// record back) is stopped.
    pub fn hold(&self, id: i64, epoch: i64) -> CancellationToken {
        let token = CancellationToken::new();
        if let Some((_, older, _)) = self
            .lock()
            .insert(id, (Instant::now(), token.clone(), epoch))
        {
            older.cancel();
        }
        token
    }

    /// The worker of claim `epoch` is done with `id` (a newer claim's hold
    /// stays).
    pub fn release(&self, id: i64, epoch: i64) {
        let mut claims = self.lock();
        if claims.get(&id).is_some_and(|(_, _, e)| *e == epoch) {
            claims.remove(&id);
        }
    }

    /// Stop the uploads of records claimed before `asked` that the ledger
    /// no longer lists as ours (`held`); claims made since may not be in
    /// the answer yet.
    fn lose_missing(&self, held: &[i64], asked: Instant) -> usize {
        let mut lost = 0;
        for (id, (since, token, _)) in self.lock().iter() {
            if *since < asked && !held.contains(id) && !token.is_cancelled() {
                token.cancel();
                lost += 1;
            }
        }
        lost
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The records held now.
    fn ids(&self) -> Vec<i64> {
        self.lock().keys().copied().collect()
    }

    /// Stop every upload (the leases can no longer be renewed).
    fn lose_all(&self) -> usize {
        let claims = self.lock();
        for (_, token, _) in claims.values() {
            token.cancel();
        }
        claims.len()
    }
}

/// How often the heartbeat runs: a third of the lease, so that two missed
/// beats still leave time before the lease runs out.
pub fn beat_interval(lease: Duration) -> Duration {
    (lease / 3).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// A daemon that has not stopped and whose last heartbeat is older than
/// this is stale: it missed three beats (never less than a second, so that
/// a beat a little late on a busy host is not taken for a dead daemon).
pub fn stale_after(lease: Duration) -> Duration {
    (beat_interval(lease) * 3).max(Duration::from_secs(1))
}

/// Stop every upload once half the lease has passed since the last renewal
/// (`last_ok`), whatever the heartbeat loop is waiting for: another daemon
/// may take the records over when the lease runs out, so this daemon stops
/// sending them first, and nothing goes up twice.
async fn fence(shared: Arc<Shared>, last_ok: Arc<Mutex<Instant>>, lease: Duration) {
    let mut fenced_for: Option<Instant> = None;
    loop {
        let last = *last_ok.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = last + lease / 2;
        if Instant::now() >= deadline && fenced_for != Some(last) {
            fenced_for = Some(last);
            let n = shared.claims.lose_all();
            if n > 0 {
                tracing::error!(
                    uploads = n,
                    "cannot renew this daemon's leases; stopped its uploads until the ledger answers again"
                );
            }
        }
        let recheck = Instant::now() + beat_interval(lease) / 4;
        tokio::time::sleep_until(deadline.max(recheck)).await;
    }
}

/// Run until the uploads in flight are done after `stop` (their leases are
/// renewed while they drain) or `abort`, then leave the fleet.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken, abort: CancellationToken) {
    let ledger = &shared.ledger;
    let lease = shared.config.ledger.lease;
    let shared_ledger = ledger.is_shared();
    let every = beat_interval(lease);
    let last_ok = Arc::new(Mutex::new(Instant::now()));
    let fencing =
        shared_ledger.then(|| tokio::spawn(fence(shared.clone(), last_ok.clone(), lease)));
    let mut next_beat = Instant::now();
    let mut backoff = super::retry::LedgerBackoff::default();
    loop {
        let draining = stop.is_cancelled();
        if draining && shared.claims.is_empty() {
            break;
        }
        tokio::select! {
            _ = abort.cancelled() => break,
            _ = stop.cancelled(), if !draining => continue,
            // Draining: look often whether the last upload is done.
            _ = tokio::time::sleep(Duration::from_millis(50)), if draining => continue,
            _ = tokio::time::sleep_until(next_beat) => {}
        }
        next_beat = Instant::now() + every;
        let asked = Instant::now();
        // Every call is given at most one interval: a database that hangs
        // rather than refuses must not stop the beats (the fence above
        // does not wait for them either).
        let beat = tokio::time::timeout(
            every,
            ledger.heartbeat(shared.lease_ms(), &shared.claims.ids()),
        )
        .await
        .unwrap_or_else(|_| Err(LedgerError::Timeout("the heartbeat")));
        match beat {
            Ok(held) => {
                backoff.ok();
                *last_ok.lock().unwrap_or_else(|p| p.into_inner()) = asked;
                let lost = held.map_or(0, |held| shared.claims.lose_missing(&held, asked));
                if lost > 0 {
                    tracing::warn!(
                        records = lost,
                        "other daemons took over records this daemon held"
                    );
                }
            }
            Err(e) => {
                super::ledger_failed(&e, "heartbeat failed; trying again shortly");
                next_beat = Instant::now() + (every / 4).max(backoff.failed().min(every));
                continue;
            }
        }
        if shared_ledger
            && tokio::time::timeout(every, housekeeping(&shared))
                .await
                .is_err()
        {
            tracing::warn!("the fleet's housekeeping got no answer from the ledger in time");
        }
    }
    if let Some(fencing) = fencing {
        fencing.abort();
    }
    if let Err(e) = ledger.leave().await {
        tracing::warn!(error = %e, "could not record this daemon's stop in the ledger");
    }
}

/// What any daemon of a fleet does now and then: take over expired claims,
/// adopt the follow-up work of daemons that are gone, forget daemons long
/// silent (and prune those stopped long ago), and bring the fleet's 429 pause to this host.
async fn housekeeping(shared: &Shared) {
    let ledger = &shared.ledger;
    match ledger.take_over_expired().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            records = n,
            "took over uploads whose daemon stopped renewing its lease; each is looked up on the platform before it is sent again"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot take over expired claims"),
    }
    match ledger.adopt_orphans().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            records = n,
            "took over the follow-up work (polling, indexing, file actions) of daemons that are gone"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot adopt the work of daemons that are gone"),
    }
    if let Err(e) = ledger.close_silent_daemons().await {
        tracing::debug!(error = %e, "cannot close silent daemons");
    }
    if let Err(e) = ledger.prune_daemons().await {
        tracing::debug!(error = %e, "cannot prune the daemons that stopped long ago");
    }
    match ledger.fleet_pause_left().await {
        Ok(left) if left > 0 => {
            let ms = u64::try_from(left).unwrap_or(0);
            shared.gate.pause_locally(Duration::from_millis(ms));
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the fleet's rate-limit pause"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_claims_older_than_the_question_and_missing_from_the_answer_are_lost() {
        let claims = Claims::default();
        let kept = claims.hold(1, 1);
        let lost = claims.hold(2, 1);
        let asked = Instant::now() + Duration::from_millis(1);
        let newer = {
            let t = claims.hold(3, 1);
            claims.lock().get_mut(&3).expect("held").0 = asked + Duration::from_millis(1);
            t
        };
        assert_eq!(claims.lose_missing(&[1], asked), 1);
        assert!(!kept.is_cancelled());
        assert!(lost.is_cancelled());
        assert!(
            !newer.is_cancelled(),
            "a claim made after the heartbeat asked is not judged"
        );
        claims.release(2, 1);
        assert_eq!(claims.lose_all(), 2);
        assert!(kept.is_cancelled() && newer.is_cancelled());
    }

    #[test]
    fn a_new_claim_of_a_held_record_stops_the_older_worker_and_keeps_its_hold() {
        let claims = Claims::default();
        let first = claims.hold(7, 1);
        let second = claims.hold(7, 2);
        assert!(first.is_cancelled(), "the older claim's upload stops");
        assert!(!second.is_cancelled());
        // The first worker, ending, does not release the second's hold.
        claims.release(7, 1);
        assert_eq!(claims.ids(), vec![7]);
        claims.release(7, 2);
        assert!(claims.is_empty());
    }

    #[test]
    fn the_heartbeat_runs_three_times_a_lease() {
        assert_eq!(
            beat_interval(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            beat_interval(Duration::from_secs(2)),
            Duration::from_nanos(666_666_666)
        );
    }
}
