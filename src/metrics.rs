//! Prometheus metrics: the process-wide recorder, the recording functions
//! and the small HTTP server for `/metrics` and `/healthz`.
//!
//! The daemon calls [`install`] once at start-up and, when `metrics_listen`
//! is set, [`serve`] on that address. The pipeline, the watchers and the
//! ledger bookkeeping call the free recording functions ([`upload_finished`],
//! [`retry`], [`queue`], …); these go through the `metrics` facade, so they
//! cost next to nothing and do nothing at all when no recorder is installed
//! (one-shot commands, most tests).
//!
//! Every metric is named `tl_ingest_*` and described in [`install`], which is
//! the one place to look for what is exported. Every series carries a
//! `host` label (the host's name in the fleet: `$TL_INGEST_HOST`, else
//! `uname -n`), so that the daemons of a fleet sharing one ledger can be
//! told apart once scraped into one place.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const FILES: &str = "tl_ingest_files";
const UPLOADED_BYTES: &str = "tl_ingest_uploaded_bytes_total";
const UPLOAD_DURATION: &str = "tl_ingest_upload_duration_seconds";
const PROCESSING_DURATION: &str = "tl_ingest_processing_duration_seconds";
const RETRIES: &str = "tl_ingest_retries_total";
const RATE_LIMITED: &str = "tl_ingest_rate_limited_total";
const QUEUE_DEPTH: &str = "tl_ingest_queue_depth";
const OLDEST_QUEUED_AGE: &str = "tl_ingest_oldest_queued_age_seconds";
const WATCHER_EVENTS: &str = "tl_ingest_watcher_events_total";
const RESCANS: &str = "tl_ingest_rescans_total";
const FOLDERS_GONE: &str = "tl_ingest_watch_folders_gone";
const FOLDERS_GONE_TOTAL: &str = "tl_ingest_watch_folders_gone_total";
const LEDGER_ERRORS: &str = "tl_ingest_ledger_errors_total";
const SESSIONS_REPLACED: &str = "tl_ingest_multipart_sessions_replaced_total";

/// Reasons the pipeline passes to [`retry`]; exported at 0 from the start so
/// `rate()`/`increase()` see the first retry instead of a series appearing
/// out of nowhere.
const RETRY_REASONS: [&str; 5] = [
    "transient",
    "rate_limited",
    "auth",
    "changed",
    "interrupted",
];

/// Classes of the ledger's database errors (the ledger's `ErrorClass`, as
/// it passes them to [`ledger_error`]); exported at 0 from the start, like
/// [`RETRY_REASONS`]. Written out here so that metrics, which the ledger
/// records into, does not depend on the ledger; a test keeps the two equal.
const LEDGER_ERROR_CLASSES: [&str; 6] = [
    "disk_full",
    "read_only",
    "busy",
    "corrupt",
    "connection_lost",
    "other",
];

/// Uploads run from a fraction of a second (small clips on a LAN) to an hour
/// (tens of GB on a slow uplink).
const UPLOAD_BUCKETS: [f64; 15] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Indexing on the platform is found by polling, so nothing finishes in under
/// a second; long videos take well over an hour.
const PROCESSING_BUCKETS: [f64; 13] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 5400.0, 7200.0,
];

/// With `install_recorder` nobody drains histogram samples but a scrape; this
/// keeps memory flat when nothing scrapes (same period as the exporter's own
/// upkeep task).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How long in-flight requests get after `stop` before the server task gives
/// up on them, so a stuck scraper cannot hold up the daemon's shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be built or another recorder already owns the
    /// process-wide slot.
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
    /// The metrics listener could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The installed recorder, for rendering what it holds.
#[derive(Clone, Debug)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// The Prometheus text exposition of every metric recorded so far.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// The `metrics` facade allows one global recorder per process and cannot
/// hand its handle back, so we keep it here for later callers (tests, and a
/// daemon restarted in-process).
static INSTALLED: Mutex<Option<Metrics>> = Mutex::new(None);

