//! The systemd notify protocol (`Type=notify`): readiness, live status,
//! the watchdog, reloads and shutdown. Without `$NOTIFY_SOCKET` every call
//! is a no-op, so the daemon runs the same outside systemd.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "systemd notification failed");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// How often systemd wants to hear `WATCHDOG=1`, if it watches us.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
