//! The emulator's own accept loop: one hyper HTTP/1 connection task per TCP connection,
//! each with a kill switch ([`ConnHandle`]) that a handler can pull to reset the
//! connection (SO_LINGER 0, so the client sees RST rather than a clean close).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

/// Per-connection kill switch, put into every request's extensions.
/// `reset()` makes the connection task drop the connection with a TCP reset.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle {
    kill: CancellationToken,
}

impl ConnHandle {
    pub fn reset(&self) {
        self.kill.cancel();
    }
}

/// Accepts connections until the task is aborted. Connection tasks live in a `JoinSet`
/// owned by this future, so aborting the accept task also aborts every connection.
pub(crate) async fn accept_loop(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, router.clone()));
                }
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning on the error.
                    debug!(%error, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one connection until it ends or a handler pulls its kill switch.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, router: Router) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, %peer, "set_nodelay failed");
    }
    // A second descriptor for the same socket, kept here so that SO_LINGER can be set
    // after hyper has taken ownership of the stream.
    let (stream, linger_handle) = match split_linger_handle(stream) {
        Ok(pair) => pair,
        Err(error) => {
            debug!(%error, %peer, "could not duplicate socket; dropping connection");
            return;
        }
    };
    let handle = ConnHandle {
        kill: CancellationToken::new(),
    };
    let kill = handle.kill.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let handle = handle.clone();
        async move { Ok::<_, Infallible>(route(router, handle, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%error, %peer, "emulator connection ended with an error");
            }
        }
        () = kill.cancelled() => {
            // Linger 0 turns the close below into an RST; both descriptors must go.
            if let Err(error) = linger_handle.set_linger(Some(Duration::ZERO)) {
                debug!(%error, %peer, "set_linger failed");
            }
            debug!(%peer, "emulator reset the connection");
        }
    }
    // Returning drops the connection and `linger_handle`, closing both descriptors.
}

/// Hands the request (with its connection handle) to the axum router.
async fn route(router: Router, handle: ConnHandle, request: Request<Incoming>) -> Response<Body> {
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(handle);
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Splits a stream into the tokio stream hyper will own and a duplicate descriptor.
fn split_linger_handle(stream: TcpStream) -> std::io::Result<(TcpStream, socket2::Socket)> {
    let std_stream = stream.into_std()?;
    let duplicate = socket2::Socket::from(std_stream.try_clone()?);
    // `into_std` leaves the socket non-blocking, as `from_std` requires.
    let stream = TcpStream::from_std(std_stream)?;
    Ok((stream, duplicate))
}