/// Install the process-wide recorder once; later calls return the same handle.
pub fn install() -> Result<Metrics, MetricsError> {
    // A panic while holding the lock cannot leave a half-written `Option`.
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(metrics) = installed.as_ref() {
        return Ok(metrics.clone());
    }

    let handle = PrometheusBuilder::new()
        .add_global_label("host", crate::host::host_name())
        .set_buckets_for_metric(Matcher::Full(UPLOAD_DURATION.to_owned()), &UPLOAD_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(PROCESSING_DURATION.to_owned()),
                &PROCESSING_BUCKETS,
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| MetricsError::Install(e.to_string()))?;

    describe();
    // Counters read 0 rather than absent until the first event, so alerts
    // and rates work from the first scrape.
    ::metrics::counter!(UPLOADED_BYTES).increment(0);
    ::metrics::counter!(RATE_LIMITED).increment(0);
    ::metrics::counter!(WATCHER_EVENTS).increment(0);
    ::metrics::counter!(FOLDERS_GONE_TOTAL).increment(0);
    ::metrics::gauge!(FOLDERS_GONE).set(0.0);
    for reason in RETRY_REASONS {
        ::metrics::counter!(RETRIES, "reason" => reason).increment(0);
    }
    for class in LEDGER_ERROR_CLASSES {
        ::metrics::counter!(LEDGER_ERRORS, "class" => class).increment(0);
    }

    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        // Not fatal: every scrape drains histograms too.
        tracing::warn!("metrics upkeep thread not started: {e}");
    }

    let metrics = Metrics { handle };
    *installed = Some(metrics.clone());
    Ok(metrics)
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

    describe_gauge!(FILES, Unit::Count, "Files in the ledger, by state.");
    describe_counter!(
        LEDGER_ERRORS,
        Unit::Count,
        "Errors the ledger's database returned, by class (disk_full, read_only, busy, corrupt, connection_lost, other)."
    );
    describe_counter!(
        UPLOADED_BYTES,
        Unit::Bytes,
        "Bytes of media uploaded successfully."
    );
    describe_histogram!(
        UPLOAD_DURATION,
        Unit::Seconds,
        "Time to upload one file, first byte to accepted."
    );
    describe_histogram!(
        PROCESSING_DURATION,
        Unit::Seconds,
        "Time the platform took to index one file, accepted to ready."
    );
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Attempts retried, by reason (transient, rate_limited, auth, changed, interrupted)."
    );
    describe_counter!(
        RATE_LIMITED,
        Unit::Count,
        "Requests the API refused with 429 Too Many Requests."
    );
    describe_gauge!(QUEUE_DEPTH, Unit::Count, "Files waiting to be uploaded.");
    describe_gauge!(
        OLDEST_QUEUED_AGE,
        Unit::Seconds,
        "Age of the oldest file waiting to be uploaded (0 when none waits)."
    );
    describe_counter!(
        WATCHER_EVENTS,
        Unit::Count,
        "Filesystem events received from the folder watchers."
    );
    describe_counter!(
        RESCANS,
        Unit::Count,
        "Full rescans of watched folders, by reason."
    );
    describe_gauge!(
        FOLDERS_GONE,
        Unit::Count,
        "Watched folders that are gone now (removed or unmounted), waited for."
    );
    describe_counter!(
        FOLDERS_GONE_TOTAL,
        Unit::Count,
        "Times a watched folder went away (removed, moved away, unmounted or replaced)."
    );
    describe_counter!(
        SESSIONS_REPLACED,
        Unit::Count,
        "Multipart upload sessions given up and replaced, by reason (expired, failed, gone, refused)."
    );
}

/// Set `tl_ingest_files{state}` for each state given. A state left out keeps
/// its last value, so pass every state, with 0 for the empty ones.
pub fn files_by_state(counts: &[(&str, i64)]) {
    for &(state, count) in counts {
        ::metrics::gauge!(FILES, "state" => state.to_owned()).set(count as f64);
    }
}

