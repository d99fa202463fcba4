//! Serving a router on a TCP listener with hyper-util directly.
//!
//! `axum::serve` builds its hyper connection builder without a timer, and
//! hyper enforces its header-read timeout only when it has one: a client
//! that trickles a request head byte by byte, or connects and sends nothing,
//! then holds a connection (and a file descriptor) forever. Here every
//! connection gets hyper's timer and [`HEADER_READ_TIMEOUT`] (also for
//! the first byte of a new connection, which hyper does not time); graceful
//! shutdown works as with `axum::serve` (stop accepting, let each connection
//! finish its request in flight, close idle ones), and the caller bounds the
//! drain.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a client may take to send a complete request head, on a new
/// connection or between requests on a kept-alive one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` until `stop` resolves, then waits for the connections to
/// finish their requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    nodelay: bool,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _peer)) => tcp,
                    Err(e) => {
                        // Out of descriptors and similar: back off rather
                        // than spin; the listener itself stays open.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if nodelay {
                    let _ = tcp.set_nodelay(true);
                }
                let service = TowerToHyperService::new(router.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // hyper arms its header-read timeout at a request's
                    // first byte, so a connection that never sends one would
                    // stay open: it gets the same time to start.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, tcp.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) | Err(_) => return,
                    }
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
