//! The systemd notify protocol (`Type=notify`): readiness, live status,
//! the watchdog, reloads and shutdown. Without `$NOTIFY_SOCKET` every call
//! is a no-op, so the daemon runs the same outside systemd.
//!
//! Sending never stalls the daemon. systemd reads its notify socket all the
//! time, but a supervisor that does not would leave its queue full
//! (`net.unix.max_dgram_qlen` datagrams, 10 by default), and a blocking send
//! would then freeze the main loop. So the socket is non-blocking:
//! - `STATUS=` and `WATCHDOG=1` that would block are dropped (debug log):
//!   both are sent again every 2 s;
//! - state changes (`READY=1`, `RELOADING=1`, `STOPPING=1`) wait up to
//!   [`STATE_WAIT`] for room, as an await (no thread is held), so a
//!   supervisor that is merely slow still gets them, in order; after that
//!   they are dropped with a warning.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use sd_notify::NotifyState;

/// How long a state change waits for room in a full notify socket.
pub const STATE_WAIT: Duration = Duration::from_secs(1);

/// A non-blocking datagram socket connected to `$NOTIFY_SOCKET`, if set.
fn connect() -> Option<UnixDatagram> {
    let addr = std::env::var_os("NOTIFY_SOCKET")?;
    match connect_to(&addr) {
        Ok(sock) => Some(sock),
        Err(e) => {
            tracing::debug!(error = %e, "cannot reach the systemd notify socket");
            None
        }
    }
}

fn connect_to(addr: &OsStr) -> io::Result<UnixDatagram> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    match addr.as_bytes().strip_prefix(b"@") {
        // An abstract socket (as sd_notify(3) allows).
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let name = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.connect_addr(&name)?;
        }
        _ => sock.connect(addr)?,
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

fn message(states: &[NotifyState<'_>]) -> String {
    states.iter().map(|s| format!("{s}\n")).collect()
}

/// Send now, or drop the message if the socket is full.
fn send_now(states: &[NotifyState<'_>]) {
    let Some(sock) = connect() else {
        return;
    };
    let msg = message(states);
    match sock.send(msg.as_bytes()) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => tracing::debug!(
            message = %msg.trim_end(),
            "the systemd notify socket is full (is anyone reading it?); message dropped"
        ),
        Err(e) => tracing::debug!(error = %e, "systemd notification failed"),
    }
}

/// Send a state change, waiting up to [`STATE_WAIT`] for room.
async fn send_state(states: &[NotifyState<'_>]) {
    let Some(sock) = connect() else {
        return;
    };
    let msg = message(states);
    let sock = match tokio::net::UnixDatagram::from_std(sock) {
        Ok(sock) => sock,
        Err(e) => {
            tracing::debug!(error = %e, "systemd notification failed");
            return;
        }
    };
    match tokio::time::timeout(STATE_WAIT, sock.send(msg.as_bytes())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "systemd notification failed"),
        Err(_) => tracing::warn!(
            message = %msg.trim_end(),
            "the systemd notify socket stayed full (is anyone reading it?); state change not sent"
        ),
    }
}

pub async fn ready() {
    send_state(&[NotifyState::Ready]).await;
}

pub fn status(text: &str) {
    send_now(&[NotifyState::Status(text)]);
}

pub fn watchdog() {
    send_now(&[NotifyState::Watchdog]);
}

pub async fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send_state(&[NotifyState::Reloading, now]).await,
        Err(_) => send_state(&[NotifyState::Reloading]).await,
    }
}

pub async fn stopping() {
    send_state(&[NotifyState::Stopping]).await;
}

/// How often systemd wants to hear `WATCHDOG=1`, if it watches us.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket whose queue is full, as a supervisor that stopped reading
    /// leaves it; and its address.
    fn full_socket(dir: &std::path::Path) -> (UnixDatagram, std::path::PathBuf) {
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let filler = UnixDatagram::unbound().expect("socket");
        filler.set_nonblocking(true).expect("non-blocking");
        for _ in 0..100_000 {
            match filler.send_to(b"FILLER=1\n", &path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (listener, path),
                Err(e) => panic!("filling the socket: {e}"),
            }
        }
        panic!("the socket never filled");
    }

    #[test]
    fn messages_are_lines() {
        assert_eq!(
            message(&[NotifyState::Reloading, NotifyState::MonotonicUsec(5)]),
            "RELOADING=1\nMONOTONIC_USEC=5\n"
        );
    }

    #[tokio::test]
    async fn a_full_socket_refuses_at_once_and_a_state_change_waits_for_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (listener, path) = full_socket(dir.path());
        let sock = connect_to(path.as_os_str()).expect("connect");
        let err = sock.send(b"STATUS=x\n").expect_err("the queue is full");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        // A state change waits for room: reading one datagram makes some.
        let reader = std::thread::spawn(move || {
            listener.set_nonblocking(false).expect("blocking");
            let mut buf = [0u8; 256];
            let n = listener.recv(&mut buf).expect("recv");
            (listener, String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        let sock = tokio::net::UnixDatagram::from_std(sock).expect("tokio socket");
        let sent = tokio::time::timeout(STATE_WAIT * 10, sock.send(b"READY=1\n")).await;
        assert!(matches!(sent, Ok(Ok(8))), "{sent:?}");
        let (listener, first) = reader.join().expect("reader");
        assert_eq!(first, "FILLER=1\n");
        drop(listener);
    }
}