/// One file uploaded: `bytes` sent in `seconds`.
pub fn upload_finished(bytes: u64, seconds: f64) {
    ::metrics::counter!(UPLOADED_BYTES).increment(bytes);
    ::metrics::histogram!(UPLOAD_DURATION).record(duration(seconds));
}

/// One file went from accepted to ready in `seconds`.
pub fn processing_finished(seconds: f64) {
    ::metrics::histogram!(PROCESSING_DURATION).record(duration(seconds));
}

/// An attempt will be retried, for `reason`.
pub fn retry(reason: &'static str) {
    ::metrics::counter!(RETRIES, "reason" => reason).increment(1);
}

/// The API answered 429.
pub fn rate_limited() {
    ::metrics::counter!(RATE_LIMITED).increment(1);
}

/// The upload queue: how many files wait and how long the oldest has.
pub fn queue(depth: i64, oldest_age_seconds: f64) {
    ::metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
    ::metrics::gauge!(OLDEST_QUEUED_AGE).set(duration(oldest_age_seconds));
}

/// `n` filesystem events arrived from the watchers.
pub fn watcher_events(n: u64) {
    ::metrics::counter!(WATCHER_EVENTS).increment(n);
}

/// The ledger's database returned an error of this class.
pub fn ledger_error(class: &'static str) {
    ::metrics::counter!(LEDGER_ERRORS, "class" => class).increment(1);
}

/// A watched folder was rescanned in full, for `reason`.
pub fn rescan(reason: &'static str) {
    ::metrics::counter!(RESCANS, "reason" => reason).increment(1);
}

/// A watched folder went away.
pub fn watch_folder_gone() {
    ::metrics::counter!(FOLDERS_GONE_TOTAL).increment(1);
}

/// How many watched folders are gone now.
pub fn watch_folders_gone(n: usize) {
    ::metrics::gauge!(FOLDERS_GONE).set(n as f64);
}

/// A multipart session was given up (and replaced, unless the file failed),
/// for `reason`.
pub fn session_replaced(reason: &'static str) {
    ::metrics::counter!(SESSIONS_REPLACED, "reason" => reason).increment(1);
}

/// Durations come from wall clocks that can step backwards; a negative or
/// NaN sample would corrupt the histogram's sum for good.
fn duration(seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    }
}

type Health = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// Serve GET /metrics (text/plain; version=0.0.4) and GET /healthz on `listen`
/// until `stop` is cancelled. `health` is called per /healthz request:
/// Ok(()) → 200 "ok", Err(reason) → 503 with the reason as body.
/// Binds before returning the server future's handle, so a bind error is returned at once.
///
/// `health` runs on the async runtime, so it must not block. Returns the
/// address actually bound (useful with port 0). After `stop`, in-flight
/// requests get a few seconds to finish before the task ends anyway.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    health: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    stop: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), MetricsError> {
    let bind_error = |source| MetricsError::Bind {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;

    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .with_state(AppState { metrics, health });
    let server =
        axum::serve(listener, router).with_graceful_shutdown(stop.clone().cancelled_owned());

    let task = tokio::spawn(async move {
        let grace_over = async {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::warn!("metrics server on {local} stopped: {e}");
                }
            }
            () = grace_over => {
                tracing::warn!("metrics server on {local}: requests still open after shutdown grace, dropped");
            }
        }
    });
    tracing::info!("serving /metrics and /healthz on http://{local}");
    Ok((local, task))
}

