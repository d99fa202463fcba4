//! Serving a router on a TCP listener with hyper-util directly.
//!
//! `axum::serve` builds its hyper connection builder without a timer, and
//! hyper enforces its header-read timeout only when it has one: a client
//! that trickles a request head byte by byte, or connects and sends nothing,
//! then holds a connection (and a file descriptor) forever. Here every
//! connection gets hyper's timer and the configured [`EdgeTimeouts`]:
//! `server.header_read_timeout_ms` for a request head,
//! `server.first_byte_timeout_ms` for the first byte of a new connection
//! (which hyper does not time), and `server.send_stall_timeout_ms` for a
//! client that stops accepting response bytes (hyper has no write timeout;
//! [`StallTimed`] adds one). Graceful shutdown works as with `axum::serve`
//! (stop accepting, let each connection finish its request in flight, close
//! idle ones), and the caller bounds the drain.
//!
//! An `accept` that fails for lack of resources (`EMFILE`, `ENFILE`,
//! `ENOBUFS`) backs off instead of spinning, and says so at most once per
//! [`ACCEPT_WARN_EVERY`]; the listener stays open and the kernel's backlog
//! holds new connections until descriptors are free again.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aibox_config::ServerConfig;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};

/// How long the accept loop pauses after an `accept` that failed for lack
/// of resources, so that it does not spin while the process is out of file
/// descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most one warning per this interval while `accept` keeps failing; the
/// count of failures in between goes with the next one.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);

/// The connection timeouts of one listener, from `server:`.
#[derive(Debug, Clone, Copy)]
pub struct EdgeTimeouts {
    /// How long a client may take to send a complete request head.
    pub header_read: Duration,
    /// How long a new connection may stay silent before its first byte.
    pub first_byte: Duration,
    /// How long a client may leave response bytes unaccepted.
    pub send_stall: Duration,
}

impl EdgeTimeouts {
    /// The timeouts configured in `server:`.
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            header_read: server.header_read_timeout,
            first_byte: server.first_byte_timeout,
            send_stall: server.send_stall_timeout,
        }
    }
}

/// Serves `router` until `stop` resolves, then waits for the connections to
/// finish their requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    nodelay: bool,
    timeouts: EdgeTimeouts,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut accept_failures = AcceptFailures::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    // The peer gave up while queued: nothing to back off from.
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        accept_failures.failed(&e);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                accept_failures.recovered();
                if nodelay {
                    let _ = tcp.set_nodelay(true);
                }
                // Every request learns its connection's peer (for the
                // records of refused credentials), without a per-connection
                // copy of the router.
                let peer_ip = aibox_gateway::edge::Peer(peer.ip());
                let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                    router.clone(),
                    with_peer(peer_ip),
                ));
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // hyper arms its header-read timeout at a request's
                    // first byte, so a connection that never sends one would
                    // stay open: it gets its own time to start.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(timeouts.first_byte, tcp.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) | Err(_) => return,
                    }
                    let io = StallTimed::new(tcp, peer, timeouts.send_stall);
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(io), service)
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

/// Puts the connection's peer into each request's extensions.
fn with_peer<B>(
    peer: aibox_gateway::edge::Peer,
) -> impl Fn(axum::http::Request<B>) -> axum::http::Request<B> + Clone {
    move |mut r| {
        r.extensions_mut().insert(peer);
        r
    }
}

/// Errors of `accept` that concern one queued connection, not the process.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Rate-limits the warning of a failing `accept` (out of descriptors): one
/// line when it starts, then one per [`ACCEPT_WARN_EVERY`] with the count.
#[derive(Default)]
struct AcceptFailures {
    last_warned: Option<Instant>,
    since_warned: u64,
}

impl AcceptFailures {
    fn failed(&mut self, e: &io::Error) {
        self.since_warned += 1;
        let due = self
            .last_warned
            .is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY);
        if due {
            tracing::warn!(
                error = %e,
                failures = self.since_warned,
                backoff_ms = u64::try_from(ACCEPT_BACKOFF.as_millis()).unwrap_or(u64::MAX),
                "cannot accept connections (out of file descriptors?); backing off, new \
                 connections wait in the listen backlog. Raise the process's RLIMIT_NOFILE \
                 (LimitNOFILE= in systemd, ulimits in Docker) or lower the timeouts in server:"
            );
            self.last_warned = Some(Instant::now());
            self.since_warned = 0;
        }
    }

    fn recovered(&mut self) {
        if self.last_warned.take().is_some() {
            tracing::info!(failures = self.since_warned, "accepting connections again");
            self.since_warned = 0;
        }
    }
}

/// A connection whose writes fail once the peer has accepted no byte for
/// `limit` while a response was waiting to be written.
///
/// hyper polls a response body only when the socket can take more, so a
/// client that never reads its stream stalls the body (and with it the
/// upstream request, by backpressure) forever without a bound. The timer
/// runs only while a write is pending, so a slow but reading client is never
/// cut off, and an idle connection is the header-read timeout's business.
/// When it fires the write fails with `TimedOut`: hyper closes the
/// connection and drops the response body, which ends a relayed stream as
/// "client gone" (audited so) and cancels its upstream request.
struct StallTimed<T> {
    io: T,
    peer: SocketAddr,
    limit: Duration,
    /// Created at the first pending write and reused after.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<T> StallTimed<T> {
    fn new(io: T, peer: SocketAddr, limit: Duration) -> Self {
        Self {
            io,
            peer,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// Called when a write is pending: arms the timer if this starts a
    /// stall, and fails once the stall has lasted `limit`.
    fn poll_stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let deadline = Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                tracing::info!(
                    peer = %self.peer,
                    stall_ms = u64::try_from(self.limit.as_millis()).unwrap_or(u64::MAX),
                    "the client accepted no response bytes for server.send_stall_timeout_ms; \
                     closing its connection (a stream in flight ends as client gone)"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped accepting response bytes",
                )))
            }
        }
    }

    fn written<R>(&mut self, r: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => self.poll_stall(cx),
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallTimed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallTimed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.written(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.written(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.written(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.written(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// A peer that never reads: the writer's side fills up, and the stall
    /// timer must turn the pending write into an error.
    #[tokio::test]
    async fn issue9_a_peer_that_never_reads_fails_the_write_after_the_stall_limit() {
        let (near, _far) = tokio::io::duplex(1024);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut io = StallTimed::new(near, peer, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let chunk = vec![b'x'; 4096];
        let writes = async {
            loop {
                if let Err(e) = io.write(&chunk).await {
                    return e;
                }
            }
        };
        // Without the stall timer the write would wait forever.
        let err = tokio::time::timeout(Duration::from_secs(5), writes)
            .await
            .expect("the stalled write never failed");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
    }

    /// A peer that reads slowly but steadily is never cut off, even when
    /// the whole transfer takes much longer than the stall limit.
    #[tokio::test]
    async fn issue9_a_slow_reader_is_not_cut_off() {
        use tokio::io::AsyncReadExt as _;
        let (near, mut far) = tokio::io::duplex(64);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut io = StallTimed::new(near, peer, Duration::from_millis(150));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 64];
            while total < 64 * 20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                total += far.read(&mut buf).await.unwrap();
            }
            total
        });
        io.write_all(&[b'y'; 64 * 20]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 64 * 20);
    }
}
