//! The faults an emulator injects and the RNG they are drawn from: each request draws
//! its whole [`FaultPlan`] at once, so that a seeded sequence depends only on the order
//! requests arrive in. The gate (`gate.rs`) applies the plan; this part only decides.

use std::time::Duration;

use tokio::time::Instant;

use super::config::Faults;
use super::model::SessionEnd;

/// After a 429 goes out, requests arriving within this long were already on their way;
/// later ones, until its `Retry-After` runs out, count as not having waited.
const RATE_LIMIT_GRACE: Duration = Duration::from_millis(250);

/// The current faults and the RNG they are drawn from.
#[derive(Debug)]
pub(crate) struct FaultState {
    faults: Faults,
    rng: fastrand::Rng,
    /// When clients were last told by an injected 429 to wait: from (the answer plus
    /// [`RATE_LIMIT_GRACE`]) until (the answer plus its `Retry-After`).
    rate_limit_window: Option<(Instant, Instant)>,
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        let rng = seeded_rng(faults.seed);
        Self {
            faults,
            rng,
            rate_limit_window: None,
        }
    }

    /// An injected 429 asking to wait `retry_after_secs` is going out now.
    pub fn note_rate_limit(&mut self, retry_after_secs: u64) {
        let now = Instant::now();
        self.rate_limit_window = Some((
            now + RATE_LIMIT_GRACE,
            now + Duration::from_secs(retry_after_secs),
        ));
    }

    /// Whether a request arriving now did not wait as the last injected 429 asked.
    pub fn inside_rate_limit_window(&self) -> bool {
        let now = Instant::now();
        self.rate_limit_window
            .is_some_and(|(from, until)| from <= now && now < until)
    }

    /// New faults take effect for the next request; a seed restarts the fault sequence.
    pub fn replace(&mut self, faults: Faults) {
        if faults.seed.is_some() {
            self.rng = seeded_rng(faults.seed);
        }
        self.faults = faults;
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A session now has `stored` chunks: whether a session-ending fault fires for it.
    /// Each fires once, then clears itself.
    pub fn take_session_end(&mut self, stored: u64) -> Option<SessionEnd> {
        let f = &mut self.faults;
        if f.expire_session_after_chunks > 0 && stored >= f.expire_session_after_chunks {
            f.expire_session_after_chunks = 0;
            return Some(SessionEnd::Expire);
        }
        if f.abort_session_after_chunks > 0 && stored >= f.abort_session_after_chunks {
            f.abort_session_after_chunks = 0;
            return Some(SessionEnd::Abort);
        }
        None
    }

    /// Decides every fault for one request at once, so that a seeded sequence depends only
    /// on the order requests arrive in.
    pub fn draw(&mut self) -> FaultPlan {
        let f = &self.faults;
        let rng = &mut self.rng;
        let rate_limit = chance(rng, f.rate_limit);
        let error_before_body = chance(rng, f.error_before_body);
        let reset_mid_body = chance(rng, f.reset_mid_body).then(|| rng.f64());
        let error_after_body = chance(rng, f.error_after_body);
        // Drawn after the older faults, so that their seeded sequences stay as they were
        // (a share of 0 consumes no draw).
        let vanish_after_ready = chance(rng, f.vanish_after_ready);
        let lies = Lies {
            malformed_json: chance(rng, f.malformed_json),
            missing_id: chance(rng, f.missing_id),
            html_200: chance(rng, f.html_200),
            unknown_status: chance(rng, f.unknown_status),
            // Drawn last, so the older lies' seeded sequences stay as they were.
            unreadable_asset: chance(rng, f.unreadable_asset),
            omit_listed: chance(rng, f.list_omits_asset),
        };
        FaultPlan {
            latency: Duration::from_millis(f.latency_ms),
            answer_delay: Duration::from_millis(f.answer_delay_ms),
            retry_after_secs: f.retry_after_secs,
            rate_limit,
            error_before_body,
            reset_mid_body,
            error_after_body,
            vanish_after_ready,
            lies,
        }
    }
}

fn seeded_rng(seed: Option<u64>) -> fastrand::Rng {
    seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed)
}

/// True with probability `p`; 0 (or NaN) never, 1 always, without consuming a draw then.
fn chance(rng: &mut fastrand::Rng, p: f64) -> bool {
    if p.is_nan() || p <= 0.0 {
        false
    } else {
        p >= 1.0 || rng.f64() < p
    }
}

/// The faults one request will suffer.
#[derive(Debug, Clone)]
pub(crate) struct FaultPlan {
    pub latency: Duration,
    pub answer_delay: Duration,
    pub retry_after_secs: u64,
    pub rate_limit: bool,
    pub error_before_body: bool,
    /// Share of the body to read before resetting the connection.
    pub reset_mid_body: Option<f64>,
    pub error_after_body: bool,
    pub vanish_after_ready: bool,
    pub lies: Lies,
}

/// What is done to the answer a route gave.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Lies {
    pub malformed_json: bool,
    pub missing_id: bool,
    pub html_200: bool,
    pub unknown_status: bool,
    pub unreadable_asset: bool,
    pub omit_listed: bool,
}