async fn metrics_page(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match (state.health)() {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// `name{host="…"}`, `name{host="…",labels}`: a series as rendered,
    /// with the host label every series carries first.
    fn series(name: &str, labels: &str) -> String {
        let host = crate::host::host_name();
        if labels.is_empty() {
            format!("{name}{{host=\"{host}\"}}")
        } else {
            format!("{name}{{host=\"{host}\",{labels}}}")
        }
    }

    /// The value of the sample line `series value` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    fn client() -> reqwest::Client {
        // reqwest is built with `rustls-no-provider` and refuses to build a
        // client without one, even for plain http; as in the api module.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A proxy from the environment must not see loopback requests.
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client")
    }

    // Tests share the global recorder (and may run in parallel), so they
    // assert lower bounds or use label values no other test uses.
    #[test]
    fn install_twice_and_render() {
        let first = install().expect("first install");
        let second = install().expect("second install");

        upload_finished(1000, 2.0);
        files_by_state(&[("metrics_test_install", 3)]);

        for metrics in [&first, &second] {
            let text = metrics.render();
            let bytes = sample(&text, &series(UPLOADED_BYTES, "")).expect("uploaded bytes sample");
            assert!(bytes >= 1000.0, "{bytes} in:\n{text}");
            assert!(
                text.contains(&format!(
                    "{} 3",
                    series(FILES, r#"state="metrics_test_install""#)
                )),
                "{text}"
            );
            assert!(
                text.contains(&series(
                    "tl_ingest_upload_duration_seconds_bucket",
                    r#"le="2.5""#
                )),
                "configured buckets missing:\n{text}"
            );
            assert!(
                text.contains("# HELP tl_ingest_uploaded_bytes_total"),
                "{text}"
            );
            assert!(
                text.contains(&series(RETRIES, r#"reason="auth""#)),
                "{text}"
            );
            // Every sample carries the host label.
            for line in text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
            {
                assert!(line.contains("{host=\""), "no host label: {line}");
            }
        }
    }

    #[test]
    fn bad_durations_are_clamped() {
        assert_eq!(duration(-3.0), 0.0);
        assert_eq!(duration(f64::NAN), 0.0);
        assert_eq!(duration(f64::INFINITY), 0.0);
        assert_eq!(duration(1.5), 1.5);
    }

    #[test]
    fn ledger_error_classes_are_the_ledgers() {
        let classes = crate::ledger::ErrorClass::ALL.map(|c| c.as_str());
        assert_eq!(LEDGER_ERROR_CLASSES, classes);
    }

    #[tokio::test]
    async fn serves_metrics_and_health_until_stopped() {
        let metrics = install().expect("install");
        rescan("metrics_test_serve");
        let healthy = Arc::new(AtomicBool::new(true));
        let health: Health = {
            let healthy = Arc::clone(&healthy);
            Arc::new(move || {
                if healthy.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("ledger unreachable".to_owned())
                }
            })
        };
        let stop = CancellationToken::new();
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let (addr, task) = serve(listen, metrics, health, stop.clone())
            .await
            .expect("serve");
        assert_ne!(addr.port(), 0);
        let client = client();
        let base = format!("http://{addr}");

        let response = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(content_type.as_deref(), Some(PROMETHEUS_TEXT));
        let text = response.text().await.expect("metrics body");
        assert!(
            text.contains("# TYPE tl_ingest_rescans_total counter"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{} 1",
                series(RESCANS, r#"reason="metrics_test_serve""#)
            )),
            "{text}"
        );

        let response = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("GET /healthz");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(response.text().await.expect("health body"), "ok");

        healthy.store(false, Ordering::SeqCst);
        let response = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("GET /healthz");
        assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.text().await.expect("health body"),
            "ledger unreachable"
        );

        let response = client
            .get(format!("{base}/nope"))
            .send()
            .await
            .expect("GET /nope");
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);

        // The client keeps its keep-alive connection open, as a scraper
        // would; shutdown must not wait for it (well under the grace period).
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("server task ended after stop")
            .expect("server task did not panic");
        drop(client);
    }

    #[tokio::test]
    async fn address_in_use_is_a_bind_error() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("first bind");
        let addr = taken.local_addr().expect("local addr");
        let metrics = install().expect("install");
        let health: Health = Arc::new(|| Ok(()));
        let result = serve(addr, metrics, health, CancellationToken::new()).await;
        match result {
            Err(MetricsError::Bind { addr: reported, .. }) => assert_eq!(reported, addr),
            Err(other) => panic!("expected a bind error, got {other}"),
            Ok((bound, _)) => panic!("bound {bound}, which was already taken"),
        }
    }
}
